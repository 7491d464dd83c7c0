//! The chat core driven directly, with a fake clock: no sockets, no sleeping.

use super::*;
use crate::ws::close;

fn msg(id: u64, ts: i64, author: &str, text: &str) -> Message {
    Message { id, ts, author: author.into(), text: text.into() }
}

fn cfg(ttl: u64) -> ChatConfig {
    ChatConfig {
        session_ttl: Duration::from_secs(ttl),
        max_sessions_per_user: 4,
        max_sessions: 100,
        message_rate: Some(RateLimit { per_second: 2, burst: 2 }),
        history: 10,
        max_devices: 5,
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
        (ACK_UNAVAILABLE, Some("unavailable")),
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
    assert_eq!(chat.can_join(k, false), Err(JoinError::AlreadyConnected));
    assert_eq!(chat.can_join(k, true), Err(JoinError::AlreadyConnected), "a plain /ws socket blocks v2 ones");
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
    assert_eq!(fx.len(), 1, "broadcast at once; the ack waits for the commit");
    assert_eq!(chat.take_new_messages().len(), 1, "handed on to be written");
    chat.on_committed(1, true, &mut fx);
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

/// The ack of one message, once everything written so far is committed.
fn ack_of(chat: &mut Chat, text: &str, now: Instant) -> &'static [u8] {
    let mut fx = vec![];
    chat.on_text(1, text, now, &mut fx);
    let through = chat.history().last_id();
    chat.on_committed(through, true, &mut fx);
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
    assert!(matches!(fx[1], Effect::Close { conn: 1, code: close::NORMAL, ref reason } if &**reason == "logged out"));
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
    assert!(fx.iter().any(
        |e| matches!(e, Effect::Close { conn: 1, code: close::POLICY, reason } if &**reason == "session expired")
    ));
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
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Close { conn: 1, code: close::POLICY, reason } if &**reason == "replaced")));
    assert_eq!(chat.session_count(), 4);
}

