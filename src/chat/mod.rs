//! The chat core: sessions and the room, fed events and `now`, answering with a list
//! of effects (frames to send, broadcasts, sockets to close) for the reactor to apply.
//! No sockets, no clock, no database here: `api` calls the store, the reactor does IO.

pub mod acks;
mod broker;
pub mod devices;
mod ending;
mod handover;
pub mod history;
pub mod message;
pub mod moderation;
pub mod presence;
pub mod replica;
pub mod replicated;
pub mod room;
pub mod session;

use crate::outq::Chunk;
use crate::ws::frame::{self, TextFrame};
use acks::{Acks, InFlight, Release, MAX_UNACKED};
use history::History;
use replica::Replica;
use room::{Bucket, Member, RateLimit, Room};
use serde::{Deserialize, Serialize};
use session::{EndReason, SessionId, SessionKey, Sessions};
use std::borrow::Cow;
use std::rc::Rc;
use std::time::{Duration, Instant};

pub use message::Message;
pub use session::LoginError;

/// The reactor's handle for a connection (its slab key). The reactor tells the core
/// when a connection goes away, so the core never holds a dead one.
pub type ConnId = usize;

pub const MAX_MESSAGE_CHARS: usize = 300;

#[derive(Debug, Clone)]
pub enum Effect {
    Send {
        to: ConnId,
        frame: Chunk,
    },
    /// A join or leave event for every member that takes them one by one
    /// (`presence::Mode::Each`, plain `/ws` always) except `except`.
    Broadcast {
        except: Option<ConnId>,
        frame: Rc<[u8]>,
    },
    /// A chat message for every member except `except`: `v1` for plain `/ws` clients,
    /// `v2` (with id and time) for `/ws?v=2` ones. Each encoded once.
    Message {
        except: Option<ConnId>,
        v1: Rc<[u8]>,
        v2: Rc<[u8]>,
    },
    /// Close this WebSocket with `code` and `reason`; the core has already removed
    /// it from the room.
    Close {
        conn: ConnId,
        code: u16,
        reason: Rc<str>,
    },
    /// Cluster mode: a member's valid message, to publish on the room's channel. It
    /// is delivered (and acked) when it comes back from there, in the global order.
    Publish {
        conn: ConnId,
        author: Rc<str>,
        message: Box<str>,
    },
    /// Cluster mode: `user`'s last WebSockets here, `closed` of them, are gone; the
    /// cluster must hear it left.
    Left {
        user: Rc<str>,
        closed: usize,
    },
    /// Cluster mode: `closed` sockets of `user` here are gone and the user still
    /// has one here; the cluster counts the user's devices.
    DevicesClosed {
        user: Rc<str>,
        closed: usize,
    },
    /// One encoded frame for every protocol v2 member, none for plain `/ws` ones
    /// (the `delete` event).
    BroadcastV2 {
        frame: Rc<[u8]>,
    },
    /// An interval's presence: `diff` for every `presence=batch` member, `count`
    /// for every `presence=count` one, each encoded once.
    Presence {
        diff: Option<Rc<[u8]>>,
        count: Option<Rc<[u8]>>,
    },
}

pub type Effects = Vec<Effect>;

// Acks are the same bytes every time: encode them once, at compile time.
pub const ACK_OK: &[u8] = b"\x81\x0f{\"status\":true}";
pub const ACK_TOO_LONG: &[u8] = b"\x81\x2a{\"status\":false,\"code\":\"message_too_long\"}";
pub const ACK_EMPTY: &[u8] = b"\x81\x27{\"status\":false,\"code\":\"message_empty\"}";
pub const ACK_INVALID: &[u8] = b"\x81\x29{\"status\":false,\"code\":\"invalid_message\"}";
pub const ACK_RATE_LIMITED: &[u8] = b"\x81\x26{\"status\":false,\"code\":\"rate_limited\"}";
/// `{"event": "resync"}`: the client's history cannot be completed.
pub const RESYNC: &[u8] = b"\x81\x12{\"event\":\"resync\"}";
/// Cluster mode, Redis unreachable: the message went nowhere.
pub const ACK_UNAVAILABLE: &[u8] = b"\x81\x25{\"status\":false,\"code\":\"unavailable\"}";

#[derive(Debug, Clone, Copy)]
pub struct ChatConfig {
    pub session_ttl: Duration,
    pub max_sessions_per_user: usize,
    pub max_sessions: usize,
    /// `None` turns the per-socket message limit off.
    pub message_rate: Option<RateLimit>,
    /// Messages kept for v2 resume and `/api/history` (0 = none).
    pub history: usize,
    /// Protocol v2 sockets one user may hold at once (`--max-devices`).
    pub max_devices: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Incoming<'a> {
    #[serde(borrow)]
    message: Cow<'a, str>,
}

