//! Cluster mode: this node's two connections to Redis as a sans-IO core. One link
//! carries commands, pipelined, their replies matched in order; the other is
//! subscribed to the room's channel. Everything shared lives in Redis (users,
//! sessions, presence, history) and changes only through the functions of
//! `library.lua`, each atomic. Every join, leave, message and ended session is an
//! event on one channel, and every node applies the events in the order Redis sends
//! them: its own clients' events too, when they come back.
//!
//! The reactor owns the sockets: it opens and closes them when `poll_io` says so,
//! feeds what they read to `on_bytes` (or their end to `on_closed`) and writes what
//! `output` holds. Time comes in as `now`; nothing here reads a clock.
//!
//! Redis down: requests answer `Unavailable` at once, the links are retried with
//! backoff, and on reconnect a sync tells Redis which WebSockets this node still has
//! and brings back a snapshot (online users, history), from which the loop tells its
//! clients whatever they missed.

pub mod command;
pub mod event;
mod failover;
mod incoming;
pub mod link;
mod replicas;
pub mod reply;
pub mod resp;
pub mod sentinel;
mod sync;
pub mod url;
mod users;
mod wire;

use crate::chat::replicated::Snapshot;
use crate::chat::Message;
use crate::storage::{Done, Origin, Reply, Request};
use event::RoomEvent;
pub use link::LinkId;
use link::{Backoff, Link};
use reply::{hex, token};
use resp::Value;
use sentinel::{Sentinels, Watchers};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use url::{RedisTarget, RedisUrl};

/// Every key and the channel are named under this.
pub const PREFIX: &str = "skiff:";

/// A node refreshes its liveness key this often...
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// ...which lives this long: a node killed -9 is reaped 6-8 s later, and its users
/// leave everywhere (the contract allows 15 s).
const NODE_TTL: Duration = Duration::from_secs(6);
const REAP_EVERY: Duration = Duration::from_secs(2);
/// After (re)connecting, a node waits this long before reaping others: when Redis
/// comes back, every node needs a moment to reconnect and heartbeat before its
/// users would count as gone.
const REAP_GRACE: Duration = Duration::from_secs(8);
/// A command unanswered this long means Redis is stuck: reconnect.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes of commands queued for a Redis that does not read: past this it is down.
const OUT_LIMIT: usize = 64 << 20;
/// After a failover began, how long client input may wait for the new primary
/// (sentinels promote within seconds; past this the node serves on, degraded).
const FAILOVER_HOLD: Duration = Duration::from_secs(10);
/// Messages kept to send again after a failover (each holds its text).
const MAX_REPLAY: usize = 4096;
/// Logouts kept while Redis is down (32 bytes each).
const MAX_DEFERRED_LOGOUTS: usize = 65_536;

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub url: RedisUrl,
    pub session_ttl: Duration,
    pub max_sessions_per_user: usize,
    pub history: usize,
    /// Sockets a user may hold across the cluster (`--max-devices`).
    pub max_devices: usize,
}

/// Lowercased name -> other nodes holding sockets of the user, with how many each.
type Remote = std::collections::HashMap<Box<str>, Vec<(Box<str>, usize)>>;

/// What the reactor must do with the sockets, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Io {
    /// Open both links to this address (non-blocking), then call `connected`; or, if
    /// a socket cannot even be made, `on_closed` with why.
    Open(SocketAddr),
    /// Drop both links.
    Close,
    /// Open the link to this sentinel (non-blocking); if that cannot even start,
    /// `on_closed(LinkId::Sentinel, ...)`.
    OpenSentinel(SocketAddr),
    /// Drop the sentinel link.
    CloseSentinel,
    /// Open watching link `i` to this sentinel (see `sentinel::Watchers`).
    OpenWatch(usize, SocketAddr),
    CloseWatch(usize),
}

