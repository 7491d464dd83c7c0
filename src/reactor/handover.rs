//! The reactor's part of a hand-over, both ends. Giving: on SIGUSR2, let storage
//! answer what waits on it and drain, encode the server, let exactly the listener,
//! the client sockets and the memfd survive, exec. Taking: adopt the listener, put
//! the connections back and register them, so the first loop turn serves them; if
//! the state cannot be read, close the handed sockets properly (1001) and serve on.

use super::Reactor;
use crate::config::Config;
use crate::handover::{codec, os, Handed};
use crate::log;
use crate::startup::{load_saved_state, restore_saved};
use crate::storage::Storage;
use crate::store::Store;
use crate::tls::Transport;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Token};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long requests already handed to storage may take to be answered before a
/// hand-over gives up (and the old process serves on). A healthy disk takes ms.
const STORAGE_SETTLE: Duration = Duration::from_secs(5);

/// A hand-over taken and not yet through the first loop turn: how many connections
/// came, and the moments (`os::monotonic_ns`) its pause is made of.
pub(super) struct TookOver {
    conns: usize,
    since_ns: u64,
    exec_ns: u64,
    main_ns: u64,
    taken_ns: u64,
}

impl TookOver {
    /// The line for the log at the first loop turn. The pause runs from the signal to
    /// the first wait for events, which the taken sockets (registered, their bytes
    /// queued) answer at once; its parts say where a slow one went.
    pub(super) fn report(&self, now_ns: u64) -> String {
        let ms = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e6;
        format!(
            "hand-over done: {} connections (before the exec {:.1} ms, exec {:.1} ms, taking over {:.1} ms, \
             until the first turn {:.1} ms), paused {:.1} ms",
            self.conns,
            ms(self.since_ns, self.exec_ns),
            ms(self.exec_ns, self.main_ns),
            ms(self.main_ns, self.taken_ns),
            ms(self.taken_ns, now_ns),
            ms(self.since_ns, now_ns),
        )
    }
}

/// How long the new binary may take to prove it can take the state over (see
/// `probe::run`); the old process does not serve meanwhile. 10,000 connections take
/// tens of milliseconds.
const PROBE_LIMIT: Duration = Duration::from_secs(5);

/// Why a hand-over did not happen.
enum NotDone {
    /// SIGTERM or SIGINT came while it was being made: stop instead.
    Stop,
    /// Anything else: said in the log, and the old process serves on.
    Failed(String),
}

impl From<String> for NotDone {
    fn from(why: String) -> NotDone {
        NotDone::Failed(why)
    }
}

impl From<&str> for NotDone {
    fn from(why: &str) -> NotDone {
        NotDone::Failed(why.to_owned())
    }
}

/// RFC 6455 close frame, 1001 (going away).
const CLOSE_1001: [u8; 4] = [0x88, 0x02, 0x03, 0xe9];

impl Reactor {
    /// Starts as the next image of a process that handed over `inherited`.
    pub fn take_over(
        cfg: &Config,
        store: Option<Store>,
        tls: Option<Arc<rustls::ServerConfig>>,
        inherited: os::Inherited,
    ) -> Result<Reactor, String> {
        let os::Inherited { listener, epoll, bytes, since_ns, exec_ns, main_ns } = inherited;
        let listener = TcpListener::from_std(std::net::TcpListener::from(listener));
        let (handed, state) = read_state(bytes, true);
        let mut r = Reactor::build(cfg, store, tls, Some((listener, epoll)), state.is_err())?;
        let now = Instant::now();
        let why = match (state, &handed) {
            (Ok(state), Some(handed)) => {
                let keys: Vec<usize> = state.conns.iter().map(|c| c.key).collect();
                match import(&mut r.server, state, handed, now) {
                    Ok(()) => {
                        r.register_taken(&keys, now);
                        r.took_over = Some(TookOver {
                            conns: keys.len(),
                            since_ns,
                            exec_ns,
                            main_ns,
                            taken_ns: os::monotonic_ns(),
                        });
                        return Ok(r);
                    }
                    Err(why) => {
                        // Built without what is on disk, expecting the state: load it now.
                        if cfg.redis.is_none() {
                            let saved = Store::open(&cfg.db)
                                .map_err(|e| e.to_string())
                                .and_then(|mut s| load_saved_state(cfg, &mut s));
                            match saved {
                                Ok(saved) => restore_saved(&mut r.server, saved),
                                Err(e) => log::error(format_args!("hand-over: cannot read the saved sessions: {e}")),
                            }
                        }
                        why.to_owned()
                    }
                }
            }
            (Ok(_), None) => "no sockets".to_owned(),
            (Err(why), _) => why,
        };
        r.close_handed(handed, &why, now);
        Ok(r)
    }

