//! Protocol v2 against the real binary: the hello, ids and times, resume after a
//! connection cut without a close, resync, `/api/history`, a restart, and v1 and v2
//! clients in one room.

mod common;

use common::*;
use serde_json::{json, Value};

fn v2(srv: &Server, cookie: &str, query: &str) -> Ws {
    srv.try_ws_at(&format!("/ws?v=2{query}"), cookie).expect("v2 upgrade")
}

/// Reads frames until an ack; returns it (events and messages are skipped).
fn next_ack(ws: &mut Ws) -> Value {
    loop {
        let v = ws.recv();
        if v.get("status").is_some() {
            return v;
        }
    }
}

/// Reads frames until a chat message; returns it (acks and events are skipped).
fn next_message(ws: &mut Ws) -> Value {
    loop {
        let v = ws.recv();
        if v.get("message").is_some() {
            return v;
        }
    }
}

#[test]
fn a_v2_client_resumes_exactly_what_it_missed_then_goes_live() {
    let srv = Server::start();
    let (a, b) = (srv.user("alice"), srv.user("bob"));
    let mut wb = srv.ws(&b); // a v1 sender
    let mut wa = v2(&srv, &a, "");
    let hello = wa.recv();
    assert_eq!(hello["event"], "hello");
    assert_eq!(hello["online"], json!(["bob", "alice"]));
    let epoch = hello["epoch"].as_str().expect("epoch").to_owned();
    let last = hello["last_id"].as_u64().expect("last_id");
    assert_eq!(wb.recv(), json!({"event": "join", "username": "alice"}));
    wb.say("first");
    assert_eq!(wb.recv(), json!({"status": true}), "v1 acks are unchanged");
    let m = next_message(&mut wa);
    assert_eq!(
        (m["id"].as_u64(), m["message"].as_str(), m["author"].as_str()),
        (Some(last + 1), Some("first"), Some("bob"))
    );
    assert!(m["ts"].as_i64().is_some_and(|t| t > 1_700_000_000_000), "Unix ms: {m}");
    // The v2 client's own message: an ack with its id.
    wa.say("mine");
    assert_eq!(wa.recv(), json!({"status": true, "id": last + 2}));
    assert_eq!(wb.recv(), json!({"message": "mine", "author": "alice"}), "v1 receivers see v1 frames");
    // The TCP connection dies without a close frame.
    if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = wa.ws.get_mut() {
        let _ = tcp.shutdown(std::net::Shutdown::Both);
    }
    drop(wa);
    for i in 0..100 {
        wb.say(&format!("missed {i}"));
        assert_eq!(next_ack(&mut wb), json!({"status": true}));
    }
    let mut wa = v2(&srv, &a, &format!("&since={}&epoch={epoch}", last + 2));
    assert_eq!(wa.recv()["event"], "hello");
    for i in 0..100 {
        let m = wa.recv();
        assert_eq!(m["id"].as_u64(), Some(last + 3 + i), "{m}");
        assert_eq!(m["message"], format!("missed {i}"));
    }
    wb.say("live");
    let m = next_message(&mut wa);
    assert_eq!((m["id"].as_u64(), m["message"].as_str()), (Some(last + 103), Some("live")), "no gap, no duplicate");
}

#[test]
fn resync_when_the_epoch_is_wrong_or_the_history_is_gone_and_versions_are_checked() {
    let srv = Server::start_with(&["--history", "5"]);
    let (a, b) = (srv.user("alice"), srv.user("bob"));
    let mut wb = srv.ws(&b);
    for i in 0..10 {
        wb.say(&format!("m{i}"));
        assert_eq!(wb.recv(), json!({"status": true}));
    }
    let mut wa = v2(&srv, &a, "&since=2&epoch=nope");
    let hello = wa.recv();
    assert_eq!(wa.recv(), json!({"event": "resync"}), "another epoch");
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    assert_eq!(hello["last_id"], 10);
    drop(wa);
    let mut wa = v2(&srv, &a, &format!("&since=2&epoch={epoch}"));
    wa.recv();
    assert_eq!(wa.recv(), json!({"event": "resync"}), "message 3 is no longer kept");
    drop(wa);
    let mut wa = v2(&srv, &a, &format!("&since=5&epoch={epoch}"));
    wa.recv();
    assert_eq!(wa.recv()["id"], 6, "message 6 is the oldest kept: a full replay");
    drop(wa);
    for bad in ["/ws?v=3", "/ws?v=2&since=x"] {
        match srv.try_ws_at(bad, &a) {
            Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 400, "{bad}"),
            Err(e) => panic!("{bad}: {e}"),
            Ok(_) => panic!("{bad}: upgraded"),
        }
    }
    let raw =
        srv.raw(format!("GET /ws?v=3 HTTP/1.1\r\nHost: t\r\nCookie: {a}\r\nConnection: close\r\n\r\n").as_bytes());
    assert_eq!(raw.error(), "unsupported_version");
}

