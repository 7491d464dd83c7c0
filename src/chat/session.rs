//! Sessions: a slab of logged-in sessions, an index by the hash of their id, and
//! sliding expiry driven by deadlines the caller feeds in. Changes worth keeping across
//! a restart queue up as `SessionChange`s for the caller to write (lazily: activity at
//! most once a minute per session). No clock is read here; `now` is passed in, so
//! tests jump an hour in one line.

mod handover;

use crate::timer::Timer;
use slab::Slab;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::rc::Rc;
use std::time::{Duration, Instant};

pub const SESSION_ID_LEN: usize = 32;
pub type SessionId = [u8; SESSION_ID_LEN];

/// A stable handle to a session: the slab key plus a generation, so a handle to an
/// ended session never reaches the session that reused its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub key: usize,
    pub generation: u64,
}

/// How far ahead of a session's activity its saved time runs: activity is written
/// at most once per this, and a restart may lengthen a session by up to this much,
/// never shorten it (CONTRACT, Sessions).
pub const SAVE_SLACK: Duration = Duration::from_secs(60);

/// A change to write to disk, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// A session exists and was active no later than `active`.
    Saved {
        id_hash: [u8; 32],
        user: Rc<str>,
        active: Instant,
    },
    Deleted {
        id_hash: [u8; 32],
    },
}

/// SHA-256 of a session id: what the index and the disk hold, never the id itself.
pub fn id_hash(id: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(id).into()
}

#[derive(Debug)]
pub struct Session {
    pub id_hash: [u8; 32],
    pub user: Rc<str>,
    pub last_active: Instant,
    pub generation: u64,
    /// The same user's next-older and next-newer sessions (slab keys; `NONE` at
    /// the ends): a list threaded through the slab instead of a vector per user.
    older: u32,
    newer: u32,
    /// The WebSocket open on this session (a connection id; `NONE` if none).
    socket: u32,
    /// The activity time last written to disk.
    saved: Instant,
}

const NONE: u32 = u32::MAX;

impl Session {
    /// The connection of the WebSocket opened with this session, if one is open.
    pub fn socket(&self) -> Option<usize> {
        (self.socket != NONE).then_some(self.socket as usize)
    }
}

/// One user's sessions, oldest first, as the ends of the list in `Session`.
#[derive(Debug, Clone, Copy)]
struct UserSessions {
    oldest: u32,
    newest: u32,
    count: u32,
}

/// The index key of a session: the first 8 bytes of its id's hash. Ids are 190 bits
/// from the CSPRNG, so a prefix names one session; a login whose prefix is taken
/// draws again, and a lookup still compares the whole hash. 8 bytes of key instead
/// of 32 keep the index at ~27 B per session instead of ~67 B.
fn prefix(hash: &[u8; 32]) -> u64 {
    u64::from_le_bytes(hash[..8].try_into().expect("hashes are 32 bytes"))
}

/// Why a session ended, for the caller to pick a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Logout,
    Expired,
    Evicted,
}

