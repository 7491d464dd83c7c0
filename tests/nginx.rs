//! skiff behind Debian's nginx, configured by the shipped deploy/nginx.conf: TLS
//! terminated by nginx with the self-signed certificate made by README's trial
//! one-liner, http redirected, the WebSocket upgraded through it over IPv4 and IPv6,
//! X-Forwarded-Proto making the cookie Secure, /metrics refused. Only ports, the
//! upstream address and file paths are substituted, so the tested config is the one we
//! ship. A missing nginx or openssl is a failure naming the command that installs it (a
//! skip would pass silently in `cargo test` output); SKIFF_SKIP_NGINX=1 opts out.

mod common;

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::json;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

const NGINX: &str = "/usr/sbin/nginx";
// Not the shipped placeholder: README's sed must carry the operator's domain everywhere.
const DOMAIN: &str = "trial.example.net";
const LIVE: &str = "/etc/letsencrypt/live/trial.example.net";
const HSTS_MAX_AGE: &str = "300";

/// nginx in its own process group, so that the master and every worker it forks can
/// be found and stopped together: killing only the master orphans workers that keep
/// the ports.
struct Nginx {
    master: Child,
    stopped: bool,
}

/// How a stop went: whether the graceful SIGQUIT sufficed, and any process of the
/// group still alive at the end.
struct Stopped {
    graceful: bool,
    survivors: Vec<String>,
}

impl Nginx {
    fn pgid(&self) -> i32 {
        self.master.id() as i32
    }

    fn stop(&mut self) -> Stopped {
        self.stopped = true;
        let pgid = self.pgid();
        // SAFETY: kill has no memory preconditions; the pid is our own child, not yet reaped.
        unsafe { libc::kill(pgid, libc::SIGQUIT) };
        // SIGQUIT lets workers finish open requests; the master reaps them before exiting.
        let mut graceful = wait_for(Duration::from_secs(10), || matches!(self.master.try_wait(), Ok(Some(_))))
            && wait_for(Duration::from_secs(2), || group_members(pgid).is_empty());
        for sig in [libc::SIGTERM, libc::SIGKILL] {
            if group_members(pgid).is_empty() && matches!(self.master.try_wait(), Ok(Some(_))) {
                break;
            }
            graceful = false;
            // SAFETY: as above; a negative pid addresses the whole process group.
            unsafe { libc::kill(-pgid, sig) };
            wait_for(Duration::from_secs(3), || {
                matches!(self.master.try_wait(), Ok(Some(_))) && group_members(pgid).is_empty()
            });
        }
        let _ = self.master.try_wait();
        Stopped { graceful, survivors: group_members(pgid) }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if !self.stopped {
            self.stop();
        }
    }
}

