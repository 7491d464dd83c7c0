//! Upgrading in place (CONTRACT, "Upgrading in place"): SIGUSR2 re-executes the binary
//! at skiff's own path, here a copy in the test's directory that the test replaces
//! the way dpkg does (a new file renamed over it). The new file is the same build
//! with its version bytes changed ("0.1.0" -> "1.2.1"): rebuilding skiff with another
//! version would take minutes on a shared two-core machine, and a changed version is
//! enough to prove the process runs the new image, since only that image holds the
//! new string (`--version` of the file, `/metrics` of the process, /proc/PID/exe).

mod common;

use common::*;
use serde_json::Value;
use skiff::ws::frame;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NEW_VERSION: &str = "1.2.1";

/// A copy of the built binary at `dir/name`, its version string replaced by `version`
/// (same length) if given.
fn copy_binary(dir: &Path, name: &str, version: Option<&str>) -> PathBuf {
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_skiff")).expect("read the built binary");
    if let Some(v) = version {
        let old = env!("CARGO_PKG_VERSION").as_bytes();
        assert_eq!(old.len(), v.len(), "a patched version keeps its length");
        let mut found = 0;
        let mut i = 0;
        while let Some(at) = bytes[i..].windows(old.len()).position(|w| w == old) {
            let at = i + at;
            bytes[at..at + old.len()].copy_from_slice(v.as_bytes());
            found += 1;
            i = at + old.len();
        }
        assert!(found > 0, "the version string is in the binary");
    }
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Puts `new` at `exe` as a package upgrade does: renamed over it, so the running
/// process keeps its (now deleted) image and the path leads to the new file.
fn install(new: &Path, exe: &Path) {
    std::fs::rename(new, exe).unwrap();
}

/// A server started from a copy of the binary in its own directory.
fn start_copy(args: &[&str]) -> (Server, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let exe = copy_binary(dir.path(), "skiff", None);
    (Server::start_exe(dir, &exe, args), exe)
}

fn usr2(srv: &Server) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(srv.pid() as i32, libc::SIGUSR2) };
}

/// Waits for `needle` in the server's log; panics with the log after 20 s.
fn wait_log(srv: &Server, needle: &str) -> String {
    let mut found = String::new();
    let ok = wait_for(Duration::from_secs(20), || {
        let log = srv.stderr();
        match log.lines().find(|l| l.contains(needle)) {
            Some(line) => {
                found = line.to_owned();
                true
            }
            None => false,
        }
    });
    assert!(ok, "no {needle:?} in the log:\n{}", srv.stderr());
    found
}

/// The count of lines with `needle` in the log.
fn log_count(srv: &Server, needle: &str) -> usize {
    srv.stderr().lines().filter(|l| l.contains(needle)).count()
}

/// A hand-over's pause as the new process logged it (the `nth` hand-over, from 1).
fn pause_ms(srv: &Server, nth: usize) -> f64 {
    assert!(wait_for(Duration::from_secs(20), || log_count(srv, "hand-over done") >= nth), "{}", srv.stderr());
    let log = srv.stderr();
    let line = log.lines().filter(|l| l.contains("hand-over done")).nth(nth - 1).unwrap().to_owned();
    line.split("paused ").nth(1).unwrap().trim_end_matches(" ms").parse().unwrap()
}

/// A WebSocket client on a raw socket: frames encoded and decoded by skiff's own
/// client half, so a thousand of them need no thread each.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
    texts: Vec<Value>,
    /// A close frame's code, or 0 for a connection that ended without one.
    closed: Option<u16>,
}

