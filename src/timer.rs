//! Deadlines for the event loop: a lazy min-heap of `(when, key, generation)`.
//!
//! Entries are never cancelled. When one fires, its owner checks it against its own
//! state and ignores it if stale (the key was reused, or the deadline moved later and
//! a newer entry exists). Sliding deadlines therefore cost O(1) per activity: only the
//! owner's deadline (a connection's `armed`, a session's last activity) moves, and
//! the entry that fires early re-arms.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub at: Instant,
    pub key: usize,
    pub generation: u64,
}

#[derive(Debug, Default)]
pub struct Timer {
    heap: BinaryHeap<Reverse<Entry>>,
}

impl Timer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn schedule(&mut self, at: Instant, key: usize, generation: u64) {
        self.heap.push(Reverse(Entry { at, key, generation }));
    }

    /// The earliest deadline, if any; feeds the poll timeout.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// Removes and returns one entry due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Entry> {
        match self.heap.peek() {
            Some(Reverse(e)) if e.at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Drops the entries `keep` rejects (stale ones, which would only be skipped
    /// when they fire) and gives back the memory they held.
    pub fn retain(&mut self, keep: impl FnMut(&Entry) -> bool) {
        let mut keep = keep;
        self.heap.retain(|Reverse(e)| keep(e));
        if self.heap.capacity() > 2 * self.heap.len() + 64 {
            self.heap.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timer::new();
        t.schedule(t0 + Duration::from_secs(3), 1, 0);
        t.schedule(t0 + Duration::from_secs(1), 2, 0);
        t.schedule(t0 + Duration::from_secs(2), 3, 7);
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(t.pop_due(t0), None);
        let now = t0 + Duration::from_secs(2);
        assert_eq!(t.pop_due(now).map(|e| e.key), Some(2));
        let e = t.pop_due(now).unwrap();
        assert_eq!((e.key, e.generation), (3, 7));
        assert_eq!(t.pop_due(now), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn retain_keeps_order_and_drops_the_rest() {
        let t0 = Instant::now();
        let mut t = Timer::new();
        for k in 0..100 {
            t.schedule(t0 + Duration::from_secs(100 - k as u64), k, 0);
        }
        t.retain(|e| e.key % 10 == 0);
        assert_eq!(t.len(), 10);
        let due: Vec<usize> = std::iter::from_fn(|| t.pop_due(t0 + Duration::from_secs(200))).map(|e| e.key).collect();
        assert_eq!(due, [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]);
    }
}
