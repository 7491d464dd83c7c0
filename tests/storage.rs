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
    ws.say("still here");
    assert_eq!(ws.recv(), serde_json::json!({"status": true}));
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
