//! `FakeRedis`: an in-memory stand-in for the Redis a cluster runs on, for the
//! `connection_cluster` fuzz world and its tests. It holds many links, each a byte
//! stream in (RESP commands) and out (replies and channel messages), and answers
//! what a node sends: AUTH, SELECT, FUNCTION LOAD, SUBSCRIBE, HGET and FCALL of the
//! `skiff_*` functions, reproducing `src/cluster/library.lua`.
//!
//! The order rules are Redis's: commands run one at a time, whole, in the order
//! their bytes arrive (a link's bytes are executed as soon as they are written);
//! every event goes to every subscribed link in seq order; a command's reply goes
//! to its own link after the events it published. Time is what the caller sets
//! (`set_clock`): nothing here reads a clock or draws a random number, so a fuzz
//! input replays exactly. Everything is bounded (links, users, sessions, history,
//! buffers) and no input panics: what Redis would refuse is an error reply, what it
//! would drop (a protocol error, an output buffer past its limit) closes the link.
//!
//! Simplifications, none of which a node can tell: one keyspace whatever SELECT
//! says; only the `skiff:` prefix; a Lua error is reported before the function
//! writes anything (the real functions check nothing a node could get wrong).
//! tests/redis_standin.rs holds it to the real thing: the commands the
//! `connection_cluster` corpus sends (`record`) and scripted ones run against both
//! a real redis-server with `library.lua` and this, and must get the same replies
//! and events. `ctl.rs` has the `skiff ctl` functions.

use crate::cluster::resp::{self, Value};
use crate::cluster::PREFIX;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

mod ctl;

/// Links open at once (a node holds two; a reconnect briefly more).
pub const MAX_LINKS: usize = 16;
const MAX_USERS: usize = 256;
const MAX_SESSIONS: usize = 1024;
const MAX_NODES: usize = 16;
const MAX_HISTORY: usize = 256;
const MAX_CHANNELS: usize = 8;
/// Unparsed command bytes a link may hold (Redis's query buffer limit, scaled down).
const MAX_INPUT: usize = 4 << 20;
/// Reply and message bytes waiting for a link's reader: past this Redis drops the
/// client (its client-output-buffer-limit), as it does a slow subscriber.
const MAX_OUTPUT: usize = 8 << 20;

const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";

/// What reading a link gives.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    Bytes(Vec<u8>),
    /// Nothing yet; the link is open.
    Nothing,
    /// Redis closed the link and everything it wrote has been read (or the link
    /// never existed): the reader sees the end of the stream.
    Closed,
}

#[derive(Default)]
struct Link {
    input: Vec<u8>,
    out: Vec<u8>,
    channels: BTreeSet<String>,
    /// Redis closed it: no more commands run, what `out` holds is still readable.
    closed: bool,
}

/// A sorted set: members ordered by (score, member), as ZRANGE gives them.
#[derive(Default, Clone)]
struct ZSet {
    score: BTreeMap<String, i64>,
    order: BTreeSet<(i64, String)>,
}

impl ZSet {
    fn add(&mut self, member: &str, score: i64) {
        if let Some(old) = self.score.insert(member.to_owned(), score) {
            self.order.remove(&(old, member.to_owned()));
        }
        self.order.insert((score, member.to_owned()));
    }

    fn remove(&mut self, member: &str) -> bool {
        match self.score.remove(member) {
            Some(old) => self.order.remove(&(old, member.to_owned())),
            None => false,
        }
    }

    fn pop_min(&mut self) -> Option<String> {
        let (_, m) = self.order.pop_first()?;
        self.score.remove(&m);
        Some(m)
    }

    fn len(&self) -> usize {
        self.score.len()
    }

    fn members(&self) -> Vec<String> {
        self.order.iter().map(|(_, m)| m.clone()).collect()
    }
}

/// A message kept in the history stream.
#[derive(Clone)]
struct Entry {
    id: u64,
    ts: i64,
    author: String,
    text: String,
}

