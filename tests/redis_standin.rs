//! The fuzz world's Redis stand-in (`src/harness/redis.rs`) against the real thing:
//! the same command sequences run against a fresh `FakeRedis` and against a real
//! redis-server loaded with `src/cluster/library.lua` (FUNCTION LOAD, as a node
//! loads it), and every reply and every room event must agree.
//!
//! The sequences are (a) the commands both nodes send while the `connection_cluster`
//! corpus replays (recorded by the stand-in) and (b) scripted ones: joins, messages,
//! moderation, expiry, a sync after a rollback.
//!
//! Time: the stand-in's clock is the world's fake one, Redis's the machine's. Expiry
//! is carried over exactly: before each batch of commands, a script gives every key
//! a command set a TTL on the expiry the stand-in's clock would give it (encoded as
//! an absolute time far in the future, so Redis never expires a key itself) and
//! deletes the keys whose time has come (Redis's rule: a key lives through the very
//! millisecond it expires at). What cannot agree is normalised, and nothing more:
//! message timestamps (Redis's TIME), a session's ms left (checked against the wall
//! clock window the command ran in), the registration time, error texts (Lua's carry
//! line numbers), and the order of leaves one command makes for several users (Lua
//! walks a Redis set, whose order is a hash's).

#[path = "common/redis.rs"]
mod redis;

use redis::Redis;
use skiff::cluster::resp::{self, Value};
use skiff::harness::redis::{FakeRedis, Read, Recorded};
use std::io::{Read as _, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Expiry times at and above this (Unix ms, year 2286) encode the stand-in's clock:
/// `BASE + expiry`.
const BASE: i64 = 10_000_000_000_000;

/// Before a batch at virtual time ARGV[2]: keys the previous batch gave a TTL
/// (ARGV[3] ms, at virtual time ARGV[4]) get their virtual expiry; keys whose
/// virtual expiry is before now go.
const TIME_MACHINE: &str = r#"
local base, now, ttl, at = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for _, k in ipairs(redis.call('KEYS', 'skiff:*')) do
  local x = redis.call('PEXPIRETIME', k)
  if x >= 0 and x < base then
    x = base + at + ttl
    redis.call('PEXPIREAT', k, string.format('%d', x))
  end
  if x >= 0 and x - base < now then
    redis.call('DEL', k)
  end
end
return 1
"#;

/// One RESP connection to the real Redis.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn { s, buf: Vec::new() }
    }

    fn send<A: AsRef<[u8]>>(&mut self, cmds: &[&[A]]) {
        let mut out = Vec::new();
        for c in cmds {
            resp::encode(&mut out, c);
        }
        self.s.write_all(&out).expect("write to redis");
    }

    fn read(&mut self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((v, n)) = resp::parse(&self.buf).expect("redis speaks RESP") {
                self.buf.drain(..n);
                return v;
            }
            assert!(Instant::now() < deadline, "redis did not answer within 10 s");
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk).expect("read from redis");
            assert!(n > 0, "redis closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn call<A: AsRef<[u8]>>(&mut self, cmd: &[A]) -> Value {
        self.send(&[cmd]);
        self.read()
    }
}

/// Both sides, each with a command link and a link subscribed to the room.
struct Pair {
    fake: FakeRedis,
    fake_cmd: u64,
    fake_sub: u64,
    cmd: Conn,
    sub: Conn,
    /// The previous batch set TTLs: (ttl, virtual time).
    armed: Option<(i64, i64)>,
    /// The virtual time of the previous batch.
    clock: Option<i64>,
}

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as i64
}

fn fake_values(fake: &mut FakeRedis, link: u64) -> Vec<Value> {
    let mut out = Vec::new();
    if let Read::Bytes(mut bytes) = fake.read(link, usize::MAX) {
        while let Some((v, n)) = resp::parse(&bytes).expect("the stand-in writes RESP") {
            out.push(v);
            bytes.drain(..n);
        }
    }
    out
}

