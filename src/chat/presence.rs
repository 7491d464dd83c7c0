//! Presence for clients that asked not to hear every join and leave on its own
//! (`/ws?v=2&presence=batch|count`). The room's join and leave events are noted here
//! as they happen; once per interval they leave as one diff (or one online count),
//! encoded once and shared by every subscriber. A storm of N joins then costs each
//! subscriber one frame per interval instead of N, and the work per join is one map
//! entry, whoever is listening.
//!
//! A diff is a set operation: `join` names are online now, `leave` names are not. A
//! user who joined and left again within the interval (or left and came back) is in
//! neither list.
//!
//! A subscriber's hello carries the online list as of the last flush (the baseline),
//! not as of its own join: the next diff brings it up to date, as it does everyone
//! else. Every subscriber arriving within one interval then gets the same list,
//! encoded once, so a storm of N subscribers costs N copies of one shared frame
//! instead of N lists built name by name.

use crate::ws::frame;
use serde::Serialize;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Longest a join or leave waits before its diff leaves, and shortest time between
/// two diffs. Short enough to read as live in a member list; long enough that a
/// reconnect storm of thousands fits in a handful of frames.
pub const INTERVAL: Duration = Duration::from_millis(200);

/// How a v2 client hears of joins and leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// One `join`/`leave` event each, as plain `/ws` does.
    #[default]
    Each,
    /// At most one `{"event":"presence","join":[..],"leave":[..]}` per interval.
    Batch,
    /// At most one `{"event":"presence","online":N}` per interval, when N changed.
    Count,
}

impl Mode {
    /// The `presence=` query value; `None` for one the server does not know.
    pub fn parse(v: &str) -> Option<Mode> {
        match v {
            "each" => Some(Mode::Each),
            "batch" => Some(Mode::Batch),
            "count" => Some(Mode::Count),
            _ => None,
        }
    }

    /// Its byte in a hand-over's state.
    pub fn code(self) -> u8 {
        match self {
            Mode::Each => 0,
            Mode::Batch => 1,
            Mode::Count => 2,
        }
    }

    pub fn from_code(c: u8) -> Option<Mode> {
        match c {
            0 => Some(Mode::Each),
            1 => Some(Mode::Batch),
            2 => Some(Mode::Count),
            _ => None,
        }
    }
}

/// One user's changes this interval.
#[derive(Debug, Clone, Copy)]
struct Change {
    was_online: bool,
    online: bool,
}

/// What one interval's flush sends: the diff for batch subscribers and the count for
/// count subscribers, each encoded once.
#[derive(Debug, Default)]
pub struct Flushed {
    pub diff: Option<Rc<[u8]>>,
    pub count: Option<Rc<[u8]>>,
}

#[derive(Serialize)]
struct Diff<'a> {
    event: &'static str,
    join: Vec<&'a str>,
    leave: Vec<&'a str>,
}

#[derive(Serialize)]
struct Count {
    event: &'static str,
    online: usize,
}

/// The batcher: sans-IO, `now` is passed in. Its memory is one entry per user that
/// changed since the last flush, so at most the users with sessions.
#[derive(Debug)]
pub struct Batcher {
    interval: Duration,
    changes: Vec<(Rc<str>, Change)>,
    index: HashMap<Rc<str>, usize>,
    /// The baseline's online list as a JSON array, built at the first hello after
    /// it moved.
    baseline: Option<Rc<[u8]>>,
    /// The last hello frame built on it, with the epoch and last id it names.
    hello: Option<(String, u64, Rc<[u8]>)>,
    /// Something was noted since the last flush.
    dirty: bool,
    due: Option<Instant>,
    /// The latest moment the loop told us of: what `next_deadline` answers with while
    /// a change waits for its interval to be armed.
    last_now: Option<Instant>,
    sent_count: Option<usize>,
}

impl Default for Batcher {
    fn default() -> Self {
        Batcher::new(INTERVAL)
    }
}

impl Batcher {
    pub fn new(interval: Duration) -> Self {
        Batcher {
            interval,
            changes: Vec::new(),
            index: HashMap::new(),
            baseline: None,
            hello: None,
            dirty: false,
            due: None,
            last_now: None,
            sent_count: None,
        }
    }

    /// `user` joined (`true`) or left the room.
    pub fn note(&mut self, user: &Rc<str>, joined: bool) {
        self.dirty = true;
        match self.index.get(user) {
            Some(&i) => self.changes[i].1.online = joined,
            None => {
                self.index.insert(user.clone(), self.changes.len());
                self.changes.push((user.clone(), Change { was_online: !joined, online: joined }));
            }
        }
    }

