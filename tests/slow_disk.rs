//! A slow disk must not stall the room. skiff runs under strace with every fsync and
//! fdatasync made 200 ms slower; a registration flood runs while two users chat.
//! Chat frames and logins must keep flowing in well under 50 ms, registrations must
//! each wait for a (slow) durable commit, and group commit must put many in each one.
//! Needs strace (`apt-get install strace`); `SKIFF_SKIP_STRACE=1` leaves it out.

mod common;

use common::*;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const STRACE: &[&str] = &[
    "strace",
    "--seccomp-bpf",
    "-f",
    "-qq",
    "-o",
    "/dev/null",
    "-e",
    "trace=fsync,fdatasync",
    "-e",
    "inject=fsync,fdatasync:delay_exit=200000",
];

#[test]
fn chat_flows_while_registrations_wait_on_a_slow_disk() {
    if std::env::var("SKIFF_SKIP_STRACE").is_ok_and(|v| v == "1") {
        eprintln!("SKIFF_SKIP_STRACE=1: the slow-disk test is left out");
        return;
    }
    assert!(
        std::process::Command::new("strace").arg("-V").output().is_ok_and(|o| o.status.success()),
        "the slow-disk test needs strace: apt-get install strace (or SKIFF_SKIP_STRACE=1)"
    );
    let srv = Server::start_under(tempfile::tempdir().unwrap(), &[], STRACE, &[]);
    let key = srv.register("carol");
    let (a, b) = (srv.user("alice"), srv.user("bob"));
    let mut wa = srv.ws(&a);
    let mut wb = srv.ws(&b);
    assert_eq!(wa.recv(), serde_json::json!({"event": "join", "username": "bob"}));

    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let flood: Vec<_> = (0..16)
        .map(|t| {
            let (stop, latencies, addr) = (stop.clone(), latencies.clone(), srv.addr);
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                for i in 0..1000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let body = format!(r#"{{"username": "t{t}n{i}"}}"#);
                    let req = format!(
                        "POST /api/register HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let sent = Instant::now();
                    s.write_all(req.as_bytes()).unwrap();
                    let r = read_response(&mut s).expect("registration answered");
                    assert_eq!(r.status, 201, "{}", r.text());
                    latencies.lock().unwrap().push(sent.elapsed());
                }
            })
        })
        .collect();

    // Let the flood fill the writer's queue, then chat through it.
    std::thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    for i in 0..30 {
        let sent = Instant::now();
        wa.say(&format!("m{i}"));
        assert_eq!(wb.recv(), serde_json::json!({"message": format!("m{i}"), "author": "alice"}));
        worst = worst.max(sent.elapsed());
        assert_eq!(wa.recv(), serde_json::json!({"status": true}));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Logins look the key up on the reader thread: no commit to wait for.
    let mut worst_login = Duration::ZERO;
    for _ in 0..10 {
        let sent = Instant::now();
        let r = srv.post("/api/login", &format!(r#"{{"key": "{key}"}}"#), None);
        assert_eq!(r.status, 200);
        worst_login = worst_login.max(sent.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for t in flood {
        t.join().unwrap();
    }
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    let registered = lat.len();
    let median = lat[registered / 2];
    assert!(worst < Duration::from_millis(50), "a chat message took {worst:?} during the flood");
    assert!(worst_login < Duration::from_millis(50), "a login took {worst_login:?} during the flood");
    // Each 201 waited for a commit with its 200 ms fsync: the injection was in force.
    assert!(median >= Duration::from_millis(190), "median registration {median:?}: was the disk slow?");
    // ~2 s of flood at one commit per >= 200 ms: without group commit at most ~10.
    assert!(registered >= 40, "{registered} registrations: commits are not grouped");
}
