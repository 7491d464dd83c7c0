//! The control socket itself: a Unix stream listener in the reactor's poll, its few
//! clients, their bytes in and answers out. All it decides is framing (whole lines,
//! one request at a time per client, so answers come in order), who is calling
//! (SO_PEERCRED, for the log), and how long a client may hold a place without a
//! request: the places are few, so a client idle or mid-line for `IDLE_LIMIT` is
//! closed, and a newcomer finding them all taken replaces the longest idle one.
//! Commands run in `exec`.

use super::protocol::{parse, Answer, Lines, Request};
use crate::log;
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use slab::Slab;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::tokens::{CONTROL_CLIENT_BASE as CLIENT_BASE, CONTROL_LISTENER as LISTENER};
/// Operators and their scripts, not a crowd: more are turned away.
pub const MAX_CLIENTS: usize = 16;
/// Input a client may hold unanswered (a pipelined script, say).
const MAX_INPUT: usize = 256 * 1024;
/// A client with no request under way is closed after this long without a whole
/// line or an answer read: `skiff ctl` sends its line at once, and a script has
/// ample time between two; half a line does not count.
pub const IDLE_LIMIT: Duration = Duration::from_secs(10);

pub fn is_client(token: Token) -> bool {
    (CLIENT_BASE..CLIENT_BASE + MAX_CLIENTS).contains(&token.0)
}

struct Client {
    stream: UnixStream,
    uid: Option<u32>,
    lines: Lines,
    pending_bytes: usize,
    out: Vec<u8>,
    /// The request of this client being carried out; the next waits for its answer.
    waiting: Option<u64>,
    /// Answer what is owed, then hang up.
    closing: bool,
    peer_gone: bool,
    /// When this client last made progress: connected, sent a whole line, was
    /// given an answer, or read some of it. Counts only while `waiting` is `None`.
    active: Instant,
    /// Order of arrival: among clients idle since the same turn, the first goes first.
    arrival: u64,
}

impl Client {
    /// When it is closed unless it makes progress; `None` while a request of its
    /// own is under way (a backup may take minutes).
    fn deadline(&self) -> Option<Instant> {
        self.waiting.is_none().then(|| self.active + IDLE_LIMIT)
    }
}

pub struct Listener {
    sock: UnixListener,
    path: PathBuf,
    /// The socket file we made (device, inode): only that one is removed at exit.
    file: (u64, u64),
    clients: Slab<Client>,
    next_id: u64,
    arrivals: u64,
}

/// Binds the control socket at `path`, mode 0600 from its first moment. A live
/// socket there (another skiff answers) or a file that is not a socket is an error;
/// a socket nobody answers on is what a killed skiff left, and is replaced.
pub fn bind(path: &Path) -> Result<Listener, String> {
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(format!(
                    "control socket {shown}: another skiff is serving it (stop that one, or give this one its own --control)"
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
                .map_err(|e| format!("control socket {shown}: cannot remove the stale socket: {e}"))?,
            Err(e) => return Err(format!("control socket {shown}: {e}")),
        },
        Ok(_) => return Err(format!("control socket {shown}: exists and is not a socket; remove it or choose another --control")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("control socket {shown}: {e}")),
    }
    // umask rather than a chmod after bind: no moment when others may connect. Called
    // before any other thread exists, so no file of theirs gets this mask.
    // SAFETY: umask only swaps the process's file mode mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let std_sock = bound.map_err(|e| format!("cannot create control socket {shown}: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("control socket {shown}: {e}"))?;
    std_sock.set_nonblocking(true).map_err(|e| format!("control socket {shown}: {e}"))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("control socket {shown}: {e}"))?;
    Ok(Listener {
        sock: UnixListener::from_std(std_sock),
        path: path.to_owned(),
        file: (meta.dev(), meta.ino()),
        clients: Slab::new(),
        next_id: 1,
        arrivals: 0,
    })
}

impl Listener {
    pub fn register(&mut self, registry: &Registry) -> io::Result<()> {
        registry.register(&mut self.sock, LISTENER, Interest::READABLE)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts every waiting client. With every place taken, the client idle the
    /// longest makes room; only when all have requests under way is one turned away.
    pub fn accept(&mut self, registry: &Registry, now: Instant) {
        loop {
            match self.sock.accept() {
                Ok((mut stream, _)) => {
                    if self.clients.len() >= MAX_CLIENTS {
                        let idlest = self
                            .clients
                            .iter()
                            .filter(|(_, c)| c.waiting.is_none())
                            .min_by_key(|(_, c)| (c.active, c.arrival));
                        match idlest.map(|(key, _)| key) {
                            Some(key) => {
                                self.hang_up(key, "too many control clients: this one was idle the longest", registry)
                            }
                            None => {
                                let _ = stream
                                    .write(Answer::error("busy", "too many control clients").to_line().as_bytes());
                                continue;
                            }
                        }
                    }
                    let uid = peer_uid(&stream);
                    let entry = self.clients.vacant_entry();
                    let token = Token(CLIENT_BASE + entry.key());
                    if let Err(e) = registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE) {
                        log::warn(format_args!("control: register a client: {e}"));
                        continue;
                    }
                    entry.insert(Client {
                        stream,
                        uid,
                        lines: Lines::default(),
                        pending_bytes: 0,
                        out: Vec::new(),
                        waiting: None,
                        closing: false,
                        peer_gone: false,
                        active: now,
                        arrival: self.arrivals,
                    });
                    self.arrivals += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn(format_args!("control: accept: {e}"));
                    return;
                }
            }
        }
    }

