//! Bytes waiting to go out, in two places. A broadcast frame is stored once, in the
//! server's `BroadcastLog`; each recipient's `OutQueue` only remembers which log
//! entries it still owes its peer. Frames for one connection alone (acks, pongs,
//! HTTP responses) wait in that connection's own queue, each tagged with its place
//! among the broadcasts so the peer sees everything in the order it was produced.
//!
//! A fan-out therefore costs no allocation and no queue entry per recipient, and a
//! backlog (a join storm, a slow reader) holds each frame once, however many
//! connections still owe it. No syscalls here except through the `Write` handed in.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

/// Bytes for one connection. `Static` avoids an allocation for fixed frames (acks).
#[derive(Clone, Debug)]
pub enum Chunk {
    Static(&'static [u8]),
    Owned(Vec<u8>),
    /// A frame several connections get (v2 messages, replays): counted, not copied.
    Shared(Rc<[u8]>),
}

impl Chunk {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Static(s) => s,
            Chunk::Owned(v) => v,
            Chunk::Shared(f) => f,
        }
    }
}

/// What a flush achieved.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Flush {
    /// Everything queued has been written.
    Done,
    /// The socket would block; wait for writability.
    Blocked,
    /// The per-turn budget ran out with bytes left; try again next turn.
    Budget,
}

/// Most slices handed to one `writev`; Linux's IOV_MAX is 1024, fewer keeps the
/// stack array small while still coalescing a whole loop turn of frames.
const MAX_IOV: usize = 64;

/// Most bytes one gathered write carries (see `gather_write`).
const GATHER: usize = 64 * 1024;

thread_local! {
    /// The one gather buffer: the loop is single-threaded, and it is reused by every
    /// socket's flush instead of allocated per write.
    static GATHERED: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(GATHER + 4096));
}

struct Entry {
    frame: Rc<[u8]>,
    /// The connection that does not get this frame (the sender of a message).
    except: Option<usize>,
    /// Recipients that have not written it completely yet.
    pending: u32,
    /// Bytes appended to the log before this entry.
    offset: u64,
}

/// Broadcast frames not yet written to every recipient, oldest first. Entries are
/// numbered by a sequence that never restarts; the front one leaves as soon as no
/// connection owes it.
#[derive(Default)]
pub struct BroadcastLog {
    entries: VecDeque<Entry>,
    /// Sequence number of `entries[0]`.
    first: u64,
    /// Bytes ever appended.
    end_offset: u64,
    /// Entries every recipient has written or dropped, ever: a fan-out timer looks
    /// at its messages only when this moved.
    finished: u64,
}

impl BroadcastLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a frame with no recipients yet; hand it to each with
    /// `OutQueue::deliver`, then `seal` it with their number.
    pub fn append(&mut self, frame: Rc<[u8]>, except: Option<usize>) -> u64 {
        let seq = self.end();
        let len = frame.len() as u64;
        self.entries.push_back(Entry { frame, except, pending: 0, offset: self.end_offset });
        self.end_offset += len;
        seq
    }

    /// Sets how many connections the frame was delivered to.
    pub fn seal(&mut self, seq: u64, recipients: u32) {
        self.entry_mut(seq).pending = recipients;
        self.pop_done();
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.entries.front().map_or(0, |e| self.end_offset - e.offset)
    }

    /// How many connections owe each held entry (for invariant checks).
    pub fn pending(&self) -> impl Iterator<Item = (u64, Option<usize>, u32)> + '_ {
        self.entries.iter().zip(self.first..).map(|(e, seq)| (seq, e.except, e.pending))
    }

    fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    fn entry(&self, seq: u64) -> &Entry {
        &self.entries[(seq - self.first) as usize]
    }

    fn entry_mut(&mut self, seq: u64) -> &mut Entry {
        &mut self.entries[(seq - self.first) as usize]
    }

    fn offset(&self, seq: u64) -> u64 {
        if seq == self.end() {
            self.end_offset
        } else {
            self.entry(seq).offset
        }
    }

    /// Entries every recipient has written or dropped, since the log began.
    pub fn finished(&self) -> u64 {
        self.finished
    }

    /// Every recipient of `seq` has written (or dropped) it.
    pub fn is_released(&self, seq: u64) -> bool {
        seq < self.first || self.entries.get((seq - self.first) as usize).is_none_or(|e| e.pending == 0)
    }

    /// One recipient is done with `seq` (written, or dropped).
    fn release(&mut self, seq: u64) {
        let e = self.entry_mut(seq);
        debug_assert!(e.pending > 0, "entry {seq} released more often than delivered");
        e.pending = e.pending.saturating_sub(1);
        if e.pending == 0 {
            self.finished += 1;
        }
        self.pop_done();
    }

    fn pop_done(&mut self) {
        while self.entries.front().is_some_and(|e| e.pending == 0) {
            self.entries.pop_front();
            self.first += 1;
        }
        // After a burst the ring would keep its high-water capacity forever.
        if self.entries.is_empty() && self.entries.capacity() > 64 {
            self.entries = VecDeque::new();
        }
    }
}

