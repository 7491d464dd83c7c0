//! The sync: how a node that has (re)connected tells Redis which WebSockets it still
//! holds and what history it has seen, and takes back a snapshot of the room, with
//! the channel events that came meanwhile put after it in order.

use super::resp::Value;
use super::{command, hex, reply, token, Cluster, Event, Origin, Pending, State, HEARTBEAT_EVERY, NODE_TTL};
use crate::log;
use std::time::Instant;

impl Cluster {
    /// Sends the sync: `users` are this node's open WebSockets (name, connection);
    /// `seen` the history this node holds (epoch, last id), so that Redis come back
    /// with an older counter gets a new epoch instead of reusing ids.
    pub fn sync(&mut self, users: &[(String, Origin)], seen: (&str, u64), now: Instant) {
        if self.state != State::Subscribed {
            return;
        }
        self.now = now;
        for id_hash in std::mem::take(&mut self.deferred_logouts) {
            self.send(&command::logout(&id_hash), Pending::Ignore);
        }
        // Drawn anew each time: if Redis lost its data since the last sync, the
        // history is a new one and must not get the old epoch back.
        let mut fresh = [0u8; 6];
        getrandom::fill(&mut fresh).expect("the OS CSPRNG is available");
        let users: Vec<(String, String)> = users.iter().map(|(name, o)| (name.clone(), token(*o))).collect();
        let cmd = command::sync(&self.node, NODE_TTL.as_millis(), &hex(&fresh), self.cfg.history, seen, &users);
        self.send(&cmd, Pending::Sync);
        self.state = State::Syncing;
        self.heartbeat_at = now + HEARTBEAT_EVERY;
    }

    /// The sync's snapshot: the loop rebuilds its replica from it, then the channel
    /// events buffered meanwhile that came after it follow, in order.
    pub(super) fn synced(&mut self, v: &Value) -> Result<(), String> {
        let (snapshot, seq, taken) = reply::snapshot(v).ok_or_else(|| format!("a bad sync reply: {v:?}"))?;
        log::info(format_args!(
            "redis {}: in sync as node {}: {} online, last message {}",
            self.cfg.url,
            self.node,
            snapshot.online.len(),
            snapshot.last_id
        ));
        self.learn_replicas(v.as_array().and_then(|items| items.get(6)));
        let mine = std::mem::take(&mut self.answered).into();
        self.events.push_back(Event::Synced { snapshot, taken, mine });
        self.synced_seq = seq;
        for ev in std::mem::take(&mut self.buffered) {
            if ev.seq() > seq {
                self.room_event(ev);
            }
        }
        self.state = State::Up;
        self.syncs += 1;
        self.since = self.now;
        self.failover_until = None;
        for (origin, author, text) in std::mem::take(&mut self.replay) {
            self.publish(origin, author, text);
        }
        self.backoff.reset();
        self.outage_logged = false;
        Ok(())
    }
}
