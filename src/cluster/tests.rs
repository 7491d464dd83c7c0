//! The cluster core driven in memory: bytes a Redis would send go in, the bytes the
//! node sends are read back, and time is whatever the test says. No socket, no sleep.

use super::*;
use crate::storage::Request;

const ADDR: &str = "127.0.0.1:6379";

fn cfg(password: Option<&str>) -> ClusterConfig {
    ClusterConfig {
        url: RedisUrl {
            target: RedisTarget::Server(ADDR.parse().unwrap()),
            password: password.map(str::to_owned),
            db: 0,
        },
        session_ttl: Duration::from_secs(3600),
        max_sessions_per_user: 8,
        history: 100,
        max_devices: 5,
    }
}

/// RESP as Redis writes it (the node's own encoder writes only commands).
fn wire(v: &Value) -> Vec<u8> {
    match v {
        Value::Simple(s) => format!("+{s}\r\n").into_bytes(),
        Value::Error(e) => format!("-{e}\r\n").into_bytes(),
        Value::Int(n) => format!(":{n}\r\n").into_bytes(),
        Value::Bulk(None) => b"$-1\r\n".to_vec(),
        Value::Bulk(Some(b)) => [format!("${}\r\n", b.len()).into_bytes(), b.clone(), b"\r\n".to_vec()].concat(),
        Value::Array(None) => b"*-1\r\n".to_vec(),
        Value::Array(Some(items)) => {
            let mut out = format!("*{}\r\n", items.len()).into_bytes();
            items.iter().for_each(|i| out.extend(wire(i)));
            out
        }
    }
}

fn bulk(s: &str) -> Value {
    Value::Bulk(Some(s.as_bytes().to_vec()))
}

fn channel(payload: &str) -> Vec<u8> {
    wire(&Value::Array(Some(vec![bulk("message"), bulk("skiff:room"), bulk(payload)])))
}

/// `skiff_sync`'s answer: channel position `seq`, epoch e1, last id, who is online;
/// then the history read after it (none).
fn sync_reply(seq: i64, last_id: i64, online: &[&str]) -> Vec<u8> {
    let names = online.iter().map(|n| bulk(n)).collect();
    let mut bytes = wire(&Value::Array(Some(vec![
        Value::Int(seq),
        bulk("e1"),
        Value::Int(last_id),
        Value::Array(Some(names)),
        Value::Array(Some(vec![])),
        Value::Array(Some(vec![])),
    ])));
    bytes.extend(wire(&Value::Array(Some(vec![]))));
    bytes
}

/// What the node has written on `link` since the last look, as text.
fn sent(c: &mut Cluster, link: LinkId) -> String {
    let out = String::from_utf8_lossy(c.output(link)).into_owned();
    let n = c.output(link).len();
    c.consumed(link, n);
    out
}

fn events(c: &mut Cluster) -> Vec<Event> {
    std::iter::from_fn(|| c.next_event()).collect()
}

/// A node asked to connect at `t`, its links opened, the library loaded and the
/// channel subscribed: it now owes a sync.
fn subscribed(c: &mut Cluster, t: Instant) {
    c.on_timeout(t);
    assert_eq!(c.poll_io(), Some(Io::Open(ADDR.parse().unwrap())));
    c.connected(t);
    assert!(sent(c, LinkId::Cmd).contains("FUNCTION"));
    assert!(sent(c, LinkId::Sub).contains("SUBSCRIBE"));
    c.on_bytes(LinkId::Cmd, &wire(&bulk("skiff")), t);
    c.on_bytes(LinkId::Sub, &wire(&Value::Array(Some(vec![bulk("subscribe"), bulk("skiff:room"), Value::Int(1)]))), t);
    assert!(c.wants_sync());
}

/// A node in sync at `t`, with the channel at position 10.
fn up(t: Instant) -> Cluster {
    let mut c = Cluster::with_node(cfg(None), "n1".into(), t);
    subscribed(&mut c, t);
    c.sync(&[], ("", 0), t);
    assert!(sent(&mut c, LinkId::Cmd).contains("skiff_sync"));
    c.on_bytes(LinkId::Cmd, &sync_reply(10, 0, &[]), t);
    assert!(c.is_up());
    assert!(matches!(events(&mut c)[..], [Event::Synced { .. }]));
    c
}

fn origin(conn: usize) -> Origin {
    Origin { conn, generation: 1 }
}

fn unavailable(e: &Event, conn: usize) -> bool {
    matches!(e, Event::Reply(Done { origin, reply: Reply::Unavailable }) if origin.conn == conn)
}

#[test]
fn the_password_goes_first_on_both_links_and_nothing_is_sent_before_the_sync() {
    let t = Instant::now();
    let mut c = Cluster::with_node(cfg(Some("s3cret")), "n1".into(), t);
    c.submit(origin(1), Request::FindUser { name: "ann".into() });
    assert!(unavailable(&events(&mut c)[0], 1), "not in sync: refused at once");
    c.on_timeout(t);
    assert_eq!(c.poll_io(), Some(Io::Open(ADDR.parse().unwrap())));
    for link in [LinkId::Cmd, LinkId::Sub] {
        assert!(String::from_utf8_lossy(c.output(link)).starts_with("*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n"));
    }
}

#[test]
fn a_link_dropped_mid_sync_fails_what_waits_and_retries_with_backoff() {
    let t = Instant::now();
    let mut c = Cluster::with_node(cfg(None), "n1".into(), t);
    let ms = Duration::from_millis;
    let mut at = t;
    // Each failed attempt waits longer, up to 2 s.
    for wait in [100, 200, 400, 800, 1600, 2000, 2000] {
        subscribed(&mut c, at);
        c.sync(&[], ("", 0), at);
        c.submit(origin(7), Request::FindUser { name: "ann".into() });
        c.on_closed(LinkId::Sub, "connection closed", at);
        assert!(!c.is_up());
        assert_eq!(c.poll_io(), Some(Io::Close));
        assert!(events(&mut c).iter().any(|e| unavailable(e, 7)), "the request waiting failed");
        assert_eq!(c.next_deadline(), Some(at + ms(wait)));
        c.on_timeout(at + ms(wait) - ms(1));
        assert_eq!(c.poll_io(), None, "no attempt before its time");
        at += ms(wait);
    }
    // In sync once: the next outage starts from 100 ms again.
    subscribed(&mut c, at);
    c.sync(&[], ("", 0), at);
    c.on_bytes(LinkId::Cmd, &sync_reply(1, 0, &[]), at);
    assert!(c.is_up());
    c.on_closed(LinkId::Cmd, "connection closed", at);
    assert_eq!(c.next_deadline(), Some(at + ms(100)));
}

