//! Every connection's life, without a socket in sight. `Server` owns the slab of
//! connections and the lists of those with work pending (to flush, to read again),
//! applies the chat core's effects across connections, and keeps their deadlines
//! in a timer heap. Each connection drives itself (`conn`). The mio reactor (or a
//! test, or a fuzz target) feeds it readiness and time; it never polls or reads a
//! clock itself.

use crate::chat::{Chat, Effect};
use crate::cluster::Cluster;
use crate::conn::{Conn, Cx, Step, Stream, OUT_CAP};
use crate::log;
use crate::metrics::fanout::Fanouts;
use crate::outq::{Chunk, Flush};
use crate::ratelimit::RateLimits;
use crate::storage::Storage;
use crate::timer::Timer;
use crate::ws::close;
use slab::Slab;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long a graceful shutdown waits for sockets to flush and hang up.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

mod cluster;
mod config;
mod control;
mod handover;
mod memory;
pub use config::ServerConfig;

/// Who a broadcast goes to: the whole room (messages), or the members that take
/// joins and leaves one by one (presence events).
#[derive(Clone, Copy)]
enum Audience {
    All,
    Eventful,
}

pub struct Server<S> {
    conns: Slab<Conn<S>>,
    pub cx: Cx,
    timer: Timer,
    /// Connections with bytes to write this turn (`handleClientsWithPendingWrites`).
    flush_list: VecDeque<usize>,
    /// Connections with input left when their read budget ran out.
    read_list: Vec<usize>,
    next_generation: u64,
    shutdown: Option<Instant>,
    /// `skiff ctl` requests under way.
    pub control: crate::control::Ops,
    /// Client input is not read until the cluster is in sync again, or until this
    /// moment (a cluster node just after a hand-over).
    input_held: Option<Instant>,
    /// Some WebSocket's input waits for a failover to end (see `drive`).
    failover_held: bool,
    /// Chat messages whose fan-out is still being written, for `/metrics`.
    fanouts: Fanouts,
}

impl<S: Stream> Server<S> {
    /// `now` and `unix_ms` are one moment on both clocks: the chat core turns
    /// `Instant`s into Unix time (message times, session activity) from it.
    pub fn new(cfg: ServerConfig, storage: Storage, now: Instant, unix_ms: i64) -> Self {
        let mut rate_limits = RateLimits::new(cfg.register_per_minute, cfg.failed_logins_per_minute);
        rate_limits.connections = crate::ratelimit::ConnLimit::new(
            cfg.max_connections_per_ip,
            cfg.conn.limit_loopback,
            cfg.conn.trusted_proxies.clone(),
        );
        let mut server = Server {
            conns: Slab::new(),
            cx: Cx::new(Chat::new(cfg.chat), storage, cfg.conn, rate_limits),
            timer: Timer::new(),
            flush_list: VecDeque::new(),
            read_list: Vec::new(),
            next_generation: 1,
            shutdown: None,
            control: crate::control::Ops::new(now),
            input_held: None,
            failover_held: false,
            fanouts: Fanouts::default(),
        };
        server.cx.chat.set_wall_clock(now, unix_ms);
        server
    }

    /// Routes storage replies to the connections waiting on them.
    pub fn on_storage(&mut self, now: Instant) {
        while let Some(done) = self.cx.storage.take_done() {
            self.reply(done, now);
        }
        self.cx.on_commits();
        self.apply_effects(now);
    }

