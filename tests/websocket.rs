//! The WebSocket room end to end: a real skiff, real sockets, tungstenite clients.

mod common;

use common::*;
use serde_json::json;
use std::io::Write;
use std::time::Duration;
use tungstenite::Message;

#[test]
fn join_message_ack_and_leave() {
    let srv = Server::start();
    let alice = srv.user("alice");
    let bob = srv.user("Bob");
    let mut a = srv.ws(&alice);
    let mut b = srv.ws(&bob);
    assert_eq!(a.recv(), json!({"event": "join", "username": "Bob"}));
    let online = srv.get("/api/online", Some(&alice)).json();
    assert_eq!(online, json!({"online_clients": ["alice", "Bob"]}));

    a.say("hello <b>bob</b> \"quoted\" ünïcødé 😀");
    assert_eq!(a.recv(), json!({"status": true}));
    assert_eq!(b.recv(), json!({"message": "hello <b>bob</b> \"quoted\" ünïcødé 😀", "author": "alice"}));

    drop(b);
    assert_eq!(a.recv(), json!({"event": "leave", "username": "Bob"}));
    assert!(wait_for(Duration::from_secs(5), || {
        srv.get("/api/online", Some(&alice)).json() == json!({"online_clients": ["alice"]})
    }));
}

#[test]
fn error_acks_keep_the_connection_open() {
    let srv = Server::start();
    let c = srv.user("alice");
    let mut a = srv.ws(&c);
    let cases = [
        (json!({"message": "x".repeat(301)}).to_string(), "message_too_long"),
        (json!({"message": "😀".repeat(301)}).to_string(), "message_too_long"),
        (json!({"message": ""}).to_string(), "message_empty"),
        (r#"{"message": "hi", "extra": 1}"#.to_owned(), "invalid_message"),
        (r#"{"message": 42}"#.to_owned(), "invalid_message"),
        (r#"{"text": "hi"}"#.to_owned(), "invalid_message"),
        ("not json".to_owned(), "invalid_message"),
        (r#"["message"]"#.to_owned(), "invalid_message"),
    ];
    for (text, code) in cases {
        a.send_text(&text);
        assert_eq!(a.recv(), json!({"status": false, "code": code}), "for {text}");
    }
    // Exactly 300 emoji (1200 bytes) is allowed: the limit counts characters.
    a.say(&"😀".repeat(300));
    assert_eq!(a.recv(), json!({"status": true}));
}

#[test]
fn binary_frame_closes_1003() {
    let srv = Server::start();
    let mut a = srv.ws(&srv.user("alice"));
    a.ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(a.close_code(), Some(1003));
}

#[test]
fn oversized_message_closes_1009() {
    let srv = Server::start();
    let mut a = srv.ws(&srv.user("alice"));
    let big = json!({"message": "x".repeat(17 * 1024)}).to_string();
    a.send_text(&big);
    assert_eq!(a.close_code(), Some(1009));
}

#[test]
fn second_socket_for_the_same_user_is_409() {
    let srv = Server::start();
    let key = srv.register("alice");
    let c1 = srv.login(&key);
    let c2 = srv.login(&key);
    let _a = srv.ws(&c1);
    match srv.try_ws(&c2) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 409),
        other => panic!("expected 409, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn upgrade_without_session_is_422_and_bad_session_401() {
    let srv = Server::start();
    let r = srv.raw(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!((r.status, r.error().as_str()), (422, "missing_session"));
    match srv.try_ws("session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA") {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn invalid_upgrades_are_426_and_400() {
    let srv = Server::start();
    let c = srv.user("alice");
    let no_upgrade = format!("GET /ws HTTP/1.1\r\nHost: t\r\nCookie: {c}\r\n\r\n");
    let r = srv.raw(no_upgrade.as_bytes());
    assert_eq!((r.status, r.error().as_str()), (426, "upgrade_required"));
    assert_eq!(r.header("upgrade"), Some("websocket"));
    let bad_version = format!(
        "GET /ws HTTP/1.1\r\nHost: t\r\nCookie: {c}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let r = srv.raw(bad_version.as_bytes());
    assert_eq!(r.status, 400);
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
    let bad_key = format!(
        "GET /ws HTTP/1.1\r\nHost: t\r\nCookie: {c}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n"
    );
    assert_eq!(srv.raw(bad_key.as_bytes()).status, 400);
    let post = format!("POST /ws HTTP/1.1\r\nHost: t\r\nCookie: {c}\r\nContent-Length: 0\r\n\r\n");
    let r = srv.raw(post.as_bytes());
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
}

#[test]
fn frames_sent_with_the_upgrade_request_are_not_lost() {
    let srv = Server::start();
    let alice = srv.user("alice");
    let mut a = srv.ws(&alice);
    let bob = srv.user("bob");
    // Handshake and a masked text frame in one write: the server must hand the
    // bytes after the head to the WebSocket phase.
    let payload = br#"{"message": "early"}"#;
    let mut req = format!(
        "GET /ws HTTP/1.1\r\nHost: t\r\nCookie: {bob}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes();
    skiff::ws::frame::encode_client(skiff::ws::frame::TEXT, payload, [1, 2, 3, 4], &mut req);
    let mut s = srv.connect();
    s.write_all(&req).unwrap();
    assert_eq!(a.recv(), json!({"event": "join", "username": "bob"}));
    assert_eq!(a.recv(), json!({"message": "early", "author": "bob"}));
}

#[test]
fn logout_closes_the_socket_1000_and_others_see_leave() {
    let srv = Server::start();
    let alice = srv.user("alice");
    let bob = srv.user("bob");
    let mut a = srv.ws(&alice);
    let mut b = srv.ws(&bob);
    a.recv_until(|v| v["event"] == "join");
    let r = srv.get("/api/logout", Some(&bob));
    assert_eq!(r.status, 200);
    assert_eq!(b.close_code(), Some(1000));
    assert_eq!(a.recv(), json!({"event": "leave", "username": "bob"}));
    assert_eq!(srv.get("/api/online", Some(&bob)).status, 401);
}

#[test]
fn session_expiry_closes_the_socket_1008() {
    let srv = Server::start_with(&["--session-ttl", "1"]);
    let alice = srv.user("alice");
    let bob = srv.user("bob");
    let mut a = srv.ws(&alice);
    let mut b = srv.ws(&bob);
    a.recv_until(|v| v["event"] == "join");
    // Alice keeps talking; Bob is silent and expires after one second.
    b.set_timeout(Duration::from_secs(5));
    let mut bob_code = None;
    for _ in 0..40 {
        a.say("keepalive");
        std::thread::sleep(Duration::from_millis(100));
        if bob_code.is_none() {
            if let Ok(Message::Close(Some(f))) = b.ws.read() {
                bob_code = Some(u16::from(f.code));
                break;
            }
        }
    }
    assert_eq!(bob_code, Some(1008));
    a.recv_until(|v| v == &json!({"event": "leave", "username": "bob"}));
    assert_eq!(srv.get("/api/user/@me", Some(&bob)).status, 401);
}

#[test]
fn a_thousand_messages_keep_their_order_for_every_receiver() {
    let srv = Server::start();
    let names = ["s0", "s1", "r0", "r1", "r2"];
    let mut socks: Vec<Ws> = names.iter().map(|n| srv.ws(&srv.user(n))).collect();
    // Drain the join events each socket saw.
    for (i, s) in socks.iter_mut().enumerate() {
        for _ in i + 1..names.len() {
            s.recv_until(|v| v["event"] == "join");
        }
    }
    let (senders, receivers) = socks.split_at_mut(2);
    for i in 0..500 {
        senders[0].say(&format!("a{i}"));
        senders[1].say(&format!("b{i}"));
    }
    for r in receivers.iter_mut() {
        let (mut next_a, mut next_b) = (0, 0);
        for _ in 0..1000 {
            let v = r.recv();
            let m = v["message"].as_str().unwrap();
            let (author, n): (&str, usize) = (v["author"].as_str().unwrap(), m[1..].parse().unwrap());
            match author {
                "s0" => {
                    assert_eq!(n, next_a);
                    next_a += 1;
                }
                "s1" => {
                    assert_eq!(n, next_b);
                    next_b += 1;
                }
                _ => panic!("unexpected author {author}"),
            }
        }
        assert_eq!((next_a, next_b), (500, 500));
    }
    // Senders got 500 acks each, all true.
    for s in senders.iter_mut() {
        let mut acks = 0;
        while acks < 500 {
            let v = s.recv();
            if v.get("status").is_some() {
                assert_eq!(v, json!({"status": true}));
                acks += 1;
            }
        }
    }
}

#[test]
fn two_hundred_clients_receive_one_broadcast() {
    let srv = Server::start();
    let mut clients: Vec<Ws> = (0..200).map(|i| srv.ws(&srv.user(&format!("u{i}")))).collect();
    let (first, rest) = clients.split_first_mut().unwrap();
    first.say("to everyone");
    for c in rest.iter_mut() {
        let v = c.recv_until(|v| v.get("message").is_some());
        assert_eq!(v, json!({"message": "to everyone", "author": "u0"}));
    }
    first.recv_until(|v| v == &json!({"status": true}));
}

#[test]
fn graceful_shutdown_sends_1001_and_exits_0() {
    let mut srv = Server::start();
    let mut a = srv.ws(&srv.user("alice"));
    let mut b = srv.ws(&srv.user("bob"));
    a.recv_until(|v| v["event"] == "join");
    a.say("last words");
    assert_eq!(a.recv(), json!({"status": true}));
    let status = srv.signal(libc::SIGINT);
    assert!(status.success(), "exit status {status:?}");
    // The acknowledged message reached Bob before the close.
    assert_eq!(b.recv(), json!({"message": "last words", "author": "alice"}));
    assert_eq!(b.close_code(), Some(1001));
    assert_eq!(a.close_code(), Some(1001));
}

#[test]
fn sigterm_also_exits_0() {
    let mut srv = Server::start();
    let status = srv.signal(libc::SIGTERM);
    assert!(status.success());
}

#[test]
fn a_client_that_never_reads_is_dropped_without_slowing_others() {
    let srv = Server::start();
    let fast = srv.user("fast");
    let slow = srv.user("slow");
    let talker = srv.user("talker");
    let mut f = srv.ws(&fast);
    // The slow client upgrades by hand and then never reads a byte.
    let mut s = srv.connect();
    // A tiny receive buffer, so the server's queue for it fills sooner.
    let small: libc::c_int = 4096;
    // SAFETY: setsockopt on a socket we own, with a correctly sized int.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &small as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: t\r\nCookie: {slow}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut t = srv.ws(&talker);
    f.recv_until(|v| v == &json!({"event": "join", "username": "talker"}));
    // Up to ~25 MB of broadcasts: far more than the slow client's cap plus what the
    // kernel buffers on both ends of its socket.
    let text = "é".repeat(300);
    let mut slow_left = false;
    for i in 0..40_000 {
        t.say(&text);
        t.recv_until(|v| v.get("status").is_some());
        let v = f.recv_until(|v| v.get("message").is_some() || v.get("event").is_some());
        if v == json!({"event": "leave", "username": "slow"}) {
            slow_left = true;
            break;
        }
        assert_eq!(v["author"], "talker", "message {i}");
    }
    assert!(slow_left, "the slow client was never dropped");
    // Dropping it released every broadcast it owed: the log keeps nothing for it.
    let metrics = srv.get("/metrics", None).text();
    let backlog = metrics.lines().find_map(|l| l.strip_prefix("skiff_broadcast_backlog_bytes "));
    assert_eq!(backlog, Some("0"), "{metrics}");
}
