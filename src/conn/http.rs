//! The HTTP phase: parse requests out of the input buffer, run them through the
//! routes, queue the responses in order (pipelining), and upgrade to WebSocket.

use super::{Conn, Cx, Progress, Step, Stream, WsPhase, IN_CAP, KEEPALIVE_TIMEOUT, REQUEST_TIMEOUT};
use crate::api::{self, Outcome, Resume, ServerState};
use crate::chat::session::id_hash as session_id_hash;
use crate::chat::session::SessionKey;
use crate::http::{Limits, Parsed, Request, RequestParser, Response};
use crate::log;
use crate::metrics::Route;
use crate::outq::Chunk;
use crate::proxy;
use crate::storage::{Origin, Reply, Request as Request2};
use crate::ws;
use std::time::{Duration, Instant};

/// How long a request may wait on storage before it is answered 503 (a disk that
/// stopped answering; a slow one commits in milliseconds).
const STORAGE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct HttpPhase {
    parser: RequestParser,
    /// The request head must be in by then (or the idle keep-alive ends then).
    pub deadline: Instant,
    /// A request handed to storage; nothing after it is answered until it is.
    waiting: Option<Box<Waiting>>,
    /// The request being answered: its route and when its head was parsed, for
    /// `/metrics` once its status is known.
    current: Option<(Route, Instant)>,
}

/// A request handed on, and what answering it still needs.
struct Waiting {
    awaiting: Awaiting,
    asked: Asked,
    until: Instant,
}

/// How the request that waits was asked.
struct Asked {
    client: proxy::Client,
    keep_alive: bool,
    head: bool,
    /// Method and path, kept only when requests are logged.
    logged: Option<(Instant, String, String)>,
}

/// What a reply is awaited for.
enum Awaiting {
    /// A route's storage request: `api::finish` gives the response.
    Api(api::Pending),
    /// Cluster mode: the cluster must accept this user's WebSocket first.
    Upgrade { session: SessionKey, accept: String, resume: Option<Resume> },
    /// Cluster mode: the session behind the request's cookie, from Redis, before
    /// the request is routed.
    Session(Box<Request>),
}

impl HttpPhase {
    pub fn new(limits: Limits, now: Instant) -> Self {
        HttpPhase { parser: RequestParser::new(limits), deadline: now + REQUEST_TIMEOUT, waiting: None, current: None }
    }

    pub fn deadline(&self) -> Instant {
        self.waiting.as_ref().map_or(self.deadline, |w| w.until)
    }

    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// What a hand-over carries: the deadline and whether a 100 went out. A request
    /// waiting on storage cannot be carried; the caller drains storage first.
    pub fn parts(&self) -> (Instant, bool) {
        (self.deadline, self.parser.continue_sent())
    }

    pub fn resume(limits: Limits, deadline: Instant, continue_sent: bool) -> Self {
        HttpPhase { parser: RequestParser::resume(limits, continue_sent), deadline, waiting: None, current: None }
    }
}

/// Why serving requests from the buffer stopped.
enum Served {
    /// The buffer holds no whole request.
    NeedMore,
    /// The answers queued so far are over the high mark: the rest waits for the
    /// queue to drain (`Conn::drained` brings the connection back).
    OutHigh,
    /// The connection left the HTTP phase.
    PhaseChanged,
}

impl<S: Stream> Conn<S> {
    pub(super) fn drive_http(&mut self, cx: &mut Cx, now: Instant) -> Progress {
        loop {
            if self.http().is_waiting() {
                // Unread input stays in the socket meanwhile: TCP holds back a
                // pipelining client, and no half-parsed request needs a buffer.
                return Progress::Done(Step::Wait);
            }
            let was_empty = self.input.is_empty();
            if !self.out_high(&cx.log) {
                self.fill(cx, IN_CAP);
            }
            if was_empty && !self.input.is_empty() {
                self.http().deadline = now + REQUEST_TIMEOUT;
            }
            match self.serve_requests(cx, now) {
                Served::PhaseChanged => return Progress::Again,
                Served::OutHigh => return Progress::Done(Step::Wait),
                Served::NeedMore => {}
            }
            if self.input.len() >= IN_CAP {
                // Only chunked framing overhead can fill the buffer before the parser's
                // own limits trip; the request is too large either way.
                self.respond_error(413, "body_too_large", cx, now);
                self.enter_closing(cx, now);
                return Progress::Again;
            }
            if !self.readable {
                break;
            }
        }
        if self.peer_gone {
            self.enter_closing(cx, now);
            return Progress::Again;
        }
        self.release_input();
        Progress::Done(Step::Wait)
    }

    fn http(&mut self) -> &mut HttpPhase {
        match &mut self.phase {
            super::Phase::Http(h) => h,
            _ => unreachable!("only called in the HTTP phase"),
        }
    }