#[test]
fn a_reply_that_takes_5_s_drops_the_links() {
    let t = Instant::now();
    let mut c = up(t);
    c.submit(origin(3), Request::FindUser { name: "ann".into() });
    c.flush(t);
    let s = Duration::from_secs;
    c.on_timeout(t + s(4));
    assert!(c.is_up(), "4 s is patience");
    assert_eq!(c.poll_io(), None);
    c.on_timeout(t + s(5));
    assert!(!c.is_up());
    assert_eq!(c.poll_io(), Some(Io::Close));
    assert!(events(&mut c).iter().any(|e| unavailable(e, 3)));
}

#[test]
fn connecting_for_3_s_without_a_subscription_gives_up() {
    let t = Instant::now();
    let mut c = Cluster::with_node(cfg(None), "n1".into(), t);
    c.on_timeout(t);
    assert!(matches!(c.poll_io(), Some(Io::Open(_))));
    c.connected(t);
    assert_eq!(c.next_deadline(), Some(t + Duration::from_secs(3)));
    c.on_timeout(t + Duration::from_secs(3));
    assert_eq!(c.poll_io(), Some(Io::Close));
    assert!(!c.wants_sync());
}

#[test]
fn channel_events_before_the_snapshot_wait_and_only_later_ones_pass() {
    let t = Instant::now();
    let mut c = Cluster::with_node(cfg(None), "n1".into(), t);
    subscribed(&mut c, t);
    c.sync(&[], ("", 0), t);
    // Seq 5 is already in the snapshot (position 6); seq 7 came after it.
    c.on_bytes(LinkId::Sub, &channel("J 5 n2 1.1 ann"), t);
    c.on_bytes(LinkId::Sub, &channel("M 7 3 1700000000000 n2 1.1 ann hello there"), t);
    assert!(events(&mut c).is_empty(), "nothing before the snapshot");
    c.on_bytes(LinkId::Cmd, &sync_reply(6, 2, &["ann"]), t);
    let got = events(&mut c);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(matches!(&got[0], Event::Synced { snapshot, .. } if snapshot.online == ["ann"]));
    assert!(matches!(&got[1], Event::Message { msg, .. } if msg.id == 3 && msg.text == "hello there"));
}

/// The links are read in either order: an event published before the sync ran can
/// be read after its reply. The snapshot holds it already; applying it too would
/// deliver a message twice (seen with a real failover in tests/sentinel.rs).
#[test]
fn an_event_read_after_the_snapshot_that_holds_it_is_not_applied_again() {
    let t = Instant::now();
    let mut c = Cluster::with_node(cfg(None), "n1".into(), t);
    subscribed(&mut c, t);
    c.sync(&[], ("e1", 2), t);
    c.on_bytes(LinkId::Cmd, &sync_reply(6, 3, &[]), t);
    assert!(matches!(events(&mut c)[..], [Event::Synced { .. }]));
    c.on_bytes(LinkId::Sub, &channel("M 6 3 1700000000000 n2 1.1 ann in the snapshot"), t);
    assert!(events(&mut c).is_empty(), "seq 6 is in the snapshot");
    c.on_bytes(LinkId::Sub, &channel("M 7 4 1700000000000 n2 1.1 ann after it"), t);
    assert!(matches!(&events(&mut c)[..], [Event::Message { msg, .. }] if msg.id == 4));
}

#[test]
fn logouts_taken_while_down_go_out_before_the_sync() {
    let t = Instant::now();
    let mut c = Cluster::with_node(cfg(None), "n1".into(), t);
    c.submit(origin(2), Request::Logout { id_hash: [0xab; 32] });
    assert!(matches!(events(&mut c)[..], [Event::Reply(Done { reply: Reply::LoggedOut, .. })]));
    assert_eq!(c.deferred_logouts(), [[0xab; 32]]);
    subscribed(&mut c, t);
    c.sync(&[("Ann".into(), origin(4))], ("e1", 9), t);
    let out = sent(&mut c, LinkId::Cmd);
    let logout = out.find("skiff_logout").expect("the deferred logout");
    let sync = out.find("skiff_sync").expect("the sync");
    assert!(logout < sync, "{out}");
    assert!(out.contains(&"ab".repeat(32)));
    assert!(out.contains("\r\nann\r\n$3\r\nAnn\r\n$3\r\n4.1\r\n"), "the user and its socket: {out}");
    assert!(c.deferred_logouts().is_empty());
}

#[test]
fn own_messages_keep_the_node_busy_until_their_event_comes_back() {
    let t = Instant::now();
    let mut c = up(t);
    assert!(c.is_quiet());
    c.publish(origin(5), "ann".into(), "hi".into());
    assert!(sent(&mut c, LinkId::Cmd).contains("skiff_message"));
    assert!(!c.is_quiet());
    // The reply is the message's id, as the event's (`M seq id ...`) is.
    c.on_bytes(LinkId::Cmd, &wire(&Value::Int(1)), t);
    assert!(!c.is_quiet(), "answered, but its event (and so the ack) has not come");
    c.on_bytes(LinkId::Sub, &channel("M 11 1 1700000000000 n1 5.1 ann hi"), t);
    assert!(c.is_quiet());
    let got = events(&mut c);
    assert!(matches!(&got[..], [Event::Message { mine: Some(o), .. }] if *o == origin(5)));
    // A refused message ends its wait as well.
    c.publish(origin(5), "ann".into(), "again".into());
    c.on_bytes(LinkId::Cmd, &wire(&Value::Error("ERR busy".into())), t);
    assert!(c.is_quiet());
    assert!(matches!(events(&mut c)[..], [Event::Unavailable(o)] if o == origin(5)));
}