#[test]
fn history_pages_survive_a_restart_with_their_ids_and_epoch() {
    let srv = Server::start();
    let a = srv.user("alice");
    let mut wa = srv.ws(&a);
    for i in 0..7 {
        wa.say(&format!("h{i}"));
        assert_eq!(wa.recv(), json!({"status": true}));
    }
    let metrics = srv.get("/metrics", None).text();
    assert!(metrics.contains("\nskiff_history_messages 7\n"), "{metrics}");
    let page = srv.get("/api/history?limit=3", Some(&a)).json();
    let texts: Vec<&str> =
        page["messages"].as_array().unwrap().iter().map(|m| m["message"].as_str().unwrap()).collect();
    assert_eq!(texts, ["h4", "h5", "h6"]);
    let before = page["messages"][0]["id"].as_u64().unwrap();
    let older = srv.get(&format!("/api/history?limit=2&before={before}"), Some(&a)).json();
    let texts: Vec<&str> =
        older["messages"].as_array().unwrap().iter().map(|m| m["message"].as_str().unwrap()).collect();
    assert_eq!(texts, ["h2", "h3"]);
    assert_eq!(older["messages"][0]["author"], "alice");
    for bad in ["limit=0", "limit=501", "limit=x", "before=-1"] {
        assert_eq!(srv.get(&format!("/api/history?{bad}"), Some(&a)).error(), "invalid_query", "{bad}");
    }
    assert_eq!(srv.get("/api/history", None).status, 422);
    drop(wa);
    let srv = Server::start_in(srv.stop(), &[]);
    let after = srv.get("/api/history?limit=3", Some(&a)).json();
    assert_eq!(after, page, "ids, times, texts and epoch kept across a restart");
    let mut wa = v2(&srv, &a, "");
    let hello = wa.recv();
    assert_eq!((hello["epoch"].clone(), hello["last_id"].as_u64()), (page["epoch"].clone(), Some(before + 2)));
    wa.say("after");
    assert_eq!(wa.recv(), json!({"status": true, "id": before + 3}), "ids go on where they stopped");
}

#[test]
fn v1_and_v2_clients_in_one_room_see_the_same_order() {
    let srv = Server::start();
    let users: Vec<String> = (0..4).map(|i| srv.user(&format!("u{i}"))).collect();
    let mut socks: Vec<(Ws, bool)> = users
        .iter()
        .enumerate()
        .map(|(i, c)| if i % 2 == 0 { (srv.ws(c), false) } else { (v2(&srv, c, ""), true) })
        .collect();
    for (i, (ws, _)) in socks.iter_mut().enumerate() {
        for n in 0..5 {
            ws.say(&format!("{i}-{n}"));
        }
    }
    let mut orders = Vec::new();
    for (ws, _) in &mut socks {
        let mut seen = Vec::new();
        while seen.len() < 15 {
            let v = ws.recv();
            if let Some(m) = v.get("message") {
                seen.push(m.as_str().unwrap().to_owned());
            }
        }
        orders.push(seen);
    }
    // Each sees the 15 messages of the others; common messages in one order.
    for a in &orders {
        for b in &orders {
            let common: Vec<&String> = a.iter().filter(|m| b.contains(m)).collect();
            let common_b: Vec<&String> = b.iter().filter(|m| a.contains(m)).collect();
            assert_eq!(common, common_b);
        }
    }
}
