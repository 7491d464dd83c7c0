//! skiff behind Debian's nginx, configured by the shipped deploy/nginx.conf: TLS
//! terminated by nginx, the WebSocket upgraded through it, X-Forwarded-Proto making
//! the cookie Secure. Only ports, the upstream address and file paths are substituted,
//! so the tested config is the one we ship. Skips where nginx is not installed,
//! unless SKIFF_REQUIRE_NGINX=1 (CI sets it).

mod common;

use common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::json;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

const NGINX: &str = "/usr/sbin/nginx";

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The shipped site config with test ports, upstream and certificate paths.
fn render(site: &str, upstream: &str, https: u16, http: u16, cert: &Path, key: &Path) -> String {
    site.lines()
        .filter(|l| !l.trim_start().starts_with("listen [::]"))
        .map(|l| {
            l.replace("listen 443 ssl;", &format!("listen 127.0.0.1:{https} ssl;"))
                .replace("listen 80;", &format!("listen 127.0.0.1:{http};"))
                .replace("127.0.0.1:7777", upstream)
                .replace("/etc/letsencrypt/live/chat.example.org/fullchain.pem", cert.to_str().unwrap())
                .replace("/etc/letsencrypt/live/chat.example.org/privkey.pem", key.to_str().unwrap())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn chat_through_nginx_with_tls_termination() {
    if !Path::new(NGINX).exists() {
        assert!(std::env::var("SKIFF_REQUIRE_NGINX").is_err(), "SKIFF_REQUIRE_NGINX is set but {NGINX} is missing");
        eprintln!("skipping the nginx test: {NGINX} is not installed");
        return;
    }
    let srv = Server::start_with(&["--trusted-proxy", "127.0.0.1"]);
    let prefix = tempfile::tempdir().unwrap();
    let p = prefix.path();
    let ck = rcgen::generate_simple_self_signed(vec!["chat.example.org".into()]).unwrap();
    std::fs::write(p.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(p.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    let (https, http) = (free_port(), free_port());
    let site = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf")).unwrap();
    let site = render(&site, &srv.addr.to_string(), https, http, &p.join("cert.pem"), &p.join("key.pem"));
    // SAFETY: geteuid has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 { "user root;" } else { "" };
    let d = p.display();
    let conf = format!(
        "{user}\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n access_log {d}/access.log;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{site}\n}}\n"
    );
    std::fs::write(p.join("nginx.conf"), conf).unwrap();
    let check = Command::new(NGINX).arg("-t").arg("-p").arg(p).arg("-c").arg(p.join("nginx.conf")).output().unwrap();
    assert!(check.status.success(), "nginx -t: {}", String::from_utf8_lossy(&check.stderr));
    let _nginx = Nginx(
        Command::new(NGINX)
            .arg("-p")
            .arg(p)
            .arg("-c")
            .arg(p.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx"),
    );
    assert!(
        wait_for(Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", https)).is_ok()),
        "nginx never listened"
    );

    // Plain HTTP is redirected to https.
    let mut s = TcpStream::connect(("127.0.0.1", http)).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"GET /api/online HTTP/1.1\r\nHost: chat.example.org\r\nConnection: close\r\n\r\n").unwrap();
    let r = read_response(&mut s).expect("redirect");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://chat.example.org/api/online"));

    let mut roots = RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let client = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let tls = || {
        let sock = TcpStream::connect(("127.0.0.1", https)).unwrap();
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let conn = ClientConnection::new(client.clone(), ServerName::try_from("chat.example.org").unwrap()).unwrap();
        StreamOwned::new(conn, sock)
    };
    let post = |path: &str, body: String| {
        let mut s = tls();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: chat.example.org\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        read_response(&mut s).expect("response through nginx")
    };
    let user = |name: &str| {
        let r = post("/api/register", json!({ "username": name }).to_string());
        assert_eq!(r.status, 201, "{}", r.text());
        let key = r.json()["key"].as_str().unwrap().to_owned();
        let r = post("/api/login", json!({ "key": key }).to_string());
        assert_eq!(r.status, 200);
        let set_cookie = r.header("set-cookie").unwrap().to_owned();
        assert!(set_cookie.ends_with("; Secure"), "X-Forwarded-Proto https from a trusted proxy: {set_cookie}");
        assert!(r.header("strict-transport-security").is_some(), "HSTS from the shipped config");
        r.cookie().unwrap()
    };
    let wss = |cookie: &str| {
        let mut req = format!("wss://chat.example.org:{https}/ws").into_client_request().unwrap();
        req.headers_mut().insert("Cookie", cookie.parse().unwrap());
        tungstenite::client(req, tls()).expect("upgrade through nginx").0
    };
    let recv = |ws: &mut tungstenite::WebSocket<StreamOwned<ClientConnection, TcpStream>>| loop {
        match ws.read().expect("read through nginx") {
            Message::Text(t) => return serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    let alice = user("alice");
    let bob = user("bob");
    let mut a = wss(&alice);
    let mut b = wss(&bob);
    assert_eq!(recv(&mut a), json!({"event": "join", "username": "bob"}));
    b.send(Message::text(r#"{"message": "through the proxy"}"#)).unwrap();
    assert_eq!(recv(&mut b), json!({"status": true}));
    assert_eq!(recv(&mut a), json!({"message": "through the proxy", "author": "bob"}));
    let mut s = tls();
    s.write_all(
        format!("GET /api/online HTTP/1.1\r\nHost: chat.example.org\r\nCookie: {alice}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(read_response(&mut s).unwrap().json(), json!({"online_clients": ["alice", "bob"]}));
    drop(b);
    assert_eq!(recv(&mut a), json!({"event": "leave", "username": "bob"}));
}
