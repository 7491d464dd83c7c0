//! The disk, off the event loop. A writer thread applies writes in group commits
//! (every write waiting when a transaction starts goes into it: one fsync for all);
//! a reader thread answers lookups from its own connection, which in WAL mode never
//! waits for the writer. Both report back through one channel and wake the loop with
//! a `mio::Waker`. The loop alone owns chat, session and connection state; these
//! threads own nothing but their SQLite connections.
//!
//! `Storage::inline` runs the same requests synchronously on the caller's thread, for
//! tests and fuzz targets that want determinism more than a second thread.

use crate::log;
use crate::metrics::StorageMetrics;
use crate::store::{Store, StoreError, Write, Written};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The largest group commit: bounds one transaction's size and the replies it owes.
const MAX_BATCH: usize = 4096;

/// Who asked: a connection (slab key and generation), to route the reply back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub conn: usize,
    pub generation: u64,
}

/// A request a connection waits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Register {
        username: String,
        key_hash: [u8; 32],
    },
    /// The username behind a key's hash. In cluster mode the session (its id's
    /// hash) is stored with it, atomically.
    Login {
        key_hash: [u8; 32],
        session: Option<[u8; 32]>,
    },
    /// A name's canonical spelling, matched ignoring case.
    FindUser {
        name: String,
    },
    /// A file under `--static` (the loop reads no files either).
    File(crate::web::FileRequest),
    /// Cluster mode: a session another node started (by its id's hash).
    Session {
        id_hash: [u8; 32],
    },
    /// Cluster mode: end a session wherever its socket is.
    Logout {
        id_hash: [u8; 32],
    },
    /// Cluster mode: claim the user's presence for this node; `v2` sockets may
    /// share it with the user's devices on other nodes.
    Join {
        name: String,
        v2: bool,
    },
    /// A read for `skiff ctl`.
    Control(crate::store::admin::Query),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The registration is committed and durable.
    Registered,
    NameTaken,
    User(Option<String>),
    File(Box<crate::http::Response>),
    /// The disk failed (full, read-only, I/O error): nothing was applied.
    /// In cluster mode: Redis is unreachable.
    Unavailable,
    /// Cluster mode: the user, and how many ms the session has left.
    Session(Option<(String, u64)>),
    LoggedOut,
    /// Cluster mode: the WebSocket may open; every node has heard the join.
    Joined,
    /// Cluster mode: the user holds `--max-devices` sockets across the cluster.
    TooManyDevices,
    /// The key is right but its user is banned (`skiff ctl ban`); what Redis says
    /// of the ban in cluster mode.
    Banned(Option<crate::chat::moderation::Ban>),
    Control(crate::store::admin::QueryResult),
}

/// What one group commit made durable (or failed to), reported to the loop so the
/// senders' acks and the id reservation can follow the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// The highest chat message id in the batch.
    pub messages_through: Option<u64>,
    /// The id reservation the batch wrote.
    pub reserved_through: Option<u64>,
    /// The transaction committed; false: nothing of it was applied.
    pub ok: bool,
}

impl Commit {
    /// What a batch of writes reports, if it carried messages or a reservation.
    fn of(writes: &[Write], ok: bool) -> Option<Commit> {
        let mut c = Commit { messages_through: None, reserved_through: None, ok };
        for w in writes {
            match w {
                Write::Message { msg, .. } => {
                    c.messages_through = Some(c.messages_through.map_or(msg.id, |m| m.max(msg.id)))
                }
                Write::ReserveIds { through } => c.reserved_through = Some(*through),
                _ => {}
            }
        }
        (c.messages_through.is_some() || c.reserved_through.is_some()).then_some(c)
    }
}

/// A reply on its way back to the connection that asked.
#[derive(Debug)]
pub struct Done {
    pub origin: Origin,
    pub reply: Reply,
}

enum WriterJob {
    Write { origin: Option<Origin>, write: Write },
}

struct ReaderJob {
    origin: Origin,
    request: Request,
}

pub struct Storage {
    mode: Mode,
    /// What the threads count for `/metrics`.
    metrics: Arc<StorageMetrics>,
    /// Jobs handed to the writer and to the reader (the loop's side of the queue
    /// depth: a plain count, no atomic on the loop's path).
    sent: (u64, u64),
}

enum Mode {
    Threads(Threads),
    Inline { store: Store, done: VecDeque<Done>, commits: VecDeque<Commit>, failing: bool },
}

