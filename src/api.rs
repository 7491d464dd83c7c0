//! The routes: a parsed request and the chat core in; a response, a storage request to
//! wait on (finished by `finish` when its reply comes), or a
//! WebSocket upgrade) and chat effects out. No sockets here; the reactor decides what
//! to do with an `Outcome`.

use crate::chat::session::{id_hash, SessionId, SessionKey, SESSION_ID_LEN};
use crate::chat::{Chat, Effects, JoinError, LoginError};
use crate::http::{Request, Response};
use crate::metrics::{self, Stats};
use crate::proxy::Client;
use crate::ratelimit::RateLimits;
use crate::storage::{Reply, Request as StorageRequest};
use crate::store;
use crate::ws::{self, UpgradeError};
use serde::{Deserialize, Serialize};
use std::time::Instant;

pub mod guard;

pub const SESSION_COOKIE: &str = "session";

/// What the reactor should do with a request.
#[derive(Debug)]
pub enum Outcome {
    Respond(Response),
    /// Hand `request` to storage; when its reply comes, `finish(pending, reply)`
    /// gives the response. The connection answers nothing else meanwhile.
    Store {
        request: StorageRequest,
        pending: Pending,
    },
    /// Answer 101 with this `Sec-WebSocket-Accept` and switch the connection to
    /// WebSocket for session `session`; `resume` is set for protocol v2.
    Upgrade {
        session: SessionKey,
        accept: String,
        resume: Option<Resume>,
    },
}

/// `/ws?v=2[&since=N&epoch=E][&presence=M]`: what a v2 client already has, and how
/// it wants joins and leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub since: Option<u64>,
    pub epoch: Option<String>,
    /// `presence=each|batch|count` (each if absent).
    pub presence: crate::chat::presence::Mode,
}

/// The most messages one `/api/history` page gives.
pub const HISTORY_MAX_LIMIT: usize = 500;
const HISTORY_DEFAULT_LIMIT: usize = 50;

/// A request waiting on storage: what its answer still needs.
#[derive(Debug)]
pub struct Pending {
    kind: PendingKind,
    /// The allowed `Origin` to answer CORS for, decided when the request came.
    cors: Option<String>,
}

#[derive(Debug)]
enum PendingKind {
    /// The key goes to the user only once the row is durable.
    Register {
        username: String,
        key: String,
    },
    /// In cluster mode, with the session id Redis stores with the login.
    Login(Option<(SessionId, [u8; 32])>),
    FindUser,
    /// A file from `--static`, read off the loop.
    File,
    /// Cluster mode: the session is ended in Redis (and wherever its socket is).
    Logout,
}

/// Policy the routes need from the configuration.
#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    pub allowed_origins: Vec<String>,
    /// `--allowed-host`: the `Host` values served (empty: any); see `guard`.
    pub allowed_hosts: Vec<String>,
    /// Serve this (canonical) directory instead of the built-in page.
    pub static_dir: Option<std::path::PathBuf>,
    /// `/metrics` for anyone, not only local clients.
    pub metrics_public: bool,
    /// Cluster mode: logins and logouts go through Redis.
    pub cluster: bool,
}

/// What `/metrics` reads from the connection layer.
#[derive(Clone, Copy)]
pub struct ServerState<'a> {
    pub stats: &'a Stats,
    pub open_connections: usize,
    pub broadcast_backlog_bytes: u64,
    /// The storage threads are running (`/healthz` says 503 otherwise).
    pub storage_healthy: bool,
    /// Cluster mode: the Redis link.
    pub cluster: Option<metrics::ClusterGauges>,
    /// What the storage threads count, and the jobs handed to (writer, reader).
    pub storage: &'a metrics::StorageMetrics,
    pub storage_sent: (u64, u64),
}

impl ServerState<'static> {
    /// A server with no connections and nothing counted (for tests and fuzzing).
    pub fn empty() -> Self {
        static NOTHING: Stats = Stats::new();
        static NO_STORAGE: metrics::StorageMetrics = metrics::StorageMetrics::new();
        ServerState {
            stats: &NOTHING,
            open_connections: 0,
            broadcast_backlog_bytes: 0,
            storage_healthy: true,
            cluster: None,
            storage: &NO_STORAGE,
            storage_sent: (0, 0),
        }
    }
}

/// Everything a request may touch.
pub struct Ctx<'a> {
    pub chat: &'a mut Chat,
    pub cfg: &'a ApiConfig,
    pub now: Instant,
    pub fx: &'a mut Effects,
    /// Who is asking (the peer, or the address a trusted proxy forwards).
    pub client: Client,
    /// Address-based limits apply to this client (it is not an exempt loopback peer).
    pub metered: bool,
    pub limits: &'a mut RateLimits,
    pub server: ServerState<'a>,
}

