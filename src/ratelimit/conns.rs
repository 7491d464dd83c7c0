//! Open connections per client address (`--max-connections-per-ip`), so that one
//! address can never fill the server and lock everyone else out. A direct peer is
//! counted when it is accepted; a `--trusted-proxy` is not counted itself, and the
//! address it forwards is counted once a request head names it. Each connection is
//! counted against one group at most, remembered by its slab key, so that letting
//! it go is exact whichever way the connection ends. No sockets here.

use super::Group;
use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Debug)]
pub struct ConnLimit {
    /// Connections per group at most; 0 = off.
    per_ip: u32,
    limit_loopback: bool,
    trusted: Vec<IpAddr>,
    open: HashMap<Group, u32>,
    /// What each counted connection is counted against, by slab key.
    charged: HashMap<usize, Group>,
    /// Connections refused for being over the cap, for logs and tests.
    pub refused: u64,
}

impl ConnLimit {
    /// Counts nothing.
    pub fn off() -> Self {
        ConnLimit::new(0, false, Vec::new())
    }

    /// `per_ip == 0` turns the cap off. `limit_loopback`: loopback peers count too
    /// (they are exempt otherwise, like every other limit). `trusted`: the
    /// `--trusted-proxy` addresses, never counted themselves.
    pub fn new(per_ip: u32, limit_loopback: bool, trusted: Vec<IpAddr>) -> Self {
        ConnLimit { per_ip, limit_loopback, trusted, open: HashMap::new(), charged: HashMap::new(), refused: 0 }
    }

    /// A direct peer this cap applies to: not a trusted proxy, not exempt loopback.
    fn counts_peer(&self, peer: IpAddr) -> bool {
        let peer = crate::proxy::canonical(peer);
        self.per_ip != 0 && !self.trusted.contains(&peer) && (self.limit_loopback || !peer.is_loopback())
    }

    fn full(&self, group: Group) -> bool {
        self.open.get(&group).is_some_and(|&n| n >= self.per_ip)
    }

    /// May a connection from `peer` be accepted? Counts a refusal if not.
    pub fn admits(&mut self, peer: IpAddr) -> bool {
        if self.counts_peer(peer) && self.full(Group::of(peer)) {
            self.refused += 1;
            return false;
        }
        true
    }

    /// Counts connection `key`, just accepted from `peer` (after `admits`, or a
    /// connection taken over from a previous process, which is counted whatever
    /// the cap: it is open already).
    pub fn accepted(&mut self, key: usize, peer: IpAddr) {
        if self.counts_peer(peer) {
            self.charge(key, Group::of(peer));
        }
    }

    /// Connection `key`'s request came through a trusted proxy from `client`:
    /// counts the connection against `client` from now on (a proxy may reuse one
    /// connection for several clients). False if `client` is at the cap: the
    /// connection is then counted as before, and should be refused.
    pub fn forwarded(&mut self, key: usize, client: IpAddr) -> bool {
        if self.per_ip == 0 {
            return true;
        }
        let group = Group::of(client);
        if self.charged.get(&key) == Some(&group) {
            return true;
        }
        if self.full(group) {
            self.refused += 1;
            return false;
        }
        self.release(key);
        self.charge(key, group);
        true
    }

    fn charge(&mut self, key: usize, group: Group) {
        *self.open.entry(group).or_insert(0) += 1;
        if let Some(old) = self.charged.insert(key, group) {
            // A key is charged once; replacing one without a release would leak.
            self.uncount(old);
        }
    }

    /// Connection `key` is gone (its key may be reused from now on).
    pub fn release(&mut self, key: usize) {
        if let Some(group) = self.charged.remove(&key) {
            self.uncount(group);
        }
    }

    fn uncount(&mut self, group: Group) {
        if let Some(n) = self.open.get_mut(&group) {
            *n -= 1;
            if *n == 0 {
                self.open.remove(&group);
            }
        }
    }

    /// Connections counted against `ip`'s group.
    pub fn open_from(&self, ip: IpAddr) -> u32 {
        self.open.get(&Group::of(ip)).copied().unwrap_or(0)
    }