    /// Answers every whole request in the buffer, in order.
    fn serve_requests(&mut self, cx: &mut Cx, now: Instant) -> Served {
        loop {
            if self.out_high(&cx.log) {
                return Served::OutHigh;
            }
            let super::Phase::Http(h) = &mut self.phase else { return Served::PhaseChanged };
            if h.waiting.is_some() {
                return Served::NeedMore;
            }
            match h.parser.parse(&self.input) {
                Ok(None) => return Served::NeedMore,
                Ok(Some(Parsed::Continue)) => self.out.push(Chunk::Static(b"HTTP/1.1 100 Continue\r\n\r\n")),
                Ok(Some(Parsed::Request { request, consumed })) => {
                    h.current = Some((Route::of(request.path()), now));
                    self.input.drain(..consumed);
                    let idle = self.input.is_empty();
                    self.http().deadline = now + if idle { KEEPALIVE_TIMEOUT } else { REQUEST_TIMEOUT };
                    if self.on_request(request, cx, now) {
                        return Served::PhaseChanged;
                    }
                }
                Err(e) => {
                    log::debug(format_args!("{}: bad request: {e}", self.peer()));
                    self.respond_error(e.status(), e.code(), cx, now);
                    self.enter_closing(cx, now);
                    return Served::PhaseChanged;
                }
            }
        }
    }

    /// Runs one request through the routes. Returns true if the phase changed.
    fn on_request(&mut self, req: Request, cx: &mut Cx, now: Instant) -> bool {
        self.handle_request(req, cx, now, true)
    }

    /// `on_request`; `fetch_session`: in cluster mode, a session cookie unknown here
    /// is looked up in Redis first.
    fn handle_request(&mut self, req: Request, cx: &mut Cx, now: Instant, fetch_session: bool) -> bool {
        let started = log::enabled(log::Level::Debug).then(Instant::now);
        let client = proxy::client(&req, self.peer_ip, self.sock.is_secure(), &cx.cfg.trusted_proxies);
        self.metered = cx.metered(&client);
        // Behind a proxy, the client is known only now: its connections count from here.
        if client.forwarded && !cx.rate_limits.connections.forwarded(self.key, client.ip) {
            log::debug(format_args!("{}: too many connections from {}", self.peer(), client.ip));
            self.respond(&api::too_many_connections(), false, req.method == "HEAD", cx, now);
            self.enter_closing(cx, now);
            return true;
        }
        let keep_alive = req.keep_alive() && !cx.shutting_down;
        let asked = |head| Asked {
            client,
            keep_alive,
            head,
            logged: started.map(|t| (t, req.method.clone(), req.path().to_owned())),
        };
        if let Some(id_hash) = session_to_fetch(&req, cx).filter(|_| fetch_session) {
            let asked = asked(false);
            self.wait(cx, Request2::Session { id_hash }, Awaiting::Session(Box::new(req)), asked, now);
            return false;
        }
        match self.route(&req, client, cx, now) {
            Outcome::Respond(resp) => {
                if let Some(started) = started {
                    log::request(&client.ip, &req.method, req.path(), resp.status, started.elapsed());
                }
                self.answer(&resp, keep_alive, req.method == "HEAD", cx, now)
            }
            Outcome::Store { request, pending } => {
                self.wait(cx, request, Awaiting::Api(pending), asked(req.method == "HEAD"), now);
                false
            }
            // A user with a socket here holds the cluster's presence here already:
            // another device of theirs opens at once, with no join for anyone to hear.
            Outcome::Upgrade { session, accept, resume } if cx.cluster.is_some() && !cx.chat.is_here(session) => {
                // Presence is cluster-wide: Redis decides (one plain socket, or v2
                // devices on any nodes), and the socket opens once every node has
                // heard the join.
                let name = cx.chat.username(session).unwrap_or_default().to_owned();
                let v2 = resume.is_some();
                let awaiting = Awaiting::Upgrade { session, accept, resume };
                self.wait(cx, Request2::Join { name, v2 }, awaiting, asked(false), now);
                false
            }
            Outcome::Upgrade { session, accept, resume } => {
                if let Some(started) = started {
                    log::request(&client.ip, &req.method, req.path(), 101, started.elapsed());
                }
                let opened = self.upgrade(session, &accept, resume, cx, now);
                // A device beside others of its user here: no join for Redis to
                // order, but its count, which the other nodes' caps read.
                if let Some(cluster) = cx.cluster.as_mut().filter(|_| opened) {
                    let user = cx.chat.username(session).unwrap_or_default();
                    cluster.device_opened(Origin { conn: self.key, generation: self.generation }, user);
                }
                true
            }
        }
    }

