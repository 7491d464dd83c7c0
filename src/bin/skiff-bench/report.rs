//! What a run measured, one part per phase, printed as a table or as one JSON object
//! (the shape scripts/bench and the smoke test read).

use crate::args::{Args, Role};
use crate::flood::Outcome;
use crate::hist::Histogram;
use serde_json::{json, Value};

pub struct Setup {
    pub users_s: f64,
    /// The servers' RSS once the users are set up, before the first connect.
    pub node_rss_users_kib: Vec<Option<u64>>,
    pub connect_s: f64,
    pub joins_expected: u64,
    pub joins_received: u64,
    /// First connect to the last join event awaited (or the `--join-secs` limit).
    pub joins_s: f64,
    /// Each node's CPU seconds over `joins_s`: what the join storm cost (`--server-pid`).
    pub node_cpu_s: Vec<Option<f64>>,
    pub redis_cpu_s: Option<f64>,
    pub total_s: f64,
}

/// The servers' RSS before setup and when idle, per `--server-pid`.
pub struct Idle {
    pub node_rss_before_kib: Vec<Option<u64>>,
    /// After the users registered and logged in, before the first connect: what the
    /// connections alone cost is measured from here.
    pub node_rss_users_kib: Vec<Option<u64>>,
    pub node_rss_idle_kib: Vec<Option<u64>>,
}

pub struct Load {
    pub sent: u64,
    pub acked: u64,
    pub nacked: u64,
    /// Sent, but neither acked nor refused when the drain ended (None in raw mode,
    /// where the server sends no acks).
    pub unacked: Option<u64>,
    /// Messages the server accepted (sent - refused): each must reach every other
    /// client. For listeners, the count the sending run wrote to the stop file.
    pub accepted: u64,
    pub expected: u64,
    pub received: u64,
    /// The load phase, and load start to the last delivery.
    pub load_s: f64,
    pub deliver_s: f64,
    /// Load start and the last delivery, CLOCK_MONOTONIC ns: comparable between
    /// processes on one host, so several processes' deliveries/s can be combined.
    pub start_ns: u64,
    pub last_delivery_ns: u64,
    pub hist: Histogram,
    /// Send -> own ack, over every sender.
    pub ack_hist: Histogram,
    /// All nodes' CPU over the load phase (None unless every node was read).
    pub server_cpu_s: Option<f64>,
    pub node_cpu_s: Vec<Option<f64>>,
    /// Deliveries to the clients of each node.
    pub node_received: Vec<u64>,
    pub redis_cpu_s: Option<f64>,
    pub bench_cpu_s: f64,
}

pub struct Report {
    pub setup: Setup,
    pub idle: Idle,
    pub load: Load,
    /// The registration flood, when `--register-flood` asked for one.
    pub flood: Option<Outcome>,
    /// Join events seen by the end of the run: for listeners, also those of the
    /// clients other processes connected later (N(N-1)/2 summed over processes).
    pub joins_total: u64,
    pub teardown_s: f64,
    /// The reconnect storm, when `--storm-cmd` asked for one.
    pub storm: Option<crate::storm::Outcome>,
}

