//! The routes driven directly: an in-memory store, a fake clock, no sockets.

use super::*;
use crate::chat::ChatConfig;
use crate::proxy::Client;
use crate::ratelimit::RateLimits;
use crate::store::Store;
use std::time::Duration;

const LOCAL: Client = Client {
    ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    forwarded: false,
    https: false,
    trusted_peer: false,
};

struct World {
    chat: Chat,
    store: Store,
    cfg: ApiConfig,
    now: Instant,
    fx: Effects,
    client: Client,
    metered: bool,
    limits: RateLimits,
}

impl World {
    fn new() -> World {
        World {
            chat: Chat::new(ChatConfig {
                session_ttl: Duration::from_secs(60),
                max_sessions_per_user: 8,
                max_devices: 5,
                max_sessions: 100,
                message_rate: None,
                history: 10,
            }),
            store: Store::open_in_memory().unwrap(),
            cfg: ApiConfig::default(),
            now: Instant::now(),
            fx: Vec::new(),
            client: LOCAL,
            metered: false,
            limits: RateLimits::new(2, 3),
        }
    }

    fn call(&mut self, method: &str, target: &str, cookie: Option<&str>, body: &str) -> Outcome {
        let cookie = cookie.map(|c| ("Cookie", c));
        self.call_with(method, target, cookie.as_slice(), body)
    }

