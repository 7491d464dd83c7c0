//! Cluster mode on Redis Sentinel (CONTRACT.md, "Redis Sentinel"): one primary, one
//! replica and three sentinels (each `redis-server --sentinel`, the binary Debian's
//! redis-sentinel runs), all private to the test on loopback ports, and three skiff
//! nodes given `redis+sentinel://S1,S2,S3/mymaster`. A kill -9 of the primary under a
//! message and a registration flood, its return as a replica, a planned
//! `SENTINEL FAILOVER`, and a sentinel that is down from the start.

mod common;
#[path = "common/raw.rs"]
mod raw;
#[path = "common/redis.rs"]
mod redis;

use common::{wait_for, Server};
use raw::{flood, Raw};
use redis::{cmd_at, free_port, Redis, Reply};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MASTER: &str = "mymaster";
const AOF: [&str; 6] = ["--appendonly", "yes", "--appendfsync", "always", "--save", ""];

/// The book's sentinel file (docs/src/cluster.md, "Failover with Redis Sentinel"), as
/// printed but for the sentinel's own port and the primary's.
fn readme_conf(port: u16, primary: u16) -> String {
    const README: &str = include_str!("../docs/src/cluster.md");
    let section = &README[README.find("## Failover with Redis Sentinel").expect("the book has the Sentinel section")..];
    let block = section.split("```").nth(3).expect("the sentinel file is the section's second block");
    assert!(block.starts_with("\nport 26379\n"), "the sentinel file block: {block}");
    block
        .trim_start()
        .lines()
        .map(|line| match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["port", _] => format!("port {port}\n"),
            ["sentinel", "monitor", name, host, _, quorum] => {
                format!("sentinel monitor {name} {host} {primary} {quorum}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect()
}

/// One `redis-server --sentinel` with its own (rewritable) config file.
struct Sentinel {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(primary: u16) -> Sentinel {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(&conf, readme_conf(port, primary) + &format!("dir {}\n", dir.path().display())).unwrap();
            let log = std::fs::File::create(dir.path().join("sentinel.log")).unwrap();
            let child = Command::new(redis::REDIS_SERVER)
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn redis-server --sentinel");
            let mut s = Sentinel { child: Some(child), port, dir };
            if wait_for(Duration::from_secs(5), || cmd_at(port, &["PING"]).is_ok()) {
                return s;
            }
            s.kill9();
        }
        panic!("a sentinel did not start in 5 tries");
    }

    fn primary_port(&self) -> Option<u16> {
        match cmd_at(self.port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER]) {
            Ok(Reply::Array(Some(items))) => items.get(1)?.to_string().parse().ok(),
            _ => None,
        }
    }

    /// Knows the replica and the other two sentinels: ready to fail over.
    fn ready(&self) -> bool {
        let count = |what: &str| match cmd_at(self.port, &["SENTINEL", what, MASTER]) {
            Ok(Reply::Array(Some(items))) => items.len(),
            _ => 0,
        };
        count("REPLICAS") >= 1 && count("SENTINELS") >= 2
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- sentinel {} log ---\n{}", self.port, self.log());
        }
        self.kill9();
    }
}

struct Setup {
    primary: Redis,
    replica: Redis,
    sentinels: Vec<Sentinel>,
    nodes: Vec<Server>,
}

fn replica_synced(r: &Redis) -> bool {
    r.try_cmd(&["INFO", "replication"]).is_ok_and(|i| i.to_string().contains("master_link_status:up"))
}

/// The primary, its replica in sync, three sentinels that know both and each other,
/// and three nodes in sync through them; `down` sentinels (from the first) stopped
/// before the nodes start; `redis` more settings for both servers.
fn setup(test: &str, down: usize, redis: &[&str]) -> Option<Setup> {
    let mut args = AOF.to_vec();
    args.extend(redis);
    let primary = Redis::start_or_skip_with(test, &args)?;
    let port = primary.port.to_string();
    args.extend(["--replicaof", "127.0.0.1", &port]);
    let replica = Redis::start_or_skip_with(test, &args)?;
    assert!(wait_for(Duration::from_secs(10), || replica_synced(&replica)), "the replica never synced");
    let mut sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(primary.port)).collect();
    assert!(
        wait_for(Duration::from_secs(30), || sentinels.iter().all(Sentinel::ready)),
        "the sentinels did not find the replica and each other"
    );
    let url = format!(
        "redis+sentinel://{}/{MASTER}",
        sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect::<Vec<_>>().join(",")
    );
    for s in sentinels.iter_mut().take(down) {
        s.kill9();
    }
    let nodes: Vec<Server> = (0..3).map(|_| Server::start_with(&["--redis", &url])).collect();
    assert!(wait_for(Duration::from_secs(15), || nodes.iter().all(healthy)), "nodes never became healthy");
    Some(Setup { primary, replica, sentinels, nodes })
}

