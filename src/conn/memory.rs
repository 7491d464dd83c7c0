//! What clients make the server hold, counted against one process-wide budget.
//!
//! Each connection reports what it holds (unfinished request or frame in its input
//! buffer, unfinished fragmented message, its own queued output) whenever it has
//! run; the count is kept as a running sum, so a change costs O(1) and nothing
//! ever walks every connection except the rare moment the budget is spent. The
//! broadcast log's frames are shared by their recipients and counted once.
//!
//! TLS buffers and state (as far as skiff can see them: `tls.rs`) and acks held
//! until their message is durable count too.
//!
//! Each part is also bounded per connection: input by `IN_CAP` / one frame, an
//! unfinished message by the message limit, output by `OUT_CAP`, TLS input by one
//! handshake message or record, held acks by `MAX_UNACKED`.

use super::{Conn, Cx, Phase, Stream};
use crate::log;
use crate::outq::BroadcastLog;
use crate::ws;
use std::time::Instant;

/// Past the budget, connections are closed until the count is this far below it,
/// so a client that keeps pushing does not trigger a scan at every byte.
const HYSTERESIS_DIVISOR: usize = 8;

#[derive(Debug, Default)]
pub struct Memory {
    /// 0: no budget.
    budget: usize,
    /// Sum of every connection's last report.
    held: usize,
}

impl Memory {
    pub fn new(budget: usize) -> Self {
        Memory { budget, held: 0 }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes the connections reported, without the shared broadcast frames.
    pub fn held(&self) -> usize {
        self.held
    }

    /// A connection that reported `*slot` before holds `now` bytes now.
    pub fn set(&mut self, slot: &mut usize, now: usize) {
        self.held = self.held - *slot + now;
        *slot = now;
    }

    /// Over the budget, with `shared` bytes of broadcast frames besides.
    pub fn over(&self, shared: usize) -> bool {
        self.budget > 0 && self.held + shared > self.budget
    }

    /// Shedding stops once the count is back under this.
    pub fn target(&self) -> usize {
        self.budget - self.budget / HYSTERESIS_DIVISOR
    }
}

impl<S: Stream> Conn<S> {
    /// Bytes this connection holds of its own: unfinished input, an unfinished
    /// message, queued frames (broadcast frames it owes are counted once, in
    /// the log), its transport's buffers, its acks waiting on the disk.
    fn private_bytes(&self, cx: &Cx) -> usize {
        let phase = match &self.phase {
            Phase::Ws(w) => w.held(),
            Phase::Http(_) => 0,
            // Going within `LINGER`, reading at most `CLOSING_DISCARD` on the way:
            // what its transport still holds is not the budget's to win back.
            Phase::Closing { .. } => return self.input.capacity() + self.out.own_memory(),
        };
        self.input.capacity() + phase + self.out.own_memory() + self.sock.held() + cx.chat.held_ack_bytes(self.key)
    }

    /// What closing this connection would give back, the broadcasts it owes
    /// included: the order in which the budget sheds connections. Its own part is
    /// what it last reported, the figure the budget counts.
    pub fn holding(&self, log: &BroadcastLog) -> usize {
        self.held + self.out.len(log)
    }

    /// Reports what the connection holds now to the process-wide count.
    pub fn account(&mut self, cx: &mut Cx) {
        let now = self.private_bytes(cx);
        cx.memory.set(&mut self.held, now);
        cx.stats.client_memory = (cx.memory.held() as u64).saturating_add(cx.log.bytes());
    }

    /// Closes the connection because clients hold more than the budget: a
    /// WebSocket with 1008 "memory budget", an HTTP request with 503. What it
    /// held is let go at once.
    pub fn shed(&mut self, cx: &mut Cx, now: Instant) {
        cx.stats.memory_shed += 1;
        log::warn(format_args!("{}: holds {} bytes past the memory budget, closed", self.peer(), self.held));
        self.input = Vec::new();
        self.out.drop_unstarted(self.key, &mut cx.log);
        match self.phase {
            Phase::Ws(_) => self.close_ws_because(ws::close::POLICY, "memory budget", cx, now),
            // No channel to say anything on yet: the socket just goes.
            Phase::Http(_) if self.sock.in_handshake() => {
                self.phase = Phase::Closing { until: now };
                cx.stats.closing += 1;
            }
            Phase::Http(_) => {
                self.respond_error(503, "memory_budget", cx, now);
                self.enter_closing(cx, now);
            }
            Phase::Closing { .. } => {}
        }
        self.account(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sum_follows_each_report_and_its_withdrawal() {
        let mut m = Memory::new(1000);
        let (mut a, mut b) = (0, 0);
        m.set(&mut a, 600);
        m.set(&mut b, 300);
        assert_eq!(m.held(), 900);
        assert!(!m.over(100) && m.over(101));
        m.set(&mut a, 10);
        assert_eq!((m.held(), a), (310, 10));
        m.set(&mut a, 0);
        m.set(&mut b, 0);
        assert_eq!(m.held(), 0);
        assert_eq!(m.target(), 875);
        assert!(!Memory::new(0).over(usize::MAX / 2), "0 is no budget");
    }
}
