//! The command line and `SKIFF_*` environment variables, parsed into a validated
//! `Config`, and `RUST_LOG` into a log level. Every flag is one row of `FLAGS`:
//! `--help`, the env var name, the default and the parser all come from that row, so
//! they cannot drift apart. The caller passes the arguments and an env lookup in;
//! nothing here touches files or sockets, and the only outside call is the resolver
//! for a `--listen` host name (`parse_with` takes a stand-in).

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

pub use crate::log::Level as LogLevel;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub db: PathBuf,
    pub session_ttl: Duration,
    pub static_dir: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `Strict-Transport-Security: max-age` under `--tls-cert`; 0 = not sent.
    pub hsts_max_age: u32,
    pub allowed_origins: Vec<String>,
    pub trusted_proxies: Vec<IpAddr>,
    pub max_connections: Option<usize>,
    /// Open connections per client address (IPv6: per /64); 0 = off.
    pub max_connections_per_ip: u32,
    /// `Host` values served (lower-case `host` or `host:port`); empty = any.
    pub allowed_hosts: Vec<String>,
    pub limit_loopback: bool,
    pub register_per_minute: u32,
    pub failed_logins_per_minute: u32,
    pub messages_per_second: u32,
    pub message_burst: u32,
    /// WebSocket frames per second per socket (any kind); burst twice that; 0 = off.
    pub frames_per_second: u32,
    /// Bytes all clients together may make the server hold; 0 = no budget.
    pub memory_budget: usize,
    pub max_sessions_per_user: usize,
    /// Protocol v2 sockets one user may hold at once.
    pub max_devices: usize,
    pub max_sessions: usize,
    pub history: usize,
    pub metrics_public: bool,
    /// Cluster mode: the Redis every node shares (`None`: one process, SQLite).
    pub redis: Option<RedisUrl>,
    pub reuse_port: bool,
    /// `skiff ctl`'s socket; `None`: the database path + ".ctl".
    pub control: Option<PathBuf>,
    pub log_level: LogLevel,
}

pub use crate::cluster::url::{RedisTarget, RedisUrl};

impl Config {
    /// Every field at its zero; `FLAGS` defaults are applied on top by `parse`.
    fn blank() -> Config {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            db: PathBuf::new(),
            session_ttl: Duration::ZERO,
            static_dir: None,
            tls_cert: None,
            tls_key: None,
            hsts_max_age: 0,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            max_connections: None,
            max_connections_per_ip: 0,
            allowed_hosts: Vec::new(),
            limit_loopback: false,
            register_per_minute: 0,
            failed_logins_per_minute: 0,
            messages_per_second: 0,
            message_burst: 0,
            frames_per_second: 0,
            memory_budget: 0,
            max_sessions_per_user: 0,
            max_devices: 0,
            max_sessions: 0,
            history: 0,
            metrics_public: false,
            redis: None,
            reuse_port: false,
            control: None,
            log_level: LogLevel::Info,
        }
    }
}

#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    Help,
    Version,
}

#[derive(Debug, PartialEq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Host name -> addresses; the system resolver in production, a table in tests.
pub type Resolve<'a> = &'a dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>>;

/// Turns one value into a change of `Config`.
type Apply = fn(&mut Config, &str, Resolve) -> Result<(), Why>;

/// Why a value was refused; the caller adds the flag (or env var) and the value.
enum Why {
    /// What a good value looks like ("a number >= 1").
    Expected(String),
    /// The value is well-formed but unusable (a host name that does not resolve).
    Failed(String),
}

impl From<&str> for Why {
    fn from(expected: &str) -> Why {
        Why::Expected(expected.to_owned())
    }
}

impl From<String> for Why {
    fn from(expected: String) -> Why {
        Why::Expected(expected)
    }
}