pub struct Sessions {
    slab: Slab<Session>,
    /// Id prefix -> slab key.
    by_id: HashMap<u64, usize>,
    /// Each user's sessions, for the per-user cap and the user's socket, keyed by
    /// a keyed hash of the lowercased name: no copy of the name per user. Two names
    /// sharing a 64-bit SipHash under a random key is not a case anyone can make
    /// happen; were it to, their sessions would share one cap, and lookups by name
    /// still compare names.
    by_user: HashMap<u64, UserSessions>,
    name_hasher: RandomState,
    changes: Vec<SessionChange>,
    expiry: Timer,
    ttl: Duration,
    next_generation: u64,
    max_per_user: usize,
    max_total: usize,
    fill_random: fn(&mut [u8]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginError {
    /// The global session cap is reached and nothing may be evicted for it.
    Full,
    /// The user is banned (`skiff ctl ban`).
    Banned,
}

impl Sessions {
    pub fn new(ttl: Duration, max_per_user: usize, max_total: usize) -> Self {
        Sessions {
            slab: Slab::new(),
            by_id: HashMap::new(),
            by_user: HashMap::new(),
            name_hasher: RandomState::new(),
            changes: Vec::new(),
            expiry: Timer::new(),
            ttl,
            next_generation: 1,
            max_per_user: max_per_user.max(1),
            max_total: max_total.max(1),
            fill_random: os_random,
        }
    }

    /// Replaces the CSPRNG, so fuzz targets and tests are deterministic.
    pub fn set_random(&mut self, fill: fn(&mut [u8])) {
        self.fill_random = fill;
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    pub fn get(&self, k: SessionKey) -> Option<&Session> {
        self.slab.get(k.key).filter(|s| s.generation == k.generation)
    }

    /// Starts a session for `user`. Returns its key, its id, and the sessions evicted
    /// to respect the per-user cap (the caller closes their sockets).
    pub fn login(
        &mut self,
        user: Rc<str>,
        now: Instant,
        evicted: &mut Vec<(SessionKey, Session)>,
    ) -> Result<(SessionKey, SessionId), LoginError> {
        let fresh = self.fresh_id();
        self.login_with(user, fresh, now, evicted)
    }

    /// A new session id and its hash, not yet in use here (cluster mode draws the
    /// id before Redis stores the session).
    pub fn new_id(&mut self) -> (SessionId, [u8; 32]) {
        self.fresh_id()
    }

    /// `login` with an id drawn earlier by `new_id`.
    pub fn login_with(
        &mut self,
        user: Rc<str>,
        (id, hash): (SessionId, [u8; 32]),
        now: Instant,
        evicted: &mut Vec<(SessionKey, Session)>,
    ) -> Result<(SessionKey, SessionId), LoginError> {
        let lower = self.name_key(&user);
        let own = self.by_user.get(&lower).copied();
        if let Some(own) = own.filter(|o| o.count as usize >= self.max_per_user) {
            let oldest = own.oldest as usize;
            let generation = self.slab[oldest].generation;
            let k = SessionKey { key: oldest, generation };
            if let Some(s) = self.remove(k) {
                evicted.push((k, s));
            }
        } else if self.slab.len() >= self.max_total {
            return Err(LoginError::Full);
        }
        if self.by_id.contains_key(&prefix(&hash)) {
            // Drawn a while ago (cluster mode): a session adopted since took the prefix.
            return Err(LoginError::Full);
        }
        let key = self.insert(hash, user, now, now + SAVE_SLACK);
        self.changes.push(SessionChange::Saved {
            id_hash: hash,
            user: self.slab[key].user.clone(),
            active: now + SAVE_SLACK,
        });
        let generation = self.slab[key].generation;
        Ok((SessionKey { key, generation }, id))
    }

    /// Brings back a session saved before a restart, active at `active` (already
    /// capped at now by the caller). Over the caps, it is not restored.
    pub fn restore(&mut self, id_hash: [u8; 32], user: Rc<str>, active: Instant) -> bool {
        let lower = self.name_key(&user);
        let own = self.by_user.get(&lower).map_or(0, |l| l.count as usize);
        if own >= self.max_per_user || self.slab.len() >= self.max_total || self.by_id.contains_key(&prefix(&id_hash)) {
            return false;
        }
        self.insert(id_hash, user, active, active);
        true
    }

    /// Adds a session to the slab, its user's list and the indexes; returns its key.
    fn insert(&mut self, hash: [u8; 32], user: Rc<str>, now: Instant, saved: Instant) -> usize {
        let lower = self.name_key(&user);
        let generation = self.next_generation;
        self.next_generation += 1;
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        let newest = key as u32;
        let list = self.by_user.get(&lower).copied();
        let older = list.map_or(NONE, |l| l.newest);
        entry.insert(Session {
            id_hash: hash,
            user,
            last_active: now,
            generation,
            older,
            newer: NONE,
            socket: NONE,
            saved,
        });
        if older != NONE {
            self.slab[older as usize].newer = newest;
        }
        let list = match list {
            Some(l) => UserSessions { newest, count: l.count + 1, ..l },
            None => UserSessions { oldest: newest, newest, count: 1 },
        };
        self.by_user.insert(lower, list);
        self.by_id.insert(prefix(&hash), key);
        self.expiry.schedule(now + self.ttl, key, generation);
        key
    }

    /// The session with this id hash, live or not yet expired by the timer.
    pub fn find_hash(&self, hash: &[u8; 32]) -> Option<SessionKey> {
        let &key = self.by_id.get(&prefix(hash))?;
        let s = &self.slab[key];
        same_hash(&s.id_hash, hash).then_some(SessionKey { key, generation: s.generation })
    }

    /// Looks up a live session by the cookie value and records activity.
    pub fn authenticate(&mut self, id: &[u8], now: Instant) -> Option<SessionKey> {
        if id.len() != SESSION_ID_LEN {
            return None;
        }
        let hash = id_hash(id);
        let &key = self.by_id.get(&prefix(&hash))?;
        let s = &mut self.slab[key];
        if !same_hash(&s.id_hash, &hash) {
            return None;
        }
        // A session whose deadline passed is dead even if its timer has not run yet
        // this turn: the contract says expired means 401.
        if s.last_active + self.ttl <= now {
            return None;
        }
        let k = SessionKey { key, generation: s.generation };
        self.touch(k, now);
        Some(k)
    }

    /// Records activity (a request, a WebSocket frame) on a session; past the time
    /// last saved, saves it again, `SAVE_SLACK` ahead.
    pub fn touch(&mut self, k: SessionKey, now: Instant) {
        if let Some(s) = self.slab.get_mut(k.key).filter(|s| s.generation == k.generation) {
            if now > s.saved {
                s.saved = now + SAVE_SLACK;
                let (id_hash, user, active) = (s.id_hash, s.user.clone(), s.saved);
                self.changes.push(SessionChange::Saved { id_hash, user, active });
            }
            if now > s.last_active {
                s.last_active = now;
            }
        }
    }

    pub fn remove(&mut self, k: SessionKey) -> Option<Session> {
        self.get(k)?;
        let s = self.slab.remove(k.key);
        self.by_id.remove(&prefix(&s.id_hash));
        self.changes.push(SessionChange::Deleted { id_hash: s.id_hash });
        if s.older != NONE {
            self.slab[s.older as usize].newer = s.newer;
        }
        if s.newer != NONE {
            self.slab[s.newer as usize].older = s.older;
        }
        let lower = self.name_key(&s.user);
        if let Some(list) = self.by_user.get_mut(&lower) {
            list.count -= 1;
            if list.count == 0 {
                self.by_user.remove(&lower);
            } else {
                if list.oldest == k.key as u32 {
                    list.oldest = s.newer;
                }
                if list.newest == k.key as u32 {
                    list.newest = s.older;
                }
            }
        }
        Some(s)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.expiry.next()
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Records the WebSocket opened with session `k` (or its closing, with `None`).
    pub fn set_socket(&mut self, k: SessionKey, conn: Option<usize>) {
        if let Some(s) = self.slab.get_mut(k.key).filter(|s| s.generation == k.generation) {
            s.socket = conn.map_or(NONE, |c| u32::try_from(c).expect("connection ids fit in u32"));
        }
    }

    fn name_key(&self, name: &str) -> u64 {
        let mut h = self.name_hasher.build_hasher();
        for b in name.bytes() {
            h.write_u8(b.to_ascii_lowercase());
        }
        h.finish()
    }

    /// The user's sessions (name ignoring case), newest first.
    fn of_user<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Session> + 'a {
        let newest = self.by_user.get(&self.name_key(name)).map_or(NONE, |l| l.newest);
        std::iter::successors((newest != NONE).then(|| &self.slab[newest as usize]), move |s| {
            (s.older != NONE).then(|| &self.slab[s.older as usize])
        })
        .filter(move |s| s.user.eq_ignore_ascii_case(name))
    }

    /// The keys of the user's sessions (name ignoring case), newest first.
    pub fn keys_of_user(&self, name: &str) -> Vec<SessionKey> {
        let mut out = Vec::new();
        let mut at = self.by_user.get(&self.name_key(name)).map_or(NONE, |l| l.newest);
        while at != NONE {
            let s = &self.slab[at as usize];
            if s.user.eq_ignore_ascii_case(name) {
                out.push(SessionKey { key: at as usize, generation: s.generation });
            }
            at = s.older;
        }
        out
    }

    /// The user's open WebSocket, on whichever of their sessions (name ignoring case).
    pub fn socket_of_user(&self, name: &str) -> Option<usize> {
        self.of_user(name).find_map(Session::socket)
    }

    /// The spelling of a user's name that their sessions already share, so another
    /// session adds no copy of it.
    pub fn shared_name(&self, name: &str) -> Option<Rc<str>> {
        self.of_user(name).next().map(|s| s.user.clone())
    }

    /// True if no session has outlived its TTL at `now` (O(sessions); for checks).
    pub fn all_alive(&self, now: Instant) -> bool {
        self.slab.iter().all(|(_, s)| s.last_active + self.ttl > now)
    }

    /// Ends every session whose TTL has passed by `now`; re-arms the ones that saw
    /// activity since their entry was scheduled.
    pub fn expire(&mut self, now: Instant, expired: &mut Vec<(SessionKey, Session)>) {
        while let Some(e) = self.expiry.pop_due(now) {
            let k = SessionKey { key: e.key, generation: e.generation };
            let Some(s) = self.get(k) else { continue };
            let due = s.last_active + self.ttl;
            if due <= now {
                if let Some(s) = self.remove(k) {
                    expired.push((k, s));
                }
            } else {
                self.expiry.schedule(due, k.key, k.generation);
            }
        }
    }

    /// Removes every session without a socket; returns the id hashes of those kept.
    pub fn retain_with_socket(&mut self) -> Vec<[u8; 32]> {
        let idle: Vec<SessionKey> = self
            .slab
            .iter()
            .filter(|(_, s)| s.socket == NONE)
            .map(|(key, s)| SessionKey { key, generation: s.generation })
            .collect();
        for k in idle {
            self.remove(k);
        }
        self.slab.iter().map(|(_, s)| s.id_hash).collect()
    }

    /// Changes to write since the last call, oldest first.
    pub fn take_changes(&mut self) -> Vec<SessionChange> {
        std::mem::take(&mut self.changes)
    }

    fn fresh_id(&mut self) -> (SessionId, [u8; 32]) {
        const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut id = [0u8; SESSION_ID_LEN];
        let mut filled = 0;
        let mut pool = [0u8; 64];
        loop {
            (self.fill_random)(&mut pool);
            for &b in &pool {
                // 248 = 4 * 62: rejecting the rest keeps every character equally likely.
                if b < 248 {
                    id[filled] = ALPHABET[(b % 62) as usize];
                    filled += 1;
                    if filled == SESSION_ID_LEN {
                        let hash = id_hash(&id);
                        if self.by_id.contains_key(&prefix(&hash)) {
                            filled = 0;
                            continue;
                        }
                        return (id, hash);
                    }
                }
            }
        }
    }
}

/// Compares hashes without stopping at the first difference, so response timing tells
/// an attacker nothing about how much of a guess was right.
fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn os_random(buf: &mut [u8]) {
    // Without the OS CSPRNG no session id can be trusted; there is nothing sane to
    // fall back to.
    getrandom::fill(buf).expect("the OS random number generator failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Rc<str> {
        Rc::from(name)
    }

    #[test]
    fn ids_are_32_alphanumeric_and_distinct() {
        let mut s = Sessions::new(Duration::from_secs(60), 100, 1000);
        let now = Instant::now();
        let mut ev = vec![];
        let (_, a) = s.login(user("a"), now, &mut ev).unwrap();
        let (_, b) = s.login(user("a"), now, &mut ev).unwrap();
        assert_ne!(a, b);
        assert!(a.iter().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn sliding_expiry_with_a_fake_clock() {
        let ttl = Duration::from_secs(3600);
        let mut s = Sessions::new(ttl, 10, 100);
        let t0 = Instant::now();
        let mut out = vec![];
        let (k, id) = s.login(user("alice"), t0, &mut out).unwrap();
        // Activity at 59 minutes pushes expiry to 1h59m.
        assert_eq!(s.authenticate(&id, t0 + Duration::from_secs(59 * 60)), Some(k));
        s.expire(t0 + ttl, &mut out);
        assert!(out.is_empty(), "activity must have slid the deadline");
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(119 * 60)));
        s.expire(t0 + Duration::from_secs(119 * 60), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, k);
        assert!(s.authenticate(&id, t0 + Duration::from_secs(119 * 60)).is_none());
        assert!(s.is_empty());
    }

    #[test]
    fn a_session_past_its_deadline_is_rejected_before_its_timer_runs() {
        let mut s = Sessions::new(Duration::from_secs(10), 10, 100);
        let t0 = Instant::now();
        let (_, id) = s.login(user("bob"), t0, &mut vec![]).unwrap();
        assert!(s.authenticate(&id, t0 + Duration::from_secs(10)).is_none());
    }

    #[test]
    fn touch_keeps_a_session_alive() {
        let mut s = Sessions::new(Duration::from_secs(10), 10, 100);
        let t0 = Instant::now();
        let (k, _) = s.login(user("bob"), t0, &mut vec![]).unwrap();
        s.touch(k, t0 + Duration::from_secs(9));
        let mut out = vec![];
        s.expire(t0 + Duration::from_secs(15), &mut out);
        assert!(out.is_empty());
        s.expire(t0 + Duration::from_secs(19), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn per_user_cap_evicts_the_oldest_and_global_cap_refuses() {
        let mut s = Sessions::new(Duration::from_secs(10), 2, 3);
        let t0 = Instant::now();
        let mut ev = vec![];
        let (k1, id1) = s.login(user("Ann"), t0, &mut ev).unwrap();
        s.login(user("ann"), t0, &mut ev).unwrap();
        s.login(user("ANN"), t0, &mut ev).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0, k1);
        assert!(s.authenticate(&id1, t0).is_none());
        s.login(user("bob"), t0, &mut ev).unwrap();
        assert_eq!(s.login(user("carl"), t0, &mut ev), Err(LoginError::Full));
    }

    #[test]
    fn stale_keys_do_not_reach_a_reused_slot() {
        let mut s = Sessions::new(Duration::from_secs(10), 10, 100);
        let t0 = Instant::now();
        let (k1, _) = s.login(user("a"), t0, &mut vec![]).unwrap();
        s.remove(k1);
        let (k2, _) = s.login(user("b"), t0, &mut vec![]).unwrap();
        assert_eq!(k1.key, k2.key);
        assert!(s.get(k1).is_none());
        assert!(s.remove(k1).is_none());
        assert_eq!(&*s.get(k2).unwrap().user, "b");
    }

    #[test]
    fn wrong_length_ids_are_rejected() {
        let mut s = Sessions::new(Duration::from_secs(10), 10, 100);
        assert!(s.authenticate(b"short", Instant::now()).is_none());
    }
}

#[cfg(test)]
mod per_user_list_tests {
    use super::*;

    #[test]
    fn the_oldest_live_session_is_evicted_even_after_removals_in_the_middle() {
        let mut s = Sessions::new(Duration::from_secs(60), 3, 1000);
        let now = Instant::now();
        let mut ev = vec![];
        let mut login = |s: &mut Sessions, name: &str| s.login(Rc::from(name), now, &mut ev).unwrap().0;
        let a1 = login(&mut s, "ann");
        let a2 = login(&mut s, "Ann");
        let a3 = login(&mut s, "ANN");
        let b1 = login(&mut s, "bob");
        assert!(s.remove(a2).is_some());
        let a4 = login(&mut s, "ann");
        let _a5 = login(&mut s, "ann");
        let _a6 = login(&mut s, "ann");
        let evicted: Vec<SessionKey> = ev.iter().map(|(k, _)| *k).collect();
        assert_eq!(evicted, [a1, a3], "oldest first, skipping the one removed");
        assert!(s.get(a4).is_some() && s.get(b1).is_some());
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn a_cookie_sharing_only_the_prefix_of_an_id_is_refused() {
        let mut s = Sessions::new(Duration::from_secs(60), 3, 1000);
        let now = Instant::now();
        let (_, id) = s.login(Rc::from("ann"), now, &mut vec![]).unwrap();
        let mut forged = id;
        forged[31] = if forged[31] == b'A' { b'B' } else { b'A' };
        assert!(s.authenticate(&forged, now).is_none());
        assert!(s.authenticate(&id, now).is_some());
    }
}