/// What the loop must act on, in the order it happened.
#[derive(Debug)]
pub enum Event {
    /// A connection's request is answered.
    Reply(Done),
    /// `name` joined on some node; `mine`: the connection here waiting to open.
    Join {
        name: String,
        mine: Option<Origin>,
    },
    Leave {
        name: String,
    },
    /// `skiff ctl ban` (or `kick --for`) on any node: the close reason of the
    /// sessions it ends, and logins refused here too.
    Banned {
        name: String,
        ban: crate::chat::moderation::Ban,
    },
    Unbanned {
        name: String,
    },
    Message {
        msg: Message,
        mine: Option<Origin>,
    },
    SessionEnded {
        id_hash: [u8; 32],
        code: u16,
    },
    /// The sockets user `name` holds on the other nodes changed to `elsewhere` (the
    /// device cap counts them beside this node's own).
    Devices {
        name: String,
        elsewhere: usize,
    },
    /// A socket this node let in beside others of its user took the user past the
    /// cap: another node let one in at the same moment. It closes (1008).
    OverCap(Origin),
    /// A session of `name` was logged out somewhere: every socket of the user here
    /// closes (1000), whatever session opened it.
    LoggedOut {
        name: String,
    },
    /// After a sync: the session of a socket here ended while this node was away, or
    /// its user is gone (deleted, banned); the socket closes with `code` and `reason`.
    SessionGone {
        id_hash: [u8; 32],
        code: u16,
        reason: &'static str,
    },
    /// A message from this connection could not be published.
    Unavailable(Origin),
    /// In sync again: the replica becomes `snapshot`; `taken` are users whose
    /// socket here must close (another node holds them now).
    Synced {
        snapshot: Snapshot,
        taken: Vec<String>,
        /// This node's messages Redis took (id, sender) whose event never came: the
        /// links dropped in between. Their senders are owed an ack.
        mine: Vec<(u64, Origin)>,
        /// The snapshot's later messages follow as `SyncedMore`, a slice a turn.
        more: bool,
        /// Online users' sockets on the other nodes (lowercased name, count).
        devices: Vec<(String, usize)>,
    },
    /// The next of a big snapshot's messages (oldest first); `last` ends it.
    SyncedMore {
        messages: Vec<Message>,
        last: bool,
    },
    /// `skiff ctl`: Redis answered the function called for `origin`.
    Control {
        origin: Origin,
        value: Value,
    },
    /// `skiff ctl kick`: close this user's socket here (1000).
    Kick {
        name: String,
    },
    /// `skiff ctl delete-message` (or `delete-user --messages`): out of the history.
    Deleted {
        id: u64,
    },
}

/// What a command's reply is for.
#[derive(Debug)]
enum Pending {
    Conn(Origin, Expect),
    /// The text travels with it: a message the server refused unrun (`READONLY`,
    /// `NOREPLICAS`: a failover) is sent again to the next primary.
    Publish(Origin, Rc<str>, Box<str>),
    /// A session with a socket here (and its user), checked after a sync: it may have
    /// ended while this node was not listening, or be lost with a failover.
    Reassert([u8; 32], Box<str>),
    /// `skiff_devices` after a socket opened here beside others of its user: the
    /// total it answers may be past the cap.
    Device(Origin),
    /// `WAIT 1 T` after registrations (see `replicas.rs`).
    Wait,
    /// `skiff_heartbeat`: its answer says what replicas the primary has.
    Heartbeat,
    Control(Origin),
    /// The sync's snapshot, without the history...
    Sync,
    /// ...which comes in the reply after it (see `sync`).
    SyncHistory,
    /// `ROLE` on connect (sentinel mode): the server must be the primary.
    Role,
    Ignore,
}

