//! The chat core driven directly, with a fake clock: no sockets, no sleeping.

use super::*;

fn cfg(ttl: u64) -> ChatConfig {
    ChatConfig {
        session_ttl: Duration::from_secs(ttl),
        max_sessions_per_user: 4,
        max_sessions: 100,
        message_rate: Some(RateLimit { per_second: 2, burst: 2 }),
        history: 10,
    }
}

/// The payload of one whole server text frame; panics on anything else.
fn payload(frame: &[u8]) -> &str {
    let f = frame::decode_server(frame).expect("a server frame").expect("a whole frame");
    assert_eq!((f.fin, f.opcode, f.consumed), (true, frame::TEXT, frame.len()), "one final text frame");
    std::str::from_utf8(&frame[f.payload]).unwrap()
}

fn json(frame: &[u8]) -> serde_json::Value {
    serde_json::from_str(payload(frame)).unwrap()
}

/// Logs `user` in and joins on connection `conn`.
fn join(chat: &mut Chat, user: &str, conn: ConnId, now: Instant, fx: &mut Effects) -> SessionId {
    let id = chat.login(user, now, fx).unwrap();
    let k = chat.authenticate(&id, now).unwrap();
    chat.join(conn, k, true, false, now, fx).unwrap();
    id
}

#[test]
fn ack_constants_are_well_formed_frames() {
    for (ack, code) in [
        (ACK_OK, None),
        (ACK_TOO_LONG, Some("message_too_long")),
        (ACK_EMPTY, Some("message_empty")),
        (ACK_INVALID, Some("invalid_message")),
        (ACK_RATE_LIMITED, Some("rate_limited")),
    ] {
        // `json` decodes the frame and checks that its length field covers it exactly.
        let v = json(ack);
        assert_eq!(v["status"], code.is_none());
        if let Some(code) = code {
            assert_eq!(v["code"], code);
        }
    }
}

#[test]
fn join_is_broadcast_to_the_others_and_online_keeps_connect_order() {
    let t0 = Instant::now();
    let mut chat = Chat::new(cfg(60));
    let mut fx = vec![];
    join(&mut chat, "bob", 7, t0, &mut fx);
    join(&mut chat, "Amy", 3, t0, &mut fx);
    assert_eq!(chat.online().collect::<Vec<_>>(), ["bob", "Amy"]);
    match &fx[1] {
        Effect::Broadcast { except, frame } => {
            assert_eq!(*except, Some(3));
            assert_eq!(json(frame), serde_json::json!({"event": "join", "username": "Amy"}));
        }
        other => panic!("expected a broadcast, got {other:?}"),
    }
    assert!(chat.is_online("AMY"));
    assert_eq!(chat.members(), &[7, 3]);
}

#[test]
fn a_second_socket_for_the_same_user_is_refused() {
    let t0 = Instant::now();
    let mut chat = Chat::new(cfg(60));
    let mut fx = vec![];
    join(&mut chat, "bob", 1, t0, &mut fx);
    let id = chat.login("bob", t0, &mut fx).unwrap();
    let k = chat.authenticate(&id, t0).unwrap();
    assert_eq!(chat.can_join(k), Err(JoinError::AlreadyConnected));
    assert_eq!(chat.join(2, k, true, false, t0, &mut fx), Err(JoinError::AlreadyConnected));
}