impl Pair {
    fn new(redis: &Redis) -> Pair {
        let mut cmd = Conn::open(redis.port);
        assert_eq!(cmd.call(&["FLUSHALL"]), Value::Simple("OK".into()));
        assert_eq!(cmd.call(&["FUNCTION", "FLUSH"]), Value::Simple("OK".into()));
        let mut sub = Conn::open(redis.port);
        let subscribe = skiff::cluster::command::subscribe();
        let confirm = sub.call(&subscribe);
        let mut fake = FakeRedis::new();
        let (fake_cmd, fake_sub) = (fake.open().unwrap(), fake.open().unwrap());
        let mut bytes = Vec::new();
        resp::encode(&mut bytes, &subscribe);
        assert!(fake.write(fake_sub, &bytes));
        assert_eq!(fake_values(&mut fake, fake_sub), [confirm], "the subscription is confirmed alike");
        Pair { fake, fake_cmd, fake_sub, cmd, sub, armed: None, clock: None }
    }

    /// Runs one batch (commands at one virtual time) on both sides and compares
    /// the replies. `Err` names the first difference.
    fn batch(&mut self, at_ms: i64, cmds: &[&Recorded]) -> Result<(), String> {
        // The time machine runs first, in the same write, when there is anything
        // for it to do: keys to place, or a clock that moved.
        let mut args: Vec<Vec<Vec<u8>>> = Vec::new();
        if self.armed.is_some() || self.clock != Some(at_ms) {
            let (ttl, at) = self.armed.take().unwrap_or((0, 0));
            let machine = [BASE, at_ms, ttl, at].map(|n| n.to_string().into_bytes());
            let mut eval = vec![b"EVAL".to_vec(), TIME_MACHINE.as_bytes().to_vec(), b"0".to_vec()];
            eval.extend(machine);
            args.push(eval);
        }
        let machine = args.len();
        self.clock = Some(at_ms);
        self.fake.set_clock(at_ms);
        args.extend(cmds.iter().map(|c| c.args.clone()));
        let before = wall_ms();
        let batch: Vec<&[Vec<u8>]> = args.iter().map(Vec::as_slice).collect();
        self.cmd.send(&batch);
        let mut real: Vec<Value> = args.iter().map(|_| self.cmd.read()).collect();
        for v in real.drain(..machine) {
            assert_eq!(v, Value::Int(1), "the time machine runs");
        }
        let args = &args[machine..];
        let after = wall_ms();
        let mut fake = Vec::new();
        for a in args {
            let mut bytes = Vec::new();
            resp::encode(&mut bytes, a);
            assert!(self.fake.write(self.fake_cmd, &bytes), "the stand-in's link is open");
            fake.extend(fake_values(&mut self.fake, self.fake_cmd));
        }
        assert_eq!(fake.len(), real.len(), "one reply per command");
        // A user Redis registered gets the stand-in's registration time (its clock
        // here) instead of Redis's TIME: skiff_reassert compares it with the one a
        // node heard from skiff_join, which in a recorded stream is the stand-in's.
        let registered: Vec<String> = cmds
            .iter()
            .zip(&real)
            .filter(|(c, r)| is_register(&c.args) && **r == Value::Int(1))
            .map(|(c, _)| word(&c.args, 4))
            .collect();
        for lower in registered {
            let created = format!("{}created", skiff::cluster::PREFIX);
            let at = at_ms.to_string();
            assert_eq!(self.cmd.call(&["HSET", created.as_str(), lower.as_str(), at.as_str()]), Value::Int(0));
        }
        for ((c, r), f) in cmds.iter().zip(real).zip(fake) {
            // A function by its name, a plain command (XREVRANGE) by its own.
            let name = match word(&c.args, 0).to_ascii_uppercase() {
                fcall if fcall == "FCALL" => word(&c.args, 1),
                plain => plain,
            };
            let (r, f) = (normalise(&name, r), normalise(&name, f));
            let same = match (&r, &f) {
                (Value::Array(Some(ri)), Value::Array(Some(fi))) if name == "skiff_session" && ri.len() == 2 => {
                    // Ms left: Redis measured it against BASE + expiry from its wall
                    // clock, somewhere in [before, after].
                    let (real_left, fake_left) = (ri[1].as_int().unwrap_or(0), fi[1].as_int().unwrap_or(-1));
                    let expiry = fake_left + at_ms;
                    let window = (real_left - BASE + before - 1)..=(real_left - BASE + after + 1);
                    ri[0] == fi[0] && window.contains(&expiry)
                }
                _ => r == f,
            };
            if !same {
                return Err(format!("{} at {at_ms}:\n  redis:      {r:?}\n  stand-in:   {f:?}", show(&c.args)));
            }
        }
        if let Some(set) = cmds.last().and_then(|c| ttl_set(&c.args)) {
            self.armed = Some((set, at_ms));
        }
        Ok(())
    }