    /// Readiness on a client: reads what it sent, writes what it is owed. Returns the
    /// requests to carry out, each with its id.
    pub fn on_ready(&mut self, token: Token, registry: &Registry, now: Instant) -> Vec<(u64, Request)> {
        let key = token.0 - CLIENT_BASE;
        let mut requests = Vec::new();
        let Some(c) = self.clients.get_mut(key) else { return requests };
        let mut buf = [0u8; 4096];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    c.peer_gone = true;
                    break;
                }
                Ok(n) => {
                    c.pending_bytes += n;
                    c.lines.push(&buf[..n]);
                    if c.pending_bytes > MAX_INPUT {
                        c.closing = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    c.peer_gone = true;
                    break;
                }
            }
        }
        self.next_requests(key, &mut requests, now);
        self.flush(key, registry, now);
        requests
    }

    /// Sends each answer to the client that asked (gone clients' are dropped), and
    /// returns the requests those clients had queued behind.
    pub fn deliver(&mut self, answers: Vec<(u64, Answer)>, registry: &Registry, now: Instant) -> Vec<(u64, Request)> {
        let mut requests = Vec::new();
        for (id, answer) in answers {
            let Some(key) = self.clients.iter().find(|(_, c)| c.waiting == Some(id)).map(|(k, _)| k) else { continue };
            let c = &mut self.clients[key];
            c.waiting = None;
            c.active = now;
            c.out.extend_from_slice(answer.to_line().as_bytes());
            self.next_requests(key, &mut requests, now);
            self.flush(key, registry, now);
        }
        requests
    }

    /// Takes lines off client `key` while it has no request under way.
    fn next_requests(&mut self, key: usize, requests: &mut Vec<(u64, Request)>, now: Instant) {
        let c = &mut self.clients[key];
        while c.waiting.is_none() && !c.closing {
            let line = match c.lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(_) => {
                    c.out.extend_from_slice(Answer::error("bad_request", "request line too long").to_line().as_bytes());
                    c.closing = true;
                    break;
                }
            };
            c.pending_bytes = c.pending_bytes.saturating_sub(line.len() + 1);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            c.active = now;
            let uid = c.uid.map_or("?".to_owned(), |u| u.to_string());
            match parse(&line) {
                Ok(req) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    log::info(format_args!("control: uid {uid}: {}", req.summary()));
                    c.waiting = Some(id);
                    requests.push((id, req));
                }
                Err(answer) => {
                    log::info(format_args!("control: uid {uid}: refused: {}", answer.message()));
                    c.out.extend_from_slice(answer.to_line().as_bytes());
                }
            }
        }
    }

    /// Writes what client `key` is owed; drops it once it is done with.
    fn flush(&mut self, key: usize, registry: &Registry, now: Instant) {
        let c = &mut self.clients[key];
        while !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(0) => {
                    c.peer_gone = true;
                    break;
                }
                Ok(n) => {
                    // A long answer read slowly is progress, not idling.
                    c.active = now;
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    c.peer_gone = true;
                    c.out.clear();
                    break;
                }
            }
        }
        // A client that hung up still gets its request carried out; only its answer
        // has nowhere to go. One that is closing goes once it has its answers.
        let done_with = (c.peer_gone && c.waiting.is_none()) || (c.closing && c.out.is_empty() && c.waiting.is_none());
        if done_with {
            let mut c = self.clients.remove(key);
            let _ = registry.deregister(&mut c.stream);
        }
    }
}