#[derive(Debug, Clone)]
enum Expect {
    /// The WAIT whose answer decides the 201, if one must.
    Register(Option<u64>),
    Login,
    FindUser,
    Session,
    Logout,
    /// The user's name: the join's answer says which user it is (when registered),
    /// and a join another node's device already made needs no event: it is applied
    /// as its reply comes.
    Join(Box<str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No links; the next attempt at `retry_at`.
    Down,
    /// Sentinel mode: asking the sentinels where the primary is.
    Locating,
    /// Links opening, AUTH/SELECT/FUNCTION LOAD and SUBSCRIBE sent.
    Connecting,
    /// Subscribed; the loop owes a sync (`wants_sync`).
    Subscribed,
    /// Sync sent; channel events wait for its snapshot.
    Syncing,
    Up,
}

pub struct Cluster {
    cfg: ClusterConfig,
    node: String,
    cmd: Option<Link>,
    sub: Option<Link>,
    io: VecDeque<Io>,
    state: State,
    since: Instant,
    /// The latest moment the loop gave: what a command queued now is stamped with.
    now: Instant,
    pending: VecDeque<(Instant, Pending)>,
    events: VecDeque<Event>,
    /// Channel events that came before the sync's snapshot.
    buffered: Vec<RoomEvent>,
    /// The channel position the last snapshot holds: an event up to it, however late
    /// it is read (the two links are read in either order), is in the snapshot.
    synced_seq: u64,
    /// Joins Redis accepted whose event has not come yet: they fail if the links do.
    joining: Vec<Origin>,
    /// Joins whose event came before their command's reply (the links are read in
    /// either order): the reply finds its connection here and waits for nothing.
    joined_early: Vec<Origin>,
    /// Logouts taken while Redis was down, sent on reconnect.
    deferred_logouts: Vec<[u8; 32]>,
    backoff: Backoff,
    retry_at: Instant,
    heartbeat_at: Instant,
    reap_at: Instant,
    /// The outage was logged (once per outage, not per retry).
    outage_logged: bool,
    syncs: u64,
    /// `stop` was called: no more leaves, no reconnects.
    stopping: bool,
    /// This node's messages published and not yet back as events (nor failed): a
    /// hand-over waits for them, since their acks ride on those events.
    unconfirmed: usize,
    /// Messages Redis took (its reply came, with the id) whose event has not come.
    answered: VecDeque<(u64, Origin)>,
    /// Refusals ("unavailable") owed to senders with a message in `answered`, how
    /// many each: a socket hears its acks in the order it sent, so they wait for
    /// the earlier message's ack (its event, or the next sync).
    refused_behind: Vec<(Origin, usize)>,
    /// Lowercased name -> this node's joins of that user sent and not yet settled
    /// (the loop has not taken their outcome: joined, or refused). Redis runs them before any
    /// later command: a node whose last socket of a user closes meanwhile must not
    /// take the user's presence here away from under them (see `joining`).
    joins: std::collections::HashMap<Box<str>, usize>,
    /// Refused joins whose refusal the loop has not taken yet (origin, name).
    settling: Vec<(Origin, Box<str>)>,
    /// Own events that came before their command's reply (the links are read in
    /// either order): the reply finds its id here and owes nothing.
    early: VecDeque<u64>,
    /// Messages a demoted server refused unrun, to send to the next primary first.
    replay: VecDeque<(Origin, Rc<str>, Box<str>)>,
    /// A failover began; the node expects to be in sync with a new primary by then.
    failover_until: Option<Instant>,
    /// Sentinel mode: who says where the primary is...
    sentinels: Option<Sentinels>,
    /// ...and every sentinel, watched for a failover starting.
    watchers: Option<Watchers>,
    /// Where the links point (or last pointed).
    primary: Option<SocketAddr>,
    /// Registrations waiting for a replica.
    waits: replicas::Waits,
    /// Lowercased name -> when the user was registered (Redis's `created`), for the
    /// users with a socket here: a session is asserted again only for that user,
    /// never for another registered under the name after Redis lost the first.
    incarnations: std::collections::HashMap<Box<str>, Box<str>>,
    /// Lowercased name -> the other nodes holding sockets of that user, and how
    /// many each (from the sync's snapshot and the events J, N and L).
    remote: Remote,
    /// Big snapshots' messages not yet handed to the loop (newest first, each
    /// sync's), taken a slice per turn from the end (see `sync::next_slice`)...
    slices: VecDeque<Vec<Value>>,
    /// ...and whether this turn had its slice (`flush` ends a turn).
    sliced: bool,
    /// The reactor left bytes unread on a link this turn: the next turn comes at once.
    input_waiting: bool,
    /// When the command link last brought bytes (see `reply_due`).
    heard_at: Instant,
    /// The sync's snapshot, waiting for its history (the next reply).
    sync_head: Option<(Snapshot, u64, Vec<String>)>,
    /// Links given up with a big reply half read, freed a slice a turn.
    shedding: Vec<Link>,
}

impl Cluster {
    /// A node with a fresh random id; it asks to connect on the first `on_timeout`.
    pub fn new(cfg: ClusterConfig, now: Instant) -> Cluster {
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).expect("the OS CSPRNG is available");
        Cluster::with_node(cfg, hex(&raw), now)
    }