/// One step of a connection's output, in the order the peer must see them.
#[derive(Clone, Copy)]
enum Item {
    /// `own[i]`.
    Own(usize),
    /// A broadcast log entry.
    Log(u64),
}

#[derive(Debug, Default)]
pub struct OutQueue {
    /// Frames for this connection alone, each tagged with a log sequence number:
    /// it goes after every owed entry below the tag and before the rest.
    own: VecDeque<(u64, Chunk, u32)>,
    own_bytes: usize,
    /// What those frames cost in memory, for the budget: an owned frame its length,
    /// a shared one (a hello, a replay, a presence diff, held by many queues) its
    /// share when queued, its length over the queues holding it then; the third
    /// field of each entry. A storm's shared hello is then counted about once,
    /// not once per socket.
    own_memory: usize,
    /// Bytes of the first item already written (Redis calls it `sentlen`).
    head_written: usize,
    /// The next log entry to look at.
    log_next: u64,
    /// One past the last log entry delivered to this connection. Entries in
    /// `log_next..log_end` are owed, except those with `except` == this connection.
    log_end: u64,
}

/// What queueing `chunk` costs in memory (see `OutQueue::own_memory`).
fn chunk_memory(chunk: &Chunk) -> u32 {
    let len = chunk.as_slice().len();
    let data = match chunk {
        Chunk::Static(_) => 0,
        Chunk::Owned(_) => len,
        // This queue's reference is among the strong ones.
        Chunk::Shared(rc) => len / Rc::strong_count(rc),
    };
    (std::mem::size_of::<(u64, Chunk, u32)>() + data).min(u32::MAX as usize) as u32
}

/// A position while walking a queue's items in order.
struct Walk {
    seq: u64,
    own: usize,
}

