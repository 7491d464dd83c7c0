//! The control socket itself: a Unix stream listener in the reactor's poll, its few
//! clients, their bytes in and answers out. All it decides is framing (whole lines,
//! one request at a time per client, so answers come in order) and who is calling
//! (SO_PEERCRED, for the log). Commands run in `exec`.

use super::protocol::{parse, Answer, Lines, Request};
use crate::log;
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use slab::Slab;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub const LISTENER: Token = Token(usize::MAX - 6);
/// Client tokens start here: far above any connection's slab key, below the fixed
/// tokens at the top.
const CLIENT_BASE: usize = usize::MAX / 2;
/// Operators and their scripts, not a crowd: more are turned away.
const MAX_CLIENTS: usize = 16;
/// Input a client may hold unanswered (a pipelined script, say).
const MAX_INPUT: usize = 256 * 1024;

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
}

pub struct Listener {
    sock: UnixListener,
    path: PathBuf,
    /// The socket file we made (device, inode): only that one is removed at exit.
    file: (u64, u64),
    clients: Slab<Client>,
    next_id: u64,
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
    })
}

impl Listener {
    pub fn register(&mut self, registry: &Registry) -> io::Result<()> {
        registry.register(&mut self.sock, LISTENER, Interest::READABLE)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts every waiting client.
    pub fn accept(&mut self, registry: &Registry) {
        loop {
            match self.sock.accept() {
                Ok((mut stream, _)) => {
                    if self.clients.len() >= MAX_CLIENTS {
                        let _ = stream.write(Answer::error("busy", "too many control clients").to_line().as_bytes());
                        continue;
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
                    });
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
    pub fn on_ready(&mut self, token: Token, registry: &Registry) -> Vec<(u64, Request)> {
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
        self.next_requests(key, &mut requests);
        self.flush(key, registry);
        requests
    }

    /// Sends each answer to the client that asked (gone clients' are dropped), and
    /// returns the requests those clients had queued behind.
    pub fn deliver(&mut self, answers: Vec<(u64, Answer)>, registry: &Registry) -> Vec<(u64, Request)> {
        let mut requests = Vec::new();
        for (id, answer) in answers {
            let Some(key) = self.clients.iter().find(|(_, c)| c.waiting == Some(id)).map(|(k, _)| k) else { continue };
            let c = &mut self.clients[key];
            c.waiting = None;
            c.out.extend_from_slice(answer.to_line().as_bytes());
            self.next_requests(key, &mut requests);
            self.flush(key, registry);
        }
        requests
    }

    /// Takes lines off client `key` while it has no request under way.
    fn next_requests(&mut self, key: usize, requests: &mut Vec<(u64, Request)>) {
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
    fn flush(&mut self, key: usize, registry: &Registry) {
        let c = &mut self.clients[key];
        while !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(0) => {
                    c.peer_gone = true;
                    break;
                }
                Ok(n) => {
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