    fn call_with(&mut self, method: &str, target: &str, extra: &[(&str, &str)], body: &str) -> Outcome {
        let mut headers = vec![("Host".to_string(), b"t".to_vec())];
        headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())));
        let req = Request {
            method: method.into(),
            target: target.into(),
            minor_version: 1,
            headers,
            body: body.as_bytes().to_vec(),
        };
        let mut ctx = Ctx {
            chat: &mut self.chat,
            cfg: &self.cfg,
            now: self.now,
            fx: &mut self.fx,
            client: self.client,
            metered: self.metered,
            limits: &mut self.limits,
            server: crate::api::ServerState::empty(),
        };
        handle_now(&req, &mut ctx, &mut self.store)
    }

    fn resp(&mut self, method: &str, target: &str, cookie: Option<&str>, body: &str) -> Response {
        match self.call(method, target, cookie, body) {
            Outcome::Respond(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn register(&mut self, name: &str) -> String {
        let r = self.resp("POST", "/api/register", None, &format!(r#"{{"username":"{name}"}}"#));
        assert_eq!(r.status, 201);
        body(&r)["key"].as_str().unwrap().to_owned()
    }

    fn login(&mut self, key: &str) -> String {
        let r = self.resp("POST", "/api/login", None, &format!(r#"{{"key":"{key}"}}"#));
        assert_eq!(r.status, 200);
        r.header_value("Set-Cookie").unwrap().split(';').next().unwrap().to_owned()
    }
}

fn body(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap()
}

fn error(r: &Response) -> (u16, String) {
    assert_eq!(r.header_value("Content-Type"), Some("application/json"));
    (r.status, body(r)["error"].as_str().unwrap().to_owned())
}

#[test]
fn register_validates_names() {
    let mut w = World::new();
    for bad in ["", "a b", "abc\n", "ünï", "a-b", &"a".repeat(33)] {
        let body = serde_json::json!({ "username": bad }).to_string();
        assert_eq!(error(&w.resp("POST", "/api/register", None, &body)), (400, "invalid_username".into()), "{bad:?}");
    }
    w.register(&"a".repeat(32));
    w.register("Alice");
    let r = w.resp("POST", "/api/register", None, r#"{"username":"alice"}"#);
    assert_eq!(error(&r), (409, "username_taken".into()));
}

#[test]
fn malformed_bodies_are_422() {
    let mut w = World::new();
    for bad in [
        "",
        "not json",
        "[]",
        r#"["alice"]"#,
        r#""alice""#,
        r#"{}"#,
        r#"{"username": 5}"#,
        r#"{"username": "a", "x": 1}"#,
        r#"{"name": "a"}"#,
        "{\"username\": \"a\"",
    ] {
        assert_eq!(error(&w.resp("POST", "/api/register", None, bad)), (422, "invalid_format".into()), "{bad:?}");
        assert_eq!(error(&w.resp("POST", "/api/login", None, bad)).0, 422, "{bad:?}");
    }
    let r = w.call("POST", "/api/register", None, "");
    assert!(matches!(r, Outcome::Respond(_)));
    // Not UTF-8.
    let mut ctx_body = String::from("{\"username\": \"");
    ctx_body.push('a');
    let mut bytes = ctx_body.into_bytes();
    bytes.extend_from_slice(b"\xff\"}");
    let req = Request {
        method: "POST".into(),
        target: "/api/register".into(),
        minor_version: 1,
        headers: vec![],
        body: bytes,
    };
    let mut ctx = Ctx {
        chat: &mut w.chat,
        cfg: &w.cfg,
        now: w.now,
        fx: &mut w.fx,
        client: LOCAL,
        metered: false,
        limits: &mut w.limits,
        server: crate::api::ServerState::empty(),
    };
    match handle_now(&req, &mut ctx, &mut w.store) {
        Outcome::Respond(r) => assert_eq!(r.status, 422),
        _ => panic!(),
    }
}

#[test]
fn login_sets_a_strict_cookie_and_unknown_keys_are_401() {
    let mut w = World::new();
    let key = w.register("alice");
    let r = w.resp("POST", "/api/login", None, &format!(r#"{{"key":"{key}"}}"#));
    assert_eq!(r.status, 200);
    assert_eq!(body(&r), serde_json::json!({"username": "alice"}));
    let cookie = r.header_value("Set-Cookie").unwrap();
    let value = cookie.split(';').next().unwrap().strip_prefix("session=").unwrap();
    assert_eq!(value.len(), 32);
    assert!(value.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!(cookie.ends_with("; Path=/; HttpOnly; SameSite=Lax"));
    let r = w.resp("POST", "/api/login", None, r#"{"key":"nope"}"#);
    assert_eq!(error(&r), (401, "invalid_key".into()));
}

#[test]
fn authenticated_endpoints_422_then_401() {
    let mut w = World::new();
    for path in ["/api/online", "/api/user/@me", "/api/user/bob", "/api/history"] {
        assert!(super::authenticates(path), "{path}: a cluster node must fetch its session first");
        assert_eq!(error(&w.resp("GET", path, None, "")), (422, "missing_session".into()));
        assert_eq!(error(&w.resp("GET", path, Some("other=1"), "")), (422, "missing_session".into()));
        assert_eq!(error(&w.resp("GET", path, Some("session=abc"), "")), (401, "invalid_session".into()));
    }
    for open in ["/api/register", "/api/login", "/api/logout", "/healthz", "/metrics", "/"] {
        assert!(!super::authenticates(open), "{open}");
    }
}

#[test]
fn sessions_expire_after_the_ttl_without_activity() {
    let mut w = World::new();
    let key = w.register("alice");
    let c = w.login(&key);
    w.now += Duration::from_secs(59);
    assert_eq!(w.resp("GET", "/api/user/@me", Some(&c), "").status, 200);
    w.now += Duration::from_secs(59);
    assert_eq!(w.resp("GET", "/api/user/@me", Some(&c), "").status, 200, "activity slides the expiry");
    w.now += Duration::from_secs(60);
    assert_eq!(w.resp("GET", "/api/user/@me", Some(&c), "").status, 401);
}

#[test]
fn user_lookup_by_name_ignores_case_and_404s() {
    let mut w = World::new();
    w.register("Bob");
    let key = w.register("alice");
    let c = w.login(&key);
    let me = w.resp("GET", "/api/user/@me", Some(&c), "");
    assert_eq!(body(&me), serde_json::json!({"username": "alice", "online": false}));
    let bob = w.resp("GET", "/api/user/bOB", Some(&c), "");
    assert_eq!(body(&bob), serde_json::json!({"username": "Bob", "online": false}));
    assert_eq!(error(&w.resp("GET", "/api/user/nobody", Some(&c), "")), (404, "user_not_found".into()));
    assert_eq!(error(&w.resp("GET", "/api/user/a-b", Some(&c), "")), (404, "user_not_found".into()));
}

#[test]
fn logout_always_200_and_clears_the_cookie() {
    let mut w = World::new();
    for method in ["GET", "POST"] {
        let r = w.resp(method, "/api/logout", None, "");
        assert_eq!(r.status, 200);
        assert!(r.header_value("Set-Cookie").unwrap().contains("Max-Age=0"));
    }
    let key = w.register("alice");
    let c = w.login(&key);
    assert_eq!(w.resp("GET", "/api/logout", Some(&c), "").status, 200);
    assert_eq!(w.resp("GET", "/api/online", Some(&c), "").status, 401);
}

#[test]
fn unknown_paths_404_and_wrong_methods_405_with_allow() {
    let mut w = World::new();
    assert_eq!(error(&w.resp("GET", "/nope", None, "")), (404, "not_found".into()));
    assert_eq!(error(&w.resp("GET", "/api/user/", None, "")), (404, "not_found".into()));
    for (method, path, allow) in [
        ("GET", "/api/register", "POST"),
        ("PUT", "/api/login", "POST"),
        ("DELETE", "/api/logout", "GET, POST"),
        ("POST", "/api/online", "GET"),
        ("POST", "/api/user/@me", "GET"),
        ("POST", "/ws", "GET"),
    ] {
        let r = w.resp(method, path, None, "");
        assert_eq!(error(&r), (405, "method_not_allowed".into()), "{method} {path}");
        assert_eq!(r.header_value("Allow"), Some(allow));
    }
}

#[test]
fn websocket_checks_run_in_contract_order() {
    let mut w = World::new();
    let key = w.register("alice");
    let c = w.login(&key);
    w.cfg.allowed_origins = vec!["https://chat.example".into()];
    // No Upgrade header, no Origin: the origin check (403) comes before the upgrade check.
    assert_eq!(error(&w.resp("GET", "/ws", Some(&c), "")), (403, "origin_not_allowed".into()));
    w.cfg.allowed_origins.clear();
    assert_eq!(error(&w.resp("GET", "/ws", Some(&c), "")), (426, "upgrade_required".into()));
    assert_eq!(error(&w.resp("GET", "/ws", None, "")), (422, "missing_session".into()));
}

#[test]
fn cookie_parsing_finds_session_among_others() {
    let req = |cookies: &[&str]| Request {
        method: "GET".into(),
        target: "/".into(),
        minor_version: 1,
        headers: cookies.iter().map(|c| ("Cookie".to_string(), c.as_bytes().to_vec())).collect(),
        body: vec![],
    };
    assert_eq!(session_cookie(&req(&["a=1; session=xyz; b=2"])), Some(&b"xyz"[..]));
    assert_eq!(session_cookie(&req(&["a=1", "session=\"q\""])), Some(&b"q"[..]));
    assert_eq!(session_cookie(&req(&["sessionx=1; xsession=2"])), None);
    assert_eq!(session_cookie(&req(&["session"])), None);
    assert_eq!(session_cookie(&req(&[])), None);
}

#[test]
fn registrations_and_failed_logins_are_limited_per_address_with_retry_after() {
    let mut w = World::new();
    w.metered = true;
    w.client.ip = "203.0.113.9".parse().unwrap();
    w.register("a1");
    w.register("a2");
    let r = w.resp("POST", "/api/register", None, r#"{"username":"a3"}"#);
    assert_eq!(error(&r), (429, "rate_limited".into()));
    let wait: u64 = r.header_value("Retry-After").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));
    // Another address is not affected.
    w.client.ip = "203.0.113.10".parse().unwrap();
    let key = w.register("b1");
    for _ in 0..3 {
        assert_eq!(w.resp("POST", "/api/login", None, r#"{"key":"wrong"}"#).status, 401);
    }
    let r = w.resp("POST", "/api/login", None, &format!(r#"{{"key":"{key}"}}"#));
    assert_eq!(error(&r), (429, "rate_limited".into()), "even a right key waits once over the limit");
    w.now += Duration::from_secs(61);
    assert_eq!(w.resp("POST", "/api/login", None, &format!(r#"{{"key":"{key}"}}"#)).status, 200);
}

#[test]
fn unmetered_clients_are_not_limited() {
    let mut w = World::new();
    for i in 0..10 {
        w.register(&format!("u{i}"));
    }
}

#[test]
fn https_clients_get_a_secure_cookie() {
    let mut w = World::new();
    let key = w.register("alice");
    w.client.https = true;
    let r = w.resp("POST", "/api/login", None, &format!(r#"{{"key":"{key}"}}"#));
    assert!(r.header_value("Set-Cookie").unwrap().ends_with("; Secure"));
    assert!(w.resp("GET", "/api/logout", None, "").header_value("Set-Cookie").unwrap().contains("Secure"));
}

#[test]
fn cors_only_for_allowed_origins() {
    let mut w = World::new();
    let with_origin = |w: &mut World, method: &str, origin: &str| match w.call_with(
        method,
        "/api/login",
        &[("Origin", origin)],
        r#"{"key":"x"}"#,
    ) {
        Outcome::Respond(r) => r,
        _ => panic!("no upgrade here"),
    };
    let r = with_origin(&mut w, "POST", "https://chat.example");
    assert_eq!(r.header_value("Access-Control-Allow-Origin"), None, "no CORS without --allowed-origin");
    assert_eq!(with_origin(&mut w, "OPTIONS", "https://chat.example").status, 405);
    w.cfg.allowed_origins = vec!["https://chat.example".into()];
    let r = with_origin(&mut w, "POST", "https://chat.example");
    assert_eq!(r.header_value("Access-Control-Allow-Origin"), Some("https://chat.example"));
    assert_eq!(r.header_value("Access-Control-Allow-Credentials"), Some("true"));
    let r = with_origin(&mut w, "OPTIONS", "https://chat.example");
    assert_eq!(r.status, 204);
    assert_eq!(r.header_value("Access-Control-Allow-Methods"), Some("GET, POST"));
    let r = with_origin(&mut w, "OPTIONS", "https://evil.example");
    assert_eq!(r.status, 403);
    let r = with_origin(&mut w, "POST", "https://evil.example");
    assert_eq!(r.header_value("Access-Control-Allow-Origin"), None);
}

#[test]
fn healthz_is_degraded_once_storage_has_stopped() {
    let mut w = World::new();
    let req =
        Request { method: "GET".into(), target: "/healthz".into(), minor_version: 1, headers: vec![], body: vec![] };
    for (healthy, status, body) in [(true, 200, "ok"), (false, 503, "degraded")] {
        let mut ctx = Ctx {
            chat: &mut w.chat,
            cfg: &w.cfg,
            now: w.now,
            fx: &mut w.fx,
            client: LOCAL,
            metered: false,
            limits: &mut w.limits,
            server: ServerState { storage_healthy: healthy, ..ServerState::empty() },
        };
        let Outcome::Respond(r) = handle(&req, &mut ctx) else { panic!("healthz answers") };
        assert_eq!(r.status, status);
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["status"], body);
    }
}