    /// A probe run (`probe::run`): everything `take_over` does to the state and the
    /// descriptors, in memory only. No socket is read, written or watched, and
    /// nothing is written to the database: the process that asked serves on from
    /// an unchanged world if the answer is no. Returns the connections taken.
    pub fn probe(cfg: &Config, inherited: os::Inherited) -> Result<usize, String> {
        let (handed, state) = read_state(inherited.bytes, false);
        let state = state?;
        let handed = handed.ok_or("no sockets")?;
        let conns = state.conns.len();
        let poll = mio::Poll::new().map_err(|e| format!("cannot create an epoll instance: {e}"))?;
        let waker = Arc::new(
            mio::Waker::new(poll.registry(), super::STORAGE).map_err(|e| format!("cannot create a waker: {e}"))?,
        );
        let storage = Storage::files_only(waker).map_err(|e| e.to_string())?;
        let (now, unix_ms) = crate::startup::wall_clock();
        let mut server =
            crate::server::Server::new(crate::server::ServerConfig::from_config(cfg), storage, now, unix_ms);
        if cfg.redis.is_some() {
            crate::startup::join_cluster(&mut server, cfg)?;
        }
        import(&mut server, state, &handed, now).map_err(str::to_owned)?;
        // Its sockets are the next image's: dropping them here would close nothing
        // (descriptors of this process only), but nothing of it needs to run.
        std::mem::forget(server);
        // Last, as the next image opens it first: a schema it cannot read or
        // migrate refuses the hand-over too.
        if cfg.redis.is_none() {
            Store::reopen(&cfg.db).map_err(|e| e.to_string())?;
        }
        Ok(conns)
    }

    /// Watches the connections just taken over. One the kernel will not watch is
    /// dropped (it could never be served). In an adopted epoll instance they are
    /// watched already, under the same keys.
    fn register_taken(&mut self, keys: &[usize], now: Instant) {
        if self.adopted_epoll {
            return;
        }
        for &key in keys {
            let Some(sock) = self.server.stream_mut(key) else { continue };
            if let Err(e) =
                self.poll.registry().register(sock.socket_mut(), Token(key), Interest::READABLE | Interest::WRITABLE)
            {
                log::warn(format_args!("hand-over: cannot watch a connection: {e}"));
                self.server.close_now(key, now);
            }
        }
    }

    /// The fallback: the state could not be read. Every handed socket is closed
    /// through the loop (a WebSocket after a 1001), and clients reconnect and resume
    /// as after a restart. Without even the list of sockets, the sockets this
    /// process inherited are closed as they are.
    fn close_handed(&mut self, handed: Option<Vec<Handed>>, why: &str, now: Instant) {
        let listener = self.listener.as_ref().map(|l| l.as_raw_fd());
        let handed = match handed {
            Some(h) => h,
            None => {
                let except: Vec<i32> = listener.into_iter().collect();
                let stray = os::inherited_sockets(&except);
                log::warn(format_args!("hand-over unreadable ({why}): closing {} inherited sockets", stray.len()));
                return;
            }
        };
        let mut ws = 0;
        let mut closed = 0;
        for h in handed {
            if Some(h.fd) == listener || h.fd <= 2 || !os::is_open(h.fd) {
                continue;
            }
            let sock = std::net::TcpStream::from(os::own(h.fd));
            let Ok(peer) = sock.peer_addr() else { continue };
            let last: &[u8] = if h.ws { &CLOSE_1001 } else { &[] };
            ws += usize::from(h.ws);
            closed += 1;
            let key = self.server.insert_closing(Transport::Plain(TcpStream::from_std(sock)), peer, last, now);
            let sock = self.server.stream_mut(key).expect("just inserted").socket_mut();
            // An adopted epoll instance watches it already, under its old key.
            let unwatched = match self.adopted_epoll {
                true => os::unwatch(&self.poll, sock.as_raw_fd()),
                false => Ok(()),
            };
            let interest = Interest::READABLE | Interest::WRITABLE;
            if unwatched.and_then(|()| self.poll.registry().register(sock, Token(key), interest)).is_err() {
                self.server.close_now(key, now);
            }
        }
        log::warn(format_args!(
            "hand-over state unreadable ({why}): closing {closed} connections ({ws} WebSockets with 1001), serving on"
        ));
    }

