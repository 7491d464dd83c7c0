//! Shared harness for the integration tests: the real `skiff` binary on an ephemeral
//! loopback port with a temporary database, a raw HTTP/1.1 client over real
//! sockets, and a blocking tungstenite WebSocket client. Every wait has a timeout.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    stderr_path: PathBuf,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts skiff with extra arguments, on 127.0.0.1:0 with a fresh database.
    pub fn start_with(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        Server::start_in(dir, args)
    }

    /// Starts skiff on an existing directory (restart tests keep the database).
    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Server {
        Server::spawn(dir, args, None)
    }

    /// Starts skiff with its open-file limit lowered to `nofile` (EMFILE tests).
    pub fn start_with_nofile(nofile: u32, args: &[&str]) -> Server {
        Server::start_under(tempfile::tempdir().expect("tempdir"), &[&format!("ulimit -n {nofile}")], &[], args)
    }

    /// Starts skiff after the shell commands in `setup` (limits) and behind the
    /// command `wrapper` (strace, say), in a process group of its own that is killed
    /// whole when the server is dropped.
    pub fn start_under(dir: tempfile::TempDir, setup: &[&str], wrapper: &[&str], args: &[&str]) -> Server {
        let mut script = setup.iter().map(|c| format!("{c} && ")).collect::<String>();
        script.push_str("exec \"$@\"");
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).arg("sh").args(wrapper).arg(env!("CARGO_BIN_EXE_skiff"));
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        Server::spawn_cmd(dir, cmd, args)
    }

    /// Starts the binary at `exe` (a copy, for hand-over tests) instead of the built one.
    pub fn start_exe(dir: tempfile::TempDir, exe: &Path, args: &[&str]) -> Server {
        Server::spawn_cmd(dir, Command::new(exe), args)
    }

    fn spawn(dir: tempfile::TempDir, args: &[&str], nofile: Option<u32>) -> Server {
        match nofile {
            None => Server::spawn_cmd(dir, Command::new(env!("CARGO_BIN_EXE_skiff")), args),
            Some(n) => Server::start_under(dir, &[&format!("ulimit -n {n}")], &[], args),
        }
    }

    fn spawn_cmd(dir: tempfile::TempDir, mut cmd: Command, args: &[&str]) -> Server {
        let db = dir.path().join("chat.db");
        let stderr_path = dir.path().join(format!("stderr-{}.log", Instant::now().elapsed().as_nanos()));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr log");
        let mut child = cmd
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--db")
            .arg(&db)
            .args(args)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn skiff");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read first line");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .or_else(|| line.trim().strip_prefix("listening on https://"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        Server { child, addr, dir, stderr_path }
    }

    /// The server's user+system CPU time so far, in seconds (from /proc).
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("proc stat");
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        // After the command name: state is field 3, utime 14 and stime 15 (1-based).
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("chat.db")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends a signal and waits (bounded) for the exit status.
    pub fn signal(&mut self, sig: i32) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        self.wait_exit(Duration::from_secs(10)).expect("skiff did not exit after the signal")
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server, keeping its directory for a restart.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.signal(libc::SIGTERM);
        self.take_dir()
    }

    /// The directory of a server that has already exited (killed), for a restart.
    pub fn stop_killed(mut self) -> tempfile::TempDir {
        self.wait_exit(Duration::from_secs(10)).expect("skiff exited");
        self.take_dir()
    }

    fn take_dir(&mut self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }

    pub fn register(&self, name: &str) -> String {
        let r = self.post("/api/register", &format!(r#"{{"username": "{name}"}}"#), None);
        assert_eq!(r.status, 201, "register {name}: {}", r.text());
        r.json()["key"].as_str().expect("key").to_owned()
    }

    /// Logs in with `key` and returns the cookie header value `session=...`.
    pub fn login(&self, key: &str) -> String {
        let r = self.post("/api/login", &format!(r#"{{"key": "{key}"}}"#), None);
        assert_eq!(r.status, 200, "login: {}", r.text());
        r.cookie().expect("session cookie")
    }

    /// Registers and logs in; returns the cookie.
    pub fn user(&self, name: &str) -> String {
        let key = self.register(name);
        self.login(&key)
    }

    pub fn get(&self, path: &str, cookie: Option<&str>) -> Resp {
        self.request("GET", path, cookie, None)
    }

    pub fn post(&self, path: &str, body: &str, cookie: Option<&str>) -> Resp {
        self.request("POST", path, cookie, Some(body))
    }

    pub fn request(&self, method: &str, path: &str, cookie: Option<&str>, body: Option<&str>) -> Resp {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
        if let Some(c) = cookie {
            req.push_str(&format!("Cookie: {c}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()));
        } else {
            req.push_str("\r\n");
        }
        self.raw(req.as_bytes())
    }

    /// Sends raw bytes on a fresh connection and reads one response.
    pub fn raw(&self, bytes: &[u8]) -> Resp {
        let mut s = self.connect();
        s.write_all(bytes).expect("write");
        read_response(&mut s).expect("response")
    }

    pub fn ws(&self, cookie: &str) -> Ws {
        self.try_ws(cookie).unwrap_or_else(|e| panic!("websocket upgrade failed: {e}"))
    }

    pub fn try_ws(&self, cookie: &str) -> Result<Ws, tungstenite::Error> {
        self.try_ws_at("/ws", cookie)
    }

    /// A WebSocket on `path` (with its query: `/ws?v=2&since=...`).
    pub fn try_ws_at(&self, path: &str, cookie: &str) -> Result<Ws, tungstenite::Error> {
        let mut req = format!("ws://{}{path}", self.addr).into_client_request().unwrap();
        req.headers_mut().insert("Cookie", cookie.parse().unwrap());
        let stream = self.connect();
        match tungstenite::client(req, MaybeTlsStream::Plain(stream)) {
            Ok((ws, _)) => Ok(Ws { ws }),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
            Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("blocking handshake interrupted"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The whole group: a wrapper's child (skiff under strace) goes too. Servers
        // started directly are their own only member of our group; kill them alone.
        // SAFETY: kill(2) on our child's process group, or on our child.
        unsafe {
            let pid = self.child.id() as i32;
            if libc::getpgid(pid) == pid {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- skiff stderr ---\n{}", self.stderr());
        }
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
    /// The error code of an error body.
    pub fn error(&self) -> String {
        assert_eq!(self.header("content-type"), Some("application/json"), "error responses are JSON");
        self.json()["error"].as_str().expect("error code").to_owned()
    }
    pub fn cookie(&self) -> Option<String> {
        let sc = self.header("set-cookie")?;
        Some(sc.split(';').next()?.trim().to_owned())
    }
}

/// Reads one HTTP response (Content-Length framed) from a stream.
pub fn read_response<R: Read>(s: &mut R) -> Option<Resp> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8(buf).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':').map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if status != 100 && status != 101 {
        s.read_exact(&mut body).ok()?;
    }
    Some(Resp { status, headers, body })
}

/// Reads until the peer closes (or the timeout); the bytes received.
pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

pub struct Ws {
    pub ws: WebSocket<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    pub fn say(&mut self, message: &str) {
        self.send_text(&serde_json::json!({ "message": message }).to_string());
    }

    /// The next text message as JSON; panics on timeout, close or binary.
    pub fn recv(&mut self) -> serde_json::Value {
        loop {
            match self.ws.read().expect("websocket read") {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("server sent JSON"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected text, got {other:?}"),
            }
        }
    }

    /// Skips messages until one matches.
    pub fn recv_until(&mut self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        for _ in 0..10_000 {
            let v = self.recv();
            if pred(&v) {
                return v;
            }
        }
        panic!("no matching message");
    }

    /// Reads until the server's close frame; returns its code (None if the stream
    /// ended without one).
    pub fn close_code(&mut self) -> Option<u16> {
        for _ in 0..100_000 {
            match self.ws.read() {
                Ok(Message::Close(Some(f))) => return Some(u16::from(f.code)),
                Ok(Message::Close(None)) => return Some(u16::from(CloseCode::Status)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    pub fn set_timeout(&mut self, t: Duration) {
        if let MaybeTlsStream::Plain(s) = self.ws.get_mut() {
            s.set_read_timeout(Some(t)).unwrap();
        }
    }

    /// Reads up to the server's close frame: its code and reason (1005 and none
    /// for a close frame without a body); panics if the stream ends without one.
    pub fn close_frame(&mut self) -> (u16, String) {
        for _ in 0..10_000 {
            match self.ws.read() {
                Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
                Ok(Message::Close(None)) => return (1005, String::new()),
                Ok(_) => continue,
                Err(e) => panic!("no close frame: {e}"),
            }
        }
        panic!("no close frame in 10000 frames");
    }

    /// Nothing but pings and pongs arrives within a short wait.
    pub fn quiet(&mut self) -> bool {
        self.set_timeout(Duration::from_millis(400));
        let got = loop {
            match self.ws.read() {
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(m) => break Some(m),
                Err(_) => break None,
            }
        };
        self.set_timeout(IO_TIMEOUT);
        got.is_none()
    }
}

/// The status and error code of a refused upgrade; panics if it upgraded.
pub fn refused(r: Result<Ws, tungstenite::Error>) -> (u16, String) {
    match r {
        Ok(_) => panic!("upgraded"),
        Err(tungstenite::Error::Http(resp)) => {
            let body: serde_json::Value = serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}")).unwrap();
            (resp.status().as_u16(), body["error"].as_str().unwrap_or("").to_owned())
        }
        Err(e) => panic!("no HTTP answer: {e}"),
    }
}

pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// Live (not zombie) processes in a process group, as "pid comm", from /proc: what a
/// test that killed a group checks is gone.
pub fn group_members(pgid: i32) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return found };
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ')'.
        let Some((head, rest)) = stat.rsplit_once(") ") else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
            found.push(head.replace(" (", " "));
        }
    }
    found
}

/// A throwaway certificate for "localhost" and its key, written as PEM into `dir`,
/// for a skiff started with `args()` (`--tls-cert`, `--tls-key`); `der` is what a
/// client trusts.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: rustls_pki_types::CertificateDer<'static>,
}

impl TlsFiles {
    pub fn new(dir: &Path) -> TlsFiles {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        TlsFiles { cert, key, der: ck.cert.der().clone() }
    }

    pub fn args(&self) -> [&str; 4] {
        ["--tls-cert", self.cert.to_str().unwrap(), "--tls-key", self.key.to_str().unwrap()]
    }
}
