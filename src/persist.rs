//! Between the chat core and the disk: the sessions and messages restored at start,
//! and the core's changes handed to the storage writer as they happen. No IO here;
//! `Storage` does that on its threads. In cluster mode Redis has the data, and only
//! session activity is handed on, to `Cluster`.

use crate::chat::session::SessionChange;
use crate::chat::Chat;
use crate::chat::Message;
use crate::conn::Cx;
use crate::store::{StoredSession, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

impl Cx {
    /// Brings back the message history kept on disk (epoch, last id, messages).
    pub fn restore_history(&mut self, epoch: &str, last_id: u64, messages: Vec<Message>) {
        let entries = messages.into_iter().map(|m| Chat::history_entry(m.id, m.ts, Rc::from(m.author), &m.text));
        self.chat.restore_history(epoch, last_id, entries);
    }

    /// Brings back the sessions saved before a restart; expired ones are deleted.
    /// Returns how many were restored.
    pub fn restore_sessions(&mut self, saved: Vec<StoredSession>, now: Instant) -> usize {
        let now_ms = self.chat.unix_ms(now);
        let mut restored = 0;
        for s in saved {
            // Saved times run ahead of activity; a session is never younger than now.
            let ago = Duration::from_millis(now_ms.saturating_sub(s.active_ms).max(0) as u64);
            let active = now.checked_sub(ago).unwrap_or(now);
            if active + self.chat.session_ttl() > now && self.chat.restore_session(s.id_hash, &s.username, active) {
                restored += 1;
            } else {
                self.storage.persist(Write::DeleteSession { id_hash: s.id_hash });
            }
        }
        restored
    }

    /// A clean stop: the unused part of the id reservation is given back, so the next
    /// start continues right after the last message and no resume has to resync.
    /// Queued behind every message write, so it never commits before them.
    pub fn release_ids(&mut self) {
        if self.cluster.is_none() && self.chat.history().reserved() != u64::MAX {
            self.storage.persist(Write::ReserveIds { through: self.chat.history().last_id() });
        }
    }

    /// Takes in what the storage writer committed: held acks go to their senders,
    /// durable reservations free more ids.
    pub fn on_commits(&mut self) {
        while let Some(c) = self.storage.take_commit() {
            if let Some(through) = c.reserved_through {
                self.chat.on_reserved(through, c.ok);
            }
            if let Some(through) = c.messages_through {
                self.chat.on_committed(through, c.ok, &mut self.fx);
            }
        }
    }

    /// Hands the chat core's session changes and new messages to the writer (it
    /// batches them into its next commit).
    pub fn persist_changes(&mut self) {
        if let Some(cluster) = self.cluster.as_mut() {
            // Messages are in Redis already. Sessions end there by their own TTL, a
            // logout or an eviction; a replica dropping one from its cache ends
            // nothing. Only activity is written, as a renewal. Redis ends timed
            // bans itself.
            self.chat.take_ended_bans();
            for change in self.chat.take_session_changes() {
                if let SessionChange::Saved { id_hash, .. } = change {
                    cluster.renew(&id_hash);
                }
            }
            return;
        }
        if let Some(through) = self.chat.wants_reservation() {
            self.storage.persist(Write::ReserveIds { through });
        }
        let keep = self.chat.history().cap() as u64;
        for msg in self.chat.take_new_messages() {
            self.storage.persist(Write::Message { msg, keep });
        }
        for (name, until_ms) in self.chat.take_ended_bans() {
            self.storage.persist(Write::EndBan { username: name.into(), until_ms });
        }
        for change in self.chat.take_session_changes() {
            let write = match change {
                SessionChange::Saved { id_hash, user, active } => {
                    Write::SaveSession { id_hash, username: user.to_string(), active_ms: self.chat.unix_ms(active) }
                }
                SessionChange::Deleted { id_hash } => Write::DeleteSession { id_hash },
            };
            self.storage.persist(write);
        }
    }
}