    /// A node named `node` (tests and the fuzz world pick their own).
    pub fn with_node(cfg: ClusterConfig, node: String, now: Instant) -> Cluster {
        let (sentinels, watchers, primary) = match &cfg.url.target {
            RedisTarget::Server(addr) => (None, None, Some(*addr)),
            RedisTarget::Sentinels(set) => {
                let pw = cfg.url.password.clone();
                (Some(Sentinels::new(set.clone(), pw.clone(), now)), Some(Watchers::new(set, pw, now)), None)
            }
        };
        Cluster {
            cfg,
            node,
            cmd: None,
            sub: None,
            io: VecDeque::new(),
            state: State::Down,
            since: now,
            now,
            pending: VecDeque::new(),
            events: VecDeque::new(),
            buffered: Vec::new(),
            synced_seq: 0,
            joining: Vec::new(),
            joined_early: Vec::new(),
            deferred_logouts: Vec::new(),
            backoff: Backoff::new(),
            retry_at: now,
            heartbeat_at: now,
            reap_at: now,
            outage_logged: false,
            syncs: 0,
            stopping: false,
            unconfirmed: 0,
            answered: VecDeque::new(),
            refused_behind: Vec::new(),
            joins: std::collections::HashMap::new(),
            settling: Vec::new(),
            early: VecDeque::new(),
            replay: VecDeque::new(),
            failover_until: None,
            sentinels,
            watchers,
            primary,
            waits: replicas::Waits::default(),
            incarnations: std::collections::HashMap::new(),
            remote: Remote::new(),
            slices: VecDeque::new(),
            sliced: false,
            input_waiting: false,
            heard_at: now,
            sync_head: None,
            shedding: Vec::new(),
        }
    }