#[derive(Default)]
pub struct FakeRedis {
    links: BTreeMap<u64, Link>,
    next_link: u64,
    now_ms: i64,
    loaded: bool,
    // The keys `library.lua` keeps under the prefix, one field each.
    users: BTreeMap<String, String>,
    keys: BTreeMap<String, String>,
    keyof: BTreeMap<String, String>,
    created: BTreeMap<String, i64>,
    banned: BTreeMap<String, String>,
    /// Session hash -> (user, expiry in ms).
    sessions: BTreeMap<String, (String, i64)>,
    /// Ended session hash -> (close code, expiry in ms): the tombstones
    /// `skiff_reassert` reads.
    ended: BTreeMap<String, (String, i64)>,
    /// Lowercased user -> (sessions by login time, the list's expiry).
    usess: BTreeMap<String, (ZSet, i64)>,
    presence: BTreeMap<String, String>,
    /// Lowercased user -> the nodes with a socket of the user (several v2 devices).
    pnodes: BTreeMap<String, BTreeSet<String>>,
    /// Lowercased user -> the node holding the user's plain /ws socket.
    pv1: BTreeMap<String, String>,
    /// Lowercased user -> node -> how many of the user's sockets it holds (a node
    /// of `pnodes` missing here holds one).
    pdev: BTreeMap<String, BTreeMap<String, i64>>,
    /// Lowercased user -> when a timed ban ends (ms).
    banuntil: BTreeMap<String, String>,
    nodeusers: BTreeMap<String, BTreeSet<String>>,
    online: ZSet,
    /// Node -> when its liveness key expires.
    alive: BTreeMap<String, i64>,
    nodes: BTreeSet<String>,
    /// The last microsecond TIME gave a login.
    last_us: i64,
    seq: u64,
    msgid: u64,
    epoch: Option<String>,
    history: VecDeque<Entry>,
    /// Every command run, in order, while recording (`record`).
    recording: Option<Vec<Recorded>>,
}

/// One command as the stand-in ran it: what tests/redis_standin.rs replays against
/// a real Redis to prove the two agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The stand-in's clock (Unix ms) when it ran.
    pub at_ms: i64,
    pub args: Vec<Vec<u8>>,
}

/// A reply to a command, or why it failed (Redis's error text).
type Answer = Result<Value, String>;

fn bulk(s: &str) -> Value {
    Value::Bulk(Some(s.as_bytes().to_vec()))
}

fn array(items: Vec<Value>) -> Value {
    Value::Array(Some(items))
}

/// `{replicas attached, online}`: the stand-in is a primary without replicas.
fn no_replicas() -> Value {
    array(vec![Value::Int(0), Value::Int(0)])
}

/// RESP as Redis writes it.
pub fn encode_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Simple(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
        Value::Error(e) => out.extend_from_slice(format!("-{e}\r\n").as_bytes()),
        Value::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
        Value::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
        Value::Bulk(Some(b)) => {
            out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        Value::Array(None) => out.extend_from_slice(b"*-1\r\n"),
        Value::Array(Some(items)) => {
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            for i in items {
                encode_value(out, i);
            }
        }
    }
}

fn int(s: &str) -> Result<i64, String> {
    s.parse().map_err(|_| "ERR value is not an integer or out of range".to_owned())
}

/// An expire time in ms, as SET PX and PEXPIRE take it.
fn ttl(s: &str) -> Result<i64, String> {
    match s.parse::<i64>() {
        Ok(n) if n > 0 && n < i64::MAX / 4 => Ok(n),
        _ => Err("ERR invalid expire time".to_owned()),
    }
}

fn lower(name: &str) -> String {
    // Lua's string.lower in the C locale: ASCII only.
    name.to_ascii_lowercase()
}

impl FakeRedis {
    pub fn new() -> FakeRedis {
        FakeRedis::default()
    }

    /// The time Redis's TIME would give, in Unix ms: what expiries and message
    /// timestamps are measured against.
    pub fn set_clock(&mut self, unix_ms: i64) {
        self.now_ms = self.now_ms.max(unix_ms);
    }

    /// From now on, keep every command run (bounded by what a world can send).
    pub fn record(&mut self) {
        self.recording = Some(Vec::new());
    }

    /// The commands kept since `record`, in the order they ran.
    pub fn take_recording(&mut self) -> Vec<Recorded> {
        self.recording.take().unwrap_or_default()
    }

    /// A new link, or `None` when `MAX_LINKS` are open (maxclients).
    pub fn open(&mut self) -> Option<u64> {
        if self.links.len() >= MAX_LINKS {
            return None;
        }
        let key = self.next_link;
        self.next_link += 1;
        self.links.insert(key, Link::default());
        Some(key)
    }

    /// The client hung up: the link and its subscriptions are gone.
    pub fn close(&mut self, link: u64) {
        self.links.remove(&link);
    }

    /// Redis drops the link (CLIENT KILL, a restart's lost socket): what it had not
    /// sent is lost, and its reader sees the stream end.
    pub fn kill(&mut self, link: u64) {
        if let Some(l) = self.links.get_mut(&link) {
            l.closed = true;
            l.out.clear();
            l.input.clear();
            l.channels.clear();
        }
    }

    pub fn is_open(&self, link: u64) -> bool {
        self.links.get(&link).is_some_and(|l| !l.closed)
    }

    /// Links open (closed by Redis but not yet by their client included).
    pub fn links(&self) -> usize {
        self.links.len()
    }

    /// Bytes waiting for `link`'s reader.
    pub fn pending(&self, link: u64) -> usize {
        self.links.get(&link).map_or(0, |l| l.out.len())
    }

