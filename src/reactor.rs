//! The event loop: one thread, one `mio::Poll`. It accepts sockets, turns readiness
//! events and the clock into calls on `Server`, flushes once per turn, and sleeps
//! until the next event or deadline. It decides nothing about any protocol.

use crate::config::Config;
use crate::control::{self, listener::Listener};
use crate::log;
use crate::server::Server;
use crate::startup;
use crate::store::Store;
use crate::tls::Transport;
use mio::net::{TcpListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod handover;
mod redis;

use crate::tokens::{CONTROL_LISTENER, LISTENER, SIGNALS, STORAGE, UPGRADE};

/// Connections flushed between two looks at the clock (~8 us of loopback writes
/// each, measured with perf: almost all kernel TCP).
const FLUSH_SLICE: usize = 32;

/// A fan-out looks at new events at least this often. Slices of a shorter pass run
/// back to back: at 100 clients each message cost 4 `epoll_wait` calls (one per
/// slice of 32), where one does (measured with `strace -c`).
const FLUSH_TURN: Duration = Duration::from_millis(1);

/// Most connections accepted in one loop turn. A reconnect storm's backlog is taken
/// in slices, and between two slices the clients already connected are read and
/// written: each turn adds at most this many handshakes (~10-20 us of work each) to
/// the wait of a chat message already in. The kernel's backlog (`listen(1024)`)
/// holds the rest, so nothing queues without bound in here.
const ACCEPT_BATCH: usize = 128;

/// Back-off after accept fails for lack of descriptors: retrying at once would spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

pub struct Reactor {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    signals: Option<UnixStream>,
    server: Server<Transport>,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_connections: usize,
    accept_retry: Option<Instant>,
    /// The last accept stopped at `ACCEPT_BATCH` with more maybe waiting: the listener
    /// is edge-triggered, so the loop comes back to it without a new event.
    accept_more: bool,
    /// `skiff ctl`'s socket, and the requests read from it this turn.
    control: Listener,
    control_requests: Vec<(u64, control::Request)>,
    /// Memory was freed since the last trim (see `trim_heap`).
    heap_dirty: bool,
    last_trim: Instant,
    /// SIGUSR2 arrives here.
    upgrade: Option<UnixStream>,
    /// What storage needs to start again after a hand-over that failed.
    db: PathBuf,
    waker: Arc<Waker>,
    /// Taken over from a previous process and not yet through the first loop turn:
    /// when the hand-over began (`handover::os::monotonic_ns`) and the connections.
    took_over: Option<handover::TookOver>,
    /// The epoll instance came from the previous process, its watches with it.
    adopted_epoll: bool,
    /// Cluster mode: the sockets of the links to Redis.
    redis: redis::RedisLinks,
}

impl Reactor {
    /// `tls`: serve HTTPS/WSS with this configuration instead of plain HTTP.
    /// `store` is the validated database; its sessions come back, then it moves to
    /// the storage writer thread. Errors are one line for the operator.
    /// `store` is `None` in cluster mode (`--redis`): Redis holds everything.
    pub fn new(cfg: &Config, store: Option<Store>, tls: Option<Arc<rustls::ServerConfig>>) -> Result<Reactor, String> {
        Reactor::build(cfg, store, tls, None, true)
    }

    /// `new`, on `listener` if given (a hand-over's, with its epoll instance if the
    /// previous process handed that over too), with the sessions and history saved
    /// on disk if `load_saved`.
    fn build(
        cfg: &Config,
        store: Option<Store>,
        tls: Option<Arc<rustls::ServerConfig>>,
        listener: Option<(TcpListener, Option<std::os::fd::OwnedFd>)>,
        load_saved: bool,
    ) -> Result<Reactor, String> {
        let poll = Poll::new().map_err(|e| format!("cannot create an epoll instance: {e}"))?;
        let (listener, inherited_epoll) = match listener {
            Some((l, epoll)) => (Some(l), epoll),
            None => (None, None),
        };
        let adopted = match inherited_epoll {
            Some(epoll) => match crate::handover::os::adopt_epoll(&poll, epoll) {
                Ok(()) => true,
                Err(e) => {
                    log::warn(format_args!("hand-over: cannot adopt the epoll instance ({e}); watching anew"));
                    false
                }
            },
            None => false,
        };
        // First, while this is the only thread: binding sets the process's umask.
        let control_path = cfg.control.clone().unwrap_or_else(|| control::cli::beside(&cfg.db));
        let mut control = control::listener::bind(&control_path)?;
        control.register(poll.registry()).map_err(|e| format!("control socket {}: {e}", control_path.display()))?;
        let listen_error = |e: io::Error| format!("cannot listen on {}: {e}", cfg.listen);
        let mut listener = match listener {
            Some(l) => l,
            None => bind(cfg.listen, cfg.reuse_port).map_err(listen_error)?,
        };
        let local_addr = listener.local_addr().map_err(listen_error)?;
        if adopted {
            // Still watched in the adopted instance: watched anew, through mio.
            crate::handover::os::unwatch(&poll, std::os::fd::AsRawFd::as_raw_fd(&listener)).map_err(listen_error)?;
        }
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE).map_err(listen_error)?;
        let waker = Arc::new(Waker::new(poll.registry(), STORAGE).map_err(|e| format!("cannot create a waker: {e}"))?);
        let server = startup::server(cfg, store, waker.clone(), load_saved)?;
        Ok(Reactor {
            poll,
            listener: Some(listener),
            local_addr,
            signals: None,
            server,
            tls,
            max_connections: cfg.max_connections.unwrap_or_else(default_max_connections),
            accept_retry: None,
            accept_more: false,
            control,
            control_requests: Vec::new(),
            heap_dirty: false,
            last_trim: Instant::now(),
            upgrade: None,
            db: cfg.db.clone(),
            waker,
            took_over: None,
            adopted_epoll: adopted,
            redis: redis::RedisLinks::default(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// SIGINT and SIGTERM start a graceful shutdown: the handler only writes a byte
    /// into this pipe, and the loop does the rest.
    pub fn handle_signals(&mut self) -> io::Result<()> {
        let (rx, tx) = std::os::unix::net::UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, tx.try_clone()?)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, tx)?;
        let mut rx = UnixStream::from_std(rx);
        self.poll.registry().register(&mut rx, SIGNALS, Interest::READABLE)?;
        self.signals = Some(rx);
        let (rx, tx) = std::os::unix::net::UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGUSR2, tx)?;
        let mut rx = UnixStream::from_std(rx);
        self.poll.registry().register(&mut rx, UPGRADE, Interest::READABLE)?;
        self.upgrade = Some(rx);
        // A hand-over held these across the exec; with handlers in place they may come.
        crate::signals::hold(false);
        Ok(())
    }

    /// Runs until a signal's graceful shutdown completes.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        if let Some(took) = self.took_over.take() {
            log::info(format_args!("{}", took.report(crate::handover::os::monotonic_ns())));
        }
        loop {
            // Flush in slices, taking in new events every millisecond (see `flush_some`).
            let mut since_turn = Instant::now();
            while self.server.flush_some(Instant::now(), FLUSH_SLICE) {
                if since_turn.elapsed() >= FLUSH_TURN {
                    self.turn(&mut events, Some(Duration::ZERO))?;
                    since_turn = Instant::now();
                }
            }
            let now = Instant::now();
            if self.server.is_shut_down(now) {
                log::info(format_args!("stopped; {} connections left open", self.server.len()));
                return Ok(());
            }
            let timeout = self.poll_timeout(now);
            self.turn(&mut events, timeout)?;
        }
    }

    /// One wait for events (at most `timeout`) and everything that follows from them.
    fn turn(&mut self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        if let Err(e) = self.poll.poll(events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(e);
        }
        let now = Instant::now();
        if events.is_empty() {
            self.trim_heap(now);
        } else {
            self.heap_dirty = true;
        }
        if let Some(cluster) = self.server.cx.cluster.as_mut() {
            cluster.tick(now);
        }
        let mut accept = false;
        let mut upgrade = false;
        for ev in events.iter() {
            match ev.token() {
                LISTENER => accept = true,
                SIGNALS => self.on_signal(now),
                // Not in the middle of this batch: with the epoll instance handed
                // over, an edge this turn took and did not act on would be lost.
                UPGRADE => upgrade = true,
                STORAGE => {
                    self.server.on_storage(now);
                    self.server.on_backups();
                }
                CONTROL_LISTENER => self.control.accept(self.poll.registry(), now),
                token if control::listener::is_client(token) => {
                    let requests = self.control.on_ready(token, self.poll.registry(), now);
                    self.control_requests.extend(requests);
                }
                token if self.on_redis_ready(token, now) => {}
                Token(key) => {
                    let failed = ev.is_error();
                    let readable = ev.is_readable() || ev.is_read_closed() || failed;
                    let writable = ev.is_writable() || failed;
                    self.server.on_ready(key, readable, writable, now);
                }
            }
        }
        if accept || self.accept_more || self.accept_retry.is_some_and(|t| t <= now) {
            self.accept(now);
        }
        self.server.run_pending_reads(now);
        self.server.on_timeout(now);
        self.control.on_timeout(now, self.poll.registry());
        loop {
            let started = self.run_control(now);
            // Redis commands the requests queued go out now; its replies already in
            // may finish requests, whose answers go out before the loop sleeps.
            self.flush_redis(now);
            if !started && !self.server.control.has_answers() {
                break;
            }
        }
        if upgrade {
            self.on_upgrade(Instant::now());
        }
        Ok(())
    }

    /// Starts the control requests read this turn and sends the answers that are
    /// ready (a client's next request starts once it has its answer). True if a
    /// request was started.
    fn run_control(&mut self, now: Instant) -> bool {
        let mut started = false;
        loop {
            for (id, req) in std::mem::take(&mut self.control_requests) {
                self.server.on_control(id, req, now);
                started = true;
            }
            let answers = self.server.control.take_answers();
            if answers.is_empty() {
                return started;
            }
            let next = self.control.deliver(answers, self.poll.registry(), now);
            self.control_requests.extend(next);
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if self.server.has_pending_work() || self.accept_more {
            return Some(Duration::ZERO);
        }
        // Wake once the loop has been quiet for a second, to trim the heap.
        let trim_at = self.heap_dirty.then(|| now + Duration::from_secs(1));
        [self.server.next_deadline(), self.accept_retry, trim_at, self.control.next_deadline()]
            .into_iter()
            .flatten()
            .min()
            // Round up so a wake-up never lands a hair before its deadline and spins.
            .map(|t| t.saturating_duration_since(now) + Duration::from_millis(1))
    }

    fn accept(&mut self, now: Instant) {
        self.accept_retry = None;
        self.accept_more = false;
        let Some(listener) = self.listener.as_ref() else { return };
        for taken in 0.. {
            if taken == ACCEPT_BATCH {
                self.accept_more = true;
                break;
            }
            match listener.accept() {
                Ok((sock, peer)) => {
                    if self.server.len() >= self.max_connections {
                        self.server.cx.stats.refused += 1;
                        continue; // dropping `sock` closes it at once
                    }
                    if !self.server.cx.rate_limits.connections.admits(peer.ip()) {
                        log::debug(format_args!("{peer}: too many connections from this address"));
                        if self.tls.is_none() {
                            refuse(&sock, &mut self.server.cx, now);
                        }
                        continue;
                    }
                    // Chat frames are small and latency matters more than packet count.
                    let _ = sock.set_nodelay(true);
                    let transport = match Transport::new(sock, self.tls.as_ref()) {
                        Ok(t) => t,
                        Err(e) => {
                            log::warn(format_args!("TLS session for {peer}: {e}"));
                            continue;
                        }
                    };
                    let key = self.server.insert(transport, peer, now);
                    self.server.cx.rate_limits.connections.accepted(key, peer.ip());
                    let sock = self.server.stream_mut(key).expect("just inserted").socket_mut();
                    if let Err(e) =
                        self.poll.registry().register(sock, Token(key), Interest::READABLE | Interest::WRITABLE)
                    {
                        log::warn(format_args!("register {peer}: {e}"));
                        self.server.discard(key);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS: the pending connections stay in the
                    // backlog; retry shortly instead of spinning on a ready listener.
                    log::warn(format_args!("accept: {e}"));
                    self.accept_retry = Some(now + ACCEPT_RETRY);
                    break;
                }
            }
        }
    }

    /// When the loop goes quiet after work, hand freed heap pages back to the OS.
    /// A join storm or a burst of broadcasts leaves megabytes free inside malloc;
    /// without this, an idle server's RSS stays at its high-water mark.
    fn trim_heap(&mut self, now: Instant) {
        if !self.heap_dirty || now.duration_since(self.last_trim) < Duration::from_secs(1) {
            return;
        }
        self.heap_dirty = false;
        self.last_trim = now;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free memory; no pointers are affected.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    fn on_signal(&mut self, now: Instant) {
        self.take_stop_signal();
        self.shut_down(now);
    }

    /// Whether a SIGINT or SIGTERM came since the last look (and takes it).
    fn take_stop_signal(&mut self) -> bool {
        let mut came = false;
        if let Some(rx) = self.signals.as_mut() {
            let mut buf = [0u8; 16];
            while let Ok(n @ 1..) = rx.read(&mut buf) {
                came |= n > 0;
            }
        }
        came
    }

    fn shut_down(&mut self, now: Instant) {
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.accept_retry = None;
        self.accept_more = false;
        self.server.begin_shutdown(now);
    }
}

/// A peer over `--max-connections-per-ip`: its 503 in one write, and nothing kept.
/// What it sent already is read off first, so that the close is a FIN behind the
/// answer rather than a reset that may destroy it. An answer that does not fit at
/// once is dropped: a refusal must cost no more than the accept did.
fn refuse(sock: &mio::net::TcpStream, cx: &mut crate::conn::Cx, now: Instant) {
    use std::io::Write;
    let mut first = [0u8; 4096];
    let _ = (&*sock).read(&mut first);
    let unix_ms = cx.chat.unix_ms(now);
    let mut answer = Vec::with_capacity(256);
    crate::api::too_many_connections().write_to(&mut answer, false, false, cx.date.at(unix_ms), None);
    let _ = (&*sock).write(&answer);
}

/// The listening socket; with `reuse_port`, SO_REUSEPORT lets several skiff nodes
/// on one host share the port (the kernel spreads connections over them).
fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As std and mio do: a restart may bind while old connections sit in TIME_WAIT.
    sock.set_reuse_address(true)?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        sock.set_only_v6(false).ok();
    }
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    Ok(TcpListener::from_std(sock.into()))
}

/// Without a flag, hold as many connections as the descriptor limit allows,
/// keeping a few descriptors for the database, the listener and epoll.
fn default_max_connections() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    (lim.rlim_cur as usize).saturating_sub(32).max(16)
}
