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

impl Chat {
    /// A session id for a login that Redis must store before it is used.
    pub fn new_session_id(&mut self) -> (SessionId, [u8; 32]) {
        self.sessions.new_id()
    }

    /// The user's session with an id drawn by `new_session_id`, once Redis has it.
    pub fn login_as(&mut self, user: &str, id: (SessionId, [u8; 32]), now: Instant) -> Result<SessionId, LoginError> {
        if self.is_banned(user) {
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

    /// A session ended somewhere in the cluster (logout: 1000; evicted: 1008). Its
    /// socket here, if any, closes.
    pub fn apply_session_end(&mut self, id_hash: &[u8; 32], code: u16, fx: &mut Effects) {
        let Some(k) = self.sessions.find_hash(id_hash) else { return };
        let Some(s) = self.sessions.remove(k) else { return };
        let why = if code == close::NORMAL { EndReason::Logout } else { EndReason::Evicted };
        self.ended(k, s, why, fx);
    }

    /// The member on `conn` must go: Redis gave its user's presence to another node
    /// (only after Redis lost data).
    pub fn evict_member(&mut self, conn: ConnId, fx: &mut Effects) {
        if let Some(m) = self.remove_member(conn) {
            self.sessions.set_socket(m.session, None);
            fx.push(Effect::Close { conn, code: close::POLICY });
        }
    }

    /// The member here of user `name`, if any.
    pub fn member_of_user(&self, name: &str) -> Option<ConnId> {
        self.sessions.socket_of_user(name).filter(|&c| self.room.get(c).is_some())
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
        self.history = history::History::new(&snap.epoch, snap.last_id, self.history.cap());
        let mut owed: Vec<(u64, ConnId)> = mine.to_vec();
        for msg in snap.messages {
            if msg.id > seen {
                let sender = owed.iter().position(|&(id, _)| id == msg.id).map(|at| owed.swap_remove(at).1);
                self.apply_message(msg, sender, fx);
            } else {
                let entry = self.entry_of(&msg);
                self.history.push(entry);
            }
        }
        // Taken by Redis but not in the snapshot's messages (history off, or older
        // than it keeps): acked if the history is still the one it went into.
        for (id, conn) in owed {
            let durable = same_epoch && id <= snap.last_id;
            let ack = match (durable, self.is_v2(conn)) {
                (true, true) => super::v2_ack(id),
                (true, false) => Chunk::Static(super::ACK_OK),
                (false, _) => Chunk::Static(super::ACK_UNAVAILABLE),
            };
            if self.room.get(conn).is_some() {
                fx.push(Effect::Send { to: conn, frame: ack });
            }
        }
        if lost {
            // Redis lost the history (or came back from an older snapshot) while
            // these clients were connected: the ids they hold name nothing now. A
            // new hello says which history this is, and the resync tells them to
            // drop what they hold and fetch it again.
            let hello = Chunk::Shared(self.hello());
            for &conn in self.room.members() {
                if self.room.get(conn).is_some_and(|m| m.v2) {
                    fx.push(Effect::Send { to: conn, frame: hello.clone() });
                    fx.push(Effect::Send { to: conn, frame: Chunk::Static(super::RESYNC) });
                }
            }
        }
    }
}
