//! The process-wide memory budget, kept: past it, the connections holding the
//! most are closed first (`conn::memory` counts what each holds).

use super::Server;
use crate::conn::Stream;
use std::time::Instant;

impl<S: Stream> Server<S> {
    /// Clients hold more than the memory budget: the connections holding the
    /// most are closed until the count is back under the target. The one scan of
    /// every connection happens only here, on the rare turn the budget is spent.
    pub(super) fn shed_if_over(&mut self, now: Instant) {
        if !self.cx.memory.over(self.cx.log.bytes() as usize) {
            return;
        }
        let log = &self.cx.log;
        let mut holders: Vec<(usize, usize)> =
            self.conns.iter().filter(|(_, c)| !c.is_closing()).map(|(k, c)| (c.holding(log), k)).collect();
        holders.sort_unstable_by(|a, b| b.cmp(a));
        let target = self.cx.memory.target();
        for (_, key) in holders {
            if self.cx.memory.held() + self.cx.log.bytes() as usize <= target {
                break;
            }
            self.conns[key].shed(&mut self.cx, now);
            self.queue_flush(key);
            self.arm(key);
        }
        self.apply_effects(now);
    }
}
