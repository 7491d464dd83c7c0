//! The command line and `SKIFF_*` environment variables, parsed into a validated
//! `Config`. Pure: the caller passes the arguments and an env lookup in; nothing
//! here touches files or sockets.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub db: PathBuf,
    pub session_ttl: Duration,
    pub static_dir: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub allowed_origins: Vec<String>,
    pub trusted_proxies: Vec<IpAddr>,
    pub max_connections: Option<usize>,
    pub limit_loopback: bool,
    pub register_per_minute: u32,
    pub failed_logins_per_minute: u32,
    pub messages_per_second: u32,
    pub message_burst: u32,
    pub max_sessions_per_user: usize,
    pub max_sessions: usize,
    pub metrics_public: bool,
    pub log_level: LogLevel,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 7777)),
            db: PathBuf::from("chat.db"),
            session_ttl: Duration::from_secs(3600),
            static_dir: None,
            tls_cert: None,
            tls_key: None,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            max_connections: None,
            limit_loopback: false,
            register_per_minute: 10,
            failed_logins_per_minute: 30,
            messages_per_second: 100,
            message_burst: 200,
            max_sessions_per_user: 32,
            max_sessions: 100_000,
            metrics_public: false,
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

pub const USAGE: &str = "\
skiff: a tiny real-time chat server (HTTP JSON API + one WebSocket room)

usage: skiff [--listen ADDR] [--db PATH] [--session-ttl SECS] [--static DIR]
             [--tls-cert PEM --tls-key PEM] [--allowed-origin ORIGIN]...
             [--trusted-proxy IP]... [--max-connections N]

  --listen ADDR               SKIFF_LISTEN                address to serve on [0.0.0.0:7777]
  --db PATH                   SKIFF_DB                    SQLite file, created if missing [chat.db]
  --session-ttl SECS          SKIFF_SESSION_TTL           idle seconds before a session ends [3600]
  --static DIR                SKIFF_STATIC                serve this directory instead of the built-in page
  --tls-cert PEM              SKIFF_TLS_CERT              certificate chain; serve HTTPS/WSS (needs --tls-key)
  --tls-key PEM               SKIFF_TLS_KEY               private key for --tls-cert
  --allowed-origin ORIGIN     SKIFF_ALLOWED_ORIGIN        repeatable (env: comma-separated); /ws from other origins -> 403
  --trusted-proxy IP          SKIFF_TRUSTED_PROXY         repeatable (env: comma-separated); believe X-Forwarded-For from it
  --max-connections N         SKIFF_MAX_CONNECTIONS       open connections at most [from RLIMIT_NOFILE]
  --limit-loopback            SKIFF_LIMIT_LOOPBACK        apply rate limits to loopback clients too
  --register-limit N          SKIFF_REGISTER_LIMIT        registrations per minute per address, 0 = off [10]
  --login-fail-limit N        SKIFF_LOGIN_FAIL_LIMIT      failed logins per minute per address, 0 = off [30]
  --message-rate N            SKIFF_MESSAGE_RATE          messages per second per socket, 0 = off [100]
  --message-burst N           SKIFF_MESSAGE_BURST         message burst per socket [200]
  --max-sessions-per-user N   SKIFF_MAX_SESSIONS_PER_USER oldest session evicted past it [32]
  --max-sessions N            SKIFF_MAX_SESSIONS          sessions in all; login answers 503 past it [100000]
  --metrics-public            SKIFF_METRICS_PUBLIC        serve /metrics to any client, not just loopback/proxies
  -h, --help                                              this text
  -V, --version                                           the version

Logs go to stderr; RUST_LOG sets the level (error, warn, info, debug, trace) [info].
";

/// One flag: its name, its env var, and whether it takes a value.
struct Flag {
    name: &'static str,
    env: &'static str,
    takes_value: bool,
    repeatable: bool,
}

