//! What one process hands the next: plain data, no sockets, no `Instant`s. A moment
//! is kept as its distance from the capture (`Rel`), so the clock of the new process
//! puts it back where it was; the exec in between freezes every timer for its length.
//! Descriptors are not here: they travel beside the state (see `codec`), in the order
//! of `State::conns`.

pub use crate::chat::Message;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A moment relative to the capture, in nanoseconds (negative: in the past).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rel(pub i64);

impl Rel {
    pub fn of(t: Instant, now: Instant) -> Rel {
        let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        match t.checked_duration_since(now) {
            Some(ahead) => Rel(ns(ahead)),
            None => Rel(-ns(now.duration_since(t))),
        }
    }

    /// The moment at this distance from `now`. One so far in the past that the clock
    /// cannot express it is clamped to the oldest moment it can (such a deadline has
    /// passed either way).
    pub fn at(self, now: Instant) -> Instant {
        let d = Duration::from_nanos(self.0.unsigned_abs());
        if self.0 >= 0 {
            now.checked_add(d).unwrap_or(now)
        } else {
            now.checked_sub(d).unwrap_or(now)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct State {
    /// The generation the next accepted connection gets.
    pub next_generation: u64,
    pub conns: Vec<ConnState>,
    pub chat: ChatState,
    pub register_limits: Vec<Window>,
    pub login_limits: Vec<Window>,
    pub http_rate_limited: u64,
    pub stats: StatsState,
    /// Cluster mode: what the node keeps of Redis between its links.
    pub cluster: Option<ClusterState>,
}

/// A cluster node across a hand-over. The links to Redis do not travel: the new
/// image connects and syncs, as after a short outage, under the same node id, so
/// the presence Redis holds for this node (well within its TTL) stays whole and
/// nobody anywhere sees a leave.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterState {
    pub node: String,
    /// Who is online on every node, in join order: the sync's snapshot is compared
    /// with it, so local clients hear only of what changed during the exec.
    pub online: Vec<String>,
    /// Logouts taken while Redis was down, still to send.
    pub deferred_logouts: Vec<[u8; 32]>,
}

/// One client connection, its queued output flattened to the bytes the peer has
/// yet to get.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnState {
    pub key: usize,
    pub generation: u64,
    pub peer: SocketAddr,
    pub metered: bool,
    /// The socket had not said WouldBlock yet: there may be bytes to read.
    pub readable: bool,
    pub write_shut: bool,
    pub peer_gone: bool,
    /// Bytes read and not yet parsed.
    pub input: Vec<u8>,
    /// Bytes not yet written, starting mid-frame if a write stopped there.
    pub output: Vec<u8>,
    pub phase: PhaseState,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PhaseState {
    Http { deadline: Rel, continue_sent: bool },
    Ws(WsState),
    Closing { until: Rel },
}

#[derive(Debug, Clone, PartialEq)]
pub struct WsState {
    pub session: (usize, u64),
    pub last_seen: Rel,
    pub next_ping: Rel,
    /// A fragmented message in progress: its first opcode and the payload so far.
    pub partial: Option<(u8, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatState {
    pub sessions: SessionsState,
    /// Members in connect order.
    pub room: Vec<MemberState>,
    pub history: HistoryState,
    pub messages_in: u64,
    pub messages_rejected: u64,
    pub rate_limited: u64,
    pub broadcasts: u64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionsState {
    pub next_generation: u64,
    /// Oldest first (by generation): each user's list is rebuilt in this order.
    pub sessions: Vec<SessionState>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionState {
    pub key: usize,
    pub generation: u64,
    pub id_hash: [u8; 32],
    pub user: String,
    pub last_active: Rel,
    /// The activity time last written to disk.
    pub saved: Rel,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MemberState {
    pub conn: usize,
    pub session: (usize, u64),
    /// The message bucket: tokens and when it was last filled; `None` if unmetered.
    pub bucket: Option<(f32, Rel)>,
    pub v2: bool,
    /// `chat::presence::Mode::code` (format 3 and older: 0, one event each).
    pub presence: u8,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistoryState {
    pub epoch: String,
    pub last_id: u64,
    /// Oldest first, as the ring holds them: a hand-over shares the frames, it does
    /// not copy them.
    pub entries: Vec<crate::chat::history::Entry>,
}

/// A rate-limit window: an address, when its minute started, and its count.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub ip: std::net::IpAddr,
    pub start: Rel,
    pub count: u32,
}

/// The counters `/metrics` reports, so a hand-over does not look like a restart.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StatsState {
    pub accepted: u64,
    pub refused: u64,
    pub ws_opened: u64,
    pub deliveries: u64,
    pub slow_dropped: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub responses: Vec<(u16, u64)>,
}
