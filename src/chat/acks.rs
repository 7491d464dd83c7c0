//! Senders' acks held until their message is durable. A message is broadcast the
//! moment it arrives, but its sender hears `{"status": true}` only once the storage
//! writer has committed it (CONTRACT "Crashes and acks"): the ack is a promise that a
//! crash will not lose it. Commits finish in id order, so one queue in id order
//! serves every sender; an ack that needs no commit (an error, a refusal) but
//! follows a held one of the same socket queues behind it, so each socket hears its
//! acks in the order it sent. No IO, no clock: the chat core feeds it.

use super::ConnId;
use crate::outq::Chunk;
use std::collections::{HashMap, VecDeque};

/// Acks one socket may have waiting on the disk. Past it the socket is not read
/// until some are released: a sender faster than the disk is slowed by TCP, and
/// what the server holds for it stays bounded.
pub const MAX_UNACKED: u32 = 1024;

/// What one held ack costs: its entry and an ack frame's allocation (`{"status":
/// true, ...}` with an id and a ref is under 64 bytes).
pub const HELD_ACK_BYTES: usize = std::mem::size_of::<Held>() + 64;

struct Held {
    /// The message whose commit releases this ack; `None`: an ack that only waits
    /// for the ones before it.
    id: Option<u64>,
    conn: ConnId,
    frame: Chunk,
}

#[derive(Default)]
pub struct Acks {
    held: VecDeque<Held>,
}

/// What a commit report does to a held ack.
pub enum Release {
    /// The message is durable (or the ack never waited for one): send `frame`.
    Send(ConnId, Chunk),
    /// The commit failed: the message is not kept; its sender must hear so.
    Failed(ConnId),
}

impl Acks {
    /// Queues an ack for `conn`: `id` is the message it waits for, `None` for one
    /// that waits only behind an earlier held ack of the same socket.
    pub fn hold(&mut self, conn: ConnId, id: Option<u64>, frame: Chunk) {
        self.held.push_back(Held { id, conn, frame });
    }

    /// The writer committed (`stored`) or failed every message up to `through`:
    /// every ack that waited for one of them goes, with those queued behind it.
    pub fn release(&mut self, through: u64, stored: bool, mut out: impl FnMut(Release)) {
        while let Some(front) = self.held.front() {
            if front.id.is_some_and(|id| id > through) {
                break;
            }
            let h = self.held.pop_front().expect("front exists");
            out(match h.id {
                Some(_) if !stored => Release::Failed(h.conn),
                _ => Release::Send(h.conn, h.frame),
            });
        }
    }