/// Found by the cluster fuzz world: Redis took a message (its id came back) and the
/// subscription dropped before the message's event. The ack rides on that event, so
/// the sender waited for ever (and a v1 client's later acks were off by one). The
/// next sync now names it as owed, to be acked from the snapshot.
#[test]
fn a_message_redis_took_whose_event_was_lost_is_owed_to_its_sender_at_the_next_sync() {
    let t = Instant::now();
    let mut c = up(t);
    c.publish(origin(5), "ann".into(), "hi".into());
    c.publish(origin(6), "bob".into(), "yo".into());
    sent(&mut c, LinkId::Cmd);
    // bob's event comes before its reply (the links are read in either order).
    c.on_bytes(LinkId::Sub, &channel("M 11 8 1700000000000 n1 6.1 bob yo"), t);
    c.on_bytes(LinkId::Cmd, &[wire(&Value::Int(7)), wire(&Value::Int(8))].concat(), t);
    events(&mut c);
    c.on_closed(LinkId::Sub, "connection closed", t);
    assert!(events(&mut c).iter().all(|e| !matches!(e, Event::Unavailable(_))), "it did go out");
    assert_eq!(c.poll_io(), Some(Io::Close));
    let retry = c.next_deadline().unwrap();
    subscribed(&mut c, retry);
    c.sync(&[], ("e1", 8), retry);
    c.on_bytes(LinkId::Cmd, &sync_reply(12, 8, &[]), retry);
    match &events(&mut c)[..] {
        [Event::Synced { mine, .. }] => assert_eq!(mine, &[(7, origin(5))], "ann's message only; bob's came"),
        other => panic!("{other:?}"),
    }
}

/// Found by the cluster fuzz world: a socket's first message was taken by Redis (its
/// id came back, its event not yet) when the links dropped with its second still
/// unanswered. The second's refusal went out at once and the first's ack only with
/// the next sync: the socket heard its acks in the wrong order (a v1 client matches
/// them by position). The refusal now waits behind the owed ack.
#[test]
fn a_refusal_waits_behind_the_same_sockets_owed_ack() {
    let t = Instant::now();
    let mut c = up(t);
    c.publish(origin(5), "ann".into(), "first".into());
    c.publish(origin(5), "ann".into(), "second".into());
    c.publish(origin(6), "bob".into(), "other".into());
    sent(&mut c, LinkId::Cmd);
    c.on_bytes(LinkId::Cmd, &wire(&Value::Int(7)), t);
    c.on_closed(LinkId::Sub, "connection closed", t);
    let got = events(&mut c);
    assert!(matches!(got[..], [Event::Unavailable(o)] if o == origin(6)), "bob owes nothing: {got:?}");
    // Sent while the node is down: behind the owed ack as well.
    c.publish(origin(5), "ann".into(), "third".into());
    assert!(events(&mut c).is_empty());
    assert_eq!(c.poll_io(), Some(Io::Close));
    let retry = c.next_deadline().unwrap();
    subscribed(&mut c, retry);
    c.sync(&[], ("e1", 6), retry);
    c.on_bytes(LinkId::Cmd, &sync_reply(12, 8, &[]), retry);
    match &events(&mut c)[..] {
        [Event::Synced { mine, .. }, Event::Unavailable(a), Event::Unavailable(b)] => {
            assert_eq!(mine, &[(7, origin(5))]);
            assert_eq!((*a, *b), (origin(5), origin(5)));
        }
        other => panic!("{other:?}"),
    }
    // In sync: a refusal waits for the event that carries the earlier ack.
    c.publish(origin(5), "ann".into(), "fourth".into());
    c.publish(origin(5), "ann".into(), "fifth".into());
    c.on_bytes(LinkId::Cmd, &[wire(&Value::Int(9)), wire(&Value::Error("ERR busy".into()))].concat(), retry);
    assert!(events(&mut c).is_empty());
    c.on_bytes(LinkId::Sub, &channel("M 13 9 1700000000000 n1 5.1 ann fourth"), retry);
    assert!(matches!(
        &events(&mut c)[..],
        [Event::Message { mine: Some(m), .. }, Event::Unavailable(u)] if *m == origin(5) && *u == origin(5)
    ));
}

/// Found by the cluster fuzz world: two sockets of one user joined from this node at
/// once, and the one whose reply came first had hung up. Nothing of the user was open
/// here yet, so the node made the user leave, and Redis dropped the other socket's
/// count with it: that socket opened while every node heard the user leave. A join
/// still to settle now keeps the user here (`joining`) until the loop takes its
/// outcome.
#[test]
fn a_join_counts_as_the_users_presence_here_until_it_settles() {
    let t = Instant::now();
    let mut c = up(t);
    let join = |c: &mut Cluster, conn| c.submit(origin(conn), Request::Join { name: "Ann".into(), v2: true });
    join(&mut c, 4);
    join(&mut c, 5);
    join(&mut c, 6);
    assert!(c.joining("ann") && c.joining("ANN"));
    sent(&mut c, LinkId::Cmd);
    let first = Value::Array(Some(vec![Value::Int(11), bulk("1700000000000")]));
    let beside = Value::Array(Some(vec![Value::Int(-1), bulk("1700000000000")]));
    c.on_bytes(LinkId::Cmd, &[wire(&first), wire(&beside)].concat(), t);
    assert!(matches!(&events(&mut c)[..], [Event::Join { mine: Some(o), .. }] if *o == origin(5)));
    assert!(c.joining("ann"), "socket 4's join waits for its event, socket 6's for its reply");
    c.on_bytes(LinkId::Sub, &channel("J 11 n1 4.1 Ann"), t);
    events(&mut c);
    assert!(c.joining("ann"), "socket 6's reply is still to come");
    c.on_bytes(LinkId::Cmd, &wire(&Value::Int(-2)), t);
    assert!(c.joining("ann"), "settled only as the loop takes the refusal: outcomes may queue behind it");
    assert!(matches!(&events(&mut c)[..], [Event::Reply(Done { reply: Reply::TooManyDevices, .. })]));
    assert!(!c.joining("ann"), "refused: settled");
    // Links lost: nothing is in flight any more.
    join(&mut c, 7);
    c.on_closed(LinkId::Cmd, "connection closed", t);
    assert!(!c.joining("ann"));
}