#[test]
fn text_from_a_non_member_is_ignored() {
    let mut chat = Chat::new(cfg(60));
    let mut fx = vec![];
    chat.on_text(9, r#"{"message": "x"}"#, Instant::now(), &mut fx);
    assert!(fx.is_empty());
}

mod replicated {
    //! Cluster mode: the core as a replica of the room Redis orders.
    use super::*;
    use crate::chat::replicated::Snapshot;

    fn replica() -> Chat {
        let mut chat = Chat::new(cfg(60));
        chat.set_replicated();
        chat
    }

    /// A member on `conn`, joined the way a node does it: the join event first.
    fn member(chat: &mut Chat, user: &str, conn: ConnId, v2: bool, now: Instant, fx: &mut Effects) -> SessionId {
        let id = chat.login(user, now, fx).unwrap();
        let k = chat.authenticate(&id, now).unwrap();
        chat.apply_join(user, fx);
        chat.join(conn, k, false, v2, now, fx).unwrap();
        id
    }

    #[test]
    fn a_member_s_message_is_published_and_delivered_only_when_it_comes_back() {
        let t0 = Instant::now();
        let (mut chat, mut fx) = (replica(), vec![]);
        member(&mut chat, "al", 1, false, t0, &mut fx);
        member(&mut chat, "bo", 2, true, t0, &mut fx);
        fx.clear();
        chat.on_text(1, r#"{"message":"hi"}"#, t0, &mut fx);
        assert!(
            matches!(&fx[..], [Effect::Publish { conn: 1, author, message }] if &**author == "al" && &**message == "hi")
        );
        assert_eq!(chat.history().last_id(), 0, "nothing delivered before the channel says so");
        fx.clear();
        chat.apply_message(msg(41, 5, "al", "hi"), Some(1), &mut fx);
        match &fx[..] {
            [Effect::Message { except: Some(1), v1, v2 }, Effect::Send { to: 1, frame: Chunk::Static(ack) }] => {
                assert_eq!(json(v1), serde_json::json!({"message": "hi", "author": "al"}));
                assert_eq!(json(v2), serde_json::json!({"id": 41, "ts": 5, "message": "hi", "author": "al"}));
                assert_eq!(*ack, ACK_OK);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(chat.history().last_id(), 41);
        // A v2 sender's ack carries the id Redis gave.
        fx.clear();
        chat.apply_message(msg(42, 6, "bo", "yo"), Some(2), &mut fx);
        match &fx[1] {
            Effect::Send { to: 2, frame: Chunk::Shared(f) } => {
                assert_eq!(json(f), serde_json::json!({"status": true, "id": 42}))
            }
            other => panic!("{other:?}"),
        }
        // Invalid messages are refused here, never published.
        fx.clear();
        chat.on_text(1, r#"{"message":""}"#, t0, &mut fx);
        assert!(matches!(&fx[..], [Effect::Send { to: 1, frame: Chunk::Static(ACK_EMPTY) }]));
    }

    /// Both engines behind the broker boundary make the same frames of the same
    /// message: one node ordering it itself, and a cluster node applying it off the
    /// channel.
    #[test]
    fn both_engines_frame_a_message_the_same_way() {
        let t0 = Instant::now();
        let frames = |chat: &mut Chat, fx: &mut Effects| match fx.iter().find(|e| matches!(e, Effect::Message { .. })) {
            Some(Effect::Message { except, v1, v2 }) => (*except, json(v1), json(v2), chat.history().last_id()),
            other => panic!("{other:?}"),
        };
        let (mut memory, mut fx) = (Chat::new(cfg(60)), vec![]);
        memory.set_reserved_ids(100);
        memory.set_wall_clock(t0, 7);
        join(&mut memory, "al", 1, t0, &mut fx);
        join(&mut memory, "bo", 2, t0, &mut fx);
        fx.clear();
        memory.on_text(1, r#"{"message":"same"}"#, t0, &mut fx);
        let alone = frames(&mut memory, &mut fx);
        assert_eq!(memory.take_new_messages(), [msg(1, 7, "al", "same")], "the store gets the same message");

        let (mut redis, mut fx) = (replica(), vec![]);
        member(&mut redis, "al", 1, false, t0, &mut fx);
        member(&mut redis, "bo", 2, false, t0, &mut fx);
        fx.clear();
        redis.apply_message(msg(1, 7, "al", "same"), Some(1), &mut fx);
        assert_eq!(frames(&mut redis, &mut fx), alone);
        assert!(redis.take_new_messages().is_empty(), "Redis keeps a cluster's history, not this core");
    }

    /// Found by the cluster fuzz world: a refusal that needs nothing (an empty
    /// message) went out at once, ahead of the ack of the message sent before it,
    /// which comes back with its event: a v1 client matches acks by position.
    #[test]
    fn a_replicas_acks_keep_each_sockets_order() {
        let t0 = Instant::now();
        let (mut chat, mut fx) = (replica(), vec![]);
        member(&mut chat, "al", 1, false, t0, &mut fx);
        member(&mut chat, "bo", 2, false, t0, &mut fx);
        fx.clear();
        let sent = |fx: &mut Effects| -> Vec<(ConnId, &'static [u8])> {
            let out = fx
                .iter()
                .filter_map(|e| match e {
                    Effect::Send { to, frame: Chunk::Static(f) } => Some((*to, *f)),
                    _ => None,
                })
                .collect();
            fx.clear();
            out
        };
        for text in [r#"{"message":"first"}"#, r#"{"message":""}"#, r#"{"message":"second"}"#, "x"] {
            chat.on_text(1, text, t0, &mut fx);
        }
        chat.on_text(2, r#"{"message":""}"#, t0, &mut fx);
        assert_eq!(sent(&mut fx), [(2, ACK_EMPTY)], "al's refusals wait; bo has nothing out");
        assert_eq!(chat.held_ack_bytes(1), 4 * acks::HELD_ACK_BYTES, "counted for the memory budget");
        chat.apply_message(msg(1, 1, "al", "first"), Some(1), &mut fx);
        assert_eq!(sent(&mut fx), [(1, ACK_OK), (1, ACK_EMPTY)]);
        chat.refused(1, &mut fx);
        assert_eq!(sent(&mut fx), [(1, ACK_UNAVAILABLE), (1, ACK_INVALID)]);
        assert_eq!(chat.held_ack_bytes(1), 0);
        chat.on_text(1, r#"{"message":""}"#, t0, &mut fx);
        assert_eq!(sent(&mut fx), [(1, ACK_EMPTY)], "nothing out: at once");
    }

    /// A sender whose message's event was lost with the links gets its ack from the
    /// snapshot: its own message is not echoed to it, the others get it; one the
    /// snapshot does not hold is acked if the history is the same, refused if not.
    #[test]
    fn a_snapshot_acks_what_redis_took_from_this_node() {
        let t0 = Instant::now();
        let (mut chat, mut fx) = (replica(), vec![]);
        member(&mut chat, "al", 1, true, t0, &mut fx);
        member(&mut chat, "bo", 2, false, t0, &mut fx);
        chat.apply_message(msg(5, 1, "bo", "before"), None, &mut fx);
        let epoch = chat.history().epoch().to_owned();
        fx.clear();
        let snap = |epoch: &str| Snapshot {
            epoch: epoch.into(),
            last_id: 7,
            online: vec!["al".into(), "bo".into()],
            messages: vec![msg(5, 1, "bo", "before"), msg(6, 2, "al", "mine")],
        };
        chat.apply_snapshot(snap(&epoch), &[(6, 1), (7, 2)], &mut fx);
        let acks: Vec<(ConnId, serde_json::Value)> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Send { to, frame } => Some((*to, json(frame.as_slice()))),
                _ => None,
            })
            .collect();
        assert_eq!(acks, [(1, serde_json::json!({"status": true, "id": 6})), (2, serde_json::json!({"status": true}))]);
        assert!(matches!(&fx[0], Effect::Message { except: Some(1), .. }), "al's message to the others only");
        // In another history, what is not in the snapshot may be gone.
        fx.clear();
        let mut other = snap("e-new");
        other.messages.clear();
        chat.apply_snapshot(other, &[(7, 2)], &mut fx);
        assert!(fx
            .iter()
            .any(|e| matches!(e, Effect::Send { to: 2, frame: Chunk::Static(f) } if *f == ACK_UNAVAILABLE)));
    }

    /// A big snapshot comes a slice a turn: cut anywhere, it does what it does whole,
    /// the entries this node held reused and those Redis dropped gone.
    #[test]
    fn a_snapshot_in_slices_is_the_snapshot_whole() {
        let t0 = Instant::now();
        let run = |slices: usize| {
            let (mut chat, mut fx) = (replica(), vec![]);
            member(&mut chat, "al", 1, true, t0, &mut fx);
            member(&mut chat, "bo", 2, false, t0, &mut fx);
            for id in 1..=4 {
                chat.apply_message(msg(id, id as i64, "bo", &format!("m{id}")), None, &mut fx);
            }
            let epoch = chat.history().epoch().to_owned();
            fx.clear();
            // Message 2 was deleted meanwhile; 5..=7 came while away, 7 is al's.
            let messages: Vec<Message> =
                [1, 3, 4, 5, 6, 7].iter().map(|&id| msg(id, id as i64, "bo", &format!("m{id}"))).collect();
            let mut parts = messages.chunks(messages.len().div_ceil(slices)).map(<[Message]>::to_vec);
            let online = vec!["al".into(), "bo".into()];
            let snap = Snapshot { epoch, last_id: 7, online, messages: parts.next().unwrap() };
            chat.begin_snapshot(snap, &[(7, 1)], &mut fx);
            for part in parts {
                chat.continue_snapshot(part, &mut fx);
            }
            chat.finish_snapshot(&mut fx);
            let mut ids: Vec<u64> = chat.history().page(None, 100).map(|e| e.id).collect();
            ids.sort();
            (format!("{fx:?}"), ids)
        };
        let whole = run(1);
        assert_eq!(whole.1, [1, 3, 4, 5, 6, 7]);
        assert_eq!(run(2), whole);
        assert_eq!(run(6), whole);
    }

    #[test]
    fn joins_and_leaves_come_from_the_channel_and_online_is_cluster_wide() {
        let t0 = Instant::now();
        let (mut chat, mut fx) = (replica(), vec![]);
        chat.apply_join("far", &mut fx);
        member(&mut chat, "al", 1, false, t0, &mut fx);
        assert_eq!(chat.online().collect::<Vec<_>>(), ["far", "al"]);
        assert!(chat.is_online("FAR"));
        assert_eq!(chat.online_count(), 2);
        fx.clear();
        chat.apply_join("far", &mut fx);
        assert!(fx.is_empty(), "a repeated join is not announced twice");
        chat.apply_leave("far", &mut fx);
        assert!(matches!(&fx[..], [Effect::Broadcast { except: None, frame }] if json(frame)["event"] == "leave"));
        // The local socket closing is told to the cluster, not broadcast here.
        fx.clear();
        chat.leave(1, &mut fx);
        assert!(matches!(&fx[..], [Effect::Left { user, .. }] if &**user == "al"));
        assert!(chat.is_online("al"), "online until the leave comes back");
        chat.apply_leave("al", &mut fx);
        assert!(!chat.is_online("al"));
    }

    #[test]
    fn a_session_ended_elsewhere_closes_its_socket_here() {
        let t0 = Instant::now();
        let (mut chat, mut fx) = (replica(), vec![]);
        let id = member(&mut chat, "al", 1, false, t0, &mut fx);
        let id2 = member(&mut chat, "bo", 2, false, t0, &mut fx);
        fx.clear();
        chat.apply_session_end(&session::id_hash(&id), close::NORMAL, &mut fx);
        assert!(matches!(&fx[..], [Effect::Left { .. }, Effect::Close { conn: 1, code: close::NORMAL, .. }]), "{fx:?}");
        assert!(chat.authenticate(&id, t0).is_none());
        fx.clear();
        chat.apply_session_end(&session::id_hash(&id2), close::POLICY, &mut fx);
        assert!(matches!(&fx[..], [Effect::Left { .. }, Effect::Close { conn: 2, code: close::POLICY, .. }]));
        fx.clear();
        chat.apply_session_end(&[9; 32], close::NORMAL, &mut fx);
        assert!(fx.is_empty(), "an unknown session ends nothing here");
    }

    #[test]
    fn an_adopted_session_ends_when_redis_would_end_it() {
        let t0 = Instant::now();
        let mut chat = replica();
        let (id, hash) = chat.new_session_id();
        assert!(!chat.knows_session(&id));
        assert!(chat.adopt_session(hash, "al", Duration::from_secs(20), t0));
        assert!(chat.knows_session(&id));
        // Read-only checks here; authenticate would count as activity.
        let mut fx = vec![];
        chat.on_timeout(t0 + Duration::from_secs(19), &mut fx);
        assert!(chat.knows_session(&id));
        chat.on_timeout(t0 + Duration::from_secs(21), &mut fx);
        assert!(!chat.knows_session(&id), "gone 20 s after adoption without activity");
        // A login with a pre-drawn id takes exactly that id.
        let drawn = chat.new_session_id();
        let got = chat.login_as("al", drawn, t0).unwrap();
        assert_eq!(got, drawn.0);
        assert!(chat.authenticate(&got, t0).is_some());
    }

    #[test]
    fn after_a_sync_only_sessions_with_a_socket_here_stay_cached() {
        let t0 = Instant::now();
        let (mut chat, mut fx) = (replica(), vec![]);
        let with_socket = member(&mut chat, "al", 1, false, t0, &mut fx);
        let idle = chat.login("al", t0, &mut fx).unwrap();
        let (_, hash) = chat.new_session_id();
        assert!(chat.adopt_session(hash, "bo", Duration::from_secs(30), t0));
        fx.clear();
        let kept = chat.forget_sessions_without_socket();
        assert_eq!(kept, [session::id_hash(&with_socket)], "only the member's session is asked about");
        assert!(chat.knows_session(&with_socket));
        assert!(!chat.knows_session(&idle), "fetched from Redis again when next used");
        assert!(fx.is_empty(), "forgetting a cached session ends nothing");
        assert!(chat.members_have_sessions());
    }

    #[test]
    fn a_snapshot_tells_local_members_what_they_missed() {
        let t0 = Instant::now();
        let (mut chat, mut fx) = (replica(), vec![]);
        chat.apply_join("gone", &mut fx);
        member(&mut chat, "al", 1, false, t0, &mut fx);
        chat.apply_message(msg(1, 1, "al", "one"), None, &mut fx);
        let epoch = chat.history().epoch().to_owned();
        fx.clear();
        let messages = vec![msg(1, 1, "al", "one"), msg(2, 2, "new", "two")];
        let online = vec!["al".into(), "new".into()];
        chat.apply_snapshot(Snapshot { epoch, last_id: 2, online, messages }, &[], &mut fx);
        let frames: Vec<serde_json::Value> = fx
            .iter()
            .map(|e| match e {
                Effect::Broadcast { frame, .. } => json(frame),
                Effect::Message { v1, .. } => json(v1),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            frames,
            [
                serde_json::json!({"event": "leave", "username": "gone"}),
                serde_json::json!({"event": "join", "username": "new"}),
                serde_json::json!({"message": "two", "author": "new"}),
            ]
        );
        assert_eq!(chat.online().collect::<Vec<_>>(), ["al", "new"]);
        assert_eq!(chat.history().last_id(), 2);
        assert_eq!(chat.history().len(), 2);
    }
}

#[test]
fn acks_wait_for_the_commit_keep_each_sockets_order_and_a_failed_commit_says_unavailable() {
    let t0 = Instant::now();
    let mut chat = Chat::new(ChatConfig { message_rate: None, ..cfg(60) });
    let mut fx = vec![];
    join(&mut chat, "bob", 1, t0, &mut fx);
    join(&mut chat, "amy", 2, t0, &mut fx);
    fx.clear();
    let acks = |fx: &mut Effects| -> Vec<(ConnId, Vec<u8>)> {
        fx.drain(..)
            .filter_map(|e| match e {
                Effect::Send { to, frame } => Some((to, frame.as_slice().to_vec())),
                _ => None,
            })
            .collect()
    };
    chat.on_text(1, r#"{"message": "one"}"#, t0, &mut fx);
    chat.on_text(1, r#"{"message": ""}"#, t0, &mut fx);
    chat.on_text(2, r#"{"message": ""}"#, t0, &mut fx);
    chat.on_text(1, r#"{"message": "two"}"#, t0, &mut fx);
    // Amy has nothing held: her refusal goes at once; Bob's waits behind "one".
    assert_eq!(acks(&mut fx), [(2, ACK_EMPTY.to_vec())]);
    // What Bob's held acks cost counts against the memory budget; Amy holds none.
    assert_eq!(chat.held_ack_bytes(1), 3 * super::acks::HELD_ACK_BYTES);
    assert_eq!(chat.held_ack_bytes(2), 0);
    chat.on_committed(1, true, &mut fx);
    assert_eq!(acks(&mut fx), [(1, ACK_OK.to_vec()), (1, ACK_EMPTY.to_vec())]);
    chat.on_committed(2, false, &mut fx);
    assert_eq!(acks(&mut fx), [(1, ACK_UNAVAILABLE.to_vec())], "not stored: no promise");
    assert_eq!((chat.held_acks(), chat.held_ack_bytes(1)), (0, 0));
    // A sender that leaves takes its held acks with it.
    chat.on_text(1, r#"{"message": "three"}"#, t0, &mut fx);
    chat.leave(1, &mut fx);
    fx.clear();
    chat.on_committed(3, true, &mut fx);
    assert!(acks(&mut fx).is_empty());
}

#[test]
fn with_history_off_acks_go_at_once_and_nothing_is_written() {
    let t0 = Instant::now();
    let mut chat = Chat::new(ChatConfig { history: 0, ..cfg(60) });
    let mut fx = vec![];
    join(&mut chat, "bob", 1, t0, &mut fx);
    fx.clear();
    chat.on_text(1, r#"{"message": "hi"}"#, t0, &mut fx);
    assert!(matches!(fx.last(), Some(Effect::Send { to: 1, frame }) if frame.as_slice() == ACK_OK));
    assert!(chat.take_new_messages().is_empty());
}

#[test]
fn without_a_durable_reservation_a_message_goes_nowhere() {
    let t0 = Instant::now();
    let mut chat = Chat::new(ChatConfig { message_rate: None, ..cfg(60) });
    chat.restore_history("E", 0, []);
    chat.set_reserved_ids(1);
    let mut fx = vec![];
    join(&mut chat, "bob", 1, t0, &mut fx);
    join(&mut chat, "amy", 2, t0, &mut fx);
    assert_eq!(ack_of(&mut chat, r#"{"message": "a"}"#, t0), ACK_OK);
    let asked = chat.wants_reservation().expect("ids run low");
    assert_eq!(ack_of(&mut chat, r#"{"message": "b"}"#, t0), ACK_UNAVAILABLE, "id 2 is not durable");
    assert_eq!(chat.history().last_id(), 1);
    chat.on_reserved(asked, true);
    assert_eq!(ack_of(&mut chat, r#"{"message": "c"}"#, t0), ACK_OK);
    assert_eq!(chat.history().last_id(), 2);
}
