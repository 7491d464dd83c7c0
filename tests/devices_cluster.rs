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
use tungstenite::Message;

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

/// Reads up to the server's close frame: its code and reason.
fn close_of(ws: &mut Ws) -> (u16, String) {
    for _ in 0..10_000 {
        match ws.ws.read() {
            Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
            Ok(Message::Close(None)) => return (1005, String::new()),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
    panic!("no close frame in 10000 frames");
}

/// Nothing arrives within a short wait.
fn quiet(ws: &mut Ws) -> bool {
    ws.set_timeout(Duration::from_millis(400));
    let r = loop {
        match ws.ws.read() {
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(m) => break Some(m),
            Err(_) => break None,
        }
    };
    ws.set_timeout(IO_TIMEOUT);
    r.is_none()
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
        assert_eq!(close_of(ws), (1000, "logged out".into()));
    }
    assert_eq!(b.recv(), json!({"event": "leave", "username": "amy"}));
    assert!(quiet(&mut b), "one leave for three sockets on two nodes");
    assert_eq!(n2.get("/api/user/@me", Some(&phone)).status, 200, "only the laptop's session ended");

    let tablet = n1.login(&key);
    let mut socks = vec![v2(&n1, &phone), v2(&n2, &phone)];
    assert_eq!(b.recv(), json!({"event": "join", "username": "amy"}));
    assert_eq!(n2.get("/api/logout", Some(&tablet)).status, 200);
    for ws in &mut socks {
        assert_eq!(close_of(ws), (1000, "logged out".into()));
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
        assert_eq!(close_of(ws), (1000, "kicked".into()));
    }

    let mut socks = vec![v2(&n1, &laptop), v2(&n2, &phone)];
    ctl(&n2, &["ban", "amy", "--reason", "spam"]);
    for ws in &mut socks {
        assert_eq!(close_of(ws), (1008, "banned: spam".into()));
    }
    ctl(&n1, &["unban", "amy"]);

    let (laptop, phone) = (n1.login(&key), n2.login(&key));
    let mut socks = vec![v2(&n1, &laptop), v2(&n2, &phone)];
    ctl(&n1, &["reset-key", "amy"]);
    for ws in &mut socks {
        assert_eq!(close_of(ws), (1008, "key reset".into()));
    }
}