/// A join's event can be read before its command's reply. The reply then waits for
/// nothing: the node stays quiet (a hand-over needs that), and nothing piles up.
#[test]
fn a_join_whose_event_beats_its_reply_leaves_nothing_waiting() {
    let t = Instant::now();
    let mut c = up(t);
    c.submit(origin(4), Request::Join { name: "Ann".into(), v2: false });
    sent(&mut c, LinkId::Cmd);
    c.on_bytes(LinkId::Sub, &channel("J 11 n1 4.1 Ann"), t);
    assert!(matches!(&events(&mut c)[..], [Event::Join { mine: Some(o), .. }] if *o == origin(4)));
    c.on_bytes(LinkId::Cmd, &wire(&Value::Int(1)), t);
    assert!(events(&mut c).is_empty());
    assert!(c.is_quiet(), "nothing waits for a join that happened");
    // And the usual order, reply first.
    c.submit(origin(5), Request::Join { name: "Bob".into(), v2: false });
    c.on_bytes(LinkId::Cmd, &wire(&Value::Int(1)), t);
    assert!(!c.is_quiet(), "the join event is still to come");
    c.on_bytes(LinkId::Sub, &channel("J 12 n1 5.1 Bob"), t);
    assert!(c.is_quiet());
}

/// A logout ends one session (E: its sockets close where that session is known)
/// and logs its user out everywhere (O: sockets of the user's other sessions, on
/// nodes that never saw the one logged out, close too).
#[test]
fn a_logout_reaches_every_node_by_the_user_s_name() {
    let t = Instant::now();
    let mut c = up(t);
    let hash = "ab".repeat(32);
    c.on_bytes(LinkId::Sub, &channel(&format!("E 11 1000 {hash}")), t);
    c.on_bytes(LinkId::Sub, &channel("O 12 Ann"), t);
    let got = events(&mut c);
    assert!(
        matches!(&got[..], [
        Event::SessionEnded { id_hash, code: 1000 },
        Event::LoggedOut { name },
    ] if *id_hash == [0xab; 32] && name == "Ann"),
        "{got:?}"
    );
}

/// The device cap counts a user's sockets on other nodes: the node follows them
/// from the channel (J: one on the joining node, N: a node's new count, L: none),
/// its own count left out. Redis has the last word: a join past the cap is refused,
/// and a socket let in here beside others that Redis counts past it closes.
#[test]
fn other_nodes_device_counts_follow_the_channel_and_redis_has_the_last_word() {
    let t = Instant::now();
    let mut c = up(t);
    let elsewhere = |c: &mut Cluster| -> Vec<(String, usize)> {
        events(c)
            .into_iter()
            .filter_map(|e| match e {
                Event::Devices { name, elsewhere } => Some((name, elsewhere)),
                Event::Join { .. } | Event::Leave { .. } => None,
                e => panic!("{e:?}"),
            })
            .collect()
    };
    let at = |name: &str, n| vec![(name.to_owned(), n)];
    c.on_bytes(LinkId::Sub, &channel("J 11 n2 1.1 Ann"), t);
    assert_eq!(elsewhere(&mut c), at("Ann", 1));
    c.on_bytes(LinkId::Sub, &channel("N 12 n2 Ann 3"), t);
    assert_eq!(elsewhere(&mut c), at("Ann", 3));
    c.on_bytes(LinkId::Sub, &channel("N 13 n1 Ann 2"), t);
    assert_eq!(elsewhere(&mut c), [], "this node's own count is its own");
    c.on_bytes(LinkId::Sub, &channel("N 14 n3 ann 1"), t);
    assert_eq!(elsewhere(&mut c), at("ann", 4));
    c.on_bytes(LinkId::Sub, &channel("N 15 n2 Ann 0"), t);
    assert_eq!(elsewhere(&mut c), at("Ann", 1));
    c.on_bytes(LinkId::Sub, &channel("L 16 n3 Ann"), t);
    assert_eq!(elsewhere(&mut c), at("Ann", 0));

    c.device_opened(origin(4), "Ann");
    assert!(sent(&mut c, LinkId::Cmd).contains("skiff_devices"));
    c.on_bytes(LinkId::Cmd, &wire(&Value::Int(5)), t);
    assert!(events(&mut c).is_empty(), "five is the cap, not past it");
    c.device_opened(origin(5), "Ann");
    c.on_bytes(LinkId::Cmd, &wire(&Value::Int(6)), t);
    assert!(matches!(&events(&mut c)[..], [Event::OverCap(o)] if *o == origin(5)));
    c.devices_closed("Ann", 2);
    assert!(sent(&mut c, LinkId::Cmd).contains("$2\r\n-2\r\n"));
    c.on_bytes(LinkId::Cmd, &wire(&Value::Int(4)), t);
    assert!(events(&mut c).is_empty());

    c.submit(origin(6), Request::Join { name: "Ann".into(), v2: true });
    assert!(sent(&mut c, LinkId::Cmd).contains("skiff_join"));
    c.on_bytes(LinkId::Cmd, &wire(&Value::Int(-2)), t);
    let got = events(&mut c);
    assert!(matches!(&got[..], [Event::Reply(Done { reply: Reply::TooManyDevices, .. })]), "{got:?}");
}

/// After a sync the node knows every online user's sockets on the other nodes.
#[test]
fn a_sync_says_who_holds_how_many_sockets_of_each_user() {
    let t = Instant::now();
    let mut c = Cluster::with_node(cfg(None), "n1".into(), t);
    subscribed(&mut c, t);
    c.sync(&[], ("", 0), t);
    let held = ["ann", "n1", "2", "ann", "n2", "3", "bob", "n1", "1", "cy", "n3", "1"];
    let reply = Value::Array(Some(vec![
        Value::Int(6),
        bulk("e1"),
        Value::Int(0),
        Value::Array(Some(vec![bulk("Ann"), bulk("Bob"), bulk("Cy")])),
        Value::Array(Some(vec![])),
        Value::Array(Some(vec![])),
        Value::Array(Some(vec![Value::Int(0), Value::Int(0)])),
        Value::Array(Some(held.iter().map(|s| bulk(s)).collect())),
    ]));
    c.on_bytes(LinkId::Cmd, &[wire(&reply), wire(&Value::Array(Some(vec![])))].concat(), t);
    let got = events(&mut c);
    let Some(Event::Synced { devices, .. }) = got.first() else { panic!("{got:?}") };
    let mut devices = devices.clone();
    devices.sort();
    assert_eq!(devices, [("ann".to_owned(), 3), ("cy".to_owned(), 1)]);
}

