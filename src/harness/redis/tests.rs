use super::*;
use crate::cluster::command;
use crate::cluster::event::RoomEvent;

/// Everything `link` has to read, as values.
fn replies(r: &mut FakeRedis, link: u64) -> Vec<Value> {
    let Read::Bytes(mut bytes) = r.read(link, usize::MAX) else { return vec![] };
    let mut out = Vec::new();
    while let Some((v, n)) = resp::parse(&bytes).expect("the stand-in writes RESP") {
        out.push(v);
        bytes.drain(..n);
    }
    assert!(bytes.is_empty(), "a reply cut short");
    out
}

fn send<A: AsRef<[u8]>>(r: &mut FakeRedis, link: u64, cmd: &[A]) -> Vec<Value> {
    let mut bytes = Vec::new();
    resp::encode(&mut bytes, cmd);
    assert!(r.write(link, &bytes));
    replies(r, link)
}

fn events(r: &mut FakeRedis, sub: u64) -> Vec<RoomEvent> {
    replies(r, sub)
        .iter()
        .map(|v| {
            let items = v.as_array().expect("a channel message");
            assert_eq!(items[0].as_str(), Some("message"));
            RoomEvent::parse(items[2].as_bytes().unwrap()).expect("a room event")
        })
        .collect()
}

/// A node's two links, as the cluster core opens them: library loaded, subscribed.
fn node(r: &mut FakeRedis) -> (u64, u64) {
    let (cmd, sub) = (r.open().unwrap(), r.open().unwrap());
    assert_eq!(send(r, cmd, &command::auth("pw")), [Value::Simple("OK".into())]);
    assert_eq!(send(r, cmd, &command::load_library()), [bulk("skiff")]);
    let confirm = send(r, sub, &command::subscribe());
    assert_eq!(confirm, [array(vec![bulk("subscribe"), bulk("skiff:room"), Value::Int(1)])]);
    (cmd, sub)
}

#[test]
fn register_login_and_find_a_user() {
    let mut r = FakeRedis::new();
    r.set_clock(1_000);
    let (cmd, _) = node(&mut r);
    let key = [7u8; 32];
    assert_eq!(send(&mut r, cmd, &command::register("Ann", &key)), [Value::Int(1)]);
    assert_eq!(send(&mut r, cmd, &command::register("ANN", &[8; 32])), [Value::Int(0)], "taken, ignoring case");
    assert_eq!(send(&mut r, cmd, &command::find_user("aNN")), [bulk("Ann")]);
    assert_eq!(send(&mut r, cmd, &command::login(&[9; 32], &[1; 32], 60_000, 4)), [Value::Bulk(None)]);
    assert_eq!(send(&mut r, cmd, &command::login(&key, &[1; 32], 60_000, 4)), [bulk("Ann")]);
    assert_eq!(send(&mut r, cmd, &command::session(&[1; 32])), [array(vec![bulk("Ann"), Value::Int(60_000)])]);
    r.set_clock(31_000);
    assert_eq!(send(&mut r, cmd, &command::session(&[1; 32])), [array(vec![bulk("Ann"), Value::Int(30_000)])]);
    assert_eq!(send(&mut r, cmd, &command::renew(&[1; 32], 60_000)), [Value::Int(1)]);
    r.set_clock(90_000);
    assert_eq!(send(&mut r, cmd, &command::session(&[1; 32])), [array(vec![bulk("Ann"), Value::Int(1_000)])]);
    r.set_clock(91_000);
    assert_eq!(send(&mut r, cmd, &command::session(&[1; 32])), [array(vec![bulk("Ann"), Value::Int(0)])]);
    r.set_clock(91_001);
    assert_eq!(send(&mut r, cmd, &command::session(&[1; 32])), [Value::Bulk(None)], "expired");
}

#[test]
fn sessions_past_the_cap_end_oldest_first_with_an_event() {
    let mut r = FakeRedis::new();
    let (cmd, sub) = node(&mut r);
    send(&mut r, cmd, &command::register("ann", &[7; 32]));
    for (i, t) in [(1u8, 10), (2, 20), (3, 30)] {
        r.set_clock(t);
        send(&mut r, cmd, &command::login(&[7; 32], &[i; 32], 60_000, 2));
    }
    let ended: Vec<RoomEvent> = events(&mut r, sub);
    assert_eq!(ended, [RoomEvent::SessionEnd { seq: 1, code: 1008, hash: "01".repeat(32) }]);
    assert_eq!(send(&mut r, cmd, &command::logout(&[2; 32])), [Value::Int(1)]);
    assert_eq!(send(&mut r, cmd, &command::logout(&[2; 32])), [Value::Int(0)]);
    let logout = [
        RoomEvent::SessionEnd { seq: 2, code: 1000, hash: "02".repeat(32) },
        RoomEvent::Logout { seq: 3, name: "ann".into() },
    ];
    assert_eq!(events(&mut r, sub), logout);
}

