//! Sessions across a hand-over: out as plain `SessionState`s, back into the same
//! slab slots (members and WebSockets name sessions by slot and generation). The
//! indexes, each user's list and the expiry timers are rebuilt, not carried: they
//! follow from the sessions, and the name hasher's key is new in every process.

use super::{prefix, Session, Sessions, UserSessions, NONE};
use crate::handover::state::{Rel, SessionState, SessionsState};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Instant;

impl Sessions {
    /// Every session, oldest first. Pending changes are not included: the caller
    /// has persisted them.
    pub fn export(&self, now: Instant) -> SessionsState {
        let mut sessions: Vec<SessionState> = self
            .slab
            .iter()
            .map(|(key, s)| SessionState {
                key,
                generation: s.generation,
                id_hash: s.id_hash,
                user: s.user.to_string(),
                last_active: Rel::of(s.last_active, now),
                saved: Rel::of(s.saved, now),
            })
            .collect();
        // Each user's list runs in login order, which is generation order.
        sessions.sort_unstable_by_key(|s| s.generation);
        SessionsState { next_generation: self.next_generation, sessions }
    }

    /// A table with this one's settings holding the sessions of `state` (this one
    /// is left as it is, so a refused state changes nothing). No socket is attached
    /// yet; the room does that.
    pub fn imported(&self, state: SessionsState, now: Instant) -> Result<Sessions, &'static str> {
        let mut t = Sessions::new(self.ttl, self.max_per_user, self.max_total);
        t.fill_random = self.fill_random;
        t.import(state, now)?;
        Ok(t)
    }

    fn import(&mut self, state: SessionsState, now: Instant) -> Result<(), &'static str> {
        let mut keys = HashSet::with_capacity(state.sessions.len());
        let mut at: HashMap<u32, usize> = HashMap::with_capacity(state.sessions.len());
        let mut entries: Vec<(usize, Session)> = Vec::with_capacity(state.sessions.len());
        let mut last_generation = 0;
        for s in state.sessions {
            if s.generation <= last_generation || !keys.insert(s.key) {
                return Err("sessions out of order or sharing a slot");
            }
            last_generation = s.generation;
            if self.by_id.insert(prefix(&s.id_hash), s.key).is_some() {
                return Err("two sessions share an id");
            }
            let lower = self.name_key(&s.user);
            let newest = s.key as u32;
            let list = self.by_user.get(&lower).copied();
            let older = list.map_or(NONE, |l| l.newest);
            let mut user = None;
            if let Some(&i) = at.get(&older) {
                let prev: &mut Session = &mut entries[i].1;
                prev.newer = newest;
                // One copy of the name for all of a user's sessions, as `login` keeps it.
                user = (*prev.user == *s.user).then(|| prev.user.clone());
            }
            let user = user.unwrap_or_else(|| Rc::from(s.user));
            let last_active = s.last_active.at(now);
            self.expiry.schedule(last_active + self.ttl, s.key, s.generation);
            at.insert(newest, entries.len());
            entries.push((
                s.key,
                Session {
                    id_hash: s.id_hash,
                    user,
                    last_active,
                    generation: s.generation,
                    older,
                    newer: NONE,
                    socket: NONE,
                    saved: s.saved.at(now),
                },
            ));
            let list = match list {
                Some(l) => UserSessions { newest, count: l.count + 1, ..l },
                None => UserSessions { oldest: newest, newest, count: 1 },
            };
            self.by_user.insert(lower, list);
        }
        self.next_generation = state.next_generation.max(last_generation + 1);
        self.slab = entries.into_iter().collect();
        Ok(())
    }
}
