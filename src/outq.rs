//! The per-connection write queue: shared, already-encoded chunks plus how far the
//! head chunk has been written. No syscalls here except through the `Write` handed in.
//!
//! A broadcast frame is encoded once and pushed as the same `Rc<[u8]>` into every
//! recipient's queue, so fan-out costs a pointer copy per recipient, not an encoding.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

/// Bytes waiting to go out. `Static` avoids an allocation for fixed frames (acks).
#[derive(Clone, Debug)]
pub enum Chunk {
    Static(&'static [u8]),
    Shared(Rc<[u8]>),
    Owned(Vec<u8>),
}

impl Chunk {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Static(s) => s,
            Chunk::Shared(s) => s,
            Chunk::Owned(v) => v,
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

#[derive(Debug, Default)]
pub struct OutQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the head chunk already written (Redis calls it `sentlen`).
    head_written: usize,
    queued: usize,
}

impl OutQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, chunk: Chunk) {
        let len = chunk.as_slice().len();
        if len == 0 {
            return;
        }
        self.queued += len;
        self.chunks.push_back(chunk);
    }

    /// Bytes not yet written.
    pub fn len(&self) -> usize {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Drops everything not yet started. A chunk already partly written stays, or the
    /// peer would see half a frame followed by the next one.
    pub fn drop_unstarted(&mut self) {
        if self.head_written > 0 {
            let head = self.chunks.pop_front().expect("head_written > 0 implies a head");
            self.chunks.clear();
            self.queued = head.as_slice().len() - self.head_written;
            self.chunks.push_back(head);
        } else {
            self.chunks.clear();
            self.queued = 0;
        }
        self.release_if_idle();
    }

    /// Writes as much as the writer takes, up to `budget` bytes, coalescing chunks
    /// into one vectored write per call.
    pub fn flush_to<W: Write>(&mut self, w: &mut W, budget: usize) -> io::Result<Flush> {
        let mut sent = 0usize;
        while !self.chunks.is_empty() {
            if sent >= budget {
                return Ok(Flush::Budget);
            }
            let mut slices: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, c) in self.chunks.iter().take(MAX_IOV).enumerate() {
                let s = c.as_slice();
                slices[i] = IoSlice::new(if i == 0 { &s[self.head_written..] } else { s });
                n += 1;
            }
            let written = match w.write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flush::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            sent += written;
            self.consume(written);
        }
        self.release_if_idle();
        Ok(Flush::Done)
    }

    fn consume(&mut self, mut written: usize) {
        self.queued -= written;
        while written > 0 {
            let head_len = self.chunks[0].as_slice().len() - self.head_written;
            if written >= head_len {
                written -= head_len;
                self.head_written = 0;
                self.chunks.pop_front();
            } else {
                self.head_written += written;
                written = 0;
            }
        }
    }

    /// An idle connection should hold no heap memory for its queue: thousands of idle
    /// clients each keeping a grown ring buffer would dominate the footprint.
    fn release_if_idle(&mut self) {
        if self.chunks.is_empty() && self.chunks.capacity() > 8 {
            self.chunks = VecDeque::new();
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

    fn queue_of(parts: &[&'static [u8]]) -> OutQueue {
        let mut q = OutQueue::new();
        for p in parts {
            q.push(Chunk::Static(p));
        }
        q
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut q = queue_of(&[b"hello ", b"big ", b"world"]);
        let mut w = Trickle { got: vec![], cap: 4, calls: 2 };
        assert_eq!(q.flush_to(&mut w, usize::MAX).unwrap(), Flush::Blocked);
        // The default `write_vectored` writes one slice per call: "hell", then "o ".
        assert_eq!(q.len(), 15 - 6);
        w.calls = 100;
        assert_eq!(q.flush_to(&mut w, usize::MAX).unwrap(), Flush::Done);
        assert_eq!(w.got, b"hello big world");
        assert!(q.is_empty());
    }

    #[test]
    fn budget_stops_a_flush_early() {
        let mut q = queue_of(&[b"aaaa", b"bbbb", b"cccc"]);
        let mut w = Trickle { got: vec![], cap: 4, calls: 100 };
        assert_eq!(q.flush_to(&mut w, 4).unwrap(), Flush::Budget);
        assert_eq!(w.got, b"aaaa");
        assert_eq!(q.flush_to(&mut w, 100).unwrap(), Flush::Done);
        assert_eq!(w.got, b"aaaabbbbcccc");
    }

    #[test]
    fn drop_unstarted_keeps_the_half_written_chunk() {
        let mut q = queue_of(&[b"frame-one", b"frame-two"]);
        let mut w = Trickle { got: vec![], cap: 3, calls: 1 };
        q.flush_to(&mut w, usize::MAX).unwrap();
        q.drop_unstarted();
        assert_eq!(q.len(), 6);
        w.calls = 10;
        w.cap = 100;
        q.flush_to(&mut w, usize::MAX).unwrap();
        assert_eq!(w.got, b"frame-one");
    }

    #[test]
    fn shared_chunks_are_not_copied() {
        let frame: Rc<[u8]> = Rc::from(&b"broadcast"[..]);
        let mut a = OutQueue::new();
        let mut b = OutQueue::new();
        a.push(Chunk::Shared(frame.clone()));
        b.push(Chunk::Shared(frame.clone()));
        assert_eq!(Rc::strong_count(&frame), 3);
        let mut w = Trickle { got: vec![], cap: 100, calls: 10 };
        a.flush_to(&mut w, usize::MAX).unwrap();
        assert_eq!(Rc::strong_count(&frame), 2);
    }
}
