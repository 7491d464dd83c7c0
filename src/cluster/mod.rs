//! Cluster mode: this node's two connections to Redis, in the same mio loop as the
//! clients. One carries commands, pipelined, their replies matched in order; the
//! other is subscribed to the room's channel. Everything shared lives in Redis
//! (users, sessions, presence, history) and changes only through the functions of
//! `library.lua`, each atomic. Every join, leave, message and ended session is an
//! event on one channel, and every node applies the events in the order Redis sends
//! them: its own clients' events too, when they come back.
//!
//! Redis down: requests answer `Unavailable` at once, the links are retried with
//! backoff, and on reconnect a sync tells Redis which WebSockets this node still has
//! and brings back a snapshot (online users, history), from which the loop tells its
//! clients whatever they missed.

pub mod event;
pub mod resp;

use crate::chat::replicated::Snapshot;
use crate::config::RedisUrl;
use crate::log;
use crate::storage::{Done, Origin, Reply, Request};
use event::RoomEvent;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use resp::Value;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// The connection for commands and their replies.
pub const CMD: Token = Token(usize::MAX - 4);
/// The connection subscribed to the room's channel.
pub const SUB: Token = Token(usize::MAX - 5);

/// Every key and the channel are named under this.
pub const PREFIX: &str = "skiff:";
const LIBRARY: &str = include_str!("library.lua");

/// A node refreshes its liveness key this often...
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// ...which lives this long: a node killed -9 is reaped 6-8 s later, and its users
/// leave everywhere (the contract allows 15 s).
const NODE_TTL: Duration = Duration::from_secs(6);
const REAP_EVERY: Duration = Duration::from_secs(2);
/// After (re)connecting, a node waits this long before reaping others: when Redis
/// comes back, every node needs a moment to reconnect and heartbeat before its
/// users would count as gone.
const REAP_GRACE: Duration = Duration::from_secs(8);
/// A command unanswered this long means Redis is stuck: reconnect.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Reconnects are at most this far apart, so chat is back within ~2 s of Redis
/// (the contract allows 10 s).
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Bytes of commands queued for a Redis that does not read: past this it is down.
const OUT_LIMIT: usize = 64 << 20;
const READ_CHUNK: usize = 64 * 1024;
/// Logouts kept while Redis is down (32 bytes each).
const MAX_DEFERRED_LOGOUTS: usize = 65_536;

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub url: RedisUrl,
    pub session_ttl: Duration,
    pub max_sessions_per_user: usize,
    pub history: usize,
}

/// What the loop must act on, in the order it happened.
#[derive(Debug)]
pub enum Event {
    /// A connection's request is answered.
    Reply(Done),
    /// `name` joined on some node; `mine`: the connection here waiting to open.
    Join {
        name: String,
        mine: Option<Origin>,
    },
    Leave {
        name: String,
    },
    Message {
        id: u64,
        ts: i64,
        author: String,
        text: String,
        mine: Option<Origin>,
    },
    SessionEnded {
        id_hash: [u8; 32],
        code: u16,
    },
    /// A message from this connection could not be published.
    Unavailable(Origin),
    /// In sync again: the replica becomes `snapshot`; `taken` are users whose
    /// socket here must close (another node holds them now).
    Synced {
        snapshot: Snapshot,
        taken: Vec<String>,
    },
    /// `skiff ctl`: Redis answered the function called for `origin`.
    Control {
        origin: Origin,
        value: Value,
    },
    /// `skiff ctl kick`: close this user's socket here (1000).
    Kick {
        name: String,
    },
    /// `skiff ctl delete-message` (or `delete-user --messages`): out of the history.
    Deleted {
        id: u64,
    },
}

/// What a command's reply is for.
#[derive(Debug)]
enum Pending {
    Conn(Origin, Expect),
    Publish(Origin),
    /// A session with a socket here, checked after a sync: it may have ended while
    /// this node was not listening.
    Check([u8; 32]),
    Control(Origin),
    Sync,
    Ignore,
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    Register,
    Login,
    FindUser,
    Session,
    Logout,
    Join,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No links; the next attempt at `retry_at`.
    Down,
    /// Links opening, AUTH/SELECT/FUNCTION LOAD and SUBSCRIBE sent.
    Connecting,
    /// Subscribed; the loop owes a sync (`wants_sync`).
    Subscribed,
    /// Sync sent; channel events wait for its snapshot.
    Syncing,
    Up,
}

