//! A hand-over that goes wrong (CONTRACT, "Upgrading in place"): the old process lets
//! go only of a successor that has taken over, and a stop signal that comes at any
//! moment of a hand-over is honoured by whichever image runs.

mod common;
#[path = "common/raw.rs"]
mod raw;
#[path = "common/upgrade.rs"]
mod upgrade;

use common::*;
use raw::{flood, Raw};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use upgrade::*;

/// Writes `bytes` as an executable file `dir/name`.
fn executable(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// New binaries that fail before they have taken the sockets: a copy cut short (an
/// interrupted `cp`), a shell script, another program that exits 0, and a real
/// skiff whose import aborts. Each is installed at skiff's path and SIGUSR2 sent
/// while v2 clients flood the room: the old process says why in one line and
/// serves on; no socket closes, every message reaches everyone once and in one
/// order, every sender gets every ack. Then a good binary takes over as usual.
#[test]
fn a_binary_that_fails_before_taking_over_leaves_every_socket_served() {
    const CLIENTS: usize = 40;
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 40;
    let (srv, exe) = start_copy(&[]);
    let pid = srv.pid();
    let dir = srv.dir.path().to_owned();
    let mut all = clients_at(&srv, "u", CLIENTS, "/ws?v=2");
    let mut senders: Vec<Raw> = all.drain(..SENDERS).collect();
    let good = copy_binary(&dir, "skiff.good", None);
    let whole = std::fs::read(&good).unwrap();
    let bad: [(&str, Vec<u8>, &str); 4] = [
        ("truncated", whole[..1 << 20].to_vec(), ""),
        ("script", b"#!/bin/sh\nexit 3\n".to_vec(), "exited with status 3"),
        ("true", std::fs::read("/bin/true").unwrap(), "exited with status 0"),
        (
            "abort",
            format!("#!/bin/sh\nSKIFF_TEST_ABORT_IMPORT=1 exec {} \"$@\"\n", good.display()).into_bytes(),
            "killed by signal 6",
        ),
    ];
    let mut rounds = 0;
    for (name, bytes, why) in bad {
        install(&executable(&dir, &format!("skiff.{name}"), &bytes), &exe);
        rounds += 1;
        flood(&mut senders, PER_SENDER, Duration::from_millis(15), || {
            std::thread::sleep(Duration::from_millis(200));
            usr2(&srv);
            let refused = wait_for(Duration::from_secs(20), || log_count(&srv, "hand-over not done") == rounds);
            assert!(refused, "{name}: no refusal in the log:\n{}", srv.stderr());
        });
        let line = srv.stderr().lines().rfind(|l| l.contains("hand-over not done")).unwrap().to_owned();
        assert!(line.contains(why), "{name}: {line}");
        assert_eq!(srv.pid(), pid);
        assert_eq!(srv.get("/healthz", None).status, 200, "{name}: the server answers");
        let total = SENDERS * PER_SENDER * rounds;
        for (i, c) in all.iter_mut().enumerate() {
            assert!(
                c.poll_until(Duration::from_secs(30), |c| c.messages().len() >= total),
                "{name}: client {i} got {} of {total}",
                c.messages().len()
            );
        }
        for (k, c) in senders.iter_mut().enumerate() {
            let acks = PER_SENDER * rounds;
            assert!(c.poll_until(Duration::from_secs(30), |c| c.acks() >= acks), "{name}: sender {k}");
            assert_eq!(c.acks(), acks, "{name}: sender {k}, one ack per message");
        }
    }
    // What each saw: every message once, in the one order, nobody closed or gone.
    let order = all[0].messages();
    assert_eq!(order.len(), SENDERS * PER_SENDER * rounds);
    for k in 0..SENDERS {
        let mine: Vec<&String> = order.iter().filter(|m| m.starts_with(&format!("s{k}-"))).collect();
        assert_eq!(mine.len(), PER_SENDER * rounds, "sender {k}'s messages once each");
    }
    for (i, c) in all.iter().chain(senders.iter()).enumerate() {
        assert_eq!(c.closed, None, "client {i} was closed");
        assert_eq!(c.events("leave"), 0, "client {i} heard a leave");
        assert_eq!(c.events("resync"), 0, "client {i} was told to resync");
    }
    for c in &all {
        assert_eq!(c.messages(), order, "one order for everyone");
    }
    assert!(!srv.stderr().contains("took over"), "no bad binary took over:\n{}", srv.stderr());
    // Nothing was left behind by the refusals: a good binary takes over as usual.
    install(&good, &exe);
    usr2(&srv);
    pause_ms(&srv, 1);
    let c = &mut senders[0];
    c.say("after");
    assert!(c.poll_until(Duration::from_secs(10), |c| c.acks() == PER_SENDER * rounds + 1));
    assert!(all[0].poll_until(Duration::from_secs(10), |c| c.messages().last().map(String::as_str) == Some("after")));
    assert_eq!(srv.pid(), pid);
}

/// A database with `n` kept messages, made once by a server that then stopped
/// cleanly: the directory to copy for each run.
fn history_of(n: usize) -> tempfile::TempDir {
    let history = n.max(1).to_string();
    let srv = Server::start_with(&["--history", &history]);
    if n > 0 {
        let cookie = srv.user("filler");
        let mut c = Raw::open(&srv, &cookie, "/ws?v=2");
        // Small batches, each acked before the next: the server stops reading a socket
        // with 1,024 acks waiting on the disk, and a busy machine's disk is slow.
        const BATCH: usize = 500;
        let mut sent = 0;
        while sent < n {
            let frames: Vec<u8> = (sent..(sent + BATCH).min(n))
                .flat_map(|i| {
                    let text = serde_json::json!({ "message": format!("kept message {i} {}", "x".repeat(200)) });
                    skiff::ws::frame::client_frame(skiff::ws::frame::TEXT, text.to_string().as_bytes(), [1, 2, 3, 4])
                })
                .collect();
            c.send_frame(&frames);
            sent = (sent + BATCH).min(n);
            assert!(c.poll_until(Duration::from_secs(60), |c| c.acks() >= sent), "{} of {sent} acked", c.acks());
        }
    }
    srv.stop()
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("chat.db") {
            std::fs::copy(entry.path(), to.path().join(name)).unwrap();
        }
    }
    to
}

