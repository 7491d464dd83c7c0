//! One client connection as a state machine: HTTP requests -> WebSocket -> closing.
//! The socket, slab key, input buffer and write queue outlive every phase; each
//! phase drives itself (`http.rs`, `websocket.rs`) from the bytes in the input
//! buffer and reports what the server should do next as a `Step`. Whether the
//! connection wants to read or write is derived from its state, never stored.
//! Everything a connection may touch besides itself comes in through `Cx`.

mod handover;
mod http;
pub mod memory;
mod websocket;

use crate::api::ApiConfig;
use crate::chat::{Chat, Effects};
use crate::cluster::Cluster;
use crate::http::response::DateCache;
use crate::http::Limits;
use crate::log;
use crate::metrics::Stats;
use crate::outq::{BroadcastLog, Flush, OutQueue};
use crate::proxy::Client;
use crate::ratelimit::RateLimits;
use crate::storage::{Origin, Request, Storage};
use crate::ws;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub use http::HttpPhase;
pub use websocket::WsPhase;

/// A request head (and its body) must arrive within this (CONTRACT: 10 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle keep-alive connection is closed after this (CONTRACT: 60 s).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// The server pings a WebSocket this often (CONTRACT: 30 s).
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// A WebSocket peer silent this long is closed (CONTRACT: 75 s).
pub const PEER_TIMEOUT: Duration = Duration::from_secs(75);
/// How long a closing connection may take to flush its last bytes and hear the
/// peer hang up before it is dropped.
pub const LINGER: Duration = Duration::from_secs(2);

/// Past this many unsent bytes a WebSocket client is too slow: it is dropped (1008)
/// rather than let it grow the server's memory or slow anyone else.
pub const OUT_CAP: usize = 1 << 20;
/// Above this many unsent bytes we stop reading from the connection, so a client
/// that writes without reading cannot make us queue answers without bound.
pub const OUT_HIGH: usize = 64 * 1024;
/// Bytes of unparsed input an HTTP connection may hold: a full head and body plus
/// chunked framing overhead; the parser rejects anything larger long before.
pub const IN_CAP: usize = 16 * 1024;
/// Bytes a closing connection reads and throws away before it stops waiting for
/// the peer to hang up.
const CLOSING_DISCARD: usize = 64 * 1024;
/// Bytes written to one connection per turn (Redis uses 64 KiB for the same reason).
const WRITE_BUDGET: usize = 256 * 1024;

pub use crate::stream::Stream;

/// Configuration a connection consults.
#[derive(Debug, Clone, Default)]
pub struct ConnConfig {
    pub api: ApiConfig,
    pub limits: Limits,
    pub limit_loopback: bool,
    pub trusted_proxies: Vec<IpAddr>,
    /// The `Strict-Transport-Security` value for responses on connections that skiff
    /// itself serves over TLS (`None`: not sent).
    pub hsts: Option<String>,
    /// Frames a metered WebSocket may send (`None`: no limit).
    pub frame_rate: Option<crate::chat::room::RateLimit>,
    /// What all clients together may make the server hold (0: no budget).
    pub memory_budget: usize,
}

/// Everything the server owns except the connections themselves: what a
/// connection may touch while it is driven.
pub struct Cx {
    pub chat: Chat,
    pub storage: Storage,
    /// Cluster mode: Redis instead of SQLite for users, sessions and the room.
    pub cluster: Option<Cluster>,
    pub cfg: ConnConfig,
    pub rate_limits: RateLimits,
    /// Broadcast frames some connection has yet to write, each stored once.
    pub log: BroadcastLog,
    /// Chat effects produced while driving, applied by the server afterwards.
    pub fx: Effects,
    pub stats: Stats,
    pub memory: memory::Memory,
    /// Open connections, for `/metrics` (the slab's length, kept by the server).
    pub open_connections: usize,
    pub shutting_down: bool,
    pub date: DateCache,
    scratch: Box<[u8]>,
}

