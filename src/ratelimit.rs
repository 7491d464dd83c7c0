//! Per-client-address limits on registrations and failed logins: a fixed one-minute
//! window per address. Time is passed in. Memory is bounded: expired windows are
//! pruned as the table grows, and past a hard cap new addresses go untracked
//! (failing open) rather than let a flood of addresses grow the table without end.
//! Every per-address limit keys on a `Group`: an IPv4 address, or an IPv6 /64.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

mod conns;
pub use conns::ConnLimit;

const WINDOW: Duration = Duration::from_secs(60);
const MAX_TRACKED: usize = 100_000;

/// What one "address" is to a per-address limit. An IPv6 host is given a whole /64
/// (RFC 6177; every home line and cloud VM gets at least that), so counting /128s
/// would let one client take 2^64 addresses' worth of any limit. IPv4-mapped IPv6
/// (`::ffff:a.b.c.d`, a dual-stack socket's view of an IPv4 peer) is that IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    V4(u32),
    /// The upper 64 bits.
    V6(u64),
}

impl Group {
    pub fn of(ip: IpAddr) -> Group {
        match ip {
            IpAddr::V4(v4) => Group::V4(v4.to_bits()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Group::V4(v4.to_bits()),
                None => Group::V6((v6.to_bits() >> 64) as u64),
            },
        }
    }

    /// An address in the group (the /64's first), for what carries addresses.
    pub fn addr(self) -> IpAddr {
        match self {
            Group::V4(bits) => IpAddr::V4(bits.into()),
            Group::V6(prefix) => IpAddr::V6(Ipv6Addr::from_bits(u128::from(prefix) << 64)),
        }
    }
}

#[derive(Debug)]
pub struct Limiter {
    per_minute: u32,
    windows: HashMap<Group, (Instant, u32)>,
    /// Pruning is O(table); doing it at most once a second keeps a flood of new
    /// addresses from turning every request into a full scan.
    next_prune: Option<Instant>,
}

impl Limiter {
    /// `per_minute == 0` turns the limit off.
    pub fn new(per_minute: u32) -> Self {
        Limiter { per_minute, windows: HashMap::new(), next_prune: None }
    }

    /// Seconds until `ip` may try again, if it is over the limit now.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        if self.per_minute == 0 {
            return None;
        }
        let &(start, count) = self.windows.get(&Group::of(ip))?;
        let end = start + WINDOW;
        (now < end && count >= self.per_minute).then(|| end.duration_since(now).as_secs().max(1))
    }

    /// Counts one event for `ip`.
    pub fn record(&mut self, ip: IpAddr, now: Instant) {
        if self.per_minute == 0 {
            return;
        }
        let ip = Group::of(ip);
        if self.windows.len() >= MAX_TRACKED / 2 && !self.windows.contains_key(&ip) {
            if self.next_prune.is_none_or(|t| now >= t) {
                self.windows.retain(|_, (start, _)| now < *start + WINDOW);
                self.next_prune = Some(now + Duration::from_secs(1));
            }
            if self.windows.len() >= MAX_TRACKED {
                return;
            }
        }
        let w = self.windows.entry(ip).or_insert((now, 0));
        if now >= w.0 + WINDOW {
            *w = (now, 0);
        }
        w.1 = w.1.saturating_add(1);
    }

    pub fn tracked(&self) -> usize {
        self.windows.len()
    }

    /// Every window: an address of its group, start, count (a hand-over carries them).
    pub fn windows(&self) -> impl Iterator<Item = (IpAddr, Instant, u32)> + '_ {
        self.windows.iter().map(|(&group, &(start, count))| (group.addr(), start, count))
    }

    /// Puts back a window `windows` gave out.
    pub fn restore(&mut self, ip: IpAddr, start: Instant, count: u32) {
        if self.per_minute != 0 && self.windows.len() < MAX_TRACKED {
            self.windows.insert(Group::of(ip), (start, count));
        }
    }
}

/// The limits the routes apply.
#[derive(Debug)]
pub struct RateLimits {
    pub register: Limiter,
    pub failed_login: Limiter,
    /// Count of requests refused with 429, for metrics.
    pub refused: u64,
    /// Open connections per address (`--max-connections-per-ip`); off unless set.
    pub connections: ConnLimit,
}

impl RateLimits {
    pub fn new(register_per_minute: u32, failed_logins_per_minute: u32) -> Self {
        RateLimits {
            register: Limiter::new(register_per_minute),
            failed_login: Limiter::new(failed_logins_per_minute),
            refused: 0,
            connections: ConnLimit::off(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address_within_a_window() {
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut l = Limiter::new(2);
        l.record(a, t0);
        assert_eq!(l.blocked(a, t0), None);
        l.record(a, t0 + Duration::from_secs(10));
        assert_eq!(l.blocked(a, t0 + Duration::from_secs(10)), Some(50));
        assert_eq!(l.blocked(b, t0), None, "other addresses are unaffected");
        assert_eq!(l.blocked(a, t0 + WINDOW), None, "the window ends");
        l.record(a, t0 + WINDOW);
        assert_eq!(l.blocked(a, t0 + WINDOW), None, "a new window starts");
    }

    #[test]
    fn ipv6_counts_by_64() {
        let t0 = Instant::now();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut l = Limiter::new(3);
        // Three addresses of one /64: one client, whatever its interface ids.
        for a in ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:2:abcd:1:2:3"] {
            l.record(ip(a), t0);
        }
        assert!(l.blocked(ip("2001:db8:1:2::42"), t0).is_some(), "the whole /64 is over");
        assert_eq!(l.blocked(ip("2001:db8:1:3::1"), t0), None, "the next /64 is someone else");
        assert_eq!(l.tracked(), 1);
        // An IPv4-mapped address is the IPv4 address.
        let mut l = Limiter::new(2);
        l.record(ip("::ffff:192.0.2.7"), t0);
        l.record(ip("192.0.2.7"), t0);
        assert!(l.blocked(ip("192.0.2.7"), t0).is_some());
        assert_eq!(l.blocked(ip("192.0.2.8"), t0), None, "IPv4 stays per address");
        // A hand-over carries a group as one of its addresses and gets the same group back.
        let mut l = Limiter::new(3);
        l.record(ip("2001:db8::5"), t0);
        let windows: Vec<_> = l.windows().collect();
        let mut back = Limiter::new(3);
        for (a, start, count) in windows {
            back.restore(a, start, count + 2);
        }
        assert!(back.blocked(ip("2001:db8::77"), t0).is_some());
    }

    #[test]
    fn zero_means_off() {
        let mut l = Limiter::new(0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..100 {
            l.record(a, Instant::now());
        }
        assert_eq!(l.blocked(a, Instant::now()), None);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn the_table_stays_bounded() {
        let t0 = Instant::now();
        let mut l = Limiter::new(5);
        for i in 0..(MAX_TRACKED as u32 + 1000) {
            l.record(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(l.tracked() <= MAX_TRACKED);
        // Once the old windows expire they are pruned to make room.
        l.record("198.51.100.1".parse().unwrap(), t0 + WINDOW);
        assert!(l.tracked() < MAX_TRACKED / 2 + 10);
    }
}
