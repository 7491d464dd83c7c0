//! The `connection` fuzz model: a simulated world of scripted clients talking to a
//! whole `Server` over mock sockets, with what each client should have seen.

use super::{chat_config, counter_random, quiet, MockStream};
use crate::chat::ChatConfig;
use crate::conn::REQUEST_TIMEOUT;
use crate::server::{Server, ServerConfig};
use crate::store::Store;
use crate::ws::frame;
use std::collections::HashMap;
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
}

const USERS: usize = 4;
/// Close codes a client may see (README, "WebSocket events").
const DOCUMENTED_CLOSE_CODES: [u16; 7] = [1000, 1001, 1002, 1003, 1007, 1008, 1009];
const TTL: Duration = Duration::from_secs(30);

/// Splits a server byte stream into frames: (opcode, payload), leaving a partial tail.
fn server_frames(buf: &[u8], mut pos: usize, out: &mut Vec<(u8, Vec<u8>)>) -> usize {
    while let Some(f) = frame::decode_server(&buf[pos..]).expect("server frames are well-formed and unmasked") {
        out.push((f.opcode, buf[pos..][f.payload].to_vec()));
        pos += f.consumed;
    }
    pos
}

/// Reads one HTTP response head+body off a client's stream, if whole.
fn take_response(c: &mut Client) -> Option<(u16, Vec<u8>, Option<String>)> {
    let p = c.pipe.0.borrow();
    let buf = &p.to_client[c.seen..];
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
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
    server: Server<MockStream>,
    now: Instant,
    clients: Vec<Client>,
    keys: Vec<String>,
    cookies: Vec<Option<String>>,
    next_msg: u64,
    /// Message id -> sender client index, for accepted messages.
    accepted: HashMap<u64, usize>,
    steps: usize,
}

impl World {
    fn new() -> World {
        let cfg = ServerConfig::for_tests(ChatConfig { session_ttl: TTL, ..chat_config() }, vec![], false);
        let start = Instant::now();
        let storage = crate::storage::Storage::inline(Store::open_in_memory().expect("store"));
        let mut server = Server::new(cfg, storage, start, super::UNIX_START);
        server.cx.chat.set_random(counter_random);
        let mut w = World {
            server,
            now: start,
            clients: vec![],
            keys: vec![],
            cookies: vec![None; USERS],
            next_msg: 0,
            accepted: HashMap::new(),
            steps: 0,
        };
        for u in 0..USERS {
            let c = w.connect(u);
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
            w.server.on_ready(w.clients[c].key, true, false, w.now);
        }
        w
    }

