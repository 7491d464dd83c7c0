//! The room's history (protocol v2): message ids, the epoch that names this history,
//! and a bounded ring of the newest messages, each with its v2 frame encoded once, for
//! replays after a reconnect and for `/api/history`. No IO: the caller persists what
//! `History::push` is given and restores the ring at start.
//!
//! Ids are handed out only below a durable reservation (`reserved`): the caller
//! writes a high-water mark ahead of use (`wants_reservation`) and reports it back
//! once fsynced (`reserved_through`). After a crash the next id follows the whole
//! reserved block, so an id some client saw live is never given to another message;
//! the skipped ids are a gap, and a resume that would cross it gets a resync.

use std::collections::VecDeque;
use std::rc::Rc;

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: u64,
    /// Server time, Unix milliseconds.
    pub ts: i64,
    pub author: Rc<str>,
    /// `{"id","ts","message","author"}` as a server text frame, shared by every v2
    /// recipient and every replay. The text lives only here: a kept message costs
    /// its frame, not its text twice (the ring is most of a large server's memory).
    pub frame: Rc<[u8]>,
}

impl Entry {
    /// The message as its JSON object: the frame's payload.
    pub fn json(&self) -> &[u8] {
        server_payload(&self.frame)
    }
}

/// The payload of an unmasked server frame (RFC 6455 5.2): after 2 header bytes, and
/// 2 or 8 more for a length of 126 or more.
pub fn server_payload(frame: &[u8]) -> &[u8] {
    let extra = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 2,
        Some(127) => 8,
        _ => 0,
    };
    frame.get(2 + extra..).unwrap_or_default()
}

/// `/api/history` lists an entry as `{"id","ts","message","author"}`, the frame's
/// fields, read back from the frame (a page is at most 500 of them).
impl serde::Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        #[derive(serde::Deserialize)]
        struct Fields<'a> {
            #[serde(borrow)]
            message: std::borrow::Cow<'a, str>,
        }
        let fields: Fields<'_> = serde_json::from_slice(self.json()).map_err(serde::ser::Error::custom)?;
        let mut st = s.serialize_struct("Message", 4)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("ts", &self.ts)?;
        st.serialize_field("message", &fields.message)?;
        st.serialize_field("author", &*self.author)?;
        st.end()
    }
}

/// Ids reserved per durable write: one fsync per this many messages when history is
/// off, and the widest gap a crash leaves.
pub const RESERVE_BLOCK: u64 = 8192;

pub struct History {
    epoch: Box<str>,
    last_id: u64,
    ring: VecDeque<Entry>,
    cap: usize,
    /// The highest id that may be given: durable on disk. `u64::MAX` where ids need
    /// no reservation (cluster mode, where Redis gives them; unit tests).
    reserved: u64,
    /// The highest reservation asked for (it may not be durable yet).
    requested: u64,
    /// Resumes from below this id resync: messages just under it may have been seen
    /// live and then lost in a crash, or the ring jumps over a gap there.
    floor: u64,
}

impl History {
    /// `last_id`: the highest id ever given in this epoch; `cap`: messages kept (0 =
    /// none, and every resume is a resync).
    pub fn new(epoch: &str, last_id: u64, cap: usize) -> Self {
        History {
            epoch: epoch.into(),
            last_id,
            ring: VecDeque::new(),
            cap,
            reserved: u64::MAX,
            requested: u64::MAX,
            floor: 0,
        }
    }

    /// Ids from now on come from durable reservations; `reserved` is the one on disk.
    /// Restored messages end below `last_id` after a crash: the ids in between may
    /// have been seen, so resumes from below it resync.
    pub fn set_reserved(&mut self, reserved: u64) {
        if self.ring.back().is_some_and(|e| e.id < self.last_id) || (self.ring.is_empty() && self.last_id > 0) {
            self.floor = self.floor.max(self.last_id);
        }
        self.reserved = reserved.max(self.last_id);
        self.requested = self.reserved;
    }

    /// A reservation to make durable now (the new high-water mark), when the ids left
    /// run low: asked half a block ahead, so a commit's latency never stalls ids.
    pub fn wants_reservation(&mut self) -> Option<u64> {
        if self.reserved == u64::MAX || self.last_id + RESERVE_BLOCK / 2 <= self.requested {
            return None;
        }
        self.requested = self.last_id + RESERVE_BLOCK;
        Some(self.requested)
    }