/// A port free on both 127.0.0.1 and ::1, since the site listens on both.
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        if TcpListener::bind((Ipv6Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1 in 50 tries");
}

fn port_free(addr: SocketAddr) -> bool {
    // std sets SO_REUSEADDR, so connections in TIME_WAIT do not count, a listener does.
    TcpListener::bind(addr).is_ok()
}

/// The shipped site config with test ports, upstream and certificate paths. Every
/// `listen` line must be one this knows: a new one would otherwise go untested.
fn render(site: &str, upstream: &str, https: u16, http: u16, cert: &Path, key: &Path) -> String {
    site.lines()
        .map(|l| {
            let listen = match l.trim() {
                "listen 443 ssl;" => Some(format!("listen 127.0.0.1:{https} ssl;")),
                "listen [::]:443 ssl;" => Some(format!("listen [::1]:{https} ssl;")),
                "listen 80;" => Some(format!("listen 127.0.0.1:{http};")),
                "listen [::]:80;" => Some(format!("listen [::1]:{http};")),
                t if t.starts_with("listen") => panic!("tests/nginx.rs does not know how to test {t:?}"),
                _ => None,
            };
            listen.unwrap_or_else(|| {
                l.replace("127.0.0.1:7777", upstream)
                    .replace(&format!("{LIVE}/fullchain.pem"), cert.to_str().unwrap())
                    .replace(&format!("{LIVE}/privkey.pem"), key.to_str().unwrap())
            })
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The sh code of the book's "Behind nginx" section (docs/src/deploying.md), one line
/// per command.
fn readme_deploy_commands() -> Vec<String> {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/src/deploying.md");
    let readme = std::fs::read_to_string(page).unwrap();
    let section = readme.split("\n## Behind nginx").nth(1).expect("docs/src/deploying.md has ## Behind nginx");
    let section = section.split("\n## ").next().unwrap();
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in section.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            l if in_sh && !l.is_empty() && !l.starts_with('#') => commands.push(l.to_owned()),
            _ => {}
        }
    }
    commands
}

/// Runs a README command as a trial operator would (without sudo), returning stdout.
fn sh(line: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(line.replace("sudo ", ""))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DOMAIN", DOMAIN)
        .env("HSTS_MAX_AGE", HSTS_MAX_AGE)
        .output()
        .expect("run sh");
    assert!(out.status.success(), "README's `{line}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Follows README's trial path: the self-signed certificate (in `dir` instead of
/// /etc), made before `nginx -t`, and the site as its sed writes it. Returns the site.
fn readme_trial_site(dir: &Path) -> String {
    let commands = readme_deploy_commands();
    let at = |needle: &str| {
        commands
            .iter()
            .position(|c| c.contains(needle))
            .unwrap_or_else(|| panic!("README deploy steps lack {needle:?}"))
    };
    let nginx_t = at("nginx -t");
    assert!(at("certbot certonly") < nginx_t, "README gets the real certificate after `nginx -t`");
    assert!(at("openssl req") < nginx_t, "README makes the trial certificate after `nginx -t`");
    assert!(at("deploy/nginx.conf |") < nginx_t, "README checks the site before writing it");
    sh(&commands[at("openssl req")].replace("/etc/letsencrypt/live/$DOMAIN", dir.to_str().unwrap()));
    let site = sh(commands[at("deploy/nginx.conf |")].split(" | ").next().unwrap());
    assert!(!site.contains("chat.example.org"), "README's sed leaves the placeholder domain in the site");
    site
}

#[test]
fn chat_through_nginx_with_tls_termination() {
    if std::env::var("SKIFF_SKIP_NGINX").is_ok_and(|v| v == "1") {
        eprintln!("nginx test not run: SKIFF_SKIP_NGINX=1 opts out of it");
        return;
    }
    let mut missing = Vec::new();
    if !Path::new(NGINX).exists() {
        missing.push(format!("no {NGINX}: run `apt-get install nginx`"));
    }
    if !Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success()) {
        missing.push("no openssl (README's trial certificate): run `apt-get install openssl`".to_owned());
    }
    if TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_err() {
        missing.push("no IPv6 loopback (::1), which the shipped `listen [::]` lines need".to_owned());
    }
    assert!(
        missing.is_empty(),
        "the nginx test cannot run:\n  {}\nor set SKIFF_SKIP_NGINX=1 to skip it on purpose",
        missing.join("\n  ")
    );

    let srv = Server::start_with(&["--trusted-proxy", "127.0.0.1"]);
    let prefix = tempfile::tempdir().unwrap();
    let p = prefix.path();
    let site = readme_trial_site(p);
    let (cert, key) = (p.join("fullchain.pem"), p.join("privkey.pem"));
    let (https, http) = (free_port_pair(), free_port_pair());
    let site = render(&site, &srv.addr.to_string(), https, http, &cert, &key);
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
    let mut nginx = Nginx {
        master: Command::new(NGINX)
            .arg("-p")
            .arg(p)
            .arg("-c")
            .arg(p.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx"),
        stopped: false,
    };
    let v4 = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = |port| SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    assert!(
        wait_for(Duration::from_secs(10), || [v4(https), v6(https), v4(http), v6(http)]
            .iter()
            .all(|a| TcpStream::connect(a).is_ok())),
        "nginx never listened on every address"
    );

    // Plain HTTP is redirected to https, on both families.
    for addr in [v4(http), v6(http)] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.write_all(format!("GET /api/online HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n").as_bytes())
            .unwrap();
        let r = read_response(&mut s).expect("redirect");
        assert_eq!(r.status, 301, "http on {addr}");
        assert_eq!(r.header("location"), Some(format!("https://{DOMAIN}/api/online").as_str()), "http on {addr}");
    }

    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&cert).expect("README's certificate is PEM")).unwrap();
    let client = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let tls_to = |addr: SocketAddr| {
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let conn = ClientConnection::new(client.clone(), ServerName::try_from(DOMAIN).unwrap()).unwrap();
        StreamOwned::new(conn, sock)
    };
    let request = |addr: SocketAddr, head: &str, body: &str| {
        let mut s = tls_to(addr);
        let req =
            format!("{head}\r\nHost: {DOMAIN}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        s.write_all(req.as_bytes()).unwrap();
        read_response(&mut s).expect("response through nginx")
    };
    let post = |path: &str, body: String| request(v4(https), &format!("POST {path} HTTP/1.1"), &body);
    let user = |name: &str| {
        let r = post("/api/register", json!({ "username": name }).to_string());
        assert_eq!(r.status, 201, "{}", r.text());
        let key = r.json()["key"].as_str().unwrap().to_owned();
        let r = post("/api/login", json!({ "key": key }).to_string());
        assert_eq!(r.status, 200);
        let set_cookie = r.header("set-cookie").unwrap().to_owned();
        assert!(set_cookie.ends_with("; Secure"), "X-Forwarded-Proto https from a trusted proxy: {set_cookie}");
        let hsts = format!("max-age={HSTS_MAX_AGE}");
        assert_eq!(r.header("strict-transport-security"), Some(hsts.as_str()), "HSTS as README's trial sets it");
        r.cookie().unwrap()
    };
    let wss = |addr: SocketAddr, cookie: &str| {
        let mut req = format!("wss://{DOMAIN}:{https}/ws").into_client_request().unwrap();
        req.headers_mut().insert("Cookie", cookie.parse().unwrap());
        tungstenite::client(req, tls_to(addr)).unwrap_or_else(|e| panic!("upgrade through nginx on {addr}: {e}")).0
    };
    let recv = |ws: &mut tungstenite::WebSocket<StreamOwned<ClientConnection, TcpStream>>| {
        for _ in 0..100 {
            match ws.read().expect("read through nginx") {
                Message::Text(t) => return serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("only pings and pongs through nginx");
    };
    let alice = user("alice");
    let bob = user("bob");
    let mut a = wss(v4(https), &alice);
    // bob comes in over IPv6: the shipped `listen [::]:443 ssl` line carries the upgrade too.
    let mut b = wss(v6(https), &bob);
    assert_eq!(recv(&mut a), json!({"event": "join", "username": "bob"}));
    b.send(Message::text(r#"{"message": "through the proxy"}"#)).unwrap();
    assert_eq!(recv(&mut b), json!({"status": true}));
    assert_eq!(recv(&mut a), json!({"message": "through the proxy", "author": "bob"}));
    let online = request(v6(https), &format!("GET /api/online HTTP/1.1\r\nCookie: {alice}"), "");
    assert_eq!(online.json(), json!({"online_clients": ["alice", "bob"]}), "an API call over IPv6");

    // /metrics is for the operator on the host, never through the proxy: nginx itself
    // answers 403 (an HTML page, not skiff's JSON), whatever address the client claims
    // and however it spells the path.
    for (path, xff) in [
        ("/metrics", Some("203.0.113.5")),
        ("/metrics", Some("127.0.0.1")),
        ("/metrics", None),
        ("/metrics?format=prometheus", Some("203.0.113.5")),
        ("//metrics", Some("203.0.113.5")),
        ("/%6Detrics", Some("203.0.113.5")),
    ] {
        for addr in [v4(https), v6(https)] {
            let forwarded = xff.map(|x| format!("\r\nX-Forwarded-For: {x}")).unwrap_or_default();
            let r = request(addr, &format!("GET {path} HTTP/1.1{forwarded}"), "");
            assert_eq!(r.status, 403, "GET {path} with X-Forwarded-For {xff:?} on {addr}: {}", r.text());
            assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/html")), "refused by nginx: {r:?}");
            assert!(!r.text().contains("skiff_"), "metrics leaked for {path}");
        }
    }

    drop(b);
    assert_eq!(recv(&mut a), json!({"event": "leave", "username": "bob"}));
    drop(a);

    // A graceful stop: SIGQUIT suffices once clients are gone, and nothing of nginx
    // survives it to hold the ports.
    let stopped = nginx.stop();
    assert!(stopped.survivors.is_empty(), "nginx processes survived the stop: {:?}", stopped.survivors);
    assert!(stopped.graceful, "nginx needed SIGTERM/SIGKILL to stop");
    for addr in [v4(https), v6(https), v4(http), v6(http)] {
        assert!(port_free(addr), "{addr} is still taken after nginx stopped");
    }
}
