//! One link to Redis as bytes, and the pace of reconnecting. The reactor owns the
//! socket; a `Link` holds the reply being parsed (the parser keeps its place between
//! reads) and what is queued to go out, so the cluster core never touches a socket.

use super::resp::{self, Value};
use std::time::Duration;

/// Which of the node's two connections to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkId {
    /// Commands, pipelined; replies come back in order.
    Cmd,
    /// Subscribed to the room's channel.
    Sub,
    /// Sentinel mode: to one sentinel, asked for the primary and then watching for
    /// `+switch-master`.
    Sentinel,
    /// Sentinel mode: to sentinel `i` of the URL, watching failovers start.
    Watch(usize),
}

/// Elements a given-up link frees per turn.
const SHED_PER_TURN: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct Link {
    input: resp::Parser,
    out: Vec<u8>,
}

impl Link {
    pub fn queue<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        resp::encode(&mut self.out, args);
    }

    /// Takes in bytes from the socket; returns every reply they complete. A reply
    /// split across reads waits for the rest, parsed as far as it came (its size is
    /// bounded by `resp`), so each read costs what it brought.
    pub fn received(&mut self, bytes: &[u8]) -> Result<Vec<Value>, String> {
        let mut values = Vec::new();
        self.input.feed_all(bytes, &mut values).map_err(|e| e.to_string())?;
        Ok(values)
    }

    /// A link given up is dropped now, or, if it holds a big unfinished reply, a
    /// slice a turn (`shed`): freeing millions of elements at once stalls the loop.
    pub fn is_heavy(&self) -> bool {
        self.input.held() > SHED_PER_TURN
    }

    /// Frees some of what a given-up link holds; true once it holds nothing.
    pub fn shed(&mut self) -> bool {
        self.input.shed(SHED_PER_TURN)
    }

    /// Bytes parsed since the link opened.
    pub fn examined(&self) -> u64 {
        self.input.examined()
    }

    /// What waits to be written.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// `n` bytes of `output` were written.
    pub fn consumed(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }
}

/// Reconnect delays: from `MIN`, doubling up to `MAX`, so chat is back within ~2 s
/// of Redis (the contract allows 10 s); back to `MIN` once in sync.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const MIN: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(2);

    pub fn new() -> Backoff {
        Backoff { next: Backoff::MIN }
    }

    /// The delay before the next attempt; the one after it is longer.
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Backoff::MAX);
        d
    }

    pub fn reset(&mut self) {
        self.next = Backoff::MIN;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_split_across_reads_comes_out_whole_once() {
        let mut l = Link::default();
        assert_eq!(l.received(b"+OK\r\n:4").unwrap(), [Value::Simple("OK".into())]);
        assert_eq!(l.received(b"2\r").unwrap(), []);
        assert_eq!(l.received(b"\n").unwrap(), [Value::Int(42)]);
        assert!(l.received(b"?garbage\r\n").is_err());
    }

    #[test]
    fn a_big_reply_read_in_small_pieces_is_parsed_once() {
        let mut l = Link::default();
        let n = 50_000;
        let mut reply = format!("*{n}\r\n").into_bytes();
        for _ in 0..n {
            reply.extend_from_slice(b"$6\r\nabcdef\r\n");
        }
        let mut got = Vec::new();
        for chunk in reply.chunks(512) {
            got.extend(l.received(chunk).unwrap());
        }
        assert_eq!(got.len(), 1);
        assert_eq!(l.examined(), reply.len() as u64);
        assert!(l.received(format!("*{}\r\n", resp::MAX_REPLY_ELEMENTS + 1).as_bytes()).is_err());
    }

    #[test]
    fn output_is_consumed_as_written() {
        let mut l = Link::default();
        l.queue(&["PING"]);
        assert_eq!(l.output(), b"*1\r\n$4\r\nPING\r\n");
        l.consumed(4);
        assert_eq!(l.output(), b"$4\r\nPING\r\n");
        l.consumed(100);
        assert!(l.output().is_empty());
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new();
        let steps: Vec<u64> = (0..7).map(|_| b.step().as_millis() as u64).collect();
        assert_eq!(steps, [100, 200, 400, 800, 1600, 2000, 2000]);
        b.reset();
        assert_eq!(b.step(), Backoff::MIN);
    }
}
