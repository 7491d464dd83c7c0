//! What Redis sends: replies on the command link, matched in order to what each
//! command was for, and the room channel's events on the other, before and after
//! the sync's snapshot. Either link may be read first.

use super::event::RoomEvent;
use super::link::Link;
use super::reply::{self, parse_token, unhex32};
use super::resp::Value;
use super::{
    sentinel, Cluster, Done, Event, Expect, Message, Origin, Pending, Reply, State, MAX_REPLAY, REPLY_TIMEOUT,
};
use crate::log;
use std::time::Instant;

impl Cluster {
    /// When the oldest command's reply is late: `REPLY_TIMEOUT` after it was sent,
    /// or after the command link last brought bytes. A big reply arriving over many
    /// turns (a sync of the whole history) is progress, not a stuck Redis.
    pub(super) fn reply_due(&self) -> Option<Instant> {
        let (sent, _) = self.pending.front()?;
        Some((*sent).max(self.heard_at) + REPLY_TIMEOUT)
    }

    /// A link given up: true if there was one. One holding a big unfinished
    /// reply is freed over the next turns (see `Link::is_heavy`).
    pub(super) fn retire(&mut self, link: Option<Link>) -> bool {
        let Some(link) = link else { return false };
        if link.is_heavy() {
            self.shedding.push(link);
        }
        true
    }

    pub(super) fn read_cmd(&mut self, bytes: &[u8]) -> Result<(), String> {
        let Some(cmd) = self.cmd.as_mut() else { return Ok(()) };
        self.heard_at = self.now;
        let mut demoted = false;
        for v in cmd.received(bytes)? {
            let (sent, why) = self.pending.pop_front().ok_or("a reply nobody asked for")?;
            crate::metrics::REDIS_ROUNDTRIP.observe_duration(self.now.saturating_duration_since(sent));
            if sentinel::is_demoted(&v) {
                // Refused unrun: a message goes again to the next primary, anything
                // else fails. The replies already here are read first: each says
                // for itself whether it ran.
                demoted = true;
                match why {
                    Pending::Publish(origin, author, text) if self.replay.len() < MAX_REPLAY => {
                        self.unconfirmed = self.unconfirmed.saturating_sub(1);
                        self.replay.push_back((origin, author, text));
                    }
                    why => self.fail_pending(why),
                }
                continue;
            }
            self.on_reply(why, v)?;
        }
        if demoted {
            self.failover_began(self.now);
            return Err("the server refuses writes (a failover: READONLY or NOREPLICAS)".into());
        }
        Ok(())
    }