enum Preset {
    /// Applied through the flag's own parser when neither flag nor env var is given.
    Value(&'static str),
    /// Computed elsewhere; shown in `--help` only.
    Note(&'static str),
    Absent,
}

struct Flag {
    /// Without the leading `--`; the env var is `SKIFF_` + this, upper-cased, `-` -> `_`.
    name: &'static str,
    /// Placeholder in `--help`; `None` for a switch (present = on; env: 1/true/yes/on).
    value: Option<&'static str>,
    /// May be given several times; its env var is then a comma-separated list.
    many: bool,
    default: Preset,
    help: &'static str,
    apply: Apply,
}

const fn opt(name: &'static str, value: &'static str, default: Preset, help: &'static str, apply: Apply) -> Flag {
    Flag { name, value: Some(value), many: false, default, help, apply }
}

const fn many(name: &'static str, value: &'static str, help: &'static str, apply: Apply) -> Flag {
    Flag { name, value: Some(value), many: true, default: Preset::Absent, help, apply }
}

const fn switch(name: &'static str, help: &'static str, apply: Apply) -> Flag {
    Flag { name, value: None, many: false, default: Preset::Absent, help, apply }
}

use Preset::{Note, Value};

const FLAGS: &[Flag] = &[
    opt("listen", "ADDR", Value("0.0.0.0:7777"), "IP:PORT or HOST:PORT to serve on", |c, v, r| {
        c.listen = listen(v, r)?;
        Ok(())
    }),
    opt("db", "PATH", Value("chat.db"), "SQLite file, created if missing", |c, v, _| {
        c.db = PathBuf::from(v);
        Ok(())
    }),
    opt("session-ttl", "SECS", Value("3600"), "idle seconds before a session ends", |c, v, _| {
        c.session_ttl = Duration::from_secs(number(v, 1)?);
        Ok(())
    }),
    opt("static", "DIR", Preset::Absent, "serve this directory instead of the built-in page", |c, v, _| {
        c.static_dir = Some(PathBuf::from(v));
        Ok(())
    }),
    opt("tls-cert", "PEM", Preset::Absent, "certificate chain; serve HTTPS/WSS (needs --tls-key)", |c, v, _| {
        c.tls_cert = Some(PathBuf::from(v));
        Ok(())
    }),
    opt("tls-key", "PEM", Preset::Absent, "private key for --tls-cert", |c, v, _| {
        c.tls_key = Some(PathBuf::from(v));
        Ok(())
    }),
    opt("hsts-max-age", "SECS", Value("300"), "HSTS max-age under --tls-cert, 0 = off", |c, v, _| {
        c.hsts_max_age = number(v, 0)?;
        Ok(())
    }),
    many("allowed-origin", "ORIGIN", "/ws and CORS only for these origins (else 403)", |c, v, _| {
        if !valid_origin(v) {
            return Err("scheme://host[:port] without a path".into());
        }
        c.allowed_origins.push(v.to_owned());
        Ok(())
    }),
    many("trusted-proxy", "IP", "trust X-Forwarded-For/X-Real-IP from this peer", |c, v, _| {
        c.trusted_proxies.push(v.parse().map_err(|_| "an IP address")?);
        Ok(())
    }),
    opt("max-connections", "N", Note("from RLIMIT_NOFILE"), "open connections at most", |c, v, _| {
        c.max_connections = Some(number(v, 1)?);
        Ok(())
    }),
    opt("max-connections-per-ip", "N", Value("64"), "open connections per address (IPv6: /64), 0 = off", |c, v, _| {
        c.max_connections_per_ip = number(v, 0)?;
        Ok(())
    }),
    many("allowed-host", "HOST", "serve only these Host values (others: 421)", |c, v, _| {
        c.allowed_hosts.push(allowed_host(v).ok_or("HOST or HOST:PORT")?);
        Ok(())
    }),
    switch("limit-loopback", "apply rate limits to loopback clients too", |c, v, _| {
        c.limit_loopback = truthy(v)?;
        Ok(())
    }),
    opt("register-limit", "N", Value("10"), "registrations per minute per address, 0 = off", |c, v, _| {
        c.register_per_minute = number(v, 0)?;
        Ok(())
    }),
    opt("login-fail-limit", "N", Value("30"), "failed logins per minute per address, 0 = off", |c, v, _| {
        c.failed_logins_per_minute = number(v, 0)?;
        Ok(())
    }),
    opt("message-rate", "N", Value("100"), "messages per second per socket, 0 = off", |c, v, _| {
        c.messages_per_second = number(v, 0)?;
        Ok(())
    }),
    opt("message-burst", "N", Value("200"), "message burst per socket", |c, v, _| {
        c.message_burst = number(v, 1)?;
        Ok(())
    }),
    opt("frame-rate", "N", Value("400"), "frames a second per WebSocket (burst 2N), 0 = off", |c, v, _| {
        c.frames_per_second = number(v, 0)?;
        Ok(())
    }),
    opt("memory-budget", "BYTES", Value("64M"), "what clients may make the server hold (K/M/G), 0 = off", |c, v, _| {
        c.memory_budget = bytes(v)?;
        Ok(())
    }),
    opt("max-sessions-per-user", "N", Value("32"), "the oldest session is evicted past it", |c, v, _| {
        c.max_sessions_per_user = number(v, 1)?;
        Ok(())
    }),
    opt("max-devices", "N", Value("5"), "v2 sockets per user; /ws?v=2 answers 409 past it", |c, v, _| {
        c.max_devices = number(v, 1)?;
        Ok(())
    }),
    opt("max-sessions", "N", Value("100000"), "sessions in all; login answers 503 past it", |c, v, _| {
        c.max_sessions = number(v, 1)?;
        Ok(())
    }),
    opt("history", "N", Value("1000"), "messages kept for v2 resume and /api/history, 0 = off", |c, v, _| {
        c.history = number(v, 0)?;
        if c.history > MAX_HISTORY {
            return Err(Why::Expected(format!("a number from 0 to {MAX_HISTORY}")));
        }
        Ok(())
    }),
    switch("metrics-public", "serve /metrics to any client, not just loopback/proxies", |c, v, _| {
        c.metrics_public = truthy(v)?;
        Ok(())
    }),
    opt("redis", "URL", Preset::Absent, "cluster mode: share all state through this Redis 7", |c, v, r| {
        c.redis = Some(redis_url(v, r)?);
        Ok(())
    }),
    switch("reuse-port", "SO_REUSEPORT: several nodes on one host share the port", |c, v, _| {
        c.reuse_port = truthy(v)?;
        Ok(())
    }),
    opt("control", "PATH", Note("the --db path + .ctl"), "Unix socket for `skiff ctl` (0600)", |c, v, _| {
        c.control = Some(PathBuf::from(v));
        Ok(())
    }),
];

/// `--allowed-host`: a DNS name, an IPv4 address or a bracketed IPv6 address, with
/// an optional port; lower-cased, as `Host` is matched ignoring case.
fn allowed_host(v: &str) -> Option<String> {
    let v = v.trim().to_ascii_lowercase();
    let (host, port) = crate::api::guard::split_authority(&v)?;
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inside) => inside.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            host.len() <= 253
                && host
                    .split('.')
                    .all(|l| (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        }
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    (host_ok && port_ok).then_some(v)
}

/// The history ring lives in memory (~0.3 KiB a message): bound what a flag can ask.
const MAX_HISTORY: usize = 100_000;

fn env_name(flag: &Flag) -> String {
    format!("SKIFF_{}", flag.name.to_ascii_uppercase().replace('-', "_"))
}

/// The `--help` text, generated from `FLAGS`.
pub fn usage() -> String {
    let left = |f: &Flag| format!("--{}{}", f.name, f.value.map(|v| format!(" {v}")).unwrap_or_default());
    let w1 = FLAGS.iter().map(|f| left(f).len()).max().unwrap_or(0);
    let w2 = FLAGS.iter().map(|f| env_name(f).len()).max().unwrap_or(0);
    let mut out = String::from(
        "skiff: a tiny real-time chat server (HTTP JSON API + one WebSocket room)\n\n\
         usage: skiff [--flag VALUE | --flag=VALUE | --switch]...\n\
         \x20      skiff ctl [--control PATH] [--json] COMMAND   (see skiff ctl --help)\n\n\
         Each flag also reads the environment variable beside it (a comma-separated list for a\n\
         repeatable flag); the flag wins.\n\n",
    );
    for f in FLAGS {
        let mut help = f.help.to_owned();
        if f.many {
            help.push_str(" (repeatable)");
        }
        match f.default {
            Value(d) | Note(d) => help.push_str(&format!(" [{d}]")),
            Preset::Absent => {}
        }
        out.push_str(&format!("  {:w1$}  {:w2$}  {help}\n", left(f), env_name(f)));
    }
    out.push_str(&format!("  {:w1$}  {:w2$}  this text\n", "-h, --help", ""));
    out.push_str(&format!("  {:w1$}  {:w2$}  the version\n", "-V, --version", ""));
    out.push_str(
        "\nLogs go to stderr. RUST_LOG sets the level: off, error, warn, info (the default),\n\
         debug or trace (= debug), alone or as skiff=LEVEL; LEVEL,skiff=LEVEL gives skiff the\n\
         second; directives for other targets are ignored.\n",
    );
    out
}

/// The system resolver (`getaddrinfo`), for `--listen HOST:PORT`.
pub fn system_resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

/// `args` excludes argv[0]; `env` looks up an environment variable. Flags win over
/// env vars, env vars over defaults. Host names in `--listen` go to the system resolver.
pub fn parse<I: IntoIterator<Item = String>>(
    args: I,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Command, ConfigError> {
    parse_with(args, env, &system_resolve)
}

/// `parse` with the resolver passed in.
pub fn parse_with<I: IntoIterator<Item = String>>(
    args: I,
    env: &dyn Fn(&str) -> Option<String>,
    resolve: Resolve,
) -> Result<Command, ConfigError> {
    // Values given on the command line, by flag index.
    let mut given: Vec<Vec<String>> = vec![Vec::new(); FLAGS.len()];
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            _ => {}
        }
        let Some(long) = arg.strip_prefix("--") else {
            return Err(ConfigError(if arg.starts_with('-') {
                format!("unknown flag {arg}")
            } else {
                format!("unexpected argument {arg:?}")
            }));
        };
        let (name, inline) = match long.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (long, None),
        };
        let Some(i) = FLAGS.iter().position(|f| f.name == name) else {
            return Err(ConfigError(format!("unknown flag --{name}")));
        };
        let flag = &FLAGS[i];
        let value = match (flag.value, inline) {
            (Some(_), Some(v)) => v,
            (Some(_), None) => args.next().ok_or_else(|| ConfigError(format!("--{name}: missing value")))?,
            (None, Some(_)) => return Err(ConfigError(format!("--{name} takes no value"))),
            (None, None) => "1".to_owned(),
        };
        if !flag.many && !given[i].is_empty() {
            return Err(ConfigError(format!("--{name} given twice")));
        }
        given[i].push(value);
    }
    let mut cfg = Config::blank();
    for (flag, given) in FLAGS.iter().zip(given) {
        let env_var = env_name(flag);
        let (source, values) = if !given.is_empty() {
            (format!("--{}", flag.name), given)
        } else if let Some(v) = env(&env_var).filter(|v| !v.is_empty()) {
            let values = if flag.many {
                v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
            } else {
                vec![v]
            };
            (env_var, values)
        } else if let Value(d) = flag.default {
            (format!("--{} (default)", flag.name), vec![d.to_owned()])
        } else {
            continue;
        };
        for v in values {
            (flag.apply)(&mut cfg, &v, resolve).map_err(|why| bad(&source, &why, &v))?;
        }
    }
    if cfg.tls_cert.is_some() != cfg.tls_key.is_some() {
        return Err(ConfigError("--tls-cert and --tls-key go together".into()));
    }
    cfg.log_level = log_level(env("RUST_LOG").as_deref())?;
    Ok(Command::Run(Box::new(cfg)))
}

