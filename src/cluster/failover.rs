//! Following the primary in sentinel mode (the where, `sentinel.rs` the how): asking
//! the sentinels on every (re)connect, acting on what they say, and holding client
//! input through a failover so that nothing sent meanwhile is refused. And after
//! any sync, what a switch (or a Redis back from an older snapshot) may have lost:
//! the sessions of the sockets this node holds are asserted again.

use super::resp::Value;
use super::sentinel::{News, Sentinels, WatchIo};
use super::{command, Cluster, Event, Io, Pending, State, FAILOVER_HOLD};
use crate::log;
use crate::ws::close;
use std::time::{Duration, Instant};

impl Cluster {
    /// A failover is under way (a server refused writes as demoted, or the sentinels
    /// switched the primary) and the node is not in sync with the new primary yet:
    /// the loop holds client input meanwhile (until the returned moment at most), so
    /// nothing sent then is refused.
    pub fn failing_over(&self, now: Instant) -> Option<Instant> {
        self.failover_until.filter(|&until| now < until)
    }

    /// Connects to the primary: straight away with a server's address, or once the
    /// sentinels have said where it is (asked anew each time: the last address may
    /// be a replica by now).
    pub(super) fn locate(&mut self, now: Instant) {
        match self.sentinels.as_mut() {
            None => self.connect(now),
            Some(s) => {
                self.state = State::Locating;
                self.since = now;
                s.ask(now);
                self.sentinel_io();
            }
        }
    }

    /// Passes what the sentinels want done with their link on to the reactor.
    pub(super) fn sentinel_io(&mut self) {
        if let Some(s) = self.sentinels.as_mut() {
            if s.take_close() {
                self.io.push_back(Io::CloseSentinel);
            }
            if let Some(addr) = s.take_open() {
                self.io.push_back(Io::OpenSentinel(addr));
            }
        }
        if let Some(w) = self.watchers.as_mut() {
            for io in w.take_io() {
                self.io.push_back(match io {
                    WatchIo::Open(i, addr) => Io::OpenWatch(i, addr),
                    WatchIo::Close(i) => Io::CloseWatch(i),
                });
            }
        }
    }

    /// What a sentinel said.
    pub(super) fn on_news(&mut self, news: News, now: Instant) {
        match (news, self.state) {
            (News::FailoverStarting, _) => {
                log::warn(format_args!("redis {}: a failover is starting; holding writes", self.cfg.url));
                self.failover_began(now);
            }
            (News::Primary(addr) | News::Switched(addr), State::Locating) => {
                self.primary = Some(addr);
                self.connect(now);
            }
            (News::Unknown, State::Locating) => {
                let master = self.sentinels.as_ref().map_or("", Sentinels::master).to_owned();
                self.lost(&format!("the sentinels know no primary named {master:?}"), now);
            }
            (
                News::Primary(addr) | News::Switched(addr),
                State::Connecting | State::Subscribed | State::Syncing | State::Up,
            ) if self.primary != Some(addr) => {
                // A failover: whatever the links say now comes from a demoted server.
                self.lost(&format!("failover: the primary is {addr} now"), now);
                self.retry_at = now;
                self.failover_began(now);
            }
            _ => {}
        }
    }

    /// Input is held for one `FAILOVER_HOLD` from the first sign of a failover; later
    /// signs of the same one (a new primary still without its replica) do not extend it.
    pub(super) fn failover_began(&mut self, now: Instant) {
        if self.failover_until.is_none_or(|until| until <= now) {
            self.failover_until = Some(now + FAILOVER_HOLD);
        }
    }

    /// After a sync: the session of a socket here, `user`'s, with `remaining` of its
    /// life as this node counts it. Redis writes it again if it lacks it (a replica
    /// promoted before it had it), so a failover logs nobody out; a session that
    /// ended while this node was away, or whose user is gone, comes back as
    /// `Event::SessionGone`.
    pub fn reassert_session(&mut self, id_hash: &[u8; 32], user: &str, remaining: Duration) {
        if self.accepting() {
            // As a renewal would: Redis keeps a session the save slack longer.
            let ttl = (remaining + crate::chat::session::SAVE_SLACK).as_millis();
            let created = self.incarnations.get(user.to_ascii_lowercase().as_str()).map_or("", |c| c);
            let cmd = command::reassert(id_hash, user, ttl, created);
            self.send(&cmd, Pending::Reassert(*id_hash, user.into()));
        }
    }

    /// `skiff_reassert`'s answer.
    pub(super) fn reasserted(&mut self, id_hash: [u8; 32], user: &str, v: &Value) {
        let (code, reason) = match v.as_str() {
            Some("live") => return,
            Some("restored") => {
                log::warn(format_args!(
                    "redis {}: {user}'s session was missing (lost with a failover?); restored",
                    self.cfg.url
                ));
                return;
            }
            Some("deleted") => (close::POLICY, "user deleted"),
            Some("banned") => (close::POLICY, "banned"),
            Some("ended 1000") => (close::NORMAL, "logged out"),
            Some("ended 4001") => (close::POLICY, "key reset"),
            Some("ended 4002") => (close::POLICY, "user deleted"),
            Some(s) if s.starts_with("ended ") => (close::POLICY, "session ended"),
            // An error (an older library without the function): the socket stays.
            _ => return,
        };
        self.events.push_back(Event::SessionGone { id_hash, code, reason });
    }
}
