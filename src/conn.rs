//! One client connection: its socket, its write queue, and the phase it is in.
//! The phase is a state machine (HTTP requests -> WebSocket -> closing); the socket,
//! slab key and queue outlive every phase. The reactor drives it; this module only
//! holds state and derives deadlines from it.

use crate::chat::session::SessionKey;
use crate::http::{Limits, RequestParser};
use crate::outq::OutQueue;
use crate::ws::WsConn;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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

pub struct HttpPhase {
    pub parser: RequestParser,
    pub input: Vec<u8>,
    pub deadline: Instant,
}

impl HttpPhase {
    pub fn new(limits: Limits, now: Instant) -> Self {
        HttpPhase { parser: RequestParser::new(limits), input: Vec::new(), deadline: now + REQUEST_TIMEOUT }
    }
}

pub struct WsPhase {
    pub ws: WsConn,
    pub session: SessionKey,
    pub last_seen: Instant,
    pub next_ping: Instant,
}

pub enum Phase {
    Http(Box<HttpPhase>),
    Ws(Box<WsPhase>),
    /// Flushing the last bytes, then waiting briefly for the peer to hang up.
    Closing {
        until: Instant,
    },
    /// Placeholder while one phase becomes the next.
    Moving,
}

/// What a connection's transport must offer: bytes both ways and a half-close.
/// A TCP socket, a TLS session over one, or a test double.
pub trait Stream: Read + Write {
    /// Sends FIN after the last queued byte (`shutdown(SHUT_WR)`).
    fn shutdown_write(&mut self);

    /// Bytes accepted earlier still wait below the write queue (TLS records): the
    /// connection needs a `flush` when the socket is writable again.
    fn wants_write(&self) -> bool {
        false
    }

    /// The client reached us over TLS.
    fn is_secure(&self) -> bool {
        false
    }
}

impl Stream for mio::net::TcpStream {
    fn shutdown_write(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

pub struct Conn<S> {
    pub sock: S,
    pub peer: SocketAddr,
    pub generation: u64,
    pub phase: Phase,
    pub out: OutQueue,
    /// Edge-triggered readiness, remembered until a syscall says WouldBlock.
    pub readable: bool,
    pub writable: bool,
    /// Already on the reactor's list of connections to flush this turn.
    pub queued_for_flush: bool,
    /// Already on the reactor's list of connections to read again without an event.
    pub queued_for_read: bool,
    /// The earliest deadline this connection has in the timer heap.
    pub armed: Option<Instant>,
    /// Our write side is shut (after the last byte of a closing connection).
    pub write_shut: bool,
    /// The peer hung up (EOF or a reset) on its side.
    pub peer_gone: bool,
    /// Messages or requests are metered for this client (not loopback-exempt).
    pub metered: bool,
}

impl<S: Stream> Conn<S> {
    pub fn new(sock: S, peer: SocketAddr, generation: u64, limits: Limits, now: Instant) -> Self {
        Conn {
            sock,
            peer,
            generation,
            phase: Phase::Http(Box::new(HttpPhase::new(limits, now))),
            out: OutQueue::new(),
            readable: false,
            writable: true,
            queued_for_flush: false,
            queued_for_read: false,
            armed: None,
            write_shut: false,
            peer_gone: false,
            metered: false,
        }
    }

    /// When this connection next needs attention without any IO.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Http(h) => Some(h.deadline),
            Phase::Ws(w) => Some(w.next_ping.min(w.last_seen + PEER_TIMEOUT)),
            Phase::Closing { until } => Some(*until),
            Phase::Moving => None,
        }
    }

    pub fn is_ws(&self) -> bool {
        matches!(self.phase, Phase::Ws(_))
    }

    pub fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. })
    }
}