    /// Every room event each side published, in order, normalised.
    fn events(&mut self) -> (Vec<String>, Vec<String>) {
        self.sub.send(&[&["PING"]]);
        let mut real = Vec::new();
        for _ in 0..1_000_000 {
            let v = self.sub.read();
            let items = v.as_array().expect("a pub/sub frame").to_vec();
            if items.first().and_then(Value::as_str) == Some("pong") {
                break;
            }
            real.push(v);
        }
        let fake = fake_values(&mut self.fake, self.fake_sub);
        (payloads(real), payloads(fake))
    }
}

fn word(args: &[Vec<u8>], i: usize) -> String {
    args.get(i).map(|a| String::from_utf8_lossy(a).into_owned()).unwrap_or_default()
}

/// A command for a failure message, the library's code left out.
fn show(args: &[Vec<u8>]) -> String {
    let words: Vec<String> = args
        .iter()
        .map(|a| if a.len() > 80 { format!("<{} bytes>", a.len()) } else { String::from_utf8_lossy(a).into_owned() })
        .collect();
    words.join(" ")
}

/// `FCALL skiff_register 0 PREFIX lower name keyhash`.
fn is_register(args: &[Vec<u8>]) -> bool {
    word(args, 0).eq_ignore_ascii_case("FCALL") && word(args, 1) == "skiff_register"
}

/// The TTL (ms) the command sets on the keys it writes with one, if any.
fn ttl_set(args: &[Vec<u8>]) -> Option<i64> {
    if !word(args, 0).eq_ignore_ascii_case("FCALL") {
        return None;
    }
    let at = match word(args, 1).as_str() {
        "skiff_login" => 6,
        "skiff_renew" | "skiff_heartbeat" | "skiff_sync" => 5,
        _ => return None,
    };
    word(args, at).parse().ok()
}

/// What must differ made alike: error texts, message timestamps, registration times
/// (in `skiff_users` rows and `skiff_join`'s answer).
fn normalise(name: &str, v: Value) -> Value {
    match (name, v) {
        (_, Value::Error(_)) => Value::Error("(an error)".into()),
        ("XREVRANGE", Value::Array(Some(mut history))) => {
            for e in history.iter_mut() {
                if let Value::Array(Some(parts)) = e {
                    if let Some(Value::Array(Some(fields))) = parts.get_mut(1) {
                        if fields.len() >= 2 && fields[0].as_str() == Some("ts") {
                            fields[1] = Value::Bulk(Some(b"TS".to_vec()));
                        }
                    }
                }
            }
            Value::Array(Some(history))
        }
        ("skiff_join", Value::Array(Some(mut items))) if items.len() == 2 => {
            // [seq, when the user was registered]: the latter is each side's clock.
            if items[1] != Value::Bulk(None) {
                items[1] = Value::Bulk(Some(b"CREATED".to_vec()));
            }
            Value::Array(Some(items))
        }
        ("skiff_sync", Value::Array(Some(mut items))) if items.len() >= 6 => {
            // History entries: [id, [ts, T, author, A, message, M]].
            if let Value::Array(Some(history)) = &mut items[4] {
                for e in history.iter_mut() {
                    if let Value::Array(Some(parts)) = e {
                        if let Some(Value::Array(Some(fields))) = parts.get_mut(1) {
                            if fields.len() >= 2 && fields[0].as_str() == Some("ts") {
                                fields[1] = Value::Bulk(Some(b"TS".to_vec()));
                            }
                        }
                    }
                }
            }
            Value::Array(Some(items))
        }
        ("skiff_users", Value::Array(Some(mut rows))) => {
            for row in rows.iter_mut() {
                if let Value::Array(Some(fields)) = row {
                    if fields.len() >= 5 && fields[1] != Value::Bulk(None) {
                        fields[1] = Value::Bulk(Some(b"CREATED".to_vec()));
                    }
                }
            }
            Value::Array(Some(rows))
        }
        (_, v) => v,
    }
}

