//! The two Redis links' life as the core sees it: asking the reactor to connect,
//! bytes in and out, a link lost (and what was pending on it), a Redis that stops
//! reading. The sockets themselves are the reactor's (`reactor/redis.rs`).

use super::link::{Link, LinkId};
use super::sentinel::Sentinels;
use super::{command, Cluster, Event, Io, Pending, State, OUT_LIMIT};
use crate::log;
use crate::storage::{Done, Reply};
use std::time::Instant;

impl Cluster {
    /// Asks the reactor for both links, with the hello each will say first.
    pub(super) fn connect(&mut self, now: Instant) {
        let Some(addr) = self.primary else { return self.lost("no address to connect to", now) };
        self.since = now;
        let (mut cmd, mut sub) = (Link::default(), Link::default());
        let mut hello = 0;
        if let Some(pw) = &self.cfg.url.password {
            cmd.queue(&command::auth(pw));
            sub.queue(&command::auth(pw));
            hello += 1;
        }
        if self.cfg.url.db != 0 {
            cmd.queue(&command::select(self.cfg.url.db));
            hello += 1;
        }
        cmd.queue(&command::load_library());
        sub.queue(&command::subscribe());
        for _ in 0..hello + 1 {
            self.pending.push_back((now, Pending::Ignore));
        }
        if self.sentinels.is_some() {
            // The sentinels' word may be stale by the time the links are up: the
            // server itself says whether it takes writes.
            cmd.queue(&["ROLE"]);
            self.pending.push_back((now, Pending::Role));
        }
        self.cmd = Some(cmd);
        self.sub = Some(sub);
        self.state = State::Connecting;
        self.io.push_back(Io::Open(addr));
    }

    /// The reactor opened both links (the connects may still be in progress: what is
    /// queued goes out once they are writable).
    pub fn connected(&mut self, now: Instant) {
        self.now = now;
    }

    /// Both links go; everything waiting fails; the next attempt is scheduled.
    pub(super) fn lost(&mut self, why: &str, now: Instant) {
        if !self.outage_logged {
            log::error(format_args!("redis {}: {why}; degraded, retrying", self.cfg.url));
            self.outage_logged = true;
        }
        let (cmd, sub) = (self.cmd.take(), self.sub.take());
        if self.retire(cmd) | self.retire(sub) {
            self.io.push_back(Io::Close);
        }
        for (_, p) in std::mem::take(&mut self.pending) {
            self.fail_pending(p);
        }
        // Replies that never come owe nothing; the sync says what this node holds.
        self.joined_early.clear();
        self.joins.clear();
        self.settling.clear();
        for origin in std::mem::take(&mut self.joining).into_iter().chain(self.waits.reset()) {
            self.events.push_back(Event::Reply(Done { origin, reply: Reply::Unavailable }));
        }
        self.buffered.clear();
        self.unconfirmed = 0;
        // Replies that never come owe nothing; what Redis took stays owed until the
        // next sync says what became of it.
        self.early.clear();
        self.state = State::Down;
        self.retry_at = now + self.backoff.step();
    }

    pub(super) fn fail_pending(&mut self, p: Pending) {
        match p {
            Pending::Conn(origin, _) | Pending::Control(origin) => {
                self.events.push_back(Event::Reply(Done { origin, reply: Reply::Unavailable }))
            }
            Pending::Publish(origin, ..) => {
                self.unconfirmed = self.unconfirmed.saturating_sub(1);
                self.refuse(origin);
            }
            Pending::Reassert(..)
            | Pending::Device(_)
            | Pending::Wait
            | Pending::Heartbeat
            | Pending::Sync
            | Pending::SyncHistory
            | Pending::Role
            | Pending::Ignore => {}
        }
    }

    /// Bytes a link read.
    pub fn on_bytes(&mut self, link: LinkId, bytes: &[u8], now: Instant) {
        self.now = now;
        let result = match link {
            LinkId::Cmd => self.read_cmd(bytes),
            LinkId::Sub => self.read_sub(bytes, now),
            LinkId::Sentinel | LinkId::Watch(_) => {
                let news = match link {
                    LinkId::Watch(i) => self.watchers.as_mut().map(|w| w.on_bytes(i, bytes, now)),
                    _ => self.sentinels.as_mut().map(|s| s.on_bytes(bytes, now)),
                };
                self.sentinel_io();
                for n in news.unwrap_or_default() {
                    self.on_news(n, now);
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            self.lost(&e, now);
        }
    }

    /// A link ended (the peer closed it, or reading or writing failed).
    pub fn on_closed(&mut self, link: LinkId, why: &str, now: Instant) {
        self.now = now;
        let open = match link {
            LinkId::Cmd => self.cmd.is_some(),
            LinkId::Sub => self.sub.is_some(),
            LinkId::Sentinel => {
                if let Some(s) = self.sentinels.as_mut() {
                    s.on_closed(why, now);
                }
                self.sentinel_io();
                false
            }
            LinkId::Watch(i) => {
                if let Some(w) = self.watchers.as_mut() {
                    w.on_closed(i, now);
                }
                self.sentinel_io();
                false
            }
        };
        if open {
            self.lost(why, now);
        }
    }

    /// What `link` has queued to write.
    pub fn output(&self, link: LinkId) -> &[u8] {
        match link {
            LinkId::Cmd => self.cmd.as_ref().map_or(&[], Link::output),
            LinkId::Sub => self.sub.as_ref().map_or(&[], Link::output),
            LinkId::Sentinel => self.sentinels.as_ref().map_or(&[], Sentinels::output),
            LinkId::Watch(i) => self.watchers.as_ref().map_or(&[], |w| w.output(i)),
        }
    }

    /// `n` bytes of `output(link)` were written.
    pub fn consumed(&mut self, link: LinkId, n: usize) {
        let l = match link {
            LinkId::Cmd => self.cmd.as_mut(),
            LinkId::Sub => self.sub.as_mut(),
            LinkId::Sentinel => {
                if let Some(s) = self.sentinels.as_mut() {
                    s.consumed(n);
                }
                return;
            }
            LinkId::Watch(i) => {
                if let Some(w) = self.watchers.as_mut() {
                    w.consumed(i, n);
                }
                return;
            }
        };
        if let Some(l) = l {
            l.consumed(n);
        }
    }

    /// The end of a loop turn, after the reactor wrote what it could: a Redis that
    /// does not read its commands is down.
    pub fn flush(&mut self, now: Instant) {
        self.now = now;
        self.sliced = false;
        self.shedding.retain_mut(|l| !l.shed());
        let stuck = [LinkId::Cmd, LinkId::Sub].iter().any(|&l| self.output(l).len() > OUT_LIMIT);
        if stuck {
            self.lost("Redis does not read its commands", now);
        }
    }
}
