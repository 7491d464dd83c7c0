//! `skiff ctl` in cluster mode: three nodes on one real redis-server. Each command,
//! given to one node, acts on sockets held by another (a ban on n1 closes the socket
//! on n3), and `backup` names Redis's own persistence.

mod common;
#[path = "common/redis.rs"]
mod redis;

use common::{read_response, wait_for, Resp, Ws, IO_TIMEOUT};
use redis::Redis;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;

struct Node {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Node {
    fn start(redis: &Redis) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["--listen", "127.0.0.1:0", "--redis", &redis.url(), "--db"])
            .arg(dir.path().join("chat.db"))
            .env("RUST_LOG", "debug")
            .env_remove("SKIFF_CONTROL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on http://").expect("listening line").parse().unwrap();
        let node = Node { child, addr, dir };
        let up = wait_for(Duration::from_secs(10), || node.request("GET", "/healthz", None, None).status == 200);
        assert!(up, "node never healthy");
        node
    }

    fn control(&self) -> PathBuf {
        self.dir.path().join("chat.db.ctl")
    }

    fn ctl_out(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_skiff"))
            .arg("ctl")
            .arg("--control")
            .arg(self.control())
            .args(args)
            .output()
            .unwrap()
    }

    fn ctl(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ctl_out(&all);
        assert!(out.status.success(), "ctl {args:?}: {}", String::from_utf8_lossy(&out.stdout));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn ctl_fails(&self, args: &[&str]) -> String {
        let out = self.ctl_out(args);
        assert_eq!(out.status.code(), Some(1), "ctl {args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(err.lines().count(), 1, "{err}");
        err
    }

    fn request(&self, method: &str, path: &str, cookie: Option<&str>, body: Option<&str>) -> Resp {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
        if let Some(c) = cookie {
            req.push_str(&format!("Cookie: {c}\r\n"));
        }
        match body {
            Some(b) => req.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len())),
            None => req.push_str("\r\n"),
        }
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        read_response(&mut s).expect("a response")
    }

    fn register(&self, name: &str) -> Resp {
        self.request("POST", "/api/register", None, Some(&json!({ "username": name }).to_string()))
    }

    fn key(&self, name: &str) -> String {
        let r = self.register(name);
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["key"].as_str().unwrap().to_owned()
    }

    fn login(&self, key: &str) -> Resp {
        self.request("POST", "/api/login", None, Some(&json!({ "key": key }).to_string()))
    }

    fn cookie(&self, key: &str) -> String {
        self.login(key).cookie().expect("a session")
    }

    fn ws(&self, cookie: &str, path: &str) -> Ws {
        let mut req = format!("ws://{}{path}", self.addr).into_client_request().unwrap();
        req.headers_mut().insert("Cookie", cookie.parse().unwrap());
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        match tungstenite::client(req, MaybeTlsStream::Plain(s)) {
            Ok((ws, _)) => Ws { ws },
            Err(e) => panic!("upgrade: {e:?}"),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default());
        }
    }
}

fn until(ws: &mut Ws, want: Value) {
    ws.recv_until(|v| *v == want);
}