#[test]
fn joins_leaves_and_messages_reach_every_subscriber_in_seq_order() {
    let mut r = FakeRedis::new();
    r.set_clock(5_000);
    let (c1, s1) = node(&mut r);
    let (c2, s2) = node(&mut r);
    // Not registered here: no `created` to say.
    let joined = |seq| [array(vec![Value::Int(seq), Value::Bulk(None)])];
    assert_eq!(send(&mut r, c1, &command::join("Ann", "n1", "3.1", false, 5)), joined(1));
    assert_eq!(send(&mut r, c2, &command::join("ann", "n2", "4.1", false, 5)), [Value::Int(0)], "online on n1");
    assert_eq!(send(&mut r, c2, &command::join("Bob", "n2", "4.2", false, 5)), joined(2));
    assert_eq!(send(&mut r, c1, &command::message("n1", "3.1", "Ann", "hi  there", "16")), [Value::Int(1)]);
    assert_eq!(send(&mut r, c2, &command::leave("Ann", "n2")), [Value::Int(0)], "only the holder ends it");
    assert_eq!(send(&mut r, c2, &command::message("n2", "4.2", "Bob", "yo", "16")), [Value::Int(2)]);
    assert_eq!(send(&mut r, c1, &command::leave("Ann", "n1")), [Value::Int(1)]);
    let expected = [
        RoomEvent::Join { seq: 1, node: "n1".into(), token: "3.1".into(), name: "Ann".into() },
        RoomEvent::Join { seq: 2, node: "n2".into(), token: "4.2".into(), name: "Bob".into() },
        RoomEvent::Message {
            seq: 3,
            id: 1,
            ts: 5_000,
            node: "n1".into(),
            token: "3.1".into(),
            author: "Ann".into(),
            text: "hi  there".into(),
        },
        RoomEvent::Message {
            seq: 4,
            id: 2,
            ts: 5_000,
            node: "n2".into(),
            token: "4.2".into(),
            author: "Bob".into(),
            text: "yo".into(),
        },
        RoomEvent::Leave { seq: 5, node: "n1".into(), name: "Ann".into() },
    ];
    assert_eq!(events(&mut r, s1), expected);
    assert_eq!(events(&mut r, s2), expected);
}

/// As library.lua: each node's count of a user's sockets moves with its joins and
/// `skiff_devices` (never below one while it holds the user) and is published (N);
/// a join past the cap, counted over every node, is refused (-2).
#[test]
fn a_user_s_sockets_are_counted_on_every_node_and_a_join_past_the_cap_is_refused() {
    let mut r = FakeRedis::new();
    let (c1, s1) = node(&mut r);
    let (c2, _) = node(&mut r);
    let beside = [array(vec![Value::Int(-1), Value::Bulk(None)])];
    assert_eq!(send(&mut r, c1, &command::join("Ann", "n1", "3.1", true, 3)).len(), 1);
    assert_eq!(send(&mut r, c1, &command::devices("Ann", "n1", 1)), [Value::Int(2)]);
    assert_eq!(send(&mut r, c2, &command::join("Ann", "n2", "4.1", true, 3)), beside);
    assert_eq!(send(&mut r, c2, &command::join("Ann", "n2", "4.2", true, 3)), [Value::Int(-2)], "three already");
    assert_eq!(send(&mut r, c1, &command::devices("Ann", "n1", -5)), [Value::Int(2)], "n1 still holds one");
    assert_eq!(send(&mut r, c1, &command::leave("Ann", "n1")), [Value::Int(1)]);
    assert_eq!(send(&mut r, c1, &command::devices("Ann", "n1", 1)), [Value::Int(1)], "n1 holds none now");
    let n = |seq, node: &str, count| RoomEvent::Devices { seq, node: node.into(), name: "Ann".into(), count };
    let expected = [
        RoomEvent::Join { seq: 1, node: "n1".into(), token: "3.1".into(), name: "Ann".into() },
        n(2, "n1", 2),
        n(3, "n2", 1),
        n(4, "n1", 1),
        n(5, "n1", 0),
    ];
    assert_eq!(events(&mut r, s1), expected);
}

