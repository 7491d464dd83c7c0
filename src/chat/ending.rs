//! How sessions end for the sockets opened with them: logout, expiry, eviction and
//! the operator's actions, each closing its sockets with the code and reason the
//! client is told, and presence following (the user leaves with their last socket).

use super::session::{EndReason, Session, SessionKey};
use super::{Chat, Effect, Effects};
use crate::ws::close;
use std::rc::Rc;
use std::time::Instant;

impl Chat {
    /// Ends the session behind `cookie`, if it is live; every WebSocket of its user
    /// closes (1000 "logged out"), on whichever device.
    pub fn logout(&mut self, cookie: &[u8], now: Instant, fx: &mut Effects) {
        if let Some(k) = self.sessions.authenticate(cookie, now) {
            if let Some(s) = self.sessions.remove(k) {
                let user = s.user.clone();
                self.ended(k, s, EndReason::Logout, fx);
                self.close_user(&user, close::NORMAL, Rc::from("logged out"), fx);
            }
        }
    }

    /// Expires sessions due by `now`, their sockets closed with 1008; timed bans
    /// that have run out end.
    pub fn on_timeout(&mut self, now: Instant, fx: &mut Effects) {
        let mut expired = Vec::new();
        self.sessions.expire(now, &mut expired);
        // They are all out of the table already: ended one by one, each would find
        // its user with no socket left (the others' are still in the room but no
        // longer found through a session) and the user would leave once per session.
        let (mut closing, mut left) = (Vec::new(), Vec::<(Rc<str>, usize)>::new());
        for (k, s) in expired {
            let conns = self.take_sockets(k, &s);
            if !conns.is_empty() {
                match left.iter_mut().find(|(user, _)| *user == s.user) {
                    Some((_, closed)) => *closed += conns.len(),
                    None => left.push((s.user, conns.len())),
                }
            }
            closing.extend(conns);
        }
        for (user, closed) in left {
            self.gone(user, closed, fx);
        }
        let (code, reason) = closed_for(EndReason::Expired);
        let reason: Rc<str> = Rc::from(reason);
        for conn in closing {
            fx.push(Effect::Close { conn, code, reason: reason.clone() });
        }
        self.end_timed_bans(now);
        let (batched, counted) = self.room.subscribers();
        let online = self.online_count();
        if let Some(f) = self.presence.on_timeout(now, online, batched > 0, counted > 0) {
            if f.diff.is_some() || f.count.is_some() {
                fx.push(Effect::Presence { diff: f.diff, count: f.count });
            }
        }
    }

    pub(super) fn ended(&mut self, k: SessionKey, s: Session, why: EndReason, fx: &mut Effects) {
        let (code, reason) = closed_for(why);
        self.ended_with(k, s, code, Rc::from(reason), fx);
    }

    /// Session `k` (already out of the table) is over: every socket opened with it
    /// closes with `code` and `reason`.
    pub(super) fn ended_with(&mut self, k: SessionKey, s: Session, code: u16, reason: Rc<str>, fx: &mut Effects) {
        let conns = self.take_sockets(k, &s);
        if !conns.is_empty() {
            self.gone(s.user, conns.len(), fx);
        }
        for conn in conns {
            fx.push(Effect::Close { conn, code, reason: reason.clone() });
        }
    }

    /// Takes the sockets opened with session `k` (already out of the table) out of
    /// the room; returns them.
    fn take_sockets(&mut self, k: SessionKey, s: &Session) -> Vec<usize> {
        let mut conns = self.chain(s.socket());
        conns.retain(|&conn| self.room.get(conn).is_some_and(|m| m.session == k));
        for &conn in &conns {
            self.remove_member(conn);
        }
        conns
    }
}

/// The close code and reason a socket gets when its session ends this way.
fn closed_for(why: EndReason) -> (u16, &'static str) {
    match why {
        EndReason::Logout => (close::NORMAL, "logged out"),
        EndReason::Expired => (close::POLICY, "session expired"),
        EndReason::Evicted => (close::POLICY, "replaced"),
    }
}