    /// A reservation is durable (`ok`), or failed and must be asked again.
    pub fn reserved_through(&mut self, through: u64, ok: bool) {
        if ok {
            self.reserved = self.reserved.max(through);
        } else if self.requested == through {
            self.requested = self.reserved;
        }
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// The highest id that may be given now (`u64::MAX`: no reservation needed).
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// The id the next message gets, or `None` while no durable reservation covers
    /// it (the disk has failed to take the last one).
    pub fn next_id(&mut self) -> Option<u64> {
        if self.last_id >= self.reserved {
            return None;
        }
        self.last_id += 1;
        Some(self.last_id)
    }

    /// Keeps a message (the newest `cap` stay). An id past the one before it (ids
    /// skipped by a crash, restored from disk) raises the resume floor.
    pub fn push(&mut self, entry: Entry) {
        if let Some(back) = self.ring.back() {
            if entry.id > back.id + 1 {
                self.floor = self.floor.max(entry.id - 1);
            }
        }
        self.last_id = self.last_id.max(entry.id);
        if self.cap == 0 {
            return;
        }
        if self.ring.len() == self.cap {
            self.ring.pop_front();
        }
        self.ring.push_back(entry);
    }

    /// Takes out the oldest message kept (a snapshot being applied reuses what the
    /// ring it replaces already holds, and drops the rest a slice at a time).
    pub fn pop_oldest(&mut self) -> Option<Entry> {
        self.ring.pop_front()
    }

    pub fn oldest_id(&self) -> Option<u64> {
        self.ring.front().map(|e| e.id)
    }

    /// Every message after `since`, if the client's history is this one and nothing
    /// after `since` has been dropped; `None` means the client must resync.
    pub fn since(&self, since: u64, epoch: &str) -> Option<impl Iterator<Item = &Entry> + '_> {
        if epoch != &*self.epoch || since > self.last_id {
            return None;
        }
        if since < self.floor && since != self.last_id {
            return None;
        }
        let complete = since == self.last_id || self.ring.front().is_some_and(|first| first.id <= since + 1);
        complete.then(|| self.ring.iter().filter(move |e| e.id > since))
    }