struct Threads {
    writes: Option<Sender<WriterJob>>,
    reads: Option<Sender<ReaderJob>>,
    done: Receiver<Done>,
    committed: Receiver<Commit>,
    writer: Option<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
    /// Transactions the writer has committed (or tried to).
    commits: Arc<AtomicU64>,
    /// Handing a job to a storage thread failed: it has stopped for good.
    dead: AtomicBool,
    /// The stop was logged.
    reported: AtomicBool,
}

/// How the storage threads wake the event loop.
pub trait Wake: Send + Sync + 'static {
    fn wake(&self);
}

impl Wake for mio::Waker {
    fn wake(&self) {
        // A wake that fails leaves the replies queued; the next event collects them.
        let _ = mio::Waker::wake(self);
    }
}

impl Storage {
    /// Starts the writer (on `writer`, the connection start-up validated) and a
    /// reader on the same file. `commit_delay` is added to every commit (tests of a
    /// slow disk); zero in production.
    pub fn spawn(
        writer: Store,
        path: &Path,
        waker: Arc<dyn Wake>,
        commit_delay: Duration,
    ) -> Result<Storage, StoreError> {
        let reader = Store::open_reader(path)?;
        let (writes, write_rx) = mpsc::channel();
        let (reads, read_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let (committed_tx, committed) = mpsc::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let metrics = Arc::new(StorageMetrics::new());
        let writer = spawn_named("skiff-writer", {
            let (done_tx, waker, commits) = (done_tx.clone(), waker.clone(), commits.clone());
            let reports = Reports { done: done_tx, committed: committed_tx, waker, metrics: metrics.clone() };
            move || run_writer(writer, write_rx, reports, commits, commit_delay)
        })?;
        let reader = spawn_named("skiff-reader", {
            let metrics = metrics.clone();
            move || run_reader(Some(reader), read_rx, done_tx, waker, &metrics)
        })?;
        Ok(Storage {
            metrics,
            sent: (0, 0),
            mode: Mode::Threads(Threads {
                writes: Some(writes),
                reads: Some(reads),
                done,
                committed,
                writer: Some(writer),
                reader: Some(reader),
                commits,
                dead: AtomicBool::new(false),
                reported: AtomicBool::new(false),
            }),
        })
    }

    /// Cluster mode keeps no database: one thread reads `--static` files, nothing else.
    pub fn files_only(waker: Arc<dyn Wake>) -> Result<Storage, StoreError> {
        let (reads, read_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let (_, committed) = mpsc::channel();
        let metrics = Arc::new(StorageMetrics::new());
        let reader = spawn_named("skiff-reader", {
            let metrics = metrics.clone();
            move || run_reader(None, read_rx, done_tx, waker, &metrics)
        })?;
        Ok(Storage {
            metrics,
            sent: (0, 0),
            mode: Mode::Threads(Threads {
                writes: None,
                reads: Some(reads),
                done,
                committed,
                writer: None,
                reader: Some(reader),
                commits: Arc::new(AtomicU64::new(0)),
                dead: AtomicBool::new(false),
                reported: AtomicBool::new(false),
            }),
        })
    }

    /// Runs requests on the caller's thread, replies queued for `take_done`.
    pub fn inline(store: Store) -> Storage {
        Storage {
            mode: Mode::Inline { store, done: VecDeque::new(), commits: VecDeque::new(), failing: false },
            metrics: Arc::new(StorageMetrics::new()),
            sent: (0, 0),
        }
    }

    /// Inline mode only: make every write fail as a full disk would (tests).
    #[cfg(any(test, feature = "harness"))]
    pub fn set_failing(&mut self, fail: bool) {
        if let Mode::Inline { failing, .. } = &mut self.mode {
            *failing = fail;
        }
    }

    /// Asks for `request` on behalf of `origin`; the reply comes from `take_done`.
    pub fn submit(&mut self, origin: Origin, request: Request) {
        match &mut self.mode {
            Mode::Threads(t) => {
                let sent = match request {
                    Request::Register { username, key_hash } => {
                        let write = Write::Register { username, key_hash };
                        self.sent.0 += 1;
                        send(&t.writes, WriterJob::Write { origin: Some(origin), write })
                    }
                    request => {
                        self.sent.1 += 1;
                        send(&t.reads, ReaderJob { origin, request })
                    }
                };
                if !sent {
                    t.mark_dead();
                }
            }
            Mode::Inline { store, done, failing, .. } => {
                let reply = if *failing { Reply::Unavailable } else { execute(store, request) };
                done.push_back(Done { origin, reply });
            }
        }
    }

    /// A write whose commit `origin` waits on (`skiff ctl`): it joins the next group
    /// commit, and its reply is `Registered` (done), `User(None)` (nothing by that
    /// name) or `Unavailable`.
    pub fn apply(&mut self, origin: Origin, write: Write) {
        match &mut self.mode {
            Mode::Threads(t) => {
                self.sent.0 += 1;
                if !send(&t.writes, WriterJob::Write { origin: Some(origin), write }) {
                    t.mark_dead();
                }
            }
            Mode::Inline { store, done, failing, .. } => {
                let applied = if *failing { None } else { store.apply(std::slice::from_ref(&write)).ok() };
                let reply = applied.map_or(Reply::Unavailable, |r| written_reply(r[0]));
                done.push_back(Done { origin, reply });
            }
        }
    }

    /// A write nobody waits on (sessions): it joins the next group commit.
    pub fn persist(&mut self, write: Write) {
        match &mut self.mode {
            Mode::Threads(t) => {
                self.sent.0 += 1;
                if !send(&t.writes, WriterJob::Write { origin: None, write }) {
                    t.mark_dead();
                }
            }
            Mode::Inline { store, failing, commits, .. } => {
                let writes = std::slice::from_ref(&write);
                let ok = !*failing && store.apply(writes).map_err(|e| log::warn(format_args!("storage: {e}"))).is_ok();
                commits.extend(Commit::of(writes, ok));
            }
        }
    }

    /// The next reply, if one has arrived.
    pub fn take_done(&mut self) -> Option<Done> {
        match &mut self.mode {
            Mode::Threads(t) => t.done.try_recv().ok(),
            Mode::Inline { done, .. } => done.pop_front(),
        }
    }

    /// The next commit report, if one has arrived.
    pub fn take_commit(&mut self) -> Option<Commit> {
        match &mut self.mode {
            Mode::Threads(t) => t.committed.try_recv().ok(),
            Mode::Inline { commits, .. } => commits.pop_front(),
        }
    }

    /// Replies are waiting (inline mode; threads announce theirs with the waker).
    pub fn has_done(&self) -> bool {
        matches!(&self.mode, Mode::Inline { done, commits, .. } if !done.is_empty() || !commits.is_empty())
    }

    /// Writes a reservation of ids on the caller's thread before the writer starts
    /// (start-up: no id may be given before one is durable).
    pub fn reserve_now(store: &mut Store, through: u64) -> Result<(), StoreError> {
        store.apply(&[Write::ReserveIds { through }]).map(|_| ())
    }

    /// What the storage threads count, for `/metrics`.
    pub fn metrics(&self) -> &StorageMetrics {
        &self.metrics
    }

    /// Jobs handed to the writer and to the reader so far.
    pub fn sent(&self) -> (u64, u64) {
        self.sent
    }

    /// Group commits so far (each one transaction, one fsync).
    pub fn commits(&self) -> u64 {
        match &self.mode {
            Mode::Threads(t) => t.commits.load(Ordering::Relaxed),
            Mode::Inline { .. } => 0,
        }
    }

    /// False once a storage thread has stopped: nothing more will be written. Said
    /// once in the log when first seen.
    pub fn is_healthy(&self) -> bool {
        let Mode::Threads(t) = &self.mode else { return true };
        let stopped = |h: &Option<JoinHandle<()>>| h.as_ref().is_some_and(|h| h.is_finished());
        let healthy = !t.dead.load(Ordering::Relaxed) && !stopped(&t.writer) && !stopped(&t.reader);
        if !healthy {
            t.mark_dead();
        }
        healthy
    }

    /// Stops taking work and waits until every write already handed over is
    /// committed (or has failed): a graceful shutdown loses nothing acknowledged.
    pub fn drain(&mut self) {
        if let Mode::Threads(t) = &mut self.mode {
            t.writes = None;
            t.reads = None;
            for handle in [t.writer.take(), t.reader.take()].into_iter().flatten() {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.drain();
    }
}

impl Threads {
    /// A storage thread has stopped for good: said once, loudly.
    fn mark_dead(&self) {
        self.dead.store(true, Ordering::Relaxed);
        if !self.reported.swap(true, Ordering::Relaxed) {
            log::error(format_args!("storage: a storage thread has stopped; registrations and logins will fail"));
        }
    }
}

fn spawn_named(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, StoreError> {
    // Stop signals belong to the loop's thread (see `signals::spawn_without`).
    crate::signals::spawn_without(|| std::thread::Builder::new().name(name.into()).spawn(f))
        .map_err(|e| StoreError::Open(format!("cannot start the {name} thread: {e}")))
}

fn send<T>(tx: &Option<Sender<T>>, job: T) -> bool {
    tx.as_ref().is_some_and(|tx| tx.send(job).is_ok())
}

/// A request run to completion on `store` (inline mode, the reader thread, tests).
pub fn execute(store: &mut Store, request: Request) -> Reply {
    let result = match request {
        Request::Register { username, key_hash } => {
            store.apply(&[Write::Register { username, key_hash }]).map(|r| match r[0] {
                Written::Done => Reply::Registered,
                Written::NameTaken | Written::NotFound => Reply::NameTaken,
            })
        }
        Request::Login { key_hash, .. } => store.user_by_key_hash(&key_hash).map(Reply::User),
        Request::FindUser { name } => store.find_user(&name).map(Reply::User),
        Request::File(f) => Ok(Reply::File(Box::new(crate::web::serve_file(&f)))),
        Request::Control(q) => store.query(q).map(Reply::Control),
        // Sessions and presence live in memory on a single node; only Redis is asked.
        Request::Session { .. } | Request::Logout { .. } | Request::Join { .. } => Ok(Reply::Unavailable),
    };
    result.unwrap_or_else(|e| {
        log::warn(format_args!("storage: {e}"));
        Reply::Unavailable
    })
}

/// Where the writer reports: replies to waiting requests, commit reports, and the
/// loop's waker.
struct Reports {
    done: Sender<Done>,
    committed: Sender<Commit>,
    waker: Arc<dyn Wake>,
    metrics: Arc<StorageMetrics>,
}

fn written_reply(w: Written) -> Reply {
    match w {
        Written::Done => Reply::Registered,
        Written::NameTaken => Reply::NameTaken,
        Written::NotFound => Reply::User(None),
    }
}

/// `skiff ctl backup`: a thread of its own copies and checks the database (see
/// `store::admin::backup`), so neither chat nor the storage threads wait for it.
/// The result (the copy's size) comes back on `done` tagged with `id`, and `waker`
/// wakes the loop for it.
pub fn spawn_backup(
    id: u64,
    db: std::path::PathBuf,
    dest: std::path::PathBuf,
    done: Sender<(u64, Result<u64, String>)>,
    waker: Arc<dyn Wake>,
) -> Result<(), String> {
    spawn_named("skiff-backup", move || {
        let result = crate::store::admin::backup(&db, &dest).map_err(|e| e.to_string());
        if done.send((id, result)).is_ok() {
            waker.wake();
        }
    })
    .map(drop)
    .map_err(|e| e.to_string())
}

fn run_writer(
    mut store: Store,
    jobs: Receiver<WriterJob>,
    reports: Reports,
    commits: Arc<AtomicU64>,
    commit_delay: Duration,
) {
    let mut batch = Vec::new();
    // Blocks for the first job, then takes everything already queued behind it:
    // whatever arrived during the last commit shares the next one.
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (origins, writes): (Vec<Option<Origin>>, Vec<Write>) =
            batch.drain(..).map(|WriterJob::Write { origin, write }| (origin, write)).unzip();
        let m = &reports.metrics;
        m.writes_taken.fetch_add(writes.len() as u64, Ordering::Relaxed);
        m.batch_size.observe(writes.len() as u64);
        // The injected delay stands for a slow disk, so it is part of the commit.
        let started = std::time::Instant::now();
        if !commit_delay.is_zero() {
            std::thread::sleep(commit_delay);
        }
        let results = store.apply(&writes);
        m.commit_seconds.observe_duration(started.elapsed());
        commits.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &results {
            m.failed_commits.fetch_add(1, Ordering::Relaxed);
            log::warn(format_args!("storage: a batch of {} writes failed: {e}", writes.len()));
        }
        let mut wake = false;
        if let Some(c) = Commit::of(&writes, results.is_ok()) {
            wake |= reports.committed.send(c).is_ok();
        }
        for (i, origin) in origins.into_iter().enumerate() {
            let Some(origin) = origin else { continue };
            let reply = match &results {
                Ok(r) => written_reply(r[i]),
                Err(_) => Reply::Unavailable,
            };
            wake |= reports.done.send(Done { origin, reply }).is_ok();
        }
        // One wake-up per commit, whatever it carried: the loop's round trip per
        // batch, never per message.
        if wake {
            reports.waker.wake();
        }
    }
    log::debug(format_args!("storage writer stopped: every write handed over is applied"));
}

fn run_reader(
    mut store: Option<Store>,
    jobs: Receiver<ReaderJob>,
    done: Sender<Done>,
    waker: Arc<dyn Wake>,
    metrics: &StorageMetrics,
) {
    while let Ok(ReaderJob { origin, request }) = jobs.recv() {
        metrics.reads_taken.fetch_add(1, Ordering::Relaxed);
        let reply = match (&mut store, request) {
            (Some(store), request) => execute(store, request),
            (None, Request::File(f)) => Reply::File(Box::new(crate::web::serve_file(&f))),
            (None, _) => Reply::Unavailable,
        };
        if done.send(Done { origin, reply }).is_err() {
            break;
        }
        waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Condvar;

    /// Counts wake-ups; a test waits on it instead of an event loop.
    #[derive(Default)]
    struct Bell {
        rung: Mutex<u64>,
        cv: Condvar,
    }
    use std::sync::Mutex;

    impl Wake for Bell {
        fn wake(&self) {
            *self.rung.lock().unwrap() += 1;
            self.cv.notify_all();
        }
    }

    fn spawn(dir: &tempfile::TempDir, delay: Duration) -> (Storage, Arc<Bell>) {
        let path = dir.path().join("s.db");
        let bell = Arc::new(Bell::default());
        let storage = Storage::spawn(Store::open(&path).unwrap(), &path, bell.clone(), delay).unwrap();
        (storage, bell)
    }

    /// Collects `n` replies, waiting on the bell (bounded).
    fn replies(storage: &mut Storage, bell: &Bell, n: usize) -> Vec<Done> {
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while out.len() < n {
            while let Some(d) = storage.take_done() {
                out.push(d);
            }
            let rung = bell.rung.lock().unwrap();
            assert!(std::time::Instant::now() < deadline, "only {} of {n} replies", out.len());
            let _ = bell.cv.wait_timeout(rung, Duration::from_millis(50)).unwrap();
        }
        out
    }

    fn origin(conn: usize) -> Origin {
        Origin { conn, generation: 1 }
    }

    #[test]
    fn registrations_waiting_together_share_one_commit_and_names_stay_unique() {
        let dir = tempfile::tempdir().unwrap();
        // Every commit takes 100 ms: whatever queues meanwhile joins the next one.
        let (mut storage, bell) = spawn(&dir, Duration::from_millis(100));
        for i in 0..60 {
            let username = if i == 59 { "NAME0".to_owned() } else { format!("name{i}") };
            storage.submit(origin(i), Request::Register { username, key_hash: [i as u8; 32] });
        }
        let done = replies(&mut storage, &bell, 60);
        let taken: Vec<usize> = done.iter().filter(|d| d.reply == Reply::NameTaken).map(|d| d.origin.conn).collect();
        assert_eq!(taken, [59], "the second spelling of name0 is taken, in the same batch");
        assert_eq!(done.iter().filter(|d| d.reply == Reply::Registered).count(), 59);
        assert!(storage.commits() <= 3, "{} commits for 60 registrations", storage.commits());
        // A lookup is answered by the reader, and sees what was committed.
        storage.submit(origin(99), Request::Login { key_hash: [7; 32], session: None });
        let done = replies(&mut storage, &bell, 1);
        assert_eq!(done[0].reply, Reply::User(Some("name7".into())));
    }

    #[test]
    fn a_drained_storage_has_written_everything_and_a_stopped_one_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (mut storage, _bell) = spawn(&dir, Duration::from_millis(20));
        for i in 0..20u8 {
            storage.persist(Write::SaveSession { id_hash: [i; 32], username: "a".into(), active_ms: 1 });
        }
        assert!(storage.is_healthy());
        storage.drain();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(store.load_sessions().unwrap().len(), 20, "drain waited for every write");
        // The threads are gone: the next request cannot be handed over.
        storage.submit(origin(1), Request::FindUser { name: "a".into() });
        assert!(!storage.is_healthy());
    }
}