/// Room events as text: "KIND SEQ ...", a message's timestamp as TS, and each run
/// of leaves sorted by what they name, their seqs kept in order.
fn payloads(frames: Vec<Value>) -> Vec<String> {
    let mut out: Vec<String> = frames
        .iter()
        .map(|f| {
            let items = f.as_array().expect("a pub/sub frame");
            assert_eq!(items.first().and_then(Value::as_str), Some("message"), "a channel message: {f:?}");
            let text = String::from_utf8_lossy(items[2].as_bytes().unwrap_or_default()).into_owned();
            if text.starts_with("M ") {
                let mut w: Vec<&str> = text.splitn(5, ' ').collect();
                if w.len() == 5 {
                    w[3] = "TS";
                }
                return w.join(" ");
            }
            text
        })
        .collect();
    let mut i = 0;
    while i < out.len() {
        let run = out[i..].iter().take_while(|e| e.starts_with("L ")).count();
        if run > 1 {
            let seqs: Vec<String> =
                out[i..i + run].iter().map(|e| e.split(' ').nth(1).unwrap_or("").to_owned()).collect();
            let mut rests: Vec<String> =
                out[i..i + run].iter().map(|e| e.splitn(3, ' ').nth(2).unwrap_or("").to_owned()).collect();
            rests.sort();
            for (k, (seq, rest)) in seqs.iter().zip(rests).enumerate() {
                out[i + k] = format!("L {seq} {rest}");
            }
        }
        i += run.max(1);
    }
    out
}

/// Commands that only shape a link (the real Redis here has no password, and the
/// pair subscribes its own links): everything else is compared.
fn compared(c: &Recorded) -> bool {
    let name = word(&c.args, 0).to_ascii_uppercase();
    !matches!(name.as_str(), "AUTH" | "SUBSCRIBE" | "UNSUBSCRIBE" | "QUIT")
}

/// Runs a whole sequence on a fresh pair: batches split where the clock moves and
/// after each command that sets a TTL (the time machine must place those keys).
fn differ(redis: &Redis, cmds: &[Recorded]) -> Result<usize, String> {
    let mut pair = Pair::new(redis);
    let cmds: Vec<&Recorded> = cmds.iter().filter(|c| compared(c)).collect();
    let mut start = 0;
    while start < cmds.len() {
        let at = cmds[start].at_ms;
        let mut end = start;
        while end < cmds.len() && cmds[end].at_ms == at {
            end += 1;
            // A registration ends its batch too: its time is made the stand-in's
            // before anything can read it.
            if ttl_set(&cmds[end - 1].args).is_some() || is_register(&cmds[end - 1].args) {
                break;
            }
        }
        pair.batch(at, &cmds[start..end])?;
        start = end;
    }
    let (real, fake) = pair.events();
    if real != fake {
        let at = real.iter().zip(&fake).position(|(r, f)| r != f).unwrap_or(real.len().min(fake.len()));
        return Err(format!(
            "room events differ from #{at}:\n  redis:    {:?}\n  stand-in: {:?}",
            &real[at..real.len().min(at + 4)],
            &fake[at..fake.len().min(at + 4)]
        ));
    }
    Ok(cmds.len())
}

/// A scripted sequence: commands at a clock the script moves.
struct Script {
    at: i64,
    cmds: Vec<Recorded>,
}

impl Script {
    /// Starts as a node does: the library loaded, then database 1.
    fn new() -> Script {
        let mut s = Script { at: skiff::harness::UNIX_START, cmds: vec![] };
        s.raw(skiff::cluster::command::load_library());
        s.raw(skiff::cluster::command::select(1));
        s
    }

