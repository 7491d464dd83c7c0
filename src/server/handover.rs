//! The whole server across a hand-over: `export` turns it into a `State` (every
//! queue flattened to the bytes its peer has yet to get, so the broadcast log need
//! not travel); `import` checks a `State` completely before it takes a socket or
//! changes anything, then puts every connection back on its slot and schedules
//! the first turn's work: buffered input is parsed, queued bytes are written.

use super::Server;
use crate::conn::{Conn, Phase, Stream};
use crate::handover::state::{ClusterState, PhaseState, Rel, State, StatsState, Window};
use crate::ratelimit::Limiter;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// After a cluster node's hand-over, how long client input may wait for the node
/// to be in sync with Redis again (it takes milliseconds while Redis is up; a node
/// that cannot get there in time serves on, degraded, as in any outage).
const INPUT_HOLD_MAX: Duration = Duration::from_secs(3);

impl<S: Stream> Server<S> {
    /// Requests waiting on storage (or Redis): none may be pending at `export`.
    pub fn waiting(&self) -> usize {
        self.conns.iter().filter(|(_, c)| c.is_waiting()).count()
    }

    /// A shutdown has begun: nothing is handed over then.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    /// Everything, with `state.conns[i]` at slab key `state.conns[i].key`. `None`
    /// while a request waits on storage. Changes still to persist must have been
    /// handed to storage (and storage drained) by then.
    pub fn export(&self, now: Instant) -> Option<State> {
        // Held acks do not travel: with storage drained every one is released.
        if self.cx.chat.held_acks() > 0 {
            return None;
        }
        let mut conns = Vec::with_capacity(self.conns.len());
        for (_, c) in self.conns.iter() {
            conns.push(c.export(&self.cx.log, now)?);
        }
        let windows = |l: &Limiter| {
            l.windows().map(|(ip, start, count)| Window { ip, start: Rel::of(start, now), count }).collect()
        };
        let st = &self.cx.stats;
        Some(State {
            next_generation: self.next_generation,
            conns,
            chat: self.cx.chat.export(now),
            register_limits: windows(&self.cx.rate_limits.register),
            login_limits: windows(&self.cx.rate_limits.failed_login),
            http_rate_limited: self.cx.rate_limits.refused,
            stats: StatsState {
                accepted: st.accepted,
                refused: st.refused,
                ws_opened: st.ws_opened,
                deliveries: st.deliveries,
                slow_dropped: st.slow_dropped,
                bytes_in: st.bytes_in,
                bytes_out: st.bytes_out,
                responses: st.responses.iter().map(|(&k, &v)| (k, v)).collect(),
            },
            cluster: self.cx.cluster.as_ref().map(|c| ClusterState {
                node: c.node().to_owned(),
                online: self.cx.chat.online().map(str::to_owned).collect(),
                deferred_logouts: c.deferred_logouts().to_vec(),
            }),
        })
    }

    /// Takes over `state` into this fresh server; `socket(i)` gives the socket of
    /// `state.conns[i]` and is called only once the whole state has been checked.
    /// On an error nothing has changed and no socket was asked for.
    pub fn import(
        &mut self,
        state: State,
        now: Instant,
        mut socket: impl FnMut(usize) -> S,
    ) -> Result<(), &'static str> {
        if !self.conns.is_empty() {
            return Err("connections already open");
        }
        match (&state.cluster, &self.cx.cluster) {
            (Some(_), None) => return Err("a cluster node's state, and this is no cluster node"),
            (None, Some(_)) => return Err("a single node's state, and this is a cluster node"),
            _ => {}
        }
        let members: HashMap<usize, (usize, u64)> = state.chat.room.iter().map(|m| (m.conn, m.session)).collect();
        if members.len() != state.chat.room.len() {
            return Err("a connection in the room twice");
        }
        let limits = self.cx.cfg.limits;
        let mut phases = Vec::with_capacity(state.conns.len());
        let mut keys = std::collections::HashSet::with_capacity(state.conns.len());
        let mut websockets = 0;
        let mut last_generation = 0;
        for c in &state.conns {
            if !keys.insert(c.key) {
                return Err("two connections on one slot");
            }
            if let PhaseState::Ws(w) = &c.phase {
                if members.get(&c.key) != Some(&w.session) {
                    return Err("a WebSocket not in the room");
                }
                websockets += 1;
            }
            last_generation = last_generation.max(c.generation);
            phases.push(Conn::<S>::import_phase(&c.phase, limits, now)?);
        }
        if websockets != members.len() {
            return Err("a member without its WebSocket");
        }
        self.cx.chat.import(state.chat, now)?;
        if let (Some(c), Some(cluster)) = (state.cluster, self.cx.cluster.as_mut()) {
            self.cx.chat.import_replica(&c.online)?;
            cluster.resume_as(c.node, c.deferred_logouts);
            // Messages sent now would find no link to Redis yet and be refused:
            // input waits (boundedly) until the node is in sync again.
            self.hold_input(now + INPUT_HOLD_MAX);
        }