#[derive(Serialize)]
struct Outgoing<'a> {
    message: &'a str,
    author: &'a str,
}

#[derive(Serialize)]
struct OutgoingV2<'a> {
    id: u64,
    ts: i64,
    message: &'a str,
    author: &'a str,
}

#[derive(Serialize)]
struct Hello<'a> {
    event: &'static str,
    epoch: &'a str,
    last_id: u64,
    online: Vec<&'a str>,
}

#[derive(Serialize)]
struct Event<'a> {
    event: &'a str,
    username: &'a str,
}

/// Why a WebSocket may not join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    /// The session ended (expired or logged out) since it was checked.
    NoSession,
    /// This user already has an open WebSocket (plain `/ws`), or a plain `/ws` one.
    AlreadyConnected,
    /// This user holds `--max-devices` v2 sockets already.
    TooManyDevices,
}

/// Counters the metrics endpoint reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChatStats {
    pub messages_in: u64,
    pub messages_rejected: u64,
    pub rate_limited: u64,
    pub broadcasts: u64,
    /// `skiff ctl` actions done, by `moderation::Action`.
    pub moderation: [u64; moderation::Action::ALL.len()],
}

pub struct Chat {
    sessions: Sessions,
    room: Room,
    history: History,
    /// Messages accepted since the caller last took them, to persist.
    new_messages: Vec<Message>,
    /// Senders' acks waiting for their message's commit.
    acks: Acks,
    /// Cluster mode: senders' messages out to Redis, and the acks behind them.
    in_flight: InFlight,
    /// One moment as an `Instant` and as Unix ms: message times without a clock read.
    /// Unset (tests that never look at times), every moment is the Unix epoch.
    wall: Option<(Instant, i64)>,
    message_rate: Option<RateLimit>,
    /// Cluster mode: who is online on every node. Set, this core is a replica: joins,
    /// leaves and messages take effect when they come back from the room's channel
    /// (`apply_*`), and local events become `Publish`/`Left` effects instead.
    replica: Option<Replica>,
    /// Cluster mode: a snapshot whose messages are still coming, a slice a turn.
    restoring: Option<replicated::Restore>,
    /// Joins and leaves for the members that take them in batches.
    presence: presence::Batcher,
    /// Banned users, lowercased: a login for them gets no session.
    banned: std::collections::HashMap<Box<str>, moderation::Ban>,
    max_devices: usize,
    /// Timed bans that ran out (name, end), for the store to lift.
    ended_bans: Vec<(Box<str>, i64)>,
    /// Users with at least one socket here: presence counts a user once.
    users_here: usize,
    pub stats: ChatStats,
}

impl Chat {
    pub fn new(cfg: ChatConfig) -> Self {
        Chat {
            sessions: Sessions::new(cfg.session_ttl, cfg.max_sessions_per_user, cfg.max_sessions),
            room: Room::default(),
            history: History::new("", 0, cfg.history),
            new_messages: Vec::new(),
            acks: Acks::default(),
            in_flight: InFlight::default(),
            wall: None,
            message_rate: cfg.message_rate,
            replica: None,
            restoring: None,
            presence: presence::Batcher::default(),
            banned: Default::default(),
            max_devices: cfg.max_devices.max(1),
            ended_bans: Vec::new(),
            users_here: 0,
            stats: ChatStats::default(),
        }
    }

    /// Cluster mode: this core becomes a replica of the room Redis orders.
    pub fn set_replicated(&mut self) {
        self.replica = Some(Replica::default());
    }

    /// The history restored from disk: its epoch, the last id given, and the
    /// retained messages oldest first (the newest `history` of them are kept).
    pub fn restore_history(&mut self, epoch: &str, last_id: u64, messages: impl IntoIterator<Item = history::Entry>) {
        self.history = History::new(epoch, last_id, self.history.cap());
        for entry in messages {
            self.history.push(entry);
        }
    }

    /// Which Unix time (ms) the `Instant` `at` stands for: message timestamps.
    pub fn set_wall_clock(&mut self, at: Instant, unix_ms: i64) {
        self.wall = Some((at, unix_ms));
    }

