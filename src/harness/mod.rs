//! Entry points shared by the fuzz targets (`fuzz/`) and the corpus-replay test
//! (`tests/corpus.rs`): each takes arbitrary bytes, drives one core through its
//! public API, and panics only when a documented invariant breaks. No sockets.
//! Built only for tests and with the `harness` feature: never in the shipped binary.

mod mock;
pub mod redis;
mod resume;
mod world;

pub use mock::{MockStream, Pipe};
pub use resume::resume;
pub use world::{
    connection, connection_cluster, connection_cluster_commands, connection_cluster_run, connection_run, Summary,
};

use crate::api::{self, ApiConfig, Ctx, Outcome};
use crate::chat::room::RateLimit;
use crate::chat::{self, Chat, ChatConfig, Effect};
use crate::http::{parse, Limits, Request};
use crate::proxy;
use crate::ratelimit::RateLimits;
use crate::store::Store;
use std::time::{Duration, Instant};

const LOCAL: proxy::Client = proxy::Client {
    ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    forwarded: false,
    https: false,
    trusted_peer: false,
};

/// Deterministic "randomness" so a crash replays exactly (quiche's
/// `reset_rand_for_fuzzing` idea).
pub(crate) fn counter_random(buf: &mut [u8]) {
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

/// A migrated in-memory store, copied from one made once per thread: opening and
/// migrating a database cost more than all the rest of a short input.
pub(crate) fn fresh_store() -> Store {
    thread_local!(static TEMPLATE: Store = Store::open_in_memory().expect("in-memory store"));
    TEMPLATE.with(|t| t.copy_in_memory().expect("a copy of the template store"))
}

/// Harness runs are many and short; their log lines would drown the fuzzer's.
pub(crate) fn quiet() {
    crate::log::set_level(crate::log::Level::Error);
}

pub(crate) fn chat_config() -> ChatConfig {
    ChatConfig {
        session_ttl: Duration::from_secs(60),
        max_sessions_per_user: 4,
        max_devices: 5,
        max_sessions: 64,
        message_rate: Some(RateLimit { per_second: 100, burst: 200 }),
        history: 16,
    }
}

/// `http_request`: the incremental parser must give the same requests (or the same
/// error) whatever the split points, and never exceed its limits.
/// The Unix time (ms) a simulated server starts at: fixed, so runs repeat exactly.
pub const UNIX_START: i64 = 1_700_000_000_000;

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
    let mut store = fresh_store();
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
        cfg: &cfg,
        now: Instant::now(),
        fx: &mut fx,
        client: LOCAL,
        metered: false,
        limits: &mut RateLimits::new(0, 0),
        server: crate::api::ServerState::empty(),
    };
    let Outcome::Respond(resp) = api::handle_now(&req, &mut ctx, &mut store) else {
        panic!("register/login never upgrade")
    };
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
    let mut store = fresh_store();
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
        cfg: &cfg,
        now,
        fx: &mut fx,
        client: LOCAL,
        metered: false,
        limits: &mut RateLimits::new(0, 0),
        server: crate::api::ServerState::empty(),
    };
    match api::handle_now(&req, &mut ctx, &mut store) {
        Outcome::Upgrade { accept, .. } => assert_eq!(accept.len(), 28, "base64 of a SHA-1"),
        Outcome::Respond(r) => {
            assert!([400, 401, 403, 409, 422, 426].contains(&r.status), "GET /ws answered {}", r.status)
        }
        Outcome::Store { .. } => panic!("handle_now answers storage requests itself"),
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
        chat.join(conn, k, true, false, now, &mut fx).expect("join");
    }
    fx.clear();
    chat.on_text(1, &text, now, &mut fx);
    // A kept message's ack waits for its commit: none before it, exactly one after.
    let written = chat.take_new_messages();
    assert!(written.len() <= 1, "one message written at most");
    if let Some(m) = written.first() {
        assert!(!fx.iter().any(|e| matches!(e, Effect::Send { to: 1, .. })), "acked before it was durable");
        chat.on_committed(m.id, true, &mut fx);
    }
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
            Effect::Message { except: Some(1), v1, .. } => Some(&v1[..]),
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

/// The payload of a whole unmasked server frame.
pub fn frame_payload(bytes: &[u8]) -> &[u8] {
    match crate::ws::frame::decode_server(bytes) {
        Ok(Some(f)) => &bytes[f.payload],
        _ => &[],
    }
}

/// Bytes from a Redis link (cluster mode): the RESP parser must never panic, take
/// more than it was given, or answer differently for the same bytes; a whole reply
/// cut anywhere must ask for more; a room-channel payload must parse or be refused.
/// Commands we encode must read back as exactly the arguments given.
pub fn redis_reply(data: &[u8]) {
    use crate::cluster::{event::RoomEvent, resp};
    let mut at = 0;
    // Replies back to back, as a pipelined link reads them.
    while let Ok(Some((value, used))) = resp::parse(&data[at..]) {
        assert!(used > 0 && at + used <= data.len(), "parse took {used} of {}", data.len() - at);
        assert_eq!(resp::parse(&data[at..at + used]), Ok(Some((value, used))), "not deterministic");
        if used <= 512 {
            for cut in 0..used {
                assert_eq!(resp::parse(&data[at..at + cut]), Ok(None), "a cut reply was not incomplete");
            }
        }
        at += used;
    }
    let _ = RoomEvent::parse(data);
    let args: Vec<&[u8]> = data.split(|&b| b == 0).collect();
    let mut encoded = Vec::new();
    resp::encode(&mut encoded, &args);
    let (value, used) = resp::parse(&encoded).expect("our own encoding parses").expect("whole");
    assert_eq!(used, encoded.len());
    let back: Vec<Vec<u8>> =
        value.as_array().expect("an array").iter().map(|v| v.as_bytes().unwrap().to_vec()).collect();
    assert_eq!(back, args.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
}