impl Ctx<'_> {
    /// `Set-Cookie` attributes: `Secure` whenever the client is on https.
    fn cookie_attrs(&self) -> &'static str {
        if self.client.https {
            "; Path=/; HttpOnly; SameSite=Lax; Secure"
        } else {
            "; Path=/; HttpOnly; SameSite=Lax"
        }
    }
}

/// Routes a request, adding CORS headers when `--allowed-origin` lists its origin.
/// A `Host` not served, or another site's state-changing request, is refused first.
pub fn handle(req: &Request, ctx: &mut Ctx) -> Outcome {
    if let Some(refused) = guard::check(req, ctx.cfg) {
        return Outcome::Respond(refused);
    }
    let cors_origin = cors_origin(req, ctx.cfg);
    if req.method == "OPTIONS" && !ctx.cfg.allowed_origins.is_empty() && req.path().starts_with("/api/") {
        return Outcome::Respond(match cors_origin {
            // A preflight: the browser asks before a credentialed cross-origin POST.
            Some(origin) => with_cors(Response::new(204), origin)
                .header("Access-Control-Allow-Methods", "GET, POST")
                .header("Access-Control-Allow-Headers", "Content-Type")
                .header("Access-Control-Max-Age", "600"),
            None => Response::error(403, "origin_not_allowed"),
        });
    }
    let api_cors = cors_origin.filter(|_| req.path().starts_with("/api/"));
    match route(req, ctx) {
        Outcome::Respond(r) => Outcome::Respond(match api_cors {
            Some(origin) => with_cors(r, origin),
            None => r,
        }),
        Outcome::Store { request, pending } => {
            Outcome::Store { request, pending: Pending { cors: api_cors, ..pending } }
        }
        upgrade => upgrade,
    }
}

/// The response to a request that waited on storage.
pub fn finish(pending: Pending, reply: Reply, ctx: &mut Ctx) -> Response {
    let resp = match (pending.kind, reply) {
        // Always 200 (CONTRACT); with Redis down the cluster logs out once it is back.
        (PendingKind::Logout, _) => logged_out(ctx),
        (_, Reply::Unavailable) => Response::error(503, "storage_unavailable"),
        (PendingKind::Register { username, key }, Reply::Registered) => {
            crate::log::info(format_args!("registered user {username}"));
            Response::json(201, &serde_json::json!({ "key": key }))
        }
        (PendingKind::Register { .. }, _) => Response::error(409, "username_taken"),
        (PendingKind::Login(id), Reply::User(Some(username))) => logged_in(username, id, ctx),
        (PendingKind::Login(_), Reply::Banned(ban)) => banned(ban.as_ref()),
        (PendingKind::Login(_), _) => {
            if ctx.metered {
                ctx.limits.failed_login.record(ctx.client.ip, ctx.now);
            }
            Response::error(401, "invalid_key")
        }
        (PendingKind::FindUser, Reply::User(Some(username))) => user_status(&username, ctx),
        (PendingKind::FindUser, _) => Response::error(404, "user_not_found"),
        (PendingKind::File, Reply::File(resp)) => *resp,
        (PendingKind::File, _) => Response::error(404, "not_found"),
    };
    match pending.cors {
        Some(origin) => with_cors(resp, origin),
        None => resp,
    }
}

/// `handle`, with any storage request run at once on `store` (tests, fuzzing).
#[cfg(any(test, feature = "harness"))]
pub fn handle_now(req: &Request, ctx: &mut Ctx, store: &mut store::Store) -> Outcome {
    match handle(req, ctx) {
        Outcome::Store { request, pending } => {
            Outcome::Respond(finish(pending, crate::storage::execute(store, request), ctx))
        }
        other => other,
    }
}

fn wait_on(request: StorageRequest, kind: PendingKind) -> Outcome {
    Outcome::Store { request, pending: Pending { kind, cors: None } }
}

/// The request's `Origin` if it is one of the allowed origins.
fn cors_origin(req: &Request, cfg: &ApiConfig) -> Option<String> {
    let origin = req.header_str("origin")?;
    cfg.allowed_origins.iter().find(|o| o.eq_ignore_ascii_case(origin)).cloned()
}

fn with_cors(r: Response, origin: String) -> Response {
    r.header("Access-Control-Allow-Origin", origin)
        .header("Access-Control-Allow-Credentials", "true")
        .header("Vary", "Origin")
}