    fn connect(&mut self, user: usize) -> usize {
        let pipe = MockStream::default();
        pipe.0.borrow_mut().room = usize::MAX;
        let peer = std::net::SocketAddr::from(([10, 0, 0, 1], 1000 + self.clients.len() as u16));
        let key = self.server.insert(pipe.clone(), peer, self.now);
        let generation = self.server.generation(key).expect("just inserted");
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
        });
        self.clients.len() - 1
    }

    fn http(&mut self, c: usize, req: &str) {
        self.clients[c].pipe.0.borrow_mut().to_server.extend_from_slice(req.as_bytes());
        self.server.on_ready(self.clients[c].key, true, true, self.now);
        // Storage runs inline here: its replies are ready at once.
        self.server.run_pending_reads(self.now);
        self.server.flush_all(self.now);
    }

    fn login(&mut self, user: usize) {
        let c = self.connect(user);
        let key = self.keys[user].clone();
        let body = format!("{{\"key\":\"{key}\"}}");
        self.http(c, &format!("POST /api/login HTTP/1.1\r\nHost: f\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
        if let Some((200, _, cookie)) = take_response(&mut self.clients[c]) {
            self.cookies[user] = cookie;
        }
        self.close(c);
    }

    fn upgrade(&mut self, user: usize) {
        let Some(cookie) = self.cookies[user].clone() else { return };
        let c = self.connect(user);
        // Odd users speak protocol v2: both kinds share one room and one order.
        let target = if user % 2 == 1 { "/ws?v=2" } else { "/ws" };
        self.http(
            c,
            &format!(
                "GET {target} HTTP/1.1\r\nHost: f\r\nCookie: session={cookie}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            ),
        );
        match take_response(&mut self.clients[c]) {
            Some((101, _, _)) => {
                self.clients[c].upgraded = true;
                self.clients[c].joined_at = self.steps;
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
        let text = format!("{{\"message\":\"m{id} {}\"}}", "x".repeat(extra as usize));
        let frame = frame::client_frame(frame::TEXT, text.as_bytes(), [extra, 1, 2, 3]);
        cl.pipe.0.borrow_mut().to_server.extend_from_slice(&frame);
        self.server.on_ready(cl.key, true, false, self.now);
    }

    fn close(&mut self, c: usize) {
        let cl = &mut self.clients[c];
        if cl.closed {
            return;
        }
        cl.closed = true;
        cl.pipe.0.borrow_mut().client_closed = true;
        self.server.on_ready(cl.key, true, true, self.now);
    }

    /// Decodes what each client has received so far.
    fn absorb(&mut self) {
        let steps = self.steps;
        let garbled: Vec<String> = self.clients.iter().filter(|c| c.garbled).map(|c| format!("u{}", c.user)).collect();
        for cl in self.clients.iter_mut().filter(|c| c.upgraded) {
            let mut frames = Vec::new();
            let buf = cl.pipe.0.borrow().to_client.clone();
            cl.seen = server_frames(&buf, cl.seen, &mut frames);
            for (op, payload) in frames {
                match op {
                    0x1 => {
                        let v: serde_json::Value = serde_json::from_slice(&payload).expect("server text is JSON");
                        if let Some(ok) = v.get("status") {
                            cl.acks.push(ok.as_bool().expect("bool status"));
                        } else if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
                            assert_ne!(v["author"], format!("u{}", cl.user), "no echo of one's own message");
                            // Raw bytes may happen to form a chat message: not one of ours.
                            if garbled.iter().any(|g| v["author"] == g.as_str()) {
                                continue;
                            }
                            // Text from a garbled sender's raw frames carries no id of ours.
                            if let Some(id) = m.strip_prefix('m').and_then(|m| m.split(' ').next()?.parse().ok()) {
                                cl.got.push(id);
                            }
                        } else if v["event"] == "leave" {
                            cl.leaves.push(v["username"].as_str().expect("leave names a user").to_owned());
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
        self.server.run_pending_reads(self.now);
        for cl in &self.clients {
            if cl.pipe.0.borrow().room > 0 {
                self.server.on_ready(cl.key, false, true, self.now);
            }
        }
        self.server.flush_all(self.now);
        self.server.check_invariants(self.now);
        self.absorb();
    }

    /// Delivery: each receiver saw each sender's accepted messages in send order,
    /// at most once, and receivers agree on the relative order of what they share.
    /// A receiver that stayed open and unkicked from before a sender's first message
    /// to the end got all of that sender's accepted messages.
    fn check_delivery(&self) {
        // A sender the server dropped (evicted, expired, too slow) or that hung up may
        // have had messages broadcast whose acks never reached it.
        let mut maybe: HashMap<u64, usize> = HashMap::new();
        for (i, c) in self.clients.iter().enumerate() {
            if c.closed || c.kicked.is_some() || c.garbled || self.server.generation(c.key) != Some(c.generation) {
                for &id in &c.sent[c.acks.len().min(c.sent.len())..] {
                    maybe.insert(id, i);
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
        // it leave.
        for c in self.clients.iter().filter(|c| matches!(c.kicked, Some(1002 | 1003 | 1007 | 1009))) {
            let user = format!("u{}", c.user);
            for r in self.clients.iter().filter(|r| r.upgraded && !r.closed && r.kicked.is_none()) {
                if r.joined_at < c.kicked_at && self.server.generation(r.key) == Some(r.generation) {
                    assert!(
                        r.leaves.contains(&user),
                        "{user} was closed {:?} but no leave reached u{}",
                        c.kicked,
                        r.user
                    );
                }
            }
        }
        // Global order: any two receivers see common messages in the same order.
        let receivers: Vec<&Client> = self.clients.iter().filter(|c| c.upgraded).collect();
        for a in &receivers {
            for b in &receivers {
                let common: Vec<u64> = a.got.iter().copied().filter(|id| b.got.contains(id)).collect();
                let common_b: Vec<u64> = b.got.iter().copied().filter(|id| a.got.contains(id)).collect();
                assert_eq!(common, common_b, "two receivers disagree on the order");
            }
        }
    }
}

impl World {
    /// Steps until the server has no deferred work left (bounded).
    fn settle(&mut self) {
        for _ in 0..64 {
            self.step();
            if !self.server.has_pending_work() {
                break;
            }
        }
    }

    /// `n` requests written in one go, as a pipelining client would.
    fn pipeline(&mut self, n: usize) {
        let c = self.connect(0);
        self.clients[c].requests = n;
        let req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(n);
        self.http(c, &req);
    }

    /// Every pipelined request was answered, in one response each, while the
    /// client kept reading.
    fn check_pipelines(&self) {
        for c in self.clients.iter().filter(|c| c.requests > 0) {
            let p = c.pipe.0.borrow();
            let answered = p.to_client.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
            let timed_out = p.to_client.windows(13).any(|w| w == b"HTTP/1.1 408 ");
            // A client that hung up, or stopped reading for longer than the request
            // timeout, may be left with part of its answers: a 408, or, if it did not
            // read that either within the linger time, a closed connection.
            let gone = self.server.generation(c.key) != Some(c.generation);
            let excused = c.closed || (c.stalled >= REQUEST_TIMEOUT && (timed_out || gone));
            assert!(answered == c.requests || excused, "{answered} of {} pipelined requests answered", c.requests);
        }
    }

    /// `d` passes: clients not reading everything have stalled that much longer.
    fn advance(&mut self, d: Duration) {
        for c in &mut self.clients {
            if c.pipe.0.borrow().room != usize::MAX {
                c.stalled += d;
            }
        }
        self.now += d;
        self.server.on_timeout(self.now);
    }
}

/// What a `connection` run did, so tests can check the script reached the room.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub upgraded: usize,
    pub accepted: usize,
    pub delivered: usize,
}

/// `connection`: bytes pick a script of events through the whole server.
pub fn connection(data: &[u8]) {
    connection_run(data);
}

pub fn connection_run(data: &[u8]) -> Summary {
    quiet();
    let mut w = World::new();
    let mut ops = data.iter().copied();
    let mut steps = 0;
    while let Some(op) = ops.next() {
        steps += 1;
        if steps > 200 {
            break;
        }
        let arg = ops.next().unwrap_or(0);
        let user = arg as usize % USERS;
        let pick = |w: &World| (!w.clients.is_empty()).then(|| arg as usize % w.clients.len());
        match op % 10 {
            0 => w.login(user),
            1 => w.upgrade(user),
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
                let c = w.connect(user);
                let n = ops.next().unwrap_or(0) as usize;
                let raw: Vec<u8> = ops.by_ref().take(n).collect();
                w.clients[c].pipe.0.borrow_mut().to_server.extend_from_slice(&raw);
                w.server.on_ready(w.clients[c].key, true, true, w.now);
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
                        w.server.on_ready(cl.key, true, false, w.now);
                    }
                }
            }
            _ => {
                // Pipelined requests, enough of them to pass the output high mark.
                let n = ops.next().unwrap_or(0) as usize * 4 + 1;
                w.pipeline(n);
            }
        }
        w.step();
    }
    // Let everything drain, then check delivery.
    for cl in &w.clients {
        cl.pipe.0.borrow_mut().room = usize::MAX;
    }
    w.settle();
    w.check_delivery();
    w.check_pipelines();
    Summary {
        upgraded: w.clients.iter().filter(|c| c.upgraded).count(),
        accepted: w.accepted.len(),
        delivered: w.clients.iter().map(|c| c.got.len()).sum(),
    }
}