/// SIGUSR2, then SIGTERM `delay` later, on a server keeping what `kept` holds:
/// whichever image has the signal stops, every WebSocket hears 1001, exit 0.
fn stop_during_hand_over(kept: &Path, history: usize, delay: Duration) {
    let dir = copy_dir(kept);
    let exe = copy_binary(dir.path(), "skiff", None);
    let history = history.max(1).to_string();
    let mut srv = Server::start_exe(dir, &exe, &["--history", &history]);
    let mut ws = clients_at(&srv, "w", 3, "/ws?v=2");
    usr2(&srv);
    std::thread::sleep(delay);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(srv.pid() as i32, libc::SIGTERM) };
    let status = srv.wait_exit(Duration::from_secs(10));
    let log = srv.stderr();
    let status = status.unwrap_or_else(|| panic!("{delay:?}: still running 10 s after SIGTERM:\n{log}"));
    assert_eq!(status.code(), Some(0), "{delay:?}:\n{log}");
    for (i, c) in ws.iter_mut().enumerate() {
        assert!(c.poll_until(Duration::from_secs(5), |c| c.closed.is_some()));
        assert_eq!(c.closed, Some(1001), "{delay:?}: client {i}:\n{log}");
    }
}

/// The stop at 0, 1, 5, 20, 50 and 150 ms after the SIGUSR2: before the state is
/// made, during the probe, across the exec, in the new image's first turns; with
/// no history and with 50,000 messages kept (a longer hand-over).
#[test]
fn a_stop_signal_at_any_moment_of_a_hand_over_is_honoured() {
    let delays = [0, 1, 5, 20, 50, 150].map(Duration::from_millis);
    for kept in [0, 50_000] {
        let made = Instant::now();
        let dir = history_of(kept);
        eprintln!("{kept} kept messages made in {:.1} s", made.elapsed().as_secs_f64());
        for delay in delays {
            stop_during_hand_over(dir.path(), kept, delay);
        }
    }
}
