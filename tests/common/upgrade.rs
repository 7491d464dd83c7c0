//! Helpers for the hand-over tests: copies of the built binary installed the way a
//! package upgrade does, SIGUSR2, and what the log says about a hand-over.
#![allow(dead_code)]

use super::common::*;
use super::raw::Raw;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const NEW_VERSION: &str = "1.2.1";

/// A copy of the built binary at `dir/name`, its version string replaced by `version`
/// (same length) if given.
pub fn copy_binary(dir: &Path, name: &str, version: Option<&str>) -> PathBuf {
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
pub fn install(new: &Path, exe: &Path) {
    std::fs::rename(new, exe).unwrap();
}

/// A server started from a copy of the binary in its own directory.
pub fn start_copy(args: &[&str]) -> (Server, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let exe = copy_binary(dir.path(), "skiff", None);
    (Server::start_exe(dir, &exe, args), exe)
}

pub fn usr2(srv: &Server) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(srv.pid() as i32, libc::SIGUSR2) };
}

/// Waits for `needle` in the server's log; panics with the log after 20 s.
pub fn wait_log(srv: &Server, needle: &str) -> String {
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
pub fn log_count(srv: &Server, needle: &str) -> usize {
    srv.stderr().lines().filter(|l| l.contains(needle)).count()
}

/// A hand-over's pause as the new process logged it (the `nth` hand-over, from 1).
pub fn pause_ms(srv: &Server, nth: usize) -> f64 {
    assert!(wait_for(Duration::from_secs(20), || log_count(srv, "hand-over done") >= nth), "{}", srv.stderr());
    let log = srv.stderr();
    let line = log.lines().filter(|l| l.contains("hand-over done")).nth(nth - 1).unwrap().to_owned();
    line.split("paused ").nth(1).unwrap().trim_end_matches(" ms").parse().unwrap()
}

pub fn metrics(srv: &Server) -> String {
    srv.get("/metrics", None).text()
}

pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `n` users, each registered, logged in and on a WebSocket, set up on a few threads.
pub fn clients(srv: &Server, prefix: &str, n: usize) -> Vec<Raw> {
    clients_at(srv, prefix, n, "/ws")
}

/// `clients` on the WebSocket path `path` (`/ws?v=2`, say).
pub fn clients_at(srv: &Server, prefix: &str, n: usize, path: &str) -> Vec<Raw> {
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
    cookies.iter().map(|c| Raw::open(srv, c, path)).collect()
}