    /// Hands a storage (or Redis) reply to the connection waiting on it, if it is
    /// still there.
    fn reply(&mut self, done: crate::storage::Done, now: Instant) {
        if done.origin.conn == crate::control::ORIGIN_CONN {
            return self.control_reply(done, now);
        }
        let key = done.origin.conn;
        let Some(c) = self.conns.get_mut(key).filter(|c| c.generation == done.origin.generation) else { return };
        let step = c.on_reply(done.reply, &mut self.cx, now);
        self.settle(key, step, now);
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Takes a new connection; returns its key (the reactor's token).
    pub fn insert(&mut self, sock: S, peer: SocketAddr, now: Instant) -> usize {
        let generation = self.next_generation;
        self.next_generation += 1;
        let slot = self.conns.vacant_entry();
        let key = slot.key();
        slot.insert(Conn::new(sock, key, peer, generation, self.cx.cfg.limits, now));
        self.cx.stats.accepted += 1;
        self.cx.open_connections = self.conns.len();
        log::debug(format_args!("connect {peer}"));
        self.arm(key);
        key
    }

    pub fn stream_mut(&mut self, key: usize) -> Option<&mut S> {
        self.conns.get_mut(key).map(|c| &mut c.sock)
    }

    pub fn contains(&self, key: usize) -> bool {
        self.conns.contains(key)
    }

    /// The connection at `key`, if any (tests and invariant checks).
    pub fn conn(&self, key: usize) -> Option<&Conn<S>> {
        self.conns.get(key)
    }

    /// The generation of the connection now at `key`: a key alone may have been
    /// reused by a newer connection.
    pub fn generation(&self, key: usize) -> Option<u64> {
        self.conns.get(key).map(|c| c.generation)
    }

    /// The transport reported readiness for connection `key`.
    pub fn on_ready(&mut self, key: usize, readable: bool, writable: bool, now: Instant) {
        let Some(c) = self.conns.get_mut(key) else { return };
        if readable {
            c.set_readable();
        }
        if writable {
            c.set_writable();
            self.queue_flush(key);
        }
        if readable {
            self.drive(key, now);
        }
    }

    /// Work that must not wait for the next readiness event: connections whose read
    /// budget ran out, queues not yet flushed. Poll with a zero timeout while true.
    pub fn has_pending_work(&self) -> bool {
        !self.read_list.is_empty()
            || !self.flush_list.is_empty()
            || self.cx.storage.has_done()
            || self.cx.cluster.as_ref().is_some_and(Cluster::has_events)
    }

    /// Drives the connections that had input left over last turn (and takes in
    /// replies inline storage has ready).
    pub fn run_pending_reads(&mut self, now: Instant) {
        self.on_storage(now);
        for key in std::mem::take(&mut self.read_list) {
            if let Some(c) = self.conns.get_mut(key) {
                c.queued_for_read = false;
                self.drive(key, now);
            }
        }
    }

    /// The earliest moment something is due without any IO.
    pub fn next_deadline(&self) -> Option<Instant> {
        let cluster = self.cx.cluster.as_ref().and_then(Cluster::next_deadline);
        [self.timer.next(), self.cx.chat.next_deadline(), self.shutdown, cluster, self.input_held]
            .into_iter()
            .flatten()
            .min()
    }

    /// Reads no client input until `release_input` (or `until`): readiness is
    /// remembered meanwhile, and queued output still flows.
    pub fn hold_input(&mut self, until: Instant) {
        self.input_held = Some(until);
    }

    /// Ends a hold once the cluster is in sync or its time is up: every connection
    /// with input waiting is driven this turn.
    pub fn release_input(&mut self, now: Instant) {
        if self.failover_held && self.cx.cluster.as_ref().is_none_or(|c| c.failing_over(now).is_none()) {
            self.failover_held = false;
            self.queue_waiting_reads();
        }
        let Some(until) = self.input_held else { return };
        let waiting = self.cx.cluster.as_ref().is_some_and(|c| !c.is_up() || c.failing_over(now).is_some());
        if now < until && waiting {
            return;
        }
        self.input_held = None;
        self.queue_waiting_reads();
    }

    /// After a hold: every connection with input waiting is driven this turn.
    fn queue_waiting_reads(&mut self) {
        let keys: Vec<usize> = self.conns.iter().filter(|(_, c)| c.wants_read()).map(|(k, _)| k).collect();
        for key in keys {
            self.queue_read(key);
        }
    }

    /// True once a shutdown has finished (every connection gone or the grace over).
    pub fn is_shut_down(&self, now: Instant) -> bool {
        let cluster_idle = self.cx.cluster.as_ref().is_none_or(Cluster::is_idle);
        self.shutdown.is_some_and(|deadline| (self.conns.is_empty() && cluster_idle) || now >= deadline)
    }

    fn drive(&mut self, key: usize, now: Instant) {
        let Some(c) = self.conns.get(key) else { return };
        if self.input_held.is_some() {
            return; // its readiness stays set: `release_input` comes back to it
        }
        // A failover: chat messages wait for the new primary rather than being
        // refused; HTTP is answered as in any outage (503 until the node is in sync).
        if c.is_ws() && self.cx.cluster.as_ref().is_some_and(|cl| cl.failing_over(now).is_some()) {
            self.failover_held = true;
            return;
        }
        let Some(c) = self.conns.get_mut(key) else { return };
        let step = c.drive(&mut self.cx, now);
        self.settle(key, step, now);
    }

    /// After a connection ran: apply what it caused, then act on its step.
    fn settle(&mut self, key: usize, step: Step, now: Instant) {
        self.apply_effects(now);
        self.cx.persist_changes();
        if let Some(c) = self.conns.get_mut(key) {
            c.account(&mut self.cx);
        }
        self.shed_if_over(now);
        match step {
            Step::Remove => return self.remove(key, now),
            Step::Yield => self.queue_read(key),
            Step::Wait => {}
        }
        self.queue_flush(key);
        self.arm(key);
    }

    /// Puts a connection with something to write on this turn's flush list.
    fn queue_flush(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else { return };
        if !c.queued_for_flush && c.wants_write() {
            c.queued_for_flush = true;
            self.flush_list.push_back(key);
        }
    }

    fn queue_read(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else { return };
        if !c.queued_for_read {
            c.queued_for_read = true;
            self.read_list.push(key);
        }
    }

    fn apply_effects(&mut self, now: Instant) {
        let mut slow = Vec::new();
        while !self.cx.fx.is_empty() {
            for effect in std::mem::take(&mut self.cx.fx) {
                match effect {
                    Effect::Send { to, frame } => {
                        let Some(c) = self.conns.get_mut(to).filter(|c| c.is_ws()) else { continue };
                        c.out.push(frame);
                        self.delivered(to, &mut slow);
                    }
                    Effect::Broadcast { except, frame } => {
                        self.broadcast(Audience::Eventful, except, frame, None, &mut slow);
                    }
                    Effect::Presence { diff, count } => self.presence(diff, count, &mut slow),
                    Effect::BroadcastV2 { frame } => self.broadcast_v2(frame, &mut slow),
                    Effect::Message { except, v1, v2 } => {
                        let (seq, v2_recipients) =
                            self.broadcast(Audience::All, except, v1, Some(v2.clone()), &mut slow);
                        // Held now by this handle, the history ring and one queue
                        // per v2 recipient: done once those queues have let go.
                        let v2 = (v2_recipients > 0).then(|| {
                            let done_at = Rc::strong_count(&v2) - v2_recipients;
                            (v2, done_at)
                        });
                        self.fanouts.start(now, seq, v2);
                    }
                    Effect::Close { conn, code, reason } => {
                        let Some(c) = self.conns.get_mut(conn) else { continue };
                        c.close_ws_why(Some(code), &reason, &mut self.cx, now);
                        self.queue_flush(conn);
                        self.arm(conn);
                    }
                    Effect::Publish { conn, author, message } => self.publish(conn, author, message),
                    Effect::Left { user, closed } => {
                        match self.cx.cluster.as_mut() {
                            // A join of the user from here still to settle: Redis counts
                            // it already (or will, before this), so the user stays here.
                            Some(cluster) if cluster.joining(&user) => cluster.devices_closed(&user, closed),
                            Some(cluster) => cluster.left(&user),
                            None => {}
                        }
                    }
                    Effect::DevicesClosed { user, closed } => {
                        if let Some(cluster) = self.cx.cluster.as_mut() {
                            cluster.devices_closed(&user, closed);
                        }
                    }
                }
            }
            for key in slow.drain(..) {
                let Some(c) = self.conns.get_mut(key).filter(|c| c.is_ws()) else { continue };
                c.drop_slow(&mut self.cx, now);
                self.arm(key);
            }
        }
    }

    /// The fan-out: the frame goes into the log once; each v1 recipient gets a
    /// sequence number and a place on the flush list. v2 clients never use the log:
    /// every frame they get (the `v2` form of a message, or the common frame of an
    /// event) is a shared chunk in their own queue, so a log range of theirs can
    /// never span an entry meant for the other protocol. Returns the log entry, if
    /// any v1 client got the frame, and how many v2 clients got it.
    fn broadcast(
        &mut self,
        to: Audience,
        except: Option<usize>,
        frame: Rc<[u8]>,
        v2: Option<Rc<[u8]>>,
        slow: &mut Vec<usize>,
    ) -> (Option<u64>, usize) {
        let mut seq = None;
        let mut recipients = 0;
        let mut v2_recipients = 0;
        let list = |chat: &Chat| match to {
            Audience::All => chat.members().len(),
            Audience::Eventful => chat.eventful().len(),
        };
        let at = |chat: &Chat, i: usize| match to {
            Audience::All => chat.members()[i],
            Audience::Eventful => chat.eventful()[i],
        };
        for i in 0..list(&self.cx.chat) {
            let to = at(&self.cx.chat, i);
            if Some(to) == except {
                continue;
            }
            if self.cx.chat.is_v2(to) {
                let shared = v2.as_ref().unwrap_or(&frame).clone();
                self.conns[to].out.push(Chunk::Shared(shared));
                v2_recipients += 1;
            } else {
                let seq = *seq.get_or_insert_with(|| self.cx.log.append(frame.clone(), except));
                self.conns[to].out.deliver(seq);
                recipients += 1;
            }
            self.cx.stats.deliveries += 1;
            self.delivered(to, slow);
        }
        if let Some(seq) = seq {
            self.cx.log.seal(seq, recipients);
        }
        (seq, v2_recipients)
    }

    /// An interval's presence, each frame shared by all its subscribers: one pass over
    /// the room per interval, whatever the number of joins in it.
    fn presence(&mut self, diff: Option<Rc<[u8]>>, count: Option<Rc<[u8]>>, slow: &mut Vec<usize>) {
        use crate::chat::presence::Mode;
        for i in 0..self.cx.chat.members().len() {
            let to = self.cx.chat.members()[i];
            let frame = match self.cx.chat.presence_mode(to) {
                Some(Mode::Batch) => diff.as_ref(),
                Some(Mode::Count) => count.as_ref(),
                _ => None,
            };
            if let Some(frame) = frame {
                self.conns[to].out.push(Chunk::Shared(frame.clone()));
                self.cx.stats.deliveries += 1;
                self.delivered(to, slow);
            }
        }
    }

    /// Sends the presence batched so far at once (before a hand-over's capture).
    pub fn flush_presence(&mut self, now: Instant) {
        self.cx.chat.flush_presence(&mut self.cx.fx);
        self.apply_effects(now);
    }

    /// A frame only protocol v2 members get (plain `/ws` stays as it was).
    fn broadcast_v2(&mut self, frame: Rc<[u8]>, slow: &mut Vec<usize>) {
        for i in 0..self.cx.chat.members().len() {
            let to = self.cx.chat.members()[i];
            if self.cx.chat.is_v2(to) {
                self.conns[to].out.push(Chunk::Shared(frame.clone()));
                self.cx.stats.deliveries += 1;
                self.delivered(to, slow);
            }
        }
    }

    /// A frame was queued for `to`: flush it this turn, or drop it if over the cap.
    fn delivered(&mut self, to: usize, slow: &mut Vec<usize>) {
        if self.conns[to].out.len(&self.cx.log) > OUT_CAP {
            slow.push(to);
        }
        self.queue_flush(to);
    }

    /// Writes each listed connection's queue: one vectored write per connection per
    /// turn carries every frame queued for it since the last one.
    pub fn flush_all(&mut self, now: Instant) {
        self.flush_some(now, usize::MAX);
    }

    /// Flushes up to `max` listed connections (only those listed when called; one
    /// re-listed for its write budget waits for a later call). Returns true if some
    /// remain. A fan-out to thousands of sockets takes milliseconds: the reactor
    /// flushes in slices and reads between them, so a message arriving mid-pass
    /// reaches the rest of that pass instead of waiting for the next one.
    pub fn flush_some(&mut self, now: Instant, max: usize) -> bool {
        let n = self.flush_list.len().min(max);
        for _ in 0..n {
            let Some(key) = self.flush_list.pop_front() else { break };
            let Some(c) = self.conns.get_mut(key) else { continue };
            c.queued_for_flush = false;
            match c.flush(&mut self.cx) {
                Ok(Flush::Done) => {
                    let step = c.drained();
                    self.settle(key, step, now);
                }
                Ok(Flush::Blocked) => c.account(&mut self.cx),
                Ok(Flush::Budget) => {
                    c.account(&mut self.cx);
                    self.queue_flush(key);
                }
                Err(_) => {
                    c.write_failed(&mut self.cx, now);
                    self.settle(key, Step::Remove, now);
                }
            }
        }
        if !self.fanouts.is_empty() {
            self.fanouts.settle(&self.cx.log, &mut self.cx.stats.fanout_seconds, now);
        }
        !self.flush_list.is_empty()
    }

    fn arm(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else { return };
        let Some(deadline) = c.deadline() else { return };
        if c.armed.is_none_or(|a| deadline < a) {
            self.timer.schedule(deadline, key, c.generation);
            c.armed = Some(deadline);
        }
    }

    /// Runs everything due by `now`: connection deadlines and session expiry.
    pub fn on_timeout(&mut self, now: Instant) {
        while let Some(e) = self.timer.pop_due(now) {
            let Some(c) = self.conns.get_mut(e.key).filter(|c| c.generation == e.generation) else { continue };
            if c.armed == Some(e.at) {
                c.armed = None;
            }
            let step = c.on_timeout(&mut self.cx, now);
            self.settle(e.key, step, now);
        }
        self.cx.chat.on_timeout(now, &mut self.cx.fx);
        self.apply_effects(now);
        self.cx.persist_changes();
        if let Some(cluster) = self.cx.cluster.as_mut() {
            cluster.on_timeout(now);
            self.run_cluster_events(now);
        }
        self.release_input(now);
    }

    /// Drops a connection that never got going (the reactor could not register it).
    pub fn discard(&mut self, key: usize) {
        if self.conns.contains(key) {
            self.conns.remove(key).discard(&mut self.cx);
            self.cx.rate_limits.connections.release(key);
            self.cx.open_connections = self.conns.len();
        }
    }

    fn remove(&mut self, key: usize, now: Instant) {
        let Some(c) = self.conns.get_mut(key) else { return };
        // A socket still in the room (write error, say) leaves it first.
        c.begin_closing(&mut self.cx, now);
        // Dropping the socket closes it, which also takes it out of epoll.
        self.conns.remove(key).discard(&mut self.cx);
        self.cx.rate_limits.connections.release(key);
        self.cx.open_connections = self.conns.len();
        self.apply_effects(now);
        self.compact_timers();
    }

    /// The timer heap is lazy: a closed connection's entries stay until they fire
    /// (a keep-alive's for a minute). After a burst of short connections (every
    /// client's login) they would outnumber the live ones; only the entry each
    /// connection has armed is ever acted on, so the rest can go.
    fn compact_timers(&mut self) {
        if self.timer.len() <= 2 * self.conns.len() + 1024 {
            return;
        }
        let conns = &self.conns;
        self.timer.retain(|e| conns.get(e.key).is_some_and(|c| c.generation == e.generation && c.armed == Some(e.at)));
    }

    /// Checks the invariants tying connections to the room (for tests and fuzzing):
    /// the room's members are exactly the connections in the WebSocket phase, no
    /// session has outlived its TTL once `on_timeout(now)` ran, the broadcast log
    /// holds exactly the frames some connection still owes, counted right, and an
    /// idle WebSocket holds no decoding context.
    pub fn check_invariants(&self, now: Instant) {
        let mut members: Vec<usize> = self.cx.chat.members().to_vec();
        members.sort_unstable();
        let ws: Vec<usize> = self.conns.iter().filter(|(_, c)| c.is_ws()).map(|(k, _)| k).collect();
        assert_eq!(members, ws, "online list != open WebSockets");
        assert!(self.cx.chat.sessions_alive(now), "a session outlived its TTL");
        assert!(self.cx.chat.members_have_sessions(), "a member without its live session");
        let closing = self.conns.iter().filter(|(_, c)| c.is_closing()).count() as u64;
        assert_eq!(self.cx.stats.closing, closing, "closing gauge is off");
        for (seq, except, pending) in self.cx.log.pending() {
            let owing = self.conns.iter().filter(|(k, c)| c.out.owes(*k, seq, except)).count();
            assert_eq!(pending as usize, owing, "broadcast {seq} is owed by {owing} connections, counted {pending}");
        }
        // Entries leave from the front only, so only the front must be owed.
        if let Some((seq, _, pending)) = self.cx.log.pending().next() {
            assert!(pending > 0, "broadcast {seq} is held though nobody owes it");
        }
    }

    /// Stops taking requests: every WebSocket gets close 1001, every other connection
    /// is closed once its queue is flushed. Storage is drained when the server is
    /// dropped.
    pub fn begin_shutdown(&mut self, now: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        log::info(format_args!("shutting down: closing {} connections", self.conns.len()));
        self.shutdown = Some(now + SHUTDOWN_GRACE);
        self.cx.shutting_down = true;
        self.cx.release_ids();
        if let Some(cluster) = self.cx.cluster.as_mut() {
            // One command for all of this node's users, instead of a leave each.
            cluster.stop();
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let c = &mut self.conns[key];
            if c.is_ws() {
                c.close_ws_why(Some(close::GOING_AWAY), "shutting down", &mut self.cx, now);
            } else if !c.is_waiting() {
                c.begin_closing(&mut self.cx, now);
            }
            // A request waiting on storage is answered (and its connection closed)
            // when the reply comes: a 201 is never dropped on the way out.
            self.queue_flush(key);
            self.arm(key);
        }
        // Everyone is leaving at once: N leave events to N closing sockets would be
        // N^2 frames nobody reads.
        self.cx.fx.clear();
    }
}

#[cfg(test)]
mod tests;