const FLAGS: &[Flag] = &[
    Flag { name: "--listen", env: "SKIFF_LISTEN", takes_value: true, repeatable: false },
    Flag { name: "--db", env: "SKIFF_DB", takes_value: true, repeatable: false },
    Flag { name: "--session-ttl", env: "SKIFF_SESSION_TTL", takes_value: true, repeatable: false },
    Flag { name: "--static", env: "SKIFF_STATIC", takes_value: true, repeatable: false },
    Flag { name: "--tls-cert", env: "SKIFF_TLS_CERT", takes_value: true, repeatable: false },
    Flag { name: "--tls-key", env: "SKIFF_TLS_KEY", takes_value: true, repeatable: false },
    Flag { name: "--allowed-origin", env: "SKIFF_ALLOWED_ORIGIN", takes_value: true, repeatable: true },
    Flag { name: "--trusted-proxy", env: "SKIFF_TRUSTED_PROXY", takes_value: true, repeatable: true },
    Flag { name: "--max-connections", env: "SKIFF_MAX_CONNECTIONS", takes_value: true, repeatable: false },
    Flag { name: "--limit-loopback", env: "SKIFF_LIMIT_LOOPBACK", takes_value: false, repeatable: false },
    Flag { name: "--register-limit", env: "SKIFF_REGISTER_LIMIT", takes_value: true, repeatable: false },
    Flag { name: "--login-fail-limit", env: "SKIFF_LOGIN_FAIL_LIMIT", takes_value: true, repeatable: false },
    Flag { name: "--message-rate", env: "SKIFF_MESSAGE_RATE", takes_value: true, repeatable: false },
    Flag { name: "--message-burst", env: "SKIFF_MESSAGE_BURST", takes_value: true, repeatable: false },
    Flag { name: "--max-sessions-per-user", env: "SKIFF_MAX_SESSIONS_PER_USER", takes_value: true, repeatable: false },
    Flag { name: "--max-sessions", env: "SKIFF_MAX_SESSIONS", takes_value: true, repeatable: false },
    Flag { name: "--metrics-public", env: "SKIFF_METRICS_PUBLIC", takes_value: false, repeatable: false },
];

/// `args` excludes argv[0]; `env` looks up an environment variable. Flags win.
pub fn parse<I: IntoIterator<Item = String>>(
    args: I,
    env: &dyn Fn(&str) -> Option<String>,
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
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let Some(i) = FLAGS.iter().position(|f| f.name == name) else {
            return Err(ConfigError(if name.starts_with('-') {
                format!("unknown flag {name}")
            } else {
                format!("unexpected argument {name:?}")
            }));
        };
        let flag = &FLAGS[i];
        let value = if flag.takes_value {
            match inline {
                Some(v) => v,
                None => args.next().ok_or_else(|| ConfigError(format!("{name}: missing value")))?,
            }
        } else {
            if inline.is_some() {
                return Err(ConfigError(format!("{name} takes no value")));
            }
            "1".to_owned()
        };
        if !flag.repeatable && !given[i].is_empty() {
            return Err(ConfigError(format!("{name} given twice")));
        }
        given[i].push(value);
    }
    // Fill what the command line left unset from the environment.
    for (i, flag) in FLAGS.iter().enumerate() {
        if given[i].is_empty() {
            if let Some(v) = env(flag.env).filter(|v| !v.is_empty()) {
                given[i] = if flag.repeatable {
                    v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
                } else {
                    vec![v]
                };
            }
        }
    }
    let value = |name: &str| -> Option<&str> {
        let i = FLAGS.iter().position(|f| f.name == name).expect("known flag");
        given[i].first().map(String::as_str)
    };
    let all = |name: &str| -> &[String] {
        let i = FLAGS.iter().position(|f| f.name == name).expect("known flag");
        &given[i]
    };
    let mut cfg = Config::default();
    if let Some(v) = value("--listen") {
        cfg.listen = v.parse().map_err(|_| bad("--listen", "an address like 0.0.0.0:7777 or [::]:7777", v))?;
    }
    if let Some(v) = value("--db") {
        cfg.db = PathBuf::from(v);
    }
    if let Some(v) = value("--session-ttl") {
        let secs: u64 = number("--session-ttl", v, 1, "a whole number of seconds >= 1")?;
        cfg.session_ttl = Duration::from_secs(secs);
    }
    cfg.static_dir = value("--static").map(PathBuf::from);
    cfg.tls_cert = value("--tls-cert").map(PathBuf::from);
    cfg.tls_key = value("--tls-key").map(PathBuf::from);
    if cfg.tls_cert.is_some() != cfg.tls_key.is_some() {
        return Err(ConfigError("--tls-cert and --tls-key go together".into()));
    }
    for origin in all("--allowed-origin") {
        if !valid_origin(origin) {
            return Err(bad("--allowed-origin", "scheme://host[:port] without a path", origin));
        }
        cfg.allowed_origins.push(origin.clone());
    }
    for ip in all("--trusted-proxy") {
        cfg.trusted_proxies.push(ip.parse().map_err(|_| bad("--trusted-proxy", "an IP address", ip))?);
    }
    if let Some(v) = value("--max-connections") {
        cfg.max_connections = Some(number("--max-connections", v, 1, "a number >= 1")?);
    }
    cfg.limit_loopback = truthy("--limit-loopback", value("--limit-loopback"))?;
    cfg.metrics_public = truthy("--metrics-public", value("--metrics-public"))?;
    if let Some(v) = value("--register-limit") {
        cfg.register_per_minute = number("--register-limit", v, 0, "a number (0 = off)")?;
    }
    if let Some(v) = value("--login-fail-limit") {
        cfg.failed_logins_per_minute = number("--login-fail-limit", v, 0, "a number (0 = off)")?;
    }
    if let Some(v) = value("--message-rate") {
        cfg.messages_per_second = number("--message-rate", v, 0, "a number (0 = off)")?;
    }
    if let Some(v) = value("--message-burst") {
        cfg.message_burst = number("--message-burst", v, 1, "a number >= 1")?;
    }
    if let Some(v) = value("--max-sessions-per-user") {
        cfg.max_sessions_per_user = number("--max-sessions-per-user", v, 1, "a number >= 1")?;
    }
    if let Some(v) = value("--max-sessions") {
        cfg.max_sessions = number("--max-sessions", v, 1, "a number >= 1")?;
    }
    cfg.log_level = log_level(env("RUST_LOG").as_deref());
    Ok(Command::Run(Box::new(cfg)))
}