    /// Connections counted at all.
    pub fn counted(&self) -> usize {
        self.charged.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Accepts like the reactor does.
    fn accept(l: &mut ConnLimit, key: usize, peer: &str) -> bool {
        let ok = l.admits(ip(peer));
        if ok {
            l.accepted(key, ip(peer));
        }
        ok
    }

    #[test]
    fn caps_each_address_and_frees_on_release() {
        let mut l = ConnLimit::new(2, false, vec![]);
        assert!(accept(&mut l, 1, "192.0.2.1"));
        assert!(accept(&mut l, 2, "192.0.2.1"));
        assert!(!accept(&mut l, 3, "192.0.2.1"), "the third from one address");
        assert!(accept(&mut l, 3, "192.0.2.2"), "another address is not affected");
        assert_eq!(l.refused, 1);
        l.release(1);
        l.release(1); // twice: nothing more is freed
        assert_eq!(l.open_from(ip("192.0.2.1")), 1);
        assert!(accept(&mut l, 1, "192.0.2.1"), "room again after one closed");
        for k in [1, 2, 3] {
            l.release(k);
        }
        assert_eq!((l.counted(), l.open.len()), (0, 0), "nothing left behind");
    }

    #[test]
    fn ipv6_counts_by_64() {
        let mut l = ConnLimit::new(2, false, vec![]);
        assert!(accept(&mut l, 1, "2001:db8:0:1::1"));
        assert!(accept(&mut l, 2, "2001:db8:0:1:8000::2"));
        assert!(!accept(&mut l, 3, "2001:db8:0:1:ffff:ffff:ffff:ffff"), "one /64, one client");
        assert!(accept(&mut l, 3, "2001:db8:0:2::1"));
        assert!(accept(&mut l, 4, "::ffff:192.0.2.1"));
        assert!(accept(&mut l, 5, "192.0.2.1"));
        assert!(!accept(&mut l, 6, "192.0.2.1"), "IPv4-mapped is the IPv4 address");
    }

    #[test]
    fn loopback_and_proxies_are_exempt_and_zero_is_off() {
        let mut l = ConnLimit::new(1, false, vec![ip("10.0.0.2")]);
        for k in 0..5 {
            assert!(accept(&mut l, k, "127.0.0.1"));
            assert!(accept(&mut l, 10 + k, "::1"));
            assert!(accept(&mut l, 20 + k, "10.0.0.2"), "a trusted proxy is not capped");
        }
        assert_eq!(l.counted(), 0);
        let mut l = ConnLimit::new(1, true, vec![]);
        assert!(accept(&mut l, 1, "127.0.0.1"));
        assert!(!accept(&mut l, 2, "127.0.0.1"), "--limit-loopback");
        let mut l = ConnLimit::new(0, true, vec![]);
        for k in 0..100 {
            assert!(accept(&mut l, k, "192.0.2.1"));
        }
        assert_eq!(l.counted(), 0);
    }

    #[test]
    fn forwarded_clients_count_once_the_head_names_them() {
        let proxy = "127.0.0.1";
        let mut l = ConnLimit::new(2, false, vec![ip(proxy)]);
        for k in 1..=4 {
            assert!(accept(&mut l, k, proxy));
        }
        assert!(l.forwarded(1, ip("203.0.113.9")));
        assert!(l.forwarded(1, ip("203.0.113.9")), "the next request of the same client");
        assert!(l.forwarded(2, ip("203.0.113.9")));
        assert!(!l.forwarded(3, ip("203.0.113.9")), "a third connection of that client");
        assert!(l.forwarded(3, ip("203.0.113.10")));
        // A proxy's keep-alive connection now carries another client.
        assert!(l.forwarded(2, ip("203.0.113.10")));
        assert_eq!((l.open_from(ip("203.0.113.9")), l.open_from(ip("203.0.113.10"))), (1, 2));
        assert!(!l.forwarded(4, ip("203.0.113.10")));
        for k in 1..=4 {
            l.release(k);
        }
        assert_eq!((l.counted(), l.open.len()), (0, 0));
    }
}
