//! The chat core as a cluster node's replica: events that come off the room's Redis
//! channel, in the one order every node sees, applied to this node's members. A
//! node's own clients take effect here too, only once their event comes back, so
//! every node shows the same sequence.

use super::session::{EndReason, SessionId};
use super::{event_frame, history, Chat, ConnId, Effect, Effects, LoginError, Message};
use crate::outq::Chunk;
use crate::ws::close;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The replica as Redis has it at one point of the channel.
#[derive(Debug)]
pub struct Snapshot {
    pub epoch: String,
    pub last_id: u64,
    /// In join order.
    pub online: Vec<String>,
    /// Oldest first.
    pub messages: Vec<Message>,
}

/// The entry `old` holds for message `id` (same epoch: the same message), dropping
/// the older ones it passes (gone from Redis: deleted, or past the history's cap).
fn reuse(old: &mut history::History, id: u64) -> Option<history::Entry> {
    while old.oldest_id().is_some_and(|o| o < id) {
        old.pop_oldest();
    }
    if old.oldest_id() == Some(id) {
        return old.pop_oldest();
    }
    None
}

/// A snapshot being applied: what its later slices need to know.
pub(super) struct Restore {
    /// Messages up to this id this node had delivered already.
    seen: u64,
    same_epoch: bool,
    /// The history changed epoch under connected clients: they resync at the end.
    lost: bool,
    last_id: u64,
    /// This node's messages not yet acked (id, sender).
    owed: Vec<(u64, ConnId)>,
    /// The ring the snapshot replaces, in the same epoch: its entries are reused
    /// (not encoded again) and the rest dropped as the slices pass them.
    old: Option<history::History>,
}

/// Session ends library.lua publishes for `skiff ctl reset-key` and `delete-user`:
/// never sent to a client; the sockets close 1008 with these words.
pub const END_KEY_RESET: u16 = 4001;
pub const END_USER_DELETED: u16 = 4002;

impl Chat {
    /// A session id for a login that Redis must store before it is used.
    pub fn new_session_id(&mut self) -> (SessionId, [u8; 32]) {
        self.sessions.new_id()
    }

    /// The user's session with an id drawn by `new_session_id`, once Redis has it.
    pub fn login_as(&mut self, user: &str, id: (SessionId, [u8; 32]), now: Instant) -> Result<SessionId, LoginError> {
        if self.is_banned(user, now) {
            return Err(LoginError::Banned);
        }
        let name = self.sessions.shared_name(user).unwrap_or_else(|| Rc::from(user));
        let mut evicted = Vec::new();
        let result = self.sessions.login_with(name, id, now, &mut evicted);
        // The cluster evicts in Redis; a replica's own cap is never reached.
        debug_assert!(evicted.is_empty());
        result.map(|(_, id)| id)
    }

    /// True if the session behind this cookie is known here (a replica caches the
    /// sessions it has seen; others are fetched from Redis first).
    pub fn knows_session(&self, cookie: &[u8]) -> bool {
        cookie.len() == super::session::SESSION_ID_LEN
            && self.sessions.find_hash(&super::session::id_hash(cookie)).is_some()
    }

    /// A session fetched from Redis, which ends it `remaining` from `now` unless it
    /// sees activity. False if it does not fit here.
    pub fn adopt_session(&mut self, id_hash: [u8; 32], user: &str, remaining: Duration, now: Instant) -> bool {
        if self.sessions.find_hash(&id_hash).is_some() {
            return true;
        }
        // Here a session ends at its last activity + TTL; make that Redis's end.
        let ttl = self.sessions.ttl();
        let active = (now + remaining).checked_sub(ttl).map_or(now, |a| a.min(now));
        let name = self.sessions.shared_name(user).unwrap_or_else(|| Rc::from(user));
        self.sessions.restore(id_hash, name, active)
    }

    /// After a sync: drops every cached session without a socket here (Redis is
    /// asked again when one is next used); returns the id hashes of the others.
    pub fn forget_sessions_without_socket(&mut self) -> Vec<[u8; 32]> {
        self.sessions.retain_with_socket()
    }

    /// The socket here on the session `id_hash`, its user, and how long the session
    /// has left at `now` (for the cluster to assert it again after a failover).
    pub fn session_socket(&self, id_hash: &[u8; 32], now: Instant) -> Option<(ConnId, Rc<str>, Duration)> {
        let s = self.sessions.get(self.sessions.find_hash(id_hash)?)?;
        let left = (s.last_active + self.sessions.ttl()).saturating_duration_since(now);
        Some((s.socket()?, s.user.clone(), left))
    }

    /// A session ended somewhere in the cluster (logout: 1000; evicted: 1008). Its
    /// socket here, if any, closes.
    pub fn apply_session_end(&mut self, id_hash: &[u8; 32], code: u16, fx: &mut Effects) {
        let Some(k) = self.sessions.find_hash(id_hash) else { return };
        let Some(s) = self.sessions.remove(k) else { return };
        if code == close::NORMAL {
            // A logout closes every device of the user this node holds.
            let user = s.user.clone();
            self.ended(k, s, EndReason::Logout, fx);
            self.close_user(&user, close::NORMAL, Rc::from("logged out"), fx);
            return;
        }
        // A ban's sessions end right after its B event: they close with its words.
        let reason = match code {
            END_KEY_RESET => Some("key reset".to_owned()),
            END_USER_DELETED => Some("user deleted".to_owned()),
            _ => self.banned.get(s.user.to_ascii_lowercase().as_str()).map(|b| b.close_reason()),
        };
        match reason {
            Some(reason) => self.ended_with(k, s, close::POLICY, Rc::from(reason), fx),
            None => self.ended(k, s, EndReason::Evicted, fx),
        }
    }

