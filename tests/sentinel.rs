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

/// The server's close frame on `ws`: (code, reason), or None if none came in 15 s.
fn close_of(ws: &mut common::Ws) -> Option<(u16, String)> {
    ws.set_timeout(Duration::from_secs(15));
    for _ in 0..10_000 {
        match ws.ws.read() {
            Ok(tungstenite::Message::Close(Some(f))) => return Some((u16::from(f.code), f.reason.to_string())),
            Ok(tungstenite::Message::Close(None)) => return Some((1005, String::new())),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    None
}

/// The v2 ack of the message just said on `ws` came (`status: true`).
fn acked_true(ws: &mut Raw) -> bool {
    let before = ws.acks();
    ws.poll_until(Duration::from_secs(10), |w| w.acks() > before)
}

/// Redis replicates asynchronously: a primary killed before its replica has the
/// writes takes them along. Here the replica's sync is held back (restarted with
/// its old data, its new full sync delayed an hour by `repl-diskless-sync-delay`)
/// while users register, log in, open sockets and chat; then the primary is killed
/// and the sentinels promote the replica. No 201 is taken back (a registration
/// waits for a replica: with none in sync it is refused 503), no socket closes (the
/// nodes assert the sessions of their sockets again), every v2 client is told to
/// resync (acked messages were lost: a new epoch), and only users really gone on the
/// new primary (deleted, banned there) are closed: 1008 with the reason.
#[test]
fn a_primary_killed_before_its_replica_has_the_writes_undoes_no_answer() {
    let test = "a_primary_killed_before_its_replica_has_the_writes_undoes_no_answer";
    let Some(mut s) = setup(test, 0, &["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]) else {
        return;
    };
    let replica_port = s.replica.port;
    // Every 201: (name, key), each must log in at the end.
    let mut made: Vec<(String, String)> = Vec::new();
    let mut register = |node: &Server, name: &str| -> Option<String> {
        let r = node.post("/api/register", &format!(r#"{{"username":"{name}"}}"#), None);
        if r.status != 201 {
            assert_eq!((r.status, r.json()["error"].clone()), (503, "storage_unavailable".into()), "register {name}");
            return None;
        }
        let key = r.json()["key"].as_str().unwrap().to_owned();
        made.push((name.to_owned(), key.clone()));
        Some(key)
    };
    // Before the hold (the replica online): users, sockets for the first of each
    // node, the two that will be gone, and a message.
    let mut keys = Vec::new();
    for (n, node) in s.nodes.iter().enumerate() {
        for who in ["a", "b"] {
            keys.push(register(node, &format!("{who}{n}")).expect("a registration with the replica in sync"));
        }
    }
    let gone_key = register(&s.nodes[0], "gone").unwrap();
    let banned_key = register(&s.nodes[1], "banned").unwrap();
    let mut socks: Vec<Raw> =
        s.nodes.iter().enumerate().map(|(n, node)| Raw::open(node, &node.login(&keys[2 * n]), "/ws?v=2")).collect();
    let mut gone = s.nodes[0].try_ws_at("/ws?v=2", &s.nodes[0].login(&gone_key)).unwrap();
    let mut banned = s.nodes[1].try_ws_at("/ws?v=2", &s.nodes[1].login(&banned_key)).unwrap();
    socks[0].say("before the hold");
    assert!(acked_true(&mut socks[0]));
    assert!(wait_for(Duration::from_secs(5), || s.replica.cmd(&["GET", "skiff:msgid"]) == "1"), "replicated");

    // The hold: the replica restarts with what it has and waits an hour for its sync.
    s.primary.cmd(&["CONFIG", "SET", "repl-diskless-sync-delay", "3600"]);
    s.replica.kill9();
    s.replica.restart();
    assert!(
        wait_for(Duration::from_secs(10), || s.primary.cmd(&["INFO", "replication"]).contains("state=wait_bgsave")),
        "the replica is back, waiting for its sync"
    );
    // Each node hears of the replica's state with its next heartbeat (every 2 s). A
    // node that still counts it online waits a second for it and answers 503 too;
    // only one whose last word came in the instant the replica was down (no replica:
    // a plain 201) could be wrong, and a heartbeat since has put that right.
    std::thread::sleep(Duration::from_millis(3000));
    let mut refused = 0;
    for i in 0..9 {
        if register(&s.nodes[i % 3], &format!("held{i}")).is_none() {
            refused += 1;
        }
    }
    for (n, node) in s.nodes.iter().enumerate() {
        socks.push(Raw::open(node, &node.login(&keys[2 * n + 1]), "/ws?v=2"));
    }
    for ws in socks.iter_mut() {
        ws.say("during the hold");
        assert!(acked_true(ws), "acked by the primary alone");
    }
    // Gone on the replica only: it is the one that will be promoted.
    s.replica.cmd(&["CONFIG", "SET", "replica-read-only", "no"]);
    let gone_hash = s.replica.cmd(&["HGET", "skiff:keyof", "gone"]);
    s.replica.cmd(&["HDEL", "skiff:keys", &gone_hash]);
    s.replica.cmd(&["HDEL", "skiff:users", "gone"]);
    s.replica.cmd(&["HSET", "skiff:banned", "banned", "0 test"]);
    assert_eq!(s.replica.cmd(&["GET", "skiff:msgid"]), "1", "the replica is still held back");

    s.primary.kill9();
    assert!(
        wait_for(Duration::from_secs(30), || promoted(&s.sentinels, replica_port)),
        "the sentinels never promoted the replica"
    );
    assert!(wait_for(Duration::from_secs(20), || s.nodes.iter().all(healthy)), "nodes not healthy again");

    assert_eq!(close_of(&mut gone), Some((1008, "user deleted".into())));
    assert_eq!(close_of(&mut banned), Some((1008, "banned".into())));
    for (k, ws) in socks.iter_mut().enumerate() {
        assert!(ws.poll_until(Duration::from_secs(10), resynced), "client {k} was not told to resync: {:?}", ws.texts);
        assert!(ws.events("hello") >= 2, "a new hello names the new history: {:?}", ws.texts);
        ws.say("after the switch");
        assert!(acked_true(ws), "client {k}: {:?}", ws.texts);
        assert_eq!(ws.closed, None, "client {k}'s socket closed");
    }
    eprintln!("held back: {refused} of 9 registrations refused 503, {} users made", made.len());
    for (name, key) in &made {
        let r = s.nodes[2].post("/api/login", &format!(r#"{{"key":"{key}"}}"#), None);
        let expect = if name == "gone" || name == "banned" { r.status != 200 } else { r.status == 200 };
        assert!(expect, "{name} got a 201 and then a login {}", r.status);
    }
    for (n, node) in s.nodes.iter().enumerate() {
        let log = node.stderr();
        assert!(!log.contains("? left") && !log.contains("close 1000"), "node {n}: {log}");
        let gone_line = ["gone left (close 1008: user deleted)", "banned left (close 1008: banned)", ""][n];
        assert!(log.contains(gone_line), "node {n} names who it closed and why: {log}");
        assert!(log.contains(&format!("b{n}'s session was missing")), "node {n} restored b{n}'s session: {log}");
        // Seven messages were acked before the switch (one, then one per socket): the
        // new primary's counter goes past them.
        let last: u64 = log
            .lines()
            .rfind(|l| l.contains("in sync as node"))
            .and_then(|l| l.rsplit("last message ").next()?.split(',').next()?.trim().parse().ok())
            .unwrap_or(0);
        assert!(last >= 7, "node {n} synced with the new primary at last message {last}");
    }
}

/// `skiff_reassert` on a real Redis (library.lua as the nodes load it): a session the
/// server lacks is written again, one that ended stays ended with its code, and a
/// user deleted, banned, or registered anew under the same name is gone.
#[test]
fn a_session_is_restored_only_if_it_did_not_end_and_its_user_is_the_same() {
    let Some(r) = Redis::start_or_skip("a_session_is_restored_only_if_it_did_not_end_and_its_user_is_the_same") else {
        return;
    };
    r.cmd(&["FUNCTION", "LOAD", "REPLACE", include_str!("../src/cluster/library.lua")]);
    let call = |args: &[&str]| {
        let mut full = vec!["FCALL", args[0], "0", "skiff:"];
        full.extend(&args[1..]);
        r.cmd(&full)
    };
    let (s1, s2, s3) = ("a1".repeat(32), "b2".repeat(32), "c3".repeat(32));
    assert_eq!(call(&["skiff_register", "ann", "Ann", "k1"]), "1");
    let created = r.cmd(&["HGET", "skiff:created", "ann"]);
    let reassert = |sess: &str, created: &str| call(&["skiff_reassert", sess, "ann", "Ann", "60000", created]);
    assert_eq!(call(&["skiff_login", "k1", &s1, "60000", "8"]), "Ann");
    assert_eq!(reassert(&s1, &created), "live");
    assert_eq!(call(&["skiff_logout", &s1]), "1");
    assert_eq!(reassert(&s1, &created), "ended 1000", "a logout stays a logout");
    // Never written here (lost with a failover): written again, for the TTL given.
    assert_eq!(reassert(&s2, &created), "restored");
    assert_eq!(call(&["skiff_session", &s2]).lines().next(), Some("Ann"));
    assert_eq!(reassert(&s2, ""), "live");
    assert_eq!(reassert(&s3, "12345"), "deleted", "another user under the same name");
    r.cmd(&["HSET", "skiff:banned", "ann", "0 test"]);
    assert_eq!(reassert(&s3, &created), "banned");
    r.cmd(&["HDEL", "skiff:users", "ann"]);
    assert_eq!(reassert(&s3, &created), "deleted");
    // The join says when its user was registered; a rollback moves the counter past
    // what a node saw, even on a Redis with no history at all.
    assert_eq!(call(&["skiff_register", "bob", "Bob", "k2"]), "1");
    let joined = call(&["skiff_join", "bob", "Bob", "n1", "1.1"]);
    assert_eq!(joined.lines().nth(1), Some(r.cmd(&["HGET", "skiff:created", "bob"]).as_str()), "{joined}");
    let synced = call(&["skiff_sync", "n1", "6000", "fresh", "10", "old", "41"]);
    let lines: Vec<&str> = synced.lines().collect();
    assert_eq!(&lines[1..3], ["fresh", "41"], "{synced}");
    assert_eq!(lines[lines.len() - 2..], ["0", "0"], "no replica: {synced}");
}