    /// The room changed while nobody subscribed, so nothing was noted: the baseline
    /// is the room as it is now, and nobody needs what was pending.
    pub fn unobserved_change(&mut self) {
        if !self.changes.is_empty() {
            self.changes.clear();
            self.index.clear();
        }
        self.dirty = false;
        self.due = None;
        self.baseline = None;
        self.hello = None;
        self.sent_count = None;
    }

    /// Whether the baseline's list must be built (`baseline_of`, `set_baseline`)
    /// before the next `hello`.
    pub fn needs_baseline(&self) -> bool {
        self.baseline.is_none()
    }

    /// The baseline's list as a JSON array, from `online`, the room now in connect
    /// order: this interval's changes undone (those who left go at the end); and how
    /// many names it holds.
    pub fn baseline_of<'a>(&self, online: impl Iterator<Item = &'a str>) -> (Vec<u8>, usize) {
        let (mut names, mut count) = (vec![b'['], 0);
        let mut put = |name: &str| {
            if count > 0 {
                names.push(b',');
            }
            serde_json::to_writer(&mut names, name).expect("serializing into a Vec cannot fail");
            count += 1;
        };
        online.filter(|name| self.index.get(*name).is_none_or(|&i| self.changes[i].1.was_online)).for_each(&mut put);
        self.changes.iter().filter(|(_, c)| c.was_online && !c.online).for_each(|(name, _)| put(name));
        names.push(b']');
        (names, count)
    }

    pub fn set_baseline(&mut self, (list, count): (Vec<u8>, usize)) {
        if self.changes.is_empty() {
            // Nothing pending: the baseline is now, and so is its count.
            self.sent_count = Some(count);
        }
        self.baseline = Some(Rc::from(list));
        self.hello = None;
    }

    /// The hello for a batch or count subscriber, around the baseline's list (see
    /// `needs_baseline`): built once per interval and message id, shared.
    pub fn hello(&mut self, epoch: &str, last_id: u64) -> Rc<[u8]> {
        if let Some((e, id, frame)) = &self.hello {
            if *id == last_id && e == epoch {
                return frame.clone();
            }
        }
        let list = self.baseline.as_deref().unwrap_or(b"[]");
        let mut f = frame::TextFrame::with_capacity(list.len() + epoch.len() + 64);
        let payload = f.payload();
        payload.extend_from_slice(b"{\"event\":\"hello\",\"epoch\":");
        serde_json::to_writer(&mut *payload, epoch).expect("serializing into a Vec cannot fail");
        payload.extend_from_slice(format!(",\"last_id\":{last_id},\"online\":").as_bytes());
        payload.extend_from_slice(list);
        payload.push(b'}');
        let frame = f.finish();
        self.hello = Some((epoch.to_owned(), last_id, frame.clone()));
        frame
    }

    /// When the loop must call `on_timeout` next for presence, if at all.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.due {
            Some(due) => Some(due),
            None if self.dirty => self.last_now,
            None => None,
        }
    }

    /// The loop's timeout at `now`: starts the interval of changes noted since the
    /// last one, or ends it. `online` is the room's count now; `diff` and `count`
    /// say whether anyone subscribes to each.
    pub fn on_timeout(&mut self, now: Instant, online: usize, diff: bool, count: bool) -> Option<Flushed> {
        self.last_now = Some(now);
        match self.due {
            None if self.dirty => {
                self.due = Some(now + self.interval);
                None
            }
            Some(due) if due <= now => Some(self.flush(online, diff, count)),
            _ => None,
        }
    }

    /// Ends the interval now (a hand-over: what is pending goes out with the queues).
    pub fn flush(&mut self, online: usize, diff: bool, count: bool) -> Flushed {
        let mut out = Flushed::default();
        if diff {
            let mut d = Diff { event: "presence", join: Vec::new(), leave: Vec::new() };
            for (user, c) in &self.changes {
                if c.was_online == c.online {
                    continue;
                }
                if c.online {
                    d.join.push(user);
                } else {
                    d.leave.push(user);
                }
            }
            if !d.join.is_empty() || !d.leave.is_empty() {
                out.diff = Some(encode(&d));
            }
        }
        if count && self.dirty && self.sent_count != Some(online) {
            out.count = Some(encode(&Count { event: "presence", online }));
        }
        self.sent_count = Some(online);
        self.changes.clear();
        self.index.clear();
        // A storm's map is gone with it.
        if self.index.capacity() > 1024 {
            self.index.shrink_to(64);
            self.changes.shrink_to(64);
        }
        self.dirty = false;
        self.due = None;
        // The room as it is now is the next hellos' baseline.
        self.baseline = None;
        self.hello = None;
        out
    }
}