#[test]
fn heartbeats_and_reaping_keep_their_pace() {
    let t = Instant::now();
    let mut c = up(t);
    let s = Duration::from_secs;
    c.on_timeout(t + s(2));
    let out = sent(&mut c, LinkId::Cmd);
    assert!(out.contains("skiff_heartbeat") && !out.contains("skiff_reap"), "no reaping in the grace: {out}");
    // Answer everything so no reply times out.
    let answers: Vec<u8> = wire(&Value::Int(1)).repeat(2);
    c.on_bytes(LinkId::Cmd, &answers[..answers.len() / 2], t + s(2));
    c.on_timeout(t + s(8));
    assert!(sent(&mut c, LinkId::Cmd).contains("skiff_reap"), "reaping after the grace");
}

#[test]
fn a_redis_that_does_not_read_is_down() {
    let t = Instant::now();
    let mut c = up(t);
    let big = "x".repeat(1 << 20);
    for i in 0..65 {
        c.publish(origin(i), "ann".into(), big.as_str().into());
    }
    c.flush(t);
    assert!(!c.is_up());
    assert_eq!(c.poll_io(), Some(Io::Close));
    assert_eq!(events(&mut c).iter().filter(|e| matches!(e, Event::Unavailable(_))).count(), 65);
}

#[test]
fn a_reply_nobody_asked_for_or_garbage_drops_the_links() {
    let t = Instant::now();
    let mut c = up(t);
    c.on_bytes(LinkId::Cmd, &wire(&Value::Int(1)), t);
    assert!(!c.is_up());
    let mut c = up(t);
    c.on_bytes(LinkId::Sub, b"?what\r\n", t);
    assert!(!c.is_up());
}

mod sentinel {
    //! Sentinel mode: the primary is found through the sentinels, checked with ROLE,
    //! and followed through failovers.
    use super::*;
    use crate::cluster::sentinel::SentinelSet;

    const S1: &str = "127.0.0.1:26379";
    const S2: &str = "127.0.0.1:26380";
    const P1: &str = "127.0.0.1:7001";
    const P2: &str = "127.0.0.1:7002";

    fn node(t: Instant) -> Cluster {
        let set = SentinelSet { addrs: vec![S1.parse().unwrap(), S2.parse().unwrap()], master: "mymaster".into() };
        let url = RedisUrl { target: RedisTarget::Sentinels(set), password: None, db: 0 };
        Cluster::with_node(ClusterConfig { url, ..cfg(None) }, "n1".into(), t)
    }

    fn addr_reply(addr: &str) -> Vec<u8> {
        let (ip, port) = addr.split_once(':').unwrap();
        wire(&Value::Array(Some(vec![bulk(ip), bulk(port)])))
    }

    fn subscribed_to_switches() -> Vec<u8> {
        wire(&Value::Array(Some(vec![bulk("subscribe"), bulk("+switch-master"), Value::Int(1)])))
    }

    /// What the reactor must do, but for the watching links (`watches` has those).
    fn io(c: &mut Cluster) -> Vec<Io> {
        std::iter::from_fn(|| c.poll_io()).filter(|io| !matches!(io, Io::OpenWatch(..) | Io::CloseWatch(_))).collect()
    }

    fn watch_msg(channel: &str, text: &str) -> Vec<u8> {
        wire(&Value::Array(Some(vec![bulk("message"), bulk(channel), bulk(text)])))
    }

    /// The sentinel answers `primary`; the links open there and the server says its
    /// role is `role`.
    fn connect_to(c: &mut Cluster, primary: &str, role: &str, t: Instant) {
        let out = sent(c, LinkId::Sentinel);
        assert!(out.contains("GET-MASTER-ADDR-BY-NAME") && out.contains("mymaster"), "{out}");
        c.on_bytes(LinkId::Sentinel, &addr_reply(primary), t);
        c.on_bytes(LinkId::Sentinel, &subscribed_to_switches(), t);
        assert_eq!(io(c), [Io::Open(primary.parse().unwrap())]);
        c.connected(t);
        assert!(sent(c, LinkId::Cmd).contains("ROLE"));
        sent(c, LinkId::Sub);
        c.on_bytes(LinkId::Cmd, &wire(&bulk("skiff")), t);
        c.on_bytes(LinkId::Cmd, &wire(&Value::Array(Some(vec![bulk(role), Value::Int(0)]))), t);
    }

    fn up_on(c: &mut Cluster, primary: &str, t: Instant) {
        connect_to(c, primary, "master", t);
        c.on_bytes(
            LinkId::Sub,
            &wire(&Value::Array(Some(vec![bulk("subscribe"), bulk("skiff:room"), Value::Int(1)]))),
            t,
        );
        c.sync(&[], ("", 0), t);
        sent(c, LinkId::Cmd);
        c.on_bytes(LinkId::Cmd, &sync_reply(1, 0, &[]), t);
        assert!(c.is_up());
        events(c);
    }

    #[test]
    fn the_sentinels_say_where_the_primary_is() {
        let t = Instant::now();
        let mut c = node(t);
        c.on_timeout(t);
        assert_eq!(io(&mut c), [Io::OpenSentinel(S1.parse().unwrap())]);
        assert!(!c.is_up());
        up_on(&mut c, P1, t);
    }

    #[test]
    fn a_server_that_says_it_is_a_replica_is_left_and_the_sentinels_asked_again() {
        let t = Instant::now();
        let mut c = node(t);
        c.on_timeout(t);
        io(&mut c);
        connect_to(&mut c, P1, "slave", t);
        assert!(!c.is_up());
        assert_eq!(io(&mut c), [Io::Close]);
        let retry = c.next_deadline().unwrap();
        c.on_timeout(retry);
        // The watching link takes no question: a fresh one to the same sentinel.
        assert_eq!(io(&mut c), [Io::CloseSentinel, Io::OpenSentinel(S1.parse().unwrap())]);
        up_on(&mut c, P2, retry);
    }

