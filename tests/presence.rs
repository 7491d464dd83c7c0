//! Batched presence (issue 34): `/ws?v=2&presence=batch` hears joins and leaves as
//! at most one diff per interval, `presence=count` as an online count when it moved;
//! plain `/ws` and v2 without the option hear one event each, as before. A real
//! server on loopback, real sockets.

mod common;
#[path = "common/raw.rs"]
mod raw;
#[path = "common/upgrade.rs"]
mod upgrade;

use common::*;
use raw::Raw;
use serde_json::Value;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// Logged-in cookies for `n` users named `{prefix}{i}`.
fn cookies(srv: &Server, prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| srv.user(&format!("{prefix}{i}"))).collect()
}

/// Opens a plain `/ws` for each cookie, every upgrade written before any answer is
/// read: the joins reach the server within microseconds of each other, well inside
/// one presence interval. The sockets are never read; dropping them is the leaves.
fn quick_joins(srv: &Server, cookies: &[String]) -> Vec<TcpStream> {
    let mut socks: Vec<TcpStream> = cookies.iter().map(|_| srv.connect()).collect();
    for (s, c) in socks.iter_mut().zip(cookies) {
        let head = format!(
            "GET /ws HTTP/1.1\r\nHost: t\r\nCookie: {c}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
    }
    socks
}

fn presence_frames(r: &Raw) -> Vec<&Value> {
    r.texts.iter().filter(|v| v["event"] == "presence").collect()
}

fn names(frames: &[&Value], key: &str) -> usize {
    frames.iter().map(|f| f[key].as_array().map_or(0, Vec::len)).sum()
}

/// Polls for a while longer: whatever else was coming has arrived.
fn settle(r: &mut Raw) {
    r.poll_until(Duration::from_millis(600), |_| false);
}

#[test]
fn a_batch_client_gets_one_frame_for_twenty_quick_joins_and_one_for_their_leaves() {
    let srv = Server::start();
    let mut batch = Raw::open(&srv, &srv.user("watcher"), "/ws?v=2&presence=batch");
    let mut each_v2 = Raw::open(&srv, &srv.user("eachv2"), "/ws?v=2");
    let mut plain = Raw::open(&srv, &srv.user("plain"), "/ws");
    let mut plain_opt = Raw::open(&srv, &srv.user("plainopt"), "/ws?presence=batch");
    assert!(batch.poll_until(WAIT, |r| r.events("hello") == 1));
    let hello = &batch.texts[0];
    assert!(hello["online"].as_array().unwrap().iter().any(|n| n == "watcher"), "{hello}");
    // The three others' joins come first, in a diff of their own.
    assert!(batch.poll_until(WAIT, |r| names(&presence_frames(r), "join") >= 3), "{:?}", batch.texts);
    settle(&mut batch);
    batch.texts.clear();

    let crowd = cookies(&srv, "q", 20);
    let socks = quick_joins(&srv, &crowd);
    assert!(batch.poll_until(WAIT, |r| names(&presence_frames(r), "join") >= 20), "{:?}", batch.texts);
    settle(&mut batch);
    let frames = presence_frames(&batch);
    assert_eq!(frames.len(), 1, "one diff for the whole storm: {frames:?}");
    assert_eq!(frames[0]["leave"], serde_json::json!([]));
    assert_eq!(batch.events("join"), 0, "no single join events for a batch client");

    // The others hear each join on its own, as before.
    for r in [&mut each_v2, &mut plain, &mut plain_opt] {
        let crowd_joins = |r: &Raw| {
            r.texts
                .iter()
                .filter(|v| v["event"] == "join" && v["username"].as_str().is_some_and(|n| n.starts_with('q')))
                .count()
        };
        assert!(r.poll_until(WAIT, |r| crowd_joins(r) == 20), "{:?}", r.texts);
        assert_eq!(r.events("presence"), 0);
    }

    drop(socks);
    assert!(batch.poll_until(WAIT, |r| names(&presence_frames(r), "leave") >= 20), "{:?}", batch.texts);
    settle(&mut batch);
    let frames = presence_frames(&batch);
    assert_eq!(frames.len(), 2, "one more diff for all the leaves: {frames:?}");
    assert_eq!(batch.events("leave"), 0);
    for r in [&mut each_v2, &mut plain, &mut plain_opt] {
        assert!(r.poll_until(WAIT, |r| r.events("leave") >= 20), "{:?}", r.texts);
    }
}

#[test]
fn a_count_client_hears_the_count_only_when_it_moved() {
    let srv = Server::start();
    let mut counter = Raw::open(&srv, &srv.user("counter"), "/ws?v=2&presence=count");
    let mut talker = Raw::open(&srv, &srv.user("talker"), "/ws?v=2");
    let crowd = cookies(&srv, "c", 3);
    let mut socks = quick_joins(&srv, &crowd);
    let online = |r: &Raw| presence_frames(r).last().map(|f| f["online"].clone());
    assert!(counter.poll_until(WAIT, |r| online(r) == Some(serde_json::json!(5))), "{:?}", counter.texts);
    talker.say("hello");
    assert!(counter.poll_until(WAIT, |r| r.messages().contains(&"hello".to_owned())));
    settle(&mut counter);
    let frames = presence_frames(&counter).len();
    assert!(frames <= 2, "a count per interval at most, and none without a change: {:?}", counter.texts);
    assert_eq!(counter.events("join"), 0);
    socks.pop();
    assert!(counter.poll_until(WAIT, |r| online(r) == Some(serde_json::json!(4))), "{:?}", counter.texts);
    settle(&mut counter);
    assert_eq!(presence_frames(&counter).len(), frames + 1);
    assert_eq!(counter.events("leave"), 0);
}

#[test]
fn an_unknown_presence_value_is_400_invalid_query() {
    let srv = Server::start();
    let cookie = srv.user("ann");
    for q in ["all", "", "BATCH"] {
        let r = srv.get(&format!("/ws?v=2&presence={q}"), Some(&cookie));
        assert_eq!((r.status, r.error()), (400, "invalid_query".to_owned()), "presence={q}");
    }
}

#[test]
fn a_batch_subscription_survives_a_hand_over() {
    let (srv, _exe) = upgrade::start_copy(&[]);
    let mut batch = Raw::open(&srv, &srv.user("watcher"), "/ws?v=2&presence=batch");
    assert!(batch.poll_until(WAIT, |r| r.events("hello") == 1));
    let crowd = cookies(&srv, "h", 5);
    upgrade::usr2(&srv);
    upgrade::wait_log(&srv, "hand-over done");
    let _socks = quick_joins(&srv, &crowd);
    assert!(batch.poll_until(WAIT, |r| names(&presence_frames(r), "join") >= 5), "{:?}", batch.texts);
    settle(&mut batch);
    assert_eq!(batch.events("join"), 0, "still batched after the exec: {:?}", batch.texts);
    assert_eq!(presence_frames(&batch).len(), 1);
    assert!(batch.closed.is_none());
}

/// A crowd of batch clients arriving within one interval, some leaving again: each
/// one's hello list with the diffs applied as set operations is the room as it is.
#[test]
fn every_batch_client_ends_with_the_room_as_it_is() {
    let srv = Server::start();
    let crowd = cookies(&srv, "b", 25);
    let mut clients: Vec<Raw> = crowd.iter().map(|c| Raw::open(&srv, c, "/ws?v=2&presence=batch")).collect();
    let gone: Vec<Raw> = clients.drain(20..).collect();
    drop(gone);
    let expected: std::collections::BTreeSet<String> = (0..20).map(|i| format!("b{i}")).collect();
    for (i, r) in clients.iter_mut().enumerate() {
        let view = |r: &Raw| {
            let mut view = std::collections::BTreeSet::new();
            for v in &r.texts {
                let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();
                if v["event"] == "hello" {
                    view.extend(list("online").iter().filter_map(|n| n.as_str().map(str::to_owned)));
                } else if v["event"] == "presence" {
                    view.extend(list("join").iter().filter_map(|n| n.as_str().map(str::to_owned)));
                    for n in list("leave") {
                        view.remove(n.as_str().unwrap());
                    }
                }
            }
            view
        };
        assert!(r.poll_until(WAIT, |r| view(r) == expected), "client b{i}: {:?} from {:?}", view(r), r.texts);
        assert_eq!(r.events("join") + r.events("leave"), 0);
    }
}
