//! Hostile networks, against the real binary over real sockets: one address holding
//! the server's connections, an IPv6 client hopping through its /64, a page of
//! another site using a user's cookie, and a DNS-rebinding page's `Host`.

mod common;

use common::*;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};

/// A connection to `srv` from the local address `from` (127.0.0.2, say: all of
/// 127/8 is loopback on Linux, so a second client address needs no setup).
fn connect_from(srv: &Server, from: &str) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(from.parse().unwrap(), 0).into()).expect("bind the client address");
    sock.connect(&srv.addr.into()).expect("connect");
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// One request on `s` (kept alive); None if the server closed instead of answering.
fn ask(s: &mut TcpStream, head: &str) -> Option<Resp> {
    s.write_all(head.as_bytes()).ok()?;
    read_response(s)
}

const HEALTH: &str = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";

/// `GET /healthz` from a proxy, for the client it names.
fn forwarded_health(client: &str) -> String {
    format!("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {client}\r\n\r\n")
}

#[test]
fn one_address_cannot_lock_out_another() {
    // The issue's attack at a small scale: as many idle connections from one address
    // as the server takes in all. Loopback is exempt by default; the test plays the
    // attacker from 127.0.0.1 and the newcomer from 127.0.0.2.
    let srv = Server::start_with(&["--limit-loopback", "--max-connections", "40", "--max-connections-per-ip", "8"]);
    let mut held: Vec<TcpStream> = (0..40).map(|_| srv.connect()).collect();
    let (mut served, mut refused_503) = (0, 0);
    for s in &mut held {
        match ask(s, HEALTH) {
            Some(r) if r.status == 200 => served += 1,
            Some(r) => {
                assert_eq!((r.status, r.error()), (503, "too_many_connections".to_owned()));
                refused_503 += 1;
            }
            None => {}
        }
    }
    assert_eq!(served, 8, "one address holds --max-connections-per-ip connections");
    assert!(refused_503 > 0, "a refused connection is told why");
    let mut newcomer = connect_from(&srv, "127.0.0.2");
    let r = ask(&mut newcomer, HEALTH).expect("a newcomer from another address is served");
    assert_eq!(r.status, 200);
    // Connections that close give their room back.
    held.clear();
    assert!(
        wait_for(std::time::Duration::from_secs(5), || {
            let mut fresh: Vec<TcpStream> = (0..8).map(|_| srv.connect()).collect();
            fresh.iter_mut().all(|s| ask(s, HEALTH).is_some_and(|r| r.status == 200))
        }),
        "127.0.0.1 gets its 8 connections back"
    );
}

#[test]
fn behind_a_proxy_the_forwarded_address_counts_and_ipv6_by_64() {
    // The proxy's own connections are not capped (8 here, cap 2); each forwarded
    // client is, once a request head names it.
    let srv = Server::start_with(&["--trusted-proxy", "127.0.0.1", "--max-connections-per-ip", "2"]);
    let mut proxy: Vec<TcpStream> = (0..8).map(|_| srv.connect()).collect();
    let clients = [
        ("203.0.113.9", 200),
        ("203.0.113.9", 200),
        ("203.0.113.9", 503),
        ("203.0.113.10", 200),
        ("2001:db8:1:2::1", 200),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", 200),
        ("2001:db8:1:2:abcd::1", 503),
        ("2001:db8:1:3::1", 200),
    ];
    for (s, (client, want)) in proxy.iter_mut().zip(clients) {
        let r = ask(s, &forwarded_health(client)).expect("an answer");
        assert_eq!(r.status, want, "connection for {client}");
        if want == 503 {
            assert_eq!(r.error(), "too_many_connections");
        }
    }
}

