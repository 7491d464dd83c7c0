//! Sessions: a slab of logged-in sessions, an index by session id, and sliding expiry
//! driven by deadlines the caller feeds in. No clock is read here; `now` is passed in,
//! so tests jump an hour in one line.

use crate::timer::Timer;
use slab::Slab;
use std::collections::HashMap;
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

#[derive(Debug)]
pub struct Session {
    pub id: SessionId,
    pub user: Rc<str>,
    pub last_active: Instant,
    pub generation: u64,
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
    by_id: HashMap<SessionId, usize>,
    /// Session keys of each user (lowercased name), oldest first, for the per-user cap.
    by_user: HashMap<Box<str>, Vec<usize>>,
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
}

impl Sessions {
    pub fn new(ttl: Duration, max_per_user: usize, max_total: usize) -> Self {
        Sessions {
            slab: Slab::new(),
            by_id: HashMap::new(),
            by_user: HashMap::new(),
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
        let lower: Box<str> = user.to_ascii_lowercase().into();
        let own = self.by_user.get(&*lower).map_or(0, Vec::len);
        if own >= self.max_per_user {
            let oldest = self.by_user[&*lower][0];
            let generation = self.slab[oldest].generation;
            let k = SessionKey { key: oldest, generation };
            if let Some(s) = self.remove(k) {
                evicted.push((k, s));
            }
        } else if self.slab.len() >= self.max_total {
            return Err(LoginError::Full);
        }
        let id = self.fresh_id();
        let generation = self.next_generation;
        self.next_generation += 1;
        let key = self.slab.insert(Session { id, user, last_active: now, generation });
        self.by_id.insert(id, key);
        self.by_user.entry(lower).or_default().push(key);
        self.expiry.schedule(now + self.ttl, key, generation);
        Ok((SessionKey { key, generation }, id))
    }

    /// Looks up a live session by the cookie value and records activity.
    pub fn authenticate(&mut self, id: &[u8], now: Instant) -> Option<SessionKey> {
        let id: &SessionId = id.try_into().ok()?;
        let &key = self.by_id.get(id)?;
        let s = &mut self.slab[key];
        // A session whose deadline passed is dead even if its timer has not run yet
        // this turn: the contract says expired means 401.
        if s.last_active + self.ttl <= now {
            return None;
        }
        s.last_active = now;
        Some(SessionKey { key, generation: s.generation })
    }

    /// Records activity (a WebSocket frame) on a session.
    pub fn touch(&mut self, k: SessionKey, now: Instant) {
        if let Some(s) = self.slab.get_mut(k.key).filter(|s| s.generation == k.generation) {
            if now > s.last_active {
                s.last_active = now;
            }
        }
    }

    pub fn remove(&mut self, k: SessionKey) -> Option<Session> {
        self.get(k)?;
        let s = self.slab.remove(k.key);
        self.by_id.remove(&s.id);
        let lower = s.user.to_ascii_lowercase();
        if let Some(keys) = self.by_user.get_mut(lower.as_str()) {
            keys.retain(|&x| x != k.key);
            if keys.is_empty() {
                self.by_user.remove(lower.as_str());
            }
        }
        Some(s)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.expiry.next()
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

    fn fresh_id(&mut self) -> SessionId {
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
                        if self.by_id.contains_key(&id) {
                            filled = 0;
                            continue;
                        }
                        return id;
                    }
                }
            }
        }
    }
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
