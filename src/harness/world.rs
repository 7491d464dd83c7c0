//! The `connection` fuzz model: a simulated world of scripted clients talking to a
//! whole `Server` over mock sockets, with what each client should have seen.
//!
//! In cluster mode (`connection_cluster`) two servers, nodes n1 and n2, share one
//! `FakeRedis`; clients talk to either; the world moves the bytes between each
//! node's two Redis links and the stand-in the way the reactor moves them between
//! its sockets (src/reactor/redis.rs), and may drop the links, hold back what Redis
//! sent, and let time pass for both nodes at once.

use super::redis::{FakeRedis, Read, Recorded};
use super::{chat_config, counter_random, quiet, MockStream};
use crate::chat::ChatConfig;
use crate::cluster::{Cluster, ClusterConfig, Io, LinkId};
use crate::config::RedisUrl;
use crate::conn::REQUEST_TIMEOUT;
use crate::server::{Server, ServerConfig};
use crate::ws::frame;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// What one scripted chat client knows.
struct Client {
    key: usize,
    /// The server-side generation of `key` when this client connected.
    generation: u64,
    pipe: MockStream,
    user: usize,
    /// Bytes of `to_client` already decoded.
    seen: usize,
    upgraded: bool,
    closed: bool,
    /// The server sent a close frame (dropped as slow, expired, ...), with this code.
    kicked: Option<u16>,
    /// Raw bytes went into this WebSocket: its acks no longer line up with what
    /// it sent, so it sends no more scripted messages.
    garbled: bool,
    sent: Vec<u64>,
    acks: Vec<bool>,
    /// Message ids received from others, in order.
    got: Vec<u64>,
    /// Users whose `leave` this client received.
    leaves: Vec<String>,
    /// Pipelined `GET /healthz` requests sent on this (HTTP) connection.
    requests: usize,
    /// Time that passed while this client read only part of what it was sent: past
    /// the request timeout, the server may answer 408 and close.
    stalled: Duration,
    /// The world's step when this client's upgrade was answered, and when the
    /// server closed it.
    joined_at: usize,
    kicked_at: usize,
    /// The node this client talks to (always 0 on a single node).
    node: usize,
    /// Cluster mode: the answer to this request comes once Redis has answered.
    awaiting: Option<Awaiting>,
    /// The step each scripted message was sent at.
    sent_at: Vec<usize>,
    /// The error code of each ack that was not `true`, beside `acks`.
    ack_codes: Vec<Option<String>>,
    /// Per user, the last of its joins and leaves this client heard: true if it joined.
    view: BTreeMap<String, bool>,
    /// Cluster mode: the node's syncs when this client's upgrade was answered.
    syncs_at_join: u64,
    /// Own messages that came back to this socket before their ack: each ack must
    /// then say "unavailable" (see `absorb`).
    echoed_early: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    Login,
    Upgrade,
}

/// One server, and in cluster mode its two links to the stand-in.
struct Node {
    server: Server<MockStream>,
    /// The stand-in's ids of the command and subscription links, while open.
    links: Option<(u64, u64)>,
    /// Bytes Redis's replies and events reach this node at, per link per turn
    /// (`None`: all of them): partial, late delivery.
    trickle: Option<usize>,
}

const USERS: usize = 4;
/// Close codes a client may see (README, "WebSocket events").
const DOCUMENTED_CLOSE_CODES: [u16; 7] = [1000, 1001, 1002, 1003, 1007, 1008, 1009];
const TTL: Duration = Duration::from_secs(30);
/// The `say` argument that sends an empty message instead of a scripted one.
const EMPTY_EXTRA: u8 = 39;

/// Splits a server byte stream into frames: (opcode, payload), leaving a partial tail.
fn server_frames(buf: &[u8], mut pos: usize, out: &mut Vec<(u8, Vec<u8>)>) -> usize {
    while let Some(f) = frame::decode_server(&buf[pos..]).expect("server frames are well-formed and unmasked") {
        out.push((f.opcode, buf[pos..][f.payload].to_vec()));
        pos += f.consumed;
    }
    pos
}

/// Where `needle` first occurs in `hay`. libc's memmem, not a loop over `windows`:
/// the fuzz build traces every comparison of an instrumented loop, and the world's
/// scans of what clients received were a large part of an input's time while
/// telling the fuzzer nothing about skiff.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    // SAFETY: both pointers are valid for the lengths given; memmem only reads them
    // and returns null or a pointer into `hay`.
    let at = unsafe { libc::memmem(hay.as_ptr().cast(), hay.len(), needle.as_ptr().cast(), needle.len()) };
    (!at.is_null()).then(|| at as usize - hay.as_ptr() as usize)
}

/// How many times `needle` occurs in `hay` (the needles used overlap no copy of
/// themselves, so this is what counting `windows` gave).
fn count(hay: &[u8], needle: &[u8]) -> usize {
    let (mut n, mut at) = (0, 0);
    while let Some(i) = find(&hay[at..], needle) {
        n += 1;
        at += i + needle.len();
    }
    n
}

