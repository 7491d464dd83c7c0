//! Who of this node's users Redis counts, and where: joins still to settle, users
//! leaving, and the device counts (this node's sockets per user, the other nodes'
//! as their events say) that `--max-devices` checks across the cluster.

use super::{command, Cluster, Event, Origin, Pending};

impl Cluster {
    /// A join of `name` from here is still to be settled: Redis has counted it, or
    /// will before anything sent from now on. Sockets of the user closing here then
    /// take their count off (`devices_closed`) rather than the user (`left`).
    pub fn joining(&self, name: &str) -> bool {
        self.joins.contains_key(name.to_ascii_lowercase().as_str())
    }

    pub(super) fn join_settled(&mut self, name: &str) {
        let lower = name.to_ascii_lowercase();
        if let Some(n) = self.joins.get_mut(lower.as_str()) {
            *n -= 1;
            if *n == 0 {
                self.joins.remove(lower.as_str());
            }
        }
    }

    /// A WebSocket here closed. Lost while Redis is down: the sync on reconnect
    /// tells Redis which users this node still has.
    pub fn left(&mut self, user: &str) {
        self.incarnations.remove(user.to_ascii_lowercase().as_str());
        if self.accepting() && !self.stopping {
            self.send(&command::leave(user, &self.node), Pending::Ignore);
        }
    }

    /// A socket of `user` opened here beside the user's others: Redis counts it, and
    /// says whether the user is past the cap now (`Event::OverCap`).
    pub fn device_opened(&mut self, origin: Origin, user: &str) {
        if self.accepting() && !self.stopping {
            self.send(&command::devices(user, &self.node, 1), Pending::Device(origin));
        }
    }

    /// `n` sockets of `user` closed here, and the user still has one here.
    pub fn devices_closed(&mut self, user: &str, n: usize) {
        if self.accepting() && !self.stopping {
            let delta = -(n.min(i64::MAX as usize) as i64);
            self.send(&command::devices(user, &self.node, delta), Pending::Ignore);
        }
    }

    /// The user's sockets on the other nodes, as last heard.
    pub(super) fn elsewhere(&self, lower: &str) -> usize {
        self.remote.get(lower).map_or(0, |r| r.iter().map(|(_, n)| n).sum())
    }

    /// Node `node` now holds `n` sockets of `name`; the loop hears if that changed
    /// the user's count elsewhere. `None`: no node holds any (the user left).
    pub(super) fn note_devices(&mut self, name: &str, node: Option<(&str, usize)>) {
        let lower = name.to_ascii_lowercase();
        let before = self.elsewhere(&lower);
        match node {
            None => {
                self.remote.remove(lower.as_str());
            }
            Some((node, _)) if node == self.node => return,
            Some((node, n)) => {
                let nodes = self.remote.entry(lower.clone().into()).or_default();
                nodes.retain(|(other, _)| &**other != node);
                if n > 0 {
                    nodes.push((node.into(), n));
                }
                if nodes.is_empty() {
                    self.remote.remove(lower.as_str());
                }
            }
        }
        let elsewhere = self.elsewhere(&lower);
        if elsewhere != before {
            self.events.push_back(Event::Devices { name: name.to_owned(), elsewhere });
        }
    }
}