#[test]
fn messages_are_acked_and_broadcast_once_encoded() {
    let t0 = Instant::now();
    let mut chat = Chat::new(cfg(60));
    let mut fx = vec![];
    join(&mut chat, "bob", 1, t0, &mut fx);
    join(&mut chat, "amy", 2, t0, &mut fx);
    fx.clear();
    chat.on_text(1, r#"{"message": "hi \"there\" <b>"}"#, t0, &mut fx);
    assert_eq!(fx.len(), 2);
    match &fx[0] {
        Effect::Message { except: Some(1), v1, v2 } => {
            assert_eq!(json(v1), serde_json::json!({"message": "hi \"there\" <b>", "author": "bob"}));
            let v2 = json(v2);
            assert_eq!(
                (v2["id"].as_u64(), v2["message"].as_str(), v2["author"].as_str()),
                (Some(1), Some("hi \"there\" <b>"), Some("bob"))
            );
            assert!(v2["ts"].is_i64());
        }
        other => panic!("{other:?}"),
    }
    match &fx[1] {
        Effect::Send { to: 1, frame } => assert_eq!(frame.as_slice(), ACK_OK),
        other => panic!("{other:?}"),
    }
}

fn ack_of(chat: &mut Chat, text: &str, now: Instant) -> &'static [u8] {
    let mut fx = vec![];
    chat.on_text(1, text, now, &mut fx);
    match fx.last() {
        Some(Effect::Send { frame: Chunk::Static(s), .. }) => s,
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_messages_get_the_documented_error_acks() {
    let t0 = Instant::now();
    let mut chat = Chat::new(ChatConfig { message_rate: None, ..cfg(60) });
    join(&mut chat, "bob", 1, t0, &mut vec![]);
    let long: String = "é".repeat(301);
    let ok300: String = "😀".repeat(300);
    let cases: &[(&str, &[u8])] = &[
        (r#"{"message": ""}"#, ACK_EMPTY),
        (&format!(r#"{{"message": "{long}"}}"#), ACK_TOO_LONG),
        (&format!(r#"{{"message": "{ok300}"}}"#), ACK_OK),
        (r#"{"message": "x", "extra": 1}"#, ACK_INVALID),
        (r#"{"message": 5}"#, ACK_INVALID),
        (r#"{"msg": "x"}"#, ACK_INVALID),
        (r#"["x"]"#, ACK_INVALID),
        (r#"{"message": "a", "message": "b"}"#, ACK_INVALID),
        ("not json", ACK_INVALID),
        ("", ACK_INVALID),
    ];
    for (text, want) in cases {
        assert_eq!(ack_of(&mut chat, text, t0), *want, "for {text}");
    }
    assert!(chat.is_online("bob"), "errors keep the connection");
}

#[test]
fn message_rate_limit_answers_rate_limited_and_refills() {
    let t0 = Instant::now();
    let mut chat = Chat::new(cfg(60));
    join(&mut chat, "bob", 1, t0, &mut vec![]);
    let m = r#"{"message": "x"}"#;
    assert_eq!(ack_of(&mut chat, m, t0), ACK_OK);
    assert_eq!(ack_of(&mut chat, m, t0), ACK_OK);
    assert_eq!(ack_of(&mut chat, m, t0), ACK_RATE_LIMITED);
    assert_eq!(ack_of(&mut chat, m, t0 + Duration::from_millis(500)), ACK_OK);
}

#[test]
fn unmetered_sockets_are_not_limited() {
    let t0 = Instant::now();
    let mut chat = Chat::new(cfg(60));
    let id = chat.login("bob", t0, &mut vec![]).unwrap();
    let k = chat.authenticate(&id, t0).unwrap();
    chat.join(1, k, false, false, t0, &mut vec![]).unwrap();
    for _ in 0..50 {
        assert_eq!(ack_of(&mut chat, r#"{"message": "x"}"#, t0), ACK_OK);
    }
}

#[test]
fn logout_closes_the_socket_1000_and_sends_leave() {
    let t0 = Instant::now();
    let mut chat = Chat::new(cfg(60));
    let mut fx = vec![];
    let id = join(&mut chat, "bob", 1, t0, &mut fx);
    join(&mut chat, "amy", 2, t0, &mut fx);
    fx.clear();
    chat.logout(&id, t0, &mut fx);
    assert!(matches!(&fx[0], Effect::Broadcast { except: None, frame }
        if json(frame) == serde_json::json!({"event": "leave", "username": "bob"})));
    assert!(matches!(fx[1], Effect::Close { conn: 1, code: close::NORMAL }));
    assert!(chat.authenticate(&id, t0).is_none());
    assert_eq!(chat.online().collect::<Vec<_>>(), ["amy"]);
    // The reactor reports the close later; no second leave.
    fx.clear();
    chat.leave(1, &mut fx);
    assert!(fx.is_empty());
}

#[test]
fn expiry_closes_the_socket_1008_without_sleeping() {
    let t0 = Instant::now();
    let mut chat = Chat::new(cfg(3600));
    let mut fx = vec![];
    join(&mut chat, "bob", 1, t0, &mut fx);
    let amy = join(&mut chat, "amy", 2, t0, &mut fx);
    // Amy's socket keeps talking, so her session slides; Bob is silent.
    chat.on_activity(2, t0 + Duration::from_secs(1800));
    fx.clear();
    let deadline = chat.next_deadline().unwrap();
    assert_eq!(deadline, t0 + Duration::from_secs(3600));
    chat.on_timeout(deadline, &mut fx);
    assert!(fx.iter().any(|e| matches!(e, Effect::Close { conn: 1, code: close::POLICY })));
    assert!(!fx.iter().any(|e| matches!(e, Effect::Close { conn: 2, .. })));
    assert_eq!(chat.online().collect::<Vec<_>>(), ["amy"]);
    assert!(chat.authenticate(&amy, deadline).is_some());
}

#[test]
fn eviction_past_the_per_user_cap_closes_that_sessions_socket() {
    let t0 = Instant::now();
    let mut chat = Chat::new(cfg(60));
    let mut fx = vec![];
    join(&mut chat, "bob", 1, t0, &mut fx);
    fx.clear();
    for _ in 0..4 {
        chat.login("bob", t0, &mut fx).unwrap();
    }
    assert!(fx.iter().any(|e| matches!(e, Effect::Close { conn: 1, code: close::POLICY })));
    assert_eq!(chat.session_count(), 4);
}

#[test]
fn text_from_a_non_member_is_ignored() {
    let mut chat = Chat::new(cfg(60));
    let mut fx = vec![];
    chat.on_text(9, r#"{"message": "x"}"#, Instant::now(), &mut fx);
    assert!(fx.is_empty());
}