fn bad(flag: &str, expected: &str, got: &str) -> ConfigError {
    ConfigError(format!("{flag}: expected {expected}, got {got:?}"))
}

fn number<T: std::str::FromStr + PartialOrd + From<u8>>(
    flag: &str,
    v: &str,
    min: u8,
    expected: &str,
) -> Result<T, ConfigError> {
    match v.trim().parse::<T>() {
        Ok(n) if n >= T::from(min) => Ok(n),
        _ => Err(bad(flag, expected, v)),
    }
}

fn truthy(flag: &str, v: Option<&str>) -> Result<bool, ConfigError> {
    match v.map(|s| s.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(s) if ["1", "true", "yes", "on"].contains(&s.as_str()) => Ok(true),
        Some(s) if ["0", "false", "no", "off"].contains(&s.as_str()) => Ok(false),
        Some(s) => Err(bad(flag, "1/true/yes or 0/false/no", &s)),
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

/// `RUST_LOG` as `level` or `skiff=level` (other crates' directives are ignored).
fn log_level(v: Option<&str>) -> LogLevel {
    let mut level = LogLevel::Info;
    for directive in v.unwrap_or("").split(',') {
        let spec = match directive.split_once('=') {
            Some((target, l)) if target.trim() == "skiff" => l,
            Some(_) => continue,
            None => directive,
        };
        level = match spec.trim().to_ascii_lowercase().as_str() {
            "error" => LogLevel::Error,
            "warn" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => level,
        };
    }
    level
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        match parse(args.iter().map(|s| s.to_string()), &lookup)? {
            Command::Run(c) => Ok(*c),
            other => panic!("expected Run, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = run(&[], &[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.to_string(), "0.0.0.0:7777");
        assert_eq!(c.session_ttl, Duration::from_secs(3600));
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
    }

    #[test]
    fn errors_are_one_line() {
        for (args, needle) in [
            (&["--bogus"][..], "unknown flag --bogus"),
            (&["--session-ttl", "0"], "--session-ttl"),
            (&["--session-ttl", "abc"], "--session-ttl"),
            (&["--session-ttl"], "missing value"),
            (&["--listen", "nowhere"], "--listen"),
            (&["--db", "a", "--db", "b"], "given twice"),
            (&["--tls-cert", "c.pem"], "go together"),
            (&["--allowed-origin", "https://a.example/"], "--allowed-origin"),
            (&["--trusted-proxy", "proxy"], "--trusted-proxy"),
            (&["--limit-loopback=1"], "takes no value"),
            (&["positional"], "unexpected argument"),
        ] {
            let e = run(args, &[]).unwrap_err();
            assert!(e.0.contains(needle), "{args:?}: {e}");
            assert!(!e.0.contains('\n'));
        }
        assert!(run(&[], &[("SKIFF_SESSION_TTL", "-5")]).is_err(), "bad env values are errors too");
    }

    #[test]
    fn help_and_version() {
        let none = |_: &str| None;
        assert!(matches!(parse(["--help".to_string()], &none), Ok(Command::Help)));
        assert!(matches!(parse(["-V".to_string()], &none), Ok(Command::Version)));
        for f in FLAGS {
            assert!(USAGE.contains(f.name) && USAGE.contains(f.env), "usage lists {}", f.name);
        }
    }

    #[test]
    fn rust_log_levels() {
        assert_eq!(log_level(None), LogLevel::Info);
        assert_eq!(log_level(Some("debug")), LogLevel::Debug);
        assert_eq!(log_level(Some("hyper=trace,skiff=warn")), LogLevel::Warn);
        assert_eq!(log_level(Some("nonsense")), LogLevel::Info);
    }
}
