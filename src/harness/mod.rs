//! Entry points shared by the fuzz targets (`fuzz/`) and the corpus-replay test
//! (`tests/corpus.rs`): each takes arbitrary bytes, drives one core through its
//! public API, and panics only when a documented invariant breaks. No sockets.

use crate::api::{self, ApiConfig, Ctx, Outcome};
use crate::chat::room::RateLimit;
use crate::chat::{self, Chat, ChatConfig, Effect};
use crate::http::{parse, Limits, Request};
use crate::proxy;
use crate::ratelimit::RateLimits;
use crate::store::Store;
use std::time::{Duration, Instant};

const LOCAL: proxy::Client =
    proxy::Client { ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), forwarded: false, https: false };

/// Deterministic "randomness" so a crash replays exactly (quiche's
/// `reset_rand_for_fuzzing` idea).
fn counter_random(buf: &mut [u8]) {
    use std::cell::Cell;
    thread_local!(static STATE: Cell<u64> = const { Cell::new(0x9e37_79b9_7f4a_7c15) });
    STATE.with(|s| {
        for b in buf.iter_mut() {
            let mut x = s.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.set(x);
            *b = x as u8;
        }
    });
}

/// Harness runs are many and short; their log lines would drown the fuzzer's.
fn quiet() {
    crate::log::set_level(crate::log::Level::Error);
}

fn chat_config() -> ChatConfig {
    ChatConfig {
        session_ttl: Duration::from_secs(60),
        max_sessions_per_user: 4,
        max_sessions: 64,
        message_rate: Some(RateLimit { per_second: 100, burst: 200 }),
    }
}

/// `http_request`: the incremental parser must give the same requests (or the same
/// error) whatever the split points, and never exceed its limits.
pub fn http_request(data: &[u8]) {
    quiet();
    let Some((&seed, input)) = data.split_first() else { return };
    let limits = Limits::default();
    let whole = parse::parse_all(input, &[], limits);
    // Derive split points from the seed: every `step` bytes, plus byte-at-a-time
    // for the smallest seeds.
    let step = (seed as usize % 64) + 1;
    let splits: Vec<usize> = (1..input.len()).filter(|i| i % step == 0).collect();
    let split = parse::parse_all(input, &splits, limits);
    assert_eq!(whole, split, "split points changed the parse (step {step})");
    for r in &whole.0 {
        assert!(r.body.len() <= limits.max_body, "body over the limit");
        assert!(r.minor_version <= 1);
    }
}

