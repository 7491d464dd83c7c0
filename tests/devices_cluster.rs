//! Several devices per user across a cluster (CONTRACT.md, "Several devices" and
//! "Cluster mode"): two skiff nodes on one real redis-server, real WebSocket
//! clients. A user's devices on different nodes, each perhaps with its own session,
//! are one user: a logout, a kick, a ban or a key reset on any node closes all of
//! them with the words a single node uses, and `--max-devices` counts the user's
//! sockets on every node.

mod common;
#[path = "common/redis.rs"]
mod redis;

use common::*;
use redis::Redis;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

fn nodes(test: &str, extra: &[&str]) -> Option<(Redis, Server, Server)> {
    let redis = Redis::start_or_skip(test)?;
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str()];
    args.extend_from_slice(extra);
    let (n1, n2) = (Server::start_with(&args), Server::start_with(&args));
    for n in [&n1, &n2] {
        let up = wait_for(Duration::from_secs(10), || n.get("/healthz", None).status == 200);
        assert!(up, "a node never reached Redis");
    }
    Some((redis, n1, n2))
}

fn v2(srv: &Server, cookie: &str) -> Ws {
    let mut ws = srv.try_ws_at("/ws?v=2", cookie).expect("v2 upgrade");
    let hello = ws.recv();
    assert_eq!(hello["event"], "hello", "{hello}");
    ws
}

