//! Cluster mode (CONTRACT.md, "Cluster mode: --redis URL"): several skiff nodes sharing
//! one room through a private redis-server. Every test starts its own Redis on its own
//! port, so the tests run in parallel. Nodes are spawned here rather than through
//! common::Server because a node that refuses to start (an unknown flag, a hang while
//! connecting to Redis) must fail the test at once with its stderr, and because
//! --reuse-port needs an explicit --listen that Server would give twice.

mod common;
#[path = "common/redis.rs"]
mod redis;

use common::{group_members, read_response, wait_for, Resp, Ws, IO_TIMEOUT};
use redis::Redis;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

const LEAVE_LIMIT: Duration = Duration::from_secs(15);
const RECOVERY_LIMIT: Duration = Duration::from_secs(10);

struct Node {
    name: String,
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// Why a node did not start: its exit status (None: still running, killed by us) and
/// what it said.
struct NotStarted {
    status: Option<ExitStatus>,
    first_line: String,
    stderr: String,
}

impl std::fmt::Display for NotStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.status.map_or("still running after 10 s (killed)".to_owned(), |s| s.to_string());
        write!(f, "{status}, first stdout line {:?}, stderr:\n{}", self.first_line, self.stderr)
    }
}

impl Node {
    /// A node on 127.0.0.1:0 joined to `redis`; panics with the node's stderr if it
    /// does not say where it listens within 10 s.
    fn start(name: &str, redis: &Redis, extra: &[&str]) -> Node {
        let mut args = vec!["--redis".to_owned(), redis.url()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Node::spawn(name, "127.0.0.1:0", &args).unwrap_or_else(|e| panic!("cluster node {name} did not start: {e}"))
    }

    fn spawn(name: &str, listen: &str, args: &[String]) -> Result<Node, NotStarted> {
        Node::spawn_env(name, listen, args, &[])
    }

    fn spawn_env(name: &str, listen: &str, args: &[String], env: &[(&str, &str)]) -> Result<Node, NotStarted> {
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr_path = dir.path().join("stderr.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["--listen", listen, "--db"])
            // Cluster mode must ignore it: tests check that no database appears here.
            .arg(dir.path().join("chat.db"))
            .args(args)
            .env("RUST_LOG", "debug")
            .env_remove("SKIFF_REDIS")
            .env_remove("SKIFF_REUSE_PORT")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("stderr log"))
            .spawn()
            .expect("spawn skiff");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        // A node blocked on an unreachable Redis before printing would hang the test.
        let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        if let Some(addr) = line.trim().strip_prefix("listening on http://").and_then(|a| a.parse().ok()) {
            return Ok(Node { name: name.to_owned(), child, addr, dir });
        }
        let status = wait_exit(&mut child, Duration::from_secs(5));
        let _ = child.kill();
        let _ = child.wait();
        Err(NotStarted { status, first_line: line, stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default() })
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn request(&self, method: &str, path: &str, cookie: Option<&str>, body: Option<&str>) -> Resp {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
        if let Some(c) = cookie {
            req.push_str(&format!("Cookie: {c}\r\n"));
        }
        match body {
            Some(b) => {
                req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()))
            }
            None => req.push_str("\r\n"),
        }
        self.try_raw(req.as_bytes())
            .unwrap_or_else(|| panic!("{method} {path} on node {}: no response within {IO_TIMEOUT:?}", self.name))
    }

    fn try_raw(&self, bytes: &[u8]) -> Option<Resp> {
        let mut s = TcpStream::connect(self.addr).ok()?;
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s.write_all(bytes).ok()?;
        read_response(&mut s)
    }

    fn get(&self, path: &str, cookie: Option<&str>) -> Resp {
        self.request("GET", path, cookie, None)
    }

    fn post(&self, path: &str, body: &str, cookie: Option<&str>) -> Resp {
        self.request("POST", path, cookie, Some(body))
    }

    fn register(&self, name: &str) -> String {
        let r = self.post("/api/register", &json!({ "username": name }).to_string(), None);
        assert_eq!(r.status, 201, "register {name} on node {}: {}", self.name, r.text());
        r.json()["key"].as_str().expect("key").to_owned()
    }

    fn login(&self, key: &str) -> String {
        let r = self.post("/api/login", &json!({ "key": key }).to_string(), None);
        assert_eq!(r.status, 200, "login on node {}: {}", self.name, r.text());
        r.cookie().expect("session cookie")
    }

    fn online(&self, cookie: &str) -> Value {
        let r = self.get("/api/online", Some(cookie));
        assert_eq!(r.status, 200, "/api/online on node {}: {}", self.name, r.text());
        r.json()["online_clients"].clone()
    }

    /// /healthz as (status, body), None if the node does not answer.
    fn health(&self) -> Option<(u16, Value)> {
        let r = self.try_raw(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
        Some((r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null)))
    }

    fn try_ws_at(&self, path: &str, cookie: &str) -> Result<Ws, tungstenite::Error> {
        let mut req = format!("ws://{}{path}", self.addr).into_client_request().unwrap();
        req.headers_mut().insert("Cookie", cookie.parse().unwrap());
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        match tungstenite::client(req, MaybeTlsStream::Plain(s)) {
            Ok((ws, _)) => Ok(Ws { ws }),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
            Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("blocking handshake interrupted"),
        }
    }

    fn ws(&self, cookie: &str) -> Ws {
        self.try_ws_at("/ws", cookie).unwrap_or_else(|e| panic!("/ws on node {}: {e}", self.name))
    }