    fn raw(&mut self, args: Vec<Vec<u8>>) -> &mut Script {
        self.cmds.push(Recorded { at_ms: self.at, args });
        self
    }

    /// `FCALL skiff_<name> 0 skiff: args...`
    fn f(&mut self, name: &str, args: &[&str]) -> &mut Script {
        let mut all = vec![skiff::cluster::PREFIX];
        all.extend_from_slice(args);
        self.raw(skiff::cluster::command::fcall(&format!("skiff_{name}"), &all))
    }

    fn wait(&mut self, ms: i64) -> &mut Script {
        self.at += ms;
        self
    }

    fn run(&self, test: &str) {
        let Some(redis) = Redis::start_or_skip_with(test, &["--save", "", "--appendonly", "no"]) else { return };
        if let Err(e) = differ(&redis, &self.cmds) {
            panic!("{test}: the stand-in and Redis disagree: {e}");
        }
    }
}

/// Users register and log in, join on two nodes (one of them twice), talk, and
/// leave; a node syncs with a user another node holds.
#[test]
fn joins_messages_and_leaves_agree() {
    let mut s = Script::new();
    for (lower, name, key) in [("ann", "Ann", "k1"), ("bob", "Bob", "k2"), ("cy", "Cy", "k3")] {
        s.f("register", &[lower, name, key]);
    }
    s.f("register", &["ann", "ANN", "k9"]).raw(skiff::cluster::command::find_user("ANN"));
    s.f("login", &["k1", "s1", "30000", "4"])
        .f("login", &["k2", "s2", "30000", "4"])
        .f("login", &["nope", "s9", "30000", "4"]);
    s.f("heartbeat", &["n1", "6000"]).f("heartbeat", &["n2", "6000"]);
    s.f("join", &["ann", "Ann", "n1", "1.1"])
        .f("join", &["ann", "Ann", "n2", "2.1"])
        .f("join", &["bob", "Bob", "n2", "2.2"]);
    s.wait(5).f("message", &["n1", "1.1", "Ann", "hello  there", "16"]).f("message", &["n2", "2.2", "Bob", "hi", "16"]);
    s.f("message", &["n2", "2.2", "Bob", "unkept", "0"]);
    s.f("leave", &["ann", "Ann", "n2"]).f("leave", &["ann", "Ann", "n1"]).f("leave", &["ann", "Ann", "n1"]);
    s.f("session", &["s1"]).f("session", &["s9"]).f("logout", &["s2"]).f("logout", &["s2"]);
    s.wait(10).f("sync", &["n1", "6000", "e1", "2", "", "0", "ann", "Ann", "1.3", "bob", "Bob", "1.4"]);
    s.f("sync", &["n2", "6000", "e2", "16", "e1", "2", "cy", "Cy", "2.5"]);
    s.f("sync", &["n2", "6000", "e2", "16", "e1", "2"]).f("status", &[]);
    s.run("joins_messages_and_leaves_agree");
}

