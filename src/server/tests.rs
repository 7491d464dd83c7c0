//! `Server` over mock sockets: what only a whole connection can show.

use super::*;
use crate::chat::ChatConfig;
use crate::harness::MockStream;
use crate::ws::frame;
use std::collections::HashMap;
use std::net::IpAddr;

fn server(trusted: Vec<IpAddr>, metrics_public: bool) -> Server<MockStream> {
    let chat = ChatConfig {
        session_ttl: Duration::from_secs(60),
        max_sessions_per_user: 4,
        max_devices: 5,
        max_sessions: 16,
        message_rate: None,
        history: 100,
    };
    Server::new(
        ServerConfig::for_tests(chat, trusted, metrics_public),
        crate::storage::Storage::inline(crate::store::Store::open_in_memory().unwrap()),
        Instant::now(),
        1_700_000_000_000,
    )
}

/// Sends `bytes` on a new connection from `peer`, lets the client read everything,
/// and returns what the server wrote.
fn exchange(srv: &mut Server<MockStream>, peer: &str, bytes: &[u8]) -> (usize, MockStream) {
    let pipe = MockStream::default();
    pipe.0.borrow_mut().room = usize::MAX;
    pipe.0.borrow_mut().to_server.extend_from_slice(bytes);
    let now = Instant::now();
    let key = srv.insert(pipe.clone(), peer.parse().unwrap(), now);
    srv.on_ready(key, true, true, now);
    settle(srv, now);
    (key, pipe)
}

/// Runs pending reads and flushes until the server has nothing left to do.
fn settle(srv: &mut Server<MockStream>, now: Instant) {
    for _ in 0..1000 {
        srv.run_pending_reads(now);
        srv.flush_all(now);
        if !srv.has_pending_work() {
            return;
        }
    }
    panic!("the server kept finding work");
}

fn written(pipe: &MockStream) -> String {
    String::from_utf8_lossy(&pipe.0.borrow().to_client).into_owned()
}