impl Listener {
    /// The next moment a client is due to be closed for idling (for the poll timeout).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.iter().filter_map(|(_, c)| c.deadline()).min()
    }

    /// Closes the clients idle (or mid-line) for `IDLE_LIMIT` by `now`.
    pub fn on_timeout(&mut self, now: Instant, registry: &Registry) {
        let due: Vec<usize> =
            self.clients.iter().filter(|(_, c)| c.deadline().is_some_and(|d| d <= now)).map(|(k, _)| k).collect();
        for key in due {
            self.hang_up(key, "no request line for 10 s: closed", registry);
        }
    }

    /// Closes client `key` now, telling it why if nothing else is owed to it (one
    /// non-blocking write: a client that reads nothing is not waited for).
    fn hang_up(&mut self, key: usize, why: &str, registry: &Registry) {
        let mut c = self.clients.remove(key);
        if c.out.is_empty() {
            let _ = c.stream.write(Answer::error("closed", why).to_line().as_bytes());
        }
        let _ = registry.deregister(&mut c.stream);
        let uid = c.uid.map_or("?".to_owned(), |u| u.to_string());
        // Debug: a flood of idle clients would otherwise flood the log too.
        log::debug(format_args!("control: uid {uid}: {why}"));
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Another skiff may have replaced a socket we thought stale: leave theirs.
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.file {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// The calling process's uid, as the kernel saw it connect (SO_PEERCRED).
fn peer_uid(stream: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for the kernel to write; the fd is open.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixStream as StdStream;

    fn client(path: &Path) -> StdStream {
        let s = StdStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    /// The next line the server sent, or `None` once it has closed.
    fn line(s: &StdStream) -> Option<String> {
        let mut l = String::new();
        (std::io::BufReader::new(s).read_line(&mut l).unwrap() > 0).then_some(l)
    }

    #[test]
    fn idle_and_half_line_clients_close_after_the_limit_and_answers_restart_it() {
        let dir = tempfile::tempdir().unwrap();
        let poll = mio::Poll::new().unwrap();
        let mut l = bind(&dir.path().join("c")).unwrap();
        let t0 = Instant::now();
        let idle = client(l.path());
        let mut half = client(l.path());
        let mut asker = client(l.path());
        l.accept(poll.registry(), t0);
        assert_eq!(l.clients.len(), 3);
        assert_eq!(l.next_deadline(), Some(t0 + IDLE_LIMIT));
        // Half a line, late, does not count as progress; a whole request does.
        half.write_all(br#"{"cmd":"sta"#).unwrap();
        asker.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        let at = t0 + Duration::from_secs(5);
        let mut asked = Vec::new();
        for key in l.clients.iter().map(|(k, _)| k).collect::<Vec<_>>() {
            asked.extend(l.on_ready(Token(CLIENT_BASE + key), poll.registry(), at));
        }
        assert_eq!(asked.len(), 1);
        assert_eq!(l.next_deadline(), Some(t0 + IDLE_LIMIT), "the asker has no deadline while it waits");
        l.on_timeout(t0 + IDLE_LIMIT - Duration::from_millis(1), poll.registry());
        assert_eq!(l.clients.len(), 3, "not yet");
        let answered = t0 + Duration::from_secs(8);
        l.deliver(vec![(asked[0].0, Answer::error("x", "an answer"))], poll.registry(), answered);
        assert!(line(&asker).unwrap().contains("an answer"));
        l.on_timeout(t0 + IDLE_LIMIT, poll.registry());
        assert_eq!(l.clients.len(), 1, "the idle and the half-line client are closed");
        for s in [&idle, &half] {
            assert!(line(s).unwrap().contains("no request line for 10 s"));
            assert_eq!(line(s), None, "then the connection ends");
        }
        assert_eq!(l.next_deadline(), Some(answered + IDLE_LIMIT), "an answer restarts the clock");
        l.on_timeout(answered + IDLE_LIMIT, poll.registry());
        assert!(l.clients.is_empty());
        assert!(line(&asker).unwrap().contains("no request line"));
    }

    #[test]
    fn a_full_table_makes_room_by_closing_the_longest_idle_client() {
        let dir = tempfile::tempdir().unwrap();
        let poll = mio::Poll::new().unwrap();
        let mut l = bind(&dir.path().join("c")).unwrap();
        let t0 = Instant::now();
        let mut flood = Vec::new();
        for _ in 0..MAX_CLIENTS {
            flood.push(client(l.path()));
        }
        l.accept(poll.registry(), t0);
        assert_eq!(l.clients.len(), MAX_CLIENTS);
        // Idle since the same moment, they go in their order of arrival (the first
        // newcomer takes the first one's slot, and is not the next to go).
        let newcomers = [client(l.path()), client(l.path())];
        l.accept(poll.registry(), t0);
        assert_eq!(l.clients.len(), MAX_CLIENTS);
        for gone in &flood[..2] {
            assert!(line(gone).unwrap().contains("idle the longest"));
            assert_eq!(line(gone), None);
        }
        (&newcomers[0]).write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        let first = l.clients.iter().find(|(_, c)| c.arrival == MAX_CLIENTS as u64).map(|(k, _)| k).unwrap();
        let asked = l.on_ready(Token(CLIENT_BASE + first), poll.registry(), t0 + Duration::from_secs(1));
        assert_eq!(asked.len(), 1, "the newcomer is served");
        // With every place waiting on a request, a newcomer is turned away instead.
        for (i, s) in flood.iter_mut().enumerate().skip(2) {
            s.write_all(format!("{{\"cmd\":\"users\",\"limit\":{i}}}\n").as_bytes()).unwrap();
        }
        (&newcomers[1]).write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        for key in l.clients.iter().map(|(k, _)| k).collect::<Vec<_>>() {
            l.on_ready(Token(CLIENT_BASE + key), poll.registry(), t0 + Duration::from_secs(2));
        }
        assert!(l.clients.iter().all(|(_, c)| c.waiting.is_some()));
        let refused = client(l.path());
        l.accept(poll.registry(), t0 + Duration::from_secs(3));
        assert!(line(&refused).unwrap().contains("too many control clients"));
        assert_eq!(l.clients.len(), MAX_CLIENTS);
    }
}