    /// READONLY (demoted to a replica) or NOREPLICAS (a primary cut off from its
    /// promoted replica, under min-replicas-to-write): the node is down until it finds
    /// the primary; messages refused unrun go to the new primary, nothing refused to
    /// their senders; input is held meanwhile.
    #[test]
    fn a_refused_write_means_a_failover_and_refused_messages_go_to_the_new_primary() {
        for refusal in ["READONLY You can't write against a read only replica.", "NOREPLICAS Not enough good replicas"]
        {
            let t = Instant::now();
            let mut c = node(t);
            c.on_timeout(t);
            io(&mut c);
            up_on(&mut c, P1, t);
            c.publish(origin(1), "ann".into(), "one".into());
            c.publish(origin(2), "bob".into(), "two".into());
            c.publish(origin(3), "cid".into(), "three".into());
            sent(&mut c, LinkId::Cmd);
            // The first ran before the switch; the next two were refused.
            let mut replies = wire(&Value::Int(41));
            replies.extend(wire(&Value::Error(refusal.into())).repeat(2));
            c.on_bytes(LinkId::Cmd, &replies, t);
            assert!(!c.is_up());
            assert!(events(&mut c).iter().all(|e| !matches!(e, Event::Unavailable(_))), "nothing refused to a sender");
            assert_eq!(io(&mut c), [Io::Close]);
            assert_eq!(c.failing_over(t), Some(t + Duration::from_secs(10)), "input waits for the new primary");
            assert!(!c.is_quiet());
            let retry = c.next_deadline().unwrap();
            c.on_timeout(retry);
            io(&mut c);
            up_on(&mut c, P2, retry);
            assert_eq!(c.failing_over(retry), None);
            let out = sent(&mut c, LinkId::Cmd);
            assert!(out.find("two").unwrap() < out.find("three").unwrap(), "again, in order: {out}");
            assert!(!out.contains("one"), "the one that ran is not sent twice");
        }
    }

    #[test]
    fn a_switch_master_moves_the_links_at_once() {
        let t = Instant::now();
        let mut c = node(t);
        c.on_timeout(t);
        io(&mut c);
        up_on(&mut c, P1, t);
        let switch = wire(&Value::Array(Some(vec![
            bulk("message"),
            bulk("+switch-master"),
            bulk("mymaster 127.0.0.1 7001 127.0.0.1 7002"),
        ])));
        // Another primary's switch changes nothing.
        let other = wire(&Value::Array(Some(vec![
            bulk("message"),
            bulk("+switch-master"),
            bulk("othermaster 127.0.0.1 7001 127.0.0.1 7009"),
        ])));
        c.on_bytes(LinkId::Sentinel, &other, t);
        assert!(c.is_up());
        c.on_bytes(LinkId::Sentinel, &switch, t);
        assert!(!c.is_up(), "never healthy on a demoted server");
        assert_eq!(io(&mut c), [Io::Close]);
        assert_eq!(c.next_deadline(), Some(t), "no backoff: the new primary is known");
        c.on_timeout(t);
        assert_eq!(io(&mut c), [Io::CloseSentinel, Io::OpenSentinel(S1.parse().unwrap())]);
        up_on(&mut c, P2, t);
    }

    #[test]
    fn a_silent_or_dead_sentinel_is_passed_over_and_a_lost_watch_changes_nothing() {
        let t = Instant::now();
        let mut c = node(t);
        c.on_timeout(t);
        assert_eq!(io(&mut c), [Io::OpenSentinel(S1.parse().unwrap())]);
        // S1 says nothing for 2 s: S2 is asked.
        let later = t + Duration::from_secs(2);
        assert_eq!(c.next_deadline(), Some(later));
        c.on_timeout(later);
        assert_eq!(io(&mut c), [Io::CloseSentinel, Io::OpenSentinel(S2.parse().unwrap())]);
        up_on(&mut c, P1, later);
        // The watching sentinel goes away: the node stays up and watches through
        // another one (after a short wait, the round being over).
        c.on_closed(LinkId::Sentinel, "connection closed", later);
        assert!(c.is_up());
        assert_eq!(io(&mut c), [Io::CloseSentinel]);
        let again = later + Duration::from_millis(100);
        c.on_timeout(again - Duration::from_millis(1));
        assert_eq!(io(&mut c), [], "a short wait first: the round of sentinels is over");
        c.on_timeout(again);
        assert!(c.is_up());
        assert!(io(&mut c).contains(&Io::OpenSentinel(S1.parse().unwrap())));
        // Its answer names the same primary: nothing changes.
        c.on_bytes(LinkId::Sentinel, &addr_reply(P1), again);
        assert!(c.is_up());
        assert_eq!(io(&mut c), []);
    }

    #[test]
    fn no_primary_by_that_name_is_an_outage_with_backoff() {
        let t = Instant::now();
        let mut c = node(t);
        c.on_timeout(t);
        io(&mut c);
        sent(&mut c, LinkId::Sentinel);
        c.on_bytes(LinkId::Sentinel, &wire(&Value::Array(None)), t);
        assert!(!c.is_up());
        assert_eq!(c.next_deadline(), Some(t + Duration::from_millis(100)));
    }

