//! One connection across a hand-over: its phase, unparsed input and unsent output
//! out as a `ConnState`, and back onto the same socket in the new process.

use super::{Conn, HttpPhase, Phase, Stream, WsPhase};
use crate::chat::session::SessionKey;
use crate::handover::state::{ConnState, PhaseState, Rel, WsState};
use crate::http::Limits;
use crate::outq::{BroadcastLog, Chunk, OutQueue};
use crate::ws::WsConn;
use std::time::Instant;

impl<S: Stream> Conn<S> {
    /// This connection as plain data, or `None` while a request of it waits on
    /// storage (the caller lets storage answer first).
    pub fn export(&self, log: &BroadcastLog, now: Instant) -> Option<ConnState> {
        let phase = match &self.phase {
            Phase::Http(h) if h.is_waiting() => return None,
            Phase::Http(h) => {
                let (deadline, continue_sent) = h.parts();
                PhaseState::Http { deadline: Rel::of(deadline, now), continue_sent }
            }
            Phase::Ws(w) => {
                let (ws, last_seen, next_ping) = w.parts();
                PhaseState::Ws(WsState {
                    session: (w.session.key, w.session.generation),
                    last_seen: Rel::of(last_seen, now),
                    next_ping: Rel::of(next_ping, now),
                    partial: ws.partial().map(|(opcode, payload)| (opcode, payload.to_vec())),
                })
            }
            Phase::Closing { until } => PhaseState::Closing { until: Rel::of(*until, now) },
        };
        Some(ConnState {
            key: self.key,
            generation: self.generation,
            peer: self.peer(),
            metered: self.metered,
            readable: self.readable,
            write_shut: self.write_shut,
            peer_gone: self.peer_gone,
            input: self.input.clone(),
            output: self.out.pending_bytes(self.key, log),
            phase,
        })
    }

    /// The phase `state` describes, checked before any socket is taken: a
    /// fragmented message must resume in a fresh decoder.
    pub fn import_phase(state: &PhaseState, limits: Limits, now: Instant) -> Result<Phase, &'static str> {
        Ok(match state {
            PhaseState::Http { deadline, continue_sent } => {
                Phase::Http(Box::new(HttpPhase::resume(limits, deadline.at(now), *continue_sent)))
            }
            PhaseState::Ws(w) => {
                let ws = match &w.partial {
                    None => WsConn::new(),
                    Some((opcode, payload)) => {
                        WsConn::resume(*opcode, payload).ok_or("a fragmented message that does not resume")?
                    }
                };
                let session = SessionKey { key: w.session.0, generation: w.session.1 };
                Phase::Ws(WsPhase::resume(ws, session, w.last_seen.at(now), w.next_ping.at(now)))
            }
            PhaseState::Closing { until } => Phase::Closing { until: until.at(now) },
        })
    }

    /// The connection `state` describes, in `phase` (from `import_phase`), on
    /// `sock`. It is writable until a write says otherwise, as a new connection is.
    pub fn import(sock: S, state: ConnState, phase: Phase, limits: Limits, now: Instant) -> Conn<S> {
        let mut c = Conn::new(sock, state.key, state.peer, state.generation, limits, now);
        c.phase = phase;
        c.out = OutQueue::new();
        c.out.push(Chunk::Owned(state.output));
        c.input = state.input;
        c.readable = state.readable;
        c.write_shut = state.write_shut;
        c.peer_gone = state.peer_gone;
        c.metered = state.metered;
        c
    }

    /// A socket handed over without a state to go with it: `last` (a close frame,
    /// or nothing) is flushed, then the connection closes as any closing one does.
    pub fn closing(
        sock: S,
        key: usize,
        peer: std::net::SocketAddr,
        generation: u64,
        last: &[u8],
        now: Instant,
    ) -> Conn<S> {
        let mut c = Conn::new(sock, key, peer, generation, Limits::default(), now);
        c.phase = Phase::Closing { until: now + super::LINGER };
        c.out.push(Chunk::Owned(last.to_vec()));
        c.readable = true;
        c
    }
}