/// `skiff ctl`'s commands: kick, ban (ending live sessions), unban, delete a message,
/// reset a key, delete a user with and without their messages, list users.
#[test]
fn moderation_agrees() {
    let mut s = Script::new();
    s.f("register", &["ann", "Ann", "k1"]).f("register", &["bob", "Bob", "k2"]);
    s.f("login", &["k1", "a1", "30000", "4"]).wait(1).f("login", &["k1", "a2", "30000", "4"]);
    s.f("login", &["k2", "b1", "30000", "4"]);
    s.f("sync", &["n1", "6000", "e1", "16", "", "0", "ann", "Ann", "1.1", "bob", "Bob", "1.2"]);
    for (who, text) in [("Ann", "one"), ("Bob", "two"), ("Ann", "three"), ("Ann", "four")] {
        s.f("message", &["n1", "1.1", who, text, "16"]);
    }
    // A live session's logout: E for the session, O for every socket of its user.
    s.f("login", &["k2", "b2", "30000", "4"]).f("logout", &["b2"]).f("logout", &["b2"]);
    s.f("kick", &["ann"]).f("kick", &["zed"]).f("leave", &["bob", "Bob", "n1"]).f("kick", &["bob"]);
    s.wait(100).f("ban", &["ann", "spam", "1700000000100"]).f("ban", &["zed", "x", "1"]);
    s.f("login", &["k1", "a3", "30000", "4"]).f("session", &["a1"]).f("users", &["", "10", "0"]);
    s.f("unban", &["ann"]).f("unban", &["ann"]).f("unban", &["zed"]).f("login", &["k1", "a4", "30000", "4"]);
    s.f("delete_message", &["2"]).f("delete_message", &["2"]).f("delete_message", &["99"]);
    s.f("delete_message", &["x"]).f("status", &[]);
    s.f("reset_key", &["ann", "k7"]).f("reset_key", &["zed", "k8"]).f("login", &["k1", "a5", "30000", "4"]);
    s.f("login", &["k7", "a6", "30000", "4"]).f("users", &["", "10", "1"]).f("users", &["ann", "1", "0"]);
    s.f("delete_user", &["ann", "1"]).f("delete_user", &["ann", "1"]).f("login", &["k7", "a7", "30000", "4"]);
    s.f("register", &["ann", "Ann", "k5"]).f("delete_user", &["bob", "0"]).f("users", &["", "10", "0"]);
    s.f("sync", &["n1", "6000", "e1", "16", "e1", "4"]).f("status", &[]);
    s.run("moderation_agrees");
}

/// A user's sockets counted on every node: v2 joins beside other nodes' devices,
/// counts moved by skiff_devices (never below one; a node that no longer holds the
/// user changes nothing), joins past the cap refused, a sync that lists a user once
/// per socket, the snapshot's counts, and a reap.
#[test]
fn device_counts_agree() {
    let mut s = Script::new();
    s.f("register", &["ann", "Ann", "k1"]).f("register", &["bob", "Bob", "k2"]);
    s.f("heartbeat", &["n1", "6000"]).f("heartbeat", &["n2", "6000"]).f("heartbeat", &["n3", "6000"]);
    s.f("join", &["ann", "Ann", "n1", "1.1", "1", "4"]).f("devices", &["ann", "Ann", "n1", "1"]);
    s.f("join", &["ann", "Ann", "n2", "2.1", "1", "4"]).f("devices", &["ann", "Ann", "n2", "1"]);
    s.f("join", &["ann", "Ann", "n3", "3.1", "1", "4"]).f("join", &["ann", "Ann", "n3", "3.2", "1"]);
    s.f("devices", &["ann", "Ann", "n1", "-3"]).f("join", &["ann", "Ann", "n3", "3.3", "1", "x"]);
    s.f("join", &["bob", "Bob", "n2", "2.2", "0", "4"]).f("devices", &["bob", "Bob", "n2", "1"]);
    s.f("leave", &["ann", "Ann", "n1"])
        .f("devices", &["ann", "Ann", "n1", "1"])
        .f("devices", &["zed", "Zed", "n1", "1"]);
    s.f("sync", &["n1", "6000", "e1", "4", "", "0", "bob", "Bob", "1.5", "ann", "Ann", "1.6", "bob", "Bob", "1.7"]);
    s.f("sync", &["n2", "6000", "e1", "4", "", "0", "ann", "Ann", "2.1", "ann", "Ann", "2.3", "ann", "Ann", "2.4"]);
    s.f("sync", &["n1", "6000", "e1", "4", "", "0", "ann", "Ann", "1.6"]);
    // One node reaped at a time: Redis walks a set of nodes in no set order.
    s.wait(3000).f("heartbeat", &["n1", "6000"]).f("heartbeat", &["n3", "6000"]).wait(3001).f("reap", &[]);
    s.f("users", &["", "10", "1"]);
    s.f("sync", &["n1", "6000", "e1", "4", "", "0", "ann", "Ann", "1.6", "ann", "Ann", "1.8"]);
    s.run("device_counts_agree");
}

