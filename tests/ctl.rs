//! `skiff ctl` against a real skiff (CONTRACT.md, "Operating"): every command's effect
//! as real HTTP and WebSocket clients see it, a ban under load, a backup taken during
//! floods and restored, and bad input refused with one line, exit 1, nothing changed.

mod common;
#[path = "common/redis.rs"]
mod redis;

use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn control(srv: &Server) -> PathBuf {
    srv.dir.path().join("chat.db.ctl")
}

fn ctl_at(path: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skiff"))
        .arg("ctl")
        .arg("--control")
        .arg(path)
        .args(args)
        .env_remove("SKIFF_CONTROL")
        .env_remove("SKIFF_DB")
        .output()
        .expect("run skiff ctl")
}

/// Runs `skiff ctl ARGS --json` and returns the answer; panics unless it exits 0.
fn ctl(srv: &Server, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = ctl_at(&control(srv), &all);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "skiff ctl {args:?}: {text} {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(&text).expect("one JSON answer");
    assert_eq!(v["ok"], true, "{v}");
    v
}

/// Runs `skiff ctl ARGS` expecting failure: exit 1 and exactly one line on stderr.
fn ctl_fails(path: &Path, args: &[&str]) -> String {
    let out = ctl_at(path, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "skiff ctl {args:?} should fail: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("Try ")).collect();
    assert_eq!(lines.len(), 1, "one line of reason for {args:?}: {err:?}");
    assert!(lines[0].starts_with("skiff ctl: "), "{err}");
    assert!(out.stdout.is_empty(), "nothing on stdout for {args:?}");
    lines[0].to_owned()
}

fn login_status(srv: &Server, key: &str) -> Resp {
    srv.post("/api/login", &format!(r#"{{"key": "{key}"}}"#), None)
}

fn me(srv: &Server, cookie: &str) -> u16 {
    srv.get("/api/user/@me", Some(cookie)).status
}

fn ws_v2(srv: &Server, cookie: &str, query: &str) -> Ws {
    let mut ws = srv.try_ws_at(&format!("/ws?v=2{query}"), cookie).expect("v2 upgrade");
    let hello = ws.recv();
    assert_eq!(hello["event"], "hello", "{hello}");
    ws
}

fn history_ids(srv: &Server, cookie: &str) -> Vec<u64> {
    let r = srv.get("/api/history?limit=500", Some(cookie));
    assert_eq!(r.status, 200);
    r.json()["messages"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect()
}

#[test]
fn status_and_users_show_what_the_clients_did() {
    let srv = Server::start();
    let path = control(&srv);
    let meta = std::fs::symlink_metadata(&path).expect("the control socket is beside the database");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "mode 0600");
    let amy = srv.user("amy");
    let _bob = srv.user("Bob");
    srv.register("carl");
    let _ws = srv.ws(&amy);
    let s = ctl(&srv, &["status"]);
    assert_eq!((s["users"].as_u64(), s["online"].as_u64(), s["sessions"].as_u64()), (Some(3), Some(1), Some(2)));
    assert_eq!(s["storage"], "ok");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["database_bytes"].as_u64().unwrap() > 0);
    let u = ctl(&srv, &["users"]);
    let rows: Vec<(&str, bool, u64)> = u["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["online"].as_bool().unwrap(), r["sessions"].as_u64().unwrap()))
        .collect();
    assert_eq!(rows, [("amy", true, 1), ("Bob", false, 1), ("carl", false, 0)]);
    let online = ctl(&srv, &["users", "--online"]);
    assert_eq!(online["users"].as_array().unwrap().len(), 1);
    let page = ctl(&srv, &["users", "--limit", "2"]);
    assert_eq!(page["next"], "Bob");
    let rest = ctl(&srv, &["users", "--after", "bob"]);
    assert_eq!(rest["users"][0]["name"], "carl");
    // Text output: a table, one line per user.
    let out = ctl_at(&control(&srv), &["users"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
    let uid = unsafe { libc::geteuid() };
    assert!(
        wait_for(Duration::from_secs(5), || srv.stderr().contains(&format!("INFO control: uid {uid}: users"))),
        "each command is logged at info with the caller's uid"
    );
}

#[test]
fn kick_closes_with_1000_sends_the_leave_and_the_user_may_come_back() {
    let srv = Server::start();
    let amy = srv.user("amy");
    let bob = srv.user("bob");
    let mut b = srv.ws(&bob);
    let mut a = srv.ws(&amy);
    assert_eq!(b.recv(), json!({"event": "join", "username": "amy"}));
    assert_eq!(ctl(&srv, &["kick", "AMY"])["name"], "AMY");
    assert_eq!(a.close_code(), Some(1000));
    assert_eq!(b.recv(), json!({"event": "leave", "username": "amy"}));
    assert_eq!(me(&srv, &amy), 200, "her session stays");
    let _a = srv.ws(&amy);
    assert_eq!(b.recv(), json!({"event": "join", "username": "amy"}));
}

#[test]
fn a_ban_ends_sessions_refuses_logins_keeps_the_name_and_survives_a_restart() {
    let srv = Server::start();
    let key = srv.register("amy");
    let amy = srv.login(&key);
    let amy2 = srv.login(&key);
    let bob = srv.user("bob");
    let mut b = srv.ws(&bob);
    let mut a = srv.ws(&amy);
    b.recv();
    let v = ctl(&srv, &["ban", "amy", "--reason", "spam links"]);
    assert_eq!((v["name"].as_str(), v["sessions_ended"].as_u64()), (Some("amy"), Some(2)));
    assert_eq!(a.close_code(), Some(1008));
    assert_eq!(b.recv(), json!({"event": "leave", "username": "amy"}));
    assert_eq!((me(&srv, &amy), me(&srv, &amy2)), (401, 401), "every session ended");
    let r = login_status(&srv, &key);
    assert_eq!((r.status, r.error()), (403, "banned".to_owned()));
    let r = srv.post("/api/register", r#"{"username": "AMY"}"#, None);
    assert_eq!(r.status, 409, "the name stays taken");
    let u = ctl(&srv, &["users"]);
    assert_eq!(u["users"][0]["banned"], true);
    let metrics = srv.get("/metrics", None).text();
    assert!(metrics.contains("skiff_moderation_total{action=\"ban\"} 1\n"), "{metrics}");

    let srv = Server::start_in(srv.stop(), &[]);
    assert_eq!(login_status(&srv, &key).status, 403, "the ban survives a restart");
    assert_eq!(ctl(&srv, &["unban", "amy"])["was_banned"], true);
    assert_eq!(login_status(&srv, &key).status, 200);
    assert_eq!(ctl(&srv, &["unban", "amy"])["was_banned"], false);
}

#[test]
fn reset_key_prints_a_new_key_and_the_old_one_and_its_sessions_end() {
    let srv = Server::start();
    let old = srv.register("amy");
    let amy = srv.login(&old);
    let mut a = srv.ws(&amy);
    let out = ctl_at(&control(&srv), &["reset-key", "amy"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let new = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(new.len(), 43, "the key alone on stdout: {new:?}");
    assert_eq!(a.close_code(), Some(1008));
    assert_eq!(me(&srv, &amy), 401);
    assert_eq!(login_status(&srv, &old).status, 401, "the old key stops working");
    let r = login_status(&srv, &new);
    assert_eq!((r.status, r.json()["username"].clone()), (200, json!("amy")));
}

#[test]
fn delete_user_frees_the_name_and_with_messages_takes_them_out_of_the_history() {
    let srv = Server::start();
    let key = srv.register("amy");
    let amy = srv.login(&key);
    let bob = srv.user("bob");
    let mut b = ws_v2(&srv, &bob, "");
    let mut a = ws_v2(&srv, &amy, "");
    b.recv();
    for m in ["one", "two"] {
        a.say(m);
        a.recv();
        b.recv();
    }
    b.say("mine");
    b.recv();
    a.recv();
    let v = ctl(&srv, &["delete-user", "amy", "--messages"]);
    assert_eq!(v["messages_deleted"], 2);
    assert_eq!(a.close_code(), Some(1008));
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(b.recv());
    }
    assert!(seen.contains(&json!({"event": "delete", "id": 1})), "{seen:?}");
    assert!(seen.contains(&json!({"event": "delete", "id": 2})), "{seen:?}");
    assert!(seen.contains(&json!({"event": "leave", "username": "amy"})), "{seen:?}");
    assert_eq!(history_ids(&srv, &bob), [3]);
    assert_eq!(login_status(&srv, &key).status, 401, "the user is gone");
    assert_eq!(srv.get("/api/user/amy", Some(&bob)).status, 404);
    srv.register("Amy");
    // Without --messages the history stays.
    let carl = srv.user("carl");
    let mut c = srv.ws(&carl);
    c.say("stays");
    c.recv();
    assert_eq!(ctl(&srv, &["delete-user", "carl"])["messages_deleted"], 0);
    assert_eq!(history_ids(&srv, &bob), [3, 4]);
}

#[test]
fn a_deleted_message_leaves_history_and_replays_and_only_v2_clients_hear_of_it() {
    let srv = Server::start();
    let amy = srv.user("amy");
    let v2 = srv.user("vee");
    let v1 = srv.user("old");
    let mut o = srv.ws(&v1);
    let mut v = ws_v2(&srv, &v2, "");
    let mut a = srv.ws(&amy);
    o.recv();
    o.recv();
    v.recv();
    for m in ["1", "2", "3"] {
        a.say(m);
        assert_eq!(a.recv(), json!({"status": true}));
    }
    for _ in 0..3 {
        o.recv();
        v.recv();
    }
    assert_eq!(ctl(&srv, &["delete-message", "2"])["id"], 2);
    assert_eq!(v.recv(), json!({"event": "delete", "id": 2}));
    a.say("after");
    a.recv();
    assert_eq!(o.recv(), json!({"message": "after", "author": "amy"}), "plain /ws hears nothing of the delete");
    assert_eq!(v.recv()["id"], 4);
    assert_eq!(history_ids(&srv, &amy), [1, 3, 4]);
    drop(v);
    let mut r = ws_v2(
        &srv,
        &v2,
        &format!("&since=0&epoch={}", srv.get("/api/history", Some(&amy)).json()["epoch"].as_str().unwrap()),
    );
    let replay: Vec<u64> = (0..3).map(|_| r.recv()["id"].as_u64().unwrap()).collect();
    assert_eq!(replay, [1, 3, 4], "a replay skips it");
    drop(r);
    // The newest one, deleted, keeps its id used across a restart.
    assert_eq!(ctl(&srv, &["delete-message", "4"])["id"], 4);
    let srv = Server::start_in(srv.stop(), &[]);
    let amy = srv.user("amy2");
    assert_eq!(history_ids(&srv, &amy), [1, 3]);
    let mut v = ws_v2(&srv, &amy, "");
    v.say("next");
    assert_eq!(v.recv(), json!({"status": true, "id": 5}));
}

#[test]
fn bad_input_is_one_line_exit_1_and_nothing_changes() {
    let srv = Server::start();
    let path = control(&srv);
    let key = srv.register("amy");
    let amy = srv.login(&key);
    let mut a = srv.ws(&amy);
    a.say("keep me");
    a.recv();
    let before = (ctl(&srv, &["users"])["users"].clone(), history_ids(&srv, &amy));
    for (args, reason) in [
        (&["kick", "zed"][..], "no user named zed"),
        (&["ban", "zed"], "no user named zed"),
        (&["unban", "zed"], "no user named zed"),
        (&["reset-key", "zed"], "no user named zed"),
        (&["delete-user", "zed"], "no user named zed"),
        (&["delete-user", "not a name"], "no user named not a name"),
        (&["delete-user", "a", "b"], "delete-user: one NAME, got 2"),
        (&["delete-message", "abc"], "bad id \"abc\""),
        (&["delete-message", "0"], "bad id \"0\""),
        (&["delete-message", "999"], "no message 999 in the history"),
        (&["backup", "relative/but/missing/dir.db"], "cannot write"),
        (&["explode"], "unknown command"),
    ] {
        let line = ctl_fails(&path, args);
        assert!(line.contains(reason), "{args:?}: {line}");
    }
    let bob = srv.user("bob");
    let line = ctl_fails(&path, &["kick", "bob"]);
    assert!(line.contains("bob has no open WebSocket"), "{line}");
    assert_eq!(srv.get("/api/user/@me", Some(&amy)).status, 200, "amy untouched");
    a.say("still here");
    assert_eq!(a.recv(), json!({"status": true}));
    let mut after = ctl(&srv, &["users"])["users"].clone();
    after.as_array_mut().unwrap().retain(|u| u["name"] != "bob");
    assert_eq!(after, before.0);
    assert_eq!(history_ids(&srv, &bob)[..1], before.1[..]);

    // A socket path that does not exist, is not a socket, or nobody answers on.
    let dir = tempfile::tempdir().unwrap();
    let line = ctl_fails(&dir.path().join("nope.ctl"), &["status"]);
    assert!(line.contains("no control socket at"), "{line}");
    let file = dir.path().join("file.ctl");
    std::fs::write(&file, b"x").unwrap();
    assert!(ctl_fails(&file, &["status"]).contains("is not a socket"));
    let stale = dir.path().join("stale.ctl");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(ctl_fails(&stale, &["status"]).contains("nobody answers"));
}

#[test]
fn a_second_skiff_on_the_same_control_path_fails_clearly_and_a_stale_one_is_replaced() {
    let srv = Server::start();
    let path = control(&srv);
    let try_start = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .expect("run skiff")
    };
    let db = srv.db_path();
    let out = try_start(&["--db", db.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("another skiff is serving it"), "{err}");
    assert!(out.stdout.is_empty(), "it never said it was listening");
    assert_eq!(ctl(&srv, &["status"])["ok"], true, "the first one still answers");
    // Not a socket: refused, and the file left alone.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("taken");
    std::fs::write(&file, b"precious").unwrap();
    let out = try_start(&["--db", dir.path().join("x.db").to_str().unwrap(), "--control", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists and is not a socket"));
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    // A killed skiff leaves its socket behind; the next one takes the path over.
    let mut srv = srv;
    srv.signal(libc::SIGKILL);
    assert!(path.exists(), "kill -9 leaves the socket file");
    let srv = Server::start_in(srv.stop_killed(), &[]);
    assert_eq!(ctl(&srv, &["status"])["ok"], true);
}

#[test]
fn a_ban_under_load_stops_the_spammer_within_a_turn_and_nobody_else_loses_a_message() {
    let srv = Server::start();
    let spam = srv.user("spammer");
    let bob = srv.user("bob");
    let carl = srv.user("carl");
    let mut c = srv.ws(&carl);
    let mut b = srv.ws(&bob);
    c.recv();
    let mut s = srv.ws(&spam);
    c.recv();
    b.recv();
    let stop = Arc::new(AtomicBool::new(false));
    // Full speed: no waiting for acks, until the socket is closed under it.
    let spammer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let frame = tungstenite::Message::text(json!({ "message": format!("spam {sent}") }).to_string());
                if s.ws.send(frame).is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        })
    };
    // Bob talks meanwhile, each message acked.
    let talker = std::thread::spawn(move || {
        for i in 0..300 {
            b.say(&format!("bob {i}"));
            b.recv_until(|v| v.get("status").is_some());
        }
        b
    });
    std::thread::sleep(Duration::from_millis(300));
    ctl(&srv, &["ban", "spammer"]);
    let mut b = talker.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let sent = spammer.join().unwrap();
    assert!(sent > 100, "the spammer sent at full speed ({sent})");
    b.say("done");
    b.recv();
    let (mut bobs, mut spam_before, mut spam_after, mut left) = (0, 0, 0, false);
    loop {
        let v = c.recv();
        if v == json!({"event": "leave", "username": "spammer"}) {
            left = true;
        } else if v["author"] == "spammer" {
            if left {
                spam_after += 1;
            } else {
                spam_before += 1;
            }
        } else if v["author"] == "bob" {
            if v["message"] == "done" {
                break;
            }
            assert_eq!(v["message"], format!("bob {bobs}"), "bob's messages in order, none lost");
            bobs += 1;
        }
    }
    assert!(left, "the room heard the spammer leave");
    assert!(spam_before > 0, "the spam reached the room before the ban");
    assert_eq!(spam_after, 0, "not one spam message after the leave");
    assert_eq!(bobs, 300);
}

#[test]
fn a_backup_during_floods_restores_every_user_that_had_a_201_before_it() {
    let srv = Server::start();
    let got: Arc<Mutex<Vec<(String, String, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let registrars: Vec<_> = (0..8)
        .map(|t| {
            let (got, stop, addr) = (got.clone(), stop.clone(), srv.addr);
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("t{t}u{i}");
                    i += 1;
                    let body = format!(r#"{{"username": "{name}"}}"#);
                    let mut s = std::net::TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    let req = format!(
                        "POST /api/register HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    s.write_all(req.as_bytes()).unwrap();
                    let r = read_response(&mut s).expect("an answer");
                    assert_eq!(r.status, 201, "{}", r.text());
                    let key = r.json()["key"].as_str().unwrap().to_owned();
                    got.lock().unwrap().push((name, key, Instant::now()));
                }
            })
        })
        .collect();
    let talker = {
        let (cookie, stop) = (srv.user("talker"), stop.clone());
        let mut ws = srv.ws(&cookie);
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                ws.say(&format!("m{n}"));
                ws.recv_until(|v| v.get("status").is_some());
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let file = srv.dir.path().join("backup.db");
    let started = Instant::now();
    let v = ctl(&srv, &["backup", file.to_str().unwrap()]);
    assert_eq!(v["integrity"], "ok");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for t in registrars {
        t.join().unwrap();
    }
    let messages = talker.join().unwrap();
    assert!(messages > 10, "chat went on during the backup ({messages})");
    let before: Vec<(String, String)> =
        got.lock().unwrap().iter().filter(|(_, _, at)| *at < started).map(|(n, k, _)| (n.clone(), k.clone())).collect();
    assert!(before.len() > 20, "the flood registered users before the backup ({})", before.len());

    // Restore as README says: the copy becomes chat.db of a fresh server.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&file, dir.path().join("chat.db")).unwrap();
    let restored = Server::start_in(dir, &[]);
    let mut s = restored.connect();
    for (name, key) in &before {
        let body = format!(r#"{{"key": "{key}"}}"#);
        let req = format!("POST /api/login HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        s.write_all(req.as_bytes()).unwrap();
        let r = read_response(&mut s).expect("login answered");
        assert_eq!(r.status, 200, "{name} had a 201 before the backup but cannot log in to the copy");
    }
}

#[test]
fn idle_control_clients_never_lock_skiff_ctl_out_and_are_closed_after_10_s() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream;
    let srv = Server::start();
    let path = control(&srv);
    // A flood of clients from our own uid that send nothing, or half a line.
    let mut idle: Vec<UnixStream> = (0..20).map(|_| UnixStream::connect(&path).expect("connect")).collect();
    for s in idle.iter_mut().step_by(2) {
        // Past 16 the server closes the longest idle to make room: such a write may
        // find its socket gone, which is the point.
        let _ = s.write_all(br#"{"cmd":"sta"#);
    }
    let mut half = UnixStream::connect(&path).unwrap();
    half.write_all(br#"{"cmd":"sta"#).unwrap();
    let started = Instant::now();
    let mut served = None;
    while served.is_none() && started.elapsed() < Duration::from_secs(12) {
        let out = ctl_at(&path, &["status", "--json"]);
        if out.status.success() {
            served = Some(out);
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let out = served.expect("skiff ctl status was served despite the flood");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    // The half line never completes: the server closes it, saying why.
    half.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut reader = BufReader::new(&half);
    let mut line = String::new();
    reader.read_line(&mut line).expect("a line, not a read timeout");
    assert!(line.contains("no request line for 10 s"), "{line}");
    line.clear();
    assert_eq!(reader.read_line(&mut line).expect("then the end"), 0, "{line}");
    // And every place the flood held is free again: 16 clients are served at once.
    let mut many: Vec<UnixStream> = (0..16).map(|_| UnixStream::connect(&path).unwrap()).collect();
    for s in &mut many {
        s.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    }
    for s in &many {
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        assert!(line.contains(r#""ok":true"#), "{line}");
    }
}

/// `2026-12-06T15:04:05Z`: RFC 3339 UTC to the second.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn a_timed_ban_with_a_reason_is_seen_everywhere_ends_by_itself_and_survives_a_restart() {
    let srv = Server::start();
    let key = srv.register("carol");
    let carol = srv.login(&key);
    let mut tab = ws_v2(&srv, &carol, "");
    let mut phone = ws_v2(&srv, &srv.login(&key), "");
    let v = ctl(&srv, &["ban", "carol", "--reason", "link spam", "--for", "4s"]);
    let until = v["until"].as_str().expect("the answer names the end").to_owned();
    assert!(is_rfc3339(&until), "{until}");
    let want = (1008, format!("banned until {until}: link spam"));
    assert_eq!(tab.close_frame(), want);
    assert_eq!(phone.close_frame(), want, "every device of hers");
    let r = login_status(&srv, &key);
    assert_eq!(r.status, 403);
    assert_eq!(r.json(), json!({"error": "banned", "reason": "link spam", "until": until}));
    let row = &ctl(&srv, &["users"])["users"][0];
    assert_eq!((&row["banned"], &row["until"], &row["reason"]), (&json!(true), &json!(until), &json!("link spam")));
    assert!(row["since"].as_str().is_some_and(is_rfc3339), "{row}");
    let table = String::from_utf8(ctl_at(&control(&srv), &["users"]).stdout).unwrap();
    assert!(table.contains(&format!("until {until} (link spam)")), "{table}");
    let uid = unsafe { libc::geteuid() };
    let logged = format!("control: uid {uid}: ban carol for 4s (link spam)");
    assert!(wait_for(Duration::from_secs(5), || srv.stderr().contains(&logged)), "{}", srv.stderr());

    // Still in force after a restart, then over without anyone lifting it.
    let srv = Server::start_in(srv.stop(), &[]);
    let r = login_status(&srv, &key);
    assert_eq!((r.status, r.json()["until"].clone()), (403, json!(until)), "the ban survives a restart");
    let ended = wait_for(Duration::from_secs(15), || login_status(&srv, &key).status == 200);
    assert!(ended, "the timed ban never ended");
    assert_eq!(ctl(&srv, &["users"])["users"][0]["banned"], false);
    let lifted = wait_for(Duration::from_secs(5), || ctl(&srv, &["status"])["banned"] == 0);
    assert!(lifted, "the database no longer counts it: {}", ctl(&srv, &["status"]));
}

#[test]
fn a_permanent_ban_without_a_reason_keeps_the_plain_answer_and_close_reason() {
    let srv = Server::start();
    let key = srv.register("amy");
    let mut a = srv.ws(&srv.login(&key));
    ctl(&srv, &["ban", "amy"]);
    assert_eq!(a.close_frame(), (1008, "banned".into()));
    let r = login_status(&srv, &key);
    assert_eq!((r.status, r.json()), (403, json!({"error": "banned"})));
    let row = &ctl(&srv, &["users"])["users"][0];
    assert_eq!((&row["banned"], &row["until"], &row["reason"]), (&json!(true), &Value::Null, &Value::Null));
}

#[test]
fn a_kick_says_kicked_and_a_kick_for_a_while_is_a_timed_ban() {
    let srv = Server::start();
    let key = srv.register("dave");
    let dave = srv.login(&key);
    let mut a = srv.ws(&dave);
    ctl(&srv, &["kick", "dave"]);
    assert_eq!(a.close_frame(), (1000, "kicked".into()));
    let mut a = ws_v2(&srv, &dave, "");
    let v = ctl(&srv, &["kick", "dave", "--for", "3s"]);
    let until = v["until"].as_str().unwrap().to_owned();
    assert_eq!(a.close_frame(), (1008, format!("banned until {until}")));
    let r = login_status(&srv, &key);
    assert_eq!((r.status, r.json()), (403, json!({"error": "banned", "until": until})));
    assert_eq!(me(&srv, &dave), 401, "a timed ban ends the sessions, as a ban does");
    let uid = unsafe { libc::geteuid() };
    let logged = format!("control: uid {uid}: kick dave for 3s");
    assert!(wait_for(Duration::from_secs(5), || srv.stderr().contains(&logged)), "{}", srv.stderr());
    assert!(wait_for(Duration::from_secs(15), || login_status(&srv, &key).status == 200), "the kick never ended");
}

#[test]
fn users_pages_only_when_more_exist_and_registered_is_a_date() {
    let srv = Server::start();
    srv.register("solo");
    let page = ctl(&srv, &["users", "--limit", "1"]);
    assert_eq!(page["next"], Value::Null, "one user, one page");
    let out = ctl_at(&control(&srv), &["users", "--limit", "1"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("more:"), "no hint of an empty page");
    let table = String::from_utf8(out.stdout).unwrap();
    let row = table.lines().nth(1).unwrap();
    let registered = row.split_whitespace().nth(1).unwrap();
    assert!(registered.len() == 10 && registered.as_bytes()[4] == b'-', "a date, not Unix seconds: {row}");
    srv.register("second");
    assert_eq!(ctl(&srv, &["users", "--limit", "1"])["next"], "second");
}

#[test]
fn help_names_skiff_ctl_and_a_start_on_a_taken_port_leaves_no_database() {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let usage: Vec<&str> = help.lines().skip_while(|l| !l.starts_with("usage:")).take(2).collect();
    assert!(usage.iter().any(|l| l.contains("skiff ctl")), "the usage names skiff ctl: {usage:?}");

    let srv = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("new.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["--listen", &srv.addr.to_string(), "--db"])
        .arg(&db)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    let exited = wait_for(Duration::from_secs(10), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(status.and_then(|s| s.code()), Some(1), "a taken port is a start-up error");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().starts_with("new.db")), "files left behind: {left:?}");
}

#[test]
fn cluster_a_timed_ban_from_one_node_closes_with_its_words_on_another_and_ends_by_itself() {
    let Some(redis) = redis::Redis::start_or_skip("cluster_a_timed_ban") else { return };
    let url = redis.url();
    let n1 = Server::start_with(&["--redis", &url]);
    let n2 = Server::start_with(&["--redis", &url]);
    for n in [&n1, &n2] {
        assert!(wait_for(Duration::from_secs(10), || n.get("/healthz", None).status == 200), "no Redis");
    }
    let key = n2.register("carol");
    let mut on2 = ws_v2(&n2, &n2.login(&key), "");
    let v = ctl(&n1, &["ban", "carol", "--reason", "link spam", "--for", "3s"]);
    let until = v["until"].as_str().expect("the answer names the end").to_owned();
    assert_eq!(on2.close_frame(), (1008, format!("banned until {until}: link spam")));
    let r = login_status(&n2, &key);
    assert_eq!((r.status, r.json()), (403, json!({"error": "banned", "reason": "link spam", "until": until})));
    let row = &ctl(&n2, &["users"])["users"][0];
    assert_eq!((&row["banned"], &row["until"], &row["reason"]), (&json!(true), &json!(until), &json!("link spam")));
    assert!(wait_for(Duration::from_secs(15), || login_status(&n1, &key).status == 200), "the ban never ended");
    let mut again = ws_v2(&n2, &n2.login(&key), "");
    ctl(&n1, &["reset-key", "carol"]);
    assert_eq!(again.close_frame(), (1008, "key reset".into()), "across nodes too");
    assert_eq!(ctl(&n2, &["users"])["users"][0]["banned"], false);
    assert_eq!(ctl(&n1, &["users", "--limit", "1"])["next"], Value::Null, "one user, one page");
}