fn encode<T: Serialize>(v: &T) -> Rc<[u8]> {
    frame::text(&serde_json::to_vec(v).expect("serializing into a Vec cannot fail"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(f: &Rc<[u8]>) -> serde_json::Value {
        let start = match f[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        serde_json::from_slice(&f[start..]).expect("a JSON frame")
    }

    fn name(s: &str) -> Rc<str> {
        Rc::from(s)
    }

    /// Drives the batcher like the loop: a timeout at `now`.
    fn tick(b: &mut Batcher, now: Instant, online: usize) -> Option<Flushed> {
        b.on_timeout(now, online, true, true)
    }

    #[test]
    fn twenty_joins_in_one_interval_are_one_diff() {
        let t0 = Instant::now();
        let mut b = Batcher::new(INTERVAL);
        for i in 0..20 {
            b.note(&name(&format!("u{i}")), true);
        }
        assert_eq!(b.next_deadline(), None, "unarmed before the loop ever ran");
        assert!(tick(&mut b, t0, 20).is_none(), "the first timeout arms the interval");
        assert_eq!(b.next_deadline(), Some(t0 + INTERVAL));
        assert!(tick(&mut b, t0 + INTERVAL / 2, 20).is_none());
        let f = tick(&mut b, t0 + INTERVAL, 20).expect("flushed at the end of the interval");
        let d = json(f.diff.as_ref().unwrap());
        assert_eq!(d["event"], "presence");
        assert_eq!(d["join"].as_array().unwrap().len(), 20);
        assert_eq!(d["leave"].as_array().unwrap().len(), 0);
        assert_eq!(b.next_deadline(), None);
        assert!(tick(&mut b, t0 + INTERVAL * 3, 20).is_none(), "nothing new, nothing sent");
    }

    #[test]
    fn a_join_and_its_leave_in_one_interval_cancel_and_so_do_a_leave_and_a_rejoin() {
        let t0 = Instant::now();
        let mut b = Batcher::new(INTERVAL);
        tick(&mut b, t0, 0);
        b.note(&name("ann"), true);
        b.note(&name("bob"), false);
        b.note(&name("ann"), false);
        b.note(&name("bob"), true);
        b.note(&name("cat"), true);
        tick(&mut b, t0, 0);
        let f = tick(&mut b, t0 + INTERVAL, 1).unwrap();
        let d = json(f.diff.as_ref().unwrap());
        assert_eq!(d["join"], serde_json::json!(["cat"]));
        assert_eq!(d["leave"], serde_json::json!([]));
        b.note(&name("dan"), true);
        b.note(&name("dan"), false);
        tick(&mut b, t0 + INTERVAL, 1);
        let f = tick(&mut b, t0 + INTERVAL * 2, 1).unwrap();
        assert!(f.diff.is_none() && f.count.is_none(), "all cancelled: no frame at all");
    }

    fn online_of(hello: &Rc<[u8]>) -> serde_json::Value {
        json(hello)["online"].clone()
    }

    /// As `Chat::hello_for` asks: the baseline built from `online` if it must be.
    fn hello<const N: usize>(b: &mut Batcher, epoch: &str, last_id: u64, online: [&str; N]) -> Rc<[u8]> {
        if b.needs_baseline() {
            let list = b.baseline_of(online.into_iter());
            b.set_baseline(list);
        }
        b.hello(epoch, last_id)
    }

    #[test]
    fn a_hello_carries_the_baseline_and_the_next_diff_brings_it_up_to_date() {
        let t0 = Instant::now();
        let mut b = Batcher::new(INTERVAL);
        // Nothing pending: the baseline is the room now.
        let h = hello(&mut b, "e1", 7, ["ann", "bob"]);
        assert_eq!(
            json(&h),
            serde_json::json!({"event": "hello", "epoch": "e1", "last_id": 7, "online": ["ann", "bob"]})
        );
        tick(&mut b, t0, 2);
        // cat joins, bob leaves, dan comes and goes: a hello now shows the baseline,
        // those who left at the end, those who came not at all.
        b.note(&name("cat"), true);
        b.note(&name("bob"), false);
        b.note(&name("dan"), true);
        let h = hello(&mut b, "e1", 7, ["ann", "cat", "dan"]);
        assert_eq!(online_of(&h), serde_json::json!(["ann", "bob"]));
        b.note(&name("dan"), false);
        // Another subscriber in the same interval gets the very same frame.
        assert!(Rc::ptr_eq(&h, &hello(&mut b, "e1", 7, ["ann", "cat"])));
        // A new message id: a new frame around the same list.
        let h8 = hello(&mut b, "e1", 8, ["ann", "cat"]);
        assert_eq!(
            (json(&h8)["last_id"].clone(), online_of(&h8)),
            (serde_json::json!(8), serde_json::json!(["ann", "bob"]))
        );
        tick(&mut b, t0, 2);
        let f = tick(&mut b, t0 + INTERVAL, 2).unwrap();
        let d = json(f.diff.as_ref().unwrap());
        // Applied to the hello's list as set operations: ann, cat. dan is in neither.
        assert_eq!((d["join"].clone(), d["leave"].clone()), (serde_json::json!(["cat"]), serde_json::json!(["bob"])));
        // After the flush the room as it is is the baseline.
        let h = hello(&mut b, "e1", 8, ["ann", "cat"]);
        assert_eq!(online_of(&h), serde_json::json!(["ann", "cat"]));
    }

    #[test]
    fn an_unobserved_change_moves_the_baseline_to_now() {
        let t0 = Instant::now();
        let mut b = Batcher::new(INTERVAL);
        let _ = hello(&mut b, "e", 0, ["ann"]);
        b.note(&name("bob"), true);
        // Nobody subscribes any more; ann leaves unnoted: what was pending is moot.
        b.unobserved_change();
        assert_eq!(b.next_deadline(), None);
        let h = hello(&mut b, "e", 0, ["bob"]);
        assert_eq!(online_of(&h), serde_json::json!(["bob"]));
        // The count a count subscriber starts from is that list's: bob leaving is news.
        b.note(&name("bob"), false);
        tick(&mut b, t0, 0);
        let f = tick(&mut b, t0 + INTERVAL, 0).unwrap();
        assert_eq!(json(f.count.as_ref().unwrap())["online"], 0);
    }

    #[test]
    fn at_most_one_flush_per_interval_however_the_events_come() {
        let t0 = Instant::now();
        let mut b = Batcher::new(INTERVAL);
        let mut flushes = Vec::new();
        for ms in 0..1000u64 {
            let now = t0 + Duration::from_millis(ms);
            b.note(&name(&format!("u{ms}")), true);
            if tick(&mut b, now, ms as usize).is_some_and(|f| f.diff.is_some()) {
                flushes.push(ms);
            }
        }
        assert!(flushes.len() >= 4, "{flushes:?}");
        for w in flushes.windows(2) {
            assert!(w[1] - w[0] >= INTERVAL.as_millis() as u64, "{flushes:?}");
        }
    }

    #[test]
    fn count_is_sent_only_when_it_changed() {
        let t0 = Instant::now();
        let mut b = Batcher::new(INTERVAL);
        b.note(&name("ann"), true);
        tick(&mut b, t0, 1);
        let f = tick(&mut b, t0 + INTERVAL, 1).unwrap();
        assert_eq!(json(f.count.as_ref().unwrap())["online"], 1);
        // bob comes and goes: the count ends where it was.
        b.note(&name("bob"), true);
        b.note(&name("bob"), false);
        tick(&mut b, t0 + INTERVAL, 1);
        let f = tick(&mut b, t0 + INTERVAL * 2, 1).unwrap();
        assert!(f.count.is_none(), "unchanged count is not sent");
        b.note(&name("cat"), true);
        tick(&mut b, t0 + INTERVAL * 2, 2);
        let f = tick(&mut b, t0 + INTERVAL * 3, 2).unwrap();
        assert_eq!(json(f.count.as_ref().unwrap())["online"], 2);
        assert!(tick(&mut b, t0 + INTERVAL * 10, 2).is_none(), "no change, no timer, no frame");
    }

    #[test]
    fn modes_parse_and_round_trip() {
        assert_eq!(Mode::parse("batch"), Some(Mode::Batch));
        assert_eq!(Mode::parse("Batch"), None);
        for m in [Mode::Each, Mode::Batch, Mode::Count] {
            assert_eq!(Mode::from_code(m.code()), Some(m));
        }
        assert_eq!(Mode::from_code(9), None);
    }
}