/// Redis came back from an older snapshot: a node has seen ids past the counter.
/// The first sync moves the epoch and the counter; a later one from an older epoch,
/// or one that saw less, changes nothing.
#[test]
fn a_sync_after_a_rollback_agrees() {
    let mut s = Script::new();
    s.f("register", &["ann", "Ann", "k1"]);
    s.f("sync", &["n1", "6000", "e1", "8", "", "0", "ann", "Ann", "1.1"]);
    for text in ["a", "b", "c"] {
        s.f("message", &["n1", "1.1", "Ann", text, "8"]);
    }
    s.wait(20).f("sync", &["n1", "6000", "e2", "8", "e1", "10", "ann", "Ann", "1.1"]);
    s.f("message", &["n1", "1.1", "Ann", "after", "8"]);
    s.f("sync", &["n2", "6000", "e3", "8", "e1", "20"]).f("sync", &["n2", "6000", "e3", "8", "e2", "5"]);
    s.f("sync", &["n2", "6000", "e3", "2", "e2", "11"]).f("sync", &["n2", "6000", "e3", "0", "e2", "12"]);
    s.f("message", &["n2", "2.1", "Ann", "next", "8"]);
    s.run("a_sync_after_a_rollback_agrees");
}

/// Sessions past the per-user cap (several logins in one millisecond), sessions and
/// nodes expiring on the clock, to the millisecond, a renew, a reap and a stop.
#[test]
fn expiry_agrees() {
    let mut s = Script::new();
    s.f("register", &["ann", "Ann", "k1"]).f("register", &["bob", "Bob", "k2"]).f("register", &["cy", "Cy", "k3"]);
    for sess in ["s1", "s2", "s3", "s4", "s5"] {
        s.f("login", &["k1", sess, "30000", "2"]);
    }
    s.wait(10).f("login", &["k1", "s6", "30000", "2"]).f("session", &["s5"]).f("session", &["s6"]);
    s.wait(29_990).f("session", &["s6"]).f("renew", &["s6", "30000"]).wait(1).f("session", &["s5"]);
    s.f("session", &["s6"]).wait(30_000).f("session", &["s6"]).wait(1).f("session", &["s6"]).f("renew", &["s6", "9"]);
    s.f("heartbeat", &["n1", "6000"]).f("heartbeat", &["n2", "6000"]);
    for (lower, name) in [("ann", "Ann"), ("bob", "Bob"), ("cy", "Cy")] {
        s.f("join", &[lower, name, "n1", "1.1"]);
    }
    s.wait(3000).f("heartbeat", &["n2", "6000"]).wait(3000).f("reap", &[]).wait(1).f("reap", &[]);
    s.f("sync", &["n1", "6000", "e1", "4", "", "0", "ann", "Ann", "1.2", "bob", "Bob", "1.3"]);
    s.f("stop", &["n1"]).f("status", &[]).f("login", &["k2", "b1", "30000", "2"]).wait(40_000).f("logout", &["b1"]);
    s.run("expiry_agrees");
}

/// The commands the `connection_cluster` corpus makes both nodes send, replayed
/// input by input. Every input unless SKIFF_STANDIN_SAMPLE=N asks for every Nth.
/// Registration times are the stand-in's on both sides (see `Pair::batch`):
/// `skiff_reassert` compares the one a node heard from `skiff_join`.
#[test]
fn the_cluster_corpus_agrees() {
    let test = "the_cluster_corpus_agrees";
    let Some(redis) = Redis::start_or_skip_with(test, &["--save", "", "--appendonly", "no"]) else { return };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/connection_cluster");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("the corpus").map(|e| e.expect("an entry").path()).collect();
    files.sort();
    let every = std::env::var("SKIFF_STANDIN_SAMPLE").ok().and_then(|v| v.parse().ok()).unwrap_or(1usize).max(1);
    let (mut inputs, mut commands) = (0, 0);
    for path in files.iter().step_by(every) {
        let data = std::fs::read(path).expect("a corpus file");
        let cmds = skiff::harness::connection_cluster_commands(&data);
        match differ(&redis, &cmds) {
            Ok(n) => commands += n,
            Err(e) => panic!("{}: the stand-in and Redis disagree: {e}", path.display()),
        }
        inputs += 1;
    }
    eprintln!("{inputs} inputs, {commands} commands compared");
    assert!(commands > inputs * 10, "the corpus drives the cluster");
}