    /// SIGUSR2: hand over, or say why not and serve on. A stop signal that came
    /// while the hand-over was being made is honoured here, by this image.
    pub(super) fn on_upgrade(&mut self, now: Instant) {
        if let Some(rx) = self.upgrade.as_mut() {
            let mut buf = [0u8; 16];
            while matches!(rx.read(&mut buf), Ok(n) if n > 0) {}
        }
        match self.hand_over(now) {
            Ok(()) => {}
            Err(NotDone::Stop) => {
                log::info(format_args!("hand-over not done: a stop signal came during it; stopping"));
                self.shut_down(Instant::now());
            }
            Err(NotDone::Failed(why)) => log::error(format_args!("hand-over not done, still serving: {why}")),
        }
    }

    /// Returns only if the hand-over did not happen, with why.
    fn hand_over(&mut self, now: Instant) -> Result<(), NotDone> {
        if self.server.is_shutting_down() {
            return Err(NotDone::Failed("shutting down".into()));
        }
        let exe = os::exe().ok_or("this binary's path is unknown")?;
        os::check_executable(&exe).map_err(|e| format!("{}: {e}", exe.display()))?;
        let listener = self.listener.as_ref().ok_or("no listener")?.as_raw_fd();
        let began = os::monotonic_ns();
        // Requests already with storage (or Redis) get their answers, and a cluster
        // node's messages come back with their acks: a reply cannot follow the socket
        // into the next process. No input is read meanwhile.
        let settle_by = now + STORAGE_SETTLE;
        while self.server.waiting() > 0 || !self.server.cluster_quiet() {
            let now = Instant::now();
            if now >= settle_by {
                let waiting = self.server.waiting();
                return Err(NotDone::Failed(format!(
                    "{waiting} requests still wait on storage or Redis, or Redis has not answered"
                )));
            }
            self.server.on_storage(now);
            self.pump_redis(now);
            if self.server.waiting() > 0 || !self.server.cluster_quiet() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        self.server.cx.persist_changes();
        // Everything queued for the disk is committed before the exec, and the acks
        // its commits release are queued for their senders: they travel as output.
        self.server.cx.storage.drain();
        self.server.on_storage(Instant::now());
        // Batched presence still waiting for its interval goes out with the queues.
        self.server.flush_presence(Instant::now());
        let now = Instant::now();
        if self.tls.is_some() {
            let n = self.server.close_all_now(now);
            log::info(format_args!("hand-over: {n} TLS connections closed (1001): TLS sessions cannot cross an exec"));
        }
        let result = self.exec(&exe, listener, began, now);
        // Still here: the exec did not happen.
        self.restart_storage();
        result
    }

    /// Makes the state, has the new binary prove it can take it (`probe::run`), and
    /// execs it. Until the exec nothing has changed: any refusal serves on.
    fn exec(&mut self, exe: &std::path::Path, listener: i32, began: u64, now: Instant) -> Result<(), NotDone> {
        let state = self.server.export(now).ok_or("a request or an ack still waits on storage")?;
        let mut handed = Vec::with_capacity(state.conns.len());
        for c in &state.conns {
            let sock = self.server.stream_mut(c.key).ok_or("a connection without a socket")?;
            let ws = matches!(c.phase, crate::handover::state::PhaseState::Ws(_));
            handed.push(Handed { fd: sock.socket_mut().as_raw_fd(), ws });
        }
        // Straight into the memory file, the history's frames shared with the ring:
        // no second copy of the state in this process.
        let mut memfd = os::memfd().map_err(|e| format!("memfd: {e}"))?;
        let size = codec::encode_to(&state, &handed, &mut memfd).map_err(|e| format!("memfd: {e}"))?;
        drop(state);
        let epoll = self.poll.as_raw_fd();
        let fds: Vec<i32> = handed.iter().map(|h| h.fd).chain([listener, memfd.as_raw_fd(), epoll]).collect();
        let flip = |inherit: bool| fds.iter().try_for_each(|&fd| os::set_inherit(fd, inherit));
        if let Err(e) = flip(true) {
            let _ = flip(false);
            return Err(NotDone::Failed(format!("descriptor flags: {e}")));
        }
        if self.take_stop_signal() {
            let _ = flip(false);
            return Err(NotDone::Stop);
        }
        let probe_began = Instant::now();
        let probe_value = os::env_value(memfd.as_raw_fd(), listener, epoll, began, 0);
        if let Err(why) = crate::handover::probe::run(exe, &probe_value, PROBE_LIMIT) {
            let _ = flip(false);
            return Err(NotDone::Failed(format!("{}: {why}", exe.display())));
        }
        log::info(format_args!(
            "handing over {} connections to {} ({} bytes of state; the new binary took it in a probe in {:.1} ms)",
            handed.len(),
            exe.display(),
            size,
            probe_began.elapsed().as_secs_f64() * 1e3,
        ));
        // From here to the exec no stop signal runs a handler: held, it stays pending
        // and the next image takes it. One that came before is this image's to honour.
        crate::signals::hold(true);
        if self.take_stop_signal() {
            crate::signals::hold(false);
            let _ = flip(false);
            return Err(NotDone::Stop);
        }
        let err = os::exec(exe, &os::env_value(memfd.as_raw_fd(), listener, epoll, began, os::monotonic_ns()));
        crate::signals::hold(false);
        let _ = flip(false);
        Err(NotDone::Failed(format!("exec {}: {err}", exe.display())))
    }

    /// Storage was drained for a hand-over that did not happen: start it again.
    fn restart_storage(&mut self) {
        let started = if self.server.cx.cluster.is_some() {
            // Redis holds everything; storage only reads static files.
            Storage::files_only(self.waker.clone()).map_err(|e| e.to_string())
        } else {
            Store::open(&self.db)
                .and_then(|store| Storage::spawn(store, &self.db, self.waker.clone(), Duration::ZERO))
                .map_err(|e| e.to_string())
        };
        match started {
            Ok(storage) => self.server.cx.storage = storage,
            Err(e) => log::error(format_args!("storage cannot start again after the failed hand-over: {e}")),
        }
    }
}

/// The state in `bytes`, and the sockets it says came with it, checked against
/// the descriptors this process holds. The next image (`take_over`) keeps the
/// history and frees the bytes as it goes; a probe checks the history, keeps none
/// of it and frees nothing (the next image reads the same bytes).
fn read_state(
    bytes: std::io::Result<os::StateBytes>,
    take_over: bool,
) -> (Option<Vec<Handed>>, Result<crate::handover::State, String>) {
    let decoded = bytes.map_err(|e| e.to_string()).and_then(|b| {
        let mut release = |upto: usize| {
            if take_over {
                b.release(upto);
            }
        };
        codec::decode_with(b.bytes(), take_over, &mut release).map_err(|e| e.to_string())
    });
    let (handed, state) = match decoded {
        Ok(d) => (Some(d.handed), d.state.map_err(|e| e.to_string())),
        Err(e) => (None, Err(e)),
    };
    let state = state.and_then(|s| {
        let fds_ok = handed.as_ref().is_some_and(|h| h.len() == s.conns.len() && h.iter().all(|h| os::is_open(h.fd)));
        if fds_ok {
            Ok(s)
        } else {
            Err("the sockets handed over do not match the state".to_owned())
        }
    });
    (handed, state)
}

/// Puts the handed connections into `server`: the one import both a probe and the
/// next image run, so a probe that passes has run the code the take-over runs.
fn import(
    server: &mut crate::server::Server<Transport>,
    state: crate::handover::State,
    handed: &[Handed],
    now: Instant,
) -> Result<(), &'static str> {
    // Test-only: a build whose import fails hard, for the tests that prove such a
    // binary is refused by the probe and never takes the sockets.
    if std::env::var_os(ABORT_IMPORT_FOR_TESTS).is_some() {
        std::process::abort();
    }
    let sock = |i: usize| Transport::Plain(TcpStream::from_std(std::net::TcpStream::from(os::own(handed[i].fd))));
    server.import(state, now, sock)
}

/// Set in a new image's environment (tests/handover.rs puts a wrapper at skiff's
/// path that sets it) to make its import abort.
const ABORT_IMPORT_FOR_TESTS: &str = "SKIFF_TEST_ABORT_IMPORT";