    /// The user's sockets here must go: Redis gave the user's presence to another
    /// node (only after Redis lost data). Nobody hears a leave: the user is online.
    pub fn evict_user(&mut self, name: &str, fx: &mut Effects) {
        for conn in self.sockets_of_user(name) {
            if self.unlink(conn).is_some() {
                fx.push(Effect::Close { conn, code: close::POLICY, reason: Rc::from("replaced") });
            }
        }
        if self.sessions.socket_of_user(name).is_none() && self.users_here > 0 {
            self.users_here -= 1;
        }
    }

    /// A member here of user `name`, if any.
    pub fn member_of_user(&self, name: &str) -> Option<ConnId> {
        self.sessions.socket_of_user(name).filter(|&c| self.room.get(c).is_some())
    }

    /// `conn` is one of the user's sockets here.
    pub fn is_socket_of(&self, name: &str, conn: ConnId) -> bool {
        self.sockets_of_user(name).contains(&conn)
    }

    /// The members here, with their session's user (for the cluster's sync).
    pub fn local_users(&self) -> impl Iterator<Item = (ConnId, &str)> + '_ {
        self.room.members().iter().filter_map(|&c| Some((c, self.username(self.room.get(c)?.session)?)))
    }

    /// After (re)connecting to Redis: the replica becomes `snap`. Local clients hear
    /// of every join and leave they missed meanwhile, and get the messages they
    /// missed, in order.
    /// `mine`: this node's messages Redis took whose event was lost with the links
    /// (id, sender): each sender gets its ack, the others the message.
    pub fn apply_snapshot(&mut self, snap: Snapshot, mine: &[(u64, ConnId)], fx: &mut Effects) {
        self.begin_snapshot(snap, mine, fx);
        self.finish_snapshot(fx);
    }

    /// `apply_snapshot` in parts: the snapshot with its first messages, then the
    /// rest (`continue_snapshot`, oldest first) over as many calls as the loop takes
    /// turns, then `finish_snapshot`. Nothing else is applied in between.
    pub fn begin_snapshot(&mut self, snap: Snapshot, mine: &[(u64, ConnId)], fx: &mut Effects) {
        let Some(r) = self.replica.as_mut() else { return };
        let (left, joined) = r.replace(&snap.online);
        for name in left {
            fx.push(Effect::Broadcast { except: None, frame: event_frame("leave", &name) });
            self.note_presence(&name, false);
        }
        for name in joined {
            fx.push(Effect::Broadcast { except: None, frame: event_frame("join", &name) });
            self.note_presence(&name, true);
        }
        let same_epoch = snap.epoch == self.history.epoch();
        let lost = !same_epoch && !self.history.epoch().is_empty();
        let seen = if same_epoch { self.history.last_id() } else { u64::MAX };
        let fresh = history::History::new(&snap.epoch, snap.last_id, self.history.cap());
        let old = std::mem::replace(&mut self.history, fresh);
        let old = same_epoch.then_some(old);
        self.restoring = Some(Restore { seen, same_epoch, lost, last_id: snap.last_id, owed: mine.to_vec(), old });
        self.continue_snapshot(snap.messages, fx);
    }

    pub fn continue_snapshot(&mut self, messages: Vec<Message>, fx: &mut Effects) {
        let Some(mut restore) = self.restoring.take() else { return };
        for msg in messages {
            if msg.id > restore.seen {
                let owed = &mut restore.owed;
                let sender = owed.iter().position(|&(id, _)| id == msg.id).map(|at| owed.swap_remove(at).1);
                self.apply_message(msg, sender, fx);
            } else {
                let entry = match restore.old.as_mut().and_then(|old| reuse(old, msg.id)) {
                    Some(entry) => entry,
                    None => self.entry_of(&msg),
                };
                self.history.push(entry);
            }
        }
        self.restoring = Some(restore);
    }

    pub fn finish_snapshot(&mut self, fx: &mut Effects) {
        let Some(Restore { same_epoch, lost, last_id, owed, .. }) = self.restoring.take() else { return };
        // Taken by Redis but not in the snapshot's messages (history off, or older
        // than it keeps): acked if the history is still the one it went into.
        for (id, conn) in owed {
            let durable = same_epoch && id <= last_id;
            let ack = match (durable, self.is_v2(conn)) {
                (true, true) => super::v2_ack(id),
                (true, false) => Chunk::Static(super::ACK_OK),
                (false, _) => Chunk::Static(super::ACK_UNAVAILABLE),
            };
            if self.room.get(conn).is_some() {
                self.settle(conn, ack, fx);
            }
        }
        if lost {
            // Redis lost the history (or came back from an older snapshot) while
            // these clients were connected: the ids they hold name nothing now. A
            // new hello says which history this is, and the resync tells them to
            // drop what they hold and fetch it again.
            let v2: Vec<ConnId> =
                self.room.members().iter().copied().filter(|&c| self.room.get(c).is_some_and(|m| m.v2)).collect();
            let mut each = None;
            for conn in v2 {
                // Each member's own kind: a batch subscriber's list must be the
                // baseline the next diff starts from; the others share one.
                let hello = match self.presence_mode(conn) {
                    Some(super::presence::Mode::Each) | None => each.get_or_insert_with(|| self.hello()).clone(),
                    Some(_) => self.hello_for(conn),
                };
                let hello = Chunk::Shared(hello);
                fx.push(Effect::Send { to: conn, frame: hello });
                fx.push(Effect::Send { to: conn, frame: Chunk::Static(super::RESYNC) });
            }
        }
    }
}