/// Reads one HTTP response head+body off a client's stream, if whole.
fn take_response(c: &mut Client) -> Option<(u16, Vec<u8>, Option<String>)> {
    let p = c.pipe.0.borrow();
    let buf = &p.to_client[c.seen..];
    let end = find(buf, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).expect("ASCII head");
    let status: u16 = head[9..12].parse().expect("status");
    let mut len = 0;
    let mut cookie = None;
    for line in head.split("\r\n") {
        if let Some(v) = line.strip_prefix("Content-Length: ") {
            len = v.parse().expect("length");
        }
        if let Some(v) = line.strip_prefix("Set-Cookie: session=") {
            cookie = Some(v.split(';').next().unwrap_or("").to_owned());
        }
    }
    if status == 101 {
        len = 0;
    }
    if buf.len() < end + len {
        return None;
    }
    let body = buf[end..end + len].to_vec();
    drop(p);
    c.seen += end + len;
    Some((status, body, cookie))
}

struct World {
    nodes: Vec<Node>,
    /// Cluster mode: the Redis the nodes share.
    redis: Option<FakeRedis>,
    start: Instant,
    now: Instant,
    clients: Vec<Client>,
    keys: Vec<String>,
    cookies: Vec<Option<String>>,
    next_msg: u64,
    /// Message id -> sender client index, for accepted messages.
    accepted: HashMap<u64, usize>,
    /// The text of each scripted message, by its id.
    texts: HashMap<u64, String>,
    /// Server message id (protocol v2) -> (author, text), as the first frame naming
    /// it said.
    ids: HashMap<u64, (String, String)>,
    steps: usize,
    /// `WORLD_TRACE` set: every frame a client receives and every message sent go to
    /// stderr, with the step (for reading a crash by hand).
    trace: bool,
}

/// Cluster mode: the config both nodes run with. The stand-in takes any password
/// and any database; both are set so AUTH and SELECT go over the links too.
fn cluster_config() -> ClusterConfig {
    ClusterConfig {
        url: RedisUrl {
            target: crate::config::RedisTarget::Server(([127, 0, 0, 1], 6379).into()),
            password: Some("fuzz".into()),
            db: 1,
        },
        session_ttl: TTL,
        max_sessions_per_user: chat_config().max_sessions_per_user,
        history: chat_config().history,
        max_devices: chat_config().max_devices,
    }
}

impl World {
    fn new(cluster: bool, record: bool) -> World {
        let start = Instant::now();
        let mut cfg = ServerConfig::for_tests(ChatConfig { session_ttl: TTL, ..chat_config() }, vec![], false);
        if cluster {
            // As `from_config` sets them for --redis: Redis keeps the per-user cap.
            cfg.chat.max_sessions_per_user = u32::MAX as usize;
            cfg.conn.api.cluster = true;
        }
        let count = if cluster { 2 } else { 1 };
        let nodes = (0..count)
            .map(|i| {
                let storage = crate::storage::Storage::inline(super::fresh_store());
                let mut server = Server::new(cfg.clone(), storage, start, super::UNIX_START);
                server.cx.chat.set_random(counter_random);
                if cluster {
                    server.cx.chat.set_replicated();
                    server.cx.cluster = Some(Cluster::with_node(cluster_config(), format!("n{}", i + 1), start));
                }
                Node { server, links: None, trickle: None }
            })
            .collect();
        let mut w = World {
            nodes,
            redis: cluster.then(|| {
                let mut r = FakeRedis::new();
                if record {
                    r.record();
                }
                r
            }),
            start,
            now: start,
            clients: vec![],
            keys: vec![],
            cookies: vec![None; USERS],
            next_msg: 0,
            accepted: HashMap::new(),
            texts: HashMap::new(),
            ids: HashMap::new(),
            steps: 0,
            trace: std::env::var_os("WORLD_TRACE").is_some(),
        };
        if cluster {
            // Both nodes connect and sync before anyone registers.
            for _ in 0..8 {
                w.turn();
            }
            assert!(w.nodes.iter().all(|n| w.is_up(n)), "both nodes in sync with the stand-in");
        }
        for u in 0..USERS {
            let c = w.connect(u, 0);
            w.http(
                c,
                &format!(
                    "POST /api/register HTTP/1.1\r\nHost: f\r\nContent-Length: 17\r\n\r\n{{\"username\":\"u{u}\"}}"
                ),
            );
            let (status, body, _) = take_response(&mut w.clients[c]).expect("register answered");
            assert_eq!(status, 201);
            let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
            w.keys.push(v["key"].as_str().expect("key").to_owned());
            w.clients[c].closed = true;
            w.clients[c].pipe.0.borrow_mut().client_closed = true;
            w.nodes[0].server.on_ready(w.clients[c].key, true, false, w.now);
        }
        w
    }

    fn is_cluster(&self) -> bool {
        self.redis.is_some()
    }

    fn is_up(&self, node: &Node) -> bool {
        node.server.cx.cluster.as_ref().is_some_and(Cluster::is_up)
    }

    fn syncs(&self, node: usize) -> u64 {
        self.nodes[node].server.cx.cluster.as_ref().map_or(0, |c| c.gauges(0).syncs)
    }

    fn server(&mut self, c: usize) -> &mut Server<MockStream> {
        let node = self.clients[c].node;
        &mut self.nodes[node].server
    }

    /// The client's socket is still a WebSocket on its node.
    fn is_ws(&self, c: &Client) -> bool {
        self.nodes[c.node].server.conn(c.key).is_some_and(|s| s.generation == c.generation && s.is_ws())
    }

