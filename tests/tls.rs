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
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let srv = Server::start_in(dir, &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let mut roots = RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
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