    /// The newest `limit` messages with an id below `before` (all when `None`),
    /// oldest first.
    pub fn page(&self, before: Option<u64>, limit: usize) -> impl Iterator<Item = &Entry> + '_ {
        let end = match before {
            Some(b) => self.ring.partition_point(|e| e.id < b),
            None => self.ring.len(),
        };
        self.ring.range(end.saturating_sub(limit)..end)
    }

    /// Message `id` is kept.
    pub fn contains(&self, id: u64) -> bool {
        self.position(id).is_some()
    }

    /// Drops message `id` (`skiff ctl delete-message`); false if it is not kept. The
    /// ids after it stay as they are: a resume past it simply does not replay it.
    pub fn remove(&mut self, id: u64) -> bool {
        match self.position(id) {
            Some(at) => self.ring.remove(at).is_some(),
            None => false,
        }
    }

    /// Drops every kept message by `author` (exact spelling); returns their ids.
    pub fn remove_by(&mut self, author: &str) -> Vec<u64> {
        let ids: Vec<u64> = self.ring.iter().filter(|e| &*e.author == author).map(|e| e.id).collect();
        self.ring.retain(|e| &*e.author != author);
        ids
    }

    fn position(&self, id: u64) -> Option<usize> {
        // Ids only grow along the ring (gaps where messages were deleted).
        let at = self.ring.partition_point(|e| e.id < id);
        self.ring.get(at).filter(|e| e.id == id).map(|_| at)
    }

    /// Messages kept.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Bytes the ring holds (its frames), for the operator's arithmetic.
    pub fn bytes(&self) -> usize {
        self.ring.iter().map(|e| e.frame.len() + std::mem::size_of::<Entry>()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64) -> Entry {
        Entry { id, ts: id as i64, author: Rc::from("a"), frame: Rc::from(&b"f"[..]) }
    }

    fn ids<'a>(it: impl Iterator<Item = &'a Entry>) -> Vec<u64> {
        it.map(|e| e.id).collect()
    }

    #[test]
    fn resume_replays_exactly_what_was_missed_or_asks_for_a_resync() {
        let mut h = History::new("E", 0, 3);
        for _ in 0..5 {
            let id = h.next_id().unwrap();
            h.push(entry(id));
        }
        // Ring holds 3, 4, 5.
        assert_eq!(ids(h.since(2, "E").unwrap()), [3, 4, 5]);
        assert_eq!(ids(h.since(4, "E").unwrap()), [5]);
        assert_eq!(ids(h.since(5, "E").unwrap()), Vec::<u64>::new());
        assert!(h.since(1, "E").is_none(), "message 2 is gone: resync");
        assert!(h.since(3, "other").is_none(), "another history: resync");
        assert!(h.since(9, "E").is_none(), "an id from the future: resync");
    }

    #[test]
    fn pages_are_the_newest_before_an_id_oldest_first() {
        let mut h = History::new("E", 10, 100);
        for _ in 0..20 {
            let id = h.next_id().unwrap();
            h.push(entry(id));
        }
        assert_eq!(ids(h.page(None, 3)), [28, 29, 30]);
        assert_eq!(ids(h.page(Some(15), 2)), [13, 14]);
        assert_eq!(ids(h.page(Some(12), 50)), [11]);
        assert!(h.page(Some(11), 5).next().is_none());
    }

    #[test]
    fn with_history_off_ids_still_count_and_every_resume_resyncs_but_the_current() {
        let mut h = History::new("E", 41, 0);
        let id = h.next_id().unwrap();
        h.push(entry(id));
        assert_eq!(h.last_id(), 42);
        assert!(h.since(41, "E").is_none());
        assert_eq!(ids(h.since(42, "E").unwrap()), Vec::<u64>::new());
        assert!(h.page(None, 50).next().is_none());
    }

    #[test]
    fn ids_are_given_only_below_a_durable_reservation_asked_half_a_block_ahead() {
        let mut h = History::new("E", 0, 100);
        h.set_reserved(3);
        assert_eq!(h.wants_reservation(), Some(RESERVE_BLOCK), "fewer than half a block left");
        assert_eq!(h.wants_reservation(), None, "asked already");
        for want in 1..=3 {
            assert_eq!(h.next_id(), Some(want));
        }
        assert_eq!(h.next_id(), None, "the reservation is not durable yet");
        h.reserved_through(RESERVE_BLOCK, true);
        assert_eq!(h.next_id(), Some(4));
        // A failed reservation is asked again by the next message that needs one.
        let mut h = History::new("E", 0, 100);
        h.set_reserved(1);
        let asked = h.wants_reservation().unwrap();
        h.reserved_through(asked, false);
        assert_eq!(h.wants_reservation(), Some(asked));
        assert_eq!(h.reserved(), 1);
    }

    #[test]
    fn after_a_crash_resumes_that_would_cross_the_lost_ids_resync() {
        // On disk: messages 1..=10; reserved before the crash: 20. Ids 11..=20 may
        // have been seen live, and are gone.
        let mut h = History::new("E", 20, 100);
        for id in 1..=10 {
            h.push(entry(id));
        }
        h.set_reserved(20 + RESERVE_BLOCK);
        assert!(h.since(5, "E").is_none(), "5 -> 6..10 would skip 11..");
        assert!(h.since(10, "E").is_none(), "the client may have seen 11..");
        assert!(h.since(15, "E").is_none());
        assert_eq!(ids(h.since(20, "E").unwrap()), Vec::<u64>::new(), "up to date");
        let id = h.next_id().unwrap();
        assert_eq!(id, 21, "the next id follows the whole lost block");
        h.push(entry(id));
        assert_eq!(ids(h.since(20, "E").unwrap()), [21]);
        // Restored again later, the gap inside the ring still says so.
        let mut h = History::new("E", 21, 100);
        for id in (1..=10).chain([21]) {
            h.push(entry(id));
        }
        h.set_reserved(21);
        assert!(h.since(8, "E").is_none());
        assert_eq!(ids(h.since(20, "E").unwrap()), [21]);
        assert_eq!(ids(h.page(None, 3)), [9, 10, 21]);
    }
}