    /// This node's id: its presence in Redis is kept under it.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn deferred_logouts(&self) -> &[[u8; 32]] {
        &self.deferred_logouts
    }

    /// A hand-over's new image carries on as the node it was, with the logouts it
    /// still owed Redis. Only before the first connect: the sync that follows then
    /// finds this node's presence as it left it.
    pub fn resume_as(&mut self, node: String, deferred_logouts: Vec<[u8; 32]>) {
        debug_assert!(self.state == State::Down && self.syncs == 0);
        self.node = node;
        self.deferred_logouts = deferred_logouts;
    }

    /// Nothing sent to Redis waits for an answer or an event: a hand-over can cut
    /// the links here without losing a reply, an ack or a join. A node out of sync
    /// has nothing in flight that matters (everything was failed when the links went).
    pub fn is_quiet(&self) -> bool {
        self.replay.is_empty()
            && self.waits.is_empty()
            && (!self.accepting() || (self.pending.is_empty() && self.joining.is_empty() && self.unconfirmed == 0))
    }

    /// For `/metrics`; `online_users` is the replica's count.
    pub fn gauges(&self, online_users: u64) -> crate::metrics::ClusterGauges {
        crate::metrics::ClusterGauges {
            up: self.is_up(),
            online_users,
            pending_commands: self.pending.len() as u64,
            syncs: self.syncs,
        }
    }

    /// Connected and in sync: `/healthz` says ok.
    pub fn is_up(&self) -> bool {
        self.state == State::Up && self.slices.is_empty()
    }

    /// Requests go out only after the sync: an event they cause then comes after
    /// the snapshot, never folded into it unseen.
    fn accepting(&self) -> bool {
        matches!(self.state, State::Syncing | State::Up)
    }

    /// The links are subscribed: the loop must call `sync` with its WebSocket users.
    pub fn wants_sync(&self) -> bool {
        self.state == State::Subscribed
    }

    pub fn next_event(&mut self) -> Option<Event> {
        let event = match self.events.front() {
            Some(Event::SyncedMore { .. }) => self.next_slice(),
            _ => self.events.pop_front(),
        };
        // A join settles as the loop takes its outcome, not as Redis's bytes are read:
        // the outcomes of other joins of the user may wait behind it in the queue.
        match &event {
            Some(Event::Join { name, mine: Some(_) }) => self.join_settled(name),
            Some(Event::Reply(Done { origin, .. })) => {
                if let Some(at) = self.settling.iter().position(|(o, _)| o == origin) {
                    let (_, name) = self.settling.swap_remove(at);
                    self.join_settled(&name);
                }
            }
            _ => {}
        }
        event
    }

    /// Events wait (some perhaps for the next turn), or input does.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty() || self.input_waiting || !self.shedding.is_empty()
    }

    /// The reactor read a link only in part this turn (see `reactor::redis`).
    pub fn set_input_waiting(&mut self, waiting: bool) {
        self.input_waiting = waiting;
    }

    /// The loop's time at the start of a turn: commands queued during the turn are
    /// stamped with it (their reply timeout and round trip run from it).
    pub fn tick(&mut self, now: Instant) {
        self.now = now;
    }

    /// The next thing the reactor must do with the sockets.
    pub fn poll_io(&mut self) -> Option<Io> {
        self.io.pop_front()
    }

    /// A request from connection `origin`; its reply comes as `Event::Reply`.
    pub fn submit(&mut self, origin: Origin, request: Request) {
        if !self.accepting() {
            let reply = match request {
                Request::Logout { id_hash } => {
                    // Bounded: past this an outage's logouts are left to the sessions' TTL.
                    if self.deferred_logouts.len() < MAX_DEFERRED_LOGOUTS {
                        self.deferred_logouts.push(id_hash);
                    }
                    Reply::LoggedOut
                }
                _ => Reply::Unavailable,
            };
            self.events.push_back(Event::Reply(Done { origin, reply }));
            return;
        }
        let (expect, cmd) = match request {
            Request::Register { username, key_hash } => {
                if let Some(reply) = self.register(origin, &command::register(&username, &key_hash)) {
                    self.events.push_back(Event::Reply(Done { origin, reply }));
                }
                return;
            }
            Request::Login { key_hash, session } => {
                let Some(session) = session else {
                    self.events.push_back(Event::Reply(Done { origin, reply: Reply::Unavailable }));
                    return;
                };
                let cmd = command::login(&key_hash, &session, self.session_ms(), self.cfg.max_sessions_per_user);
                (Expect::Login, cmd)
            }
            Request::FindUser { name } => (Expect::FindUser, command::find_user(&name)),
            Request::Session { id_hash } => (Expect::Session, command::session(&id_hash)),
            Request::Logout { id_hash } => (Expect::Logout, command::logout(&id_hash)),
            Request::Join { name, v2 } => {
                let cmd = command::join(&name, &self.node, &token(origin), v2, self.cfg.max_devices);
                *self.joins.entry(name.to_ascii_lowercase().into()).or_default() += 1;
                (Expect::Join(name.into()), cmd)
            }
            // Files are read by the storage thread; `skiff ctl` calls Redis through
            // `control`; nothing else reaches here.
            Request::File(_) | Request::Control(_) => {
                self.events.push_back(Event::Reply(Done { origin, reply: Reply::Unavailable }));
                return;
            }
        };
        self.send(&cmd, Pending::Conn(origin, expect));
    }

    /// `skiff ctl`: one call (`args`: FCALL and its arguments) for `origin`; Redis's
    /// reply comes back as `Event::Control`, or as an `Unavailable` reply.
    pub fn control(&mut self, origin: Origin, args: &[String]) {
        if !self.accepting() {
            self.events.push_back(Event::Reply(Done { origin, reply: Reply::Unavailable }));
            return;
        }
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        self.send(&args, Pending::Control(origin));
    }

    /// A member's message, to publish; `Event::Message` delivers it (and its ack).
    pub fn publish(&mut self, origin: Origin, author: Rc<str>, text: Box<str>) {
        if !self.accepting() {
            self.refuse(origin);
            return;
        }
        let (token, keep) = (token(origin), self.cfg.history.to_string());
        match self.cmd.as_mut() {
            Some(cmd) => {
                cmd.queue(&command::message(&self.node, &token, &author, &text, &keep));
                self.pending.push_back((self.now, Pending::Publish(origin, author, text)));
                self.unconfirmed += 1;
            }
            None => self.refuse(origin),
        }
    }

    /// A graceful stop: this node's users leave the cluster now. Nothing is sent
    /// after it; `is_idle` says when Redis has answered.
    pub fn stop(&mut self) {
        if self.accepting() {
            self.send(&command::stop(&self.node), Pending::Ignore);
        }
        self.stopping = true;
    }

    /// Every command sent has been answered (or the link is gone).
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Activity on a session: Redis keeps it a full TTL (+ the save slack) from now.
    pub fn renew(&mut self, id_hash: &[u8; 32]) {
        if self.accepting() {
            self.send(&command::renew(id_hash, self.session_ms()), Pending::Ignore);
        }
    }

    fn session_ms(&self) -> u128 {
        (self.cfg.session_ttl + crate::chat::session::SAVE_SLACK).as_millis()
    }

    fn send(&mut self, cmd: &[Vec<u8>], why: Pending) {
        let Some(link) = self.cmd.as_mut() else {
            self.fail_pending(why);
            return;
        };
        link.queue(cmd);
        self.pending.push_back((self.now, why));
    }

    /// The earliest moment `on_timeout` has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.stopping {
            // No heartbeats or retries any more: only an answer that never comes.
            return self.reply_due();
        }
        let sentinels = [
            self.sentinels.as_ref().and_then(Sentinels::next_deadline),
            self.watchers.as_ref().and_then(Watchers::next_deadline),
        ]
        .into_iter()
        .flatten()
        .min();
        let own = match self.state {
            State::Down => Some(self.retry_at),
            State::Locating => None,
            State::Connecting | State::Subscribed => Some(self.since + CONNECT_TIMEOUT),
            State::Syncing | State::Up => {
                let stuck = self.reply_due();
                [Some(self.heartbeat_at), Some(self.reap_at), stuck].into_iter().flatten().min()
            }
        };
        [own, sentinels].into_iter().flatten().min()
    }

    pub fn on_timeout(&mut self, now: Instant) {
        self.now = now;
        if let Some(s) = self.sentinels.as_mut() {
            s.on_timeout(now);
        }
        if let Some(w) = self.watchers.as_mut() {
            w.on_timeout(now);
        }
        self.sentinel_io();
        match self.state {
            State::Down if now >= self.retry_at && !self.stopping => self.locate(now),
            State::Connecting | State::Subscribed if now >= self.since + CONNECT_TIMEOUT => {
                self.lost("connecting timed out", now);
            }
            State::Syncing | State::Up => {
                if self.reply_due().is_some_and(|due| now >= due) {
                    return self.lost("a reply took over 5 s", now);
                }
                if self.stopping {
                    return;
                }
                if now >= self.heartbeat_at {
                    self.heartbeat_at = now + HEARTBEAT_EVERY;
                    self.send(&command::heartbeat(&self.node, NODE_TTL.as_millis()), Pending::Heartbeat);
                }
                if now >= self.reap_at {
                    self.reap_at = now + REAP_EVERY;
                    if self.state == State::Up && now >= self.since + REAP_GRACE {
                        self.send(&command::reap(), Pending::Ignore);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