impl Cx {
    pub fn new(chat: Chat, storage: Storage, cfg: ConnConfig, rate_limits: RateLimits) -> Self {
        let budget = cfg.memory_budget;
        Cx {
            chat,
            storage,
            cluster: None,
            cfg,
            rate_limits,
            log: BroadcastLog::new(),
            fx: Vec::new(),
            stats: Stats { memory_budget: budget as u64, ..Stats::default() },
            memory: memory::Memory::new(budget),
            open_connections: 0,
            shutting_down: false,
            date: DateCache::default(),
            scratch: vec![0u8; ws::MAX_FRAME_BYTES.max(IN_CAP)].into_boxed_slice(),
        }
    }

    /// Hands a request to whoever answers it: Redis in cluster mode (files still
    /// come from the storage thread), else the storage threads.
    pub fn submit(&mut self, origin: Origin, request: Request) {
        match self.cluster.as_mut() {
            Some(c) if !matches!(request, Request::File(_)) => c.submit(origin, request),
            _ => self.storage.submit(origin, request),
        }
    }

    /// Storage (or, in cluster mode, Redis) can do all it promises.
    pub fn backend_healthy(&self) -> bool {
        self.storage.is_healthy() && self.cluster.as_ref().is_none_or(Cluster::is_up)
    }

    /// Loopback is where the operator's own benchmarks and probes run; a proxy's
    /// forwarded clients are limited like anyone else.
    fn metered(&self, client: &Client) -> bool {
        self.cfg.limit_loopback || client.forwarded || !client.ip.is_loopback()
    }
}

pub enum Phase {
    Http(Box<HttpPhase>),
    Ws(WsPhase),
    /// Flushing the last bytes, then waiting briefly for the peer to hang up.
    Closing {
        until: Instant,
    },
}

/// What the server does with a connection after driving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing more until a readiness event, a drained queue or a deadline.
    Wait,
    /// Input is left over and the read budget ran out: drive again next turn.
    Yield,
    /// Finished: free the slot.
    Remove,
}

/// A phase's answer: keep going in the new phase, or stop here.
enum Progress {
    Again,
    Done(Step),
}

pub struct Conn<S> {
    pub sock: S,
    pub key: usize,
    /// The TCP peer, kept as address and port: a `SocketAddr` would carry IPv6 flow
    /// and scope fields (12 more bytes per connection) that nothing here reads.
    peer_ip: IpAddr,
    peer_port: u16,
    pub generation: u64,
    phase: Phase,
    pub out: OutQueue,
    /// Bytes read and not yet consumed by the phase (HTTP requests or WebSocket frames).
    input: Vec<u8>,
    /// Edge-triggered readiness, remembered until a syscall says WouldBlock.
    readable: bool,
    writable: bool,
    /// Already on the server's list of connections to flush this turn.
    pub queued_for_flush: bool,
    /// Already on the server's list of connections to drive without an event.
    pub queued_for_read: bool,
    /// The earliest deadline this connection has in the timer heap.
    pub armed: Option<Instant>,
    /// Our write side is shut (after the last byte of a closing connection).
    write_shut: bool,
    /// The peer hung up (EOF or a reset) on its side.
    peer_gone: bool,
    /// Messages or requests are metered for this client (not loopback-exempt).
    metered: bool,
    /// What this connection last reported to `cx.memory`.
    held: usize,
    /// Bytes read and thrown away while closing.
    discarded: u32,
}