/// The sum over nodes, None unless every node (at least one) was read.
fn total_f(v: &[Option<f64>]) -> Option<f64> {
    if v.is_empty() {
        None
    } else {
        v.iter().copied().sum()
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The sum over nodes, None unless every node (at least one) was read.
fn total(v: &[Option<u64>]) -> Option<u64> {
    if v.is_empty() {
        None
    } else {
        v.iter().copied().sum()
    }
}

impl Idle {
    /// All nodes together (one node: that node).
    fn rss_before_kib(&self) -> Option<u64> {
        total(&self.node_rss_before_kib)
    }

    fn rss_idle_kib(&self) -> Option<u64> {
        total(&self.node_rss_idle_kib)
    }

    fn per_client_kib(&self, clients: usize) -> Option<f64> {
        Some(self.rss_idle_kib()?.saturating_sub(self.rss_before_kib()?) as f64 / clients as f64)
    }

    /// Per open WebSocket only, without the users' and sessions' share.
    fn per_connection_kib(&self, clients: usize) -> Option<f64> {
        Some(self.rss_idle_kib()?.saturating_sub(total(&self.node_rss_users_kib)?) as f64 / clients as f64)
    }
}

impl Load {
    pub fn loss(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }

    fn deliveries_per_s(&self) -> f64 {
        if self.deliver_s > 0.0 {
            self.received as f64 / self.deliver_s
        } else {
            0.0
        }
    }

    fn per_delivery_us(&self, cpu_s: f64) -> f64 {
        cpu_s * 1e6 / self.received.max(1) as f64
    }

    fn node_received(&self, node: usize) -> u64 {
        self.node_received.get(node).copied().unwrap_or(0)
    }

    /// A node's CPU per delivery to that node's clients.
    fn node_per_delivery_us(&self, node: usize) -> Option<f64> {
        Some(self.node_cpu_s.get(node).copied()?? * 1e6 / self.node_received(node).max(1) as f64)
    }

    fn json(&self) -> Value {
        let h = &self.hist;
        json!({
            "sent": self.sent,
            "acked": self.acked,
            "nacked": self.nacked,
            "unacked": self.unacked,
            "expected_deliveries": self.expected,
            "received": self.received,
            "loss": self.loss(),
            "deliveries_per_s": self.deliveries_per_s(),
            "offered_per_s": self.expected as f64 / self.load_s,
            "latency_ms": {
                "p50": ms(h.quantile(0.50)),
                "p99": ms(h.quantile(0.99)),
                "p999": ms(h.quantile(0.999)),
                "max": ms(h.max()),
                "samples": h.count(),
            },
            "ack_latency_ms": {
                "p50": ms(self.ack_hist.quantile(0.50)),
                "p99": ms(self.ack_hist.quantile(0.99)),
                "max": ms(self.ack_hist.max()),
                "samples": self.ack_hist.count(),
            },
            "server_cpu_s": self.server_cpu_s,
            "server_cpu_us_per_delivery": self.server_cpu_s.map(|c| self.per_delivery_us(c)),
            "accepted": self.accepted,
            "start_ns": self.start_ns,
            "last_delivery_ns": self.last_delivery_ns,
            "latency_buckets_ns": h.buckets(),
            "bench_cpu_s": self.bench_cpu_s,
            "bench_cpu_us_per_frame": self.per_delivery_us(self.bench_cpu_s),
        })
    }
}

impl Outcome {
    /// Answers by status, as {"201": n, "503": m}: every status that occurred.
    fn statuses_json(&self) -> Value {
        let m: serde_json::Map<String, Value> = (0..self.statuses.len())
            .filter(|&s| self.statuses[s] > 0)
            .map(|s| (s.to_string(), json!(self.statuses[s])))
            .collect();
        Value::Object(m)
    }

    fn json(&self, a: &Args) -> Value {
        let h = &self.latency;
        json!({
            "clients": a.flood_clients,
            "secs": a.flood_duration().as_secs_f64(),
            "sent": self.sent,
            "created": self.ok(),
            "non_201": self.non_201(),
            "statuses": self.statuses_json(),
            "conn_errors": self.conn_errors,
            "unanswered": self.unanswered,
            "flood_s": self.flood_s,
            "per_s": self.per_s(),
            "bench_cpu_s": self.cpu_s,
            "bench_cpu_us_per_request": self.cpu_s * 1e6 / self.sent.max(1) as f64,
            "latency_ms": {
                "p50": ms(h.quantile(0.50)),
                "p99": ms(h.quantile(0.99)),
                "max": ms(h.max()),
                "samples": h.count(),
            },
        })
    }
}

impl Report {
    /// Per node: where, how many of this process's clients, what it delivered to
    /// them and what that cost it.
    fn nodes_json(&self, a: &Args) -> Value {
        let (l, s, i) = (&self.load, &self.setup, &self.idle);
        let nodes: Vec<Value> = (0..a.targets.len())
            .map(|n| {
                json!({
                    "url": format!("http://{}", a.targets[n]),
                    "pid": a.pids.get(n),
                    "clients": (n..a.clients).step_by(a.targets.len()).count(),
                    "received": l.node_received(n),
                    "server_cpu_s": l.node_cpu_s.get(n).copied().flatten(),
                    "server_cpu_us_per_delivery": l.node_per_delivery_us(n),
                    "join_cpu_s": s.node_cpu_s.get(n).copied().flatten(),
                    "rss_before_kib": i.node_rss_before_kib.get(n).copied().flatten(),
                    "rss_idle_kib": i.node_rss_idle_kib.get(n).copied().flatten(),
                })
            })
            .collect();
        Value::Array(nodes)
    }

    fn redis_json(&self, a: &Args) -> Value {
        let Some(pid) = a.redis_pid else { return Value::Null };
        let l = &self.load;
        json!({
            "pid": pid,
            "cpu_s": l.redis_cpu_s,
            "cpu_us_per_delivery": l.redis_cpu_s.map(|c| l.per_delivery_us(c)),
            "join_cpu_s": self.setup.redis_cpu_s,
        })
    }

    pub fn json(&self, a: &Args) -> Value {
        let s = &self.setup;
        json!({
            "mode": if a.raw { "raw" } else { "skiff" },
            "role": if a.role == Role::Listeners { "listeners" } else { "all" },
            "nodes": self.nodes_json(a),
            "redis": self.redis_json(a),
            "clients": a.clients,
            "senders": a.senders,
            "rate_per_sender": a.rate,
            "duration_s": a.duration.as_secs_f64(),
            "setup": {
                "users_s": s.users_s,
                "connect_s": s.connect_s,
                "connects_per_s": a.clients as f64 / s.connect_s,
                "join_events_expected": s.joins_expected,
                "join_events_received": s.joins_received,
                "joins_s": s.joins_s,
                "join_events_total": self.joins_total,
                "join_server_cpu_s": total_f(&s.node_cpu_s),
                "total_s": s.total_s,
            },
            "idle": {
                "server_rss_before_kib": self.idle.rss_before_kib(),
                "server_rss_idle_kib": self.idle.rss_idle_kib(),
                "server_rss_per_client_kib": self.idle.per_client_kib(a.clients),
                "server_rss_users_kib": total(&self.idle.node_rss_users_kib),
                "server_rss_per_connection_kib": self.idle.per_connection_kib(a.clients),
            },
            "load": self.load.json(),
            "register_flood": self.flood.as_ref().map(|f| f.json(a)),
            "storm": self.storm.as_ref().map(|s| s.json()),
            "teardown_s": self.teardown_s,
        })
    }

    pub fn print_table(&self, a: &Args) {
        let (s, l, h) = (&self.setup, &self.load, &self.load.hist);
        let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        if a.role == Role::Listeners {
            println!("skiff-bench: {} clients listening (--role listeners)", a.clients);
        } else {
            println!(
                "skiff-bench: {} clients, {} senders x {} msg/s for {:.0} s",
                a.clients,
                a.senders,
                a.rate,
                a.duration.as_secs_f64()
            );
        }
        println!(
            "  setup      users {:.2} s, connect {:.2} s ({:.0} connects/s), joins {}/{}",
            s.users_s,
            s.connect_s,
            a.clients as f64 / s.connect_s,
            s.joins_received,
            s.joins_expected
        );
        println!(
            "  idle       server RSS {} KiB, {} KiB per client ({} KiB per connection, users aside)",
            self.idle.rss_idle_kib().map_or("-".into(), |v| v.to_string()),
            opt(self.idle.per_client_kib(a.clients)),
            opt(self.idle.per_connection_kib(a.clients))
        );
        println!(
            "  load       sent {}, acked {}, refused {}, unacked {}, expected {}, received {}, loss {}",
            l.sent,
            l.acked,
            l.nacked,
            l.unacked.map_or("-".into(), |v| v.to_string()),
            l.expected,
            l.received,
            l.loss()
        );
        println!(
            "             {:.0} deliveries/s; latency p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms, max {:.3} ms",
            l.deliveries_per_s(),
            ms(h.quantile(0.5)),
            ms(h.quantile(0.99)),
            ms(h.quantile(0.999)),
            ms(h.max())
        );
        if l.ack_hist.count() > 0 {
            println!(
                "             sender's ack p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                ms(l.ack_hist.quantile(0.5)),
                ms(l.ack_hist.quantile(0.99)),
                ms(l.ack_hist.max())
            );
        }
        println!(
            "  cpu        server {} s ({} us/delivery), bench {:.2} s ({:.2} us/frame)",
            opt(l.server_cpu_s),
            opt(l.server_cpu_s.map(|c| l.per_delivery_us(c))),
            l.bench_cpu_s,
            l.per_delivery_us(l.bench_cpu_s)
        );
        if let Some(f) = &self.flood {
            let h = &f.latency;
            println!(
                "  flood      {} connections for {:.1} s: {} registrations ({:.0}/s), non-201 {} \
                 (statuses {}, broken {}, unanswered {})",
                a.flood_clients,
                a.flood_duration().as_secs_f64(),
                f.ok(),
                f.per_s(),
                f.non_201(),
                f.statuses_json(),
                f.conn_errors,
                f.unanswered
            );
            println!(
                "             latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; bench {:.2} s ({:.2} us/request)",
                ms(h.quantile(0.5)),
                ms(h.quantile(0.99)),
                ms(h.max()),
                f.cpu_s,
                f.cpu_s * 1e6 / f.sent.max(1) as f64
            );
        }
        if a.targets.len() > 1 || a.redis_pid.is_some() || a.role == Role::Listeners {
            self.print_cluster(a);
        }
        if let Some(storm) = &self.storm {
            storm.print(a.clients);
        }
        println!("  teardown   {:.2} s", self.teardown_s);
    }

    /// Lines for several nodes, Redis or a listeners run; a single-node table has none.
    fn print_cluster(&self, a: &Args) {
        let (s, l, i) = (&self.setup, &self.load, &self.idle);
        let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        let kib = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        if a.role == Role::Listeners {
            println!(
                "  listeners  no senders; {} messages accepted by the sending run, each for all {} clients here",
                l.accepted, a.clients
            );
        }
        println!(
            "  join storm {} joins in {:.2} s from the first connect ({} by the end); server CPU {} s{}",
            s.joins_received,
            s.joins_s,
            self.joins_total,
            opt(total_f(&s.node_cpu_s)),
            a.redis_pid.map_or(String::new(), |_| format!(", redis {} s", opt(s.redis_cpu_s)))
        );
        for n in 0..a.targets.len() {
            println!(
                "  node {:<5} {} pid {}: {} clients, received {}, CPU {} s ({} us/delivery), joins {} s, RSS {} KiB",
                n + 1,
                a.targets[n],
                a.pids.get(n).map_or("-".into(), |p| p.to_string()),
                (n..a.clients).step_by(a.targets.len()).count(),
                l.node_received(n),
                opt(l.node_cpu_s.get(n).copied().flatten()),
                opt(l.node_per_delivery_us(n)),
                opt(s.node_cpu_s.get(n).copied().flatten()),
                kib(i.node_rss_idle_kib.get(n).copied().flatten())
            );
        }
        if let Some(pid) = a.redis_pid {
            println!(
                "  redis      pid {pid}: CPU {} s ({} us/delivery), joins {} s",
                opt(l.redis_cpu_s),
                opt(l.redis_cpu_s.map(|c| l.per_delivery_us(c))),
                opt(s.redis_cpu_s)
            );
        }
    }
}
