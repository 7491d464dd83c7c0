//! A registration's 201 and the primary's replicas. Redis replicates asynchronously:
//! a user the primary took and had not passed on is lost if a replica is promoted in
//! its place. So when the primary has a replica, the registration is followed on the
//! command link by `WAIT 1 <WAIT_TIMEOUT>`, and the 201 goes out only once a replica
//! holds the user; a WAIT that times out (or links that drop first) answers 503.
//!
//! How the node knows: `skiff_sync` and every `skiff_heartbeat` (each 2 s) bring back
//! the primary's replicas from `INFO replication` (attached, and online: past their
//! first sync). No replica attached: nothing waits. Replicas attached but none online
//! (still in their first sync): 503 at once, without writing, since a WAIT could
//! only time out. A WAIT that times out counts the replicas as not online until the
//! next heartbeat says otherwise, so a lagging replica costs the link one timeout per
//! heartbeat at most. At most one WAIT is in flight (a WAIT blocks the link behind
//! it): registrations written meanwhile share the next one.

use super::resp::Value;
use super::{command, Cluster, Done, Event, Expect, Origin, Pending, Reply};
use std::collections::VecDeque;
use std::time::Duration;

/// How long a registration waits for a replica before it is answered 503.
const WAIT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Replicas {
    attached: i64,
    online: i64,
}

/// The WAITs on the current links.
#[derive(Debug, Default)]
pub(super) struct Waits {
    /// What the primary said last on these links; `None` before the sync's answer.
    known: Option<Replicas>,
    /// WAITs sent and answered on these links (numbered from 1).
    sent: u64,
    done: u64,
    /// A registration was written that no WAIT sent so far covers.
    owed: bool,
    /// Registrations Redis took, each with the WAIT whose answer decides its reply.
    awaiting: VecDeque<(u64, Origin)>,
}

impl Waits {
    /// The links dropped: who waits is answered 503 (a WAIT that never comes proves
    /// nothing), and the next links learn the replicas anew.
    pub(super) fn reset(&mut self) -> Vec<Origin> {
        let waiting = self.awaiting.drain(..).map(|(_, o)| o).collect();
        *self = Waits::default();
        waiting
    }

    pub(super) fn is_empty(&self) -> bool {
        self.awaiting.is_empty()
    }
}

impl Cluster {
    /// `skiff_sync`'s or `skiff_heartbeat`'s `{attached, online}` (anything else, from
    /// an older library loaded by an older node, leaves what is known unchanged).
    pub(super) fn learn_replicas(&mut self, v: Option<&Value>) {
        let Some(items) = v.and_then(Value::as_array) else { return };
        if let [Value::Int(attached), Value::Int(online)] = items[..] {
            self.waits.known = Some(Replicas { attached, online });
            if attached == 0 {
                self.waits.owed = false;
            }
        }
    }

    /// Sends a registration; `Some` is its answer when it must not be written.
    pub(super) fn register(&mut self, origin: Origin, cmd: &[Vec<u8>]) -> Option<Reply> {
        let w = &mut self.waits;
        let covering = match w.known {
            Some(r) if r.attached == 0 => None,
            Some(r) if r.online == 0 => return Some(Reply::Unavailable),
            // A replica online, or not known yet (the sync is still out: decided when
            // Redis answers): covered by the next WAIT sent.
            _ => {
                w.owed = true;
                Some(w.sent + 1)
            }
        };
        self.send(cmd, Pending::Conn(origin, Expect::Register(covering)));
        self.send_wait_if_owed();
        None
    }

    /// One WAIT at a time, and only while a replica is online.
    fn send_wait_if_owed(&mut self) {
        let w = &mut self.waits;
        let online = w.known.is_some_and(|r| r.online > 0);
        if w.owed && online && w.sent == w.done {
            w.owed = false;
            w.sent += 1;
            self.send(&command::wait_replica(WAIT_TIMEOUT.as_millis()), Pending::Wait);
        }
    }

    /// Redis took a registration: its 201, or `None` while it waits for a WAIT.
    pub(super) fn registered(&mut self, origin: Origin, covering: Option<u64>) -> Option<Reply> {
        let Some(c) = covering else { return Some(Reply::Registered) };
        match self.waits.known {
            // No replica, or an older library that does not say (a mixed-version
            // cluster during an upgrade): as without replicas.
            None => return Some(Reply::Registered),
            Some(r) if r.attached == 0 => return Some(Reply::Registered),
            Some(r) if r.online > 0 => {}
            // The replicas fell behind: no WAIT will vouch for it.
            _ if c > self.waits.sent => return Some(Reply::Unavailable),
            _ => {}
        }
        self.waits.awaiting.push_back((c, origin));
        self.send_wait_if_owed();
        None
    }

    /// A WAIT's answer: the registrations it covers get their 201, or 503.
    pub(super) fn on_wait(&mut self, v: &Value) {
        let w = &mut self.waits;
        w.done += 1;
        let reached = matches!(v, Value::Int(n) if *n >= 1);
        let n = w.done;
        let mut answered = Vec::new();
        if reached {
            while w.awaiting.front().is_some_and(|&(c, _)| c <= n) {
                answered.extend(w.awaiting.pop_front().map(|(_, o)| (o, Reply::Registered)));
            }
        } else {
            // Not online after all: until a heartbeat says so again, registrations
            // are refused unwritten, and those written since get no WAIT.
            if let Some(r) = w.known.as_mut() {
                r.online = 0;
            }
            w.owed = false;
            answered.extend(w.awaiting.drain(..).map(|(_, o)| (o, Reply::Unavailable)));
        }
        for (origin, reply) in answered {
            self.events.push_back(Event::Reply(Done { origin, reply }));
        }
        self.send_wait_if_owed();
    }
}