impl<S: Stream> Conn<S> {
    pub fn new(sock: S, key: usize, peer: SocketAddr, generation: u64, limits: Limits, now: Instant) -> Self {
        Conn {
            sock,
            key,
            peer_ip: peer.ip(),
            peer_port: peer.port(),
            generation,
            phase: Phase::Http(Box::new(HttpPhase::new(limits, now))),
            out: OutQueue::new(),
            input: Vec::new(),
            readable: false,
            writable: true,
            queued_for_flush: false,
            queued_for_read: false,
            armed: None,
            write_shut: false,
            peer_gone: false,
            metered: false,
            held: 0,
            discarded: 0,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        SocketAddr::new(self.peer_ip, self.peer_port)
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn is_ws(&self) -> bool {
        matches!(self.phase, Phase::Ws(_))
    }

    pub fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. })
    }

    /// An HTTP request of this connection waits on storage.
    pub fn is_waiting(&self) -> bool {
        matches!(&self.phase, Phase::Http(h) if h.is_waiting())
    }

    /// Bytes held for the peer: the queue, or records below it in the transport.
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty() || self.sock.wants_write()
    }

    /// There is input to look at without waiting for an event: the socket has not
    /// said WouldBlock yet, or bytes already read wait to be parsed.
    pub fn wants_read(&self) -> bool {
        self.readable || !self.input.is_empty()
    }

    pub fn set_readable(&mut self) {
        self.readable = true;
    }

    pub fn set_writable(&mut self) {
        self.writable = true;
    }

    /// Over the high mark: stop reading until the peer has taken some of it.
    fn out_high(&self, log: &BroadcastLog) -> bool {
        self.out.len(log) >= OUT_HIGH
    }

    /// When this connection next needs attention without any IO.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Http(h) => Some(h.deadline()),
            Phase::Ws(w) => Some(w.deadline()),
            Phase::Closing { until } => Some(*until),
        }
    }

    /// Reads what the connection has and acts on it, following phase changes.
    pub fn drive(&mut self, cx: &mut Cx, now: Instant) -> Step {
        loop {
            let progress = match self.phase {
                Phase::Http(_) => self.drive_http(cx, now),
                Phase::Ws(_) => self.drive_ws(cx, now),
                Phase::Closing { .. } => Progress::Done(self.drive_closing(cx)),
            };
            if let Progress::Done(step) = progress {
                return step;
            }
        }
    }

    /// Reads from the socket into the input buffer until it would block, the peer
    /// hangs up, or the buffer holds `cap` bytes. The one read loop of every phase.
    fn fill(&mut self, cx: &mut Cx, cap: usize) {
        while self.readable && self.input.len() < cap {
            let room = cap - self.input.len();
            match self.sock.read(&mut cx.scratch[..room]) {
                Ok(0) => self.hung_up(),
                Ok(n) => {
                    cx.stats.bytes_in += n as u64;
                    ws::reserve_modest(&mut self.input, n, cap);
                    self.input.extend_from_slice(&cx.scratch[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.hung_up(),
            }
        }
    }

    fn hung_up(&mut self) {
        self.readable = false;
        self.peer_gone = true;
    }

    /// Idle connections hold no input buffer.
    fn release_input(&mut self) {
        if self.input.is_empty() {
            self.input = Vec::new();
        }
    }

    /// A closing connection: discard input until the peer hangs up.
    fn drive_closing(&mut self, cx: &mut Cx) -> Step {
        self.input.clear();
        while self.readable && !self.peer_gone {
            self.fill(cx, IN_CAP);
            self.discarded = self.discarded.saturating_add(self.input.len() as u32);
            self.input.clear();
            // A peer that keeps sending after our close (a flood cut off) would
            // have us read for the whole linger: past this we stop reading and go
            // once our close frame is out.
            if self.discarded as usize > CLOSING_DISCARD {
                self.readable = false;
                self.peer_gone = true;
            }
        }
        self.release_input();
        if self.peer_gone && (self.out.is_empty() || !self.writable) {
            return Step::Remove;
        }
        Step::Wait
    }

    /// Enters the closing phase; a WebSocket leaves the room first.
    pub fn begin_closing(&mut self, cx: &mut Cx, now: Instant) {
        match self.phase {
            Phase::Ws(_) => self.close_ws(None, cx, now),
            Phase::Http(_) => self.enter_closing(cx, now),
            Phase::Closing { .. } => {}
        }
    }

    fn enter_closing(&mut self, cx: &mut Cx, now: Instant) {
        self.phase = Phase::Closing { until: now + LINGER };
        cx.stats.closing += 1;
    }

    /// Leaves the WebSocket phase, optionally with a close frame (its code's usual
    /// reason, `ws::close::reason`), and the room.
    pub fn close_ws(&mut self, code: Option<u16>, cx: &mut Cx, now: Instant) {
        self.close_ws_why(code, code.map_or("", ws::close::reason), cx, now);
    }

    /// Closes a WebSocket with `code` and a reason the client can show; the session
    /// must still exist (the log line names its user).
    pub fn close_ws_because(&mut self, code: u16, reason: &str, cx: &mut Cx, now: Instant) {
        self.close_ws_why(Some(code), reason, cx, now);
    }

    /// `close_ws` with the close frame's reason spelled out.
    pub fn close_ws_why(&mut self, code: Option<u16>, reason: &str, cx: &mut Cx, now: Instant) {
        let Phase::Ws(w) = &self.phase else { return };
        if let Some(code) = code {
            self.out.push(ws::close_frame_with(code, reason));
        }
        let session = w.session;
        self.enter_closing(cx, now);
        if log::enabled(log::Level::Info) {
            let user = cx.chat.username(session).unwrap_or("?");
            let why = match code {
                None => "peer closed".to_owned(),
                Some(c) if reason.is_empty() => format!("close {c}"),
                Some(c) => format!("close {c}: {reason}"),
            };
            log::info(format_args!("{user} left ({why})"));
        }
        cx.chat.leave(self.key, &mut cx.fx);
    }

    /// A deadline this connection armed has come.
    pub fn on_timeout(&mut self, cx: &mut Cx, now: Instant) -> Step {
        match &mut self.phase {
            Phase::Http(h) if now >= h.deadline() => {
                if h.is_waiting() {
                    // Storage never answered (a stopped thread): say so, and go.
                    self.respond_error(503, "storage_unavailable", cx, now);
                } else if !self.input.is_empty() {
                    self.respond_error(408, "request_timeout", cx, now);
                }
                self.enter_closing(cx, now);
            }
            Phase::Ws(w) => {
                if w.silent_since(now) {
                    self.close_ws_why(Some(ws::close::GOING_AWAY), "silent peer", cx, now);
                } else if w.ping_due(now) {
                    ws::WsConn::ping(&mut self.out);
                }
            }
            Phase::Closing { until } if now >= *until => return Step::Remove,
            _ => {}
        }
        Step::Wait
    }

    /// Writes what the queue holds, up to the per-turn budget.
    pub fn flush(&mut self, cx: &mut Cx) -> io::Result<Flush> {
        if !self.writable {
            return Ok(Flush::Blocked);
        }
        let (mut flush, written) = self.out.flush_to(self.key, &mut cx.log, &mut self.sock, WRITE_BUDGET)?;
        cx.stats.bytes_out += written as u64;
        if flush == Flush::Done {
            // Bytes the transport still holds (TLS records) go out too.
            flush = match self.sock.flush() {
                Ok(()) => Flush::Done,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Flush::Blocked,
                Err(e) => return Err(e),
            };
        }
        if flush == Flush::Blocked {
            self.writable = false;
        }
        Ok(flush)
    }

    /// Everything queued was written: a closing connection half-closes (and goes
    /// once the peer has too); a connection that stopped reading at the high mark
    /// has input or a readable socket to go back to.
    pub fn drained(&mut self) -> Step {
        if self.is_closing() {
            if !self.write_shut {
                self.write_shut = true;
                self.sock.shutdown_write();
            }
            return if self.peer_gone { Step::Remove } else { Step::Wait };
        }
        if self.wants_read() {
            Step::Yield
        } else {
            Step::Wait
        }
    }

    /// The socket failed under a write: nothing queued can reach the peer.
    pub fn write_failed(&mut self, cx: &mut Cx, now: Instant) {
        self.peer_gone = true;
        self.out.drop_unstarted(self.key, &mut cx.log);
        self.begin_closing(cx, now);
    }

    /// A WebSocket too slow to read: its unsent frames go, a 1008 close follows.
    pub fn drop_slow(&mut self, cx: &mut Cx, now: Instant) {
        self.out.drop_unstarted(self.key, &mut cx.log);
        cx.stats.slow_dropped += 1;
        log::warn(format_args!("{}: too slow, dropped", self.peer()));
        self.close_ws_why(Some(ws::close::POLICY), "too slow", cx, now);
    }

    /// Frees what the connection still owes the broadcast log.
    pub fn discard(mut self, cx: &mut Cx) {
        self.out.discard(self.key, &mut cx.log);
        cx.memory.set(&mut self.held, 0);
        cx.stats.client_memory = (cx.memory.held() as u64).saturating_add(cx.log.bytes());
        if self.is_closing() {
            cx.stats.closing -= 1;
        }
        log::debug(format_args!("disconnect {}", self.peer()));
    }
}
