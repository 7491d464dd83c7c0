//! Every connection's life, without a socket in sight: bytes in through a `Stream`,
//! requests to the routes, frames to the chat core, effects back out to write
//! queues, deadlines from a timer heap. The mio reactor (or a test, or a fuzz
//! target) feeds it readiness and time; it never polls or reads a clock itself.

use crate::api::{self, ApiConfig, Outcome};
use crate::chat::room::RateLimit;
use crate::chat::{close, Chat, ChatConfig, Effect, Effects};
use crate::conn::{
    Conn, Phase, Stream, WsPhase, IN_CAP, KEEPALIVE_TIMEOUT, LINGER, OUT_CAP, OUT_HIGH, PEER_TIMEOUT, PING_INTERVAL,
    REQUEST_TIMEOUT,
};
use crate::http::{Limits, Parsed, Request, Response};
use crate::log;
use crate::outq::{BroadcastLog, Chunk, Flush};
use crate::proxy;
use crate::ratelimit::RateLimits;
use crate::store::Store;
use crate::timer::Timer;
use crate::ws::{WsConn, WsRead};
use slab::Slab;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Messages read from one WebSocket before the loop moves on to others, so one
/// busy client cannot starve the rest.
const READ_BUDGET: usize = 64;
/// Bytes written to one connection per turn (Redis uses 64 KiB for the same reason).
const WRITE_BUDGET: usize = 256 * 1024;
/// How long a graceful shutdown waits for sockets to flush and hang up.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// What the server needs from the configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub chat: ChatConfig,
    pub api: ApiConfig,
    pub limits: Limits,
    pub limit_loopback: bool,
    pub trusted_proxies: Vec<IpAddr>,
    pub metrics_public: bool,
    pub register_per_minute: u32,
    pub failed_logins_per_minute: u32,
}

impl ServerConfig {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let message_rate = (cfg.messages_per_second > 0)
            .then_some(RateLimit { per_second: cfg.messages_per_second, burst: cfg.message_burst });
        ServerConfig {
            chat: ChatConfig {
                session_ttl: cfg.session_ttl,
                max_sessions_per_user: cfg.max_sessions_per_user,
                max_sessions: cfg.max_sessions,
                message_rate,
            },
            api: ApiConfig { allowed_origins: cfg.allowed_origins.clone(), static_dir: cfg.static_dir.clone() },
            limits: Limits::default(),
            limit_loopback: cfg.limit_loopback,
            trusted_proxies: cfg.trusted_proxies.clone(),
            metrics_public: cfg.metrics_public,
            register_per_minute: cfg.register_per_minute,
            failed_logins_per_minute: cfg.failed_logins_per_minute,
        }
    }
}

/// Counters for logs and the metrics endpoint.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub accepted: u64,
    pub refused: u64,
    pub ws_opened: u64,
    pub deliveries: u64,
    pub slow_dropped: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// HTTP responses by status code.
    pub responses: std::collections::BTreeMap<u16, u64>,
}

pub struct Server<S> {
    conns: Slab<Conn<S>>,
    pub chat: Chat,
    store: Store,
    api: ApiConfig,
    limits: Limits,
    limit_loopback: bool,
    trusted_proxies: Vec<IpAddr>,
    metrics_public: bool,
    rate_limits: RateLimits,
    timer: Timer,
    /// Connections with bytes to write this turn (`handleClientsWithPendingWrites`).
    flush_list: std::collections::VecDeque<usize>,
    /// Broadcast frames some connection has yet to write, each stored once.
    log: BroadcastLog,
    /// Connections whose read budget ran out with input left.
    read_list: Vec<usize>,
    fx: Effects,
    next_generation: u64,
    shutdown: Option<Instant>,
    scratch: Box<[u8]>,
    pub stats: Stats,
}