#[test]
fn a_sync_gives_the_snapshot_and_reaping_ends_a_silent_nodes_users() {
    let mut r = FakeRedis::new();
    r.set_clock(0);
    let (c1, s1) = node(&mut r);
    // Reaping names users as registered (the users hash), as the Lua does.
    send(&mut r, c1, &command::register("Ann", &[7; 32]));
    let users = [("Ann".to_owned(), "3.1".to_owned())];
    let got = send(&mut r, c1, &command::sync("n1", 6000, "e1", 2, ("", 0), &users));
    let (snap, _, seq, taken) = crate::cluster::reply::snapshot(got[0].clone()).expect("a snapshot");
    assert_eq!((seq, snap.epoch.as_str(), snap.online.as_slice()), (1, "e1", &["Ann".to_owned()][..]));
    assert!(taken.is_empty());
    for text in ["a", "b", "c"] {
        send(&mut r, c1, &command::message("n1", "3.1", "Ann", text, "2"));
    }
    let (c2, s2) = node(&mut r);
    let users = [("ann".to_owned(), "9.9".to_owned()), ("Bob".to_owned(), "9.8".to_owned())];
    let got = send(&mut r, c2, &command::sync("n2", 6000, "e2", 2, ("", 0), &users));
    let (snap, entries, seq, taken) = crate::cluster::reply::snapshot(got[0].clone()).expect("a snapshot");
    assert_eq!(snap.epoch, "e1", "the first epoch stays");
    assert_eq!(snap.online, ["Ann", "Bob"]);
    let messages: Vec<_> = entries.into_iter().rev().filter_map(crate::cluster::reply::message).collect();
    assert_eq!(messages.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["b", "c"], "the newest 2, oldest first");
    assert_eq!((seq, snap.last_id, taken), (5, 3, vec!["ann".to_owned()]));
    // n1 stops heartbeating: after its 6 s, n2's reap makes Ann leave.
    r.set_clock(6_001);
    send(&mut r, c2, &command::heartbeat("n2", 6000));
    assert_eq!(send(&mut r, c2, &command::reap()), [Value::Int(1)]);
    let last = events(&mut r, s2).pop();
    assert_eq!(last, Some(RoomEvent::Leave { seq: 6, node: "n1".into(), name: "Ann".into() }));
    assert_eq!(events(&mut r, s1).len(), 6, "n1's subscription heard everything too");
}

#[test]
fn refuses_what_redis_refuses_and_never_panics() {
    let mut r = FakeRedis::new();
    let (cmd, sub) = node(&mut r);
    assert!(matches!(&send(&mut r, sub, &["HGET", "a", "b"])[0], Value::Error(e) if e.contains("only")));
    assert!(matches!(&send(&mut r, cmd, &["NOPE"])[0], Value::Error(_)));
    assert!(matches!(&send(&mut r, cmd, &["FCALL", "skiff_join", "0", "skiff:"])[0], Value::Error(_)));
    assert!(matches!(
        &send(&mut r, cmd, &["FCALL", "skiff_users", "0", "skiff:", "", "nine", "0"])[0],
        Value::Error(_)
    ));
    assert!(matches!(&send(&mut r, cmd, &["FCALL", "skiff_join", "9"])[0], Value::Error(_)));
    // Garbage: an error, then the link is closed.
    assert!(r.write(cmd, b"?garbage\r\n"));
    assert!(matches!(&replies(&mut r, cmd)[..], [Value::Error(_)]));
    assert_eq!(r.read(cmd, 10), Read::Closed);
    assert!(!r.write(cmd, b"*1\r\n$4\r\nPING\r\n"));
    // Partial reads and a killed link.
    let l = r.open().unwrap();
    assert!(r.write(l, b"*1\r\n$4\r\nPI"));
    assert_eq!(r.read(l, 10), Read::Nothing);
    assert!(r.write(l, b"NG\r\n"));
    assert_eq!(r.read(l, 3), Read::Bytes(b"+PO".to_vec()));
    r.kill(l);
    assert_eq!(r.read(l, 10), Read::Closed);
    // Links are capped.
    while r.open().is_some() {}
    assert_eq!(r.links(), MAX_LINKS);
}