/// `skiff ctl` through `srv`'s control socket.
fn ctl(srv: &Server, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .arg("ctl")
        .arg("--control")
        .arg(srv.db_path().with_extension("db.ctl"))
        .args(args)
        .arg("--json")
        .env_remove("SKIFF_CONTROL")
        .output()
        .unwrap();
    assert!(out.status.success(), "ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_logout_on_any_node_closes_every_device_of_the_user_on_every_node() {
    let Some((_redis, n1, n2)) = nodes("logout_on_any_node", &[]) else { return };
    let bob = n2.user("bob");
    let key = n1.register("amy");
    // Three sessions: the laptop's is used on n1 only, the phone's on n2 only, and
    // the tablet's is logged out through n2, which holds none of amy's sockets on it.
    let (laptop, phone) = (n1.login(&key), n2.login(&key));
    let mut b = v2(&n2, &bob);
    let mut socks = vec![v2(&n1, &laptop), v2(&n1, &laptop), v2(&n2, &phone)];
    assert_eq!(b.recv(), json!({"event": "join", "username": "amy"}));
    assert_eq!(n1.get("/api/logout", Some(&laptop)).status, 200);
    for ws in &mut socks {
        assert_eq!(ws.close_frame(), (1000, "logged out".into()));
    }
    assert_eq!(b.recv(), json!({"event": "leave", "username": "amy"}));
    assert!(b.quiet(), "one leave for three sockets on two nodes");
    assert_eq!(n2.get("/api/user/@me", Some(&phone)).status, 200, "only the laptop's session ended");

    let tablet = n1.login(&key);
    let mut socks = vec![v2(&n1, &phone), v2(&n2, &phone)];
    assert_eq!(b.recv(), json!({"event": "join", "username": "amy"}));
    assert_eq!(n2.get("/api/logout", Some(&tablet)).status, 200);
    for ws in &mut socks {
        assert_eq!(ws.close_frame(), (1000, "logged out".into()));
    }
    assert_eq!(b.recv(), json!({"event": "leave", "username": "amy"}));
}

#[test]
fn kick_ban_and_reset_key_close_every_device_of_the_user_on_every_node() {
    let Some((_redis, n1, n2)) = nodes("moderation_on_every_node", &[]) else { return };
    let key = n1.register("amy");
    let (laptop, phone) = (n1.login(&key), n2.login(&key));

    let mut socks = vec![v2(&n1, &laptop), v2(&n2, &phone), v2(&n2, &laptop)];
    ctl(&n1, &["kick", "amy"]);
    for ws in &mut socks {
        assert_eq!(ws.close_frame(), (1000, "kicked".into()));
    }

    let mut socks = vec![v2(&n1, &laptop), v2(&n2, &phone)];
    ctl(&n2, &["ban", "amy", "--reason", "spam"]);
    for ws in &mut socks {
        assert_eq!(ws.close_frame(), (1008, "banned: spam".into()));
    }
    ctl(&n1, &["unban", "amy"]);

    let (laptop, phone) = (n1.login(&key), n2.login(&key));
    let mut socks = vec![v2(&n1, &laptop), v2(&n2, &phone)];
    ctl(&n1, &["reset-key", "amy"]);
    for ws in &mut socks {
        assert_eq!(ws.close_frame(), (1008, "key reset".into()));
    }
}

#[test]
fn the_device_cap_counts_the_user_s_sockets_on_every_node() {
    let Some((_redis, n1, n2)) = nodes("device_cap_on_every_node", &["--max-devices", "5"]) else { return };
    let key = n1.register("amy");
    let (laptop, phone) = (n1.login(&key), n2.login(&key));
    // Five devices, three on n1 and two on n2.
    let mut on1 = vec![v2(&n1, &laptop), v2(&n1, &laptop), v2(&n1, &phone)];
    let mut on2 = vec![v2(&n2, &phone), v2(&n2, &laptop)];
    // A sixth, on a node that holds some already (answered there, at once) and
    // again on the other.
    for n in [&n1, &n2, &n1, &n2] {
        refused_past_the_cap(n, &phone);
    }
    // One closes on n2: a place is free again on either node.
    drop(on2.pop());
    let got = wait_for(Duration::from_secs(5), || match n1.try_ws_at("/ws?v=2", &phone) {
        Ok(mut ws) => {
            assert_eq!(ws.recv()["event"], "hello");
            on1.push(ws);
            true
        }
        Err(_) => false,
    });
    assert!(got, "the place freed on n2 never counted on n1");
    refused_past_the_cap(&n2, &laptop);

    // All five on n1: the first on n2 is refused by Redis, with the same code.
    drop(on2);
    on1.push(wait_open(&n1, &laptop));
    assert_eq!(on1.len(), 5);
    refused_past_the_cap(&n2, &laptop);

    // The plain /ws rule, across nodes: v2 sockets on n1 refuse a plain one on n2.
    assert_eq!(refused(n2.try_ws_at("/ws", &phone)), (409, "already_connected".into()));
    drop(on1);
    let _plain = wait_open_at(&n1, "/ws", &laptop);
    assert_eq!(refused(n2.try_ws_at("/ws?v=2", &phone)), (409, "already_connected".into()));
}

/// A sixth device is refused with 409 `too_many_devices`. The count of another
/// node's sockets reaches this one a moment after they open: a device let in
/// within that moment is closed as soon as Redis has counted it (1008), and the
/// next try is refused.
fn refused_past_the_cap(srv: &Server, cookie: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match srv.try_ws_at("/ws?v=2", cookie) {
            Ok(mut ws) => assert_eq!(ws.close_frame(), (1008, "too many devices".into()), "a sixth device stayed"),
            r => return assert_eq!(refused(r), (409, "too_many_devices".into())),
        }
        assert!(std::time::Instant::now() < deadline, "a sixth device was let in again and again");
    }
}

/// A v2 socket, once a place is free (a close takes a moment to reach Redis and
/// the other node).
fn wait_open(srv: &Server, cookie: &str) -> Ws {
    let ws = wait_open_at(srv, "/ws?v=2", cookie);
    let mut ws = ws;
    assert_eq!(ws.recv()["event"], "hello");
    ws
}

fn wait_open_at(srv: &Server, path: &str, cookie: &str) -> Ws {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match srv.try_ws_at(path, cookie) {
            Ok(ws) => return ws,
            Err(e) if std::time::Instant::now() > deadline => panic!("{path} never opened: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
