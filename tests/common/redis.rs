//! A private `redis-server` for one test: its own loopback port and directory, AOF with
//! `appendfsync always` (what the contract's durability promise assumes), killed on
//! Drop. It can be killed with SIGKILL and restarted on the same port and directory, so
//! a test sees what a crashed Redis replays from its AOF. RESP is spoken by hand over a
//! std TcpStream: a few commands for inspecting keys do not justify a client crate.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REDIS_SERVER: &str = "redis-server";

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    starts: u32,
    /// redis-server's persistence flags, the same at every (re)start.
    persistence: Vec<String>,
}

/// One RESP reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Reply>>),
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Simple(s) => write!(f, "{s}"),
            Reply::Error(e) => write!(f, "(error) {e}"),
            Reply::Int(i) => write!(f, "{i}"),
            Reply::Bulk(Some(s)) => write!(f, "{s}"),
            Reply::Bulk(None) | Reply::Array(None) => write!(f, "(nil)"),
            Reply::Array(Some(items)) => {
                let parts: Vec<String> = items.iter().map(|r| r.to_string()).collect();
                write!(f, "{}", parts.join("\n"))
            }
        }
    }
}

/// Whether this run has a redis-server. Missing, the test fails naming the package
/// (a skip would read as a pass in `cargo test` output), unless SKIFF_SKIP_REDIS=1
/// opts out on purpose: then false, with a printed line.
pub fn available(test: &str) -> bool {
    if std::env::var("SKIFF_SKIP_REDIS").is_ok_and(|v| v == "1") {
        eprintln!("{test} not run: SKIFF_SKIP_REDIS=1 opts out of the Redis tests");
        return false;
    }
    let found = Command::new(REDIS_SERVER).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{test} needs {REDIS_SERVER} 7.x on PATH: run `apt-get install redis-server`, \
         or set SKIFF_SKIP_REDIS=1 to skip the cluster tests on purpose"
    );
    true
}

/// A port that was free a moment ago. Redis cannot bind port 0 and report it, so the
/// caller must be ready for the race and retry.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

impl Redis {
    /// A fresh Redis, answering PING, or None when SKIFF_SKIP_REDIS=1.
    pub fn start_or_skip(test: &str) -> Option<Redis> {
        if !available(test) {
            return None;
        }
        Some(Redis::start())
    }

    /// A fresh Redis with these persistence settings instead of AOF with
    /// `appendfsync always`, or None when SKIFF_SKIP_REDIS=1.
    pub fn start_or_skip_with(test: &str, persistence: &[&str]) -> Option<Redis> {
        if !available(test) {
            return None;
        }
        Some(Redis::start_persisting(persistence))
    }

    pub fn start() -> Redis {
        Redis::start_persisting(&["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
    }

    fn start_persisting(persistence: &[&str]) -> Redis {
        let persistence = persistence.iter().map(|s| s.to_string()).collect();
        let mut r = Redis { child: None, port: 0, dir: tempfile::tempdir().expect("tempdir"), starts: 0, persistence };
        let mut last = String::new();
        // Another process may take the port between our probe and redis's bind.
        for _ in 0..5 {
            r.port = free_port();
            match r.launch() {
                Ok(()) => return r,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start in 5 tries: {last}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("redis-{}.log", self.starts))
    }

    /// The server's own log of its latest start, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Spawns redis-server on self.port and waits (bounded) for PING to answer PONG.
    fn launch(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).expect("redis log");
        let mut child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--daemonize", "no"])
            .args(&self.persistence)
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {REDIS_SERVER}: {e}"))?;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(status) = child.try_wait().expect("try_wait redis") {
                return Err(format!("redis-server exited {status} on port {}:\n{}", self.port, self.log()));
            }
            // While it replays the AOF, Redis answers -LOADING: not ready yet.
            if self.try_cmd(&["PING"]).is_ok_and(|r| r == Reply::Simple("PONG".into())) {
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!("redis-server on port {} did not answer PING within 10 s:\n{}", self.port, self.log()))
    }

    /// SIGKILL, no chance to flush: only what `appendfsync always` wrote survives.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and directory: the AOF is replayed. The port is
    /// ours to reuse (SO_REUSEADDR); retried briefly in case the kernel is slow to let go.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() of a running Redis: kill9() it first");
        let mut last = String::new();
        for _ in 0..5 {
            match self.launch() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("redis-server did not restart on port {}: {last}", self.port);
    }

    /// One command; the reply rendered as text (arrays one element per line, nil as
    /// `(nil)`, errors as `(error) ...`). Panics if Redis does not answer.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args).unwrap_or_else(|e| panic!("redis {args:?}: {e}")).to_string()
    }

    /// KEYS as a sorted list (test data is small; KEYS is fine here).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        match self.try_cmd(&["KEYS", pattern]).unwrap_or_else(|e| panic!("redis KEYS: {e}")) {
            Reply::Array(Some(items)) => {
                let mut keys: Vec<String> = items.iter().map(|r| r.to_string()).collect();
                keys.sort();
                keys
            }
            other => panic!("KEYS answered {other:?}"),
        }
    }

    pub fn try_cmd(&self, args: &[&str]) -> Result<Reply, String> {
        cmd_at(self.port, args)
    }
}

/// One command to whatever answers RESP on this loopback port (a sentinel, say).
pub fn cmd_at(port: u16, args: &[&str]) -> Result<Reply, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    s.write_all(&req).map_err(|e| format!("write: {e}"))?;
    read_reply(&mut BufReader::new(s))
}

fn read_reply<R: BufRead>(r: &mut R) -> Result<Reply, String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    let line = line.strip_suffix("\r\n").ok_or_else(|| format!("truncated reply line {line:?}"))?;
    let (kind, rest) = line.split_at(1.min(line.len()));
    let int = |s: &str| s.parse::<i64>().map_err(|_| format!("bad length or integer {s:?}"));
    match kind {
        "+" => Ok(Reply::Simple(rest.to_owned())),
        "-" => Ok(Reply::Error(rest.to_owned())),
        ":" => Ok(Reply::Int(int(rest)?)),
        "$" => {
            let n = int(rest)?;
            if n < 0 {
                return Ok(Reply::Bulk(None));
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf).map_err(|e| format!("read bulk: {e}"))?;
            buf.truncate(n as usize);
            Ok(Reply::Bulk(Some(String::from_utf8_lossy(&buf).into_owned())))
        }
        "*" => {
            let n = int(rest)?;
            if n < 0 {
                return Ok(Reply::Array(None));
            }
            (0..n).map(|_| read_reply(r)).collect::<Result<Vec<_>, _>>().map(|v| Reply::Array(Some(v)))
        }
        _ => Err(format!("unknown RESP type in {line:?}")),
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!("--- redis-server log (port {}) ---\n{}", self.port, self.log());
        }
        self.kill9();
    }
}