        let mut conns = Vec::with_capacity(state.conns.len());
        for (i, (c, phase)) in state.conns.into_iter().zip(phases).enumerate() {
            if matches!(phase, Phase::Closing { .. }) {
                self.cx.stats.closing += 1;
            }
            let key = c.key;
            conns.push((key, Conn::import(socket(i), c, phase, limits, now)));
        }
        self.conns = conns.into_iter().collect();
        // Direct peers count against the per-address cap again; an address a proxy
        // forwarded counts again at that connection's next request.
        for (key, c) in self.conns.iter() {
            self.cx.rate_limits.connections.accepted(key, c.peer().ip());
        }
        self.next_generation = state.next_generation.max(last_generation + 1);
        self.cx.open_connections = self.conns.len();
        for (limiter, windows) in [
            (&mut self.cx.rate_limits.register, state.register_limits),
            (&mut self.cx.rate_limits.failed_login, state.login_limits),
        ] {
            for w in windows {
                limiter.restore(w.ip, w.start.at(now), w.count);
            }
        }
        self.cx.rate_limits.refused = state.http_rate_limited;
        let st = &mut self.cx.stats;
        let s = state.stats;
        (st.accepted, st.refused, st.ws_opened, st.deliveries) = (s.accepted, s.refused, s.ws_opened, s.deliveries);
        (st.slow_dropped, st.bytes_in, st.bytes_out) = (s.slow_dropped, s.bytes_in, s.bytes_out);
        st.responses = s.responses.into_iter().collect();

        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.arm(key);
            self.queue_flush(key);
            let c = &self.conns[key];
            if c.wants_read() {
                self.queue_read(key);
            }
        }
        Ok(())
    }

    /// Takes a handed-over socket whose state could not be read: it gets `last` (a
    /// close frame for a WebSocket) and closes. Returns its key.
    pub fn insert_closing(&mut self, sock: S, peer: std::net::SocketAddr, last: &[u8], now: Instant) -> usize {
        let generation = self.next_generation;
        self.next_generation += 1;
        let slot = self.conns.vacant_entry();
        let key = slot.key();
        slot.insert(Conn::closing(sock, key, peer, generation, last, now));
        self.cx.stats.closing += 1;
        self.cx.open_connections = self.conns.len();
        self.arm(key);
        self.queue_flush(key);
        self.queue_read(key);
        key
    }

    /// Drops connection `key` at once (its socket could not be watched).
    pub fn close_now(&mut self, key: usize, now: Instant) {
        self.remove(key, now);
    }

    /// Closes every connection now, WebSockets with 1001 and a best-effort flush:
    /// what cannot cross an exec (TLS sessions) goes before it. Nobody hears the
    /// leaves, as in a shutdown. Returns how many were closed.
    pub fn close_all_now(&mut self, now: Instant) -> usize {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for &key in &keys {
            let c = &mut self.conns[key];
            if c.is_ws() {
                c.close_ws(Some(crate::ws::close::GOING_AWAY), &mut self.cx, now);
            } else {
                c.begin_closing(&mut self.cx, now);
            }
            self.queue_flush(key);
        }
        self.cx.fx.clear();
        self.flush_all(now);
        for &key in &keys {
            self.remove(key, now);
        }
        self.cx.fx.clear();
        keys.len()
    }
}