/// Past `--max-connections-per-ip`, for a direct peer at accept and for an address
/// a proxy forwards once its request head is read.
pub fn too_many_connections() -> Response {
    Response::error(503, "too_many_connections").closing()
}

fn rate_limited(retry_after: u64) -> Response {
    Response::error(429, "rate_limited").header("Retry-After", retry_after.to_string())
}

fn route(req: &Request, ctx: &mut Ctx) -> Outcome {
    let path = req.path();
    let method = req.method.as_str();
    let respond = Outcome::Respond;
    match path {
        "/api/register" => match method {
            "POST" => register(req, ctx),
            _ => respond(not_allowed("POST")),
        },
        "/api/login" => match method {
            "POST" => login(req, ctx),
            _ => respond(not_allowed("POST")),
        },
        "/api/logout" => match method {
            "GET" | "POST" => logout(req, ctx),
            _ => respond(not_allowed("GET, POST")),
        },
        "/api/history" => match method {
            "GET" => respond(history(req, ctx)),
            _ => respond(not_allowed("GET")),
        },
        "/api/online" => match method {
            "GET" => respond(online(req, ctx)),
            _ => respond(not_allowed("GET")),
        },
        "/ws" => match method {
            "GET" => websocket(req, ctx),
            _ => respond(not_allowed("GET")),
        },
        "/metrics" => match method {
            "GET" => respond(metrics(ctx)),
            _ => respond(not_allowed("GET")),
        },
        "/healthz" => match method {
            "GET" => respond(health(ctx)),
            _ => respond(not_allowed("GET")),
        },
        _ => match path.strip_prefix("/api/user/") {
            Some(name) if !name.is_empty() && !name.contains('/') => match method {
                "GET" => user(req, name, ctx),
                _ => respond(not_allowed("GET")),
            },
            _ if path.starts_with("/api/") => respond(Response::error(404, "not_found")),
            _ => match ctx.cfg.static_dir.as_deref() {
                Some(dir) => wait_on(StorageRequest::File(crate::web::FileRequest::new(req, dir)), PendingKind::File),
                None => respond(crate::web::builtin(req)),
            },
        },
    }
}

/// 200 while the server can do all it promises; 503 once storage has stopped (a
/// load balancer should send new users elsewhere; chat on open sockets goes on).
fn health(ctx: &Ctx) -> Response {
    if ctx.server.storage_healthy {
        Response::json(200, &serde_json::json!({"status": "ok"}))
    } else {
        Response::json(503, &serde_json::json!({"status": "degraded"}))
    }
}

/// Prometheus text for local clients: loopback, or a trusted proxy asking for itself.
/// The forwarded address decides, not the TCP peer: behind nginx every peer is
/// nginx, and a client on the internet must not read the server's internals.
fn metrics(ctx: &Ctx) -> Response {
    let c = ctx.client;
    let local = c.ip.is_loopback() || (c.trusted_peer && !c.forwarded);
    if !(ctx.cfg.metrics_public || local) {
        return Response::error(403, "forbidden");
    }
    let text = metrics::render(&metrics::Snapshot {
        stats: ctx.server.stats,
        chat: &ctx.chat.stats,
        open_connections: ctx.server.open_connections as u64,
        online_users: ctx.chat.members().len() as u64,
        sessions: ctx.chat.session_count() as u64,
        http_rate_limited: ctx.limits.refused,
        broadcast_backlog_bytes: ctx.server.broadcast_backlog_bytes,
        history_messages: ctx.chat.history().len() as u64,
        history_bytes: ctx.chat.history().bytes() as u64,
        healthy: ctx.server.storage_healthy,
        storage: metrics::StorageGauges::read(ctx.server.storage, ctx.server.storage_sent),
        process: metrics::process::Process::read(),
        cluster: ctx.server.cluster,
    });
    Response::new(200).header("Content-Type", "text/plain; version=0.0.4").with_body(text.into_bytes())
}

fn not_allowed(allow: &'static str) -> Response {
    Response::error(405, "method_not_allowed").header("Allow", allow)
}

