//! Timing a chat message's fan-out: from the loop turn that read it to the moment
//! its last recipient's copy went to the kernel. Plain `/ws` recipients share one
//! broadcast-log entry, which knows how many connections still owe it; `/ws?v=2`
//! recipients share one reference-counted frame, whose count falls as each queue
//! writes (or drops) its copy. A message is done when both say so. Nothing here is
//! per recipient: one record per message, checked after each flush slice. (The
//! history ring also holds the v2 frame: should it evict the message before the
//! fan-out ends, the timing ends one v2 recipient early. That takes a fan-out slower
//! than the ring's whole span, 1,000 messages by default.)

use super::histogram::Histogram;
use crate::outq::BroadcastLog;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

/// Messages timed at once. A client that stops reading holds every fan-out open
/// until it is dropped (at 1 MiB queued, thousands of messages); past this many,
/// further messages go untimed rather than grow the list.
const MAX_TIMED: usize = 1024;

struct Timed {
    started: Instant,
    /// The broadcast-log entry v1 recipients owe.
    seq: Option<u64>,
    /// The v2 frame, and the reference count it has once no queue holds it.
    v2: Option<(Rc<[u8]>, usize)>,
}

#[derive(Default)]
pub struct Fanouts {
    timed: VecDeque<Timed>,
    /// Records with a v2 frame: those are checked at every `settle`.
    v2_timed: usize,
    /// `BroadcastLog::finished` at the last `settle`: while it has not moved and no
    /// record has a v2 frame, nothing can have finished and the list is not walked
    /// (`settle` runs after every flush slice).
    seen_finished: u64,
}

impl Fanouts {
    /// Times a message broadcast at `started`. `seq`: its log entry, if plain
    /// clients got it; `v2`: its frame, if v2 clients did, with the count it drops
    /// to once they all have written it.
    pub fn start(&mut self, started: Instant, seq: Option<u64>, v2: Option<(Rc<[u8]>, usize)>) {
        if (seq.is_some() || v2.is_some()) && self.timed.len() < MAX_TIMED {
            self.v2_timed += usize::from(v2.is_some());
            self.timed.push_back(Timed { started, seq, v2 });
        }
    }

    pub fn is_empty(&self) -> bool {
        self.timed.is_empty()
    }

    /// Observes every timed message no recipient owes any more, as done at `now` (the
    /// flush slice that wrote the last of it: the time is the loop's, so it is exact to
    /// within one slice). Messages may finish out of order (a recipient of the older
    /// one may be slower), so all are checked.
    pub fn settle(&mut self, log: &BroadcastLog, into: &mut Histogram, now: Instant) {
        if self.v2_timed == 0 && log.finished() == self.seen_finished {
            return;
        }
        self.seen_finished = log.finished();
        let v2_timed = &mut self.v2_timed;
        self.timed.retain(|t| {
            let v1_done = t.seq.is_none_or(|seq| log.is_released(seq));
            let v2_done = t.v2.as_ref().is_none_or(|(frame, done_at)| Rc::strong_count(frame) <= *done_at);
            if v1_done && v2_done {
                into.observe_duration(now.saturating_duration_since(t.started));
                *v2_timed -= usize::from(t.v2.is_some());
            }
            !(v1_done && v2_done)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::histogram::LATENCY;
    use crate::outq::OutQueue;

    #[test]
    fn a_message_is_observed_once_its_last_v1_and_v2_recipient_has_written_it() {
        let mut log = BroadcastLog::new();
        let (mut a, mut b) = (OutQueue::new(), OutQueue::new());
        let frame: Rc<[u8]> = Rc::from(&b"\x81\x01x"[..]);
        let seq = log.append(frame.clone(), None);
        a.deliver(seq);
        b.deliver(seq);
        log.seal(seq, 2);
        let v2: Rc<[u8]> = Rc::from(&b"\x81\x01y"[..]);
        let mut c = OutQueue::new();
        c.push(crate::outq::Chunk::Shared(v2.clone()));
        let mut fanouts = Fanouts::default();
        let mut h = Histogram::new(&LATENCY);
        // As the server counts: every holder now, less the one recipient's queue.
        let done_at = Rc::strong_count(&v2) - 1;
        fanouts.start(Instant::now(), Some(seq), Some((v2, done_at)));
        let mut sink = Vec::new();
        for (key, q) in [(1, &mut a), (2, &mut b)] {
            fanouts.settle(&log, &mut h, Instant::now());
            assert_eq!(h.count(), 0, "a recipient still owes it");
            q.flush_to(key, &mut log, &mut sink, usize::MAX).unwrap();
        }
        fanouts.settle(&log, &mut h, Instant::now());
        assert_eq!(h.count(), 0, "the v2 recipient has not written it yet");
        c.flush_to(3, &mut log, &mut sink, usize::MAX).unwrap();
        fanouts.settle(&log, &mut h, Instant::now());
        assert_eq!(h.count(), 1);
        assert!(fanouts.is_empty());
        fanouts.settle(&log, &mut h, Instant::now());
        assert_eq!(h.count(), 1, "observed once");
    }

    #[test]
    fn a_message_with_no_recipient_is_not_timed_and_the_list_is_bounded() {
        let mut fanouts = Fanouts::default();
        fanouts.start(Instant::now(), None, None);
        assert!(fanouts.is_empty());
        let mut log = BroadcastLog::new();
        let mut q = OutQueue::new();
        for _ in 0..MAX_TIMED + 10 {
            let seq = log.append(Rc::from(&b"f"[..]), None);
            q.deliver(seq);
            log.seal(seq, 1);
            fanouts.start(Instant::now(), Some(seq), None);
        }
        assert_eq!(fanouts.timed.len(), MAX_TIMED);
        let mut h = Histogram::new(&LATENCY);
        q.flush_to(1, &mut log, &mut Vec::new(), usize::MAX).unwrap();
        fanouts.settle(&log, &mut h, Instant::now());
        assert_eq!(h.count(), MAX_TIMED as u64);
    }
}