    fn v2(&self, cookie: &str, query: &str) -> Ws {
        self.try_ws_at(&format!("/ws?v=2{query}"), cookie).unwrap_or_else(|e| panic!("v2 on node {}: {e}", self.name))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let err = self.stderr();
            let tail: Vec<&str> = err.lines().rev().take(80).collect();
            eprintln!("--- node {} stderr (last 80 lines) ---", self.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A Redis and `n` nodes on it, each healthy (connected and in sync), or None when
/// SKIFF_SKIP_REDIS=1.
fn cluster(test: &str, n: usize, extra: &[&str]) -> Option<(Redis, Vec<Node>)> {
    let redis = Redis::start_or_skip(test)?;
    let nodes: Vec<Node> = (1..=n).map(|i| Node::start(&format!("n{i}"), &redis, extra)).collect();
    for node in &nodes {
        let healthy = wait_for(Duration::from_secs(10), || node.health().is_some_and(|(s, _)| s == 200));
        assert!(healthy, "node {} never answered /healthz 200: {:?}", node.name, node.health());
        assert_eq!(node.health().unwrap().1, json!({"status": "ok"}));
    }
    Some((redis, nodes))
}

fn ws_status(r: Result<Ws, tungstenite::Error>) -> u16 {
    match r {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("upgrade failed without an HTTP status: {e}"),
    }
}

/// The next chat message (acks and events skipped).
fn next_message(ws: &mut Ws) -> Value {
    for _ in 0..10_000 {
        let v = ws.recv();
        if v.get("message").is_some() {
            return v;
        }
    }
    panic!("no chat message in 10000 frames");
}

/// The next ack (messages and events skipped).
fn next_ack(ws: &mut Ws) -> Value {
    for _ in 0..10_000 {
        let v = ws.recv();
        if v.get("status").is_some() {
            return v;
        }
    }
    panic!("no ack in 10000 frames");
}

fn leave(name: &str) -> Value {
    json!({"event": "leave", "username": name})
}

/// Reads until each of `names` has left; returns how long after `since` the last
/// leave arrived, or what was missing at `limit`.
fn wait_leaves(ws: &mut Ws, names: &[&str], since: Instant, limit: Duration) -> Result<Duration, String> {
    let mut missing: Vec<&str> = names.to_vec();
    for _ in 0..100_000 {
        let left = limit.saturating_sub(since.elapsed());
        if left.is_zero() {
            break;
        }
        ws.set_timeout(left);
        match ws.ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                if v["event"] == "leave" {
                    missing.retain(|n| v["username"] != *n);
                    if missing.is_empty() {
                        ws.set_timeout(IO_TIMEOUT);
                        return Ok(since.elapsed());
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                return Err(format!("{e} after {:?}, still waiting for the leave of {missing:?}", since.elapsed()))
            }
        }
    }
    Err(format!("no leave for {missing:?} within {limit:?}"))
}

/// A sender: its `count` messages as fast as it can write them, then every ack (all
/// must be true) and the `others` messages of the other senders, in arrival order.
fn send_burst(mut ws: Ws, me: String, count: usize, others: usize) -> (Ws, Vec<String>) {
    for i in 0..count {
        ws.say(&format!("{me}-{i}"));
    }
    let (mut acks, mut seen) = (0, Vec::new());
    for _ in 0..100 * (count + others) {
        if acks == count && seen.len() == others {
            return (ws, seen);
        }
        let v = ws.recv();
        if v.get("status").is_some() {
            assert_eq!(v, json!({"status": true}), "{me}'s ack {acks}");
            acks += 1;
        } else if let Some(m) = v.get("message") {
            seen.push(format!("{}:{}", v["author"].as_str().unwrap(), m.as_str().unwrap()));
        }
    }
    panic!("{me}: {acks} acks of {count}, {} messages of {others}", seen.len());
}

fn observe(mut ws: Ws, count: usize) -> (Ws, Vec<String>) {
    let mut seen = Vec::new();
    while seen.len() < count {
        let v = next_message(&mut ws);
        seen.push(format!("{}:{}", v["author"].as_str().unwrap(), v["message"].as_str().unwrap()));
    }
    (ws, seen)
}

#[test]
fn redis_helper_starts_and_restarts_with_aof() {
    let Some(mut r) = Redis::start_or_skip("redis_helper_starts_and_restarts_with_aof") else { return };
    assert_eq!(r.cmd(&["SET", "skiff:test", "kept"]), "OK");
    assert_eq!(r.cmd(&["RPUSH", "skiff:list", "a", "b"]), "2");
    let port = r.port;
    r.kill9();
    assert!(r.try_cmd(&["PING"]).is_err(), "Redis still answers after kill9");
    r.restart();
    assert_eq!(r.port, port, "restarted on the same port");
    assert_eq!(r.cmd(&["GET", "skiff:test"]), "kept", "the AOF replayed the write acknowledged before the kill");
    assert_eq!(r.cmd(&["LRANGE", "skiff:list", "0", "-1"]), "a\nb");
    assert_eq!(r.keys("skiff:*"), ["skiff:list", "skiff:test"]);
    assert_eq!(r.cmd(&["GET", "nothing"]), "(nil)");
    assert!(r.cmd(&["NOSUCHCOMMAND"]).starts_with("(error) "));
}

#[test]
fn three_nodes_behave_as_one_server() {
    let Some((redis, nodes)) = cluster("three_nodes_behave_as_one_server", 3, &[]) else { return };
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);

    // Register on one node, log in on another, connect on a third.
    let alice_key = n1.register("Alice");
    let alice = n2.login(&alice_key);
    let r = n2.post("/api/register", r#"{"username": "alice"}"#, None);
    assert_eq!((r.status, r.error().as_str()), (409, "username_taken"), "names are unique cluster-wide");
    let mut a = n3.ws(&alice);
    let alice_again = n1.login(&alice_key);
    assert_eq!(ws_status(n1.try_ws_at("/ws", &alice_again)), 409, "one WebSocket per user cluster-wide");
    assert_eq!(ws_status(n2.try_ws_at("/ws", &alice)), 409, "the same session on a third node");

    let bob = n3.login(&n2.register("Bob"));
    let mut b = n1.ws(&bob);
    assert_eq!(a.recv(), json!({"event": "join", "username": "Bob"}));
    let carol = n1.login(&n3.register("Carol"));
    let mut c = n2.ws(&carol);
    assert_eq!(a.recv(), json!({"event": "join", "username": "Carol"}));
    assert_eq!(b.recv(), json!({"event": "join", "username": "Carol"}));

    // An observer on every node, to compare what each node delivers.
    let mut observers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let name = format!("watcher{i}");
        let cookie = node.login(&node.register(&name));
        observers.push(node.ws(&cookie));
    }
    let everyone = json!(["Alice", "Bob", "Carol", "watcher0", "watcher1", "watcher2"]);
    let same = wait_for(Duration::from_secs(3), || nodes.iter().all(|n| n.online(&bob) == everyone));
    let seen: Vec<Value> = nodes.iter().map(|n| n.online(&bob)).collect();
    assert!(same, "/api/online is cluster-wide and in connect order on every node: {seen:?}");
    for n in &nodes {
        let r = n.get("/api/user/alice", Some(&carol));
        assert_eq!(r.json(), json!({"username": "Alice", "online": true}), "node {}", n.name);
    }

    // A message from node 1 reaches node 3 and node 2, in the seed's v1 format.
    b.say("hello from node 1");
    assert_eq!(next_ack(&mut b), json!({"status": true}));
    assert_eq!(next_message(&mut a), json!({"message": "hello from node 1", "author": "Bob"}));
    assert_eq!(next_message(&mut c), json!({"message": "hello from node 1", "author": "Bob"}));
    for o in &mut observers {
        assert_eq!(next_message(o), json!({"message": "hello from node 1", "author": "Bob"}));
    }

    // 3 senders on 3 nodes, 200 messages each, all at once: one global order.
    const EACH: usize = 200;
    let senders = [(a, "Alice"), (b, "Bob"), (c, "Carol")];
    let (sent, watched) = std::thread::scope(|s| {
        let senders: Vec<_> = senders
            .into_iter()
            .map(|(ws, me)| s.spawn(move || send_burst(ws, me.to_owned(), EACH, 2 * EACH)))
            .collect();
        let watchers: Vec<_> = observers.drain(..).map(|ws| s.spawn(move || observe(ws, 3 * EACH))).collect();
        let sent: Vec<(Ws, Vec<String>)> = senders.into_iter().map(|h| h.join().unwrap()).collect();
        let watched: Vec<(Ws, Vec<String>)> = watchers.into_iter().map(|h| h.join().unwrap()).collect();
        (sent, watched)
    });
    // Kept open to the end: a watcher leaving would come between later events.
    let (mut observers, watched): (Vec<Ws>, Vec<Vec<String>>) = watched.into_iter().unzip();
    let order = &watched[0];
    for author in ["Alice", "Bob", "Carol"] {
        let theirs: Vec<&String> = order.iter().filter(|m| m.starts_with(&format!("{author}:"))).collect();
        let expected: Vec<String> = (0..EACH).map(|i| format!("{author}:{author}-{i}")).collect();
        assert_eq!(theirs, expected.iter().collect::<Vec<_>>(), "{author}'s messages, each once, in send order");
    }
    for (i, w) in watched.iter().enumerate() {
        assert!(w == order, "the watcher on node {} saw another order than the one on node 1", i + 1);
    }
    let mut socks = Vec::new();
    for ((ws, seen), me) in sent.into_iter().zip(["Alice", "Bob", "Carol"]) {
        let expected: Vec<&String> = order.iter().filter(|m| !m.starts_with(&format!("{me}:"))).collect();
        assert!(seen.iter().collect::<Vec<_>>() == expected, "{me} saw the others' messages in another order");
        socks.push(ws);
    }
    let mut c = socks.pop().unwrap();
    let mut b = socks.pop().unwrap();
    let mut a = socks.pop().unwrap();

    // Logout on node 2 closes Alice's socket on node 3; everyone else sees her leave.
    let r = n2.get("/api/logout", Some(&alice));
    assert_eq!(r.status, 200);
    assert_eq!(a.close_code(), Some(1000), "logout on another node closes the socket with 1000");
    assert_eq!(b.recv_until(|v| v.get("event").is_some()), leave("Alice"));
    assert_eq!(c.recv_until(|v| v.get("event").is_some()), leave("Alice"));
    for o in &mut observers {
        assert_eq!(o.recv_until(|v| v.get("event").is_some()), leave("Alice"));
    }
    let rest = json!(["Bob", "Carol", "watcher0", "watcher1", "watcher2"]);
    let gone = wait_for(Duration::from_secs(3), || nodes.iter().all(|n| n.online(&bob) == rest));
    assert!(gone, "Alice still online somewhere: {:?}", nodes.iter().map(|n| n.online(&bob)).collect::<Vec<_>>());
    for n in &nodes {
        assert_eq!(n.get("/api/user/@me", Some(&alice)).status, 401, "the ended session on node {}", n.name);
    }
    // Her other session, and the lock on her socket released everywhere.
    let back = wait_for(Duration::from_secs(3), || ws_status(n1.try_ws_at("/ws", &alice_again)) == 101);
    assert!(back, "Alice cannot connect again after her socket was closed");

    // Cluster mode keeps everything in Redis, under one prefix, and no SQLite file.
    for n in &nodes {
        assert!(!n.dir.path().join("chat.db").exists(), "node {} created a database despite --redis", n.name);
    }
    let keys = redis.keys("*");
    assert!(!keys.is_empty(), "nothing stored in Redis");
    assert!(keys.iter().all(|k| k.starts_with("skiff:")), "keys outside the skiff: prefix: {keys:?}");
}

#[test]
fn a_killed_node_s_users_leave_everywhere_within_15_s() {
    let Some((_redis, mut nodes)) = cluster("a_killed_node_s_users_leave_everywhere_within_15_s", 3, &[]) else {
        return;
    };
    let cookies: Vec<String> =
        ["ann", "ben", "cat", "dan"].iter().map(|u| nodes[0].login(&nodes[1].register(u))).collect();
    let mut ann = nodes[0].ws(&cookies[0]);
    let mut ben = nodes[1].ws(&cookies[1]);
    let cat = nodes[2].ws(&cookies[2]);
    let dan = nodes[2].ws(&cookies[3]);
    assert_eq!(ann.recv(), json!({"event": "join", "username": "ben"}));
    let all = json!(["ann", "ben", "cat", "dan"]);
    assert!(
        wait_for(Duration::from_secs(3), || nodes[0].online(&cookies[0]) == all && nodes[1].online(&cookies[0]) == all)
    );

    let killed = Instant::now();
    nodes[2].kill9();
    let (ta, tb) = std::thread::scope(|s| {
        let ha = s.spawn(|| wait_leaves(&mut ann, &["cat", "dan"], killed, LEAVE_LIMIT));
        let hb = s.spawn(|| wait_leaves(&mut ben, &["cat", "dan"], killed, LEAVE_LIMIT));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let (ta, tb) = (ta.expect("ann on node 1"), tb.expect("ben on node 2"));
    eprintln!("leave after kill -9 of a node: {ta:?} on node 1, {tb:?} on node 2");
    drop((cat, dan));

    let survivors = json!(["ann", "ben"]);
    for n in &nodes[..2] {
        let ok = wait_for(Duration::from_secs(2), || n.online(&cookies[0]) == survivors);
        assert!(ok, "node {} still lists the dead node's users: {}", n.name, n.online(&cookies[0]));
        assert_eq!(n.get("/api/user/cat", Some(&cookies[0])).json(), json!({"username": "cat", "online": false}));
    }
    // The dead node's users are free to come back on a live one, and chat goes on.
    let mut cat = nodes[0].ws(&cookies[2]);
    assert_eq!(ben.recv_until(|v| v.get("event").is_some()), json!({"event": "join", "username": "cat"}));
    ben.say("still here");
    assert_eq!(next_ack(&mut ben), json!({"status": true}));
    assert_eq!(next_message(&mut cat), json!({"message": "still here", "author": "ben"}));
    assert_eq!(next_message(&mut ann), json!({"message": "still here", "author": "ben"}));
}

#[test]
fn redis_killed_mid_chat_degrades_then_recovers_on_the_same_sockets() {
    let Some((mut redis, mut nodes)) =
        cluster("redis_killed_mid_chat_degrades_then_recovers_on_the_same_sockets", 2, &[])
    else {
        return;
    };
    let amy = nodes[0].login(&nodes[1].register("amy"));
    let bo = nodes[1].login(&nodes[0].register("bo"));
    let mut a = nodes[0].ws(&amy);
    let mut b = nodes[1].ws(&bo);
    assert_eq!(a.recv(), json!({"event": "join", "username": "bo"}));
    a.say("before");
    assert_eq!(next_ack(&mut a), json!({"status": true}));
    assert_eq!(next_message(&mut b), json!({"message": "before", "author": "amy"}));

    // Registrations from 4 threads on both nodes, Redis killed while they run: every
    // 201 must survive (appendfsync always); anything else must be a clean 503.
    let created = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let killed = std::thread::scope(|s| {
        for t in 0..4 {
            let (created, count, node) = (created.clone(), count.clone(), &nodes[t % 2]);
            s.spawn(move || {
                // Until Redis is gone (the first 503), so that the kill lands mid-batch.
                for i in 0..500 {
                    let body = json!({ "username": format!("batch{t}x{i}") }).to_string();
                    let r = node.post("/api/register", &body, None);
                    if r.status != 201 {
                        assert_eq!((r.status, r.error().as_str()), (503, "storage_unavailable"), "register {t}/{i}");
                        return;
                    }
                    created.lock().unwrap().push((r.json()["key"].as_str().unwrap().to_owned(), t % 2));
                    count.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        let start = Instant::now();
        while count.load(Ordering::SeqCst) < 50 && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(count.load(Ordering::SeqCst) >= 50, "only {} registrations in 20 s", count.load(Ordering::SeqCst));
        redis.kill9();
        Instant::now()
    });
    let created = created.lock().unwrap().clone();
    eprintln!("{} users got 201 before or while Redis was killed", created.len());

    for n in &mut nodes {
        let degraded = wait_for(Duration::from_secs(5), || n.health().is_some_and(|(s, _)| s == 503));
        assert!(degraded, "node {} /healthz while Redis is down: {:?}", n.name, n.health());
        assert_eq!(n.health().unwrap().1, json!({"status": "degraded"}));
        assert!(n.alive(), "node {} exited when Redis died", n.name);
    }
    a.say("during the outage");
    assert_eq!(next_ack(&mut a), json!({"status": false, "code": "unavailable"}));
    for n in &nodes {
        let r = n.post("/api/register", r#"{"username": "latecomer"}"#, None);
        assert_eq!((r.status, r.error().as_str()), (503, "storage_unavailable"), "register on {}", n.name);
        let r = n.post("/api/login", &json!({ "key": created[0].0 }).to_string(), None);
        assert_eq!((r.status, r.error().as_str()), (503, "storage_unavailable"), "login on {}", n.name);
    }
    let outage = killed.elapsed();

    redis.restart();
    let back = Instant::now();
    let mut healthy = None;
    while back.elapsed() < RECOVERY_LIMIT {
        if nodes.iter().all(|n| n.health().is_some_and(|(s, _)| s == 200)) {
            healthy = Some(back.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let healthy = healthy.unwrap_or_else(|| {
        panic!("/healthz after {RECOVERY_LIMIT:?}: {:?}", nodes.iter().map(|n| n.health()).collect::<Vec<_>>())
    });
    // The same sockets: a refused attempt in the window before the node has noticed
    // is allowed; a delivery past the limit is not.
    let mut chat = None;
    for _ in 0..1000 {
        if back.elapsed() > RECOVERY_LIMIT {
            break;
        }
        a.say("back again");
        match next_ack(&mut a) {
            v if v == json!({"status": true}) => {
                chat = Some(back.elapsed());
                break;
            }
            v => assert_eq!(v, json!({"status": false, "code": "unavailable"})),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let chat = chat.unwrap_or_else(|| panic!("chat refused {RECOVERY_LIMIT:?} after Redis came back"));
    eprintln!("Redis down for {outage:?}; after its restart /healthz 200 in {healthy:?}, chat in {chat:?}");
    assert_eq!(
        next_message(&mut b),
        json!({"message": "back again", "author": "amy"}),
        "the refused message never arrives"
    );
    b.say("both ways");
    assert_eq!(next_ack(&mut b), json!({"status": true}));
    assert_eq!(next_message(&mut a), json!({"message": "both ways", "author": "bo"}));

    let whole = wait_for(RECOVERY_LIMIT, || {
        nodes.iter().all(|n| {
            let mut names: Vec<String> = serde_json::from_value(n.online(&amy)).unwrap();
            names.sort();
            names == ["amy", "bo"]
        })
    });
    assert!(whole, "presence not rebuilt: {:?}", nodes.iter().map(|n| n.online(&amy)).collect::<Vec<_>>());
    for (key, node) in &created {
        nodes[1 - node].login(key);
    }
}

#[test]
fn a_v2_client_resumes_on_another_node() {
    let Some((_redis, nodes)) = cluster("a_v2_client_resumes_on_another_node", 3, &[]) else { return };
    let reader = nodes[0].login(&nodes[0].register("reader"));
    let writer = nodes[1].login(&nodes[1].register("writer"));
    let mut w = nodes[1].ws(&writer);
    let mut r = nodes[0].v2(&reader, "");
    let hello = r.recv();
    assert_eq!(hello["event"], "hello", "{hello}");
    assert_eq!(hello["online"], json!(["writer", "reader"]));
    let epoch = hello["epoch"].as_str().expect("epoch").to_owned();
    let first = hello["last_id"].as_u64().expect("last_id");
    assert_eq!(w.recv(), json!({"event": "join", "username": "reader"}));
    let mut texts = Vec::new();
    for i in 0..5 {
        texts.push(format!("live {i}"));
        w.say(&texts[i]);
        assert_eq!(next_ack(&mut w), json!({"status": true}));
        let m = next_message(&mut r);
        assert_eq!((m["id"].as_u64(), m["message"].as_str()), (Some(first + 1 + i as u64), Some(texts[i].as_str())));
        assert!(m["ts"].as_i64().is_some_and(|t| t > 1_700_000_000_000), "Unix ms: {m}");
    }
    let seen = first + 5;

    // The reader's connection dies without a close; the room goes on through node 2.
    if let MaybeTlsStream::Plain(tcp) = r.ws.get_mut() {
        let _ = tcp.shutdown(std::net::Shutdown::Both);
    }
    drop(r);
    assert_eq!(w.recv_until(|v| v.get("event").is_some()), leave("reader"));
    for i in 0..30 {
        texts.push(format!("missed {i}"));
        w.say(&format!("missed {i}"));
        assert_eq!(next_ack(&mut w), json!({"status": true}));
    }

    // Back on node 3: the hello, exactly what was missed, then live traffic.
    let mut r = nodes[2].v2(&reader, &format!("&since={seen}&epoch={epoch}"));
    let hello = r.recv();
    assert_eq!(hello["event"], "hello", "{hello}");
    assert_eq!((hello["epoch"].as_str(), hello["last_id"].as_u64()), (Some(epoch.as_str()), Some(seen + 30)));
    assert_eq!(hello["online"], json!(["writer", "reader"]));
    for i in 0..30u64 {
        let m = r.recv();
        assert_eq!(
            (m["id"].as_u64(), m["message"].as_str()),
            (Some(seen + 1 + i), Some(format!("missed {i}").as_str())),
            "{m}"
        );
        assert_eq!(m["author"], "writer");
    }
    texts.push("live again".to_owned());
    w.say("live again");
    let m = next_message(&mut r);
    assert_eq!(
        (m["id"].as_u64(), m["message"].as_str()),
        (Some(seen + 31), Some("live again")),
        "no gap, no duplicate"
    );
    texts.push("from node 3".to_owned());
    r.say("from node 3");
    assert_eq!(next_ack(&mut r), json!({"status": true, "id": seen + 32}));
    assert_eq!(next_message(&mut w), json!({"message": "from node 3", "author": "reader"}));

    // Every node serves the same history.
    let page = nodes[0].get("/api/history?limit=100", Some(&reader)).json();
    assert_eq!(page["epoch"], epoch);
    let msgs = page["messages"].as_array().expect("messages");
    let got: Vec<&str> = msgs.iter().map(|m| m["message"].as_str().unwrap()).collect();
    assert_eq!(got, texts.iter().map(String::as_str).collect::<Vec<_>>());
    let ids: Vec<u64> = msgs.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (first + 1..=seen + 32).collect::<Vec<_>>());
    for n in &nodes[1..] {
        assert_eq!(n.get("/api/history?limit=100", Some(&writer)).json(), page, "history on node {}", n.name);
    }
}

#[test]
fn reuse_port_lets_nodes_share_a_port() {
    let Some(redis) = Redis::start_or_skip("reuse_port_lets_nodes_share_a_port") else {
        return;
    };
    let url = redis.url();
    let mut last = String::new();
    let mut pair = None;
    // The probed port may be taken before the nodes bind it: a few tries.
    for _ in 0..5 {
        let listen = format!("127.0.0.1:{}", redis::free_port());
        let args = |extra: &[&str]| {
            let mut a = vec!["--redis".to_owned(), url.clone()];
            a.extend(extra.iter().map(|s| s.to_string()));
            a
        };
        let first = match Node::spawn("first", &listen, &args(&["--reuse-port"])) {
            Ok(n) => n,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let second = Node::spawn("second", &listen, &args(&["--reuse-port"]))
            .unwrap_or_else(|e| panic!("a second node with --reuse-port on {listen}: {e}"));
        assert_eq!((first.addr, second.addr), (listen.parse().unwrap(), listen.parse().unwrap()));
        match Node::spawn("third", &listen, &args(&[])) {
            Ok(_) => panic!("a node without --reuse-port bound {listen}, which two others hold"),
            Err(e) => assert_eq!(e.status.and_then(|s| s.code()), Some(1), "{e}"),
        }
        // The flag as an environment variable.
        let by_env = Node::spawn_env("by-env", &listen, &args(&[]), &[("SKIFF_REUSE_PORT", "1")])
            .unwrap_or_else(|e| panic!("a third node with SKIFF_REUSE_PORT=1 on {listen}: {e}"));
        assert_eq!(by_env.addr, listen.parse().unwrap());
        drop(by_env);
        pair = Some((first, second));
        break;
    }
    let (mut first, second) = pair.unwrap_or_else(|| panic!("no node with --reuse-port started: {last}"));
    let up = wait_for(Duration::from_secs(10), || first.health().is_some_and(|h| h.0 == 200));
    assert!(up, "the shared port: /healthz {:?}", first.health());
    first.kill9();
    // The port is still served: the second node really listens on it.
    let up = wait_for(Duration::from_secs(5), || second.health().is_some_and(|h| h.0 == 200));
    assert!(up, "the shared port after the first node died: /healthz {:?}", second.health());
}

#[test]
fn bad_redis_urls_exit_2_naming_the_setting() {
    for (flag, env) in [
        (Some("http://127.0.0.1:6379"), None),
        (Some("redis://127.0.0.1:notaport"), None),
        (Some("redis://127.0.0.1:6379/notadb"), None),
        (Some("redis://"), None),
        (None, Some("http://x")),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
        cmd.args(["--listen", "127.0.0.1:0"]).env_remove("SKIFF_REDIS").stdout(Stdio::null()).stderr(Stdio::piped());
        if let Some(f) = flag {
            cmd.args(["--redis", f]);
        }
        if let Some(e) = env {
            cmd.env("SKIFF_REDIS", e);
        }
        let mut child = cmd.spawn().unwrap();
        let status = wait_exit(&mut child, Duration::from_secs(10));
        let _ = child.kill();
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
        let _ = child.wait();
        let what = format!("--redis {flag:?}, SKIFF_REDIS {env:?}");
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{what} must exit 2, stderr: {err}");
        let line = err.lines().next().unwrap_or_default();
        let named = if flag.is_some() { "skiff: --redis" } else { "skiff: SKIFF_REDIS" };
        // The reason is the first line, as for every bad flag (a usage hint may follow).
        assert!(line.starts_with(named), "{what}: the reason names the setting: {err}");
    }
}

// ---- Through the shipped nginx site, the three nodes as its upstreams ----
// The approach of tests/nginx.rs (Debian's nginx, unprivileged, on loopback, the
// shipped file with only ports, upstreams and certificate paths substituted); the
// certificate comes from rcgen here, README's trial path being tested there.

const NGINX: &str = "/usr/sbin/nginx";
const DOMAIN: &str = "chat.example.org";

/// nginx in its own process group, stopped whole (workers included) on drop.
struct Nginx {
    master: Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pgid = self.master.id() as i32;
        // SAFETY: kill(2) on the process group of our own child.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.master.wait();
        wait_for(Duration::from_secs(3), || group_members(pgid).is_empty());
    }
}

/// A port free on both 127.0.0.1 and ::1, since the site listens on both.
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let port = redis::free_port();
        if std::net::TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1 in 50 tries");
}

/// The shipped site with test ports, the nodes as upstreams and the test certificate.
fn render_site(site: &str, upstreams: &[SocketAddr], https: u16, http: u16, cert: &str, key: &str) -> String {
    let live = format!("/etc/letsencrypt/live/{DOMAIN}");
    let mut upstream_lines = 0;
    let out = site
        .lines()
        .map(|l| match l.trim() {
            "listen 443 ssl;" => format!("listen 127.0.0.1:{https} ssl;"),
            "listen [::]:443 ssl;" => format!("listen [::1]:{https} ssl;"),
            "listen 80;" => format!("listen 127.0.0.1:{http};"),
            "listen [::]:80;" => format!("listen [::1]:{http};"),
            t if t.starts_with("listen") => panic!("tests/cluster.rs does not know how to test {t:?}"),
            "server 127.0.0.1:7777;" => {
                upstream_lines += 1;
                upstreams.iter().map(|a| format!("    server {a};")).collect::<Vec<_>>().join("\n")
            }
            _ => l.replace(&format!("{live}/fullchain.pem"), cert).replace(&format!("{live}/privkey.pem"), key),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(upstream_lines, 1, "deploy/nginx.conf's upstream block changed: one `server 127.0.0.1:7777;` expected");
    out
}

/// A node's open WebSockets, from its own /metrics.
fn websockets(node: &Node) -> u64 {
    let text = node.get("/metrics", None).text();
    text.lines()
        .find_map(|l| l.strip_prefix("skiff_connections{kind=\"websocket\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no websocket gauge in node {}'s /metrics: {text}", node.name))
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn recv_tls(ws: &mut tungstenite::WebSocket<TlsStream>) -> Value {
    for _ in 0..1000 {
        match ws.read().expect("read through nginx") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?} through nginx"),
        }
    }
    panic!("only pings and pongs through nginx");
}

#[test]
fn three_nodes_behind_the_shipped_nginx_config() {
    if std::env::var("SKIFF_SKIP_NGINX").is_ok_and(|v| v == "1") {
        eprintln!("nginx cluster test not run: SKIFF_SKIP_NGINX=1 opts out of it");
        return;
    }
    assert!(
        std::path::Path::new(NGINX).exists(),
        "no {NGINX}: run `apt-get install nginx`, or set SKIFF_SKIP_NGINX=1 to skip it on purpose"
    );
    let Some((_redis, nodes)) =
        cluster("three_nodes_behind_the_shipped_nginx_config", 3, &["--trusted-proxy", "127.0.0.1"])
    else {
        return;
    };
    let p = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec![DOMAIN.into()]).unwrap();
    let (cert, key) = (p.path().join("fullchain.pem"), p.path().join("privkey.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let shipped =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf")).unwrap();
    let (https, http) = (free_port_pair(), free_port_pair());
    let upstreams: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let site = render_site(&shipped, &upstreams, https, http, cert.to_str().unwrap(), key.to_str().unwrap());
    // SAFETY: geteuid has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 { "user root;" } else { "" };
    let d = p.path().display();
    let conf = format!(
        "{user}\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n access_log {d}/access.log;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{site}\n}}\n"
    );
    let conf_path = p.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let check = Command::new(NGINX).arg("-t").arg("-p").arg(p.path()).arg("-c").arg(&conf_path).output().unwrap();
    assert!(check.status.success(), "nginx -t: {}", String::from_utf8_lossy(&check.stderr));
    let _nginx = Nginx {
        master: std::os::unix::process::CommandExt::process_group(
            Command::new(NGINX).arg("-p").arg(p.path()).arg("-c").arg(&conf_path).args(["-g", "daemon off;"]),
            0,
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx"),
    };
    let front = SocketAddr::from(([127, 0, 0, 1], https));
    assert!(wait_for(Duration::from_secs(10), || TcpStream::connect(front).is_ok()), "nginx never listened on {front}");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let tls = || {
        let sock = TcpStream::connect(front).unwrap();
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let name = rustls::pki_types::ServerName::try_from(DOMAIN).unwrap();
        rustls::StreamOwned::new(rustls::ClientConnection::new(client.clone(), name).unwrap(), sock)
    };
    let request = |head: &str, body: &str| {
        let mut s = tls();
        let req =
            format!("{head}\r\nHost: {DOMAIN}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        s.write_all(req.as_bytes()).unwrap();
        read_response(&mut s).expect("response through nginx")
    };
    let user = |name: &str| {
        let r = request("POST /api/register HTTP/1.1", &json!({ "username": name }).to_string());
        assert_eq!(r.status, 201, "register {name} through nginx: {}", r.text());
        let key = r.json()["key"].as_str().unwrap().to_owned();
        let r = request("POST /api/login HTTP/1.1", &json!({ "key": key }).to_string());
        assert_eq!(r.status, 200, "login through nginx: {}", r.text());
        assert!(r.header("set-cookie").unwrap().ends_with("; Secure"), "X-Forwarded-Proto reached the node");
        r.cookie().unwrap()
    };
    let wss = |cookie: &str| {
        let mut req = format!("wss://{DOMAIN}:{https}/ws").into_client_request().unwrap();
        req.headers_mut().insert("Cookie", cookie.parse().unwrap());
        tungstenite::client(req, tls()).unwrap_or_else(|e| panic!("upgrade through nginx: {e}")).0
    };

    // Users connect through nginx until two sockets sit on different nodes; each
    // node's own gauge tells where a socket landed.
    let mut socks = Vec::new();
    let mut placed: Vec<usize> = Vec::new();
    // Logins first: with three requests per user, nginx's round robin would put
    // every user's socket on the same node.
    let users: Vec<(String, String)> = (0..6).map(|i| format!("user{i}")).map(|n| (n.clone(), user(&n))).collect();
    for (name, cookie) in users {
        let before: Vec<u64> = nodes.iter().map(websockets).collect();
        let ws = wss(&cookie);
        let mut now = before.clone();
        let landed = wait_for(Duration::from_secs(5), || {
            now = nodes.iter().map(websockets).collect();
            now.iter().sum::<u64>() == before.iter().sum::<u64>() + 1
        });
        assert!(landed, "the socket through nginx shows on no node: {before:?} -> {now:?}");
        placed.push((0..3).find(|&n| now[n] > before[n]).unwrap());
        socks.push((name, cookie, ws));
        if placed.iter().any(|&n| n != placed[0]) {
            break;
        }
    }
    let other = placed.iter().position(|&n| n != placed[0]);
    let other = other.unwrap_or_else(|| panic!("every socket through nginx landed on node {}", placed[0] + 1));
    eprintln!("through nginx: sockets on nodes {:?}", placed.iter().map(|n| n + 1).collect::<Vec<_>>());
    let (xname, xcookie, mut x) = socks.remove(0);
    let (yname, _ycookie, mut y) = socks.remove(other - 1);

    x.send(Message::text(r#"{"message": "across nodes through nginx"}"#)).unwrap();
    let mut ack = recv_tls(&mut x);
    for _ in 0..10 {
        if ack.get("status").is_some() {
            break;
        }
        ack = recv_tls(&mut x);
    }
    assert_eq!(ack, json!({"status": true}));
    let mut got = recv_tls(&mut y);
    for _ in 0..10 {
        if got.get("message").is_some() {
            break;
        }
        got = recv_tls(&mut y);
    }
    assert_eq!(got, json!({"message": "across nodes through nginx", "author": xname}));
    let online = request(&format!("GET /api/online HTTP/1.1\r\nCookie: {xcookie}"), "").json();
    assert_eq!(online["online_clients"].as_array().map(Vec::len), Some(placed.len()), "{online}");

    // Logout through nginx (on whichever node) closes x's socket, y sees x leave.
    let r = request(&format!("GET /api/logout HTTP/1.1\r\nCookie: {xcookie}"), "");
    assert_eq!(r.status, 200);
    let mut code = None;
    for _ in 0..100 {
        match x.read() {
            Ok(Message::Close(f)) => {
                code = f.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("x's socket ended without a close frame: {e}"),
        }
    }
    assert_eq!(code, Some(1000), "logout closes the socket with 1000 through nginx");
    let mut ev = recv_tls(&mut y);
    for _ in 0..10 {
        if ev == leave(&xname) {
            break;
        }
        ev = recv_tls(&mut y);
    }
    assert_eq!(ev, leave(&xname), "{yname} sees {xname} leave");
}

#[test]
fn a_node_that_cannot_reach_redis_starts_degraded_and_heals() {
    let Some(mut redis) = Redis::start_or_skip("a_node_that_cannot_reach_redis_starts_degraded_and_heals") else {
        return;
    };
    redis.kill9();
    let mut node = Node::start("n1", &redis, &[]);
    let degraded = wait_for(Duration::from_secs(5), || node.health().is_some_and(|(s, _)| s == 503));
    assert!(degraded, "/healthz with Redis unreachable: {:?}", node.health());
    assert_eq!(node.health().unwrap().1, json!({"status": "degraded"}));
    let r = node.post("/api/register", r#"{"username": "early"}"#, None);
    assert_eq!((r.status, r.error().as_str()), (503, "storage_unavailable"));
    assert!(node.alive());
    let metrics = node.get("/metrics", None).text();
    assert!(
        metrics.contains("\nskiff_cluster_up 0\n") && metrics.contains("\nskiff_cluster_syncs_total 0\n"),
        "{metrics}"
    );

    redis.restart();
    let back = Instant::now();
    let healthy = wait_for(RECOVERY_LIMIT, || node.health().is_some_and(|(s, _)| s == 200));
    assert!(healthy, "/healthz {RECOVERY_LIMIT:?} after Redis came up: {:?}", node.health());
    eprintln!("a node started without Redis: healthy {:?} after Redis came up", back.elapsed());
    let cookie = node.login(&node.register("early"));
    let mut ws = node.ws(&cookie);
    ws.say("first words");
    assert_eq!(next_ack(&mut ws), json!({"status": true}));
    let metrics = node.get("/metrics", None).text();
    for line in ["skiff_cluster_up 1", "skiff_cluster_online_users 1", "skiff_cluster_syncs_total 1"] {
        assert!(metrics.contains(&format!("\n{line}\n")), "{line} in {metrics}");
    }
}

/// The per-user session cap is the cluster's: a login on one node past it ends the
/// oldest session, and that session's socket on another node closes with 1008.
#[test]
fn an_eviction_on_one_node_closes_the_socket_on_another() {
    let Some((_redis, nodes)) =
        cluster("an_eviction_on_one_node_closes_the_socket_on_another", 2, &["--max-sessions-per-user", "2"])
    else {
        return;
    };
    let key = nodes[0].register("evictee");
    let oldest = nodes[0].login(&key);
    let watcher = nodes[0].login(&nodes[0].register("watcher"));
    let mut w = nodes[0].ws(&watcher);
    let mut s = nodes[1].ws(&oldest);
    assert_eq!(w.recv(), json!({"event": "join", "username": "evictee"}));
    let second = nodes[1].login(&key);
    // A third login, on the other node, is past the cap of two: the oldest goes.
    let third = nodes[0].login(&key);
    assert_eq!(s.close_code(), Some(1008), "the evicted session's socket on node 2");
    assert_eq!(w.recv_until(|v| v.get("event").is_some()), leave("evictee"));
    for n in &nodes {
        assert_eq!(n.get("/api/online", Some(&oldest)).status, 401, "evicted session on node {}", n.name);
        assert_eq!(n.get("/api/online", Some(&second)).status, 200);
        assert_eq!(n.get("/api/online", Some(&third)).status, 200);
    }
}

/// A node stopped with SIGTERM (a deploy) hands its users back at once: the others
/// hear them leave well before a dead node's 6 s, and they reconnect elsewhere
/// without a 409.
#[test]
fn a_node_stopped_gracefully_lets_its_users_reconnect_elsewhere_at_once() {
    let Some((_redis, mut nodes)) = cluster("a_node_stopped_gracefully", 2, &[]) else { return };
    let watcher = nodes[0].login(&nodes[0].register("watcher"));
    let mover = nodes[1].login(&nodes[1].register("mover"));
    let mut w = nodes[0].ws(&watcher);
    let mut m = nodes[1].ws(&mover);
    assert_eq!(w.recv(), json!({"event": "join", "username": "mover"}));
    let stopped = Instant::now();
    let pid = nodes[1].child.id() as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(m.close_code(), Some(1001), "the stopping node says going away");
    assert_eq!(w.recv_until(|v| v.get("event").is_some()), leave("mover"));
    let heard = stopped.elapsed();
    eprintln!("graceful stop: leave heard on the other node after {heard:?}");
    assert!(heard < Duration::from_secs(3), "leave after {heard:?}: the stop did not hand the user back");
    let status = wait_exit(&mut nodes[1].child, Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "a graceful stop exits 0");
    let mut again = nodes[0].ws(&mover);
    assert_eq!(w.recv(), json!({"event": "join", "username": "mover"}));
    again.say("back");
    assert_eq!(next_ack(&mut again), json!({"status": true}));
}

/// A socket whose session ends while its join is on the way to Redis must not leave
/// the user online in the cluster (they could never connect again: 409).
#[test]
fn a_join_that_cannot_open_does_not_leave_the_user_online() {
    let Some((redis, nodes)) = cluster("a_join_that_cannot_open", 2, &[]) else { return };
    let key = nodes[0].register("quitter");
    let cookie = nodes[0].login(&key);
    // Writes wait while Redis is paused: the join is sent and hangs there, and the
    // logout, on the same node, goes out after it.
    redis.cmd(&["CLIENT", "PAUSE", "1000", "WRITE"]);
    let raw = |req: String| {
        let mut s = TcpStream::connect(nodes[0].addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        s
    };
    let upgrade = raw(format!(
        "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: {cookie}\r\n\r\n"
    ));
    std::thread::sleep(Duration::from_millis(100));
    let logout = raw(format!("GET /api/logout HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\n\r\n"));
    let fresh = nodes[1].login(&key);
    let mut status = 0;
    let free = wait_for(Duration::from_secs(5), || {
        status = ws_status(nodes[1].try_ws_at("/ws", &fresh));
        status == 101
    });
    assert!(free, "the user is still held online by a socket that never opened: /ws answers {status}");
    drop((upgrade, logout));
}

/// A Redis with a password, and a database other than 0: the URL's password and
/// DB are used on both links; a wrong password leaves the node degraded, not down.
#[test]
fn a_password_and_a_database_number_from_the_url_are_used() {
    let Some(redis) = Redis::start_or_skip("a_password_and_a_database_number_from_the_url_are_used") else {
        return;
    };
    redis.cmd(&["CONFIG", "SET", "requirepass", "s3cret"]);
    let port = redis.url().rsplit(':').next().unwrap().to_owned();
    let good = format!("redis://:s3cret@127.0.0.1:{port}/2");
    let node = Node::spawn("n1", "127.0.0.1:0", &["--redis".into(), good]).unwrap_or_else(|e| panic!("{e}"));
    let healthy = wait_for(Duration::from_secs(5), || node.health().is_some_and(|(s, _)| s == 200));
    assert!(healthy, "/healthz with the right password: {:?}\n{}", node.health(), node.stderr());
    let cookie = node.login(&node.register("guarded"));
    let mut ws = node.ws(&cookie);
    ws.say("behind a password");
    assert_eq!(next_ack(&mut ws), json!({"status": true}));
    assert!(!node.stderr().contains("s3cret"), "the password never reaches the log");

    let bad = format!("redis://:wrong@127.0.0.1:{port}");
    let other = Node::spawn("n2", "127.0.0.1:0", &["--redis".into(), bad]).unwrap_or_else(|e| panic!("{e}"));
    let degraded = wait_for(Duration::from_secs(5), || other.health().is_some_and(|(s, _)| s == 503));
    assert!(degraded, "/healthz with a wrong password: {:?}", other.health());
    let said = wait_for(Duration::from_secs(5), || other.stderr().contains("WRONGPASS"));
    assert!(said, "the log names the refusal: {}", other.stderr());
    std::thread::sleep(Duration::from_millis(2500));
    let times = other.stderr().matches("WRONGPASS").count();
    assert_eq!(times, 1, "said once per outage, not once per retry: {}", other.stderr());
    assert_eq!(other.post("/api/register", r#"{"username": "nope"}"#, None).status, 503);
}

/// How often the process's main thread has gone to sleep and woken, from /proc.
fn wakeups(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/status")).expect("the node is running");
    let line = status.lines().find(|l| l.starts_with("voluntary_ctxt_switches:")).expect("a switch count");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Stopping while Redis is down: nothing to hand back and no reconnects, so the loop
/// sleeps while the last socket lingers, instead of waking every millisecond for a
/// retry time that has passed.
#[test]
fn a_node_stopped_while_redis_is_down_sleeps_until_it_exits() {
    let Some((mut redis, mut nodes)) = cluster("a_node_stopped_while_redis_is_down", 1, &[]) else { return };
    let cookie = nodes[0].login(&nodes[0].register("lingerer"));
    // This client never answers the close: the node waits out its linger for it.
    let _ws = nodes[0].ws(&cookie);
    redis.kill9();
    let degraded = wait_for(Duration::from_secs(5), || nodes[0].health().is_some_and(|(s, _)| s == 503));
    assert!(degraded, "degraded once Redis is gone");
    let pid = nodes[0].child.id();
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(200));
    let before = wakeups(pid);
    std::thread::sleep(Duration::from_millis(1000));
    let woke = wakeups(pid) - before;
    assert!(woke < 50, "the loop woke {woke} times in a second of shutdown with nothing to do");
    let status = wait_exit(&mut nodes[0].child, Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

/// A logout while Redis is down still answers 200, and is carried out once Redis is
/// back: the session no longer works on any node.
#[test]
fn a_logout_while_redis_is_down_takes_effect_when_it_is_back() {
    // --static too: files come from the node's own reader thread, Redis or not.
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "<p>cluster page</p>").unwrap();
    let static_dir = site.path().to_str().unwrap();
    let Some((mut redis, nodes)) = cluster("a_logout_while_redis_is_down", 2, &["--static", static_dir]) else {
        return;
    };
    let key = nodes[0].register("leaver");
    let cookie = nodes[0].login(&key);
    let unseen = nodes[0].login(&key);
    assert_eq!(nodes[1].get("/api/online", Some(&cookie)).status, 200, "the session works on node 2");
    let mut socket = nodes[1].ws(&cookie);
    redis.kill9();
    let degraded = wait_for(Duration::from_secs(5), || nodes[0].health().is_some_and(|(s, _)| s == 503));
    assert!(degraded, "degraded once Redis is gone");
    let page = nodes[1].get("/index.html", None);
    assert_eq!((page.status, page.text().as_str()), (200, "<p>cluster page</p>"), "--static without Redis");
    // Node 2 has never seen this session and cannot ask: not a 401 that logs the
    // user out, but 503.
    let r = nodes[1].get("/api/online", Some(&unseen));
    assert_eq!((r.status, r.error().as_str()), (503, "storage_unavailable"));
    assert_eq!(nodes[0].get("/api/logout", Some(&cookie)).status, 200, "logout always answers 200");
    redis.restart();
    let healthy = wait_for(RECOVERY_LIMIT, || nodes.iter().all(|n| n.health().is_some_and(|(s, _)| s == 200)));
    assert!(healthy, "both nodes back in sync");
    assert_eq!(socket.close_code(), Some(1000), "the logged-out session's socket on node 2");
    for n in &nodes {
        let status = n.get("/api/online", Some(&cookie)).status;
        assert_eq!(status, 401, "the session logged out during the outage, on node {}", n.name);
    }
}

/// Redis loses its data (a FLUSHALL here; no AOF would do the same). On their next
/// sync the nodes notice: a user another node now holds is closed where it was before
/// (1008), a socket whose user Redis no longer knows is closed (1008 "user deleted":
/// register again; never 1000, the logout code), and a new epoch names the new history.
#[test]
fn after_redis_loses_its_data_the_nodes_close_what_it_no_longer_knows() {
    let Some((redis, nodes)) = cluster("after_redis_loses_its_data", 2, &[]) else { return };
    let keep = nodes[0].login(&nodes[0].register("keep"));
    let twin = nodes[0].login(&nodes[0].register("twin"));
    let mut k = nodes[0].ws(&keep);
    let mut t = nodes[0].ws(&twin);
    assert_eq!(k.recv(), json!({"event": "join", "username": "twin"}));
    let old_epoch = nodes[0].get("/api/history", Some(&keep)).json()["epoch"].as_str().unwrap().to_owned();

    redis.cmd(&["FLUSHALL"]);
    // "twin" is gone from Redis: registered again on node 2, it can connect there.
    let twin2 = nodes[1].login(&nodes[1].register("twin"));
    let mut t2 = nodes[1].ws(&twin2);
    // Every node's subscriber link drops; they reconnect and sync.
    redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(t.close_code(), Some(1008), "node 1 closes the twin socket node 2 now holds");
    assert_eq!(k.close_code(), Some(1008), "a socket whose user Redis lost is closed");
    let synced = |n: &Node| n.get("/metrics", None).text().contains("\nskiff_cluster_syncs_total 2\n");
    assert!(wait_for(RECOVERY_LIMIT, || nodes.iter().all(synced)), "both nodes resynced");
    let mut online = Value::Null;
    let settled = wait_for(RECOVERY_LIMIT, || {
        online = nodes[1].online(&twin2);
        online == json!(["twin"])
    });
    assert!(settled, "only the socket Redis knows is online: {online}");
    assert_eq!(nodes[0].get("/api/online", Some(&keep)).status, 401, "the lost session is gone on node 1 too");
    let new_epoch = nodes[1].get("/api/history", Some(&twin2)).json()["epoch"].as_str().unwrap().to_owned();
    assert_ne!(new_epoch, old_epoch, "a lost history gets a new epoch");
    t2.say("after the loss");
    assert_eq!(next_ack(&mut t2), json!({"status": true}));
}