/// `api_body`: arbitrary bytes as the body of register or login through the real
/// routes with an in-memory store: only documented statuses, never 500.
pub fn api_body(data: &[u8]) {
    quiet();
    let Some((&which, body)) = data.split_first() else { return };
    let mut chat = Chat::new(chat_config());
    chat.set_random(counter_random);
    let mut store = Store::open_in_memory().expect("in-memory store");
    // One existing user, so 409 and 200 are reachable.
    let _ = store.register("taken");
    let path = if which & 1 == 0 { "/api/register" } else { "/api/login" };
    let req = Request {
        method: "POST".into(),
        target: path.into(),
        minor_version: 1,
        headers: vec![("Host".into(), b"fuzz".to_vec())],
        body: body.to_vec(),
    };
    let cfg = ApiConfig::default();
    let mut fx = Vec::new();
    let mut ctx = Ctx {
        chat: &mut chat,
        store: &mut store,
        cfg: &cfg,
        now: Instant::now(),
        fx: &mut fx,
        client: LOCAL,
        metered: false,
        limits: &mut RateLimits::new(0, 0),
    };
    let Outcome::Respond(resp) = api::handle(&req, &mut ctx) else { panic!("register/login never upgrade") };
    let allowed: &[u16] = if which & 1 == 0 { &[201, 400, 409, 422] } else { &[200, 401, 422] };
    assert!(allowed.contains(&resp.status), "{path} answered {}", resp.status);
    assert_eq!(resp.header_value("Content-Type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("JSON body");
    if resp.status >= 400 {
        assert!(v["error"].is_string(), "error body carries a code");
    }
}

/// `cookie_header`: arbitrary Cookie / Origin / Upgrade / Connection / version / key
/// headers on `GET /ws`: the checks answer only documented statuses, in order.
pub fn cookie_header(data: &[u8]) {
    quiet();
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut chat = Chat::new(chat_config());
    chat.set_random(counter_random);
    let mut store = Store::open_in_memory().expect("in-memory store");
    let now = Instant::now();
    let mut fx = Vec::new();
    let session = chat.login("fuzzer", now, &mut fx).expect("room for one session");
    let mut values = rest.split(|&b| b == 0xff);
    let mut headers = vec![("Host".to_string(), b"fuzz".to_vec())];
    let mut cookie = values.next().unwrap_or_default().to_vec();
    if flags & 1 != 0 {
        // Put a live session somewhere in the cookie header.
        cookie.extend_from_slice(b"; session=");
        cookie.extend_from_slice(&session);
    }
    headers.push(("Cookie".into(), cookie));
    for name in ["Origin", "Upgrade", "Connection", "Sec-WebSocket-Version", "Sec-WebSocket-Key"] {
        if let Some(v) = values.next() {
            headers.push((name.into(), v.to_vec()));
        }
    }
    let req = Request { method: "GET".into(), target: "/ws".into(), minor_version: 1, headers, body: vec![] };
    let _ = api::session_cookie(&req);
    let allowed_origins = if flags & 2 != 0 { vec!["https://chat.example".into()] } else { vec![] };
    let cfg = ApiConfig { allowed_origins, ..ApiConfig::default() };
    let mut ctx = Ctx {
        chat: &mut chat,
        store: &mut store,
        cfg: &cfg,
        now,
        fx: &mut fx,
        client: LOCAL,
        metered: false,
        limits: &mut RateLimits::new(0, 0),
    };
    match api::handle(&req, &mut ctx) {
        Outcome::Upgrade { accept, .. } => assert_eq!(accept.len(), 28, "base64 of a SHA-1"),
        Outcome::Respond(r) => {
            assert!([400, 401, 403, 409, 422, 426].contains(&r.status), "GET /ws answered {}", r.status)
        }
    }
}

/// `ws_message`: arbitrary text through the chat core: the sender gets exactly one
/// documented ack; an accepted message is broadcast once as valid JSON that parses
/// back to exactly the message sent.
pub fn ws_message(data: &[u8]) {
    quiet();
    let text = String::from_utf8_lossy(data);
    let mut chat = Chat::new(chat_config());
    chat.set_random(counter_random);
    let now = Instant::now();
    let mut fx = Vec::new();
    for (conn, name) in [(1, "sender"), (2, "reader")] {
        let id = chat.login(name, now, &mut fx).expect("session");
        let k = chat.authenticate(&id, now).expect("live");
        chat.join(conn, k, true, now, &mut fx).expect("join");
    }
    fx.clear();
    chat.on_text(1, &text, now, &mut fx);
    let acks: Vec<&[u8]> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Send { to: 1, frame } => Some(frame.as_slice()),
            _ => None,
        })
        .collect();
    assert_eq!(acks.len(), 1, "exactly one ack");
    let documented = [chat::ACK_OK, chat::ACK_TOO_LONG, chat::ACK_EMPTY, chat::ACK_INVALID, chat::ACK_RATE_LIMITED];
    assert!(documented.contains(&acks[0]), "undocumented ack");
    let broadcasts: Vec<&[u8]> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Broadcast { except: Some(1), frame } => Some(&frame[..]),
            _ => None,
        })
        .collect();
    if acks[0] == chat::ACK_OK {
        assert_eq!(broadcasts.len(), 1);
        let sent: serde_json::Value = serde_json::from_str(&text).expect("accepted text is JSON");
        let got: serde_json::Value = serde_json::from_slice(frame_payload(broadcasts[0])).expect("broadcast is JSON");
        assert_eq!(got["message"], sent["message"], "the broadcast carries exactly the message sent");
        assert_eq!(got["author"], "sender");
        assert_eq!(got.as_object().map(|o| o.len()), Some(2));
    } else {
        assert!(broadcasts.is_empty(), "a rejected message is not broadcast");
    }
}

/// The payload of an unmasked server frame.
pub fn frame_payload(frame: &[u8]) -> &[u8] {
    match frame.get(1) {
        Some(126) => &frame[4..],
        Some(127) => &frame[10..],
        Some(_) => &frame[2..],
        None => &[],
    }
}

// ---------------------------------------------------------------------------
// `connection`: whole connections, no sockets.

use crate::conn::Stream;
use crate::server::{Server, ServerConfig};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::rc::Rc;

/// The two ends of a fake socket: what the client sent and the server has not read,
/// and what the server wrote. `room` is how many more bytes the server may write
/// before `WouldBlock`, to exercise partial writes.
#[derive(Default)]
pub struct Pipe {
    pub to_server: Vec<u8>,
    pub read_pos: usize,
    pub client_closed: bool,
    pub to_client: Vec<u8>,
    pub room: usize,
    pub server_shut: bool,
}

#[derive(Clone, Default)]
pub struct MockStream(pub Rc<RefCell<Pipe>>);

impl Read for MockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut p = self.0.borrow_mut();
        let avail = p.to_server.len() - p.read_pos;
        if avail == 0 {
            return if p.client_closed { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
        }
        let n = avail.min(buf.len());
        let start = p.read_pos;
        buf[..n].copy_from_slice(&p.to_server[start..start + n]);
        p.read_pos += n;
        Ok(n)
    }
}