    /// The Unix time (ms) `now` stands for, by the clock set with `set_wall_clock`.
    pub fn unix_ms(&self, now: Instant) -> i64 {
        let Some((at, ms)) = self.wall else { return 0 };
        match now.checked_duration_since(at) {
            Some(d) => ms + d.as_millis() as i64,
            None => ms - at.duration_since(now).as_millis() as i64,
        }
    }

    /// The member on `conn` speaks protocol v2.
    pub fn is_v2(&self, conn: ConnId) -> bool {
        self.room.get(conn).is_some_and(|m| m.v2)
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// Messages accepted since the last call, oldest first, to persist.
    pub fn take_new_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.new_messages)
    }

    /// The first frame a v2 client gets: epoch, last id, who is online (itself too).
    pub fn hello(&self) -> Rc<[u8]> {
        let hello = Hello {
            event: "hello",
            epoch: self.history.epoch(),
            last_id: self.history.last_id(),
            online: self.online().collect(),
        };
        frame::text(&serde_json::to_vec(&hello).expect("serializing into a Vec cannot fail"))
    }

    /// The hello for the member on `conn`: batch and count subscribers get the
    /// online list as of the last presence flush, shared (`presence.rs`).
    pub fn hello_for(&mut self, conn: ConnId) -> Rc<[u8]> {
        match self.presence_mode(conn) {
            Some(presence::Mode::Batch | presence::Mode::Count) => {
                if self.presence.needs_baseline() {
                    let list = self.presence.baseline_of(self.online());
                    self.presence.set_baseline(list);
                }
                self.presence.hello(self.history.epoch(), self.history.last_id())
            }
            _ => self.hello(),
        }
    }

    /// The history ring's form of a message, its v2 frame encoded once.
    pub fn history_entry(id: u64, ts: i64, author: Rc<str>, text: &str) -> history::Entry {
        let mut f = TextFrame::with_capacity(text.len() + author.len() + 48);
        serde_json::to_writer(f.payload(), &OutgoingV2 { id, ts, message: text, author: &author })
            .expect("serializing into a Vec cannot fail");
        history::Entry { id, ts, author, frame: f.finish() }
    }

    /// `msg` for the ring, its author's name shared with the sessions when one is
    /// online here.
    pub fn entry_of(&self, msg: &Message) -> history::Entry {
        let author = self.sessions.shared_name(&msg.author).unwrap_or_else(|| Rc::from(msg.author.as_str()));
        Self::history_entry(msg.id, msg.ts, author, &msg.text)
    }

    pub fn session_ttl(&self) -> Duration {
        self.sessions.ttl()
    }

    /// Session changes to write to disk since the last call.
    pub fn take_session_changes(&mut self) -> Vec<session::SessionChange> {
        self.sessions.take_changes()
    }

    /// A session saved before a restart, active at `active`; false if it does not
    /// fit the caps any more.
    pub fn restore_session(&mut self, id_hash: [u8; 32], user: &str, active: Instant) -> bool {
        let name = self.sessions.shared_name(user).unwrap_or_else(|| Rc::from(user));
        self.sessions.restore(id_hash, name, active)
    }

    /// Replaces the CSPRNG behind session ids (fuzzing, tests).
    pub fn set_random(&mut self, fill: fn(&mut [u8])) {
        self.sessions.set_random(fill);
    }

    /// Starts a session for a user the store has authenticated.
    pub fn login(&mut self, user: &str, now: Instant, fx: &mut Effects) -> Result<SessionId, LoginError> {
        if self.is_banned(user, now) {
            return Err(LoginError::Banned);
        }
        let name = self.sessions.shared_name(user).unwrap_or_else(|| Rc::from(user));
        let mut evicted = Vec::new();
        let result = self.sessions.login(name, now, &mut evicted);
        for (k, s) in evicted {
            self.ended(k, s, EndReason::Evicted, fx);
        }
        result.map(|(_, id)| id)
    }

    /// The live session behind a cookie value; counts as activity.
    pub fn authenticate(&mut self, cookie: &[u8], now: Instant) -> Option<SessionKey> {
        self.sessions.authenticate(cookie, now)
    }

    pub fn username(&self, k: SessionKey) -> Option<&str> {
        self.sessions.get(k).map(|s| &*s.user)
    }

    /// Who is online, each user once, in the order they came (their first socket).
    pub fn online(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match &self.replica {
            Some(r) => Box::new(r.names()),
            None if self.users_here == self.room.len() => {
                Box::new(self.room.iter().filter_map(|m| self.username(m.session)))
            }
            None => Box::new(self.online_once()),
        }
    }

    pub fn is_online(&self, name: &str) -> bool {
        match &self.replica {
            Some(r) => r.contains(name),
            None => self.sessions.socket_of_user(name).is_some(),
        }
    }

    /// Users online (cluster-wide in cluster mode).
    pub fn online_count(&self) -> usize {
        self.replica.as_ref().map_or(self.users_here, Replica::len)
    }

    /// Connections in the room, in connect order: the broadcast's recipients.
    pub fn members(&self) -> &[ConnId] {
        self.room.members()
    }

    /// Members that get each join and leave as its own event, in connect order.
    pub fn eventful(&self) -> &[ConnId] {
        self.room.eventful()
    }

    /// How the member on `conn` hears of joins and leaves.
    pub fn presence_mode(&self, conn: ConnId) -> Option<presence::Mode> {
        self.room.get(conn).map(|m| m.presence)
    }

    /// The member on `conn` (just joined, its hello not yet sent) takes presence in
    /// `mode` from now on.
    pub fn set_presence(&mut self, conn: ConnId, mode: presence::Mode) {
        self.room.set_presence(conn, mode);
    }

    /// Sends what presence has pending now, interval or not (a hand-over's capture:
    /// the queues travel, the batcher does not).
    pub fn flush_presence(&mut self, fx: &mut Effects) {
        let (batched, counted) = self.room.subscribers();
        let f = self.presence.flush(self.online_count(), batched > 0, counted > 0);
        if f.diff.is_some() || f.count.is_some() {
            fx.push(Effect::Presence { diff: f.diff, count: f.count });
        }
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// A WebSocket for session `k` is open: join the room, tell everyone else.
    /// `rate_limited` says whether this socket's messages are metered.
    pub fn join(
        &mut self,
        conn: ConnId,
        k: SessionKey,
        rate_limited: bool,
        v2: bool,
        now: Instant,
        fx: &mut Effects,
    ) -> Result<(), JoinError> {
        self.can_join(k, v2)?;
        let user = self.sessions.get(k).ok_or(JoinError::NoSession)?.user.clone();
        let bucket = match self.message_rate {
            Some(limit) if rate_limited => Some(Bucket::full(limit, now)),
            _ => None,
        };
        let first = self.sessions.socket_of_user(&user).is_none();
        let next = self.sessions.get(k).and_then(|s| s.socket());
        if !self.room.insert(conn, Member::new(k, bucket, v2, next, presence::Mode::Each)) {
            return Err(JoinError::AlreadyConnected);
        }
        self.sessions.set_socket(k, Some(conn));
        self.sessions.touch(k, now);
        if first {
            self.users_here += 1;
            self.announce_join(conn, &user, fx);
        }
        Ok(())
    }

    /// Any frame from a member (pongs included) keeps its session alive.
    pub fn on_activity(&mut self, conn: ConnId, now: Instant) {
        if let Some(m) = self.room.get(conn) {
            let k = m.session;
            self.sessions.touch(k, now);
        }
    }

    /// A text message from a member. A valid one is broadcast at once; its sender's
    /// ack waits for the commit when messages are kept on disk (`on_committed`).
    pub fn on_text(&mut self, conn: ConnId, text: &str, now: Instant, fx: &mut Effects) {
        let limit = self.message_rate;
        let Some(m) = self.room.get_mut(conn) else { return };
        let session = m.session;
        self.stats.messages_in += 1;
        if let (Some(bucket), Some(limit)) = (m.bucket.as_mut(), limit) {
            if !bucket.take(limit, now) {
                self.stats.rate_limited += 1;
                self.ack(conn, Chunk::Static(ACK_RATE_LIMITED), None, fx);
                return;
            }
        }
        let ack = match parse_object::<Incoming>(text) {
            None => ACK_INVALID,
            Some(msg) if msg.message.is_empty() => ACK_EMPTY,
            Some(msg) if msg.message.chars().nth(MAX_MESSAGE_CHARS).is_some() => ACK_TOO_LONG,
            Some(msg) => {
                let author = self.sessions.get(session).map(|s| s.user.clone()).expect("a member's session is live");
                self.sessions.touch(session, now);
                return self.publish(conn, author, &msg.message, now, fx);
            }
        };
        self.stats.messages_rejected += 1;
        self.sessions.touch(session, now);
        self.ack(conn, Chunk::Static(ack), None, fx);
    }

    /// Sends `frame` to the sender `conn`, or holds it: until message `durable` is
    /// committed, or behind the socket's acks already held.
    fn ack(&mut self, conn: ConnId, frame: Chunk, durable: Option<u64>, fx: &mut Effects) {
        let Some(m) = self.room.get_mut(conn) else { return };
        if self.replica.is_some() {
            // Cluster mode: behind the socket's messages still out to Redis.
            match self.in_flight.hold(conn, frame) {
                Some(frame) => fx.push(Effect::Send { to: conn, frame }),
                None => m.unacked += 1,
            }
            return;
        }
        if durable.is_none() && m.unacked == 0 {
            fx.push(Effect::Send { to: conn, frame });
            return;
        }
        m.unacked += 1;
        self.acks.hold(conn, durable, frame);
    }

    /// The storage writer committed every message up to `through` (`stored`), or
    /// failed to: their senders hear the ack, or `unavailable`.
    pub fn on_committed(&mut self, through: u64, stored: bool, fx: &mut Effects) {
        let room = &mut self.room;
        self.acks.release(through, stored, |r| {
            let (conn, frame) = match r {
                Release::Send(conn, frame) => (conn, frame),
                Release::Failed(conn) => (conn, Chunk::Static(ACK_UNAVAILABLE)),
            };
            if let Some(m) = room.get_mut(conn) {
                m.unacked -= 1;
                fx.push(Effect::Send { to: conn, frame });
            }
        });
    }

    /// A reservation of ids is durable (`ok`), or the writer failed to make it.
    pub fn on_reserved(&mut self, through: u64, ok: bool) {
        self.history.reserved_through(through, ok);
    }

    /// A new high-water mark of ids to make durable, when the reserved ones run low.
    pub fn wants_reservation(&mut self) -> Option<u64> {
        self.history.wants_reservation()
    }

    /// Ids from now on only below durable reservations, `reserved` being on disk.
    pub fn set_reserved_ids(&mut self, reserved: u64) {
        self.history.set_reserved(reserved);
    }

    /// This socket has as many acks waiting on the disk as it may: read no more
    /// from it until some are released.
    pub fn holds_too_many_acks(&self, conn: ConnId) -> bool {
        self.room.get(conn).is_some_and(|m| m.unacked >= MAX_UNACKED)
    }

    /// What the acks `conn` has waiting on the disk hold, for the memory budget.
    pub fn held_ack_bytes(&self, conn: ConnId) -> usize {
        self.room.get(conn).map_or(0, |m| m.unacked as usize * acks::HELD_ACK_BYTES)
    }

    /// Acks waiting on the disk, over all sockets.
    pub fn held_acks(&self) -> usize {
        self.acks.len()
    }

    /// Takes a member out of the room; its held acks go with it.
    fn remove_member(&mut self, conn: ConnId) -> Option<Member> {
        let m = self.room.remove(conn)?;
        if m.unacked > 0 {
            self.acks.forget(conn);
            self.in_flight.forget(conn);
        }
        Some(m)
    }

    /// A WebSocket is gone, whatever the cause. Safe to call for a connection that was
    /// never in the room or already left.
    pub fn leave(&mut self, conn: ConnId, fx: &mut Effects) {
        // A member's session outlives it: `ended` takes the member out first.
        let Some(user) = self.unlink(conn) else { return };
        self.gone(user, 1, fx);
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        [self.sessions.next_deadline(), self.next_ban_end(), self.presence.next_deadline()].into_iter().flatten().min()
    }

    /// True if no session has outlived its TTL at `now` (O(sessions); for checks).
    pub fn sessions_alive(&self, now: Instant) -> bool {
        self.sessions.all_alive(now)
    }

    /// True if every member's session is live and lists its socket (for checks).
    pub fn members_have_sessions(&self) -> bool {
        self.room.members().iter().all(|&c| {
            let Some(m) = self.room.get(c) else { return false };
            self.sessions.get(m.session).is_some_and(|s| self.chain(s.socket()).contains(&c))
        })
    }
}

/// Parses `text` as exactly one JSON object into `T`. serde would also accept a JSON
/// array for a struct (fields by position); the contract wants an object.
pub fn parse_object<'a, T: Deserialize<'a>>(text: &'a str) -> Option<T> {
    if !text.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// A v2 sender's ack: `{"status":true,"id":N}`.
fn v2_ack(id: u64) -> Chunk {
    Chunk::Shared(frame::text(format!("{{\"status\":true,\"id\":{id}}}").as_bytes()))
}

fn event_frame(event: &str, user: &str) -> Rc<[u8]> {
    let payload = serde_json::to_vec(&Event { event, username: user }).expect("serializing into a Vec cannot fail");
    frame::text(&payload)
}

#[cfg(test)]
mod tests;