    /// Every sentinel is watched: the one leading a failover says `+selected-slave`
    /// before it promotes the replica, and the node holds writes from then on (the
    /// links stay: the old primary is still the primary); `+switch-master` from any
    /// of them moves the links.
    #[test]
    fn every_sentinel_is_watched_and_a_failover_starting_holds_writes() {
        let t = Instant::now();
        let mut c = node(t);
        c.on_timeout(t);
        let opened: Vec<Io> = std::iter::from_fn(|| c.poll_io()).collect();
        assert!(
            opened.contains(&Io::OpenWatch(0, S1.parse().unwrap()))
                && opened.contains(&Io::OpenWatch(1, S2.parse().unwrap()))
        );
        assert!(String::from_utf8_lossy(c.output(LinkId::Watch(1))).contains("+selected-slave"));
        up_on(&mut c, P1, t);
        // The second sentinel leads a failover of another primary: nothing.
        c.on_bytes(
            LinkId::Watch(1),
            &watch_msg("+selected-slave", "slave 127.0.0.1:9 127.0.0.1 9 @ other 127.0.0.1 8"),
            t,
        );
        assert_eq!(c.failing_over(t), None);
        c.on_bytes(
            LinkId::Watch(1),
            &watch_msg("+selected-slave", "slave 127.0.0.1:7002 127.0.0.1 7002 @ mymaster 127.0.0.1 7001"),
            t,
        );
        assert_eq!(c.failing_over(t), Some(t + Duration::from_secs(10)), "writes held");
        assert!(c.is_up(), "still on the primary until it is switched");
        c.on_bytes(LinkId::Watch(1), &watch_msg("+switch-master", "mymaster 127.0.0.1 7001 127.0.0.1 7002"), t);
        assert!(!c.is_up());
        c.on_timeout(t);
        io(&mut c);
        up_on(&mut c, P2, t);
        assert_eq!(c.failing_over(t), None, "released once in sync with the new primary");
        // A watch that drops is opened again after its backoff.
        c.on_closed(LinkId::Watch(0), "connection closed", t);
        assert_eq!(c.poll_io(), Some(Io::CloseWatch(0)));
        c.on_timeout(t + Duration::from_millis(100));
        assert!(std::iter::from_fn(|| c.poll_io()).any(|io| io == Io::OpenWatch(0, S1.parse().unwrap())));
    }
}

/// A registration's 201 and the primary's replicas (`replicas.rs`), and the
/// sessions asserted again after a sync (`failover.rs`).
mod replicas {
    use super::*;

    fn pair(a: i64, b: i64) -> Value {
        Value::Array(Some(vec![Value::Int(a), Value::Int(b)]))
    }

    /// In sync, the primary having `attached` replicas, `online` of them past their
    /// first sync.
    fn up_with(attached: i64, online: i64, t: Instant) -> Cluster {
        let mut c = Cluster::with_node(cfg(None), "n1".into(), t);
        subscribed(&mut c, t);
        c.sync(&[], ("", 0), t);
        sent(&mut c, LinkId::Cmd);
        let empty = || Value::Array(Some(vec![]));
        let reply = Value::Array(Some(vec![
            Value::Int(1),
            bulk("e1"),
            Value::Int(0),
            empty(),
            empty(),
            empty(),
            pair(attached, online),
        ]));
        // The history's reply follows the sync's (`XREVRANGE`).
        let mut bytes = wire(&reply);
        bytes.extend(wire(&empty()));
        c.on_bytes(LinkId::Cmd, &bytes, t);
        assert!(c.is_up());
        events(&mut c);
        c
    }

    fn register(c: &mut Cluster, conn: usize) {
        c.submit(origin(conn), Request::Register { username: format!("u{conn}"), key_hash: [conn as u8; 32] });
    }

