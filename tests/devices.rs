//! Several devices per user (CONTRACT.md, "Protocol v2", "Several devices"): real
//! skiff processes, real sockets. Presence counts a user once, a message reaches the
//! sender's other devices while only the sending socket is acked, the device cap and
//! the plain `/ws` rule answer 409, and logout closes every device with its reason.

mod common;
#[path = "common/redis.rs"]
mod redis;

use common::*;
use redis::Redis;
use serde_json::{json, Value};
use std::time::Duration;

/// A v2 socket, its hello read and returned.
fn v2(srv: &Server, cookie: &str) -> (Ws, Value) {
    let mut ws = srv.try_ws_at("/ws?v=2", cookie).expect("v2 upgrade");
    let hello = ws.recv();
    assert_eq!(hello["event"], "hello", "{hello}");
    (ws, hello)
}

fn online(srv: &Server, cookie: &str) -> Value {
    srv.get("/api/online", Some(cookie)).json()["online_clients"].clone()
}

#[test]
fn two_devices_of_one_user_are_online_once_and_hear_each_other() {
    let srv = Server::start();
    let bob = srv.user("bob");
    let key = srv.register("amy");
    let laptop = srv.login(&key);
    let phone = srv.login(&key);
    let (mut b, _) = v2(&srv, &bob);
    let (mut tab1, _) = v2(&srv, &laptop);
    assert_eq!(b.recv(), json!({"event": "join", "username": "amy"}));
    let (mut tab2, _) = v2(&srv, &laptop);
    let (mut ph, hello) = v2(&srv, &phone);
    assert_eq!(hello["online"], json!(["bob", "amy"]), "the hello lists amy once");
    assert_eq!(online(&srv, &bob), json!(["bob", "amy"]));
    assert!(b.quiet(), "no second join for amy's other devices");
    assert!(tab1.quiet(), "amy's own devices hear no join of hers");

    tab1.say("from the laptop");
    let ack = tab1.recv();
    assert_eq!(ack["status"], true, "{ack}");
    let id = ack["id"].as_u64().expect("a v2 ack carries the id");
    for ws in [&mut tab2, &mut ph, &mut b] {
        let m = ws.recv();
        assert_eq!(
            (m["id"].as_u64(), &m["message"], &m["author"]),
            (Some(id), &json!("from the laptop"), &json!("amy"))
        );
        assert!(m.get("status").is_none(), "the other devices get the message, not an ack");
    }
    assert!(tab1.quiet(), "the sending socket gets the ack only");

    drop(tab1);
    drop(tab2);
    assert!(b.quiet(), "amy is still on her phone: no leave");
    assert_eq!(online(&srv, &bob), json!(["bob", "amy"]));
    drop(ph);
    assert_eq!(b.recv(), json!({"event": "leave", "username": "amy"}));
    assert_eq!(online(&srv, &bob), json!(["bob"]));
}

#[test]
fn past_max_devices_v2_answers_409_too_many_devices() {
    let srv = Server::start();
    let amy = srv.user("amy");
    let mut open: Vec<Ws> = (0..5).map(|_| v2(&srv, &amy).0).collect();
    assert_eq!(refused(srv.try_ws_at("/ws?v=2", &amy)), (409, "too_many_devices".into()));
    drop(open.pop());
    assert!(wait_for(Duration::from_secs(5), || srv.try_ws_at("/ws?v=2", &amy).map(|ws| open.push(ws)).is_ok()));

    let small = Server::start_with(&["--max-devices", "2"]);
    let bob = small.user("bob");
    let _two = [v2(&small, &bob).0, v2(&small, &bob).0];
    assert_eq!(refused(small.try_ws_at("/ws?v=2", &bob)), (409, "too_many_devices".into()));
}

#[test]
fn a_plain_ws_socket_blocks_v2_ones_and_v2_blocks_plain_ws() {
    let srv = Server::start();
    let amy = srv.user("amy");
    let v1 = srv.ws(&amy);
    assert_eq!(refused(srv.try_ws_at("/ws?v=2", &amy)), (409, "already_connected".into()));
    assert_eq!(refused(srv.try_ws(&amy)), (409, "already_connected".into()));
    drop(v1);
    let (_v2, _) = (0..50)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            srv.try_ws_at("/ws?v=2", &amy).ok().map(|mut ws| (ws.recv(), ws)).map(|(h, ws)| (ws, h))
        })
        .expect("v2 once the plain socket is gone");
    let (_second, _) = v2(&srv, &amy);
    assert_eq!(refused(srv.try_ws(&amy)), (409, "already_connected".into()), "two v2 sockets block plain /ws");
}