/// The one field a body must carry, and nothing else (CONTRACT: "invalid format").
fn single_field<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Option<T> {
    crate::chat::parse_object(std::str::from_utf8(body).ok()?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    username: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    key: String,
}

pub fn valid_username(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn register(req: &Request, ctx: &mut Ctx) -> Outcome {
    let Some(RegisterBody { username }) = single_field(&req.body) else {
        return Outcome::Respond(Response::error(422, "invalid_format"));
    };
    if !valid_username(&username) {
        return Outcome::Respond(Response::error(400, "invalid_username"));
    }
    if ctx.metered {
        if let Some(wait) = ctx.limits.register.blocked(ctx.client.ip, ctx.now) {
            ctx.limits.refused += 1;
            return Outcome::Respond(rate_limited(wait));
        }
        ctx.limits.register.record(ctx.client.ip, ctx.now);
    }
    let (key, key_hash) = store::new_key_and_hash();
    let request = StorageRequest::Register { username: username.clone(), key_hash };
    wait_on(request, PendingKind::Register { username, key })
}

fn login(req: &Request, ctx: &mut Ctx) -> Outcome {
    let Some(LoginBody { key }) = single_field(&req.body) else {
        return Outcome::Respond(Response::error(422, "invalid_format"));
    };
    if ctx.metered {
        if let Some(wait) = ctx.limits.failed_login.blocked(ctx.client.ip, ctx.now) {
            ctx.limits.refused += 1;
            return Outcome::Respond(rate_limited(wait));
        }
    }
    match store::key_hash(&key) {
        Some(key_hash) => {
            // Redis stores the session with the login, so the id is drawn first.
            let id = ctx.cfg.cluster.then(|| ctx.chat.new_session_id());
            let session = id.map(|(_, hash)| hash);
            wait_on(StorageRequest::Login { key_hash, session }, PendingKind::Login(id))
        }
        None => {
            Outcome::Respond(finish(Pending { kind: PendingKind::Login(None), cors: None }, Reply::User(None), ctx))
        }
    }
}

/// A key was found: a new session and its cookie.
fn logged_in(username: String, id: Option<(SessionId, [u8; 32])>, ctx: &mut Ctx) -> Response {
    let session = match id {
        Some(id) => ctx.chat.login_as(&username, id, ctx.now),
        None => ctx.chat.login(&username, ctx.now, ctx.fx),
    };
    match session {
        Ok(id) => {
            let id = std::str::from_utf8(&id).expect("session ids are ASCII");
            Response::json(200, &serde_json::json!({ "username": username }))
                .header("Set-Cookie", format!("{SESSION_COOKIE}={id}{}", ctx.cookie_attrs()))
        }
        Err(LoginError::Full) => Response::error(503, "too_many_sessions"),
        Err(LoginError::Banned) => banned(ctx.chat.ban_of(&username, ctx.now)),
    }
}

/// 403 `{"error":"banned"}`, with the ban's `reason` and `until` when it has them.
fn banned(ban: Option<&crate::chat::moderation::Ban>) -> Response {
    let mut body = serde_json::json!({ "error": "banned" });
    if let Some(b) = ban {
        if let Some(r) = &b.reason {
            body["reason"] = (**r).into();
        }
        if let Some(u) = b.until_ms {
            body["until"] = crate::chat::moderation::rfc3339(u).into();
        }
    }
    Response::json(403, &body)
}

fn logout(req: &Request, ctx: &mut Ctx) -> Outcome {
    if let Some(id) = session_cookie(req) {
        ctx.chat.logout(id, ctx.now, ctx.fx);
        if ctx.cfg.cluster && id.len() == SESSION_ID_LEN {
            return wait_on(StorageRequest::Logout { id_hash: id_hash(id) }, PendingKind::Logout);
        }
    }
    Outcome::Respond(logged_out(ctx))
}

fn logged_out(ctx: &Ctx) -> Response {
    Response::json(200, &serde_json::json!({ "status": "ok" }))
        .header("Set-Cookie", format!("{SESSION_COOKIE}={}; Max-Age=0", ctx.cookie_attrs()))
}

/// The routes that need a session: a cluster node fetches a session it has not met
/// before it runs one of these. Beside the routes, so a new one is not forgotten.
pub fn authenticates(path: &str) -> bool {
    matches!(path, "/ws" | "/api/online" | "/api/history") || path.starts_with("/api/user/")
}

/// The `session` cookie's value, from any `Cookie` header (RFC 6265 5.4 joins
/// pairs with "; ").
pub fn session_cookie(req: &Request) -> Option<&[u8]> {
    req.headers_named("cookie").flat_map(|h| h.split(|&b| b == b';')).find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (&pair[..eq], &pair[eq + 1..]);
        (name.trim_ascii() == SESSION_COOKIE.as_bytes()).then(|| {
            let v = value.trim_ascii();
            v.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(v)
        })
    })
}

/// The authenticated-endpoint rule: no cookie -> 422, unknown or expired -> 401.
fn authenticate(req: &Request, ctx: &mut Ctx) -> Result<SessionKey, Response> {
    let id = session_cookie(req).ok_or_else(|| Response::error(422, "missing_session"))?;
    ctx.chat.authenticate(id, ctx.now).ok_or_else(|| Response::error(401, "invalid_session"))
}