#[test]
fn registration_and_login_limits_count_ipv6_by_64() {
    let srv = Server::start_with(&["--trusted-proxy", "127.0.0.1", "--register-limit", "2", "--login-fail-limit", "2"]);
    let post = |path: &str, body: &str, client: &str| {
        srv.raw(
            format!(
                "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Forwarded-For: {client}\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    let register = |name: &str, client: &str| post("/api/register", &format!(r#"{{"username": "{name}"}}"#), client);
    assert_eq!(register("u1", "2001:db8::1").status, 201);
    assert_eq!(register("u2", "2001:db8::2").status, 201);
    let r = register("u3", "2001:db8::3:4:5");
    assert_eq!((r.status, r.error()), (429, "rate_limited".to_owned()), "a third address of the same /64");
    assert_eq!(register("u4", "2001:db8:0:1::1").status, 201, "the next /64 is another client");
    let bad_login = |client: &str| post("/api/login", r#"{"key": "nope"}"#, client).status;
    assert_eq!(bad_login("2001:db8:5:5::a"), 401);
    assert_eq!(bad_login("2001:db8:5:5::b"), 401);
    assert_eq!(bad_login("2001:db8:5:5:ffff::c"), 429);
    assert_eq!(bad_login("2001:db8:5:6::c"), 401);
}

/// A request to `srv` as `chat.example` with extra header lines; `body` makes it a POST.
fn from_page(srv: &Server, method: &str, path: &str, extra: &str, body: Option<&str>) -> Resp {
    let body = body.unwrap_or("");
    srv.raw(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: chat.example\r\nConnection: close\r\n{extra}\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

fn upgrade(srv: &Server, cookie: &str, extra: &str) -> Resp {
    srv.raw(
        format!(
            "GET /ws HTTP/1.1\r\nHost: chat.example\r\nCookie: {cookie}\r\n{extra}Upgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
}

fn assert_cross_site(r: &Resp, what: &str) {
    assert_eq!((r.status, r.error()), (403, "cross_site".to_owned()), "{what}");
    assert_eq!(r.header("set-cookie"), None, "{what}: no cookie set or cleared");
}

#[test]
fn another_sites_page_cannot_change_state() {
    let srv = Server::start_with(&["--allowed-origin", "https://friend.example"]);
    let key = srv.register("alice");
    let cookie = srv.login(&key);
    let with_cookie = format!("Cookie: {cookie}\r\n");
    let evil = "Origin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\n";
    let login_body = format!(r#"{{"key": "{key}"}}"#);

    // An <img src=/api/logout> on another site: no Origin on a GET, but the browser
    // says cross-site.
    let r = from_page(&srv, "GET", "/api/logout", &format!("{with_cookie}Sec-Fetch-Site: cross-site\r\n"), None);
    assert_cross_site(&r, "cross-site GET /api/logout");
    // An older browser: only the Origin tells.
    let r = from_page(&srv, "POST", "/api/logout", &format!("{with_cookie}Origin: https://evil.example\r\n"), None);
    assert_cross_site(&r, "cross-site POST /api/logout");
    assert_eq!(srv.get("/api/user/@me", Some(&cookie)).status, 200, "the session survived both");
    assert_cross_site(&from_page(&srv, "POST", "/api/login", evil, Some(&login_body)), "login");
    let r = from_page(&srv, "POST", "/api/register", "Origin: null\r\n", Some(r#"{"username": "mallory"}"#));
    assert_cross_site(&r, "register from an opaque origin");
    assert_cross_site(&upgrade(&srv, &cookie, evil), "/ws");

    // The site's own pages: the original one sends no Origin on a GET and its own
    // origin on a POST; a newer browser says same-origin.
    let own = "Origin: http://chat.example\r\nSec-Fetch-Site: same-origin\r\n";
    let r = from_page(&srv, "POST", "/api/register", "Origin: http://chat.example\r\n", Some(r#"{"username": "bob"}"#));
    assert_eq!(r.status, 201, "same-origin register");
    assert_eq!(from_page(&srv, "POST", "/api/login", own, Some(&login_body)).status, 200, "same-origin login");
    // A page on an allowed origin may do all of it (CORS as before).
    let friend = "Origin: https://friend.example\r\nSec-Fetch-Site: cross-site\r\n";
    let r = from_page(&srv, "POST", "/api/login", friend, Some(&login_body));
    assert_eq!(r.status, 200, "login from an allowed origin");
    assert_eq!(r.header("access-control-allow-origin"), Some("https://friend.example"));
    assert_eq!(upgrade(&srv, &cookie, friend).status, 101, "/ws from an allowed origin");
    let r = from_page(&srv, "GET", "/api/logout", &with_cookie, None);
    assert_eq!(r.status, 200, "the original page's same-origin GET /api/logout");
    assert_eq!(srv.get("/api/user/@me", Some(&cookie)).status, 401, "and it did log out");

    // Without --allowed-origin every other site is refused, and nothing else changes.
    let plain = Server::start();
    let cookie = plain.user("carol");
    let r =
        from_page(&plain, "GET", "/api/logout", &format!("Cookie: {cookie}\r\nSec-Fetch-Site: cross-site\r\n"), None);
    assert_cross_site(&r, "cross-site logout without --allowed-origin");
    assert_eq!(from_page(&plain, "GET", "/api/logout", &format!("Cookie: {cookie}\r\n"), None).status, 200);
}

#[test]
fn hosts_not_on_the_allow_list_are_misdirected() {
    let srv = Server::start_with(&["--allowed-host", "chat.example", "--allowed-host", "127.0.0.1"]);
    let port = srv.addr.port();
    let get = |path: &str, host: &str| {
        srv.raw(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
    };
    // A DNS-rebinding page: the browser thinks it talks to its own site, whose name
    // now resolves to this host; its Host is that name.
    for path in ["/metrics", "/healthz", "/"] {
        let r = get(path, &format!("rebound.evil.example:{port}"));
        assert_eq!((r.status, r.error()), (421, "misdirected_request".to_owned()), "{path}");
    }
    let r = srv.raw(
        format!(
            "POST /api/register HTTP/1.1\r\nHost: rebound.evil.example:{port}\r\nConnection: close\r\n\
             Content-Length: 19\r\n\r\n{{\"username\": \"eve\"}}"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 421, "no limit-free registration through a rebinding page");
    assert_eq!(get("/healthz", "chat.example").status, 200);
    assert_eq!(get("/healthz", "CHAT.example:8443").status, 200, "an entry without a port takes any port");
    assert_eq!(get("/metrics", &format!("127.0.0.1:{port}")).status, 200, "the operator's own scrape");
}
