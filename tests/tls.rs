//! HTTPS and WSS served by skiff itself (`--tls-cert/--tls-key`), with a throwaway
//! certificate made at test time and a rustls client that trusts only it.

mod common;

use common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::json;
use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

struct Tls {
    srv: Server,
    client: Arc<ClientConfig>,
}

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

fn start() -> Tls {
    start_with(&[])
}

/// skiff with its own TLS and `extra` flags, and a client that trusts only its certificate.
fn start_with(extra: &[&str]) -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles::new(dir.path());
    let mut args = files.args().to_vec();
    args.extend_from_slice(extra);
    let srv = Server::start_in(dir, &args);
    let mut roots = RootCertStore::empty();
    roots.add(files.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Tls { srv, client: Arc::new(client) }
}

impl Tls {
    fn connect(&self) -> TlsStream {
        let sock = self.srv.connect();
        let conn = ClientConnection::new(self.client.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
        StreamOwned::new(conn, sock)
    }

    fn request(&self, raw: &str) -> Resp {
        let mut s = self.connect();
        s.write_all(raw.as_bytes()).unwrap();
        read_response(&mut s).expect("response over TLS")
    }

    fn post(&self, path: &str, body: &str) -> Resp {
        self.request(&format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    }

    fn user(&self, name: &str) -> String {
        let r = self.post("/api/register", &json!({ "username": name }).to_string());
        assert_eq!(r.status, 201);
        let key = r.json()["key"].as_str().unwrap().to_owned();
        let r = self.post("/api/login", &json!({ "key": key }).to_string());
        assert_eq!(r.status, 200);
        let set_cookie = r.header("set-cookie").unwrap();
        assert!(set_cookie.ends_with("; Secure"), "cookie must be Secure under TLS: {set_cookie}");
        r.cookie().unwrap()
    }

    fn wss(&self, cookie: &str) -> tungstenite::WebSocket<TlsStream> {
        let mut req = format!("wss://localhost:{}/ws", self.srv.addr.port()).into_client_request().unwrap();
        req.headers_mut().insert("Cookie", cookie.parse().unwrap());
        tungstenite::client(req, self.connect()).expect("wss handshake").0
    }
}

fn recv(ws: &mut tungstenite::WebSocket<TlsStream>) -> serde_json::Value {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn https_api_and_wss_chat() {
    let tls = start();
    let r = tls.request("GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert_eq!(r.json(), json!({"status": "ok"}));
    let alice = tls.user("alice");
    let bob = tls.user("bob");
    let r =
        tls.request(&format!("GET /api/user/@me HTTP/1.1\r\nHost: l\r\nCookie: {alice}\r\nConnection: close\r\n\r\n"));
    assert_eq!(r.json(), json!({"username": "alice", "online": false}));
    let mut a = tls.wss(&alice);
    let mut b = tls.wss(&bob);
    assert_eq!(recv(&mut a), json!({"event": "join", "username": "bob"}));
    b.send(Message::text(r#"{"message": "over tls"}"#)).unwrap();
    assert_eq!(recv(&mut b), json!({"status": true}));
    assert_eq!(recv(&mut a), json!({"message": "over tls", "author": "bob"}));
    // A big message in both directions crosses several TLS records.
    let long = "é".repeat(300);
    a.send(Message::text(json!({ "message": long }).to_string())).unwrap();
    assert_eq!(recv(&mut b), json!({"message": long, "author": "alice"}));
    assert_eq!(recv(&mut a), json!({"status": true}));
    drop(b);
    assert_eq!(recv(&mut a)["event"], "leave");
}

#[test]
fn keep_alive_and_pipelining_over_tls() {
    let tls = start();
    let mut s = tls.connect();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: l\r\n\r\nGET /nope HTTP/1.1\r\nHost: l\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 200);
    assert_eq!(read_response(&mut s).unwrap().status, 404);
}

#[test]
fn plain_http_to_a_tls_port_does_not_hurt_others() {
    let tls = start();
    let mut plain = tls.srv.connect();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: l\r\n\r\n").unwrap();
    let _ = read_to_close(&mut plain);
    let r = tls.request("GET /healthz HTTP/1.1\r\nHost: l\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
}

#[test]
fn bad_certificate_files_are_startup_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a pem").unwrap();
    for (cert, key) in
        [("/nonexistent/cert.pem", "/nonexistent/key.pem"), (junk.to_str().unwrap(), junk.to_str().unwrap())]
    {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key])
            .arg("--db")
            .arg(dir.path().join("x.db"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{cert}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--tls-"), "{err}");
        assert!(out.stdout.is_empty());
    }
}

const HSTS: &str = "strict-transport-security";

/// Three answers of different kinds on one TLS connection: a page, an API error, and
/// a framing error that closes the connection.
fn hsts_values(tls: &Tls) -> Vec<Option<String>> {
    let mut s = tls.connect();
    s.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: l\r\n\r\nGET /api/online HTTP/1.1\r\nHost: l\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    )
    .unwrap();
    let answers: Vec<Resp> = (0..3).map(|_| read_response(&mut s).expect("response over TLS")).collect();
    assert_eq!(answers.iter().map(|r| r.status).collect::<Vec<_>>(), [200, 422, 400]);
    answers.iter().map(|r| r.header(HSTS).map(str::to_owned)).collect()
}

#[test]
fn hsts_is_sent_over_tls_with_a_short_default() {
    let tls = start();
    assert_eq!(hsts_values(&tls), vec![Some("max-age=300".to_owned()); 3]);
    // The page and a WebSocket's refusal carry it too; the 101 does not (an interim
    // answer: the requests before and after it carry the policy).
    let r = tls.request("GET / HTTP/1.1\r\nHost: l\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, r.header(HSTS)), (200, Some("max-age=300")));
    let alice = tls.user("alice");
    let mut req = format!("wss://localhost:{}/ws", tls.srv.addr.port()).into_client_request().unwrap();
    req.headers_mut().insert("Cookie", alice.parse().unwrap());
    let (_ws, resp) = tungstenite::client(req, tls.connect()).expect("wss handshake");
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers().get(HSTS), None);
}

#[test]
fn hsts_max_age_is_configurable_and_zero_turns_it_off() {
    let year = start_with(&["--hsts-max-age", "31536000"]);
    assert_eq!(hsts_values(&year), vec![Some("max-age=31536000".to_owned()); 3]);
    let off = start_with(&["--hsts-max-age", "0"]);
    assert_eq!(hsts_values(&off), vec![None; 3]);
}

#[test]
fn hsts_is_never_sent_over_plain_http() {
    // Even when asked for: a browser ignores it over http (RFC 6797 8.1), and behind
    // a proxy the proxy decides (the shipped nginx config sends its own).
    let srv = Server::start_with(&["--hsts-max-age", "600", "--trusted-proxy", "127.0.0.1"]);
    let r = srv.get("/healthz", None);
    assert_eq!((r.status, r.header(HSTS)), (200, None));
    let r = srv.raw(b"GET /healthz HTTP/1.1\r\nHost: l\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, r.header(HSTS)), (200, None));
    assert_eq!(srv.get("/nope", None).header(HSTS), None);
}

#[test]
fn a_bad_hsts_max_age_is_a_usage_error() {
    for bad in ["-1", "soon", "4294967296"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["--listen", "127.0.0.1:0", "--db", "/nonexistent/x.db", "--hsts-max-age", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        // The reason on one line (then the usual pointer to --help).
        assert!(err.lines().next().unwrap().contains("--hsts-max-age: expected a number"), "{err}");
    }
}

/// Three 16 KiB records of a ClientHello that declares 60,000 bytes and never ends:
/// rustls keeps all of it, waiting for the rest.
fn stalled_client_hello() -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..3 {
        out.extend_from_slice(&[22, 3, 1, 0x40, 0x00]);
        let mut body = vec![0x5a; 16 * 1024];
        if i == 0 {
            body[..4].copy_from_slice(&[1, 0x00, 0xea, 0x60]);
        }
        out.extend_from_slice(&body);
    }
    out
}

fn metric(tls: &Tls, name: &str) -> u64 {
    let page = tls.request("GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").text();
    let line = page.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' ')).expect(name);
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The server closed (or reset) the socket; false while it is still open.
fn closed_by_server(s: &mut TcpStream) -> bool {
    use std::io::Read;
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn stalled_handshakes_count_against_the_memory_budget() {
    // Unbudgeted, the gauge sees what the stalled handshakes make rustls hold.
    let tls = start();
    let hello = stalled_client_hello();
    let mut held: Vec<TcpStream> = (0..20).map(|_| tls.srv.connect()).collect();
    for s in &mut held {
        s.write_all(&hello).unwrap();
    }
    let each = 48 * 1024;
    assert!(
        wait_for(IO_TIMEOUT, || metric(&tls, "skiff_client_memory_bytes") >= 20 * each as u64),
        "{} bytes counted for 20 stalled handshakes",
        metric(&tls, "skiff_client_memory_bytes")
    );
    drop(held);

    // With a budget, the stalled ones are closed once they hold too much, and a
    // client that completes its handshake still gets in and chats.
    let tls = start_with(&["--memory-budget", "1M"]);
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..40 {
        let mut s = tls.srv.connect();
        s.write_all(&hello).unwrap();
        held.push(s);
    }
    assert!(
        wait_for(IO_TIMEOUT, || metric(&tls, "skiff_memory_budget_closed_total") >= 20),
        "closed: {}",
        metric(&tls, "skiff_memory_budget_closed_total")
    );
    assert!(metric(&tls, "skiff_client_memory_bytes") <= 1024 * 1024);
    assert!(wait_for(IO_TIMEOUT, || held.iter_mut().map(closed_by_server).filter(|&c| c).count() >= 20));
    let mut a = tls.wss(&tls.user("patient"));
    let mut b = tls.wss(&tls.user("peer"));
    assert_eq!(recv(&mut a), json!({"event": "join", "username": "peer"}));
    b.send(Message::text(r#"{"message": "still here"}"#)).unwrap();
    assert_eq!(recv(&mut b), json!({"status": true}));
    assert_eq!(recv(&mut a), json!({"message": "still here", "author": "peer"}));
}