impl<S: Stream> Server<S> {
    pub fn new(cfg: ServerConfig, store: Store) -> Self {
        Server {
            conns: Slab::new(),
            chat: Chat::new(cfg.chat),
            store,
            api: cfg.api,
            limits: cfg.limits,
            limit_loopback: cfg.limit_loopback,
            trusted_proxies: cfg.trusted_proxies,
            metrics_public: cfg.metrics_public,
            rate_limits: RateLimits::new(cfg.register_per_minute, cfg.failed_logins_per_minute),
            timer: Timer::new(),
            flush_list: std::collections::VecDeque::new(),
            log: BroadcastLog::new(),
            read_list: Vec::new(),
            fx: Vec::new(),
            next_generation: 1,
            shutdown: None,
            scratch: vec![0u8; IN_CAP].into_boxed_slice(),
            stats: Stats::default(),
        }
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Takes a new connection; returns its key (the reactor's token).
    pub fn insert(&mut self, sock: S, peer: SocketAddr, now: Instant) -> usize {
        let generation = self.next_generation;
        self.next_generation += 1;
        let conn = Conn::new(sock, peer, generation, self.limits, now);
        let key = self.conns.insert(conn);
        self.stats.accepted += 1;
        log::debug(format_args!("connect {peer}"));
        self.arm(key);
        key
    }

    pub fn stream_mut(&mut self, key: usize) -> Option<&mut S> {
        self.conns.get_mut(key).map(|c| &mut c.sock)
    }

    pub fn contains(&self, key: usize) -> bool {
        self.conns.contains(key)
    }

    /// The generation of the connection now at `key`: a key alone may have been
    /// reused by a newer connection.
    pub fn generation(&self, key: usize) -> Option<u64> {
        self.conns.get(key).map(|c| c.generation)
    }

    /// The transport reported readiness for connection `key`.
    pub fn on_ready(&mut self, key: usize, readable: bool, writable: bool, now: Instant) {
        let Some(c) = self.conns.get_mut(key) else { return };
        if writable {
            c.writable = true;
            if (!c.out.is_empty() || c.sock.wants_write()) && !c.queued_for_flush {
                c.queued_for_flush = true;
                self.flush_list.push_back(key);
            }
        }
        if readable {
            c.readable = true;
            self.drive(key, now);
        }
    }

    /// Work that must not wait for the next readiness event: connections whose read
    /// budget ran out, queues not yet flushed. Poll with a zero timeout while true.
    pub fn has_pending_work(&self) -> bool {
        !self.read_list.is_empty() || !self.flush_list.is_empty()
    }

    /// Resumes reads that ran out of budget last turn.
    pub fn run_pending_reads(&mut self, now: Instant) {
        for key in std::mem::take(&mut self.read_list) {
            if let Some(c) = self.conns.get_mut(key) {
                c.queued_for_read = false;
                self.drive(key, now);
            }
        }
    }

    /// The earliest moment something is due without any IO.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.timer.next(), self.chat.next_deadline(), self.shutdown].into_iter().flatten().min()
    }

    /// Runs everything due by `now`: connection deadlines and session expiry.
    pub fn on_timeout(&mut self, now: Instant) {
        self.run_timers(now);
    }

    /// True once a shutdown has finished (every connection gone or the grace over).
    pub fn is_shut_down(&self, now: Instant) -> bool {
        self.shutdown.is_some_and(|deadline| self.conns.is_empty() || now >= deadline)
    }

    /// Reads and processes whatever a connection has, following phase changes.
    fn drive(&mut self, key: usize, now: Instant) {
        loop {
            let Some(c) = self.conns.get(key) else { return };
            let again = match c.phase {
                Phase::Http(_) => self.drive_http(key, now),
                Phase::Ws(_) => self.drive_ws(key, now),
                Phase::Closing { .. } => {
                    self.drive_closing(key);
                    false
                }
                Phase::Moving => false,
            };
            self.apply_effects(now);
            if !again {
                break;
            }
        }
        // Reading may have produced transport bytes of its own (TLS handshake records).
        if self.conns.get(key).is_some_and(|c| c.sock.wants_write()) {
            self.queue_flush(key);
        }
        self.arm(key);
    }

    /// Returns true when the phase changed and the connection should be driven again.
    fn drive_http(&mut self, key: usize, now: Instant) -> bool {
        let c = &mut self.conns[key];
        let Phase::Http(h) = &mut c.phase else { return true };
        let mut eof = false;
        while c.readable && c.out.len(&self.log) < OUT_HIGH && h.input.len() < IN_CAP {
            let room = IN_CAP - h.input.len();
            match c.sock.read(&mut self.scratch[..room]) {
                Ok(0) => {
                    eof = true;
                    c.readable = false;
                }
                Ok(n) => {
                    self.stats.bytes_in += n as u64;
                    if h.input.is_empty() {
                        h.deadline = now + REQUEST_TIMEOUT;
                    }
                    h.input.extend_from_slice(&self.scratch[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    eof = true;
                    c.readable = false;
                }
            }
        }
        loop {
            let c = &mut self.conns[key];
            if c.out.len(&self.log) >= OUT_HIGH {
                break;
            }
            let Phase::Http(h) = &mut c.phase else { return true };
            match h.parser.parse(&h.input) {
                Ok(None) => break,
                Ok(Some(Parsed::Continue)) => {
                    c.out.push(Chunk::Static(b"HTTP/1.1 100 Continue\r\n\r\n"));
                    self.queue_flush(key);
                }
                Ok(Some(Parsed::Request { request, consumed })) => {
                    h.input.drain(..consumed);
                    if h.input.is_empty() {
                        // Idle keep-alive connections hold no input buffer.
                        h.input = Vec::new();
                        h.deadline = now + KEEPALIVE_TIMEOUT;
                    } else {
                        h.deadline = now + REQUEST_TIMEOUT;
                    }
                    if self.on_request(key, request, now) {
                        return true;
                    }
                }
                Err(e) => {
                    log::debug(format_args!("{}: bad request: {e}", c.peer));
                    let resp = Response::error(e.status(), e.code()).closing();
                    self.respond(key, &resp, false, false);
                    self.begin_closing(key, now);
                    return true;
                }
            }
        }
        if let Phase::Http(h) = &self.conns[key].phase {
            if h.input.len() >= IN_CAP {
                // Only chunked framing overhead can fill the buffer before the parser's
                // own limits trip; the request is too large either way.
                let resp = Response::error(413, "body_too_large").closing();
                self.respond(key, &resp, false, false);
                self.begin_closing(key, now);
                return true;
            }
        }
        if eof {
            self.conns[key].peer_gone = true;
            self.begin_closing(key, now);
            return true;
        }
        false
    }

    /// Runs one request through the routes. Returns true if the phase changed.
    fn on_request(&mut self, key: usize, req: Request, now: Instant) -> bool {
        let keep_alive = req.keep_alive() && self.shutdown.is_none();
        let head = req.method == "HEAD";
        let c = &mut self.conns[key];
        let client = proxy::client(&req, c.peer.ip(), c.sock.is_secure(), &self.trusted_proxies);
        // Loopback is where the operator's own benchmarks and probes run; a proxy's
        // forwarded clients are limited like anyone else.
        let metered = self.limit_loopback || client.forwarded || !client.ip.is_loopback();
        c.metered = metered;
        let peer = c.peer.ip();
        let outcome = if req.path() == "/metrics" {
            Outcome::Respond(self.metrics(&req, peer))
        } else {
            let mut ctx = api::Ctx {
                chat: &mut self.chat,
                store: &mut self.store,
                cfg: &self.api,
                now,
                fx: &mut self.fx,
                client,
                metered,
                limits: &mut self.rate_limits,
            };
            api::handle(&req, &mut ctx)
        };
        match outcome {
            Outcome::Respond(resp) => {
                let keep_alive = keep_alive && !resp.close;
                self.respond(key, &resp, keep_alive, head);
                if !keep_alive {
                    self.begin_closing(key, now);
                    return true;
                }
                false
            }
            Outcome::Upgrade { session, accept } => {
                let c = &mut self.conns[key];
                let mut head = Vec::with_capacity(160);
                head.extend_from_slice(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
                );
                head.extend_from_slice(accept.as_bytes());
                head.extend_from_slice(b"\r\n\r\n");
                c.out.push(Chunk::Owned(head));
                let leftover = match std::mem::replace(&mut c.phase, Phase::Moving) {
                    Phase::Http(h) => h.input,
                    _ => Vec::new(),
                };
                c.phase = Phase::Ws(Box::new(WsPhase {
                    ws: WsConn::new(leftover),
                    session,
                    last_seen: now,
                    next_ping: now + PING_INTERVAL,
                }));
                // Bytes that came with the upgrade are already buffered: edge-triggered
                // epoll will not announce them again, so read them now.
                c.readable = true;
                let metered = c.metered;
                let peer = c.peer;
                self.queue_flush(key);
                self.stats.ws_opened += 1;
                match self.chat.join(key, session, metered, now, &mut self.fx) {
                    Ok(()) => {
                        let user = self.chat.username(session).unwrap_or("?");
                        log::info(format_args!("{user} joined from {peer}"));
                    }
                    // The checks ran a moment ago on this same thread; only a bug gets here.
                    Err(e) => {
                        log::error(format_args!("join after upgrade failed: {e:?}"));
                        self.close_ws(key, Some(close::POLICY), now);
                    }
                }
                true
            }
        }
    }

    fn respond(&mut self, key: usize, resp: &Response, keep_alive: bool, head: bool) {
        *self.stats.responses.entry(resp.status).or_default() += 1;
        let mut buf = Vec::with_capacity(256 + resp.body.len());
        resp.write_to(&mut buf, keep_alive, head);
        self.conns[key].out.push(Chunk::Owned(buf));
        self.queue_flush(key);
    }

    fn drive_ws(&mut self, key: usize, now: Instant) -> bool {
        for _ in 0..READ_BUDGET {
            let c = &mut self.conns[key];
            if !c.readable || c.out.len(&self.log) >= OUT_HIGH {
                return false;
            }
            let Phase::Ws(w) = &mut c.phase else { return true };
            let before = c.out.len(&self.log);
            let read = w.ws.read(&mut c.sock, &mut c.out);
            if c.out.len(&self.log) != before {
                self.queue_flush(key);
            }
            let c = &mut self.conns[key];
            let Phase::Ws(w) = &mut c.phase else { return true };
            match read {
                WsRead::WouldBlock => {
                    c.readable = false;
                    return false;
                }
                WsRead::Text(text) => {
                    w.last_seen = now;
                    self.chat.on_text(key, &text, now, &mut self.fx);
                }
                WsRead::Control => {
                    w.last_seen = now;
                    self.chat.on_activity(key, now);
                }
                WsRead::Binary => {
                    self.close_ws(key, Some(close::UNSUPPORTED), now);
                    return true;
                }
                WsRead::Fail(code) => {
                    self.close_ws(key, Some(code), now);
                    return true;
                }
                WsRead::Closed => {
                    self.close_ws(key, None, now);
                    return true;
                }
            }
        }
        self.queue_read(key);
        false
    }

    /// A closing connection: discard input until the peer hangs up.
    fn drive_closing(&mut self, key: usize) {
        let c = &mut self.conns[key];
        while c.readable {
            match c.sock.read(&mut self.scratch) {
                Ok(0) => {
                    c.readable = false;
                    c.peer_gone = true;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.readable = false;
                    c.peer_gone = true;
                }
            }
        }
        if c.peer_gone && (c.out.is_empty() || !c.writable) {
            self.remove(key);
        }
    }

    /// Leaves the WebSocket phase: optionally queue a close frame, leave the room.
    fn close_ws(&mut self, key: usize, code: Option<u16>, now: Instant) {
        let Some(c) = self.conns.get_mut(key) else { return };
        let Phase::Ws(w) = &mut c.phase else { return };
        if let Some(code) = code {
            w.ws.close(code, &mut c.out);
        }
        let user = self.chat.username(w.session).unwrap_or("?").to_owned();
        c.phase = Phase::Closing { until: now + LINGER };
        log::info(format_args!("{user} left ({})", code.map_or("peer closed".to_owned(), |c| format!("close {c}"))));
        self.queue_flush(key);
        self.chat.leave(key, &mut self.fx);
    }

    fn begin_closing(&mut self, key: usize, now: Instant) {
        let c = &mut self.conns[key];
        if let Phase::Ws(_) = c.phase {
            return self.close_ws(key, None, now);
        }
        c.phase = Phase::Closing { until: now + LINGER };
        self.queue_flush(key);
    }

    fn queue_flush(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if !c.queued_for_flush {
            c.queued_for_flush = true;
            self.flush_list.push_back(key);
        }
    }

    fn queue_read(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if !c.queued_for_read {
            c.queued_for_read = true;
            self.read_list.push(key);
        }
    }

    fn apply_effects(&mut self, now: Instant) {
        let mut slow = Vec::new();
        while !self.fx.is_empty() {
            for effect in std::mem::take(&mut self.fx) {
                match effect {
                    Effect::Send { to, frame } => {
                        let Some(c) = self.conns.get_mut(to).filter(|c| c.is_ws()) else { continue };
                        c.out.push(frame);
                        if c.out.len(&self.log) > OUT_CAP {
                            slow.push(to);
                        }
                        self.queue_flush(to);
                    }
                    Effect::Broadcast { except, frame } => {
                        // The fan-out: the frame goes into the log once; each recipient
                        // gets a sequence number and a place on the flush list.
                        let seq = self.log.append(frame, except);
                        let mut recipients = 0;
                        for &to in self.chat.members() {
                            if Some(to) == except {
                                continue;
                            }
                            let c = &mut self.conns[to];
                            c.out.deliver(seq);
                            recipients += 1;
                            if c.out.len(&self.log) > OUT_CAP {
                                slow.push(to);
                            }
                            if !c.queued_for_flush {
                                c.queued_for_flush = true;
                                self.flush_list.push_back(to);
                            }
                        }
                        self.log.seal(seq, recipients);
                        self.stats.deliveries += u64::from(recipients);
                    }
                    Effect::Close { conn, code } => self.close_ws(conn, Some(code), now),
                }
            }
            for key in slow.drain(..) {
                let Some(c) = self.conns.get_mut(key).filter(|c| c.is_ws()) else { continue };
                c.out.drop_unstarted(key, &mut self.log);
                self.stats.slow_dropped += 1;
                log::warn(format_args!("{}: too slow, dropped", c.peer));
                self.close_ws(key, Some(close::POLICY), now);
            }
        }
    }

    /// Writes each listed connection's queue: one vectored write per connection per
    /// turn carries every frame queued for it since the last one.
    pub fn flush_all(&mut self, now: Instant) {
        self.flush_some(now, usize::MAX);
    }

    /// Flushes up to `max` listed connections (only those listed when called; one
    /// re-listed for its write budget waits for a later call). Returns true if some
    /// remain. A fan-out to thousands of sockets takes milliseconds: the reactor
    /// flushes in slices and reads between them, so a message arriving mid-pass
    /// reaches the rest of that pass instead of waiting for the next one.
    pub fn flush_some(&mut self, now: Instant, max: usize) -> bool {
        let n = self.flush_list.len().min(max);
        for _ in 0..n {
            let Some(key) = self.flush_list.pop_front() else { break };
            let Some(c) = self.conns.get_mut(key) else { continue };
            c.queued_for_flush = false;
            if !c.writable {
                continue;
            }
            let mut result = c.out.flush_to(key, &mut self.log, &mut c.sock, WRITE_BUDGET).map(|(flush, written)| {
                self.stats.bytes_out += written as u64;
                flush
            });
            if let Ok(Flush::Done) = result {
                // Bytes the transport still holds (TLS records) go out too.
                result = match c.sock.flush() {
                    Ok(()) => Ok(Flush::Done),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Flush::Blocked),
                    Err(e) => Err(e),
                };
            }
            match result {
                Ok(Flush::Done) => self.drained(key),
                Ok(Flush::Blocked) => c.writable = false,
                Ok(Flush::Budget) => {
                    c.queued_for_flush = true;
                    self.flush_list.push_back(key);
                }
                Err(_) => {
                    c.peer_gone = true;
                    c.out.drop_unstarted(key, &mut self.log);
                    self.close_ws(key, None, now);
                    self.remove(key);
                    self.apply_effects(now);
                }
            }
        }
        !self.flush_list.is_empty()
    }

    /// Everything queued was written.
    fn drained(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else { return };
        if c.is_closing() {
            if !c.write_shut {
                c.write_shut = true;
                c.sock.shutdown_write();
            }
            if c.peer_gone {
                self.remove(key);
            }
        } else if c.readable {
            // Reading stopped while the queue was above its high mark.
            self.queue_read(key);
        }
    }

    fn arm(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else { return };
        let Some(deadline) = c.deadline() else { return };
        if c.armed.is_none_or(|a| deadline < a) {
            self.timer.schedule(deadline, key, c.generation);
            c.armed = Some(deadline);
        }
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(e) = self.timer.pop_due(now) {
            let Some(c) = self.conns.get_mut(e.key) else { continue };
            if c.generation != e.generation {
                continue;
            }
            if c.armed == Some(e.at) {
                c.armed = None;
            }
            self.on_conn_timeout(e.key, now);
            self.apply_effects(now);
            self.arm(e.key);
        }
        self.chat.on_timeout(now, &mut self.fx);
        self.apply_effects(now);
    }

    fn on_conn_timeout(&mut self, key: usize, now: Instant) {
        let c = &mut self.conns[key];
        match &mut c.phase {
            Phase::Http(h) if now >= h.deadline => {
                if h.input.is_empty() {
                    self.begin_closing(key, now);
                } else {
                    let resp = Response::error(408, "request_timeout").closing();
                    self.respond(key, &resp, false, false);
                    self.begin_closing(key, now);
                }
            }
            Phase::Ws(w) => {
                if now >= w.last_seen + PEER_TIMEOUT {
                    self.close_ws(key, Some(close::GOING_AWAY), now);
                } else if now >= w.next_ping {
                    w.next_ping = now + PING_INTERVAL;
                    WsConn::ping(&mut c.out);
                    self.queue_flush(key);
                }
            }
            Phase::Closing { until } if now >= *until => self.remove(key),
            _ => {}
        }
    }

    /// Drops a connection that never got going (the reactor could not register it).
    pub fn discard(&mut self, key: usize) {
        if self.conns.contains(key) {
            self.conns.remove(key);
        }
    }

    fn remove(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        // A socket still in the room (write error, say) leaves it first.
        self.chat.leave(key, &mut self.fx);
        // Dropping the socket closes it, which also takes it out of epoll.
        let mut c = self.conns.remove(key);
        c.out.discard(key, &mut self.log);
        log::debug(format_args!("disconnect {}", c.peer));
    }

    /// Checks the invariants tying connections to the room (for tests and fuzzing):
    /// the room's members are exactly the connections in the WebSocket phase, no
    /// session has outlived its TTL once `on_timeout(now)` ran, and the broadcast log
    /// holds exactly the frames some connection still owes, counted right.
    pub fn check_invariants(&self, now: Instant) {
        let mut members: Vec<usize> = self.chat.members().to_vec();
        members.sort_unstable();
        let ws: Vec<usize> = self.conns.iter().filter(|(_, c)| c.is_ws()).map(|(k, _)| k).collect();
        assert_eq!(members, ws, "online list != open WebSockets");
        assert!(self.chat.sessions_alive(now), "a session outlived its TTL");
        for (seq, except, pending) in self.log.pending() {
            let owing = self.conns.iter().filter(|(k, c)| c.out.owes(*k, seq, except)).count();
            assert_eq!(pending as usize, owing, "broadcast {seq} is owed by {owing} connections, counted {pending}");
        }
        // Entries leave from the front only, so only the front must be owed.
        if let Some((seq, _, pending)) = self.log.pending().next() {
            assert!(pending > 0, "broadcast {seq} is held though nobody owes it");
        }
    }

    /// `GET /metrics` in Prometheus text format: from loopback or a trusted proxy,
    /// or anyone with `--metrics-public`.
    fn metrics(&self, req: &Request, peer: IpAddr) -> Response {
        if req.method != "GET" {
            return Response::error(405, "method_not_allowed").header("Allow", "GET");
        }
        if !(self.metrics_public || peer.is_loopback() || self.trusted_proxies.contains(&peer)) {
            return Response::error(403, "forbidden");
        }
        let (mut http, mut ws, mut closing) = (0, 0, 0);
        for (_, c) in &self.conns {
            match c.phase {
                Phase::Http(_) => http += 1,
                Phase::Ws(_) => ws += 1,
                _ => closing += 1,
            }
        }
        let st = &self.stats;
        let cs = &self.chat.stats;
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            use std::fmt::Write;
            let _ = writeln!(out, "# HELP skiff_{name} {help}\n# TYPE skiff_{name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "skiff_{name}{labels} {v}");
            }
        };
        metric(
            "connections",
            "gauge",
            "Open connections by kind.",
            &[("{kind=\"http\"}", http), ("{kind=\"websocket\"}", ws), ("{kind=\"closing\"}", closing)],
        );
        metric("online_users", "gauge", "Users with an open WebSocket.", &[("", self.chat.members().len() as u64)]);
        metric("sessions", "gauge", "Live sessions.", &[("", self.chat.session_count() as u64)]);
        metric("connections_accepted_total", "counter", "TCP connections accepted.", &[("", st.accepted)]);
        metric(
            "connections_refused_total",
            "counter",
            "Connections closed at once (max connections).",
            &[("", st.refused)],
        );
        metric("websockets_opened_total", "counter", "WebSocket upgrades accepted.", &[("", st.ws_opened)]);
        metric("messages_received_total", "counter", "Chat messages received.", &[("", cs.messages_in)]);
        metric(
            "messages_rejected_total",
            "counter",
            "Chat messages answered with an error ack.",
            &[("", cs.messages_rejected)],
        );
        metric("messages_broadcast_total", "counter", "Chat messages accepted and broadcast.", &[("", cs.broadcasts)]);
        metric("deliveries_total", "counter", "Frames queued to recipients by broadcasts.", &[("", st.deliveries)]);
        metric(
            "broadcast_backlog_bytes",
            "gauge",
            "Broadcast bytes some client has yet to be sent (each frame counted once).",
            &[("", self.log.bytes())],
        );
        metric(
            "slow_clients_dropped_total",
            "counter",
            "WebSockets dropped for not reading.",
            &[("", st.slow_dropped)],
        );
        metric(
            "rate_limited_total",
            "counter",
            "Requests and messages refused by rate limits.",
            &[("{kind=\"message\"}", cs.rate_limited), ("{kind=\"http\"}", self.rate_limits.refused)],
        );
        let statuses: Vec<(String, u64)> =
            st.responses.iter().map(|(s, n)| (format!("{{status=\"{s}\"}}"), *n)).collect();
        let statuses: Vec<(&str, u64)> = statuses.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        metric("http_responses_total", "counter", "HTTP responses by status.", &statuses);
        metric("bytes_received_total", "counter", "Bytes read from clients.", &[("", st.bytes_in)]);
        metric("bytes_sent_total", "counter", "Bytes written to clients.", &[("", st.bytes_out)]);
        Response::new(200).header("Content-Type", "text/plain; version=0.0.4").with_body(out.into_bytes())
    }

    /// Stops taking requests: every WebSocket gets close 1001, every other connection
    /// is closed once its queue is flushed.
    pub fn begin_shutdown(&mut self, now: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        log::info(format_args!("shutting down: closing {} connections", self.conns.len()));
        self.shutdown = Some(now + SHUTDOWN_GRACE);
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if self.conns[key].is_ws() {
                self.close_ws(key, Some(close::GOING_AWAY), now);
            } else if !self.conns[key].is_closing() {
                self.begin_closing(key, now);
            }
            self.arm(key);
        }
        // Everyone is leaving at once: N leave events to N closing sockets would be
        // N^2 frames nobody reads.
        self.fx.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::MockStream;

    fn server(metrics_public: bool) -> Server<MockStream> {
        let cfg = ServerConfig {
            chat: ChatConfig {
                session_ttl: Duration::from_secs(60),
                max_sessions_per_user: 4,
                max_sessions: 16,
                message_rate: None,
            },
            api: ApiConfig::default(),
            limits: Limits::default(),
            limit_loopback: false,
            trusted_proxies: vec![],
            metrics_public,
            register_per_minute: 0,
            failed_logins_per_minute: 0,
        };
        Server::new(cfg, Store::open_in_memory().unwrap())
    }

    fn get_metrics(srv: &mut Server<MockStream>, peer: &str) -> String {
        let pipe = MockStream::default();
        pipe.0.borrow_mut().room = usize::MAX;
        pipe.0.borrow_mut().to_server.extend_from_slice(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let now = Instant::now();
        let key = srv.insert(pipe.clone(), peer.parse().unwrap(), now);
        srv.on_ready(key, true, true, now);
        srv.flush_all(now);
        let out = String::from_utf8(pipe.0.borrow().to_client.clone()).unwrap();
        out
    }

    #[test]
    fn metrics_are_refused_to_remote_peers_unless_public() {
        let mut srv = server(false);
        assert!(get_metrics(&mut srv, "192.0.2.7:4000").starts_with("HTTP/1.1 403 "));
        assert!(get_metrics(&mut srv, "127.0.0.1:4000").starts_with("HTTP/1.1 200 "));
        let mut srv = server(true);
        assert!(get_metrics(&mut srv, "192.0.2.7:4000").starts_with("HTTP/1.1 200 "));
    }
}