    fn connect(&mut self, user: usize, node: usize) -> usize {
        let pipe = MockStream::default();
        pipe.0.borrow_mut().room = usize::MAX;
        let peer = std::net::SocketAddr::from(([10, 0, 0, 1], 1000 + self.clients.len() as u16));
        let server = &mut self.nodes[node].server;
        let key = server.insert(pipe.clone(), peer, self.now);
        let generation = server.generation(key).expect("just inserted");
        self.clients.push(Client {
            key,
            generation,
            pipe,
            user,
            seen: 0,
            upgraded: false,
            closed: false,
            kicked: None,
            garbled: false,
            sent: vec![],
            acks: vec![],
            got: vec![],
            leaves: vec![],
            requests: 0,
            stalled: Duration::ZERO,
            joined_at: 0,
            kicked_at: 0,
            node,
            awaiting: None,
            sent_at: vec![],
            ack_codes: vec![],
            view: BTreeMap::new(),
            syncs_at_join: 0,
            echoed_early: vec![],
        });
        self.clients.len() - 1
    }

    fn http(&mut self, c: usize, req: &str) {
        self.clients[c].pipe.0.borrow_mut().to_server.extend_from_slice(req.as_bytes());
        let (key, now) = (self.clients[c].key, self.now);
        let server = self.server(c);
        server.on_ready(key, true, true, now);
        // Storage runs inline here: its replies are ready at once.
        server.run_pending_reads(now);
        server.flush_all(now);
        if self.is_cluster() {
            // A request waits on Redis: a few turns carry it there and the answer
            // back (a session fetched, then a join and its event), as fast as the
            // links deliver.
            for _ in 0..4 {
                if self.response_ready(c) {
                    break;
                }
                self.turn();
            }
        }
    }

    fn response_ready(&self, c: usize) -> bool {
        let cl = &self.clients[c];
        cl.pipe.0.borrow().to_client.len() > cl.seen
    }