fn get_metrics(srv: &mut Server<MockStream>, peer: &str, forwarded_for: Option<&str>) -> String {
    let xff = forwarded_for.map(|a| format!("X-Forwarded-For: {a}\r\n")).unwrap_or_default();
    let (_, pipe) = exchange(srv, peer, format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{xff}\r\n").as_bytes());
    written(&pipe)
}

#[test]
fn metrics_are_refused_to_remote_peers_unless_public() {
    let mut srv = server(vec![], false);
    assert!(get_metrics(&mut srv, "192.0.2.7:4000", None).starts_with("HTTP/1.1 403 "));
    assert!(get_metrics(&mut srv, "127.0.0.1:4000", None).starts_with("HTTP/1.1 200 "));
    let mut srv = server(vec![], true);
    assert!(get_metrics(&mut srv, "192.0.2.7:4000", None).starts_with("HTTP/1.1 200 "));
}

#[test]
fn metrics_judge_the_forwarded_client_not_the_proxy() {
    let proxy: IpAddr = "127.0.0.1".parse().unwrap();
    let mut srv = server(vec![proxy], false);
    // Through the proxy from the internet: the forwarded address decides.
    assert!(get_metrics(&mut srv, "127.0.0.1:4000", Some("203.0.113.5")).starts_with("HTTP/1.1 403 "));
    // The operator on the proxy host, through the proxy or straight to skiff.
    assert!(get_metrics(&mut srv, "127.0.0.1:4000", Some("127.0.0.1")).starts_with("HTTP/1.1 200 "));
    assert!(get_metrics(&mut srv, "127.0.0.1:4000", None).starts_with("HTTP/1.1 200 "));
    // A remote trusted proxy scraping for itself, forwarding nothing.
    let remote: IpAddr = "10.0.0.2".parse().unwrap();
    let mut srv = server(vec![remote], false);
    assert!(get_metrics(&mut srv, "10.0.0.2:4000", None).starts_with("HTTP/1.1 200 "));
    assert!(get_metrics(&mut srv, "10.0.0.2:4000", Some("198.51.100.1")).starts_with("HTTP/1.1 403 "));
}

#[test]
fn pipelined_requests_past_the_output_high_mark_are_all_answered() {
    // 64 KiB of output holds ~331 of these answers: reading pauses there, and must
    // resume on the requests already buffered once the queue drains.
    for n in [1, 331, 332, 1000, 2000, 5000] {
        let mut srv = server(vec![], false);
        let req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(n);
        let (_, pipe) = exchange(&mut srv, "127.0.0.1:4000", req.as_bytes());
        let answered = written(&pipe).matches("HTTP/1.1 200 OK").count();
        assert_eq!(answered, n, "{n} pipelined requests");
    }
}

#[test]
fn json_bodies_end_with_a_newline() {
    let mut srv = server(vec![], false);
    let (_, pipe) = exchange(&mut srv, "127.0.0.1:4000", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(written(&pipe).ends_with("{\"status\":\"ok\"}\n"), "{}", written(&pipe));
}

/// Registers, logs in and upgrades one user; returns the WebSocket's key and pipe.
fn websocket(srv: &mut Server<MockStream>, name: &str) -> (usize, MockStream) {
    websocket_at(srv, name, "/ws")
}

fn websocket_at(srv: &mut Server<MockStream>, name: &str, target: &str) -> (usize, MockStream) {
    let body = format!("{{\"username\":\"{name}\"}}");
    let req = format!("POST /api/register HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let (_, pipe) = exchange(srv, "127.0.0.1:4000", req.as_bytes());
    let out = written(&pipe);
    let key = out.split("\"key\":\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let body = format!("{{\"key\":\"{key}\"}}");
    let req = format!("POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let (_, pipe) = exchange(srv, "127.0.0.1:4000", req.as_bytes());
    let out = written(&pipe);
    let cookie = out.split("session=").nth(1).unwrap().split(';').next().unwrap().to_owned();
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nCookie: session={cookie}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let (key, pipe) = exchange(srv, "127.0.0.1:4000", req.as_bytes());
    assert!(written(&pipe).starts_with("HTTP/1.1 101 "));
    (key, pipe)
}

fn send(srv: &mut Server<MockStream>, key: usize, pipe: &MockStream, bytes: &[u8]) {
    pipe.0.borrow_mut().to_server.extend_from_slice(bytes);
    let now = Instant::now();
    srv.on_ready(key, true, false, now);
    settle(srv, now);
}

fn ws_holds_partial(srv: &Server<MockStream>, key: usize) -> bool {
    match srv.conn(key).unwrap().phase() {
        crate::conn::Phase::Ws(w) => w.holds_partial(),
        _ => panic!("not a WebSocket"),
    }
}

#[test]
fn an_idle_websocket_keeps_no_decoding_context_and_websocket_bytes_are_counted() {
    let mut srv = server(vec![], false);
    let (key, pipe) = websocket(&mut srv, "alice");
    assert!(!ws_holds_partial(&srv, key));
    let before = srv.cx.stats.bytes_in;
    let msg = frame::client_frame(0x1, br#"{"message":"hi"}"#, [1, 2, 3, 4]);
    send(&mut srv, key, &pipe, &msg);
    assert_eq!(srv.cx.stats.bytes_in - before, msg.len() as u64, "WebSocket bytes count as received");
    assert!(written(&pipe).ends_with("{\"status\":true}"));
    assert!(!ws_holds_partial(&srv, key), "a whole message leaves no context behind");
    // A fragmented message keeps its context until the last fragment.
    let mut first = frame::client_frame(0x1, br#"{"message":"#, [5, 6, 7, 8]);
    first[0] &= 0x7f; // no FIN: a continuation follows
    send(&mut srv, key, &pipe, &first);
    assert!(ws_holds_partial(&srv, key));
    send(&mut srv, key, &pipe, &frame::client_frame(0x0, br#""x"}"#, [1, 1, 1, 1]));
    assert!(!ws_holds_partial(&srv, key));
    assert!(written(&pipe).matches("{\"status\":true}").count() == 2, "{}", written(&pipe));
}

#[test]
fn a_frame_split_across_reads_is_one_message_and_leftovers_after_it_are_read() {
    let mut srv = server(vec![], false);
    let (key, pipe) = websocket(&mut srv, "bob");
    let a = frame::client_frame(0x1, br#"{"message":"one"}"#, [9, 9, 9, 9]);
    let b = frame::client_frame(0x1, br#"{"message":"two"}"#, [7, 7, 7, 7]);
    let both = [&a[..], &b[..]].concat();
    for chunk in both.chunks(5) {
        send(&mut srv, key, &pipe, chunk);
    }
    assert_eq!(written(&pipe).matches("{\"status\":true}").count(), 2);
    assert_eq!(srv.cx.chat.stats.broadcasts, 2);
}

#[test]
fn oversized_and_binary_frames_close_with_their_codes() {
    for (bytes, code) in [
        (frame::client_frame(0x2, b"\x01", [1, 1, 1, 1]), 1003u16),
        ([&[0x81u8, 0x80 | 127][..], &(1u64 << 40).to_be_bytes()[..]].concat(), 1009),
        (frame::client_frame(0x1, b"\xff\xfe", [0, 0, 0, 0]), 1007),
        (vec![0x81, 0x01, b'x'], 1002),
    ] {
        let mut srv = server(vec![], false);
        let (key, pipe) = websocket(&mut srv, "carol");
        send(&mut srv, key, &pipe, &bytes);
        let out = pipe.0.borrow().to_client.clone();
        let reason = crate::ws::close::reason(code).as_bytes();
        let tail = &out[out.len() - 4 - reason.len()..];
        assert_eq!(tail[..4], [0x88, 2 + reason.len() as u8, (code >> 8) as u8, code as u8], "close {code}");
        assert_eq!(&tail[4..], reason, "close {code} says why");
        assert!(srv.cx.chat.members().is_empty(), "closed socket left the room");
    }
}

#[test]
fn the_broadcast_frame_is_shared_not_copied_per_recipient() {
    let mut srv = server(vec![], false);
    let (a, pa) = websocket(&mut srv, "dave");
    let (_b, pb) = websocket(&mut srv, "erin");
    send(&mut srv, a, &pa, &frame::client_frame(0x1, br#"{"message":"yo"}"#, [3, 3, 3, 3]));
    let expected = frame::text(br#"{"message":"yo","author":"dave"}"#);
    let got = pb.0.borrow().to_client.clone();
    assert!(got.windows(expected.len()).any(|w| w == &expected[..]));
    assert_eq!(srv.cx.log.bytes(), 0, "nothing left owed");
}

fn register(srv: &mut Server<MockStream>, name: &str) -> String {
    let body = format!("{{\"username\":\"{name}\"}}");
    let req = format!("POST /api/register HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    written(&exchange(srv, "127.0.0.1:4000", req.as_bytes()).1)
}

#[test]
fn a_failing_disk_answers_503_while_chat_goes_on_and_heals() {
    let mut srv = server(vec![], false);
    let (a, pa) = websocket(&mut srv, "alice");
    let (_b, pb) = websocket(&mut srv, "carol");
    srv.cx.storage.set_failing(true);
    let answer = register(&mut srv, "bob");
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.ends_with("{\"error\":\"storage_unavailable\"}\n"), "{answer}");
    send(&mut srv, a, &pa, &frame::client_frame(frame::TEXT, br#"{"message":"still"}"#, [1, 2, 3, 4]));
    srv.run_pending_reads(Instant::now());
    srv.flush_all(Instant::now());
    assert!(written(&pb).ends_with("{\"message\":\"still\",\"author\":\"alice\"}"), "chat goes on");
    assert!(written(&pa).ends_with("{\"status\":false,\"code\":\"unavailable\"}"), "not stored, so not acked as safe");
    srv.cx.storage.set_failing(false);
    send(&mut srv, a, &pa, &frame::client_frame(frame::TEXT, br#"{"message":"back"}"#, [1, 2, 3, 4]));
    srv.run_pending_reads(Instant::now());
    srv.flush_all(Instant::now());
    assert!(written(&pa).ends_with("{\"status\":true}"), "stored again: acked");
    assert!(register(&mut srv, "bob").starts_with("HTTP/1.1 201 "), "the disk is back");
}

#[test]
fn requests_pipelined_behind_a_storage_wait_are_answered_after_it_in_order() {
    let mut srv = server(vec![], false);
    let body = r#"{"username":"carol"}"#;
    let reg = format!("POST /api/register HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let req = format!("{reg}GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n{reg}GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    let (_, pipe) = exchange(&mut srv, "127.0.0.1:4000", req.as_bytes());
    let out = written(&pipe);
    let statuses: Vec<&str> = out.match_indices("HTTP/1.1 ").map(|(i, _)| &out[i + 9..i + 12]).collect();
    assert_eq!(statuses, ["201", "200", "409", "404"], "{out}");
}

fn texts(pipe: &MockStream) -> Vec<serde_json::Value> {
    let out = pipe.0.borrow().to_client.clone();
    let start = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut pos = start;
    let mut frames = Vec::new();
    while let Some(f) = frame::decode_server(&out[pos..]).unwrap() {
        if f.opcode == frame::TEXT {
            frames.push(serde_json::from_slice(&out[pos..][f.payload]).unwrap());
        }
        pos += f.consumed;
    }
    frames
}

#[test]
fn a_v2_client_behind_on_its_queue_gets_each_message_once_in_its_own_form() {
    let mut srv = server(vec![], false);
    let (_a, pa) = websocket(&mut srv, "amy");
    let (_c, pc) = websocket_at(&mut srv, "cid", "/ws?v=2");
    pc.0.borrow_mut().room = 0; // cid stops reading: what it is owed piles up
    let (b, pb) = websocket(&mut srv, "bob");
    send(&mut srv, b, &pb, &frame::client_frame(frame::TEXT, br#"{"message":"m1"}"#, [1, 2, 3, 4]));
    let _ = websocket(&mut srv, "dan");
    srv.check_invariants(Instant::now());
    pc.0.borrow_mut().room = usize::MAX;
    srv.on_ready(_c, false, true, Instant::now());
    settle(&mut srv, Instant::now());
    let got = texts(&pc);
    let m1: Vec<&serde_json::Value> = got.iter().filter(|v| v["message"] == "m1").collect();
    assert_eq!(m1.len(), 1, "exactly one copy: {got:?}");
    assert!(m1[0]["id"].is_u64(), "in the v2 form: {got:?}");
    let events: Vec<&str> = got.iter().filter_map(|v| v["username"].as_str()).collect();
    assert_eq!(events, ["bob", "dan"], "joins in order around the message: {got:?}");
    assert!(texts(&pa).iter().any(|v| v == &serde_json::json!({"message": "m1", "author": "bob"})));
    assert_eq!(srv.cx.log.bytes(), 0, "nothing left owed");
}

#[test]
fn requests_are_counted_under_their_route_template_and_broken_ones_under_other() {
    use crate::metrics::Route;
    let mut srv = server(vec![], false);
    exchange(&mut srv, "127.0.0.1:4000", b"GET /api/user/bob HTTP/1.1\r\nHost: x\r\n\r\n");
    exchange(&mut srv, "127.0.0.1:4000", b"GET /api/user/Eve HTTP/1.1\r\nHost: x\r\n\r\n");
    exchange(&mut srv, "127.0.0.1:4000", b"GET /wp-login.php HTTP/1.1\r\nHost: x\r\n\r\n");
    exchange(&mut srv, "127.0.0.1:4000", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    exchange(&mut srv, "127.0.0.1:4000", b"\x01GARBAGE\r\n\r\n");
    let counted: Vec<(Route, u16, u64)> = srv.cx.stats.requests.iter().map(|(&(r, s), &n)| (r, s, n)).collect();
    assert_eq!(
        counted,
        [(Route::User, 422, 2), (Route::Static, 200, 1), (Route::Other, 400, 1), (Route::Other, 404, 1)],
        "no cookie: 422 under the template, whatever the name"
    );
    let timed = |r: Route| srv.cx.stats.request_seconds[r as usize].count();
    assert_eq!((timed(Route::User), timed(Route::Static), timed(Route::Other)), (2, 1, 1), "a broken head is untimed");
}

#[test]
fn a_message_fan_out_is_timed_once_its_slowest_recipient_v1_or_v2_has_written_it() {
    let mut srv = server(vec![], false);
    let (a, pa) = websocket(&mut srv, "amy");
    let (c, pc) = websocket_at(&mut srv, "cid", "/ws?v=2");
    let (b, pb) = websocket(&mut srv, "bob");
    let timed = |srv: &Server<MockStream>| srv.cx.stats.fanout_seconds.count();
    assert_eq!(timed(&srv), 0, "joins are not messages");
    for (stalled_key, stalled, message) in [(c, &pc, "m1"), (a, &pa, "m2")] {
        let before = timed(&srv);
        stalled.0.borrow_mut().room = 0;
        let text = format!("{{\"message\":\"{message}\"}}");
        send(&mut srv, b, &pb, &frame::client_frame(frame::TEXT, text.as_bytes(), [1, 2, 3, 4]));
        assert_eq!(timed(&srv), before, "{message}: a recipient has not written it yet");
        stalled.0.borrow_mut().room = usize::MAX;
        srv.on_ready(stalled_key, false, true, Instant::now());
        settle(&mut srv, Instant::now());
        assert_eq!(timed(&srv), before + 1, "{message}: written by everyone, timed once");
        assert!(texts(stalled).iter().any(|v| v["message"] == message));
    }
    // A message nobody else hears has no fan-out to time.
    let mut alone = server(vec![], false);
    let (z, pz) = websocket(&mut alone, "zed");
    send(&mut alone, z, &pz, &frame::client_frame(frame::TEXT, br#"{"message":"echo"}"#, [1, 2, 3, 4]));
    assert_eq!(timed(&alone), 0);
}

/// A hand-over between two servers over the same mock sockets: a reader that
/// stopped reading, a fragmented message, a half-received request. Each carries on
/// in the second server as if nothing happened: no leave or join, nothing twice.
#[test]
fn a_handed_over_server_carries_on_every_connection_where_it_was() {
    use crate::handover::{codec, Handed};
    let mut a = server(vec![], false);
    let (amy, pamy) = websocket(&mut a, "amy");
    let (cid, pcid) = websocket_at(&mut a, "cid", "/ws?v=2");
    pcid.0.borrow_mut().room = 0;
    let (bob, pbob) = websocket(&mut a, "bob");
    send(&mut a, bob, &pbob, &frame::client_frame(frame::TEXT, br#"{"message":"m1"}"#, [1, 2, 3, 4]));
    let mut first = frame::client_frame(frame::TEXT, br#"{"message":"hel"#, [5, 6, 7, 8]);
    first[0] &= 0x7f;
    send(&mut a, amy, &pamy, &first);
    let (http, phttp) = exchange(&mut a, "127.0.0.1:4001", b"GET /healthz HTTP/1.1\r\nHo");
    a.check_invariants(Instant::now());

    let now = Instant::now();
    let state = a.export(now).expect("nothing waits on storage");
    // The logins' keep-alive connections go across too.
    let pipes: HashMap<usize, MockStream> =
        state.conns.iter().map(|c| (c.key, a.stream_mut(c.key).unwrap().clone())).collect();
    let handed: Vec<Handed> = state.conns.iter().map(|c| Handed { fd: c.key as i32, ws: true }).collect();
    let state = codec::decode(&codec::encode(&state, &handed)).unwrap().state.unwrap();
    let keys: Vec<usize> = state.conns.iter().map(|c| c.key).collect();
    drop(a);

    let mut b = server(vec![], false);
    b.import(state, now, |i| pipes[&keys[i]].clone()).expect("the state is whole");
    b.check_invariants(now);
    assert_eq!(b.len(), pipes.len());
    settle(&mut b, now);

    pcid.0.borrow_mut().room = usize::MAX;
    b.on_ready(cid, false, true, now);
    send(&mut b, amy, &pamy, &frame::client_frame(0x0, br#"lo"}"#, [1, 1, 1, 1]));
    send(&mut b, http, &phttp, b"st: x\r\n\r\n");
    settle(&mut b, now);
    b.check_invariants(now);

    let got = texts(&pcid);
    let messages: Vec<&str> = got.iter().filter_map(|v| v["message"].as_str()).collect();
    assert_eq!(messages, ["m1", "hello"], "cid: everything once, in order: {got:?}");
    let events: Vec<&str> = got.iter().filter_map(|v| v["event"].as_str()).collect();
    assert_eq!(events, ["hello", "join"], "cid saw bob join before the hand-over, and nothing else: {got:?}");
    let bob_got = texts(&pbob);
    assert_eq!(bob_got.last().unwrap(), &serde_json::json!({"message": "hello", "author": "amy"}));
    assert!(bob_got.iter().all(|v| v["event"] != "leave"), "{bob_got:?}");
    assert!(written(&phttp).ends_with("{\"status\":\"ok\"}\n"), "{}", written(&phttp));
    assert!(written(&pamy).ends_with("{\"status\":true}"), "amy's ack");
}

#[test]
fn an_inconsistent_state_is_refused_before_any_socket_is_taken() {
    let mut a = server(vec![], false);
    let (_amy, _p) = websocket(&mut a, "amy");
    let now = Instant::now();
    let mut state = a.export(now).unwrap();
    state.chat.room.clear();
    let mut b = server(vec![], false);
    let mut asked = 0;
    assert!(b
        .import(state, now, |_| {
            asked += 1;
            MockStream::default()
        })
        .is_err());
    assert_eq!((asked, b.len(), b.cx.chat.session_count()), (0, 0, 0));
}

fn unfinished(len: usize) -> Vec<u8> {
    let mut f = frame::client_frame(0x1, &vec![b'a'; len], [1, 2, 3, 4]);
    f[0] &= 0x7f;
    f
}

/// The close frame with a reason, as the server writes it.
fn close_with(code: u16, reason: &str) -> Vec<u8> {
    let mut f = vec![0x88, 2 + reason.len() as u8];
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(reason.as_bytes());
    f
}

#[test]
fn past_the_memory_budget_the_biggest_holder_is_closed_and_the_rest_stay() {
    let mut srv = server(vec![], false);
    srv.cx.memory = crate::conn::memory::Memory::new(20 * 1024);
    let (a, pa) = websocket(&mut srv, "alice");
    let (b, pb) = websocket(&mut srv, "bob");
    let (c, pc) = websocket(&mut srv, "carol");
    send(&mut srv, a, &pa, &unfinished(2 * 1024));
    send(&mut srv, b, &pb, &unfinished(8 * 1024));
    assert_eq!(srv.cx.stats.memory_shed, 0, "10 KiB held is under the budget");
    let held = srv.cx.memory.held();
    assert!((10 * 1024..12 * 1024).contains(&held), "{held}");
    assert_eq!(srv.cx.stats.client_memory, held as u64);
    send(&mut srv, c, &pc, &unfinished(12 * 1024));
    assert_eq!(srv.cx.stats.memory_shed, 1);
    assert!(pc.0.borrow().to_client.ends_with(&close_with(1008, "memory budget")));
    assert!(srv.conn(c).is_none_or(|c| c.is_closing()), "carol, the biggest, is closed");
    assert!(ws_holds_partial(&srv, a) && ws_holds_partial(&srv, b), "alice and bob keep their messages");
    assert_eq!(srv.cx.memory.held(), held, "what carol held is let go");
    // Bob finishes his message and is served as before.
    send(&mut srv, b, &pb, &frame::client_frame(0x0, b"", [1, 1, 1, 1]));
    assert!(!ws_holds_partial(&srv, b));
}

#[test]
fn every_frame_takes_a_token_and_a_flood_is_closed_within_one_read() {
    let mut srv = server(vec![], false);
    srv.cx.cfg.limit_loopback = true;
    srv.cx.cfg.frame_rate = Some(crate::chat::room::RateLimit { per_second: 10, burst: 20 });
    let (key, pipe) = websocket(&mut srv, "flood");
    let before = pipe.0.borrow().to_client.len();
    let pings: Vec<u8> = (0..30).flat_map(|_| frame::client_frame(frame::PING, b"", [1, 2, 3, 4])).collect();
    send(&mut srv, key, &pipe, &pings);
    let out = pipe.0.borrow().to_client[before..].to_vec();
    let pongs = out.windows(2).filter(|w| w == &[0x8a, 0x00]).count();
    assert_eq!(pongs, 20, "the burst is answered, nothing past it");
    assert!(out.ends_with(&close_with(1008, "frame rate")));
    assert_eq!(srv.cx.stats.frame_flood_closed, 1);
}
