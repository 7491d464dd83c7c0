//! Storage faults and crashes against the real binary: a full disk answers 503 and
//! heals, and a kill -9 in the middle of a registration flood loses nobody who got a
//! 201 and leaves a database that passes `PRAGMA integrity_check`.

mod common;

use common::*;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn register_on(s: &mut TcpStream, name: &str) -> Option<(u16, String)> {
    let body = format!(r#"{{"username": "{name}"}}"#);
    let req = format!("POST /api/register HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).ok()?;
    let r = read_response(s)?;
    Some((r.status, r.text()))
}

#[test]
fn a_full_disk_answers_503_chat_goes_on_and_registration_heals() {
    // 512-byte blocks (sh's unit): room for the schema and a few dozen commits. Soft
    // only, so the limit can be lifted again while skiff runs (as space comes back).
    let srv = Server::start_under(tempfile::tempdir().unwrap(), &["ulimit -S -f 256"], &[], &[]);
    let cookie = srv.user("early");
    let mut ws = srv.ws(&cookie);
    let mut other = srv.ws(&srv.user("other"));
    assert_eq!(ws.recv()["event"], "join");
    let mut s = srv.connect();
    let mut full = None;
    for i in 0..5000 {
        let (status, body) = register_on(&mut s, &format!("filler{i}")).expect("an answer");
        if status != 201 {
            full = Some((status, body));
            break;
        }
    }
    let (status, body) = full.expect("the file-size limit was reached");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("storage_unavailable"), "{body}");
    // Chat and logins go on; the server says it is healthy (the disk, not storage, failed).
    // The others get the message at once; the sender's ack says whether it was kept:
    // true if its commit found room, else `unavailable` (CONTRACT: a commit that fails
    // is not acked true). Which one depends on how full the last page of the WAL was.
    ws.say("still here");
    let ack = ws.recv();
    let kept = serde_json::json!({"status": true});
    let not_kept = serde_json::json!({"status": false, "code": "unavailable"});
    assert!(ack == kept || ack == not_kept, "{ack}");
    assert_eq!(other.recv(), serde_json::json!({"message": "still here", "author": "early"}));
    assert_eq!(srv.get("/healthz", None).status, 200);
    assert_eq!(srv.get("/api/user/@me", Some(&cookie)).status, 200);
    // The disk has room again: registrations work on the same server.
    let lifted = std::process::Command::new("prlimit")
        .args(["--pid", &srv.pid().to_string(), "--fsize=unlimited:unlimited"])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(lifted.success());
    let key = srv.register("afterwards");
    assert_eq!(srv.get("/api/user/@me", Some(&srv.login(&key))).json()["username"], "afterwards");
}

/// Registers as fast as one keep-alive connection allows until the server dies or
/// `limit` names are used; returns the (name, key) pairs that got a 201.
fn flood(
    addr: SocketAddr,
    prefix: String,
    limit: usize,
    got: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
) {
    let Ok(mut s) = TcpStream::connect(addr) else { return };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    for i in 0..limit {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let name = format!("{prefix}x{i}");
        match register_on(&mut s, &name) {
            Some((201, body)) => {
                let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
                got.lock().unwrap().push((name, v["key"].as_str().expect("key").to_owned()));
            }
            Some((status, body)) => panic!("{name}: {status} {body}"),
            None => return, // killed
        }
    }
}

#[test]
fn kill_9_during_a_registration_flood_loses_no_acknowledged_user() {
    let mut dir = tempfile::tempdir().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    // Deterministic "random" moments, spread over the first 400 ms of each flood.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..10 {
        let mut srv = Server::start_in(dir, &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..64)
            .map(|t| {
                let (got, stop, addr) = (got.clone(), stop.clone(), srv.addr);
                std::thread::spawn(move || flood(addr, format!("r{round}t{t}"), 200, got, stop))
            })
            .collect();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(20 + seed % 400));
        srv.signal(libc::SIGKILL);
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().expect("flood thread");
        }
        dir = srv.stop_killed();
    }
    let srv = Server::start_in(dir, &[]);
    let got = got.lock().unwrap().clone();
    assert!(got.len() > 100, "the floods registered users ({})", got.len());
    let started = Instant::now();
    let mut s = srv.connect();
    for (name, key) in &got {
        let body = format!(r#"{{"key": "{key}"}}"#);
        let req = format!("POST /api/login HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        s.write_all(req.as_bytes()).unwrap();
        let r = read_response(&mut s).expect("login answered");
        assert_eq!(r.status, 200, "{name} got a 201 before the kill but cannot log in");
        assert_eq!(r.json()["username"], name.as_str());
        assert!(started.elapsed() < Duration::from_secs(120), "logins took too long");
    }
    let db = rusqlite::Connection::open(srv.db_path()).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn backup(srv: &Server, file: &std::path::Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .arg("ctl")
        .arg("--control")
        .arg(srv.dir.path().join("chat.db.ctl"))
        .args(["--json", "backup"])
        .arg(file)
        .output()
        .expect("run skiff ctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Opens a v2 socket resuming from (`epoch`, `since`); returns the hello and the next frame.
fn resume(srv: &Server, cookie: &str, epoch: &str, since: u64) -> (serde_json::Value, serde_json::Value) {
    let mut ws = srv.try_ws_at(&format!("/ws?v=2&since={since}&epoch={epoch}"), cookie).expect("v2 upgrade");
    let hello = ws.recv();
    assert_eq!(hello["event"], "hello", "{hello}");
    (hello, ws.recv())
}

#[test]
fn files_are_owner_only_under_umask_022_and_a_wider_database_is_named_at_start() {
    let srv = Server::start_under(tempfile::tempdir().unwrap(), &["umask 022"], &[], &[]);
    let cookie = srv.user("amy");
    let mut ws = srv.ws(&cookie);
    ws.say("hello");
    assert_eq!(ws.recv(), serde_json::json!({"status": true}));
    let dir = srv.dir.path().to_owned();
    let file = dir.join("backup.db");
    backup(&srv, &file);
    for name in ["chat.db", "chat.db-wal", "chat.db-shm", "chat.db.ctl", "backup.db"] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name} is owner-only");
    }
    assert!(!srv.stderr().contains("other local users"), "{}", srv.stderr());
    let dir = srv.stop();
    // A database made wider by hand (or by an older skiff): one warning naming it.
    let db = dir.path().join("chat.db");
    std::fs::set_permissions(&db, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let srv = Server::start_under(dir, &["umask 022"], &[], &[]);
    let log = srv.stderr();
    let warned: Vec<&str> = log.lines().filter(|l| l.contains("other local users")).collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains(" WARN ") && warned[0].contains(&format!("{} is mode 0644", db.display())), "{log}");
    assert_eq!(srv.get("/api/user/@me", Some(&cookie)).status, 200, "a warning, not a refusal");
}

#[test]
fn a_restored_backup_begins_a_new_epoch_and_says_so_instead_of_warning_of_a_crash() {
    let srv = Server::start();
    let (a, b) = (srv.user("amy"), srv.user("bob"));
    let mut wa = srv.try_ws_at("/ws?v=2", &a).expect("v2 upgrade");
    let hello = wa.recv();
    let epoch = hello["epoch"].as_str().expect("epoch").to_owned();
    let say = |ws: &mut Ws, text: &str| -> u64 {
        ws.say(text);
        ws.recv_until(|v| v.get("status").is_some())["id"].as_u64().expect("a v2 ack has the id")
    };
    let before = say(&mut wa, "before the backup");
    let file = srv.dir.path().join("backup.db");
    backup(&srv, &file);
    let after = say(&mut wa, "after the backup");
    drop(wa);
    // The original keeps running with its own history: not marked, not a restore.
    let mut dir = srv.stop();
    for round in 0..2 {
        let srv = Server::start_in(dir, &[]);
        let log = srv.stderr();
        assert!(!log.contains("restored from a backup") && !log.contains("not clean"), "round {round}: {log}");
        let (hello, next) = resume(&srv, &a, &epoch, before);
        assert_eq!(hello["epoch"], epoch.as_str());
        assert_eq!((next["id"].as_u64(), next["message"].as_str()), (Some(after), Some("after the backup")));
        dir = srv.stop();
    }
    // Restored as README says: the copy in place of the database, the old -wal and -shm gone.
    let db = dir.path().join("chat.db");
    std::fs::copy(dir.path().join("backup.db"), &db).unwrap();
    for side in ["chat.db-wal", "chat.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(side));
    }
    let srv = Server::start_in(dir, &[]);
    let log = srv.stderr();
    assert!(!log.contains("not clean"), "a restore is not a crash: {log}");
    let line = log.lines().find(|l| l.contains("restored from a backup taken at ")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(" INFO "), "{line}");
    let new_epoch = line.rsplit("new epoch ").next().unwrap().trim().to_owned();
    assert_ne!(new_epoch, epoch);
    assert_eq!(new_epoch.len(), 8, "{line}");
    // Users and sessions are the backup's; every resume of the old history resyncs.
    assert_eq!(srv.get("/api/user/@me", Some(&b)).status, 200);
    for since in [before, after] {
        let (hello, next) = resume(&srv, &a, &epoch, since);
        assert_eq!(hello["epoch"], new_epoch.as_str());
        assert_eq!(next, serde_json::json!({"event": "resync"}), "since {since}");
    }
    // The new history goes on after every id the original had given at the backup.
    let mut wa = srv.try_ws_at("/ws?v=2", &a).expect("v2 upgrade");
    wa.recv();
    assert!(say(&mut wa, "in the new epoch") > before);
    // Started again, it is an ordinary database: no second restore, the epoch stays.
    let srv = Server::start_in(srv.stop(), &[]);
    assert!(!srv.stderr().contains("restored from a backup"), "{}", srv.stderr());
    let mut wa = srv.try_ws_at("/ws?v=2", &a).expect("v2 upgrade");
    assert_eq!(wa.recv()["epoch"], new_epoch.as_str());
}