fn bad(source: &str, why: &Why, got: &str) -> ConfigError {
    // A Redis URL may carry a password: the error names everything but that.
    let redacted;
    // The URL parser takes everything up to the last `@` as the credentials (a
    // password may hold `@`), so the redaction must cut at the same place.
    let got = match (got.split_once("://"), got.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) if scheme.starts_with("redis") => {
            redacted = format!("{scheme}://***@{host}");
            redacted.as_str()
        }
        _ => got,
    };
    match why {
        Why::Expected(expected) => ConfigError(format!("{source}: expected {expected}, got {got:?}")),
        Why::Failed(reason) => ConfigError(format!("{source} {got}: {reason}")),
    }
}

fn number<T: std::str::FromStr + PartialOrd + From<u8>>(v: &str, min: u8) -> Result<T, String> {
    match v.trim().parse::<T>() {
        Ok(n) if n >= T::from(min) => Ok(n),
        _ if min == 0 => Err("a number (0 = off)".into()),
        _ => Err(format!("a number >= {min}")),
    }
}

/// A byte count, with an optional binary suffix: `65536`, `512K`, `64M`, `1G`.
fn bytes(v: &str) -> Result<usize, String> {
    let v = v.trim();
    let (digits, shift) = match v.as_bytes().last().map(u8::to_ascii_uppercase) {
        Some(b'K') => (&v[..v.len() - 1], 10),
        Some(b'M') => (&v[..v.len() - 1], 20),
        Some(b'G') => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| "a byte count like 67108864, 65536K, 64M or 1G (0 = off)".into())
}

