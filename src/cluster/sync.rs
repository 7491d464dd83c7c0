//! The sync: how a node that has (re)connected tells Redis which WebSockets it still
//! holds and what history it has seen, and takes back a snapshot of the room, with
//! the channel events that came meanwhile put after it in order. A snapshot of a big
//! history is handed to the loop a slice a turn, so the loop keeps answering while
//! it is applied; whatever comes after it waits its turn behind it.

use super::resp::Value;
use super::{command, hex, reply, token, Cluster, Event, Origin, Pending, State, HEARTBEAT_EVERY, NODE_TTL, PREFIX};
use crate::chat::replicated::Snapshot;
use crate::chat::Message;
use crate::log;
use std::time::Instant;

/// Snapshot messages handed to the loop in one turn: each costs it ~8 us (taken
/// out of the reply, its history entry encoded), so a slice is ~4 ms of CPU, and a
/// 100,000-message history 200 turns with the clients served between them.
pub(super) const SLICE: usize = 500;

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
        // The history is read outside the function: Lua copies every entry into a
        // table and out again, which held Redis (every node's requests) 2.5 s for
        // 100,000 messages of 1.2 KB; XREVRANGE streams them in a quarter of that.
        let cmd = command::sync(&self.node, NODE_TTL.as_millis(), &hex(&fresh), 0, seen, &users);
        self.send(&cmd, Pending::Sync);
        if self.cfg.history > 0 {
            let history = format!("{PREFIX}history");
            let keep = self.cfg.history.to_string();
            self.send(&command_of(&["XREVRANGE", &history, "+", "-", "COUNT", &keep]), Pending::SyncHistory);
        }
        self.state = State::Syncing;
        self.heartbeat_at = now + HEARTBEAT_EVERY;
    }

    /// The sync's snapshot: the loop rebuilds its replica from it (its messages a
    /// slice a turn), then the channel events buffered meanwhile that came after it
    /// follow, in order.
    pub(super) fn synced(&mut self, v: Value) -> Result<(), String> {
        let replicas = v.as_array().and_then(|items| items.get(6)).cloned();
        self.remote = v.as_array().and_then(|items| items.get(7)).map(|held| self.held(held)).unwrap_or_default();
        let (snapshot, entries, seq, taken) = reply::snapshot(v).ok_or("a bad sync reply")?;
        self.learn_replicas(replicas.as_ref());
        if self.cfg.history > 0 {
            self.sync_head = Some((snapshot, seq, taken));
            return Ok(());
        }
        self.in_sync(snapshot, entries, seq, taken);
        Ok(())
    }

    /// The history the sync asked for, read right after its snapshot.
    pub(super) fn history_came(&mut self, v: Value) -> Result<(), String> {
        let (snapshot, seq, taken) = self.sync_head.take().ok_or("a history without its sync")?;
        let entries = reply::history(v, snapshot.last_id).ok_or("a bad history reply")?;
        self.in_sync(snapshot, entries, seq, taken);
        Ok(())
    }

    fn in_sync(&mut self, mut snapshot: Snapshot, mut entries: Vec<Value>, seq: u64, taken: Vec<String>) {
        log::info(format_args!(
            "redis {}: in sync as node {}: {} online, last message {}, {} kept",
            self.cfg.url,
            self.node,
            snapshot.online.len(),
            snapshot.last_id,
            entries.len()
        ));
        snapshot.messages = messages(oldest(&mut entries));
        let more = entries.len().div_ceil(SLICE);
        if more > 0 {
            self.slices.push_back(entries);
        }
        let mine = std::mem::take(&mut self.answered).into();
        let devices = self.remote.keys().map(|lower| (lower.to_string(), self.elsewhere(lower))).collect();
        self.events.push_back(Event::Synced { snapshot, taken, mine, more: more > 0, devices });
        for i in 0..more {
            // Placeholders: `next_slice` reads each when its turn comes.
            self.events.push_back(Event::SyncedMore { messages: Vec::new(), last: i + 1 == more });
        }
        // The owed acks go out as the snapshot is applied; the refusals that waited
        // behind them come after it.
        self.release_refused(|_| true);
        self.sliced = true;
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
    }
}

impl Cluster {
    /// The snapshot's `{lower, node, sockets, ...}`, without this node's own.
    fn held(&self, held: &Value) -> super::Remote {
        let mut remote = super::Remote::new();
        let items = held.as_array().unwrap_or_default();
        for t in items.chunks_exact(3) {
            let (Some(lower), Some(node), Some(n)) = (t[0].as_str(), t[1].as_str(), t[2].as_int()) else { continue };
            if node != self.node && n > 0 {
                remote.entry(lower.into()).or_default().push((node.into(), n as usize));
            }
        }
        remote
    }

    /// The next slice of a big snapshot, if this turn has not had one yet.
    pub(super) fn next_slice(&mut self) -> Option<Event> {
        if self.sliced {
            return None;
        }
        let Some(Event::SyncedMore { last, .. }) = self.events.pop_front() else { return None };
        self.sliced = true;
        let entries = match self.slices.front_mut() {
            Some(rest) => oldest(rest),
            None => Vec::new(),
        };
        if self.slices.front().is_some_and(Vec::is_empty) {
            self.slices.pop_front();
        }
        Some(Event::SyncedMore { messages: messages(entries), last })
    }
}

/// The oldest `SLICE` of `entries` (newest first), taken off its end, oldest first.
fn oldest(entries: &mut Vec<Value>) -> Vec<Value> {
    let mut slice = entries.split_off(entries.len().saturating_sub(SLICE));
    slice.reverse();
    slice
}

/// A slice of the history stream as messages; an entry that is not one (the Lua
/// library wrote it, so never, short of a bug) is left out, said once.
fn messages(entries: Vec<Value>) -> Vec<Message> {
    let n = entries.len();
    let out: Vec<Message> = entries.into_iter().filter_map(reply::message).collect();
    if out.len() < n {
        log::warn(format_args!("redis: {} malformed history entries in the sync left out", n - out.len()));
    }
    out
}

fn command_of(args: &[&str]) -> command::Command {
    args.iter().map(|a| a.as_bytes().to_vec()).collect()
}