    /// A socket left: its acks have nobody to go to. O(held), and only for a socket
    /// that had some.
    pub fn forget(&mut self, conn: ConnId) {
        self.held.retain(|h| h.conn != conn);
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// Cluster mode: a message's ack comes back with its event from Redis (or its
/// refusal from the cluster core), not from a commit here. An ack that needs nothing
/// (an invalid or rate-limited message) waits behind the socket's messages still in
/// flight, so the socket hears its acks in the order it sent. Outcomes come back in
/// the order a socket's messages went (one command link, run in order, and the
/// cluster core keeps a refusal behind an ack it still owes).
#[derive(Default)]
pub struct InFlight {
    /// Per socket with something in flight: `None` a message still out, `Some` an
    /// ack waiting behind it.
    queues: HashMap<ConnId, VecDeque<Option<Chunk>>>,
}

impl InFlight {
    /// `conn` published a message: its outcome is owed.
    pub fn sent(&mut self, conn: ConnId) {
        self.queues.entry(conn).or_default().push_back(None);
    }

    /// An ack that needs nothing: back if it may go now, else held.
    pub fn hold(&mut self, conn: ConnId, frame: Chunk) -> Option<Chunk> {
        match self.queues.get_mut(&conn) {
            Some(q) => {
                q.push_back(Some(frame));
                None
            }
            None => Some(frame),
        }
    }

    /// The outcome of `conn`'s oldest message in flight: `frame`, then the acks
    /// that waited behind it. Returns how many entries that released (each counted
    /// in the member's `unacked`).
    pub fn settle(&mut self, conn: ConnId, frame: Chunk, mut out: impl FnMut(Chunk)) -> u32 {
        out(frame);
        let Some(q) = self.queues.get_mut(&conn) else { return 0 };
        let mut released = 0;
        if q.front().is_some_and(Option::is_none) {
            q.pop_front();
            released += 1;
        }
        while let Some(Some(_)) = q.front() {
            if let Some(Some(held)) = q.pop_front() {
                out(held);
            }
            released += 1;
        }
        if q.is_empty() {
            self.queues.remove(&conn);
        }
        released
    }

    /// A socket left: nothing is owed to it.
    pub fn forget(&mut self, conn: ConnId) {
        self.queues.remove(&conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(b: &'static [u8]) -> Chunk {
        Chunk::Static(b)
    }

    fn released(acks: &mut Acks, through: u64, stored: bool) -> Vec<(ConnId, Option<&'static [u8]>)> {
        let mut out = Vec::new();
        acks.release(through, stored, |r| match r {
            Release::Send(c, Chunk::Static(b)) => out.push((c, Some(b))),
            Release::Send(c, _) => out.push((c, None)),
            Release::Failed(c) => out.push((c, None)),
        });
        out
    }

    #[test]
    fn acks_go_in_commit_order_and_a_refusal_waits_behind_its_sockets_held_ack() {
        let mut a = Acks::default();
        a.hold(1, Some(10), frame(b"ok10"));
        a.hold(2, Some(11), frame(b"ok11"));
        a.hold(1, None, frame(b"err"));
        a.hold(1, Some(12), frame(b"ok12"));
        assert!(released(&mut a, 9, true).is_empty(), "nothing durable yet");
        assert_eq!(
            released(&mut a, 11, true),
            [(1, Some(&b"ok10"[..])), (2, Some(&b"ok11"[..])), (1, Some(&b"err"[..]))]
        );
        assert_eq!(a.len(), 1);
        assert_eq!(released(&mut a, 12, false), [(1, None)], "a failed commit is reported, not acked");
        assert!(a.is_empty());
    }

    /// Found by the cluster fuzz world: in cluster mode an empty message's refusal
    /// went out at once, ahead of the ack of the message sent before it (which comes
    /// back with its event from Redis).
    #[test]
    fn in_flight_a_refusal_waits_behind_the_sockets_messages_still_out() {
        let mut f = InFlight::default();
        assert!(f.hold(1, frame(b"now")).is_some(), "nothing in flight: at once");
        f.sent(1);
        assert!(f.hold(1, frame(b"empty")).is_none());
        f.sent(1);
        assert!(f.hold(1, frame(b"long")).is_none());
        assert!(f.hold(2, frame(b"other")).is_some(), "another socket does not wait");
        let mut out = Vec::new();
        let collect = |out: &mut Vec<&'static [u8]>, c: Chunk| match c {
            Chunk::Static(b) => out.push(b),
            _ => unreachable!(),
        };
        assert_eq!(f.settle(1, frame(b"ok1"), |c| collect(&mut out, c)), 2);
        assert_eq!(out, [&b"ok1"[..], b"empty"]);
        out.clear();
        assert_eq!(f.settle(1, frame(b"ok2"), |c| collect(&mut out, c)), 2);
        assert_eq!(out, [&b"ok2"[..], b"long"]);
        assert!(f.hold(1, frame(b"now")).is_some(), "all settled");
    }

    #[test]
    fn a_socket_that_left_gets_nothing() {
        let mut a = Acks::default();
        a.hold(3, Some(1), frame(b"a"));
        a.hold(4, Some(2), frame(b"b"));
        a.forget(3);
        assert_eq!(released(&mut a, 2, true), [(4, Some(&b"b"[..]))]);
    }
}