    fn replies(c: &mut Cluster) -> Vec<(usize, Reply)> {
        events(c)
            .into_iter()
            .filter_map(|e| match e {
                Event::Reply(Done { origin, reply }) => Some((origin.conn, reply)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn without_a_replica_the_201_waits_for_nothing() {
        let t = Instant::now();
        let mut c = up_with(0, 0, t);
        register(&mut c, 1);
        let out = sent(&mut c, LinkId::Cmd);
        assert!(out.contains("skiff_register") && !out.contains("WAIT"), "{out}");
        c.on_bytes(LinkId::Cmd, &wire(&Value::Int(1)), t);
        assert_eq!(replies(&mut c), [(1, Reply::Registered)]);
    }

    #[test]
    fn with_a_replica_the_201_waits_for_it_one_wait_at_a_time() {
        let t = Instant::now();
        let mut c = up_with(1, 1, t);
        register(&mut c, 1);
        let out = sent(&mut c, LinkId::Cmd);
        assert!(
            out.contains("skiff_register") && out.ends_with("*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$4\r\n1000\r\n"),
            "{out}"
        );
        // A WAIT is in flight: the next registration shares the one after it.
        register(&mut c, 2);
        assert!(!sent(&mut c, LinkId::Cmd).contains("WAIT"));
        c.on_bytes(LinkId::Cmd, &wire(&Value::Int(1)), t);
        assert_eq!(replies(&mut c), [], "taken, not yet on a replica");
        assert!(!c.is_quiet());
        c.on_bytes(LinkId::Cmd, &wire(&Value::Int(1)), t);
        assert_eq!(replies(&mut c), [(1, Reply::Registered)]);
        assert!(sent(&mut c, LinkId::Cmd).contains("WAIT"), "the second registration's WAIT");
        c.on_bytes(LinkId::Cmd, &wire(&Value::Int(1)), t);
        c.on_bytes(LinkId::Cmd, &wire(&Value::Int(1)), t);
        assert_eq!(replies(&mut c), [(2, Reply::Registered)]);
        assert!(c.is_quiet());
    }

    #[test]
    fn a_wait_that_times_out_answers_503_until_a_heartbeat_says_a_replica_is_online_again() {
        let t = Instant::now();
        let mut c = up_with(1, 1, t);
        register(&mut c, 1);
        sent(&mut c, LinkId::Cmd);
        c.on_bytes(LinkId::Cmd, &wire(&Value::Int(1)), t);
        c.on_bytes(LinkId::Cmd, &wire(&Value::Int(0)), t);
        assert_eq!(replies(&mut c), [(1, Reply::Unavailable)]);
        // Refused unwritten: another WAIT could only time out as well.
        register(&mut c, 2);
        assert_eq!(replies(&mut c), [(2, Reply::Unavailable)]);
        assert_eq!(sent(&mut c, LinkId::Cmd), "");
        let t2 = t + HEARTBEAT_EVERY;
        c.on_timeout(t2);
        assert!(sent(&mut c, LinkId::Cmd).contains("skiff_heartbeat"));
        c.on_bytes(LinkId::Cmd, &wire(&pair(1, 1)), t2);
        register(&mut c, 3);
        assert!(sent(&mut c, LinkId::Cmd).contains("WAIT"));
    }

    #[test]
    fn replicas_all_in_their_first_sync_refuse_at_once_and_lost_links_answer_503() {
        let t = Instant::now();
        let mut c = up_with(2, 0, t);
        register(&mut c, 1);
        assert_eq!(replies(&mut c), [(1, Reply::Unavailable)]);
        let mut c = up_with(1, 1, t);
        register(&mut c, 2);
        c.on_bytes(LinkId::Cmd, &wire(&Value::Int(1)), t);
        c.on_closed(LinkId::Cmd, "reset", t);
        assert_eq!(replies(&mut c), [(2, Reply::Unavailable)], "no WAIT answer proves nothing");
    }

    #[test]
    fn a_session_is_asserted_again_and_only_a_gone_user_closes() {
        let t = Instant::now();
        let mut c = up(t);
        let answers = [
            ("live", None),
            ("restored", None),
            ("deleted", Some((1008, "user deleted"))),
            ("banned", Some((1008, "banned"))),
            ("ended 1000", Some((1000, "logged out"))),
            ("ended 1008", Some((1008, "session ended"))),
        ];
        for (answer, expect) in answers {
            c.reassert_session(&[7; 32], "Ann", Duration::from_secs(10));
            let out = sent(&mut c, LinkId::Cmd);
            assert!(out.contains("skiff_reassert") && out.contains("\r\nann\r\n") && out.contains("\r\n70000\r\n"));
            c.on_bytes(LinkId::Cmd, &wire(&bulk(answer)), t);
            let got: Vec<(u16, &str)> = events(&mut c)
                .into_iter()
                .filter_map(|e| match e {
                    Event::SessionGone { id_hash: [7, ..], code, reason } => Some((code, reason)),
                    _ => None,
                })
                .collect();
            assert_eq!(got, expect.into_iter().collect::<Vec<_>>(), "{answer}");
        }
        // An older library without the function: the socket stays.
        c.reassert_session(&[7; 32], "Ann", Duration::from_secs(10));
        c.on_bytes(LinkId::Cmd, &wire(&Value::Error("ERR Function not found".into())), t);
        assert!(events(&mut c).is_empty());
    }
}

/// A snapshot of `n` messages (ids 1..=n), at channel position `seq`: the sync's
/// reply, then the history's (newest first, with one message published since the
/// snapshot, which its channel event brings).
fn big_sync_reply(seq: i64, n: u64) -> Vec<u8> {
    let entry = |id: u64| {
        let fields = ["ts", "1700000000000", "author", "ann", "message", &format!("text {id}")].map(bulk);
        Value::Array(Some(vec![bulk(&format!("{id}-0")), Value::Array(Some(fields.to_vec()))]))
    };
    let mut bytes = wire(&Value::Array(Some(vec![
        Value::Int(seq),
        bulk("e1"),
        Value::Int(n as i64),
        Value::Array(Some(vec![bulk("ann")])),
        Value::Array(Some(vec![])),
        Value::Array(Some(vec![])),
    ])));
    bytes.extend(wire(&Value::Array(Some((1..=n + 1).rev().map(entry).collect()))));
    bytes
}

#[test]
fn a_big_snapshot_comes_a_slice_a_turn_and_what_follows_waits_for_it() {
    let t = Instant::now();
    let mut c = Cluster::with_node(cfg(None), "n1".into(), t);
    subscribed(&mut c, t);
    c.sync(&[], ("", 0), t);
    sent(&mut c, LinkId::Cmd);
    // An event after the snapshot's position, read before the snapshot.
    let n = (2 * sync::SLICE + sync::SLICE / 2) as u64;
    c.on_bytes(LinkId::Sub, &channel(&format!("M 11 {} 1700000000000 n2 1.1 ann after", n + 1)), t);
    for piece in big_sync_reply(10, n).chunks(1000) {
        c.on_bytes(LinkId::Cmd, piece, t);
    }
    let mut ids = Vec::new();
    let mut turns = Vec::new();
    for _ in 0..5 {
        let got = events(&mut c);
        let mut kinds = Vec::new();
        for e in got {
            match e {
                Event::Synced { snapshot, more, .. } => {
                    assert!(more);
                    ids.extend(snapshot.messages.iter().map(|m| m.id));
                    kinds.push(format!("synced {}", snapshot.messages.len()));
                }
                Event::SyncedMore { messages, last } => {
                    ids.extend(messages.iter().map(|m| m.id));
                    kinds.push(format!("more {} {last}", messages.len()));
                }
                Event::Message { msg, .. } => kinds.push(format!("message {}", msg.id)),
                e => panic!("unexpected {e:?}"),
            }
        }
        // In sync once the last slice is out: /healthz waits for the whole history.
        turns.push((kinds.join(", "), c.is_up(), c.has_events()));
        c.flush(t);
    }
    let s = |k: &str, up, more| (k.to_owned(), up, more);
    assert_eq!(
        turns,
        [
            s("synced 500", false, true),
            s("more 500 false", false, true),
            s("more 250 true, message 1251", true, false),
            s("", true, false),
            s("", true, false),
        ]
    );
    assert_eq!(ids, (1..=n).collect::<Vec<_>>(), "oldest first, each once");
}

#[test]
fn a_reply_still_arriving_is_not_late_but_five_silent_seconds_are() {
    let t = Instant::now();
    let s = Duration::from_secs;
    let mut c = Cluster::with_node(cfg(None), "n1".into(), t);
    subscribed(&mut c, t);
    c.sync(&[], ("", 0), t);
    sent(&mut c, LinkId::Cmd);
    let reply = big_sync_reply(10, 100);
    let pieces: Vec<&[u8]> = reply.chunks(reply.len() / 4 + 1).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let at = t + s(3 * i as u64 + 3);
        c.on_timeout(at);
        assert_eq!(c.poll_io(), None, "dropped while the reply was arriving (piece {i})");
        c.on_bytes(LinkId::Cmd, piece, at);
    }
    assert!(c.is_up(), "12 s for the whole reply, never 5 s without a byte");
    events(&mut c);
    let heard = t + s(12);
    c.on_timeout(heard + s(2));
    assert!(sent(&mut c, LinkId::Cmd).contains("skiff_heartbeat"));
    c.on_timeout(heard + s(7));
    assert_eq!(c.poll_io(), Some(Io::Close), "its reply never came");
}