fn healthy(n: &Server) -> bool {
    n.get("/healthz", None).status == 200
}

/// The sentinels that are up agree the primary is on `port`.
fn promoted(sentinels: &[Sentinel], port: u16) -> bool {
    sentinels.iter().filter(|s| s.child.is_some()).all(|s| s.primary_port() == Some(port))
}

/// What one sending client sent and what came back.
struct Sender {
    ws: Raw,
    sent: Vec<String>,
}

/// `per_node` v2 clients on every node (the first of each sends), users `{tag}{n}{i}`.
fn clients(nodes: &[Server], tag: &str, per_node: usize) -> (Vec<Sender>, Vec<Raw>) {
    let mut senders = Vec::new();
    let mut listeners = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for i in 0..per_node {
            let ws = Raw::open(node, &node.user(&format!("{tag}{n}x{i}")), "/ws?v=2");
            if i == 0 {
                senders.push(Sender { ws, sent: Vec::new() });
            } else {
                listeners.push(ws);
            }
        }
    }
    (senders, listeners)
}

impl AsMut<Raw> for Sender {
    fn as_mut(&mut self) -> &mut Raw {
        &mut self.ws
    }
}

/// `count` messages from each sender (`s{k}-{i}`), `every` apart, while `during` runs
/// here; each sender remembers what it sent.
fn send<T>(senders: &mut [Sender], count: usize, every: Duration, during: impl FnOnce() -> T) -> T {
    let out = flood(senders, count, every, during);
    for (k, s) in senders.iter_mut().enumerate() {
        s.sent.extend((0..count).map(|i| format!("s{k}-{i}")));
    }
    out
}

fn texts(ws: &Raw) -> Vec<String> {
    ws.texts.iter().filter(|v| v.get("id").is_some()).filter_map(|v| v["message"].as_str().map(str::to_owned)).collect()
}

fn resynced(ws: &Raw) -> bool {
    ws.texts.iter().any(|v| v["event"] == "resync")
}

/// Each sender's messages paired with their acks, in order: (text, ack).
fn acked(s: &Sender) -> Vec<(String, Value)> {
    let acks: Vec<Value> = s.ws.texts.iter().filter(|v| v.get("status").is_some()).cloned().collect();
    assert_eq!(acks.len(), s.sent.len(), "one ack per message: {:?}", s.ws.texts);
    s.sent.iter().cloned().zip(acks).collect()
}