struct Link {
    sock: TcpStream,
    input: Vec<u8>,
    out: Vec<u8>,
}

pub struct Cluster {
    cfg: ClusterConfig,
    node: String,
    registry: Registry,
    cmd: Option<Link>,
    sub: Option<Link>,
    state: State,
    since: Instant,
    pending: VecDeque<(Instant, Pending)>,
    events: VecDeque<Event>,
    /// Channel events that came before the sync's snapshot.
    buffered: Vec<RoomEvent>,
    /// Joins Redis accepted whose event has not come yet: they fail if the links do.
    joining: Vec<Origin>,
    /// Logouts taken while Redis was down, sent on reconnect.
    deferred_logouts: Vec<[u8; 32]>,
    backoff: Duration,
    retry_at: Instant,
    heartbeat_at: Instant,
    reap_at: Instant,
    /// The outage was logged (once per outage, not per retry).
    outage_logged: bool,
    syncs: u64,
    /// `stop` was called: no more leaves, no reconnects.
    stopping: bool,
}

impl Cluster {
    /// A node with a fresh random id; it connects on the first `on_timeout`.
    pub fn new(cfg: ClusterConfig, registry: Registry, now: Instant) -> Cluster {
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).expect("the OS CSPRNG is available");
        let node = hex(&raw);
        Cluster {
            cfg,
            node,
            registry,
            cmd: None,
            sub: None,
            state: State::Down,
            since: now,
            pending: VecDeque::new(),
            events: VecDeque::new(),
            buffered: Vec::new(),
            joining: Vec::new(),
            deferred_logouts: Vec::new(),
            backoff: BACKOFF_MIN,
            retry_at: now,
            heartbeat_at: now,
            reap_at: now,
            outage_logged: false,
            syncs: 0,
            stopping: false,
        }
    }

    /// For `/metrics`; `online_users` is the replica's count.
    pub fn gauges(&self, online_users: u64) -> crate::metrics::ClusterGauges {
        crate::metrics::ClusterGauges {
            up: self.is_up(),
            online_users,
            pending_commands: self.pending.len() as u64,
            syncs: self.syncs,
        }
    }

    /// Connected and in sync: `/healthz` says ok.
    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// Requests go out only after the sync: an event they cause then comes after
    /// the snapshot, never folded into it unseen.
    fn accepting(&self) -> bool {
        matches!(self.state, State::Syncing | State::Up)
    }

    /// The links are subscribed: the loop must call `sync` with its WebSocket users.
    pub fn wants_sync(&self) -> bool {
        self.state == State::Subscribed
    }

    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// A request from connection `origin`; its reply comes as `Event::Reply`.
    pub fn submit(&mut self, origin: Origin, request: Request) {
        if !self.accepting() {
            let reply = match request {
                Request::Logout { id_hash } => {
                    // Bounded: past this an outage's logouts are left to the sessions' TTL.
                    if self.deferred_logouts.len() < MAX_DEFERRED_LOGOUTS {
                        self.deferred_logouts.push(id_hash);
                    }
                    Reply::LoggedOut
                }
                _ => Reply::Unavailable,
            };
            self.events.push_back(Event::Reply(Done { origin, reply }));
            return;
        }
        let p = PREFIX;
        let (expect, args): (Expect, Vec<Vec<u8>>) = match request {
            Request::Register { username, key_hash } => {
                let lower = username.to_ascii_lowercase();
                (Expect::Register, fcall("skiff_register", &[p, &lower, &username, &hex(&key_hash)]))
            }
            Request::Login { key_hash, session } => {
                let Some(session) = session else {
                    self.events.push_back(Event::Reply(Done { origin, reply: Reply::Unavailable }));
                    return;
                };
                let ttl = self.session_ms().to_string();
                let cap = self.cfg.max_sessions_per_user.to_string();
                (Expect::Login, fcall("skiff_login", &[p, &hex(&key_hash), &hex(&session), &ttl, &cap]))
            }
            Request::FindUser { name } => {
                let args = [b"HGET".to_vec(), format!("{p}users").into_bytes(), name.to_ascii_lowercase().into_bytes()];
                (Expect::FindUser, args.to_vec())
            }
            Request::Session { id_hash } => (Expect::Session, fcall("skiff_session", &[p, &hex(&id_hash)])),
            Request::Logout { id_hash } => (Expect::Logout, fcall("skiff_logout", &[p, &hex(&id_hash)])),
            Request::Join { name } => {
                let token = token(origin);
                let lower = name.to_ascii_lowercase();
                (Expect::Join, fcall("skiff_join", &[p, &lower, &name, &self.node, &token]))
            }
            // Files are read by the storage thread; `skiff ctl` calls Redis through
            // `control`; nothing else reaches here.
            Request::File(_) | Request::Control(_) => {
                self.events.push_back(Event::Reply(Done { origin, reply: Reply::Unavailable }));
                return;
            }
        };
        self.send(&args, Pending::Conn(origin, expect));
    }

    /// `skiff ctl`: one call (`args`: FCALL and its arguments) for `origin`; Redis's
    /// reply comes back as `Event::Control`, or as an `Unavailable` reply.
    pub fn control(&mut self, origin: Origin, args: &[String]) {
        if !self.accepting() {
            self.events.push_back(Event::Reply(Done { origin, reply: Reply::Unavailable }));
            return;
        }
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        self.send(&args, Pending::Control(origin));
    }

    /// A member's message, to publish; `Event::Message` delivers it (and its ack).
    pub fn publish(&mut self, origin: Origin, author: &str, text: &str) {
        if !self.accepting() {
            self.events.push_back(Event::Unavailable(origin));
            return;
        }
        let (token, keep) = (token(origin), self.cfg.history.to_string());
        // Encoded straight from the borrowed text: this runs for every message.
        let args = ["FCALL", "skiff_message", "0", PREFIX, &self.node, &token, author, text, &keep];
        match self.cmd.as_mut() {
            Some(cmd) => {
                resp::encode(&mut cmd.out, &args);
                self.pending.push_back((Instant::now(), Pending::Publish(origin)));
            }
            None => self.events.push_back(Event::Unavailable(origin)),
        }
    }

    /// A WebSocket here closed. Lost while Redis is down: the sync on reconnect
    /// tells Redis which users this node still has.
    pub fn left(&mut self, user: &str) {
        if self.accepting() && !self.stopping {
            let lower = user.to_ascii_lowercase();
            self.send(&fcall("skiff_leave", &[PREFIX, &lower, user, &self.node]), Pending::Ignore);
        }
    }

    /// A graceful stop: this node's users leave the cluster now. Nothing is sent
    /// after it; `is_idle` says when Redis has answered.
    pub fn stop(&mut self) {
        if self.accepting() {
            self.send(&fcall("skiff_stop", &[PREFIX, &self.node]), Pending::Ignore);
        }
        self.stopping = true;
    }

    /// Every command sent has been answered (or the link is gone).
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// After a sync: is this session (one with a socket here) still in Redis? An
    /// end this node missed while away comes back as `Event::SessionEnded`.
    pub fn check_session(&mut self, id_hash: &[u8; 32]) {
        if self.accepting() {
            self.send(&fcall("skiff_session", &[PREFIX, &hex(id_hash)]), Pending::Check(*id_hash));
        }
    }

    /// Activity on a session: Redis keeps it a full TTL (+ the save slack) from now.
    pub fn renew(&mut self, id_hash: &[u8; 32]) {
        if self.accepting() {
            let ttl = self.session_ms().to_string();
            self.send(&fcall("skiff_renew", &[PREFIX, &hex(id_hash), &ttl]), Pending::Ignore);
        }
    }

    fn session_ms(&self) -> u128 {
        (self.cfg.session_ttl + crate::chat::session::SAVE_SLACK).as_millis()
    }

    /// Sends the sync: `users` are this node's open WebSockets (name, connection);
    /// `seen` the history this node holds (epoch, last id), so that Redis come back
    /// with an older counter gets a new epoch instead of reusing ids.
    pub fn sync(&mut self, users: &[(String, Origin)], seen: (&str, u64), now: Instant) {
        if self.state != State::Subscribed {
            return;
        }
        for id_hash in std::mem::take(&mut self.deferred_logouts) {
            self.send(&fcall("skiff_logout", &[PREFIX, &hex(&id_hash)]), Pending::Ignore);
        }
        let ttl = NODE_TTL.as_millis().to_string();
        let keep = self.cfg.history.to_string();
        // Drawn anew each time: if Redis lost its data since the last sync, the
        // history is a new one and must not get the old epoch back.
        let mut fresh = [0u8; 6];
        getrandom::fill(&mut fresh).expect("the OS CSPRNG is available");
        let epoch = hex(&fresh);
        let mut args: Vec<String> =
            vec![PREFIX.into(), self.node.clone(), ttl, epoch, keep, seen.0.into(), seen.1.to_string()];
        for (name, origin) in users {
            args.extend([name.to_ascii_lowercase(), name.clone(), token(*origin)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.send(&fcall("skiff_sync", &args), Pending::Sync);
        self.state = State::Syncing;
        self.heartbeat_at = now + HEARTBEAT_EVERY;
    }

    fn send(&mut self, args: &[Vec<u8>], why: Pending) {
        let Some(cmd) = self.cmd.as_mut() else {
            self.fail_pending(why);
            return;
        };
        resp::encode(&mut cmd.out, args);
        self.pending.push_back((Instant::now(), why));
    }

    /// The earliest moment `on_timeout` has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.stopping {
            // No heartbeats or retries any more: only an answer that never comes.
            return self.pending.front().map(|(at, _)| *at + REPLY_TIMEOUT);
        }
        match self.state {
            State::Down => Some(self.retry_at),
            State::Connecting | State::Subscribed => Some(self.since + CONNECT_TIMEOUT),
            State::Syncing | State::Up => {
                let stuck = self.pending.front().map(|(at, _)| *at + REPLY_TIMEOUT);
                [Some(self.heartbeat_at), Some(self.reap_at), stuck].into_iter().flatten().min()
            }
        }
    }

    pub fn on_timeout(&mut self, now: Instant) {
        match self.state {
            State::Down if now >= self.retry_at && !self.stopping => self.connect(now),
            State::Connecting | State::Subscribed if now >= self.since + CONNECT_TIMEOUT => {
                self.lost("connecting timed out", now);
            }
            State::Syncing | State::Up => {
                if self.pending.front().is_some_and(|(at, _)| now >= *at + REPLY_TIMEOUT) {
                    return self.lost("a reply took over 5 s", now);
                }
                if self.stopping {
                    return;
                }
                if now >= self.heartbeat_at {
                    self.heartbeat_at = now + HEARTBEAT_EVERY;
                    let ttl = NODE_TTL.as_millis().to_string();
                    self.send(&fcall("skiff_heartbeat", &[PREFIX, &self.node, &ttl]), Pending::Ignore);
                }
                if now >= self.reap_at {
                    self.reap_at = now + REAP_EVERY;
                    if self.state == State::Up && now >= self.since + REAP_GRACE {
                        self.send(&fcall("skiff_reap", &[PREFIX]), Pending::Ignore);
                    }
                }
            }
            _ => {}
        }
    }

    fn connect(&mut self, now: Instant) {
        self.since = now;
        let open = |token: Token| -> io::Result<Link> {
            let mut sock = TcpStream::connect(self.cfg.url.addr)?;
            let _ = sock.set_nodelay(true);
            self.registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
            Ok(Link { sock, input: Vec::new(), out: Vec::new() })
        };
        let (cmd, sub) = match (open(CMD), open(SUB)) {
            (Ok(c), Ok(s)) => (c, s),
            (Err(e), _) | (_, Err(e)) => return self.lost(&format!("cannot connect: {e}"), now),
        };
        self.cmd = Some(cmd);
        self.sub = Some(sub);
        self.state = State::Connecting;
        let mut hello = Vec::new();
        if let Some(pw) = &self.cfg.url.password {
            hello.push(vec![b"AUTH".to_vec(), pw.clone().into_bytes()]);
        }
        let select = (self.cfg.url.db != 0).then(|| vec![b"SELECT".to_vec(), self.cfg.url.db.to_string().into_bytes()]);
        for link in [self.cmd.as_mut(), self.sub.as_mut()].into_iter().flatten() {
            for c in &hello {
                resp::encode(&mut link.out, c);
            }
        }
        let mut count = hello.len();
        if let Some(select) = select {
            let cmd = self.cmd.as_mut().expect("just set");
            resp::encode(&mut cmd.out, &select);
            count += 1;
        }
        let cmd = self.cmd.as_mut().expect("just set");
        resp::encode(&mut cmd.out, &["FUNCTION", "LOAD", "REPLACE", LIBRARY]);
        for _ in 0..count + 1 {
            self.pending.push_back((now, Pending::Ignore));
        }
        let sub = self.sub.as_mut().expect("just set");
        resp::encode(&mut sub.out, &["SUBSCRIBE", &format!("{PREFIX}room")]);
    }

    /// Both links go; everything waiting fails; the next attempt is scheduled.
    fn lost(&mut self, why: &str, now: Instant) {
        if !self.outage_logged {
            log::error(format_args!("redis {}: {why}; degraded, retrying", self.cfg.url));
            self.outage_logged = true;
        }
        for link in [self.cmd.take(), self.sub.take()].into_iter().flatten() {
            let mut sock = link.sock;
            let _ = self.registry.deregister(&mut sock);
        }
        for (_, p) in std::mem::take(&mut self.pending) {
            self.fail_pending(p);
        }
        for origin in std::mem::take(&mut self.joining) {
            self.events.push_back(Event::Reply(Done { origin, reply: Reply::Unavailable }));
        }
        self.buffered.clear();
        self.state = State::Down;
        self.retry_at = now + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn fail_pending(&mut self, p: Pending) {
        match p {
            Pending::Conn(origin, _) | Pending::Control(origin) => {
                self.events.push_back(Event::Reply(Done { origin, reply: Reply::Unavailable }))
            }
            Pending::Publish(origin) => self.events.push_back(Event::Unavailable(origin)),
            Pending::Check(_) | Pending::Sync | Pending::Ignore => {}
        }
    }

    /// Readiness on one of the links.
    pub fn on_ready(&mut self, token: Token, now: Instant) {
        let result = match token {
            CMD => self.read_cmd(),
            SUB => self.read_sub(now),
            _ => Ok(()),
        };
        if let Err(e) = result {
            self.lost(&e, now);
        }
    }

    /// Writes what the links have queued: the loop calls it once per turn, so every
    /// command of a turn goes out in one write (pipelining).
    pub fn flush(&mut self, now: Instant) {
        let mut failed = None;
        for link in [self.cmd.as_mut(), self.sub.as_mut()].into_iter().flatten() {
            if let Err(e) = link.write() {
                failed = Some(e);
            } else if link.out.len() > OUT_LIMIT {
                failed = Some("Redis does not read its commands".into());
            }
        }
        if let Some(e) = failed {
            self.lost(&e, now);
        }
    }

    fn read_cmd(&mut self) -> Result<(), String> {
        let Some(cmd) = self.cmd.as_mut() else { return Ok(()) };
        let (replies, eof) = cmd.read_values()?;
        for v in replies {
            let (sent, why) = self.pending.pop_front().ok_or("a reply nobody asked for")?;
            crate::metrics::REDIS_ROUNDTRIP.observe_duration(sent.elapsed());
            self.on_reply(why, v)?;
        }
        if eof {
            return Err("connection closed".into());
        }
        Ok(())
    }

    fn read_sub(&mut self, now: Instant) -> Result<(), String> {
        let Some(sub) = self.sub.as_mut() else { return Ok(()) };
        let (values, eof) = sub.read_values()?;
        for v in values {
            let Some(items) = v.as_array() else {
                if let Value::Error(e) = &v {
                    return Err(format!("subscribing failed: {e}"));
                }
                continue; // AUTH's +OK
            };
            match items.first().and_then(Value::as_str) {
                Some("subscribe") if self.state == State::Connecting => {
                    self.state = State::Subscribed;
                    self.since = now;
                }
                Some("message") => {
                    let Some(ev) = items.get(2).and_then(Value::as_bytes).and_then(RoomEvent::parse) else {
                        log::warn(format_args!("redis: ignoring a malformed event on the room channel"));
                        continue;
                    };
                    if self.state == State::Up {
                        self.room_event(ev);
                    } else {
                        self.buffered.push(ev);
                    }
                }
                _ => {}
            }
        }
        if eof {
            return Err("connection closed".into());
        }
        Ok(())
    }

    fn on_reply(&mut self, why: Pending, v: Value) -> Result<(), String> {
        if let Value::Error(e) = &v {
            // While connecting, a failure (a wrong password) is said once, when the
            // link is given up, not again on every retry.
            if self.accepting() {
                log::warn(format_args!("redis: command failed: {e}"));
            }
        }
        match why {
            Pending::Ignore => {}
            Pending::Control(origin) => self.events.push_back(Event::Control { origin, value: v }),
            Pending::Check(id_hash) => {
                if matches!(v, Value::Bulk(None)) {
                    // Logged out (or evicted) elsewhere while this node was away.
                    self.events.push_back(Event::SessionEnded { id_hash, code: crate::ws::close::NORMAL });
                }
            }
            Pending::Publish(origin) => {
                if !matches!(v, Value::Int(_)) {
                    self.events.push_back(Event::Unavailable(origin));
                }
            }
            Pending::Conn(origin, expect) => {
                let reply = match (expect, &v) {
                    (_, Value::Error(_)) => Reply::Unavailable,
                    (Expect::Register, Value::Int(1)) => Reply::Registered,
                    (Expect::Register, _) => Reply::NameTaken,
                    // skiff_login's answer for a banned user (a name is a bulk string).
                    (Expect::Login, Value::Array(_)) => Reply::Banned,
                    (Expect::Login | Expect::FindUser, v) => Reply::User(v.as_str().map(str::to_owned)),
                    (Expect::Session, v) => Reply::Session(session_reply(v)),
                    (Expect::Logout, _) => Reply::LoggedOut,
                    (Expect::Join, Value::Int(0)) => Reply::NameTaken,
                    (Expect::Join, _) => {
                        // Accepted: the connection opens when its join event comes.
                        self.joining.push(origin);
                        return Ok(());
                    }
                };
                self.events.push_back(Event::Reply(Done { origin, reply }));
            }
            Pending::Sync => {
                let (snapshot, seq, taken) = snapshot(&v).ok_or_else(|| format!("a bad sync reply: {v:?}"))?;
                log::info(format_args!(
                    "redis {}: in sync as node {}: {} online, last message {}",
                    self.cfg.url,
                    self.node,
                    snapshot.online.len(),
                    snapshot.last_id
                ));
                self.events.push_back(Event::Synced { snapshot, taken });
                for ev in std::mem::take(&mut self.buffered) {
                    if ev.seq() > seq {
                        self.room_event(ev);
                    }
                }
                self.state = State::Up;
                self.syncs += 1;
                self.since = Instant::now();
                self.backoff = BACKOFF_MIN;
                self.outage_logged = false;
            }
        }
        Ok(())
    }

    fn room_event(&mut self, ev: RoomEvent) {
        let mine = |node: &str, token: &str| if node == self.node { parse_token(token) } else { None };
        let event = match ev {
            RoomEvent::Join { node, token, name, .. } => {
                let mine = mine(&node, &token);
                if let Some(o) = mine {
                    self.joining.retain(|j| *j != o);
                }
                Event::Join { name, mine }
            }
            RoomEvent::Leave { name, .. } => Event::Leave { name },
            RoomEvent::Message { id, ts, node, token, author, text, .. } => {
                Event::Message { id, ts, author, text, mine: mine(&node, &token) }
            }
            RoomEvent::SessionEnd { code, hash, .. } => {
                let Some(id_hash) = unhex32(&hash) else { return };
                Event::SessionEnded { id_hash, code }
            }
            RoomEvent::Kick { node, name, .. } if node == self.node => Event::Kick { name },
            RoomEvent::Kick { .. } => return,
            RoomEvent::Delete { id, .. } => Event::Deleted { id },
        };
        self.events.push_back(event);
    }
}

impl Link {
    /// Every whole value the socket has brought so far, and whether it has ended.
    fn read_values(&mut self) -> Result<(Vec<Value>, bool), String> {
        let eof = self.fill()?;
        let mut values = Vec::new();
        let mut used = 0;
        while let Some((v, n)) = resp::parse(&self.input[used..]).map_err(|e| e.to_string())? {
            used += n;
            values.push(v);
        }
        self.input.drain(..used);
        Ok((values, eof))
    }

    /// Reads what the socket has; true at end of stream.
    fn fill(&mut self) -> Result<bool, String> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.sock.read(&mut chunk) {
                Ok(0) => return Ok(true),
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn write(&mut self) -> Result<(), String> {
        while !self.out.is_empty() {
            match self.sock.write(&self.out) {
                Ok(0) => return Err("connection closed".into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                // Not connected yet, or the buffer is full: writable readiness comes.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::NotConnected => {
                    return Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }
}

fn fcall(name: &str, args: &[&str]) -> Vec<Vec<u8>> {
    let mut v = vec![b"FCALL".to_vec(), name.as_bytes().to_vec(), b"0".to_vec()];
    v.extend(args.iter().map(|a| a.as_bytes().to_vec()));
    v
}

/// How a connection is named in events: slab key and generation.
fn token(o: Origin) -> String {
    format!("{}.{}", o.conn, o.generation)
}

fn parse_token(t: &str) -> Option<Origin> {
    let (conn, generation) = t.split_once('.')?;
    Some(Origin { conn: conn.parse().ok()?, generation: generation.parse().ok()? })
}

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    data_encoding::HEXLOWER.decode(s.as_bytes()).ok()?.try_into().ok()
}

fn session_reply(v: &Value) -> Option<(String, u64)> {
    let items = v.as_array()?;
    let name = items.first()?.as_str()?.to_owned();
    // -1: no expiry (someone PERSISTed it); treat it as a fresh session.
    let ms = items.get(1)?.as_int()?;
    let ms = if ms < 0 { u64::MAX } else { ms as u64 };
    Some((name, ms))
}

/// `skiff_sync`'s reply: the snapshot, its channel position, and the taken users.
fn snapshot(v: &Value) -> Option<(Snapshot, u64, Vec<String>)> {
    let items = v.as_array()?;
    let seq = items.first()?.as_int()? as u64;
    let epoch = items.get(1)?.as_str()?.to_owned();
    let last_id = items.get(2)?.as_int()? as u64;
    let strings =
        |v: &Value| -> Option<Vec<String>> { v.as_array()?.iter().map(|x| x.as_str().map(str::to_owned)).collect() };
    let online = strings(items.get(3)?)?;
    let mut messages = Vec::new();
    for entry in items.get(4)?.as_array()? {
        let e = entry.as_array()?;
        let id: u64 = e.first()?.as_str()?.split('-').next()?.parse().ok()?;
        let fields = e.get(1)?.as_array()?;
        let (mut ts, mut author, mut text) = (None, None, None);
        for kv in fields.chunks(2) {
            let value = kv.get(1)?.as_str()?;
            match kv[0].as_str()? {
                "ts" => ts = value.parse::<i64>().ok(),
                "author" => author = Some(value.to_owned()),
                "message" => text = Some(value.to_owned()),
                _ => {}
            }
        }
        messages.push((id, ts?, author?, text?));
    }
    messages.reverse();
    let taken = strings(items.get(5)?)?;
    Some((Snapshot { epoch, last_id, online, messages }, seq, taken))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn tokens_and_hashes_round_trip() {
        let o = Origin { conn: 12, generation: 3456 };
        assert_eq!(parse_token(&token(o)), Some(o));
        assert_eq!(parse_token("x.1"), None);
        let h = [0xabu8; 32];
        assert_eq!(unhex32(&hex(&h)), Some(h));
        assert_eq!(unhex32("ab"), None);
    }

    #[test]
    fn reads_a_sync_snapshot() {
        let entry = |id: &str, ts: &str, a: &str, m: &str| {
            Value::Array(Some(vec![
                bulk(id),
                Value::Array(Some(vec![bulk("ts"), bulk(ts), bulk("author"), bulk(a), bulk("message"), bulk(m)])),
            ]))
        };
        let v = Value::Array(Some(vec![
            Value::Int(40),
            bulk("e1"),
            Value::Int(8),
            Value::Array(Some(vec![bulk("Bob"), bulk("al")])),
            Value::Array(Some(vec![entry("8-0", "20", "al", "new"), entry("7-0", "10", "Bob", "old")])),
            Value::Array(Some(vec![bulk("zed")])),
        ]));
        let (snap, seq, taken) = snapshot(&v).expect("well-formed");
        assert_eq!(seq, 40);
        assert_eq!((snap.epoch.as_str(), snap.last_id), ("e1", 8));
        assert_eq!(snap.online, ["Bob", "al"]);
        assert_eq!(snap.messages, [(7, 10, "Bob".into(), "old".into()), (8, 20, "al".into(), "new".into())]);
        assert_eq!(taken, ["zed"]);
        assert!(snapshot(&Value::Int(1)).is_none());
    }

    #[test]
    fn a_session_reply_gives_the_time_left() {
        assert_eq!(session_reply(&Value::Array(Some(vec![bulk("al"), Value::Int(5000)]))), Some(("al".into(), 5000)));
        assert_eq!(session_reply(&Value::Array(Some(vec![bulk("al"), Value::Int(-1)]))), Some(("al".into(), u64::MAX)));
        assert_eq!(session_reply(&Value::Bulk(None)), None);
    }
}