#[test]
fn every_command_acts_cluster_wide_from_any_node() {
    let Some(redis) = Redis::start_or_skip("every_command_acts_cluster_wide_from_any_node") else { return };
    let (n1, n2, n3) = (Node::start(&redis), Node::start(&redis), Node::start(&redis));
    let amy_key = n1.key("amy");
    let bob_key = n2.key("bob");
    let carl_key = n3.key("carl");
    let mut bob = n2.ws(&n2.cookie(&bob_key), "/ws?v=2");
    let mut amy = n3.ws(&n3.cookie(&amy_key), "/ws?v=2");
    let mut carl = n1.ws(&n1.cookie(&carl_key), "/ws");
    until(&mut bob, json!({"event": "join", "username": "carl"}));

    let s = n1.ctl(&["status"]);
    assert_eq!((s["users"].as_i64(), s["online"].as_i64(), s["cluster"].as_str()), (Some(3), Some(3), Some("up")));
    let u = n2.ctl(&["users"]);
    let names: Vec<(&str, bool)> =
        u["users"].as_array().unwrap().iter().map(|r| (r["name"].as_str().unwrap(), r["online"] == true)).collect();
    assert_eq!(names, [("amy", true), ("bob", true), ("carl", true)]);

    // delete-message on n2: both v2 clients hear of it, history on n1 loses it.
    amy.say("first");
    amy.say("second");
    until(&mut amy, json!({"status": true, "id": 2}));
    bob.recv_until(|v| v["id"] == 2 && v.get("message").is_some());
    assert_eq!(n2.ctl(&["delete-message", "1"])["id"], 1);
    until(&mut bob, json!({"event": "delete", "id": 1}));
    until(&mut amy, json!({"event": "delete", "id": 1}));
    let carl_cookie = n1.cookie(&carl_key);
    let ids = |node: &Node| -> Vec<u64> {
        let r = node.request("GET", "/api/history", Some(&carl_cookie), None);
        r.json()["messages"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect()
    };
    assert!(wait_for(Duration::from_secs(5), || ids(&n1) == [2]), "n1's history: {:?}", ids(&n1));
    assert!(n3.ctl_fails(&["delete-message", "1"]).contains("no message 1"));

    // kick from n2 of carl, whose socket is on n1.
    n2.ctl(&["kick", "carl"]);
    assert_eq!(carl.close_code(), Some(1000));
    until(&mut bob, json!({"event": "leave", "username": "carl"}));
    assert!(n3.ctl_fails(&["kick", "carl"]).contains("has no open WebSocket"));
    assert!(n3.ctl_fails(&["kick", "zed"]).contains("no user named zed"));

    // ban from n1 of amy, whose socket is on n3.
    let v = n1.ctl(&["ban", "AMY", "--reason", "spam"]);
    assert_eq!(v["name"], "amy");
    assert_eq!(amy.close_code(), Some(1008));
    until(&mut bob, json!({"event": "leave", "username": "amy"}));
    let r = n2.login(&amy_key);
    assert_eq!((r.status, r.error()), (403, "banned".to_owned()));
    assert_eq!(n3.register("Amy").status, 409, "the name stays taken");
    assert_eq!(n2.ctl(&["users"])["users"][0]["banned"], true);
    assert_eq!(n3.ctl(&["unban", "amy"])["was_banned"], true);
    assert_eq!(n1.login(&amy_key).status, 200);

    // reset-key from n3 of bob, whose socket is on n2.
    let v = n3.ctl(&["reset-key", "bob"]);
    let new_key = v["key"].as_str().unwrap().to_owned();
    assert_eq!(bob.close_code(), Some(1008));
    assert_eq!(n1.login(&bob_key).status, 401, "the old key stops working");
    assert_eq!(n1.login(&new_key).status, 200);

    // delete-user from n2, with amy's last message; the name is free on every node.
    let mut watch = n2.ws(&n2.cookie(&new_key), "/ws?v=2");
    let v = n2.ctl(&["delete-user", "amy", "--messages"]);
    assert_eq!(v["messages_deleted"], 1);
    until(&mut watch, json!({"event": "delete", "id": 2}));
    assert!(wait_for(Duration::from_secs(5), || ids(&n3).is_empty()));
    assert_eq!(n1.login(&amy_key).status, 401);
    assert_eq!(n3.register("amy").status, 201);

    // backup: Redis's persistence is the backup.
    let err = n1.ctl_fails(&["backup", "/tmp/never-written.db"]);
    assert!(err.contains("Redis") && err.contains("BGSAVE"), "{err}");
    let metrics = n1.request("GET", "/metrics", None, None).text();
    assert!(metrics.contains("skiff_moderation_total{action=\"ban\"} 1\n"), "{metrics}");
}