fn truthy(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("1/true/yes/on or 0/false/no/off".into()),
    }
}

fn valid_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else { return false };
    !scheme.is_empty()
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !rest.is_empty()
        && !rest.contains('/')
        && rest.bytes().all(|b| b.is_ascii_graphic())
}

/// `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`. A host name is resolved once, here; of
/// its addresses the first IPv4 one is taken (one listener; IPv4 is what `localhost`
/// means to most clients), else the first.
fn listen(v: &str, resolve: Resolve) -> Result<SocketAddr, Why> {
    const EXPECTED: &str = "IP:PORT, [IPv6]:PORT or HOST:PORT, like 0.0.0.0:7777 or localhost:7777";
    if let Ok(addr) = v.parse() {
        return Ok(addr);
    }
    let (host, port) = v.rsplit_once(':').ok_or(EXPECTED)?;
    let port: u16 = port.parse().map_err(|_| EXPECTED)?;
    // RFC 1123 host names; anything else (brackets, spaces, a second colon) is a typo,
    // not something to hand the resolver.
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && !l.starts_with('-') && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !name_ok {
        return Err(EXPECTED.into());
    }
    let addrs = resolve(host, port).map_err(|e| Why::Failed(format!("cannot resolve host name {host:?} ({e})")))?;
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| Why::Failed(format!("cannot resolve host name {host:?} (no addresses)")))
}

