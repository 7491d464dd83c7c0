//! The HTTP API and its framing rules over real sockets.

mod common;

use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[test]
fn register_login_online_user_logout() {
    let srv = Server::start();
    let r = srv.post("/api/register", r#"{"username": "Alice"}"#, None);
    assert_eq!(r.status, 201);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let key = r.json()["key"].as_str().unwrap().to_owned();
    assert!(key.len() >= 22, "at least 128 bits of key");
    assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "URL-safe key");

    let r = srv.post("/api/login", &format!(r#"{{"key": "{key}"}}"#), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"username": "Alice"}));
    let set_cookie = r.header("set-cookie").unwrap().to_owned();
    assert!(set_cookie.ends_with("; Path=/; HttpOnly; SameSite=Lax"), "{set_cookie}");
    let cookie = r.cookie().unwrap();

    assert_eq!(srv.get("/api/online", Some(&cookie)).json(), json!({"online_clients": []}));
    assert_eq!(srv.get("/api/user/@me", Some(&cookie)).json(), json!({"username": "Alice", "online": false}));
    assert_eq!(srv.get("/api/user/alice", Some(&cookie)).json(), json!({"username": "Alice", "online": false}));
    let r = srv.get("/api/user/nobody", Some(&cookie));
    assert_eq!((r.status, r.error().as_str()), (404, "user_not_found"));

    let r = srv.get("/api/logout", Some(&cookie));
    assert_eq!(r.status, 200);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let r = srv.get("/api/online", Some(&cookie));
    assert_eq!((r.status, r.error().as_str()), (401, "invalid_session"));
    assert_eq!(srv.request("POST", "/api/logout", None, None).status, 200);
}

#[test]
fn names_are_validated_and_unique_ignoring_case() {
    let srv = Server::start();
    srv.register("alice");
    let r = srv.post("/api/register", r#"{"username": "ALICE"}"#, None);
    assert_eq!((r.status, r.error().as_str()), (409, "username_taken"));
    for bad in ["a".repeat(33), "abc\n".into(), "ünicode".into(), "a b".into(), String::new()] {
        let body = json!({ "username": bad }).to_string();
        let r = srv.post("/api/register", &body, None);
        assert_eq!((r.status, r.error().as_str()), (400, "invalid_username"), "{bad:?}");
    }
    srv.register(&"b".repeat(32));
}

#[test]
fn malformed_bodies_are_422() {
    let srv = Server::start();
    for body in ["{", "[]", "null", r#"{"username": 1}"#, r#"{"username": "a", "x": 2}"#, r#"{"user": "a"}"#] {
        let r = srv.post("/api/register", body, None);
        assert_eq!((r.status, r.error().as_str()), (422, "invalid_format"), "{body}");
        assert_eq!(srv.post("/api/login", body, None).status, 422, "{body}");
    }
    assert_eq!(srv.post("/api/login", r#"{"key": "wrong"}"#, None).status, 401);
}

#[test]
fn unknown_path_404_wrong_method_405() {
    let srv = Server::start();
    let r = srv.get("/nope", None);
    assert_eq!((r.status, r.error().as_str()), (404, "not_found"));
    let r = srv.get("/api/register", None);
    assert_eq!((r.status, r.error().as_str()), (405, "method_not_allowed"));
    assert_eq!(r.header("allow"), Some("POST"));
}

#[test]
fn responses_carry_safety_headers() {
    let srv = Server::start();
    let r = srv.get("/healthz", None);
    assert_eq!(r.json(), json!({"status": "ok"}));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

#[test]
fn oversized_head_is_431_and_body_413() {
    let srv = Server::start();
    let big_header = format!("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
    let r = srv.raw(big_header.as_bytes());
    assert_eq!((r.status, r.error().as_str()), (431, "header_too_large"));
    let body = format!(r#"{{"username": "{}"}}"#, "a".repeat(5000));
    let r = srv.post("/api/register", &body, None);
    assert_eq!((r.status, r.error().as_str()), (413, "body_too_large"));
}

#[test]
fn chunked_bodies_are_understood() {
    let srv = Server::start();
    let body = r#"{"username": "chunky"}"#;
    let (a, b) = body.split_at(7);
    let req = format!(
        "POST /api/register HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    assert_eq!(srv.raw(req.as_bytes()).status, 201);
}

#[test]
fn smuggling_shapes_are_400_and_close() {
    let srv = Server::start();
    let cases: &[&[u8]] = &[
        b"POST /api/login HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /api/login HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /api/login HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
        b"POST /api/login HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"POST /api/login HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX: a\x01b\r\n\r\n",
        b"GET /healthz HTTP/1.1\rHost: t\r\n\r\n",
        b"\x00GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
        b"POST /api/login HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    ];
    for case in cases {
        let mut s = srv.connect();
        s.write_all(case).unwrap();
        let r = read_response(&mut s).unwrap_or_else(|| panic!("no response to {:?}", String::from_utf8_lossy(case)));
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(case));
        assert_eq!(r.error(), "bad_request");
        // ...and the connection is closed after it.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "nothing may follow the 400");
    }
}

#[test]
fn unknown_http_version_is_505() {
    let srv = Server::start();
    let r = srv.raw(b"GET /healthz HTTP/1.7\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 505);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let srv = Server::start();
    let mut s = srv.connect();
    let mut batch = Vec::new();
    for name in ["p1", "p2", "p3"] {
        let body = format!(r#"{{"username": "{name}"}}"#);
        batch.extend_from_slice(
            format!("POST /api/register HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .as_bytes(),
        );
    }
    batch.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    s.write_all(&batch).unwrap();
    let statuses: Vec<u16> = (0..5).map(|_| read_response(&mut s).unwrap().status).collect();
    assert_eq!(statuses, [201, 201, 201, 404, 200]);
    let r = srv.post("/api/register", r#"{"username": "p2"}"#, None);
    assert_eq!(r.status, 409, "the pipelined registration really happened");
}

#[test]
fn thousands_of_pipelined_requests_in_one_write_are_all_answered() {
    // 64 KiB of output is ~331 answers: reading pauses there and must resume on the
    // requests already buffered once the client has read the answers.
    let srv = Server::start();
    for n in [1000usize, 2000, 5000] {
        let mut s = srv.connect();
        let mut writer = s.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            writer.write_all("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(n).as_bytes()).unwrap();
        });
        let answered = (0..n).take_while(|_| read_response(&mut s).is_some_and(|r| r.status == 200)).count();
        sender.join().unwrap();
        assert_eq!(answered, n, "{n} pipelined requests");
    }
}

#[test]
fn a_request_a_byte_at_a_time_is_answered_the_same() {
    let srv = Server::start();
    let body = r#"{"username": "slowpoke"}"#;
    let req = format!("POST /api/register HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let mut s = srv.connect();
    s.set_nodelay(true).unwrap();
    for b in req.as_bytes() {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(read_response(&mut s).unwrap().status, 201);
}

#[test]
fn expect_100_continue_gets_continue_first() {
    let srv = Server::start();
    let body = r#"{"username": "expecting"}"#;
    let mut s = srv.connect();
    let head = format!(
        "POST /api/register HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 100);
    s.write_all(body.as_bytes()).unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 201);
}

#[test]
fn a_head_that_never_completes_times_out_in_about_10s() {
    let srv = Server::start();
    let mut s = srv.connect();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n").unwrap();
    let start = Instant::now();
    let r = read_response(&mut s).expect("a 408 before the close");
    assert_eq!(r.status, 408);
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(9), "closed too early: {waited:?}");
    // Other clients were served meanwhile (checked after, without timing assertions).
    assert_eq!(srv.get("/healthz", None).status, 200);
}

#[test]
fn http_10_closes_after_the_response() {
    let srv = Server::start();
    let mut s = srv.connect();
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(read_to_close(&mut s).is_empty());
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let srv = Server::start();
    let mut s = srv.connect();
    for _ in 0..3 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let r = read_response(&mut s).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
}

#[test]
fn restart_keeps_users_keys_and_sessions() {
    let srv = Server::start();
    let key = srv.register("survivor");
    let cookie = srv.login(&key);
    let ended = srv.login(&key);
    assert_eq!(srv.get("/api/logout", Some(&ended)).status, 200);
    let mut ws = srv.ws(&cookie);
    ws.say("before the deploy");
    assert_eq!(ws.recv(), serde_json::json!({"status": true}));
    let dir = srv.stop();
    let srv = Server::start_in(dir, &[]);
    // A deploy logs nobody out: the same cookie works and its WebSocket reconnects.
    assert_eq!(srv.get("/api/user/@me", Some(&cookie)).json()["username"], "survivor");
    let mut ws = srv.ws(&cookie);
    ws.say("after the deploy");
    assert_eq!(ws.recv(), serde_json::json!({"status": true}));
    assert_eq!(srv.get("/api/online", Some(&cookie)).json()["online_clients"], serde_json::json!(["survivor"]));
    // A session that was logged out stays logged out.
    assert_eq!(srv.get("/api/user/@me", Some(&ended)).status, 401);
    assert_eq!(srv.post("/api/register", r#"{"username": "SURVIVOR"}"#, None).status, 409);
    drop(ws);
    assert_eq!(srv.get("/api/logout", Some(&cookie)).status, 200);
    let srv = Server::start_in(srv.stop(), &[]);
    assert_eq!(srv.get("/api/user/@me", Some(&cookie)).status, 401, "logout is remembered across a restart");
    assert_eq!(srv.get("/api/user/@me", Some(&srv.login(&key))).status, 200);
}

#[test]
fn the_key_is_never_stored_in_clear() {
    let srv = Server::start();
    let key = srv.register("secretive");
    let mut all = Vec::new();
    for entry in std::fs::read_dir(srv.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        // chat.db, its -wal and -shm; not the control socket (chat.db.ctl) beside them.
        if path.file_name().unwrap().to_string_lossy().starts_with("chat.db") && path.is_file() {
            all.extend(std::fs::read(path).unwrap());
        }
    }
    assert!(all.windows(9).any(|w| w == b"secretive"), "the user row is on disk");
    assert!(!all.windows(key.len()).any(|w| w == key.as_bytes()), "the key must not be");
}