impl Raw {
    fn open(srv: &Server, cookie: &str, path: &str) -> Raw {
        let mut s = srv.connect();
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk).expect("upgrade response");
            assert!(n > 0, "closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
        };
        assert!(buf.starts_with(b"HTTP/1.1 101 "), "{}", String::from_utf8_lossy(&buf));
        buf.drain(..end);
        s.set_nonblocking(true).unwrap();
        let mut r = Raw { s, buf: Vec::new(), texts: Vec::new(), closed: None };
        r.feed(&buf);
        r
    }

    fn send_frame(&mut self, bytes: &[u8]) {
        self.s.set_nonblocking(false).unwrap();
        self.s.write_all(bytes).unwrap();
        self.s.set_nonblocking(true).unwrap();
    }

    fn say(&mut self, message: &str) {
        let text = serde_json::json!({ "message": message }).to_string();
        self.send_frame(&frame::client_frame(frame::TEXT, text.as_bytes(), [1, 2, 3, 4]));
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        let mut pos = 0;
        while let Ok(Some(f)) = frame::decode_server(&self.buf[pos..]) {
            let payload = &self.buf[pos..][f.payload.clone()];
            match f.opcode {
                frame::TEXT => self.texts.push(serde_json::from_slice(payload).expect("JSON text")),
                frame::CLOSE => self.closed = Some(payload.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]))),
                _ => {}
            }
            pos += f.consumed;
        }
        self.buf.drain(..pos);
    }

    /// Takes in whatever has arrived, without waiting.
    fn poll(&mut self) {
        let mut chunk = [0u8; 65536];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => {
                    self.closed.get_or_insert(0);
                    return;
                }
                Ok(n) => self.feed(&chunk[..n].to_vec()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed.get_or_insert(0);
                    return;
                }
            }
        }
    }

    /// Waits (bounded) until `done` holds for what arrived.
    fn poll_until(&mut self, limit: Duration, done: impl Fn(&Raw) -> bool) -> bool {
        let start = Instant::now();
        loop {
            self.poll();
            if done(self) {
                return true;
            }
            if start.elapsed() > limit || self.closed.is_some() {
                return done(self);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn messages(&self) -> Vec<String> {
        self.texts.iter().filter_map(|v| v["message"].as_str().map(str::to_owned)).collect()
    }

    fn events(&self, kind: &str) -> usize {
        self.texts.iter().filter(|v| v["event"] == kind).count()
    }

    fn acks(&self) -> usize {
        self.texts.iter().filter(|v| v["status"] == true).count()
    }
}

fn metrics(srv: &Server) -> String {
    srv.get("/metrics", None).text()
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `n` users, each registered, logged in and on a WebSocket, set up on a few threads.
fn clients(srv: &Server, prefix: &str, n: usize) -> Vec<Raw> {
    const THREADS: usize = 4;
    let cookies: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    (t..n).step_by(THREADS).map(|i| (i, srv.user(&format!("{prefix}{i}")))).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(usize, String)> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        all.sort();
        all.into_iter().map(|(_, c)| c).collect()
    });
    cookies.iter().map(|c| Raw::open(srv, c, "/ws")).collect()
}

/// The load: 1,000 clients, 10 of them sending 50 messages a second, and a
/// hand-over to a binary of another version in the middle. Every socket stays open,
/// every message reaches everyone exactly once and in the one order, every sender
/// gets an ack for each message, and nobody hears a leave.
#[test]
fn a_hand_over_under_load_drops_nothing_and_runs_the_new_binary() {
    const CLIENTS: usize = 1000;
    const SENDERS: usize = 10;
    const PER_SENDER: usize = 100;
    let (srv, exe) = start_copy(&[]);
    let pid = srv.pid();
    let started = Instant::now();
    let mut all = clients(&srv, "u", CLIENTS);
    eprintln!("{CLIENTS} clients up in {:.1} s", started.elapsed().as_secs_f64());
    let next = copy_binary(srv.dir.path(), "skiff.new", Some(NEW_VERSION));
    let out = std::process::Command::new(&next).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("skiff {NEW_VERSION}"));
    assert!(metrics(&srv).contains(&format!("skiff_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));

    let mut senders: Vec<Raw> = all.drain(..SENDERS).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = senders
            .iter_mut()
            .enumerate()
            .map(|(k, c)| {
                s.spawn(move || {
                    let start = Instant::now();
                    for i in 0..PER_SENDER {
                        // 50 a second each, on a fixed schedule.
                        let due = start + Duration::from_millis(20 * i as u64);
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        c.say(&format!("s{k}-{i}"));
                        c.poll();
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(700));
        install(&next, &exe);
        usr2(&srv);
        for h in handles {
            h.join().unwrap();
        }
    });
    let pause = pause_ms(&srv, 1);
    eprintln!("hand-over under load: pause {pause:.1} ms");

    let total = SENDERS * PER_SENDER;
    for c in all.iter_mut() {
        assert!(c.poll_until(Duration::from_secs(30), |c| c.messages().len() >= total), "got {}", c.messages().len());
    }
    for (k, c) in senders.iter_mut().enumerate() {
        let want = total - PER_SENDER;
        assert!(c.poll_until(Duration::from_secs(30), |c| c.messages().len() >= want && c.acks() >= PER_SENDER));
        assert_eq!(c.acks(), PER_SENDER, "sender {k}: one ack per message");
    }
    let order = all[0].messages();
    assert_eq!(order.len(), total);
    for k in 0..SENDERS {
        let mine: Vec<&String> = order.iter().filter(|m| m.starts_with(&format!("s{k}-"))).collect();
        let want: Vec<String> = (0..PER_SENDER).map(|i| format!("s{k}-{i}")).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>(), "sender {k}'s messages, once each, in order");
    }
    for (i, c) in all.iter().enumerate() {
        assert_eq!(c.closed, None, "client {i} was closed");
        assert_eq!(c.messages(), order, "client {i} saw another order");
        assert_eq!(c.events("leave"), 0, "client {i} heard a leave");
    }
    for (k, c) in senders.iter().enumerate() {
        let own = format!("s{k}-");
        let others: Vec<String> = order.iter().filter(|m| !m.starts_with(&own)).cloned().collect();
        assert_eq!(c.closed, None);
        assert_eq!(c.messages(), others, "sender {k}");
    }
    // The same process, now running the new file.
    assert_eq!(srv.pid(), pid);
    let m = metrics(&srv);
    assert!(m.contains(&format!("skiff_build_info{{version=\"{NEW_VERSION}\"}} 1")), "{m}");
    assert!(m.contains(&format!("skiff_connections{{kind=\"websocket\"}} {CLIENTS}\n")), "{m}");
    let image = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(image, exe, "the running image is the file now at the path");
    assert!(srv.stderr().contains(&format!("skiff {NEW_VERSION} took over")));
}
