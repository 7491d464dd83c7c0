//! Cluster mode: who is online across every node, in the order their joins came off
//! the room's Redis channel. Each node keeps this copy, so `/api/online`, the v2
//! hello and `/api/user/{name}` answer without a round trip to Redis.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

#[derive(Default)]
pub struct Replica {
    /// Join order -> name as registered.
    order: BTreeMap<u64, Rc<str>>,
    /// Lowercased name -> its place in `order`.
    by_name: HashMap<Box<str>, u64>,
    next: u64,
    /// Lowercased name -> the user's sockets on other nodes (none listed: none).
    elsewhere: HashMap<Box<str>, usize>,
}

impl Replica {
    /// False if the user was already listed (a repeated join changes nothing).
    pub fn insert(&mut self, name: &str) -> bool {
        let lower: Box<str> = name.to_ascii_lowercase().into();
        if self.by_name.contains_key(&lower) {
            return false;
        }
        self.next += 1;
        self.order.insert(self.next, Rc::from(name));
        self.by_name.insert(lower, self.next);
        true
    }

    pub fn remove(&mut self, name: &str) -> bool {
        match self.by_name.remove(name.to_ascii_lowercase().as_str()) {
            Some(at) => self.order.remove(&at).is_some(),
            None => false,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name.to_ascii_lowercase().as_str())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.order.values().map(|n| &**n)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The user's sockets on other nodes, as this node last heard.
    pub fn elsewhere(&self, name: &str) -> usize {
        self.elsewhere.get(name.to_ascii_lowercase().as_str()).copied().unwrap_or(0)
    }

    pub fn set_elsewhere(&mut self, name: &str, n: usize) {
        let lower: Box<str> = name.to_ascii_lowercase().into();
        if n == 0 {
            self.elsewhere.remove(&lower);
        } else {
            self.elsewhere.insert(lower, n);
        }
    }

    /// Every user's sockets on other nodes at once (after a sync).
    pub fn replace_elsewhere(&mut self, counts: impl IntoIterator<Item = (String, usize)>) {
        self.elsewhere.clear();
        for (name, n) in counts {
            self.set_elsewhere(&name, n);
        }
    }

    /// Replaces the list with `names` (in join order). Returns who is gone and who is
    /// new compared to before, for the local clients to hear about.
    pub fn replace(&mut self, names: &[String]) -> (Vec<Rc<str>>, Vec<Rc<str>>) {
        let mut old = std::mem::take(self);
        let elsewhere = std::mem::take(&mut old.elsewhere);
        *self = Replica { next: old.next, elsewhere, ..Replica::default() };
        let mut joined = Vec::new();
        for n in names {
            if self.insert(n) && !old.contains(n) {
                joined.push(Rc::from(n.as_str()));
            }
        }
        let left = old.order.into_values().filter(|n| !self.contains(n)).collect();
        (left, joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_join_order_and_ignores_case() {
        let mut r = Replica::default();
        assert!(r.insert("Bob"));
        assert!(r.insert("alice"));
        assert!(!r.insert("BOB"));
        assert!(r.contains("ALICE"));
        assert_eq!(r.names().collect::<Vec<_>>(), ["Bob", "alice"]);
        assert!(r.remove("bob"));
        assert!(!r.remove("bob"));
        assert!(r.insert("Bob"));
        assert_eq!(r.names().collect::<Vec<_>>(), ["alice", "Bob"]);
    }

    #[test]
    fn replace_reports_the_difference() {
        let mut r = Replica::default();
        r.insert("a");
        r.insert("b");
        let (left, joined) = r.replace(&["b".into(), "c".into()]);
        assert_eq!(left.iter().map(|n| &**n).collect::<Vec<_>>(), ["a"]);
        assert_eq!(joined.iter().map(|n| &**n).collect::<Vec<_>>(), ["c"]);
        assert_eq!(r.names().collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(r.len(), 2);
    }
}