/// Takes in what is still on its way, until nothing has come for a while.
fn settle(senders: &mut [Sender], listeners: &mut [Raw]) {
    let mut quiet_since = Instant::now();
    let start = Instant::now();
    let mut seen = 0;
    while quiet_since.elapsed() < Duration::from_millis(1500) && start.elapsed() < Duration::from_secs(30) {
        let mut n = 0;
        for ws in senders.iter_mut().map(|s| &mut s.ws).chain(listeners.iter_mut()) {
            ws.poll();
            n += ws.texts.len();
        }
        if n != seen {
            seen = n;
            quiet_since = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every message acked `true` reached every client exactly once (or the client was
/// told to resync: those were lost with the old primary); nobody got a message
/// twice; every socket is open; and clients that did not resync agree on the order.
/// Returns (acked true, refused, resyncs).
fn check_delivery(senders: &[Sender], listeners: &[Raw]) -> (usize, usize, usize) {
    let mut ok = HashSet::new();
    let mut refused = 0;
    for s in senders {
        for (text, ack) in acked(s) {
            if ack["status"] == true {
                ok.insert(text);
            } else {
                assert_eq!(ack["code"], "unavailable", "{ack}");
                refused += 1;
            }
        }
    }
    let mut resyncs = 0;
    let mut order: Option<Vec<String>> = None;
    for (k, ws) in senders.iter().map(|s| &s.ws).chain(listeners.iter()).enumerate() {
        assert_eq!(ws.closed, None, "client {k}'s socket closed");
        assert_eq!(ws.events("leave"), 0, "client {k} heard a leave");
        let got = texts(ws);
        let unique: HashSet<&String> = got.iter().collect();
        if unique.len() != got.len() {
            let mut count: HashMap<&String, usize> = HashMap::new();
            got.iter().for_each(|t| *count.entry(t).or_default() += 1);
            let twice: Vec<&&String> = count.iter().filter(|(_, &n)| n > 1).map(|(t, _)| t).collect();
            let frames: Vec<&Value> = ws
                .texts
                .iter()
                .filter(|v| twice.iter().any(|t| v["message"] == t.as_str()) || v.get("event").is_some())
                .collect();
            panic!("client {k} got {twice:?} twice (resync: {}): {frames:?}", resynced(ws));
        }
        if resynced(ws) {
            resyncs += 1;
            continue;
        }
        let own = format!("s{}-", k);
        for text in &ok {
            // A sender is acked, not echoed: its own messages are not in its stream.
            if k < senders.len() && text.starts_with(&own) {
                continue;
            }
            assert!(unique.contains(text), "client {k} never got acked message {text}");
        }
        let others: Vec<String> = got.into_iter().filter(|t| !(k < senders.len() && t.starts_with(&own))).collect();
        if k >= senders.len() {
            match &order {
                None => order = Some(others),
                Some(o) => assert_eq!(&others, o, "client {k} saw another order"),
            }
        }
    }
    (ok.len(), refused, resyncs)
}

#[test]
fn killing_the_primary_under_floods_fails_over_and_its_return_changes_nothing() {
    let test = "killing_the_primary_under_floods_fails_over_and_its_return_changes_nothing";
    let Some(mut s) = setup(test, 0, &[]) else {
        return;
    };
    let (mut senders, mut listeners) = clients(&s.nodes, "k", 4);
    let replica_port = s.replica.port;
    // Registrations on every node in turn, each with when its 201 came.
    let registered: Arc<Mutex<Vec<(Instant, String, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let nodes = &s.nodes;
    let (killed_at, promoted_at, healthy_at) = std::thread::scope(|scope| {
        let (registered, stopping) = (registered.clone(), stop.clone());
        scope.spawn(move || {
            for i in 0..2000 {
                if stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let name = format!("reg{i}");
                let r = nodes[i % nodes.len()].post("/api/register", &format!(r#"{{"username":"{name}"}}"#), None);
                if r.status == 201 {
                    let key = r.json()["key"].as_str().unwrap().to_owned();
                    registered.lock().unwrap().push((Instant::now(), name, key));
                } else {
                    assert_eq!(r.status, 503, "a registration neither made nor refused as unavailable");
                }
                std::thread::sleep(Duration::from_millis(15));
            }
        });
        let times = send(&mut senders, 300, Duration::from_millis(40), || {
            std::thread::sleep(Duration::from_secs(1));
            let killed_at = Instant::now();
            s.primary.kill9();
            assert!(
                wait_for(Duration::from_secs(30), || promoted(&s.sentinels, replica_port)),
                "the sentinels never promoted the replica"
            );
            let promoted_at = Instant::now();
            assert!(wait_for(Duration::from_secs(20), || nodes.iter().all(healthy)), "nodes not healthy again");
            (killed_at, promoted_at, Instant::now())
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        times
    });
    let back = healthy_at.duration_since(promoted_at);
    eprintln!(
        "failover: promoted {:.1} s after the kill, nodes healthy {:.1} s after that",
        promoted_at.duration_since(killed_at).as_secs_f64(),
        back.as_secs_f64()
    );
    assert!(back <= Duration::from_secs(10), "healthy again {back:?} after the promotion");
    settle(&mut senders, &mut listeners);
    let (ok, refused, resyncs) = check_delivery(&senders, &listeners);
    eprintln!("messages: {ok} acked, {refused} refused as unavailable, {resyncs} clients resynced");
    assert!(ok > 0 && refused > 0, "the flood spanned the outage: {ok} acked, {refused} refused");
    // Every user who got a 201 after the promotion can log in.
    let after: Vec<(String, String)> = registered
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _, _)| *at > promoted_at)
        .map(|(_, n, k)| (n.clone(), k.clone()))
        .collect();
    assert!(!after.is_empty(), "registrations went on after the promotion");
    for (name, key) in &after {
        let r = s.nodes[0].post("/api/login", &format!(r#"{{"key":"{key}"}}"#), None);
        assert_eq!(r.status, 200, "{name}, registered after the promotion, is gone");
    }

    // The old primary comes back (and the sentinels make it a replica): nothing
    // changes for the nodes.
    s.primary.restart();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert!(s.nodes.iter().all(healthy), "a node went unhealthy when the old primary returned");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(promoted(&s.sentinels, replica_port), "the old primary took over again");
    let before: Vec<usize> = listeners.iter().map(|l| texts(l).len()).collect();
    senders[0].ws.say("after the return");
    assert!(senders[0].ws.poll_until(Duration::from_secs(10), |w| w.texts.last().is_some_and(|v| v["status"] == true)));
    for (l, n) in listeners.iter_mut().zip(before) {
        assert!(l.poll_until(Duration::from_secs(10), |w| texts(w).len() > n), "a listener missed the message");
        assert_eq!(l.closed, None);
    }
    let _ = &s.replica;
}

/// The sentinel leading the failover says `+selected-slave` before it promotes the
/// replica; every node watches every sentinel and holds its clients' input from then
/// until it is in sync with the new primary. Without that, the old primary went on
/// taking writes until the switch and threw them away when it became a replica: the
/// history started a new epoch and every client resynced (seen before the watch).
#[test]
fn a_planned_failover_costs_no_message_at_all() {
    let test = "a_planned_failover_costs_no_message_at_all";
    let Some(s) = setup(test, 0, &[]) else { return };
    let (mut senders, mut listeners) = clients(&s.nodes, "p", 3);
    let replica_port = s.replica.port;
    let (asked, done) = send(&mut senders, 150, Duration::from_millis(40), || {
        std::thread::sleep(Duration::from_secs(1));
        let asked = Instant::now();
        let r = cmd_at(s.sentinels[0].port, &["SENTINEL", "FAILOVER", MASTER]).unwrap();
        assert_eq!(r, Reply::Simple("OK".into()));
        assert!(wait_for(Duration::from_secs(20), || promoted(&s.sentinels, replica_port)), "no switch");
        assert!(wait_for(Duration::from_secs(20), || s.nodes.iter().all(healthy)), "nodes not healthy again");
        (asked, Instant::now())
    });
    eprintln!("planned failover: nodes healthy {:.1} s after it was asked", done.duration_since(asked).as_secs_f64());
    settle(&mut senders, &mut listeners);
    let (ok, refused, resyncs) = check_delivery(&senders, &listeners);
    eprintln!("planned failover: {ok} acked, {refused} refused as unavailable, {resyncs} clients resynced");
    assert_eq!(resyncs, 0, "a planned failover lost an acked message (the history moved to a new epoch)");
    assert_eq!((ok, refused), (450, 0), "every message sent was acked and delivered");
}

#[test]
fn a_sentinel_that_is_down_changes_nothing() {
    let Some(s) = setup("a_sentinel_that_is_down_changes_nothing", 1, &[]) else { return };
    let (mut senders, mut listeners) = clients(&s.nodes, "d", 3);
    send(&mut senders, 20, Duration::from_millis(20), || ());
    settle(&mut senders, &mut listeners);
    let (ok, refused, resyncs) = check_delivery(&senders, &listeners);
    assert_eq!((ok, refused, resyncs), (60, 0, 0));
    for n in &s.nodes {
        assert!(n.stderr().contains("trying the next one"), "the first sentinel was passed over");
    }
    let pages: HashMap<usize, Value> =
        s.nodes.iter().enumerate().map(|(i, n)| (i, n.get("/healthz", None).json())).collect();
    assert!(pages.values().all(|p| p["status"] == "ok"), "{pages:?}");
}
