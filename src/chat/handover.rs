//! The chat core across a hand-over: sessions, the room in connect order, the
//! history ring and its next id, the counters. History goes through the same
//! accessors `/api/history` and a start-up restore use, so whatever else a message
//! comes to carry stays in one place.

use super::presence::Mode;
use super::room::{Bucket, Member, Room};
use super::session::SessionKey;
use super::Chat;
use crate::handover::state::{ChatState, HistoryState, MemberState, Rel};
use std::time::Instant;

impl Chat {
    /// Everything a new process needs to carry on. Call it with no changes left to
    /// persist (messages, session activity): those are on disk by then.
    pub fn export(&self, now: Instant) -> ChatState {
        let room = self
            .room
            .members()
            .iter()
            .filter_map(|&conn| {
                let m = self.room.get(conn)?;
                let bucket = m.bucket.map(|b| {
                    let (tokens, last) = b.parts();
                    (tokens, Rel::of(last, now))
                });
                Some(MemberState {
                    conn,
                    session: (m.session.key, m.session.generation),
                    bucket,
                    v2: m.v2,
                    presence: m.presence.code(),
                })
            })
            .collect();
        let entries = self.history.page(None, usize::MAX).cloned().collect();
        ChatState {
            sessions: self.sessions.export(now),
            room,
            history: HistoryState { epoch: self.history.epoch().to_owned(), last_id: self.history.last_id(), entries },
            messages_in: self.stats.messages_in,
            messages_rejected: self.stats.messages_rejected,
            rate_limited: self.stats.rate_limited,
            broadcasts: self.stats.broadcasts,
        }
    }

    /// Takes over `state` into this fresh core. The room's members must be the
    /// connections the caller restores as WebSockets, on the same slots. Nothing is
    /// announced: to everyone else, nobody left or joined.
    pub fn import(&mut self, state: ChatState, now: Instant) -> Result<(), &'static str> {
        if !self.room.is_empty() {
            return Err("room already in use");
        }
        // Built aside and swapped in whole: a refused state leaves this core as it was.
        let mut sessions = self.sessions.imported(state.sessions, now)?;
        let mut room = Room::default();
        let mut users_here = 0;
        // Lowercased name -> every socket of that user so far is v2.
        let mut users_v2: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
        for m in state.room {
            let session = SessionKey { key: m.session.0, generation: m.session.1 };
            let Some(s) = sessions.get(session) else { return Err("a member without its session") };
            // Several sockets per user only in v2, as `can_join` lets them in.
            let lower = s.user.to_ascii_lowercase();
            let all_v2 = users_v2.get(&lower).copied();
            if all_v2.is_some() && !(m.v2 && all_v2 == Some(true)) {
                return Err("a plain /ws socket beside another of its user");
            }
            users_v2.insert(lower, m.v2);
            let first = all_v2.is_none();
            let next = s.socket();
            let bucket = m.bucket.map(|(tokens, last)| Bucket::from_parts(tokens, last.at(now)));
            let presence = Mode::from_code(m.presence).ok_or("an unknown presence mode")?;
            if !room.insert(m.conn, Member::new(session, bucket, m.v2, next, presence)) {
                return Err("a connection in the room twice");
            }
            sessions.set_socket(session, Some(m.conn));
            users_here += usize::from(first);
        }
        self.sessions = sessions;
        self.room = room;
        self.users_here = users_here;
        let h = state.history;
        let entries = h.entries;
        // The reservation is the disk's, set before the import; the ring is the state's.
        let reserved = self.history.reserved();
        self.restore_history(&h.epoch, h.last_id, entries);
        if reserved != u64::MAX {
            self.history.set_reserved(reserved);
        }
        self.stats.messages_in = state.messages_in;
        self.stats.messages_rejected = state.messages_rejected;
        self.stats.rate_limited = state.rate_limited;
        self.stats.broadcasts = state.broadcasts;
        Ok(())
    }

    /// Cluster mode: the replica as the previous process left it (who is online on
    /// every node, in join order), taken without a word to anyone.
    pub fn import_replica(&mut self, online: &[String]) -> Result<(), &'static str> {
        let Some(r) = self.replica.as_mut() else { return Err("a cluster node's state, and this is no cluster node") };
        if !r.is_empty() {
            return Err("the replica is already in use");
        }
        r.replace(online);
        Ok(())
    }
}
