//! What clients make the server hold, counted against one process-wide budget.
//!
//! Each connection reports what it holds (unfinished request or frame in its input
//! buffer, unfinished fragmented message, its own queued output) whenever it has
//! run; the count is kept as a running sum, so a change costs O(1) and nothing
//! ever walks every connection except the rare moment the budget is spent. The
//! broadcast log's frames are shared by their recipients and counted once.
//!
//! Each part is also bounded per connection: input by `IN_CAP` / one frame, an
//! unfinished message by the message limit, output by `OUT_CAP`.

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