    /// Hands `request` on and answers nothing more until its reply comes.
    fn wait(&mut self, cx: &mut Cx, request: Request2, awaiting: Awaiting, asked: Asked, now: Instant) {
        cx.submit(Origin { conn: self.key, generation: self.generation }, request);
        let until = now + STORAGE_TIMEOUT;
        self.http().waiting = Some(Box::new(Waiting { awaiting, asked, until }));
    }

    /// Queues `resp`; closes after it unless the connection stays open. Returns true
    /// if the phase changed.
    fn answer(&mut self, resp: &Response, keep_alive: bool, head: bool, cx: &mut Cx, now: Instant) -> bool {
        let keep_alive = keep_alive && !resp.close;
        self.respond(resp, keep_alive, head, cx, now);
        if !keep_alive {
            self.enter_closing(cx, now);
        }
        !keep_alive
    }

    /// Storage answered the request this connection waits on: answer it, then go on
    /// with whatever the client pipelined behind it.
    pub fn on_reply(&mut self, reply: Reply, cx: &mut Cx, now: Instant) -> Step {
        let super::Phase::Http(h) = &mut self.phase else { return Step::Wait };
        // Gone after a storage timeout: its 503 has been sent.
        let Some(w) = h.waiting.take() else { return Step::Wait };
        h.deadline = now + if self.input.is_empty() { KEEPALIVE_TIMEOUT } else { REQUEST_TIMEOUT };
        let Waiting { awaiting, asked, .. } = *w;
        let pending = match awaiting {
            Awaiting::Api(pending) => pending,
            Awaiting::Session(req) => return self.on_session(*req, reply, &asked, cx, now),
            Awaiting::Upgrade { session, accept, resume } => {
                let resp = match reply {
                    Reply::Joined => {
                        asked.log(101);
                        self.upgrade(session, &accept, resume, cx, now);
                        return Step::Yield;
                    }
                    Reply::NameTaken => Response::error(409, "already_connected"),
                    Reply::TooManyDevices => Response::error(409, "too_many_devices"),
                    _ => Response::error(503, "storage_unavailable"),
                };
                // A socket of the user that gave up or closed while this join was out
                // left the user's presence here to it (see `Cluster::joining`): with
                // the join refused and nothing of the user here, it goes.
                if let (Some(name), Some(cluster)) = (cx.chat.username(session), cx.cluster.as_mut()) {
                    if cx.chat.member_of_user(name).is_none() && !cluster.joining(name) {
                        cluster.left(name);
                    }
                }
                return self.answer_waited(&asked, &resp, cx, now);
            }
        };
        let mut ctx = api::Ctx {
            chat: &mut cx.chat,
            cfg: &cx.cfg.api,
            now,
            fx: &mut cx.fx,
            client: asked.client,
            metered: self.metered,
            limits: &mut cx.rate_limits,
            server: ServerState::empty(),
        };
        let resp = api::finish(pending, reply, &mut ctx);
        self.answer_waited(&asked, &resp, cx, now)
    }

    /// The answer to a request that waited, then whatever was pipelined behind it.
    fn answer_waited(&mut self, asked: &Asked, resp: &Response, cx: &mut Cx, now: Instant) -> Step {
        asked.log(resp.status);
        self.answer(resp, asked.keep_alive, asked.head, cx, now);
        // Requests pipelined behind this one, and the socket's unread bytes.
        self.readable = true;
        Step::Yield
    }

    /// Cluster mode: Redis said whose the request's session is; now route it.
    fn on_session(&mut self, req: Request, reply: Reply, asked: &Asked, cx: &mut Cx, now: Instant) -> Step {
        match reply {
            Reply::Session(Some((user, ms_left))) => {
                if let Some(cookie) = api::session_cookie(&req) {
                    let left = Duration::from_millis(ms_left.min(u64::from(u32::MAX)));
                    cx.chat.adopt_session(session_id_hash(cookie), &user, left, now);
                }
            }
            Reply::Session(None) => {}
            _ => return self.answer_waited(asked, &Response::error(503, "storage_unavailable"), cx, now),
        }
        // Known now (or unknown to Redis too: the route answers 401).
        self.handle_request(req, cx, now, false);
        self.readable = true;
        Step::Yield
    }

    fn route(&self, req: &Request, client: proxy::Client, cx: &mut Cx, now: Instant) -> Outcome {
        let server = ServerState {
            stats: &cx.stats,
            open_connections: cx.open_connections,
            broadcast_backlog_bytes: cx.log.bytes(),
            storage_healthy: cx.backend_healthy(),
            cluster: cx.cluster.as_ref().map(|c| c.gauges(cx.chat.online_count() as u64)),
            storage: cx.storage.metrics(),
            storage_sent: cx.storage.sent(),
        };
        let mut ctx = api::Ctx {
            chat: &mut cx.chat,
            cfg: &cx.cfg.api,
            now,
            fx: &mut cx.fx,
            client,
            metered: self.metered,
            limits: &mut cx.rate_limits,
            server,
        };
        api::handle(req, &mut ctx)
    }