    fn login(&mut self, user: usize, node: usize) {
        let c = self.connect(user, node);
        let key = self.keys[user].clone();
        let body = format!("{{\"key\":\"{key}\"}}");
        self.http(c, &format!("POST /api/login HTTP/1.1\r\nHost: f\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
        self.clients[c].awaiting = Some(Awaiting::Login);
        self.answered(c);
    }

    fn upgrade(&mut self, user: usize, node: usize) {
        let Some(cookie) = self.cookies[user].clone() else { return };
        let c = self.connect(user, node);
        // Odd users speak protocol v2: both kinds share one room and one order.
        let target = if user % 2 == 1 { "/ws?v=2" } else { "/ws" };
        self.http(
            c,
            &format!(
                "GET {target} HTTP/1.1\r\nHost: f\r\nCookie: session={cookie}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            ),
        );
        self.clients[c].awaiting = Some(Awaiting::Upgrade);
        self.answered(c);
    }

    /// A login or upgrade got its answer (at once on a single node; in cluster mode
    /// perhaps turns later): the cookie is kept, the socket opened, or closed.
    fn answered(&mut self, c: usize) {
        let Some(awaiting) = self.clients[c].awaiting else { return };
        let single = !self.is_cluster();
        let response = take_response(&mut self.clients[c]);
        if response.is_none() && !single && !self.clients[c].closed {
            return; // Redis has not answered yet.
        }
        self.clients[c].awaiting = None;
        if self.trace {
            let cl = &self.clients[c];
            let status = response.as_ref().map(|r| r.0);
            eprintln!("step {} client {c} (u{} node {}) {awaiting:?}: {status:?}", self.steps, cl.user, cl.node + 1);
        }
        match (awaiting, response) {
            (Awaiting::Login, Some((200, _, cookie))) => {
                self.cookies[self.clients[c].user] = cookie;
                self.close(c);
            }
            (Awaiting::Upgrade, Some((101, _, _))) => {
                let syncs = self.syncs(self.clients[c].node);
                let cl = &mut self.clients[c];
                cl.upgraded = true;
                cl.joined_at = self.steps;
                cl.syncs_at_join = syncs;
            }
            _ => self.close(c),
        }
    }

    fn say(&mut self, c: usize, extra: u8) {
        let cl = &mut self.clients[c];
        if !cl.upgraded || cl.closed || cl.garbled {
            return;
        }
        let id = self.next_msg;
        self.next_msg += 1;
        cl.sent.push(id);
        cl.sent_at.push(self.steps);
        // Now and then an empty message, refused at once ("message_empty"), maybe
        // while an earlier one still waits for its ack: each socket must hear its
        // acks in the order it sent.
        let message =
            if extra == EMPTY_EXTRA { String::new() } else { format!("m{id} {}", "x".repeat(extra as usize)) };
        let text = format!("{{\"message\":\"{message}\"}}");
        self.texts.insert(id, message);
        if self.trace {
            eprintln!("step {} client {c} (u{} node {}) sends {text}", self.steps, cl.user, cl.node + 1);
        }
        let frame = frame::client_frame(frame::TEXT, text.as_bytes(), [extra, 1, 2, 3]);
        cl.pipe.0.borrow_mut().to_server.extend_from_slice(&frame);
        let (key, now) = (cl.key, self.now);
        self.server(c).on_ready(key, true, false, now);
    }

    fn close(&mut self, c: usize) {
        let cl = &mut self.clients[c];
        if cl.closed {
            return;
        }
        cl.closed = true;
        cl.pipe.0.borrow_mut().client_closed = true;
        if self.trace && cl.upgraded {
            eprintln!("step {} client {c} (u{} node {}) hangs up", self.steps, cl.user, cl.node + 1);
        }
        let (key, now) = (cl.key, self.now);
        self.server(c).on_ready(key, true, true, now);
    }

    /// Decodes what each client has received so far.
    fn absorb(&mut self) {
        for c in 0..self.clients.len() {
            if self.clients[c].awaiting.is_some() {
                self.answered(c);
            }
        }
        let steps = self.steps;
        let cluster = self.is_cluster();
        let garbled: Vec<String> = self.clients.iter().filter(|c| c.garbled).map(|c| format!("u{}", c.user)).collect();
        // Which client sent each message: a user's other device gets it like anyone.
        let sender_of: HashMap<u64, (usize, usize, bool)> = self
            .clients
            .iter()
            .enumerate()
            .flat_map(|(i, c)| c.sent.iter().map(move |&id| (id, (i, c.user, c.garbled))))
            .collect();
        for (ci, cl) in self.clients.iter_mut().enumerate().filter(|(_, c)| c.upgraded) {
            let mut frames = Vec::new();
            // Only the new frames: copying the whole stream every step would make a
            // long input quadratic in what the server ever sent.
            let pipe = cl.pipe.clone();
            cl.seen = server_frames(&pipe.0.borrow().to_client, cl.seen, &mut frames);
            for (op, payload) in frames {
                if self.trace {
                    let shown =
                        if op == 0x8 { format!("close {payload:?}") } else { String::from_utf8_lossy(&payload).into() };
                    eprintln!("step {steps} client {ci} (u{} node {}) <- {shown}", cl.user, cl.node + 1);
                }
                match op {
                    0x1 => {
                        let v: serde_json::Value = serde_json::from_slice(&payload).expect("server text is JSON");
                        if let Some(ok) = v.get("status") {
                            let ok = ok.as_bool().expect("bool status");
                            if !ok {
                                assert!(v["code"].is_string(), "a failed ack carries an error code: {v}");
                            }
                            cl.acks.push(ok);
                            cl.ack_codes.push(v["code"].as_str().map(str::to_owned));
                            // Acks come in the order their socket sent: an empty
                            // message's is the refusal.
                            if let Some(&mine) = cl.sent.get(cl.acks.len() - 1).filter(|_| !cl.garbled) {
                                if self.texts[&mine].is_empty() {
                                    assert_eq!(
                                        v["code"], "message_empty",
                                        "u{}'s empty message m{mine} got another's ack: {v}",
                                        cl.user
                                    );
                                }
                            }
                            // A v2 ack names the message's id: it must name this text.
                            if let (Some(id), Some(&mine)) = (v["id"].as_u64(), cl.sent.get(cl.acks.len() - 1)) {
                                if !cl.garbled {
                                    let text = self.texts[&mine].clone();
                                    let named = self.ids.entry(id).or_insert((format!("u{}", cl.user), text.clone()));
                                    assert_eq!(
                                        named,
                                        &(format!("u{}", cl.user), text),
                                        "message id {id} names two texts"
                                    );
                                }
                            }
                        } else if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
                            let author = v["author"].as_str().expect("a message names its author").to_owned();
                            if let Some(id) = v["id"].as_u64() {
                                let named = self.ids.entry(id).or_insert((author.clone(), m.to_owned()));
                                assert_eq!(named, &(author.clone(), m.to_owned()), "message id {id} names two texts");
                            }
                            let scripted = m.strip_prefix('m').and_then(|m| m.split(' ').next()?.parse::<u64>().ok());
                            // Raw bytes may happen to form a chat message: not one of ours.
                            // A user's garbled device does not make its other devices'
                            // scripted messages unaccountable, though (the fuzzer's
                            // crash-open-a: one garbled device hid another's message from
                            // everyone, and then its loss looked real): a text exactly as
                            // a clean socket of the author sent it counts, once (raw
                            // bytes could repeat it).
                            if garbled.contains(&author) {
                                let clean = scripted.filter(|id| {
                                    self.texts.get(id).is_some_and(|t| t == m)
                                        && sender_of
                                            .get(id)
                                            .is_some_and(|&(_, user, g)| !g && format!("u{user}") == author)
                                        && !cl.got.contains(id)
                                });
                                if clean.is_none() {
                                    continue;
                                }
                            }
                            let from_another_device =
                                scripted.and_then(|id| sender_of.get(&id)).is_some_and(|&(s, ..)| s != ci);
                            if author == format!("u{}", cl.user) && !from_another_device {
                                // A cluster node that lost Redis fails a message it had
                                // sent ("unavailable"); if Redis had run it, the sync
                                // brings it back to everyone, its sender included.
                                let at = scripted.and_then(|id| cl.sent.iter().position(|&s| s == id));
                                let resynced = cluster
                                    && at.is_some_and(|i| {
                                        cl.ack_codes.get(i).is_some_and(|c| c.as_deref() == Some("unavailable"))
                                    });
                                // Its ack is still to come: a message refused when the
                                // links dropped may have been run by Redis, and the
                                // sync's snapshot (which names no sender for it) comes
                                // before the refusal, which waits behind the acks of the
                                // socket's earlier messages. Judged once the ack is in.
                                let ack_to_come = at.is_some_and(|i| i >= cl.acks.len());
                                if cluster && ack_to_come {
                                    cl.echoed_early.extend(scripted);
                                    continue;
                                }
                                let acked =
                                    at.map(|i| (cl.acks.get(i).copied(), cl.ack_codes.get(i).cloned().flatten()));
                                assert!(
                                    resynced,
                                    "no echo of one's own message ({m:?} back to u{}; its ack: {acked:?})",
                                    cl.user
                                );
                                continue;
                            }
                            // Text from a garbled sender's raw frames carries no id of ours.
                            if let Some(id) = scripted {
                                cl.got.push(id);
                            }
                        } else if v["event"] == "leave" || v["event"] == "join" {
                            let user = v["username"].as_str().expect("an event names a user").to_owned();
                            if v["event"] == "leave" {
                                cl.leaves.push(user.clone());
                            }
                            cl.view.insert(user, v["event"] == "join");
                        }
                    }
                    0x8 => {
                        let code = u16::from_be_bytes([payload[0], payload[1]]);
                        assert!(DOCUMENTED_CLOSE_CODES.contains(&code), "undocumented close code {code}");
                        cl.kicked = Some(code);
                        cl.kicked_at = steps;
                    }
                    0x9 => {}
                    other => panic!("unexpected server opcode {other}"),
                }
            }
        }
        for (i, cl) in self.clients.iter().enumerate() {
            for (&id, &ok) in cl.sent.iter().zip(&cl.acks) {
                if ok {
                    self.accepted.insert(id, i);
                }
            }
        }
    }

    fn step(&mut self) {
        self.steps += 1;
        if self.is_cluster() {
            self.turn();
            for n in &self.nodes {
                n.server.check_invariants(self.now);
            }
            self.absorb();
            self.check_leaves();
            return;
        }
        let server = &mut self.nodes[0].server;
        server.run_pending_reads(self.now);
        for cl in &self.clients {
            if cl.pipe.0.borrow().room > 0 {
                server.on_ready(cl.key, false, true, self.now);
            }
        }
        server.flush_all(self.now);
        server.check_invariants(self.now);
        self.absorb();
    }

    /// Cluster mode: one reactor turn on every node, in the reactor's order: what
    /// Redis sent is read, deferred reads run, clients' writes go out, deadlines
    /// fire, and then `flush_redis`.
    fn turn(&mut self) {
        let now = self.now;
        if let Some(redis) = self.redis.as_mut() {
            redis.set_clock(super::UNIX_START + (now - self.start).as_millis() as i64);
        }
        for i in 0..self.nodes.len() {
            self.read_redis(i);
            let node = &mut self.nodes[i];
            node.server.run_pending_reads(now);
            for cl in self.clients.iter().filter(|c| c.node == i) {
                if cl.pipe.0.borrow().room > 0 {
                    node.server.on_ready(cl.key, false, true, now);
                }
            }
            node.server.on_timeout(now);
            self.flush_redis(i);
            self.nodes[i].server.flush_all(now);
        }
    }

    /// `on_redis_ready` for both links: what the stand-in wrote, up to the node's
    /// trickle, or the end of a link Redis closed.
    fn read_redis(&mut self, i: usize) {
        let now = self.now;
        let (Some(redis), node) = (self.redis.as_mut(), &mut self.nodes[i]) else { return };
        let Some(cluster) = node.server.cx.cluster.as_mut() else { return };
        if let Some((cmd, sub)) = node.links {
            for (link, id) in [(LinkId::Cmd, cmd), (LinkId::Sub, sub)] {
                match redis.read(id, node.trickle.unwrap_or(usize::MAX)) {
                    Read::Bytes(b) => cluster.on_bytes(link, &b, now),
                    Read::Nothing => {}
                    Read::Closed => cluster.on_closed(link, "connection closed", now),
                }
            }
        }
        node.server.run_cluster_events(now);
    }

    /// The reactor's `flush_redis`: events applied, the links opened or closed as
    /// the core asks, what it queued written, then whatever that changed.
    fn flush_redis(&mut self, i: usize) {
        let now = self.now;
        let (Some(redis), node) = (self.redis.as_mut(), &mut self.nodes[i]) else { return };
        node.server.run_cluster_events(now);
        let Some(cluster) = node.server.cx.cluster.as_mut() else { return };
        apply_io(redis, cluster, &mut node.links, now);
        for link in [LinkId::Cmd, LinkId::Sub] {
            let out = cluster.output(link).to_vec();
            let Some((cmd, sub)) = node.links.filter(|_| !out.is_empty()) else { continue };
            let id = if link == LinkId::Cmd { cmd } else { sub };
            if redis.write(id, &out) {
                cluster.consumed(link, out.len());
            } else {
                cluster.on_closed(link, "broken pipe", now);
            }
        }
        cluster.flush(now);
        apply_io(redis, cluster, &mut node.links, now);
        node.server.run_cluster_events(now);
        node.server.release_input(now);
    }

    /// Redis drops node `i`'s links: `which` 0 both, 1 the command link, 2 the
    /// subscription.
    fn drop_links(&mut self, i: usize, which: u8) {
        let (Some(redis), Some((cmd, sub))) = (self.redis.as_mut(), self.nodes[i].links) else { return };
        if which != 2 {
            redis.kill(cmd);
        }
        if which != 1 {
            redis.kill(sub);
        }
    }

    /// Cluster mode, after every step: a client told that a user left has not
    /// since been told it joined only if no socket of that user is open anywhere,
    /// unless a later join is still on its way to it (its node lags: a trickle, a
    /// client not reading, a node out of sync). Judged where nothing lags: the
    /// receiver reads everything and both nodes are in sync with nothing held back.
    fn check_leaves(&self) {
        let settled = self.nodes.iter().all(|n| self.is_up(n) && n.trickle.is_none())
            && self.nodes.iter().all(|n| {
                n.links.is_some_and(|(c, s)| {
                    let r = self.redis.as_ref().expect("cluster mode");
                    r.pending(c) == 0 && r.pending(s) == 0
                })
            });
        if !settled {
            return;
        }
        for r in self.clients.iter().filter(|c| c.upgraded && self.is_ws(c)) {
            if r.pipe.0.borrow().room != usize::MAX {
                continue;
            }
            for (user, &joined) in &r.view {
                if joined {
                    continue;
                }
                let open = self.clients.iter().find(|c| format!("u{}", c.user) == *user && c.upgraded && self.is_ws(c));
                assert!(
                    open.is_none(),
                    "u{} was told {user} left, but {user} is connected on node {}",
                    r.user,
                    open.map_or(0, |c| c.node + 1)
                );
            }
        }
    }

    /// Delivery: each receiver saw each sender's accepted messages in send order,
    /// at most once, and receivers agree on the relative order of what they share.
    /// In cluster mode, a receiver that stayed open and unkicked from before a
    /// sender's message to the end, on a node that stayed in sync all along, got it.
    fn check_delivery(&self) {
        // A sender the server dropped (evicted, expired, too slow) or that hung up may
        // have had messages broadcast whose acks never reached it.
        let mut maybe: HashMap<u64, usize> = HashMap::new();
        for (i, c) in self.clients.iter().enumerate() {
            if c.closed || c.kicked.is_some() || c.garbled || self.server_generation(c) != Some(c.generation) {
                for &id in &c.sent[c.acks.len().min(c.sent.len())..] {
                    maybe.insert(id, i);
                }
            }
            // Cluster mode: "unavailable" says Redis may not have run it; it may
            // still have, and then everyone gets it with the next sync.
            for (&id, code) in c.sent.iter().zip(&c.ack_codes) {
                if code.as_deref() == Some("unavailable") {
                    maybe.insert(id, i);
                }
            }
        }
        // An own message that came back before its ack was one Redis ran after all
        // while the node was told it failed: its ack must say so.
        for c in &self.clients {
            for id in &c.echoed_early {
                let at = c.sent.iter().position(|s| s == id).expect("an own message");
                if let Some(code) = c.ack_codes.get(at) {
                    assert_eq!(
                        code.as_deref(),
                        Some("unavailable"),
                        "m{id} came back to its sender u{} before an ack other than unavailable",
                        c.user
                    );
                }
            }
        }
        for r in self.clients.iter().filter(|c| c.upgraded) {
            let mut last_from: HashMap<usize, u64> = HashMap::new();
            for &id in &r.got {
                let Some(&sender) = self.accepted.get(&id).or_else(|| maybe.get(&id)) else {
                    panic!("message {id} was delivered but never accepted");
                };
                if let Some(&prev) = last_from.get(&sender) {
                    assert!(id > prev, "per-sender order broken or duplicate");
                }
                last_from.insert(sender, id);
            }
        }
        // A socket the server closed for what it sent: everyone in the room then heard
        // it leave, unless it was not its user's last device: one open before and
        // still open is proof enough (one closed since sent the leave itself).
        for c in self.clients.iter().filter(|c| matches!(c.kicked, Some(1002 | 1003 | 1007 | 1009))) {
            if self
                .clients
                .iter()
                .any(|o| o.user == c.user && o.upgraded && o.joined_at <= c.kicked_at && self.is_ws(o))
            {
                continue;
            }
            let user = format!("u{}", c.user);
            for r in self.clients.iter().filter(|r| r.upgraded && !r.closed && r.kicked.is_none()) {
                let in_sync = !self.is_cluster() || self.stayed_in_sync(r);
                if r.joined_at < c.kicked_at && self.server_generation(r) == Some(r.generation) && in_sync {
                    assert!(
                        r.leaves.contains(&user),
                        "{user} was closed {:?} but no leave reached u{}",
                        c.kicked,
                        r.user
                    );
                }
            }
        }
        // Every message a member still here sent got its ack, true or an error code
        // (one missing would shift a v1 client's acks, which it matches by position).
        for c in self.clients.iter().filter(|c| c.upgraded && !c.garbled && !c.closed && c.kicked.is_none()) {
            if self.is_ws(c) {
                assert_eq!(
                    c.acks.len(),
                    c.sent.len(),
                    "u{} sent {} messages and got {} acks",
                    c.user,
                    c.sent.len(),
                    c.acks.len()
                );
            }
        }
        // Global order: any two receivers see common messages in the same order. No
        // receiver got an id twice (checked above), so that is: the messages `a` got,
        // placed where `b` got them, come in increasing places. By position, not by
        // `contains` on every pair: that was quadratic in the messages delivered.
        let receivers: Vec<&Client> = self.clients.iter().filter(|c| c.upgraded).collect();
        let places: Vec<HashMap<u64, usize>> =
            receivers.iter().map(|c| c.got.iter().enumerate().map(|(i, &id)| (id, i)).collect()).collect();
        for a in &receivers {
            for b in &places {
                let mut last = None;
                for at in a.got.iter().filter_map(|id| b.get(id)) {
                    assert!(last < Some(at), "two receivers disagree on the order");
                    last = Some(at);
                }
            }
        }
        if self.is_cluster() {
            self.check_cluster_delivery();
        }
    }

    fn server_generation(&self, c: &Client) -> Option<u64> {
        self.nodes[c.node].server.generation(c.key)
    }

    /// The client is still a member and its node has not lost Redis since it joined.
    fn stayed_in_sync(&self, r: &Client) -> bool {
        let node = &self.nodes[r.node];
        self.is_ws(r) && r.kicked.is_none() && !r.closed && self.is_up(node) && self.syncs(r.node) == r.syncs_at_join
    }

    /// An ack `true` means the message is in the one order: it reached every other
    /// member that joined before it was sent and stayed, on a node that stayed in
    /// sync (one that lost Redis meanwhile may have missed more than the history).
    fn check_cluster_delivery(&self) {
        for s in self.clients.iter().filter(|c| !c.garbled) {
            for ((&id, &at), &ok) in s.sent.iter().zip(&s.sent_at).zip(&s.acks) {
                if !ok {
                    continue;
                }
                for r in self.clients.iter().filter(|r| r.upgraded && r.user != s.user && !r.garbled) {
                    if r.joined_at <= at && self.stayed_in_sync(r) {
                        assert!(
                            r.got.contains(&id),
                            "message {id} from u{} acked true never reached u{}",
                            s.user,
                            r.user
                        );
                    }
                }
            }
        }
    }
}

/// Carries out what the core asked of the links, in order, as `RedisLinks::apply`.
fn apply_io(redis: &mut FakeRedis, cluster: &mut Cluster, links: &mut Option<(u64, u64)>, now: Instant) {
    while let Some(io) = cluster.poll_io() {
        if let Some((cmd, sub)) = links.take() {
            redis.close(cmd);
            redis.close(sub);
        }
        if let Io::Open(_) = io {
            match (redis.open(), redis.open()) {
                (Some(cmd), Some(sub)) => {
                    *links = Some((cmd, sub));
                    cluster.connected(now);
                }
                (one, other) => {
                    // maxclients: the one link made is dropped, and the node hears why.
                    one.into_iter().chain(other).for_each(|l| redis.close(l));
                    cluster.on_closed(LinkId::Cmd, "cannot connect: max number of clients reached", now);
                }
            }
        }
    }
}

impl World {
    /// Steps until the server has no deferred work left (bounded).
    fn settle(&mut self) {
        for _ in 0..64 {
            self.step();
            let busy = self.nodes.iter().any(|n| n.server.has_pending_work());
            let in_flight = self.redis.as_ref().is_some_and(|r| {
                self.nodes.iter().any(|n| n.links.is_some_and(|(c, s)| r.pending(c) + r.pending(s) > 0))
            });
            if !busy && !in_flight {
                break;
            }
        }
    }

    /// `n` requests written in one go, as a pipelining client would.
    fn pipeline(&mut self, n: usize, node: usize) {
        let c = self.connect(0, node);
        self.clients[c].requests = n;
        let req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(n);
        self.http(c, &req);
    }

    /// Every pipelined request was answered, in one response each, while the
    /// client kept reading.
    fn check_pipelines(&self) {
        for c in self.clients.iter().filter(|c| c.requests > 0) {
            let p = c.pipe.0.borrow();
            // A cluster node out of sync answers /healthz 503: an answer all the same.
            let answered = count(&p.to_client, if self.is_cluster() { b"HTTP/1.1 " } else { b"HTTP/1.1 200 OK" });
            let timed_out = find(&p.to_client, b"HTTP/1.1 408 ").is_some();
            // A client that hung up, or stopped reading for longer than the request
            // timeout, may be left with part of its answers: a 408, or, if it did not
            // read that either within the linger time, a closed connection.
            let gone = self.server_generation(c) != Some(c.generation);
            let excused = c.closed || (c.stalled >= REQUEST_TIMEOUT && (timed_out || gone));
            assert!(answered == c.requests || excused, "{answered} of {} pipelined requests answered", c.requests);
        }
    }

    /// `d` passes: clients not reading everything have stalled that much longer.
    /// On a single node time jumps; in cluster mode it passes for both nodes at
    /// once, each waking at its deadlines (heartbeats, retries) as its reactor would,
    /// so no node is silent long enough for the other to reap it.
    fn advance(&mut self, d: Duration) {
        for c in &mut self.clients {
            if c.pipe.0.borrow().room != usize::MAX {
                c.stalled += d;
            }
        }
        if !self.is_cluster() {
            self.now += d;
            self.nodes[0].server.on_timeout(self.now);
            return;
        }
        let end = self.now + d;
        // Bounded, should some deadline stay due: the rest of the wait then passes at once.
        for _ in 0..400 {
            if self.now >= end {
                return;
            }
            let next = self.nodes.iter().filter_map(|n| n.server.next_deadline()).min().unwrap_or(end);
            // At least 5 ms (a deadline already due needs no wait), at most a second
            // (one node's next deadline may be far off while the other's comes).
            let next = next.clamp(self.now + Duration::from_millis(5), self.now + Duration::from_secs(1));
            self.now = next.min(end);
            self.turn();
        }
        if self.now < end {
            self.now = end;
            self.turn();
        }
    }
}

/// What a `connection` run did, so tests can check the script reached the room.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub upgraded: usize,
    pub accepted: usize,
    pub delivered: usize,
    /// Cluster mode: syncs over both nodes (more than 2: a node lost Redis and
    /// came back).
    pub syncs: u64,
}

/// `connection`: bytes pick a script of events through the whole server.
pub fn connection(data: &[u8]) {
    connection_run(data);
}

pub fn connection_run(data: &[u8]) -> Summary {
    run(data, false, false).0
}

/// `connection_cluster`: the same script over two nodes and the Redis stand-in,
/// plus the links' faults.
pub fn connection_cluster(data: &[u8]) {
    connection_cluster_run(data);
}

pub fn connection_cluster_run(data: &[u8]) -> Summary {
    run(data, true, false).0
}

/// The Redis commands both nodes sent while `connection_cluster` played `data`, in
/// the order the stand-in ran them (its clock beside each): for replaying against
/// a real Redis.
pub fn connection_cluster_commands(data: &[u8]) -> Vec<Recorded> {
    run(data, true, true).1
}

fn run(data: &[u8], cluster: bool, record: bool) -> (Summary, Vec<Recorded>) {
    quiet();
    let mut w = World::new(cluster, record);
    let mut ops = data.iter().copied();
    let mut steps = 0;
    while let Some(op) = ops.next() {
        steps += 1;
        if steps > 200 {
            break;
        }
        let arg = ops.next().unwrap_or(0);
        let user = arg as usize % USERS;
        // Cluster mode: the next bit of the argument picks the node.
        let node = if cluster { arg as usize / USERS % 2 } else { 0 };
        let pick = |w: &World| (!w.clients.is_empty()).then(|| arg as usize % w.clients.len());
        match op % if cluster { 13 } else { 10 } {
            0 => w.login(user, node),
            1 => w.upgrade(user, node),
            2 | 3 => {
                if let Some(c) = pick(&w) {
                    w.say(c, ops.next().unwrap_or(0) % 40);
                }
            }
            4 => {
                if let Some(c) = pick(&w) {
                    w.close(c);
                }
            }
            5 => {
                // Partial writes: give a client a small amount of room (or none).
                if let Some(c) = pick(&w) {
                    let room = ops.next().unwrap_or(0) as usize * 7;
                    w.clients[c].pipe.0.borrow_mut().room = room;
                }
            }
            6 => {
                // The reactor never sleeps while the server has work it deferred
                // (a read budget, a flush): time only passes once that is done.
                w.settle();
                w.advance(Duration::from_secs(arg as u64 % 45));
            }
            7 => {
                // Raw bytes on a fresh connection: the parser path under fire.
                let c = w.connect(user, node);
                let n = ops.next().unwrap_or(0) as usize;
                let raw: Vec<u8> = ops.by_ref().take(n).collect();
                w.clients[c].pipe.0.borrow_mut().to_server.extend_from_slice(&raw);
                let (key, now) = (w.clients[c].key, w.now);
                w.server(c).on_ready(key, true, true, now);
            }
            8 => {
                // Raw bytes into an upgraded client's socket: the frame path under fire.
                if let Some(c) = pick(&w) {
                    let n = ops.next().unwrap_or(0) as usize % 32;
                    let raw: Vec<u8> = ops.by_ref().take(n).collect();
                    let cl = &mut w.clients[c];
                    if !cl.closed && cl.upgraded {
                        cl.garbled = true;
                        cl.pipe.0.borrow_mut().to_server.extend_from_slice(&raw);
                        let (key, now) = (cl.key, w.now);
                        w.server(c).on_ready(key, true, false, now);
                    }
                }
            }
            9 => {
                // Pipelined requests, enough of them to pass the output high mark.
                let n = ops.next().unwrap_or(0) as usize * 4 + 1;
                w.pipeline(n, node);
            }
            10 => {
                // Redis drops a node's links (both, or one): it degrades, retries
                // after its backoff, and syncs again.
                w.drop_links(arg as usize % 2, (arg >> 1) % 3);
            }
            11 => {
                // Redis's bytes reach a node late: a few per turn, none, or all again.
                let n = ops.next().unwrap_or(0);
                w.nodes[arg as usize % 2].trickle = (n < 200).then_some(n as usize % 64);
            }
            _ => {
                // A short wait, on the scale of the reconnect backoff (100 ms - 2 s).
                w.settle();
                w.advance(Duration::from_millis(arg as u64 * 20));
            }
        }
        w.step();
    }
    // Let everything drain, then check delivery.
    for cl in &w.clients {
        cl.pipe.0.borrow_mut().room = usize::MAX;
    }
    if cluster {
        // Everything Redis sent arrives; a node out of sync gets the time to come back.
        for n in &mut w.nodes {
            n.trickle = None;
        }
        for _ in 0..8 {
            w.settle();
            if w.nodes.iter().all(|n| w.is_up(n)) {
                break;
            }
            w.advance(Duration::from_millis(500));
        }
    }
    w.settle();
    // What each client saw, for minimising a crash by hand.
    if std::env::var_os("WORLD_DEBUG").is_some() {
        for (i, c) in w.clients.iter().enumerate() {
            eprintln!(
                "client {i} u{} node {} up {} closed {} kicked {:?} sent {:?} acks {:?} {:?} got {:?} view {:?}",
                c.user, c.node, c.upgraded, c.closed, c.kicked, c.sent, c.acks, c.ack_codes, c.got, c.view
            );
        }
        eprintln!("syncs {} {}", w.syncs(0), w.syncs(1));
    }
    w.check_delivery();
    w.check_pipelines();
    let summary = Summary {
        upgraded: w.clients.iter().filter(|c| c.upgraded).count(),
        accepted: w.accepted.len(),
        delivered: w.clients.iter().map(|c| c.got.len()).sum(),
        syncs: (0..w.nodes.len()).map(|i| w.syncs(i)).sum(),
    };
    (summary, w.redis.as_mut().map(FakeRedis::take_recording).unwrap_or_default())
}
