//! The room: who is connected, in connect order, and the per-socket message budget.
//! Knows nothing of sockets or sessions' storage; `ConnId`s are opaque to it.

use super::presence::Mode;
use super::session::SessionKey;
use super::ConnId;
use std::time::Instant;

/// A token bucket: `rate` tokens a second up to `burst`. Time is passed in.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f32,
    last: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl Bucket {
    pub fn full(limit: RateLimit, now: Instant) -> Self {
        Bucket { tokens: limit.burst.max(1) as f32, last: now }
    }

    /// Tokens left and when they were counted (a hand-over carries these).
    pub fn parts(&self) -> (f32, Instant) {
        (self.tokens, self.last)
    }

    pub fn from_parts(tokens: f32, last: Instant) -> Self {
        Bucket { tokens, last }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, limit: RateLimit, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        let cap = limit.burst.max(1) as f32;
        self.tokens = (self.tokens + elapsed * limit.per_second as f32).min(cap);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
pub struct Member {
    /// The session the socket was opened with; the user's name lives there.
    pub session: SessionKey,
    /// `None` when this socket is exempt from the message rate limit.
    pub bucket: Option<Bucket>,
    /// Speaks protocol v2 (message ids, history).
    pub v2: bool,
    /// Acks of this socket held until their messages are durable (`acks.rs`).
    pub unacked: u32,
    /// The next socket opened with the same session (`NO_CONN` at the end): each
    /// session's sockets are a list threaded through the room, 4 bytes a member.
    next: u32,
    /// How it hears of joins and leaves (`presence.rs`).
    pub presence: Mode,
}

const NO_CONN: u32 = u32::MAX;

impl Member {
    /// A member whose session's other sockets start at `next`.
    pub fn new(session: SessionKey, bucket: Option<Bucket>, v2: bool, next: Option<ConnId>, presence: Mode) -> Self {
        let mut m = Member { session, bucket, v2, unacked: 0, next: NO_CONN, presence };
        m.set_next(next);
        m
    }

    pub fn next(&self) -> Option<ConnId> {
        (self.next != NO_CONN).then_some(self.next as ConnId)
    }

    pub fn set_next(&mut self, next: Option<ConnId>) {
        self.next = next.map_or(NO_CONN, |c| u32::try_from(c).expect("connection ids fit in u32"));
    }
}

#[derive(Default)]
pub struct Room {
    /// Connect order: the broadcast iterates this, and /api/online reports it.
    order: Vec<ConnId>,
    /// Indexed by connection id: ids are the server's slab keys, dense and reused,
    /// so a vector costs less per member than a hash map (measured: ~55 B vs ~105 B
    /// per member at 10,000).
    members: Vec<Option<Member>>,
    /// The members in `Mode::Each`, in connect order: a join or leave event goes to
    /// these only, so a room of batch subscribers costs nothing per event.
    eventful: Vec<ConnId>,
    /// Members in `Mode::Batch` and `Mode::Count`.
    batched: usize,
    counted: usize,
}

impl Room {
    pub fn members(&self) -> &[ConnId] {
        &self.order
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// The members that get each join and leave as its own event.
    pub fn eventful(&self) -> &[ConnId] {
        &self.eventful
    }

    /// How many members subscribe to diffs and to counts.
    pub fn subscribers(&self) -> (usize, usize) {
        (self.batched, self.counted)
    }

    /// Moves a member to another presence mode; false if it is not in the room.
    pub fn set_presence(&mut self, conn: ConnId, mode: Mode) -> bool {
        let Some(old) = self.get(conn).map(|m| m.presence) else { return false };
        if old == mode {
            return true;
        }
        self.unlist(conn, old);
        self.list(conn, mode);
        if let Some(m) = self.get_mut(conn) {
            m.presence = mode;
        }
        true
    }

    fn list(&mut self, conn: ConnId, mode: Mode) {
        match mode {
            Mode::Each => self.eventful.push(conn),
            Mode::Batch => self.batched += 1,
            Mode::Count => self.counted += 1,
        }
    }

    fn unlist(&mut self, conn: ConnId, mode: Mode) {
        match mode {
            // From the back: a subscriber joins as `Each` and moves a moment later.
            Mode::Each => {
                if let Some(pos) = self.eventful.iter().rposition(|&c| c == conn) {
                    self.eventful.remove(pos);
                }
            }
            Mode::Batch => self.batched -= 1,
            Mode::Count => self.counted -= 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn get(&self, conn: ConnId) -> Option<&Member> {
        self.members.get(conn)?.as_ref()
    }

    pub fn get_mut(&mut self, conn: ConnId) -> Option<&mut Member> {
        self.members.get_mut(conn)?.as_mut()
    }

    /// Members in connect order.
    pub fn iter(&self) -> impl Iterator<Item = &Member> + '_ {
        self.order.iter().filter_map(move |&c| self.get(c))
    }

    /// Adds a member; false if the connection is already in. One socket per user
    /// is the caller's rule (the sessions know each user's socket).
    pub fn insert(&mut self, conn: ConnId, m: Member) -> bool {
        if self.get(conn).is_some() {
            return false;
        }
        if self.members.len() <= conn {
            self.members.resize_with(conn + 1, || None);
        }
        self.list(conn, m.presence);
        self.members[conn] = Some(m);
        self.order.push(conn);
        true
    }

    pub fn remove(&mut self, conn: ConnId) -> Option<Member> {
        let m = self.members.get_mut(conn)?.take()?;
        self.unlist(conn, m.presence);
        // O(members), like the leave broadcast that always follows a removal.
        if let Some(pos) = self.order.iter().position(|&c| c == conn) {
            self.order.remove(pos);
        }
        Some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let limit = RateLimit { per_second: 10, burst: 3 };
        let t0 = Instant::now();
        let mut b = Bucket::full(limit, t0);
        assert!(b.take(limit, t0));
        assert!(b.take(limit, t0));
        assert!(b.take(limit, t0));
        assert!(!b.take(limit, t0));
        assert!(b.take(limit, t0 + Duration::from_millis(100)));
        assert!(!b.take(limit, t0 + Duration::from_millis(100)));
    }

    #[test]
    fn order_is_connect_order_and_a_connection_joins_once() {
        let mut r = Room::default();
        let k = SessionKey { key: 0, generation: 1 };
        let m = |generation: u64| Member::new(SessionKey { generation, ..k }, None, false, None, Mode::Each);
        assert!(r.insert(5, m(1)));
        assert!(r.insert(2, m(2)));
        assert!(!r.insert(5, m(9)));
        assert!(r.insert(7, m(3)));
        assert_eq!(r.iter().map(|m| m.session.generation).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(r.remove(2).map(|m| m.session.generation), Some(2));
        assert_eq!(r.members(), &[5, 7]);
        assert!(r.get(2).is_none() && r.get(5).is_some());
    }

    #[test]
    fn only_each_mode_members_are_eventful() {
        let mut r = Room::default();
        let k = SessionKey { key: 0, generation: 1 };
        let m = || Member::new(k, None, true, None, Mode::Each);
        for c in 0..4 {
            r.insert(c, m());
        }
        assert!(r.set_presence(1, Mode::Batch) && r.set_presence(3, Mode::Count));
        assert_eq!(r.eventful(), &[0, 2]);
        assert_eq!(r.subscribers(), (1, 1));
        r.remove(1);
        r.remove(2);
        assert_eq!(r.eventful(), &[0]);
        assert_eq!(r.subscribers(), (0, 1));
        assert!(!r.set_presence(9, Mode::Batch));
    }
}