    fn respond(&mut self, resp: &Response, keep_alive: bool, head: bool, cx: &mut Cx, now: Instant) {
        *cx.stats.responses.entry(resp.status).or_default() += 1;
        self.request_done(resp.status, cx, now);
        let mut buf = Vec::with_capacity(256 + resp.body.len());
        // The chat core's wall clock: the same time message timestamps carry.
        let date = cx.date.at(cx.chat.unix_ms(now));
        let hsts = if self.sock.is_secure() { cx.cfg.hsts.as_deref() } else { None };
        resp.write_to(&mut buf, keep_alive, head, date, hsts);
        self.out.push(Chunk::Owned(buf));
    }

    /// Counts the request being answered under its route; an answer to no whole
    /// request (a malformed head, a timeout) counts under `other`, untimed. Timed by
    /// the loop's clock: a request answered in the turn that read it counts as 0 s
    /// (the first bucket), one that waited on storage or Redis as the turns it took.
    fn request_done(&mut self, status: u16, cx: &mut Cx, now: Instant) {
        let current = match &mut self.phase {
            super::Phase::Http(h) => h.current.take(),
            _ => None,
        };
        match current {
            Some((route, started)) => cx.stats.request_done(route, status, now.saturating_duration_since(started)),
            None => *cx.stats.requests.entry((Route::Other, status)).or_default() += 1,
        }
    }

    /// An error answer after which the connection closes.
    pub(super) fn respond_error(&mut self, status: u16, code: &'static str, cx: &mut Cx, now: Instant) {
        self.respond(&Response::error(status, code).closing(), false, false, cx, now);
    }

    /// A v2 client's first frames: the hello, then what it missed or a resync. They
    /// go into this connection's queue now, ahead of any broadcast still to come: the
    /// loop is single-threaded, so nothing can slip between replay and live traffic.
    fn greet(&mut self, resume: &Resume, cx: &mut Cx) {
        self.out.push(Chunk::Shared(cx.chat.hello_for(self.key)));
        let Some(since) = resume.since else { return };
        let epoch = resume.epoch.as_deref().unwrap_or("");
        match cx.chat.history().since(since, epoch) {
            Some(missed) => missed.for_each(|e| self.out.push(Chunk::Shared(e.frame.clone()))),
            None => self.out.push(Chunk::Static(crate::chat::RESYNC)),
        }
    }

    /// 101, then the WebSocket phase on the same socket. Bytes that came after the
    /// request head stay in the input buffer and are the first frames read.
    /// True if the socket joined the room.
    fn upgrade(
        &mut self,
        session: SessionKey,
        accept: &str,
        resume: Option<Resume>,
        cx: &mut Cx,
        now: Instant,
    ) -> bool {
        self.out.push(Chunk::Owned(ws::accept_response(accept)));
        self.request_done(101, cx, now);
        self.phase = super::Phase::Ws(WsPhase::new(session, now));
        cx.stats.ws_opened += 1;
        match cx.chat.join(self.key, session, self.metered, resume.is_some(), now, &mut cx.fx) {
            Ok(()) => {
                let user = cx.chat.username(session).unwrap_or("?");
                log::info(format_args!("{user} joined from {}", self.peer()));
                if let Some(resume) = resume {
                    cx.chat.set_presence(self.key, resume.presence);
                    self.greet(&resume, cx);
                }
                true
            }
            // The checks ran a moment ago on this same thread; only a bug gets here.
            Err(e) => {
                log::error(format_args!("join after upgrade failed: {e:?}"));
                self.close_ws(Some(ws::close::POLICY), cx, now);
                false
            }
        }
    }
}

/// Cluster mode: the hash of a session cookie this node has not seen, on a route
/// that authenticates (a replica caches only the sessions it has met).
fn session_to_fetch(req: &Request, cx: &Cx) -> Option<[u8; 32]> {
    cx.cluster.as_ref()?;
    let cookie = api::session_cookie(req).filter(|_| api::authenticates(req.path()))?;
    (cookie.len() == crate::chat::session::SESSION_ID_LEN && !cx.chat.knows_session(cookie))
        .then(|| session_id_hash(cookie))
}

impl Asked {
    /// The request's log line, once its status is known.
    fn log(&self, status: u16) {
        if let Some((started, method, path)) = &self.logged {
            log::request(&self.client.ip, method, path, status, started.elapsed());
        }
    }
}