    /// Up to `max` bytes of what Redis wrote to `link`.
    pub fn read(&mut self, link: u64, max: usize) -> Read {
        let Some(l) = self.links.get_mut(&link) else { return Read::Closed };
        if l.out.is_empty() {
            return if l.closed { Read::Closed } else { Read::Nothing };
        }
        if max == 0 {
            return Read::Nothing;
        }
        let n = max.min(l.out.len());
        Read::Bytes(l.out.drain(..n).collect())
    }

    /// Bytes from `link`'s client; every command they complete runs now, in order.
    /// False if the link is closed (the writer gets an error).
    pub fn write(&mut self, link: u64, bytes: &[u8]) -> bool {
        let Some(l) = self.links.get_mut(&link).filter(|l| !l.closed) else { return false };
        l.input.extend_from_slice(bytes);
        let mut input = std::mem::take(&mut l.input);
        let mut used = 0;
        loop {
            match resp::parse(&input[used..]) {
                Ok(Some((v, n))) => {
                    used += n;
                    let quit = self.run(link, v);
                    if quit || !self.is_open(link) {
                        return true;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    self.protocol_error(link);
                    return true;
                }
            }
        }
        input.drain(..used);
        if input.len() > MAX_INPUT {
            self.protocol_error(link);
            return true;
        }
        if let Some(l) = self.links.get_mut(&link) {
            l.input = input;
        }
        true
    }

    /// Redis answers a malformed request with an error, then closes the link.
    fn protocol_error(&mut self, link: u64) {
        self.reply(link, &Value::Error("ERR Protocol error".into()));
        if let Some(l) = self.links.get_mut(&link) {
            l.closed = true;
            l.input.clear();
            l.channels.clear();
        }
    }

    fn reply(&mut self, link: u64, v: &Value) {
        let Some(l) = self.links.get_mut(&link) else { return };
        encode_value(&mut l.out, v);
        if l.out.len() > MAX_OUTPUT {
            self.kill(link);
        }
    }

    /// Runs one command from `link`; true if the link asked to quit.
    fn run(&mut self, link: u64, cmd: Value) -> bool {
        let args: Option<Vec<&[u8]>> = cmd.as_array().and_then(|items| items.iter().map(Value::as_bytes).collect());
        let args = match args {
            Some(a) if !a.is_empty() => a,
            _ => {
                self.protocol_error(link);
                return true;
            }
        };
        if let Some(r) = self.recording.as_mut() {
            r.push(Recorded { at_ms: self.now_ms, args: args.iter().map(|a| a.to_vec()).collect() });
        }
        let name = String::from_utf8_lossy(args[0]).to_ascii_uppercase();
        let subscribed = self.links.get(&link).is_some_and(|l| !l.channels.is_empty());
        if subscribed && !matches!(name.as_str(), "SUBSCRIBE" | "UNSUBSCRIBE" | "PING" | "QUIT") {
            let e = format!("ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context", name.to_ascii_lowercase());
            self.reply(link, &Value::Error(e));
            return false;
        }
        match name.as_str() {
            "SUBSCRIBE" => {
                self.subscribe(link, &args[1..]);
                return false;
            }
            "QUIT" => {
                self.reply(link, &Value::Simple("OK".into()));
                if let Some(l) = self.links.get_mut(&link) {
                    l.closed = true;
                    l.channels.clear();
                }
                return true;
            }
            _ => {}
        }
        let answer = match name.as_str() {
            "PING" if subscribed => Ok(array(vec![bulk("pong"), bulk("")])),
            "PING" => Ok(Value::Simple("PONG".into())),
            "AUTH" if args.len() >= 2 => Ok(Value::Simple("OK".into())),
            "SELECT" if args.len() == 2 => {
                match std::str::from_utf8(args[1]).ok().and_then(|s| s.parse::<u32>().ok()) {
                    Some(db) if db < 16 => Ok(Value::Simple("OK".into())),
                    _ => Err("ERR DB index is out of range".to_owned()),
                }
            }
            "FUNCTION" => self.function(&args[1..]),
            "HGET" if args.len() == 3 => Ok(self.hget(args[1], args[2])),
            "FCALL" => self.fcall(&args[1..]),
            // The sync's history, as the node reads it: `XREVRANGE key + - COUNT n`.
            "XREVRANGE" if args.len() == 6 && args[2] == b"+" && args[3] == b"-" => {
                match std::str::from_utf8(args[5]).ok().and_then(|n| n.parse::<i64>().ok()) {
                    Some(n) if n >= 0 => Ok(array(self.newest(n))),
                    _ => Err("ERR value is not an integer or out of range".to_owned()),
                }
            }
            "AUTH" | "SELECT" | "HGET" => {
                Err(format!("ERR wrong number of arguments for '{}' command", name.to_ascii_lowercase()))
            }
            _ => Err(format!("ERR unknown command '{}'", String::from_utf8_lossy(args[0]))),
        };
        let v = answer.unwrap_or_else(Value::Error);
        self.reply(link, &v);
        false
    }

    fn subscribe(&mut self, link: u64, channels: &[&[u8]]) {
        if channels.is_empty() {
            self.reply(link, &Value::Error("ERR wrong number of arguments for 'subscribe' command".into()));
            return;
        }
        for ch in channels {
            let ch = String::from_utf8_lossy(ch).into_owned();
            let Some(l) = self.links.get_mut(&link) else { return };
            if l.channels.len() < MAX_CHANNELS {
                l.channels.insert(ch.clone());
            }
            let count = l.channels.len() as i64;
            self.reply(link, &array(vec![bulk("subscribe"), bulk(&ch), Value::Int(count)]));
        }
    }

    /// FUNCTION LOAD [REPLACE] code: only skiff's library loads.
    fn function(&mut self, args: &[&[u8]]) -> Answer {
        let sub = args.first().map(|a| String::from_utf8_lossy(a).to_ascii_uppercase());
        if sub.as_deref() != Some("LOAD") {
            return Err("ERR unknown subcommand for 'function'".into());
        }
        let (replace, code) = match &args[1..] {
            [flag, code] if flag.eq_ignore_ascii_case(b"REPLACE") => (true, code),
            [code] => (false, code),
            _ => return Err("ERR wrong number of arguments for 'function|load' command".into()),
        };
        if !code.starts_with(b"#!lua name=skiff\n") {
            return Err("ERR the stand-in loads only skiff's library".into());
        }
        if self.loaded && !replace {
            return Err("ERR Library 'skiff' already exists".into());
        }
        self.loaded = true;
        Ok(bulk("skiff"))
    }

    fn hget(&self, key: &[u8], field: &[u8]) -> Value {
        let (Ok(key), Ok(field)) = (std::str::from_utf8(key), std::str::from_utf8(field)) else {
            return Value::Bulk(None);
        };
        let Some(hash) = key.strip_prefix(PREFIX) else { return Value::Bulk(None) };
        let found = match hash {
            "users" => self.users.get(field).cloned(),
            "keys" => self.keys.get(field).cloned(),
            "keyof" => self.keyof.get(field).cloned(),
            "presence" => self.presence.get(field).cloned(),
            "banned" => self.banned.get(field).cloned(),
            "created" => self.created.get(field).map(i64::to_string),
            _ => None,
        };
        found.map_or(Value::Bulk(None), |s| bulk(&s))
    }

    /// FCALL name numkeys [key ...] arg ...: `a` are the args (`a[0]` is Lua's a[1]).
    fn fcall(&mut self, args: &[&[u8]]) -> Answer {
        let wrong = || "ERR wrong number of arguments for 'fcall' command".to_owned();
        let (name, numkeys) = match args {
            [name, numkeys, ..] => (String::from_utf8_lossy(name).into_owned(), *numkeys),
            _ => return Err(wrong()),
        };
        let numkeys: usize =
            std::str::from_utf8(numkeys).ok().and_then(|s| s.parse().ok()).ok_or("ERR Bad number of keys provided")?;
        let rest = args.get(2 + numkeys..).ok_or("ERR Number of keys can't be greater than number of args")?;
        if !self.loaded || !name.starts_with("skiff_") {
            return Err("ERR Function not found".into());
        }
        let a: Vec<&str> = rest
            .iter()
            .map(|b| std::str::from_utf8(b))
            .collect::<Result<_, _>>()
            .map_err(|_| format!("ERR {name}: an argument is not UTF-8"))?;
        if a.first() != Some(&PREFIX) {
            return Err(format!("ERR {name}: the stand-in holds only the {PREFIX} prefix"));
        }
        let arity = |n: usize| if a.len() < n { Err(format!("ERR {name}: {n} arguments expected")) } else { Ok(()) };
        match name.as_str() {
            "skiff_register" => {
                arity(4)?;
                self.register(a[1], a[2], a[3])
            }
            "skiff_login" => {
                arity(5)?;
                self.login(a[1], a[2], ttl(a[3])?, int(a[4])?)
            }
            "skiff_session" => {
                arity(2)?;
                Ok(self.session(a[1]))
            }
            "skiff_renew" => {
                arity(3)?;
                let until = self.now_ms + ttl(a[2])?;
                Ok(Value::Int(match self.live_session(a[1]) {
                    Some(s) => {
                        s.1 = until;
                        1
                    }
                    None => 0,
                }))
            }
            "skiff_logout" => {
                arity(2)?;
                Ok(Value::Int(self.logout(a[1])))
            }
            "skiff_join" => {
                arity(5)?;
                let v2 = a.get(5).is_some_and(|v| *v == "1");
                // Lua's tonumber: anything but a number is no cap.
                let cap = a.get(6).and_then(|c| c.parse::<i64>().ok());
                let seq = self.join(a[1], a[2], a[3], a[4], v2, cap)?;
                if seq == 0 || seq == -2 {
                    return Ok(Value::Int(seq));
                }
                let created = self.created.get(a[1]).map_or(Value::Bulk(None), |ms| bulk(&ms.to_string()));
                Ok(array(vec![Value::Int(seq as i64), created]))
            }
            "skiff_devices" => {
                arity(5)?;
                let delta = a[4].parse::<i64>().map_err(|_| format!("ERR {name}: a bad delta"))?;
                Ok(Value::Int(self.add_devices(a[1], a[2], a[3], delta)))
            }
            "skiff_leave" => {
                arity(4)?;
                Ok(Value::Int(self.leave(a[1], a[2], a[3])))
            }
            "skiff_message" => {
                arity(6)?;
                let keep = int(a[5])?;
                Ok(Value::Int(self.message(a[1], a[2], a[3], a[4], keep) as i64))
            }
            "skiff_heartbeat" => {
                arity(3)?;
                let ttl = ttl(a[2])?;
                self.heartbeat(a[1], ttl)?;
                Ok(no_replicas())
            }
            "skiff_reassert" => {
                arity(6)?;
                self.reassert(a[1], a[2], a[3], ttl(a[4])?, a[5])
            }
            "skiff_reap" => Ok(Value::Int(self.reap())),
            "skiff_stop" => {
                arity(2)?;
                self.stop(a[1]);
                Ok(Value::Int(1))
            }
            "skiff_sync" => {
                arity(7)?;
                if !(a.len() - 7).is_multiple_of(3) {
                    return Err("ERR skiff_sync: users come as lower, name, token".into());
                }
                self.sync(&a)
            }
            _ => self.ctl(&name, &a),
        }
    }

    /// `PUBLISH PREFIX..room "KIND SEQ REST"`, the next seq: to every subscriber.
    fn publish(&mut self, kind: &str, rest: &str) -> u64 {
        self.seq += 1;
        let channel = format!("{PREFIX}room");
        let payload = format!("{kind} {} {rest}", self.seq);
        let mut msg = Vec::new();
        encode_value(&mut msg, &array(vec![bulk("message"), bulk(&channel), bulk(&payload)]));
        let mut over = Vec::new();
        for (&key, l) in self.links.iter_mut() {
            if !l.closed && l.channels.contains(&channel) {
                l.out.extend_from_slice(&msg);
                if l.out.len() > MAX_OUTPUT {
                    over.push(key);
                }
            }
        }
        for key in over {
            self.kill(key);
        }
        self.seq
    }

    /// The session if it has not expired (an expired one is gone, as in Redis, which
    /// keeps a key through the millisecond it expires at).
    fn live_session(&mut self, sess: &str) -> Option<&mut (String, i64)> {
        let now = self.now_ms;
        if self.sessions.get(sess).is_some_and(|s| s.1 < now) {
            self.sessions.remove(sess);
        }
        self.sessions.get_mut(sess)
    }

    /// The user's session list, unless it expired.
    fn usess(&mut self, lower: &str) -> Option<&mut (ZSet, i64)> {
        let now = self.now_ms;
        if self.usess.get(lower).is_some_and(|l| l.1 < now) {
            self.usess.remove(lower);
        }
        self.usess.get_mut(lower)
    }

    fn register(&mut self, lower: &str, name: &str, keyhash: &str) -> Answer {
        if self.users.contains_key(lower) {
            return Ok(Value::Int(0));
        }
        if self.users.len() >= MAX_USERS {
            return Err(OOM.into());
        }
        self.users.insert(lower.to_owned(), name.to_owned());
        self.keys.insert(keyhash.to_owned(), name.to_owned());
        self.keyof.insert(lower.to_owned(), keyhash.to_owned());
        self.created.insert(lower.to_owned(), self.now_ms);
        Ok(Value::Int(1))
    }

    fn login(&mut self, keyhash: &str, sess: &str, ttl: i64, cap: i64) -> Answer {
        let Some(name) = self.keys.get(keyhash).cloned() else { return Ok(Value::Bulk(None)) };
        let low = lower(&name);
        if let Some(ban) = self.banned.get(&low) {
            // As library.lua: {'banned', since, until ('' for none), why}. A timed ban
            // that ran out is not modelled: the worlds make none.
            let (since, why) = ban.split_once(' ').unwrap_or((ban.as_str(), ""));
            let until = self.banuntil.get(&low).cloned().unwrap_or_default();
            return Ok(array(vec![bulk("banned"), bulk(since), bulk(&until), bulk(why)]));
        }
        if self.sessions.len() >= MAX_SESSIONS && !self.sessions.contains_key(sess) {
            let now = self.now_ms;
            self.sessions.retain(|_, s| s.1 >= now);
            if self.sessions.len() >= MAX_SESSIONS {
                return Err(OOM.into());
            }
        }
        let now = self.now_ms;
        self.sessions.insert(sess.to_owned(), (name.clone(), now + ttl));
        if self.usess(&low).is_none() {
            self.usess.insert(low.clone(), (ZSet::default(), now + ttl));
        }
        // TIME in microseconds, which Redis's clock never repeats: the fake clock
        // has ms, so logins in one ms count up from it, oldest lowest (a tie would
        // fall back to the hash and end a newer session than Redis does).
        let us = now.saturating_mul(1000).max(self.last_us.saturating_add(1));
        self.last_us = us;
        let sessions = &self.sessions;
        let list = &mut self.usess.get_mut(&low).expect("made above").0;
        list.add(sess, us);
        let mut evicted = Vec::new();
        if list.len() as i64 > cap {
            for h in list.members() {
                if sessions.get(&h).is_none_or(|s| s.1 < now) {
                    list.remove(&h);
                }
            }
            while list.len() as i64 > cap {
                let Some(oldest) = list.pop_min() else { break };
                evicted.push(oldest);
            }
        }
        self.usess.get_mut(&low).expect("made above").1 = now + ttl;
        for oldest in evicted {
            self.end_session(&oldest, "1008");
            self.publish("E", &format!("1008 {oldest}"));
        }
        Ok(bulk(&name))
    }

    fn session(&mut self, sess: &str) -> Value {
        let now = self.now_ms;
        match self.live_session(sess) {
            Some((name, until)) => array(vec![bulk(name), Value::Int(*until - now)]),
            None => Value::Bulk(None),
        }
    }

    fn logout(&mut self, sess: &str) -> i64 {
        let Some((name, _)) = self.live_session(sess).map(|s| s.clone()) else { return 0 };
        self.end_session(sess, "1000");
        if let Some(list) = self.usess(&lower(&name)) {
            list.0.remove(sess);
        }
        self.publish("E", &format!("1000 {sess}"));
        self.publish("O", &name);
        1
    }

    /// A live session ends; its tombstone lives as long as the session would have.
    fn end_session(&mut self, sess: &str, code: &str) {
        let Some((_, until)) = self.sessions.remove(sess) else { return };
        let now = self.now_ms;
        if self.ended.len() >= MAX_SESSIONS {
            self.ended.retain(|_, e| e.1 > now);
        }
        if until > now && self.ended.len() < MAX_SESSIONS {
            self.ended.insert(sess.to_owned(), (code.to_owned(), until));
        }
    }

    fn reassert(&mut self, sess: &str, lower: &str, name: &str, ttl: i64, created: &str) -> Answer {
        if !self.users.contains_key(lower) {
            return Ok(bulk("deleted"));
        }
        if !created.is_empty() && self.created.get(lower).map(i64::to_string).as_deref() != Some(created) {
            return Ok(bulk("deleted"));
        }
        if self.banned.contains_key(lower) {
            return Ok(bulk("banned"));
        }
        if self.live_session(sess).is_some() {
            return Ok(bulk("live"));
        }
        let now = self.now_ms;
        if let Some((code, _)) = self.ended.get(sess).filter(|e| e.1 > now) {
            return Ok(bulk(&format!("ended {code}")));
        }
        if self.sessions.len() >= MAX_SESSIONS {
            self.sessions.retain(|_, s| s.1 > now);
            if self.sessions.len() >= MAX_SESSIONS {
                return Err(OOM.into());
            }
        }
        self.sessions.insert(sess.to_owned(), (name.to_owned(), now + ttl));
        self.usess(lower);
        let list = self.usess.entry(lower.to_owned()).or_insert_with(|| (ZSet::default(), now + ttl));
        list.0.add(sess, now.saturating_mul(1000));
        list.1 = list.1.max(now + ttl);
        Ok(bulk("restored"))
    }

    /// As library.lua's `holders`: the nodes holding the user, sorted, with how many
    /// sockets each.
    fn holders(&self, lower: &str) -> Vec<(String, i64)> {
        let nodes: Vec<String> = self.pnodes.get(lower).map(|n| n.iter().cloned().collect()).unwrap_or_default();
        let counts = self.pdev.get(lower);
        nodes.into_iter().map(|n| (n.clone(), counts.and_then(|c| c.get(&n)).copied().unwrap_or(1))).collect()
    }

    fn devices(&self, lower: &str) -> i64 {
        self.holders(lower).iter().map(|h| h.1).sum()
    }

    /// The sockets `node` holds of the user (one if not counted), if it holds the user.
    fn devices_on(&self, lower: &str, node: &str) -> Option<i64> {
        let held = self.pnodes.get(lower).is_some_and(|n| n.contains(node));
        held.then(|| self.pdev.get(lower).and_then(|c| c.get(node)).copied().unwrap_or(1))
    }

    fn set_devices(&mut self, lower: &str, name: &str, node: &str, n: i64) {
        self.pdev.entry(lower.to_owned()).or_default().insert(node.to_owned(), n);
        self.publish("N", &format!("{node} {name} {n}"));
    }

    /// As library.lua's `skiff_devices`.
    fn add_devices(&mut self, lower: &str, name: &str, node: &str, delta: i64) -> i64 {
        if let Some(n) = self.devices_on(lower, node) {
            self.set_devices(lower, name, node, n.saturating_add(delta).max(1));
        }
        self.devices(lower)
    }

    /// As library.lua's `join`: the seq of the join event; -1 when the user is online
    /// already through v2 devices on other nodes (no join event); 0 refused (a plain
    /// /ws socket is its user's only socket, cluster-wide); -2 refused, `cap` reached.
    fn join(
        &mut self,
        lower: &str,
        name: &str,
        node: &str,
        token: &str,
        v2: bool,
        cap: Option<i64>,
    ) -> Result<i64, String> {
        if let Some(holder) = self.presence.get(lower).cloned() {
            if !v2 || self.pv1.contains_key(lower) {
                return Ok(0);
            }
            if cap.is_some_and(|cap| self.devices(lower) >= cap) {
                return Ok(-2);
            }
            let here = self.devices_on(lower, node).unwrap_or(0);
            let nodes = self.pnodes.entry(lower.to_owned()).or_default();
            nodes.insert(holder);
            nodes.insert(node.to_owned());
            self.nodeusers.entry(node.to_owned()).or_default().insert(lower.to_owned());
            self.set_devices(lower, name, node, here + 1);
            return Ok(-1);
        }
        if self.presence.len() >= MAX_USERS {
            return Err(OOM.into());
        }
        self.presence.insert(lower.to_owned(), node.to_owned());
        self.pnodes.entry(lower.to_owned()).or_default().insert(node.to_owned());
        self.pdev.insert(lower.to_owned(), BTreeMap::from([(node.to_owned(), 1)]));
        if !v2 {
            self.pv1.insert(lower.to_owned(), node.to_owned());
        }
        self.nodeusers.entry(node.to_owned()).or_default().insert(lower.to_owned());
        let seq = self.publish("J", &format!("{node} {token} {name}"));
        self.online.add(name, seq as i64);
        Ok(seq as i64)
    }

    /// As library.lua's `leave`: a node with none of the user's sockets left drops
    /// out; the user leaves (event L) when no node has one.
    fn leave(&mut self, lower: &str, name: &str, node: &str) -> i64 {
        let holder = self.presence.get(lower).cloned();
        let removed = self.pnodes.get_mut(lower).is_some_and(|n| n.remove(node));
        if !removed && holder.as_deref() != Some(node) {
            return 0;
        }
        if let Some(set) = self.nodeusers.get_mut(node) {
            set.remove(lower);
            if set.is_empty() {
                self.nodeusers.remove(node);
            }
        }
        if self.pv1.get(lower).map(String::as_str) == Some(node) {
            self.pv1.remove(lower);
        }
        if let Some(counts) = self.pdev.get_mut(lower) {
            counts.remove(node);
        }
        // Redis picks any remaining node (SRANDMEMBER); with the two nodes the
        // worlds run there is at most one.
        let other = self.pnodes.get(lower).and_then(|n| n.iter().next().cloned());
        if let Some(other) = other {
            if holder.as_deref() == Some(node) {
                self.presence.insert(lower.to_owned(), other);
            }
            self.publish("N", &format!("{node} {name} 0"));
            return 1;
        }
        self.pdev.remove(lower);
        self.pnodes.remove(lower);
        self.presence.remove(lower);
        self.online.remove(name);
        self.publish("L", &format!("{node} {name}"));
        1
    }

    fn message(&mut self, node: &str, token: &str, author: &str, text: &str, keep: i64) -> u64 {
        self.msgid += 1;
        let (id, ts) = (self.msgid, self.now_ms);
        if keep > 0 {
            let keep = (keep as usize).min(MAX_HISTORY);
            self.history.push_back(Entry { id, ts, author: author.to_owned(), text: text.to_owned() });
            while self.history.len() > keep {
                self.history.pop_front();
            }
        }
        self.publish("M", &format!("{id} {ts} {node} {token} {author} {text}"));
        id
    }

    fn heartbeat(&mut self, node: &str, ttl: i64) -> Result<(), String> {
        if !self.nodes.contains(node) && self.nodes.len() >= MAX_NODES {
            return Err(OOM.into());
        }
        self.alive.insert(node.to_owned(), self.now_ms + ttl);
        self.nodes.insert(node.to_owned());
        Ok(())
    }

    fn is_alive(&self, node: &str) -> bool {
        self.alive.get(node).is_some_and(|&until| until >= self.now_ms)
    }

    /// The users of `node` as `(lower, name)`, the name from the users hash.
    fn users_of(&self, node: &str) -> Vec<(String, String)> {
        let set = self.nodeusers.get(node).cloned().unwrap_or_default();
        set.into_iter()
            .map(|l| (self.users.get(&l).cloned().unwrap_or_else(|| l.clone()), l))
            .map(|(n, l)| (l, n))
            .collect()
    }

    fn reap(&mut self) -> i64 {
        let mut gone = 0;
        // SMEMBERS has no order; a sorted one keeps runs repeatable.
        for node in self.nodes.clone() {
            if self.is_alive(&node) {
                continue;
            }
            for (low, name) in self.users_of(&node) {
                gone += self.leave(&low, &name, &node);
            }
            self.nodeusers.remove(&node);
            self.nodes.remove(&node);
        }
        gone
    }

    fn stop(&mut self, node: &str) {
        for (low, name) in self.users_of(node) {
            self.leave(&low, &name, node);
        }
        self.nodeusers.remove(node);
        self.alive.remove(node);
        self.nodes.remove(node);
    }

    fn sync(&mut self, a: &[&str]) -> Answer {
        let (node, ttl, epoch, keep) = (a[1], ttl(a[2])?, a[3], int(a[4])?);
        let (seen_epoch, seen_id) = (a[5], a[6].parse::<u64>().map_err(|_| "ERR skiff_sync: a bad seen id")?);
        self.heartbeat(node, ttl)?;
        if self.epoch.is_none() {
            self.epoch = Some(epoch.to_owned());
        }
        if self.msgid < seen_id {
            if Some(seen_epoch) == self.epoch.as_deref() {
                self.epoch = Some(epoch.to_owned());
            }
            self.msgid = seen_id;
        }
        let triples: Vec<(&str, &str, &str)> = a[7..].chunks(3).map(|t| (t[0], t[1], t[2])).collect();
        let mine: BTreeSet<&str> = triples.iter().map(|t| t.0).collect();
        for (low, name) in self.users_of(node) {
            if !mine.contains(low.as_str()) {
                self.leave(&low, &name, node);
            }
        }
        let mut taken = Vec::new();
        let mut count: BTreeMap<&str, i64> = BTreeMap::new();
        for &(low, name, token) in &triples {
            match self.presence.get(low) {
                None => {
                    self.join(low, name, node, token, true, None)?;
                }
                Some(holder) if holder != node && !self.pnodes.get(low).is_some_and(|n| n.contains(node)) => {
                    taken.push(bulk(low))
                }
                Some(_) => {}
            }
            *count.entry(low).or_default() += 1;
        }
        for &(low, name, _) in &triples {
            let Some(n) = count.remove(low) else { continue };
            if self.pnodes.get(low).is_some_and(|s| s.contains(node)) {
                let had = self.pdev.get(low).and_then(|c| c.get(node)).copied().unwrap_or(1);
                if had != n {
                    self.set_devices(low, name, node, n);
                }
            }
        }
        let mut held = Vec::new();
        for name in self.online.members() {
            let low = lower(&name);
            for (n, c) in self.holders(&low) {
                held.extend([bulk(&low), bulk(&n), Value::Int(c)]);
            }
        }
        let history = self.newest(keep);
        Ok(array(vec![
            Value::Int(self.seq as i64),
            bulk(self.epoch.as_deref().unwrap_or_default()),
            Value::Int(self.msgid as i64),
            array(self.online.members().iter().map(|n| bulk(n)).collect()),
            array(history),
            array(taken),
            no_replicas(),
            array(held),
        ]))
    }

    /// The newest `keep` history entries, newest first, as XREVRANGE gives them.
    fn newest(&self, keep: i64) -> Vec<Value> {
        let keep = keep.clamp(0, MAX_HISTORY as i64) as usize;
        let entry = |e: &Entry| {
            let fields = vec![
                bulk("ts"),
                bulk(&e.ts.to_string()),
                bulk("author"),
                bulk(&e.author),
                bulk("message"),
                bulk(&e.text),
            ];
            array(vec![bulk(&format!("{}-0", e.id)), array(fields)])
        };
        self.history.iter().rev().take(keep).map(entry).collect()
    }
}

#[cfg(test)]
mod tests;