impl Write for MockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut p = self.0.borrow_mut();
        if p.client_closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if p.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(p.room);
        p.room -= n;
        p.to_client.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for MockStream {
    fn shutdown_write(&mut self) {
        self.0.borrow_mut().server_shut = true;
    }
}

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
    /// The server sent a close frame (dropped as slow, expired, ...).
    kicked: bool,
    sent: Vec<u64>,
    acks: Vec<bool>,
    /// Message ids received from others, in order.
    got: Vec<u64>,
}

const USERS: usize = 4;
const TTL: Duration = Duration::from_secs(30);

/// A masked client frame (RFC 6455 5.3), as a browser would send it.
pub fn mask_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Splits a server byte stream into frames: (opcode, payload), leaving a partial tail.
fn server_frames(buf: &[u8], mut pos: usize, out: &mut Vec<(u8, Vec<u8>)>) -> usize {
    loop {
        let rest = &buf[pos..];
        if rest.len() < 2 {
            return pos;
        }
        assert_eq!(rest[1] & 0x80, 0, "server frames are never masked");
        let (len, off) = match rest[1] & 0x7f {
            126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 if rest.len() >= 10 => (u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => return pos,
            n => (n as usize, 2),
        };
        if rest.len() < off + len {
            return pos;
        }
        out.push((rest[0] & 0x0f, rest[off..off + len].to_vec()));
        pos += off + len;
    }
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
}

impl World {
    fn new() -> World {
        let cfg = ServerConfig {
            chat: ChatConfig { session_ttl: TTL, ..chat_config() },
            api: ApiConfig::default(),
            limits: Limits::default(),
            limit_loopback: false,
            trusted_proxies: vec![],
            metrics_public: false,
            register_per_minute: 0,
            failed_logins_per_minute: 0,
        };
        let mut server = Server::new(cfg, Store::open_in_memory().expect("store"));
        server.chat.set_random(counter_random);
        let mut w = World {
            server,
            now: Instant::now(),
            clients: vec![],
            keys: vec![],
            cookies: vec![None; USERS],
            next_msg: 0,
            accepted: HashMap::new(),
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
            kicked: false,
            sent: vec![],
            acks: vec![],
            got: vec![],
        });
        self.clients.len() - 1
    }

    fn http(&mut self, c: usize, req: &str) {
        self.clients[c].pipe.0.borrow_mut().to_server.extend_from_slice(req.as_bytes());
        self.server.on_ready(self.clients[c].key, true, true, self.now);
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
        self.http(
            c,
            &format!(
                "GET /ws HTTP/1.1\r\nHost: f\r\nCookie: session={cookie}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            ),
        );
        match take_response(&mut self.clients[c]) {
            Some((101, _, _)) => self.clients[c].upgraded = true,
            _ => self.close(c),
        }
    }

    fn say(&mut self, c: usize, extra: u8) {
        let cl = &mut self.clients[c];
        if !cl.upgraded || cl.closed {
            return;
        }
        let id = self.next_msg;
        self.next_msg += 1;
        cl.sent.push(id);
        let text = format!("{{\"message\":\"m{id} {}\"}}", "x".repeat(extra as usize));
        let frame = mask_frame(0x1, text.as_bytes(), [extra, 1, 2, 3]);
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
                            let id = m[1..].split(' ').next().and_then(|n| n.parse().ok()).expect("an id");
                            assert_ne!(v["author"], format!("u{}", cl.user), "no echo of one's own message");
                            cl.got.push(id);
                        }
                    }
                    0x8 => cl.kicked = true,
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
            if c.closed || c.kicked || self.server.generation(c.key) != Some(c.generation) {
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
        match op % 9 {
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
                w.now += Duration::from_secs(arg as u64 % 45);
                w.server.on_timeout(w.now);
            }
            7 => {
                // Raw bytes on a fresh connection: the parser path under fire.
                let c = w.connect(user);
                let n = ops.next().unwrap_or(0) as usize;
                let raw: Vec<u8> = ops.by_ref().take(n).collect();
                w.clients[c].pipe.0.borrow_mut().to_server.extend_from_slice(&raw);
                w.server.on_ready(w.clients[c].key, true, true, w.now);
            }
            _ => {
                // Raw bytes into an upgraded client's socket.
                if let Some(c) = pick(&w) {
                    let n = ops.next().unwrap_or(0) as usize % 32;
                    let raw: Vec<u8> = ops.by_ref().take(n).collect();
                    let cl = &mut w.clients[c];
                    if !cl.closed && !cl.upgraded {
                        cl.pipe.0.borrow_mut().to_server.extend_from_slice(&raw);
                        w.server.on_ready(cl.key, true, false, w.now);
                    }
                }
            }
        }
        w.step();
    }
    // Let everything drain, then check delivery.
    for cl in &w.clients {
        cl.pipe.0.borrow_mut().room = usize::MAX;
    }
    for _ in 0..4 {
        w.step();
    }
    w.check_delivery();
    Summary {
        upgraded: w.clients.iter().filter(|c| c.upgraded).count(),
        accepted: w.accepted.len(),
        delivered: w.clients.iter().map(|c| c.got.len()).sum(),
    }
}