impl OutQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a frame for this connection alone, after every broadcast delivered so far.
    pub fn push(&mut self, chunk: Chunk) {
        let len = chunk.as_slice().len();
        if len == 0 {
            return;
        }
        self.own_bytes += len;
        let memory = chunk_memory(&chunk);
        self.own_memory += memory as usize;
        self.own.push_back((self.log_end, chunk, memory));
    }

    /// Log entry `seq` (the newest) is for this connection too.
    pub fn deliver(&mut self, seq: u64) {
        if self.log_next == self.log_end {
            // Nothing owed: skip what was logged before this connection joined.
            self.log_next = seq;
        }
        self.log_end = seq + 1;
    }

    /// Bytes not yet written.
    pub fn len(&self, log: &BroadcastLog) -> usize {
        let next = self.log_next.max(log.first);
        let owed = if next < self.log_end { log.offset(self.log_end) - log.offset(next) } else { 0 };
        (self.own_bytes as u64 + owed) as usize - self.head_written
    }

    pub fn is_empty(&self) -> bool {
        self.own.is_empty() && self.log_next >= self.log_end
    }

    /// Bytes of the frames queued for this connection alone (acks, pongs, HTTP
    /// responses, v2 frames), whether or not others share them.
    pub fn own_bytes(&self) -> usize {
        self.own_bytes
    }

    /// What the frames queued for this connection alone hold in memory (shared ones
    /// by their share: see `own_memory`).
    pub fn own_memory(&self) -> usize {
        self.own_memory
    }

    fn walk(&self, log: &BroadcastLog) -> Walk {
        Walk { seq: self.log_next.max(log.first), own: 0 }
    }

    fn step(&self, key: usize, log: &BroadcastLog, w: &mut Walk) -> Option<Item> {
        loop {
            if let Some((tag, _, _)) = self.own.get(w.own) {
                if *tag <= w.seq || w.seq >= self.log_end {
                    w.own += 1;
                    return Some(Item::Own(w.own - 1));
                }
            }
            if w.seq >= self.log_end {
                return None;
            }
            let seq = w.seq;
            w.seq += 1;
            if log.entry(seq).except != Some(key) {
                return Some(Item::Log(seq));
            }
        }
    }

    fn bytes<'a>(&'a self, log: &'a BroadcastLog, item: Item) -> &'a [u8] {
        match item {
            Item::Own(i) => self.own[i].1.as_slice(),
            Item::Log(seq) => &log.entry(seq).frame,
        }
    }

    /// Writes as much as the writer takes, up to `budget` bytes, coalescing everything
    /// owed into one vectored write per call. `key` is this connection's id in the log.
    /// Returns the outcome and the bytes written.
    pub fn flush_to<W: Write>(
        &mut self,
        key: usize,
        log: &mut BroadcastLog,
        w: &mut W,
        budget: usize,
    ) -> io::Result<(Flush, usize)> {
        let mut sent = 0usize;
        loop {
            let result = {
                let mut slices: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
                let mut n = 0;
                let mut walk = self.walk(log);
                while n < MAX_IOV {
                    let Some(item) = self.step(key, log, &mut walk) else { break };
                    let b = self.bytes(log, item);
                    slices[n] = IoSlice::new(if n == 0 { &b[self.head_written..] } else { b });
                    n += 1;
                }
                if n == 0 {
                    break;
                }
                if sent >= budget {
                    return Ok((Flush::Budget, sent));
                }
                let small = slices[..n].iter().map(|s| s.len()).sum::<usize>() < GATHER / 4;
                if n == MAX_IOV && small {
                    self.gather_write(key, log, w)
                } else {
                    w.write_vectored(&slices[..n])
                }
            };
            let written = match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((Flush::Blocked, sent)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            sent += written;
            self.consume(key, log, written);
        }
        self.release_if_idle();
        Ok((Flush::Done, sent))
    }

    /// A join storm queues thousands of 30-byte frames per socket: a `writev` of 64
    /// of them moves 2 KB a syscall. Copied into one buffer they leave up to `GATHER`
    /// bytes at a time, each frame still whole and in order. Only taken when more
    /// than `MAX_IOV` small frames wait, so a client's first frames go as before.
    fn gather_write<W: Write>(&self, key: usize, log: &BroadcastLog, w: &mut W) -> io::Result<usize> {
        GATHERED.with_borrow_mut(|buf| {
            buf.clear();
            let mut walk = self.walk(log);
            while buf.len() < GATHER {
                let Some(item) = self.step(key, log, &mut walk) else { break };
                let b = self.bytes(log, item);
                buf.extend_from_slice(if buf.is_empty() { &b[self.head_written..] } else { b });
            }
            w.write(buf)
        })
    }

    fn consume(&mut self, key: usize, log: &mut BroadcastLog, mut written: usize) {
        while written > 0 {
            let mut walk = self.walk(log);
            let Some(item) = self.step(key, log, &mut walk) else { return };
            let left = self.bytes(log, item).len() - self.head_written;
            if written < left {
                self.head_written += written;
                return;
            }
            written -= left;
            self.head_written = 0;
            match item {
                Item::Own(_) => {
                    if let Some((_, c, memory)) = self.own.pop_front() {
                        self.own_bytes -= c.as_slice().len();
                        self.own_memory -= memory as usize;
                    }
                }
                Item::Log(seq) => {
                    self.log_next = seq + 1;
                    log.release(seq);
                }
            }
        }
    }

    /// Drops everything not yet started. A frame already partly written stays, or the
    /// peer would see half a frame followed by the next one.
    pub fn drop_unstarted(&mut self, key: usize, log: &mut BroadcastLog) {
        let mut begun = None;
        let head_written = self.head_written;
        if head_written > 0 {
            let mut walk = self.walk(log);
            match self.step(key, log, &mut walk) {
                Some(Item::Own(_)) => begun = self.own.pop_front().map(|(_, c, _)| c),
                Some(Item::Log(seq)) => {
                    // A copy, so the log entry need not wait for this connection.
                    begun = Some(Chunk::Owned(log.entry(seq).frame.to_vec()));
                    self.log_next = seq + 1;
                    log.release(seq);
                }
                None => {}
            }
        }
        self.discard(key, log);
        if let Some(c) = begun {
            self.own_bytes = c.as_slice().len();
            let memory = chunk_memory(&c);
            self.own_memory = memory as usize;
            self.own.push_back((0, c, memory));
            self.head_written = head_written;
        }
    }

    /// Gives up everything owed (the connection is going away).
    pub fn discard(&mut self, key: usize, log: &mut BroadcastLog) {
        let mut seq = self.log_next;
        loop {
            // Releasing may pop entries nobody else owes from the front.
            seq = seq.max(log.first);
            if seq >= self.log_end {
                break;
            }
            if log.entry(seq).except != Some(key) {
                log.release(seq);
            }
            seq += 1;
        }
        self.log_next = self.log_end;
        self.own.clear();
        self.own_bytes = 0;
        self.own_memory = 0;
        self.head_written = 0;
        self.release_if_idle();
    }

    /// Everything not yet written, as the peer would get it (from the middle of a
    /// frame if a write stopped there): a hand-over carries queues as these bytes.
    pub fn pending_bytes(&self, key: usize, log: &BroadcastLog) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len(log));
        let mut walk = self.walk(log);
        let mut skip = self.head_written;
        while let Some(item) = self.step(key, log, &mut walk) {
            out.extend_from_slice(&self.bytes(log, item)[skip..]);
            skip = 0;
        }
        out
    }

    /// Whether this queue owes log entry `seq` (for invariant checks).
    pub fn owes(&self, key: usize, seq: u64, except: Option<usize>) -> bool {
        (self.log_next..self.log_end).contains(&seq) && except != Some(key)
    }

    /// An idle connection holds no heap memory for its queue: thousands of idle
    /// clients each keeping a ring buffer would dominate the footprint.
    fn release_if_idle(&mut self) {
        if self.own.is_empty() && self.own.capacity() > 0 {
            self.own = VecDeque::new();
        }
    }
}