/// `redis://[:PASSWORD@]HOST:PORT[/DB]` (a `USER:` before the password is accepted and
/// ignored only if it is empty: Redis ACL users are not supported).
fn redis_url(v: &str, resolve: Resolve) -> Result<RedisUrl, Why> {
    const EXPECTED: &str = "redis://[:PASSWORD@]HOST:PORT[/DB], like redis://127.0.0.1:6379, or \
        redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]";
    let (sentinel, rest) = match (v.strip_prefix("redis://"), v.strip_prefix("redis+sentinel://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => return Err(EXPECTED.into()),
    };
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((auth, rest)) => (Some(auth), rest),
        None => (None, rest),
    };
    let password = match auth {
        None => None,
        Some(a) => match a.strip_prefix(':') {
            Some(p) if !p.is_empty() => Some(p.to_owned()),
            _ => return Err(EXPECTED.into()),
        },
    };
    let resolved = |hostport: &str| {
        listen(hostport, resolve).map_err(|why| match why {
            Why::Expected(_) => Why::Expected(EXPECTED.into()),
            failed => failed,
        })
    };
    let db_of = |db: Option<&str>| match db {
        None | Some("") => Ok(0),
        Some(db) => db.parse::<u32>().map_err(|_| Why::from(EXPECTED)),
    };
    if sentinel {
        let mut parts = rest.splitn(3, '/');
        let (hosts, master, db) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next());
        let master_ok = !master.is_empty() && master.bytes().all(|b| b.is_ascii_graphic());
        if !master_ok {
            return Err(EXPECTED.into());
        }
        let addrs = hosts.split(',').map(resolved).collect::<Result<Vec<_>, _>>()?;
        if addrs.len() > crate::cluster::sentinel::MAX_SENTINELS {
            return Err(Why::Failed(format!("at most {} sentinels", crate::cluster::sentinel::MAX_SENTINELS)));
        }
        let set = crate::cluster::sentinel::SentinelSet { addrs, master: master.to_owned() };
        return Ok(RedisUrl { target: RedisTarget::Sentinels(set), password, db: db_of(db)? });
    }
    let (hostport, db) = match rest.split_once('/') {
        Some((hp, db)) => (hp, db_of(Some(db))?),
        None => (rest, 0),
    };
    Ok(RedisUrl { target: RedisTarget::Server(resolved(hostport)?), password, db })
}