    pub(super) fn read_sub(&mut self, bytes: &[u8], now: Instant) -> Result<(), String> {
        let Some(sub) = self.sub.as_mut() else { return Ok(()) };
        for v in sub.received(bytes)? {
            let Some(items) = v.as_array() else {
                if let Value::Error(e) = &v {
                    return Err(format!("subscribing failed: {e}"));
                }
                continue; // AUTH's +OK
            };
            match items.first().and_then(Value::as_str) {
                Some("subscribe") if self.state == State::Connecting => {
                    self.state = State::Subscribed;
                    self.since = now;
                }
                Some("message") => {
                    let Some(ev) = items.get(2).and_then(Value::as_bytes).and_then(RoomEvent::parse) else {
                        log::warn(format_args!("redis: ignoring a malformed event on the room channel"));
                        continue;
                    };
                    match self.state {
                        State::Up if ev.seq() > self.synced_seq => self.room_event(ev),
                        State::Up => {}
                        _ => self.buffered.push(ev),
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub(super) fn on_reply(&mut self, why: Pending, v: Value) -> Result<(), String> {
        if let Value::Error(e) = &v {
            // While connecting, a failure (a wrong password) is said once, when the
            // link is given up, not again on every retry.
            if self.accepting() {
                log::warn(format_args!("redis: command failed: {e}"));
            }
        }
        match why {
            Pending::Ignore => {}
            Pending::Control(origin) => self.events.push_back(Event::Control { origin, value: v }),
            Pending::Reassert(id_hash, user) => self.reasserted(id_hash, &user, &v),
            Pending::Wait => self.on_wait(&v),
            Pending::Heartbeat => self.learn_replicas(Some(&v)),
            Pending::Device(origin) => {
                if v.as_int().is_some_and(|total| total > self.cfg.max_devices as i64) {
                    self.events.push_back(Event::OverCap(origin));
                }
            }
            Pending::Publish(origin, ..) if matches!(v, Value::Int(_)) => {
                let id = v.as_int().unwrap_or_default() as u64;
                match self.early.iter().position(|&e| e == id) {
                    Some(at) => {
                        self.early.remove(at);
                    }
                    None => self.answered.push_back((id, origin)),
                }
            }
            Pending::Publish(origin, ..) => {
                if !matches!(v, Value::Int(_)) {
                    self.unconfirmed = self.unconfirmed.saturating_sub(1);
                    self.refuse(origin);
                }
            }
            Pending::Conn(origin, expect) => {
                if let Expect::Join(name) = &expect {
                    // Refused: settled once the loop takes the refusal. Taken, it is
                    // settled by its `Event::Join` (see `next_event`).
                    let at = v.as_array().and_then(|a| a.first()).and_then(Value::as_int);
                    if !at.is_some_and(|seq| seq > 0 || seq == -1) {
                        self.settling.push((origin, name.clone()));
                    }
                }
                let reply = match (expect, &v) {
                    (_, Value::Error(_)) => Reply::Unavailable,
                    (Expect::Register(covering), Value::Int(1)) => match self.registered(origin, covering) {
                        Some(reply) => reply,
                        None => return Ok(()),
                    },
                    (Expect::Register(_), _) => Reply::NameTaken,
                    // skiff_login's answer for a banned user (a name is a bulk string).
                    (Expect::Login, Value::Array(_)) => Reply::Banned(reply::ban(&v)),
                    (Expect::Login | Expect::FindUser, v) => Reply::User(v.as_str().map(str::to_owned)),
                    (Expect::Session, v) => Reply::Session(reply::session(v)),
                    (Expect::Logout, _) => Reply::LoggedOut,
                    (Expect::Join(_), Value::Int(0)) => Reply::NameTaken,
                    (Expect::Join(_), Value::Int(-2)) => Reply::TooManyDevices,
                    (Expect::Join(name), v) => {
                        let items = v.as_array();
                        if let Some(created) = items.and_then(|a| a.get(1)).and_then(Value::as_str) {
                            self.incarnations.insert(name.to_ascii_lowercase().into(), created.into());
                        }
                        if items.and_then(|a| a.first()).and_then(Value::as_int) == Some(-1) {
                            // Online already through another node's device: no event comes,
                            // so this reply is the join, in its place in the stream.
                            self.events.push_back(Event::Join { name: name.into(), mine: Some(origin) });
                            return Ok(());
                        }
                        // Accepted: the connection opens when its join event comes
                        // (or came already).
                        match self.joined_early.iter().position(|&o| o == origin) {
                            Some(at) => {
                                self.joined_early.swap_remove(at);
                            }
                            None => self.joining.push(origin),
                        }
                        return Ok(());
                    }
                };
                self.events.push_back(Event::Reply(Done { origin, reply }));
            }
            Pending::Sync => self.synced(v)?,
            Pending::SyncHistory => self.history_came(v)?,
            Pending::Role if sentinel::is_primary(&v) => {}
            Pending::Role => return Err(format!("{} is not the primary (ROLE: {v:?})", self.cfg.url)),
        }
        Ok(())
    }

    /// `origin`'s message is refused ("unavailable"): at once, unless an earlier
    /// message of the same socket still waits for its ack (Redis took it; its event
    /// or the next sync will say): then after that ack, so that a socket hears its
    /// acks in the order it sent (a v1 client matches them by position).
    pub(super) fn refuse(&mut self, origin: Origin) {
        if !self.answered.iter().any(|&(_, o)| o == origin) {
            self.events.push_back(Event::Unavailable(origin));
            return;
        }
        match self.refused_behind.iter_mut().find(|(o, _)| *o == origin) {
            Some((_, n)) => *n += 1,
            None => self.refused_behind.push((origin, 1)),
        }
    }

    /// Queues the held refusals of the origins `which` picks, after the events
    /// queued so far.
    pub(super) fn release_refused(&mut self, which: impl Fn(Origin) -> bool) {
        let mut i = 0;
        while i < self.refused_behind.len() {
            let (origin, n) = self.refused_behind[i];
            if which(origin) {
                self.refused_behind.swap_remove(i);
                self.events.extend((0..n).map(|_| Event::Unavailable(origin)));
            } else {
                i += 1;
            }
        }
    }

    pub(super) fn room_event(&mut self, ev: RoomEvent) {
        let mine = |node: &str, token: &str| if node == self.node { parse_token(token) } else { None };
        let event = match ev {
            RoomEvent::Join { node, token, name, .. } => {
                let mine = mine(&node, &token);
                if let Some(o) = mine {
                    match self.joining.iter().position(|&j| j == o) {
                        Some(at) => {
                            self.joining.swap_remove(at);
                        }
                        None => self.joined_early.push(o),
                    }
                }
                // Nobody held the user a moment ago: the joining node's one socket
                // is all there is.
                let had = self.remote.remove(name.to_ascii_lowercase().as_str()).is_some();
                self.events.push_back(Event::Join { name: name.clone(), mine });
                if node != self.node {
                    self.note_devices(&name, Some((&node, 1)));
                } else if had {
                    self.events.push_back(Event::Devices { name, elsewhere: 0 });
                }
                return;
            }
            RoomEvent::Leave { name, .. } => {
                self.events.push_back(Event::Leave { name: name.clone() });
                self.note_devices(&name, None);
                return;
            }
            RoomEvent::Devices { node, name, count, .. } => return self.note_devices(&name, Some((&node, count))),
            RoomEvent::Message { id, ts, node, token, author, text, .. } => {
                let mut settled = None;
                if node == self.node {
                    self.unconfirmed = self.unconfirmed.saturating_sub(1);
                    match self.answered.iter().position(|&(a, _)| a == id) {
                        Some(at) => settled = self.answered.remove(at).map(|(_, o)| o),
                        None => self.early.push_back(id),
                    }
                }
                let mine = mine(&node, &token);
                self.events.push_back(Event::Message { msg: Message { id, ts, author, text }, mine });
                // The refusals that waited behind this message's ack follow it.
                if let Some(origin) = settled.filter(|&o| !self.answered.iter().any(|&(_, a)| a == o)) {
                    self.release_refused(|o| o == origin);
                }
                return;
            }
            RoomEvent::SessionEnd { code, hash, .. } => {
                let Some(id_hash) = unhex32(&hash) else { return };
                Event::SessionEnded { id_hash, code }
            }
            RoomEvent::Logout { name, .. } => Event::LoggedOut { name },
            RoomEvent::Kick { node, name, .. } if node == self.node => Event::Kick { name },
            RoomEvent::Kick { .. } => return,
            RoomEvent::Ban { name, ban, .. } => Event::Banned { name, ban },
            RoomEvent::Unban { name, .. } => Event::Unbanned { name },
            RoomEvent::Delete { id, .. } => Event::Deleted { id },
        };
        self.events.push_back(event);
    }
}