/// A `Write` that appends into an `OutQueue`, for code (tungstenite, response
/// builders) that wants to write rather than push chunks.
pub struct QueueWriter<'a>(pub &'a mut OutQueue);

impl Write for QueueWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.push(Chunk::Owned(buf.to_vec()));
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most `cap` bytes per call and refuses after `calls` calls, like a
    /// socket whose send buffer fills up.
    struct Trickle {
        got: Vec<u8>,
        cap: usize,
        calls: usize,
    }
    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.calls == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls -= 1;
            let n = buf.len().min(self.cap);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn sink() -> Trickle {
        Trickle { got: vec![], cap: usize::MAX, calls: usize::MAX }
    }

    #[test]
    fn a_shared_frame_counts_by_its_share_and_an_owned_one_whole() {
        let entry = std::mem::size_of::<(u64, Chunk, u32)>();
        let hello: Rc<[u8]> = Rc::from(vec![b'x'; 10_000]);
        let mut qs: Vec<OutQueue> = (0..4).map(|_| OutQueue::new()).collect();
        for q in &mut qs {
            q.push(Chunk::Shared(hello.clone()));
        }
        // Queued while 2, 3, 4 and 5 references were alive (the first one is ours).
        let counted: usize = qs.iter().map(OutQueue::own_memory).sum();
        assert_eq!(counted, 4 * entry + 10_000 / 2 + 10_000 / 3 + 10_000 / 4 + 10_000 / 5);
        assert!(qs.iter().all(|q| q.own_bytes() == 10_000), "the backlog is still the whole frame");
        let mut q = OutQueue::new();
        q.push(Chunk::Owned(vec![0; 300]));
        q.push(Chunk::Static(b"ack"));
        assert_eq!(q.own_memory(), 2 * entry + 300);
        let mut log = BroadcastLog::new();
        q.flush_to(0, &mut log, &mut Vec::new(), usize::MAX).unwrap();
        assert_eq!(q.own_memory(), 0);
    }

    fn queue_of(parts: &[&'static [u8]]) -> OutQueue {
        let mut q = OutQueue::new();
        for p in parts {
            q.push(Chunk::Static(p));
        }
        q
    }

    /// Appends `frame` for the queues at `to` (by index = key), except `except`.
    fn broadcast(log: &mut BroadcastLog, qs: &mut [OutQueue], frame: &[u8], except: Option<usize>) {
        let seq = log.append(Rc::from(frame), except);
        let mut n = 0;
        for (key, q) in qs.iter_mut().enumerate() {
            if Some(key) != except {
                q.deliver(seq);
                n += 1;
            }
        }
        log.seal(seq, n);
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut log = BroadcastLog::new();
        let mut q = queue_of(&[b"hello ", b"big ", b"world"]);
        let mut w = Trickle { got: vec![], cap: 4, calls: 2 };
        assert_eq!(q.flush_to(0, &mut log, &mut w, usize::MAX).unwrap(), (Flush::Blocked, 6));
        // The default `write_vectored` writes one slice per call: "hell", then "o ".
        assert_eq!(q.len(&log), 15 - 6);
        w.calls = 100;
        assert_eq!(q.flush_to(0, &mut log, &mut w, usize::MAX).unwrap(), (Flush::Done, 9));
        assert_eq!(w.got, b"hello big world");
        assert!(q.is_empty());
    }

    /// Counts the calls a flush makes, taking up to `cap` bytes each.
    struct Calls {
        got: Vec<u8>,
        cap: usize,
        calls: usize,
    }
    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            let n = buf.len().min(self.cap);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.cap - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.cap {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_storm_of_small_frames_leaves_in_few_large_writes_in_order() {
        let mut log = BroadcastLog::new();
        let mut qs = vec![OutQueue::new()];
        let mut expected = Vec::new();
        for i in 0..3000 {
            let f = format!("{{\"event\":\"join\",\"username\":\"u{i}\"}}");
            expected.extend_from_slice(f.as_bytes());
            broadcast(&mut log, &mut qs, f.as_bytes(), None);
        }
        // Partial writes of an odd size: frames split across writes still come whole.
        let mut w = Calls { got: vec![], cap: 40_001, calls: 0 };
        assert_eq!(qs[0].flush_to(0, &mut log, &mut w, usize::MAX).unwrap().0, Flush::Done);
        assert_eq!(w.got, expected);
        // ~110 KB: 3 writes of at most 40 KB, where 64 frames a writev took 47.
        assert!(w.calls <= 4, "{} writes", w.calls);
        assert_eq!(log.pending().count(), 0, "every entry released");
        // A short queue goes as before, one vectored write.
        let mut q = queue_of(&[b"hello ", b"world"]);
        let mut w = Calls { got: vec![], cap: usize::MAX, calls: 0 };
        q.flush_to(0, &mut log, &mut w, usize::MAX).unwrap();
        assert_eq!((w.got.as_slice(), w.calls), (&b"hello world"[..], 1));
    }

    #[test]
    fn budget_stops_a_flush_early() {
        let mut log = BroadcastLog::new();
        let mut q = queue_of(&[b"aaaa", b"bbbb", b"cccc"]);
        let mut w = Trickle { got: vec![], cap: 4, calls: 100 };
        assert_eq!(q.flush_to(0, &mut log, &mut w, 4).unwrap().0, Flush::Budget);
        assert_eq!(w.got, b"aaaa");
        assert_eq!(q.flush_to(0, &mut log, &mut w, 100).unwrap().0, Flush::Done);
        assert_eq!(w.got, b"aaaabbbbcccc");
    }

    #[test]
    fn drop_unstarted_keeps_the_half_written_chunk() {
        let mut log = BroadcastLog::new();
        let mut q = queue_of(&[b"frame-one", b"frame-two"]);
        let mut w = Trickle { got: vec![], cap: 3, calls: 1 };
        q.flush_to(0, &mut log, &mut w, usize::MAX).unwrap();
        q.drop_unstarted(0, &mut log);
        assert_eq!(q.len(&log), 6);
        w.calls = 10;
        w.cap = 100;
        q.flush_to(0, &mut log, &mut w, usize::MAX).unwrap();
        assert_eq!(w.got, b"frame-one");
    }

    #[test]
    fn a_half_written_broadcast_survives_drop_unstarted_and_frees_the_log() {
        let mut log = BroadcastLog::new();
        let mut qs = [OutQueue::new(), OutQueue::new()];
        broadcast(&mut log, &mut qs, b"first", None);
        broadcast(&mut log, &mut qs, b"second", None);
        let mut w = Trickle { got: vec![], cap: 2, calls: 1 };
        qs[0].flush_to(0, &mut log, &mut w, usize::MAX).unwrap();
        qs[0].drop_unstarted(0, &mut log);
        assert_eq!(qs[0].len(&log), 3);
        // Queue 1 still owes both; the log keeps them for it alone.
        assert_eq!(log.pending().map(|(_, _, p)| p).collect::<Vec<_>>(), [1, 1]);
        qs[1].flush_to(1, &mut log, &mut sink(), usize::MAX).unwrap();
        assert!(log.is_empty());
        w.calls = 10;
        w.cap = 100;
        qs[0].flush_to(0, &mut log, &mut w, usize::MAX).unwrap();
        assert_eq!(w.got, b"first");
    }

    #[test]
    fn a_broadcast_is_stored_once_and_leaves_with_its_last_recipient() {
        let mut log = BroadcastLog::new();
        let mut qs: Vec<OutQueue> = (0..3).map(|_| OutQueue::new()).collect();
        broadcast(&mut log, &mut qs, b"hello", Some(0));
        assert_eq!((log.len(), log.bytes()), (1, 5));
        assert!(qs[0].is_empty(), "the sender is not sent its own message");
        let mut w = sink();
        qs[1].flush_to(1, &mut log, &mut w, usize::MAX).unwrap();
        assert_eq!(log.len(), 1, "queue 2 still owes it");
        qs[2].flush_to(2, &mut log, &mut w, usize::MAX).unwrap();
        assert!(log.is_empty());
        assert_eq!(w.got, b"hellohello");
    }

    #[test]
    fn own_frames_keep_their_place_among_broadcasts() {
        let mut log = BroadcastLog::new();
        let mut qs = [OutQueue::new(), OutQueue::new()];
        broadcast(&mut log, &mut qs, b"[b1]", None);
        qs[0].push(Chunk::Static(b"[ack]"));
        broadcast(&mut log, &mut qs, b"[b2]", Some(0));
        broadcast(&mut log, &mut qs, b"[b3]", None);
        qs[0].push(Chunk::Static(b"[pong]"));
        let mut w = sink();
        qs[0].flush_to(0, &mut log, &mut w, usize::MAX).unwrap();
        assert_eq!(w.got, b"[b1][ack][b3][pong]");
        let mut w = sink();
        qs[1].flush_to(1, &mut log, &mut w, usize::MAX).unwrap();
        assert_eq!(w.got, b"[b1][b2][b3]");
        assert!(log.is_empty());
    }

    #[test]
    fn a_late_joiner_gets_only_what_was_broadcast_after_it_joined() {
        let mut log = BroadcastLog::new();
        let mut early = [OutQueue::new()];
        broadcast(&mut log, &mut early, b"before", None);
        let mut both = [std::mem::take(&mut early[0]), OutQueue::new()];
        broadcast(&mut log, &mut both, b"after", None);
        assert_eq!(both[1].len(&log), 5);
        let mut w = sink();
        both[1].flush_to(1, &mut log, &mut w, usize::MAX).unwrap();
        assert_eq!(w.got, b"after");
        both[0].flush_to(0, &mut log, &mut sink(), usize::MAX).unwrap();
        assert!(log.is_empty());
    }

    #[test]
    fn discarding_a_queue_releases_what_it_owed() {
        let mut log = BroadcastLog::new();
        let mut qs = [OutQueue::new(), OutQueue::new(), OutQueue::new()];
        broadcast(&mut log, &mut qs, b"x", Some(1));
        broadcast(&mut log, &mut qs, b"y", None);
        broadcast(&mut log, &mut qs, b"z", Some(2));
        for (key, q) in qs.iter_mut().enumerate() {
            assert!(!q.is_empty());
            q.discard(key, &mut log);
            assert!(q.is_empty());
            assert_eq!(q.len(&log), 0);
        }
        assert!(log.is_empty());
    }

    #[test]
    fn pending_bytes_are_what_a_flush_would_still_write() {
        let mut log = BroadcastLog::new();
        let mut qs = [OutQueue::new(), OutQueue::new()];
        broadcast(&mut log, &mut qs, b"[b1]", None);
        qs[0].push(Chunk::Static(b"[ack]"));
        broadcast(&mut log, &mut qs, b"[b2]", Some(0));
        broadcast(&mut log, &mut qs, b"[b3]", None);
        let mut w = Trickle { got: vec![], cap: 2, calls: 1 };
        qs[0].flush_to(0, &mut log, &mut w, usize::MAX).unwrap();
        let pending = qs[0].pending_bytes(0, &log);
        assert_eq!(pending, b"1][ack][b3]");
        // `len` also counts the entry this queue is the exception to: an upper bound.
        assert!(pending.len() <= qs[0].len(&log));
        let mut rest = sink();
        qs[0].flush_to(0, &mut log, &mut rest, usize::MAX).unwrap();
        assert_eq!(rest.got, pending);
        assert!(qs[0].pending_bytes(0, &log).is_empty());
        assert_eq!(qs[1].pending_bytes(1, &log), b"[b1][b2][b3]");
    }

    #[test]
    fn length_counts_owed_broadcasts_and_own_frames() {
        let mut log = BroadcastLog::new();
        let mut qs = [OutQueue::new(), OutQueue::new()];
        broadcast(&mut log, &mut qs, b"12345", None);
        qs[0].push(Chunk::Owned(b"abc".to_vec()));
        broadcast(&mut log, &mut qs, b"1234567", None);
        assert_eq!(qs[0].len(&log), 15);
        assert_eq!(qs[1].len(&log), 12);
        let mut w = Trickle { got: vec![], cap: 3, calls: 1 };
        qs[0].flush_to(0, &mut log, &mut w, usize::MAX).unwrap();
        assert_eq!(qs[0].len(&log), 12);
        // Queue 1 writes both broadcasts; both stay for queue 0's sake.
        qs[1].flush_to(1, &mut log, &mut sink(), usize::MAX).unwrap();
        assert_eq!(qs[0].len(&log), 12);
        assert_eq!(log.len(), 2);
        w.cap = 100;
        w.calls = 1;
        // One slice per call: the rest of the first broadcast.
        qs[0].flush_to(0, &mut log, &mut w, usize::MAX).unwrap();
        assert_eq!((qs[0].len(&log), log.len()), (10, 1));
    }
}
