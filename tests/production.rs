//! What a careful deployment relies on: abuse limits, trusted proxies, origin checks,
//! CORS, metrics, connection caps and surviving descriptor exhaustion.

mod common;

use common::*;
use serde_json::json;
use std::io::Write;
use std::time::Duration;
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;

fn post_from(srv: &Server, path: &str, body: &str, extra: &str) -> Resp {
    srv.raw(
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

#[test]
fn registrations_are_rate_limited_with_retry_after() {
    let srv = Server::start_with(&["--limit-loopback", "--register-limit", "3"]);
    for i in 0..3 {
        srv.register(&format!("r{i}"));
    }
    let r = srv.post("/api/register", r#"{"username": "r3"}"#, None);
    assert_eq!((r.status, r.error().as_str()), (429, "rate_limited"));
    let wait: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
}

#[test]
fn loopback_is_exempt_by_default() {
    let srv = Server::start_with(&["--register-limit", "2", "--login-fail-limit", "2"]);
    for i in 0..6 {
        srv.register(&format!("ok{i}"));
        assert_eq!(srv.post("/api/login", r#"{"key": "wrong"}"#, None).status, 401);
    }
}

#[test]
fn failed_logins_are_limited_per_forwarded_address() {
    let srv = Server::start_with(&["--trusted-proxy", "127.0.0.1", "--login-fail-limit", "2"]);
    let key = srv.register("victim");
    let evil = "X-Forwarded-For: 203.0.113.66\r\n";
    for _ in 0..2 {
        assert_eq!(post_from(&srv, "/api/login", r#"{"key": "guess"}"#, evil).status, 401);
    }
    let r = post_from(&srv, "/api/login", r#"{"key": "guess"}"#, evil);
    assert_eq!((r.status, r.error().as_str()), (429, "rate_limited"));
    assert!(r.header("retry-after").is_some());
    // Another forwarded client, and the proxy's own address, are unaffected.
    let other = "X-Forwarded-For: 203.0.113.67\r\n";
    assert_eq!(post_from(&srv, "/api/login", &json!({ "key": key }).to_string(), other).status, 200);
    assert_eq!(srv.post("/api/login", r#"{"key": "guess"}"#, None).status, 401);
}

#[test]
fn forwarded_headers_from_untrusted_peers_are_ignored() {
    // Without --trusted-proxy the header is just a header: the loopback peer stays exempt.
    let srv = Server::start_with(&["--login-fail-limit", "1"]);
    for _ in 0..3 {
        assert_eq!(post_from(&srv, "/api/login", r#"{"key": "x"}"#, "X-Forwarded-For: 6.6.6.6\r\n").status, 401);
    }
}

#[test]
fn a_trusted_proxy_saying_https_makes_the_cookie_secure() {
    let srv = Server::start_with(&["--trusted-proxy", "127.0.0.1"]);
    let key = srv.register("alice");
    let body = json!({ "key": key }).to_string();
    let r = post_from(&srv, "/api/login", &body, "X-Forwarded-Proto: https\r\n");
    assert!(r.header("set-cookie").unwrap().ends_with("; Secure"));
    let r = srv.post("/api/login", &body, None);
    assert!(!r.header("set-cookie").unwrap().contains("Secure"));
}

#[test]
fn messages_over_the_socket_rate_are_refused_but_the_socket_stays() {
    let srv = Server::start_with(&["--limit-loopback", "--message-rate", "1", "--message-burst", "3"]);
    let mut a = srv.ws(&srv.user("alice"));
    let mut limited = 0;
    for _ in 0..10 {
        a.say("spam");
        if a.recv() == json!({"status": false, "code": "rate_limited"}) {
            limited += 1;
        }
    }
    assert!(limited >= 6, "only {limited} of 10 refused");
    std::thread::sleep(Duration::from_millis(1100));
    a.say("after a pause");
    assert_eq!(a.recv(), json!({"status": true}));
}

#[test]
fn websocket_from_a_foreign_origin_is_403() {
    let srv = Server::start_with(&["--allowed-origin", "https://chat.example"]);
    let cookie = srv.user("alice");
    let try_origin = |origin: Option<&str>| {
        let mut req = format!("ws://{}/ws", srv.addr).into_client_request().unwrap();
        req.headers_mut().insert("Cookie", cookie.parse().unwrap());
        if let Some(o) = origin {
            req.headers_mut().insert("Origin", o.parse().unwrap());
        }
        match tungstenite::client(req, MaybeTlsStream::Plain(srv.connect())) {
            Ok(_) => 101,
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => r.status().as_u16(),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(try_origin(Some("https://evil.example")), 403);
    assert_eq!(try_origin(None), 403);
    assert_eq!(try_origin(Some("https://chat.example")), 101);
}

#[test]
fn cors_preflight_and_headers_for_allowed_origins() {
    let srv = Server::start_with(&["--allowed-origin", "https://chat.example"]);
    let r = srv.raw(
        b"OPTIONS /api/login HTTP/1.1\r\nHost: t\r\nOrigin: https://chat.example\r\nAccess-Control-Request-Method: POST\r\n\r\n",
    );
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://chat.example"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert!(r.header("access-control-allow-methods").unwrap().contains("POST"));
    let r = post_from(&srv, "/api/login", r#"{"key": "x"}"#, "Origin: https://chat.example\r\n");
    assert_eq!(r.header("access-control-allow-origin"), Some("https://chat.example"));
    let r = post_from(&srv, "/api/login", r#"{"key": "x"}"#, "Origin: https://evil.example\r\n");
    assert_eq!(r.header("access-control-allow-origin"), None);
    // Without --allowed-origin there are no CORS headers at all.
    let plain = Server::start();
    let r = post_from(&plain, "/api/login", r#"{"key": "x"}"#, "Origin: https://chat.example\r\n");
    assert!(r.headers.iter().all(|(n, _)| !n.to_ascii_lowercase().starts_with("access-control")));
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

#[test]
fn metrics_counters_move() {
    let srv = Server::start();
    let before = srv.get("/metrics", None);
    assert_eq!(before.status, 200);
    assert!(before.header("content-type").unwrap().starts_with("text/plain"));
    let before = before.text();
    assert_eq!(metric(&before, "skiff_online_users"), 0);
    let mut a = srv.ws(&srv.user("alice"));
    let mut b = srv.ws(&srv.user("bob"));
    a.recv();
    b.say("hi");
    b.recv();
    a.recv();
    let after = srv.get("/metrics", None).text();
    assert_eq!(metric(&after, "skiff_online_users"), 2);
    assert_eq!(metric(&after, "skiff_connections{kind=\"websocket\"}"), 2);
    assert_eq!(metric(&after, "skiff_messages_broadcast_total"), 1);
    assert!(metric(&after, "skiff_deliveries_total") >= 2, "the join and the message");
    // Everything broadcast has been received, so the log holds nothing.
    assert_eq!(metric(&after, "skiff_broadcast_backlog_bytes"), 0);
    assert!(metric(&after, "skiff_http_responses_total{status=\"201\"}") >= 2);
    assert!(metric(&after, "skiff_bytes_sent_total") > metric(&before, "skiff_bytes_sent_total"));
    assert!(metric(&after, "skiff_sessions") >= 2);
}

#[test]
fn metrics_behind_a_trusted_proxy_are_judged_by_the_forwarded_client() {
    // Behind nginx every peer is nginx: the forwarded address is who is asking.
    let srv = Server::start_with(&["--trusted-proxy", "127.0.0.1"]);
    let r = srv.raw(b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.5\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 403, "a client on the internet, forwarded by the proxy");
    let r = srv.raw(b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200, "the operator on the proxy host");
    let r = srv.raw(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200, "the proxy host itself, nothing forwarded");
}

#[test]
fn past_max_connections_new_ones_are_closed_at_once() {
    let srv = Server::start_with(&["--max-connections", "3"]);
    let held: Vec<_> = (0..3).map(|_| srv.connect()).collect();
    // Let the server accept those three.
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = srv.connect();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(read_to_close(&mut extra).is_empty(), "the fourth connection is closed without an answer");
    drop(held);
    assert!(wait_for(Duration::from_secs(5), || {
        let mut s = srv.connect();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").is_ok()
            && read_response(&mut s).is_some_and(|r| r.status == 200)
    }));
}

#[test]
fn running_out_of_descriptors_does_not_spin_or_wedge() {
    let srv = Server::start_with_nofile(48, &["--max-connections", "1000"]);
    // More connections than descriptors: accept hits EMFILE with some still queued.
    let held: Vec<_> = (0..70).map(|_| srv.connect()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = srv.cpu_seconds();
    std::thread::sleep(Duration::from_secs(2));
    let spent = srv.cpu_seconds() - cpu0;
    // A loop spinning on a ready listener would burn ~2 s of CPU here.
    assert!(spent < 0.5, "the server burned {spent:.2}s of CPU in 2s while out of descriptors");
    drop(held);
    assert!(
        wait_for(Duration::from_secs(10), || srv
            .raw(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .status
            == 200),
        "the server serves again once descriptors free up"
    );
    assert!(srv.stderr().contains("accept"), "the EMFILE was logged");
}

#[test]
fn each_request_is_logged_at_debug_with_the_forwarded_client() {
    // The harness runs skiff with RUST_LOG=debug.
    let srv = Server::start_with(&["--trusted-proxy", "127.0.0.1"]);
    let r = srv
        .raw(b"GET /healthz?probe=1 HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    let r = srv.raw(b"GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 404);
    assert!(wait_for(Duration::from_secs(5), || srv.stderr().contains("127.0.0.1 GET /nope 404 ")));
    let log = srv.stderr();
    let line = log.lines().find(|l| l.contains(" GET /healthz ")).expect("the request was logged");
    assert!(line.contains(" DEBUG 203.0.113.9 GET /healthz 200 "), "{line}");
    assert!(!line.contains("probe"), "no query strings in logs: {line}");
}