fn online(req: &Request, ctx: &mut Ctx) -> Response {
    if let Err(r) = authenticate(req, ctx) {
        return r;
    }
    #[derive(Serialize)]
    struct Online<'a> {
        online_clients: Vec<&'a str>,
    }
    Response::json(200, &Online { online_clients: ctx.chat.online().collect() })
}

fn user(req: &Request, name: &str, ctx: &mut Ctx) -> Outcome {
    let me = match authenticate(req, ctx) {
        Ok(k) => k,
        Err(r) => return Outcome::Respond(r),
    };
    if name == "@me" {
        let username = ctx.chat.username(me).expect("authenticated just now").to_owned();
        return Outcome::Respond(user_status(&username, ctx));
    }
    if !valid_username(name) {
        return Outcome::Respond(Response::error(404, "user_not_found"));
    }
    wait_on(StorageRequest::FindUser { name: name.to_owned() }, PendingKind::FindUser)
}

fn user_status(username: &str, ctx: &Ctx) -> Response {
    let online = ctx.chat.is_online(username);
    Response::json(200, &serde_json::json!({ "username": username, "online": online }))
}

/// `GET /api/history?limit=K&before=N`: the K newest retained messages below N.
fn history(req: &Request, ctx: &mut Ctx) -> Response {
    if let Err(r) = authenticate(req, ctx) {
        return r;
    }
    let bad = || Response::error(400, "invalid_query");
    let limit = match req.query("limit").map(str::parse::<usize>) {
        None => HISTORY_DEFAULT_LIMIT,
        Some(Ok(k)) if (1..=HISTORY_MAX_LIMIT).contains(&k) => k,
        Some(_) => return bad(),
    };
    let before = match req.query("before").map(str::parse::<u64>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return bad(),
    };
    #[derive(Serialize)]
    struct Page<'a> {
        epoch: &'a str,
        messages: Vec<&'a crate::chat::history::Entry>,
    }
    let h = ctx.chat.history();
    let messages = h.page(before, limit).collect();
    Response::json(200, &Page { epoch: h.epoch(), messages })
}

/// `v` and `since`/`epoch` of a `/ws` request: `Ok(None)` for plain v1.
fn resume(req: &Request) -> Result<Option<Resume>, Response> {
    match req.query("v") {
        None => return Ok(None),
        Some("2") => {}
        Some(_) => return Err(Response::error(400, "unsupported_version")),
    }
    let since = match req.query("since").map(str::parse::<u64>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return Err(Response::error(400, "invalid_query")),
    };
    let presence = match req.query("presence").map(crate::chat::presence::Mode::parse) {
        None => crate::chat::presence::Mode::Each,
        Some(Some(mode)) => mode,
        Some(None) => return Err(Response::error(400, "invalid_query")),
    };
    Ok(Some(Resume { since, epoch: req.query("epoch").map(str::to_owned), presence }))
}

fn websocket(req: &Request, ctx: &mut Ctx) -> Outcome {
    let session = match authenticate(req, ctx) {
        Ok(k) => k,
        Err(r) => return Outcome::Respond(r),
    };
    // The version's value is checked below; the 409s only ask whether it is v2.
    match ctx.chat.can_join(session, req.query("v") == Some("2")) {
        Ok(()) => {}
        Err(JoinError::AlreadyConnected) => return Outcome::Respond(Response::error(409, "already_connected")),
        Err(JoinError::TooManyDevices) => return Outcome::Respond(Response::error(409, "too_many_devices")),
        Err(JoinError::NoSession) => return Outcome::Respond(Response::error(401, "invalid_session")),
    }
    if !ctx.cfg.allowed_origins.is_empty() {
        let origin = req.header_str("origin").unwrap_or("");
        if !ctx.cfg.allowed_origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            return Outcome::Respond(Response::error(403, "origin_not_allowed"));
        }
    }
    let resume = match resume(req) {
        Ok(r) => r,
        Err(resp) => return Outcome::Respond(resp),
    };
    match ws::check_upgrade(req) {
        Ok(accept) => Outcome::Upgrade { session, accept, resume },
        Err(UpgradeError::UpgradeRequired) => {
            Outcome::Respond(Response::error(426, "upgrade_required").header("Upgrade", "websocket"))
        }
        Err(UpgradeError::Version) => {
            Outcome::Respond(Response::error(400, "bad_websocket_request").header("Sec-WebSocket-Version", "13"))
        }
        Err(UpgradeError::Bad(_)) => Outcome::Respond(Response::error(400, "bad_websocket_request")),
    }
}

#[cfg(test)]
mod tests;