/// `RUST_LOG` in env-filter syntax: comma-separated directives, each `LEVEL` (every
/// target) or `TARGET=LEVEL`. skiff logs as target `skiff`, so `skiff=LEVEL` beats a
/// bare `LEVEL` whatever the order; other targets are ignored. A bare word that is not
/// a level would be a target at full verbosity to env_logger, which for skiff only
/// ever means a typo, so it is an error like any other bad directive.
pub fn log_level(v: Option<&str>) -> Result<LogLevel, ConfigError> {
    let mut global = None;
    let mut ours = None;
    for directive in v.unwrap_or("").split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bad = |why: &str| ConfigError(format!("RUST_LOG: {why} in directive {directive:?}"));
        let (target, level) = match directive.split_once('=') {
            Some((t, l)) => (Some(t.trim()), l.trim()),
            None => (None, directive),
        };
        let level = match level.to_ascii_lowercase().as_str() {
            "off" => LogLevel::Off,
            "error" => LogLevel::Error,
            "warn" => LogLevel::Warn,
            "info" => LogLevel::Info,
            // skiff has no trace lines; trace shows everything there is.
            "debug" | "trace" => LogLevel::Debug,
            _ if target.is_none() && level == "skiff" => LogLevel::Debug,
            _ => return Err(bad("expected off, error, warn, info, debug or trace")),
        };
        match target {
            None if directive == "skiff" => ours = Some(level),
            None => global = Some(level),
            Some(t) if t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_:-".contains(&b)) => {
                return Err(bad("bad target name"));
            }
            Some("skiff") => ours = Some(level),
            Some(_) => {}
        }
    }
    Ok(ours.or(global).unwrap_or(LogLevel::Info))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        match host {
            "localhost" => {
                Ok(vec![SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], port)), ([127, 0, 0, 1], port).into()])
            }
            "v6only" => Ok(vec![SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], port))]),
            _ => Err(io::Error::other("Name or service not known")),
        }
    }

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        match parse_with(args.iter().map(|s| s.to_string()), &lookup, &resolve)? {
            Command::Run(c) => Ok(*c),
            other => panic!("expected Run, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_contracts() {
        let c = run(&[], &[]).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:7777");
        assert_eq!(c.db, PathBuf::from("chat.db"));
        assert_eq!(c.session_ttl, Duration::from_secs(3600));
        assert_eq!((c.register_per_minute, c.failed_logins_per_minute), (10, 30));
        assert_eq!((c.messages_per_second, c.message_burst), (100, 200));
        assert_eq!((c.max_sessions_per_user, c.max_sessions), (32, 100_000));
        assert_eq!((c.max_connections, c.static_dir, c.tls_cert), (None, None, None));
        assert!(!c.limit_loopback && !c.metrics_public);
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.history, 1000);
        assert_eq!((c.max_connections_per_ip, c.allowed_hosts.len()), (64, 0));
    }

    #[test]
    fn per_address_connections_and_allowed_hosts() {
        assert_eq!(run(&["--max-connections-per-ip", "0"], &[]).unwrap().max_connections_per_ip, 0);
        assert_eq!(run(&[], &[("SKIFF_MAX_CONNECTIONS_PER_IP", "8")]).unwrap().max_connections_per_ip, 8);
        let c = run(&[], &[("SKIFF_ALLOWED_HOST", "localhost, 127.0.0.1:7777,[::1],Chat.Example:8443")]).unwrap();
        assert_eq!(c.allowed_hosts, ["localhost", "127.0.0.1:7777", "[::1]", "chat.example:8443"]);
        let c = run(&["--allowed-host", "a.example", "--allowed-host=[::1]:7777"], &[("SKIFF_ALLOWED_HOST", "b")]);
        assert_eq!(c.unwrap().allowed_hosts, ["a.example", "[::1]:7777"], "the flag replaces the env list");
        for bad in ["", "http://a.example", "a.example/", "a..b", "a:0", "a:99999", "a:", "::1", "[::1", "[x]:1", "a b"]
        {
            let e = run(&["--allowed-host", bad], &[]).unwrap_err().0;
            assert!(e.starts_with("--allowed-host: expected HOST or HOST:PORT"), "{bad:?}: {e}");
        }
        let e = run(&["--max-connections-per-ip", "-1"], &[]).unwrap_err().0;
        assert!(e.contains("expected a number (0 = off)"), "{e}");
    }

    #[test]
    fn byte_counts_take_binary_suffixes() {
        assert_eq!(run(&[], &[]).unwrap().memory_budget, 64 << 20);
        assert_eq!(run(&["--memory-budget", "512k"], &[]).unwrap().memory_budget, 512 << 10);
        assert_eq!(run(&["--memory-budget=1G"], &[]).unwrap().memory_budget, 1 << 30);
        assert_eq!(run(&[], &[("SKIFF_MEMORY_BUDGET", "0")]).unwrap().memory_budget, 0);
        assert!(run(&["--memory-budget", "64MB"], &[]).is_err());
        assert!(run(&["--memory-budget", "99999999999999999999G"], &[]).is_err());
    }

    #[test]
    fn history_is_bounded_and_zero_turns_it_off() {
        assert_eq!(run(&["--history", "0"], &[]).unwrap().history, 0);
        assert_eq!(run(&[], &[("SKIFF_HISTORY", "100000")]).unwrap().history, 100_000);
        assert_eq!(run(&[], &[]).unwrap().max_devices, 5);
        assert_eq!(run(&[], &[("SKIFF_MAX_DEVICES", "2")]).unwrap().max_devices, 2);
        assert!(run(&["--max-devices", "0"], &[]).is_err());
        let err = run(&["--history", "100001"], &[]).unwrap_err().to_string();
        assert!(err.contains("--history") && err.contains("100000"), "{err}");
    }

    #[test]
    fn every_default_is_accepted_by_its_own_parser() {
        for f in FLAGS {
            if let Value(d) = f.default {
                let mut c = Config::blank();
                assert!((f.apply)(&mut c, d, &resolve).is_ok(), "--{} default {d:?}", f.name);
                assert_ne!(c, Config::blank(), "--{} default {d:?} changes the config", f.name);
            }
        }
    }

    #[test]
    fn every_flag_reads_its_env_var_and_the_flag_wins() {
        // One good value per kind of flag; each one must change the config, from the
        // command line and from SKIFF_*, in the same way.
        let sample = |f: &Flag| match f.value {
            None => "1",
            Some("ADDR") => "127.0.0.1:9",
            Some("ORIGIN") => "https://a.example",
            Some("HOST") => "chat.example:443",
            Some("IP") => "10.0.0.1",
            Some("SECS" | "N") => "7",
            Some("BYTES") => "7K",
            Some("URL") => "redis://10.0.0.1:6379/2",
            Some(_) => "/some/path",
        };
        let base = run(&[], &[]).unwrap();
        for f in FLAGS {
            let flag = format!("--{}", f.name);
            let env = env_name(f);
            assert!(usage().contains(&flag) && usage().contains(&env), "--help lists {flag} and {env}");
            // Each needs the other; both are checked together below.
            if f.name == "tls-cert" || f.name == "tls-key" {
                continue;
            }
            let by_flag = match f.value {
                Some(_) => run(&[&flag, sample(f)], &[]).unwrap(),
                None => run(&[&flag], &[]).unwrap(),
            };
            let by_env = run(&[], &[(&env, sample(f))]).unwrap();
            assert_ne!(by_flag, base, "{flag} changes something");
            assert_eq!(by_env, by_flag, "{env} does what {flag} does");
        }
        let by_flag = run(&["--tls-cert", "c.pem", "--tls-key", "k.pem"], &[]).unwrap();
        let by_env = run(&[], &[("SKIFF_TLS_CERT", "c.pem"), ("SKIFF_TLS_KEY", "k.pem")]).unwrap();
        assert_eq!(by_flag.tls_cert, Some(PathBuf::from("c.pem")));
        assert_eq!(by_flag.tls_key, Some(PathBuf::from("k.pem")));
        assert_eq!(by_env, by_flag);
    }

    #[test]
    fn flags_both_forms_and_env_with_flags_winning() {
        let c = run(
            &["--listen", "127.0.0.1:0", "--db=/tmp/x.db", "--allowed-origin", "https://a.example"],
            &[
                ("SKIFF_LISTEN", "1.2.3.4:5"),
                ("SKIFF_SESSION_TTL", "7"),
                ("SKIFF_ALLOWED_ORIGIN", "https://b.example,https://c.example"),
                ("SKIFF_TRUSTED_PROXY", "127.0.0.1, ::1"),
                ("SKIFF_LIMIT_LOOPBACK", "yes"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:0");
        assert_eq!(c.db, PathBuf::from("/tmp/x.db"));
        assert_eq!(c.session_ttl, Duration::from_secs(7));
        assert_eq!(c.allowed_origins, ["https://a.example"], "the flag replaces the env list");
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(c.limit_loopback);
        let c = run(&["--listen", "[::1]:8080", "--max-connections", "5", "--message-rate=0"], &[]).unwrap();
        assert_eq!(c.listen.to_string(), "[::1]:8080");
        assert_eq!(c.max_connections, Some(5));
        assert_eq!(c.messages_per_second, 0);
        let c = run(&["--allowed-origin", "https://a.example", "--allowed-origin=https://b.example"], &[]).unwrap();
        assert_eq!(c.allowed_origins, ["https://a.example", "https://b.example"]);
    }

    #[test]
    fn listen_takes_host_names_and_prefers_ipv4() {
        assert_eq!(run(&["--listen", "localhost:7777"], &[]).unwrap().listen.to_string(), "127.0.0.1:7777");
        assert_eq!(run(&["--listen", "v6only:0"], &[]).unwrap().listen.to_string(), "[::1]:0");
        assert_eq!(run(&["--listen", "127.0.0.1:0"], &[]).unwrap().listen.to_string(), "127.0.0.1:0");
        let e = run(&["--listen", "nosuchhost:7777"], &[]).unwrap_err().0;
        assert_eq!(e, r#"--listen nosuchhost:7777: cannot resolve host name "nosuchhost" (Name or service not known)"#);
        let e = run(&[], &[("SKIFF_LISTEN", "nosuchhost:1")]).unwrap_err().0;
        assert!(e.starts_with("SKIFF_LISTEN nosuchhost:1: cannot resolve"), "{e}");
        // Malformed values never reach the resolver (it would fail them as "unknown host").
        for v in ["localhost", "localhost:", "localhost:99999", "local host:1", "[localhost]:1", ":7777", "a..b:1"] {
            let e = run(&["--listen", v], &[]).unwrap_err().0;
            assert!(e.starts_with("--listen: expected IP:PORT"), "{v}: {e}");
        }
    }

    #[test]
    fn errors_are_one_line() {
        for (args, needle) in [
            (&["--bogus"][..], "unknown flag --bogus"),
            (&["-x"], "unknown flag -x"),
            (&["--session-ttl", "0"], "--session-ttl: expected a number >= 1, got \"0\""),
            (&["--session-ttl", "abc"], "--session-ttl"),
            (&["--session-ttl"], "missing value"),
            (&["--listen", "nowhere"], "--listen"),
            (&["--db", "a", "--db", "b"], "given twice"),
            (&["--tls-cert", "c.pem"], "go together"),
            (&["--allowed-origin", "https://a.example/"], "--allowed-origin"),
            (&["--trusted-proxy", "proxy"], "--trusted-proxy: expected an IP address"),
            (&["--limit-loopback=1"], "takes no value"),
            (&["--register-limit", "-1"], "expected a number (0 = off)"),
            (&["positional"], "unexpected argument"),
        ] {
            let e = run(args, &[]).unwrap_err();
            assert!(e.0.contains(needle), "{args:?}: {e}");
            assert!(!e.0.contains('\n'));
        }
        let e = run(&[], &[("SKIFF_SESSION_TTL", "-5")]).unwrap_err().0;
        assert_eq!(e, "SKIFF_SESSION_TTL: expected a number >= 1, got \"-5\"", "env errors name the variable");
        let e = run(&[], &[("SKIFF_METRICS_PUBLIC", "maybe")]).unwrap_err().0;
        assert!(e.starts_with("SKIFF_METRICS_PUBLIC: expected 1/true"), "{e}");
    }

    #[test]
    fn redis_urls_are_checked_and_never_echo_the_password() {
        let url = |v: &str| run(&["--redis", v], &[]).map(|c| c.redis.unwrap());
        let u = url("redis://:s3cret@localhost:6390/3").unwrap();
        assert_eq!(
            (u.target.clone(), u.password.as_deref(), u.db),
            (RedisTarget::Server(SocketAddr::from(([127, 0, 0, 1], 6390))), Some("s3cret"), 3)
        );
        assert!(!format!("{u:?} {u}").contains("s3cret"), "the password stays out of logs");
        let u = url("redis://10.1.2.3:6379").unwrap();
        assert_eq!((u.password, u.db), (None, 0));
        assert_eq!(
            url("redis://[::1]:6379/").unwrap().target,
            RedisTarget::Server(SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], 6379)))
        );
        for bad in [
            "http://x:1",
            "redis://",
            "redis://h",
            "redis://h:x",
            "redis://h:1/x",
            "redis://user:pw@h:1",
            "redis://@h:1",
        ] {
            let e = url(bad).unwrap_err().0;
            assert!(e.starts_with("--redis: expected redis://"), "{bad}: {e}");
        }
        // Sentinels: every host, the primary's name, a database.
        let u = url("redis+sentinel://:pw@localhost:26379,127.0.0.2:26380/mymaster/2").unwrap();
        let set = crate::cluster::sentinel::SentinelSet {
            addrs: vec![SocketAddr::from(([127, 0, 0, 1], 26379)), SocketAddr::from(([127, 0, 0, 2], 26380))],
            master: "mymaster".into(),
        };
        assert_eq!((u.target, u.password.as_deref(), u.db), (RedisTarget::Sentinels(set), Some("pw"), 2));
        let u = url("redis+sentinel://127.0.0.1:26379/m").unwrap();
        assert_eq!(format!("{u}"), "redis+sentinel://127.0.0.1:26379/m/0");
        for bad in [
            "redis+sentinel://127.0.0.1:26379",
            "redis+sentinel://127.0.0.1:26379/",
            "redis+sentinel://127.0.0.1:26379,/m",
            "redis+sentinel://127.0.0.1:x/m",
            "redis+sentinel://127.0.0.1:26379/m/x",
        ] {
            let e = url(bad).unwrap_err().0;
            assert!(e.contains("redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]"), "{bad}: {e}");
        }
        let e = url("redis://:pw@nowhere:1").unwrap_err().0;
        assert!(e.contains("cannot resolve") && !e.contains("pw@"), "{e}");
        // A password with `@` in it: nothing of it may show, its tail included.
        let u = url("redis://:p@ss@w0rd@localhost:6390").unwrap();
        assert_eq!(u.password.as_deref(), Some("p@ss@w0rd"));
        for bad in ["redis://:p@ss@w0rd@localhost:x", "redis://:p@ss@w0rd@nowhere:1", "redis://u:p@ss@h:1"] {
            let e = url(bad).unwrap_err().0;
            assert!(!e.contains("ss") && !e.contains("w0rd") && !e.contains(":p"), "{bad}: {e}");
        }
    }

    #[test]
    fn help_and_version() {
        let none = |_: &str| None;
        assert!(matches!(parse(["--help".to_string()], &none), Ok(Command::Help)));
        assert!(matches!(parse(["-V".to_string()], &none), Ok(Command::Version)));
        let help = usage();
        assert!(help.contains("--listen ADDR") && help.contains("[0.0.0.0:7777]"), "{help}");
        assert!(help.contains("[from RLIMIT_NOFILE]"));
        assert!(help.lines().all(|l| l.len() <= 120), "{help}");
    }

    #[test]
    fn rust_log_follows_env_filter_syntax() {
        use LogLevel::*;
        for (v, want) in [
            ("", Info),
            ("info", Info),
            ("debug", Debug),
            ("TRACE", Debug),
            ("off", Off),
            ("skiff", Debug),
            ("skiff=debug", Debug),
            ("skiff=debug,warn", Debug),
            ("warn,skiff=trace", Debug),
            ("skiff=error,debug", Error),
            ("hyper=trace,skiff=warn", Warn),
            ("hyper=trace", Info),
            ("tokio::net=debug, error", Error),
            ("warn,", Warn),
            ("skiff=off,info", Off),
        ] {
            assert_eq!(log_level(Some(v)), Ok(want), "RUST_LOG={v}");
        }
        for (v, named) in [("verbose", "\"verbose\""), ("info,skiff=loud", "\"skiff=loud\""), ("=debug", "\"=debug\"")]
        {
            let e = log_level(Some(v)).unwrap_err().0;
            assert!(e.starts_with("RUST_LOG: ") && e.contains(named), "{v}: {e}");
        }
        assert_eq!(log_level(None), Ok(Info));
    }
}