#[test]
fn logout_on_one_device_closes_every_device_with_1000_logged_out() {
    let srv = Server::start();
    let bob = srv.user("bob");
    let key = srv.register("amy");
    let laptop = srv.login(&key);
    let phone = srv.login(&key);
    let (mut b, _) = v2(&srv, &bob);
    let mut socks = vec![v2(&srv, &laptop).0, v2(&srv, &laptop).0, v2(&srv, &phone).0];
    assert_eq!(b.recv(), json!({"event": "join", "username": "amy"}));
    assert_eq!(srv.get("/api/logout", Some(&laptop)).status, 200);
    for ws in &mut socks {
        assert_eq!(ws.close_frame(), (1000, "logged out".into()));
    }
    assert_eq!(b.recv(), json!({"event": "leave", "username": "amy"}));
    assert!(b.quiet(), "one leave for three sockets");
    assert_eq!(srv.get("/api/user/@me", Some(&laptop)).status, 401);
}

#[test]
fn cluster_one_user_with_two_devices_on_a_node_is_online_once_on_every_node() {
    let Some(redis) = Redis::start_or_skip("cluster_one_user_with_two_devices") else { return };
    let url = redis.url();
    let n1 = Server::start_with(&["--redis", &url]);
    let n2 = Server::start_with(&["--redis", &url]);
    for n in [&n1, &n2] {
        let up = wait_for(Duration::from_secs(10), || n.get("/healthz", None).status == 200);
        assert!(up, "a node never reached Redis");
    }
    let bob = n2.user("bob");
    let amy = n1.user("amy");
    let (mut b, _) = v2(&n2, &bob);
    let (mut a1, _) = v2(&n1, &amy);
    assert_eq!(b.recv(), json!({"event": "join", "username": "amy"}));
    let (mut a2, hello) = v2(&n1, &amy);
    assert_eq!(hello["online"], json!(["bob", "amy"]));
    assert!(b.quiet(), "no second join");
    a1.say("hello from one");
    assert_eq!(a1.recv()["status"], true);
    assert_eq!(a2.recv()["message"], "hello from one");
    assert_eq!(b.recv()["message"], "hello from one");
    drop(a1);
    assert!(b.quiet());
    assert_eq!(online(&n2, &bob), json!(["bob", "amy"]));
    drop(a2);
    assert_eq!(b.recv(), json!({"event": "leave", "username": "amy"}));
}

#[test]
fn cluster_one_user_on_two_nodes_joins_once_hears_herself_and_leaves_with_her_last_device() {
    let Some(redis) = Redis::start_or_skip("cluster_one_user_on_two_nodes") else { return };
    let url = redis.url();
    let n1 = Server::start_with(&["--redis", &url]);
    let n2 = Server::start_with(&["--redis", &url]);
    for n in [&n1, &n2] {
        let up = wait_for(Duration::from_secs(10), || n.get("/healthz", None).status == 200);
        assert!(up, "a node never reached Redis");
    }
    let bob = n2.user("bob");
    let key = n1.register("amy");
    let (laptop, phone) = (n1.login(&key), n2.login(&key));
    let (mut b, _) = v2(&n2, &bob);
    let (mut on1, _) = v2(&n1, &laptop);
    assert_eq!(b.recv(), json!({"event": "join", "username": "amy"}));
    let (mut on2, hello) = v2(&n2, &phone);
    assert_eq!(hello["online"], json!(["bob", "amy"]), "amy once, on the second node too");
    assert!(b.quiet(), "no second join from the other node");
    assert_eq!(online(&n1, &laptop), json!(["bob", "amy"]));

    on1.say("from node one");
    assert_eq!(on1.recv()["status"], true);
    let m = on2.recv();
    assert_eq!((&m["message"], &m["author"]), (&json!("from node one"), &json!("amy")));
    assert_eq!(b.recv()["message"], "from node one");
    on2.say("from node two");
    assert_eq!(on2.recv()["status"], true);
    assert_eq!(on1.recv()["message"], "from node two");
    assert_eq!(b.recv()["message"], "from node two");

    drop(on1);
    assert!(b.quiet(), "her phone on node two is still open: no leave");
    assert_eq!(online(&n1, &laptop), json!(["bob", "amy"]));
    drop(on2);
    assert_eq!(b.recv(), json!({"event": "leave", "username": "amy"}));

    // A plain /ws socket is its user's only one, across nodes too.
    let _plain = n1.ws(&laptop);
    assert_eq!(b.recv(), json!({"event": "join", "username": "amy"}));
    assert_eq!(refused(n2.try_ws_at("/ws?v=2", &phone)), (409, "already_connected".into()));
}
