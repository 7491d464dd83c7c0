//! The `resume` fuzz target: arbitrary query strings on `/ws?...` and
//! `/api/history?...` after a number of messages the input chooses, through a whole
//! `Server` over mock sockets. Only documented answers; a resumed v2 client gets the
//! hello first and then exactly the retained messages after its `since`, in order,
//! or a resync; a history page is ordered, below `before` and within `limit`.

use super::{chat_config, counter_random, quiet, MockStream};
use crate::chat::ChatConfig;
use crate::server::{Server, ServerConfig};
use crate::storage::Storage;
use crate::ws::frame;
use std::time::{Duration, Instant};

/// Messages kept: small, so resumes past retention are reachable.
const KEEP: usize = 8;

struct Bench {
    server: Server<MockStream>,
    now: Instant,
}

impl Bench {
    /// Sends `bytes` on a new connection and returns everything the server wrote.
    fn exchange(&mut self, bytes: &[u8]) -> (usize, MockStream) {
        let pipe = MockStream::default();
        pipe.0.borrow_mut().room = usize::MAX;
        pipe.0.borrow_mut().to_server.extend_from_slice(bytes);
        let key = self.server.insert(pipe.clone(), "127.0.0.1:5000".parse().expect("addr"), self.now);
        self.server.on_ready(key, true, true, self.now);
        self.settle();
        (key, pipe)
    }

    fn settle(&mut self) {
        for _ in 0..64 {
            self.server.run_pending_reads(self.now);
            self.server.flush_all(self.now);
            if !self.server.has_pending_work() {
                break;
            }
        }
    }

    fn body_of(pipe: &MockStream) -> String {
        let out = String::from_utf8_lossy(&pipe.0.borrow().to_client).into_owned();
        out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
    }

    fn cookie(&mut self, name: &str) -> String {
        let body = format!("{{\"username\":\"{name}\"}}");
        let (_, p) = self.exchange(post("/api/register", &body).as_bytes());
        let v: serde_json::Value = serde_json::from_str(Self::body_of(&p).trim()).expect("register JSON");
        let body = format!("{{\"key\":\"{}\"}}", v["key"].as_str().expect("key"));
        let (_, p) = self.exchange(post("/api/login", &body).as_bytes());
        let out = String::from_utf8_lossy(&p.0.borrow().to_client).into_owned();
        out.split("session=").nth(1).and_then(|s| s.split(';').next()).expect("cookie").to_owned()
    }
}

fn post(path: &str, body: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: f\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

fn upgrade(target: &str, cookie: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: f\r\nCookie: session={cookie}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// The query string: printable ASCII that a request line may carry.
fn query(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| if (0x21..0x7f).contains(&b) && b != b'#' { b as char } else { '&' }).collect()
}

fn frames(bytes: &[u8]) -> Vec<serde_json::Value> {
    let mut pos = 0;
    let mut out = Vec::new();
    while let Some(f) = frame::decode_server(&bytes[pos..]).expect("well-formed server frames") {
        out.push(serde_json::from_slice(&bytes[pos..][f.payload]).expect("JSON frames"));
        pos += f.consumed;
    }
    out
}

pub fn resume(data: &[u8]) {
    quiet();
    let Some((&count, rest)) = data.split_first() else { return };
    let split = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    let (ws_query, history_query) = (query(&rest[..split]), query(rest.get(split + 1..).unwrap_or_default()));
    let cfg = ServerConfig::for_tests(
        ChatConfig { session_ttl: Duration::from_secs(600), history: KEEP, ..chat_config() },
        vec![],
        false,
    );
    let start = Instant::now();
    let mut b =
        Bench { server: Server::new(cfg, Storage::inline(super::fresh_store()), start, super::UNIX_START), now: start };
    b.server.cx.chat.set_random(counter_random);
    b.server.cx.chat.restore_history("E", 0, []);
    let sender = b.cookie("sender");
    let (sk, sp) = b.exchange(upgrade("/ws", &sender).as_bytes());
    let sent = count as u64 % 20;
    for i in 0..sent {
        let f = frame::client_frame(frame::TEXT, format!("{{\"message\":\"m{i}\"}}").as_bytes(), [1, 2, 3, 4]);
        sp.0.borrow_mut().to_server.extend_from_slice(&f);
        b.server.on_ready(sk, true, false, b.now);
        b.settle();
    }
    let reader = b.cookie("reader");
    let (_, rp) = b.exchange(upgrade(&format!("/ws?{ws_query}"), &reader).as_bytes());
    let out = rp.0.borrow().to_client.clone();
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").map_or(out.len(), |p| p + 4);
    let status = &out[9..12];
    match status {
        b"101" => check_replay(&frames(&out[head_end..]), &ws_query, sent),
        b"400" => {}
        other => panic!("GET /ws?{ws_query} answered {}", String::from_utf8_lossy(other)),
    }
    let (_, hp) = b.exchange(
        format!("GET /api/history?{history_query} HTTP/1.1\r\nHost: f\r\nCookie: session={reader}\r\n\r\n").as_bytes(),
    );
    let out = String::from_utf8_lossy(&hp.0.borrow().to_client).into_owned();
    if out.starts_with("HTTP/1.1 200 ") {
        let page: serde_json::Value = serde_json::from_str(Bench::body_of(&hp).trim()).expect("history JSON");
        let ids: Vec<u64> =
            page["messages"].as_array().expect("messages").iter().map(|m| m["id"].as_u64().expect("id")).collect();
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "a page is consecutive and ascending: {ids:?}");
        assert!(ids.len() <= crate::api::HISTORY_MAX_LIMIT && ids.iter().all(|&id| id <= sent));
    } else {
        assert!(out.starts_with("HTTP/1.1 400 ") && out.contains("invalid_query"), "history answered {out}");
    }
}

/// After a 101 to `/ws?{query}`: the hello, then the replay or a resync, all right.
fn check_replay(frames: &[serde_json::Value], query: &str, sent: u64) {
    // As the server reads a query: the first pair with that name, "" when bare.
    let param = |name: &str| {
        query.split('&').find_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k == name).then_some(v)
        })
    };
    if param("v").is_none() {
        assert!(frames.iter().all(|f| f.get("id").is_none()), "plain /ws gets no ids");
        return;
    }
    let hello = frames.first().expect("a hello");
    assert_eq!(hello["event"], "hello");
    assert_eq!(hello["last_id"].as_u64(), Some(sent));
    let Some(since) = param("since").and_then(|s| s.parse::<u64>().ok()) else {
        assert_eq!(frames.len(), 1, "no since, no replay");
        return;
    };
    let rest = &frames[1..];
    let kept_from = sent.saturating_sub(KEEP as u64) + 1;
    let replayable = param("epoch") == Some("E") && since <= sent && (since + 1 >= kept_from || since == sent);
    if replayable {
        let ids: Vec<u64> = rest.iter().map(|f| f["id"].as_u64().expect("replayed messages have ids")).collect();
        assert_eq!(ids, (since + 1..=sent).collect::<Vec<_>>(), "replay after {since}");
    } else {
        assert_eq!(rest, [serde_json::json!({"event": "resync"})], "resync for since={since}");
    }
}
