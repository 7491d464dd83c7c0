//! Command-line flags -> `Args`, validated; every error is one line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const USAGE: &str = "\
skiff-bench: load-test a skiff server (or any WebSocket broadcast server with --raw)

usage: skiff-bench [--url http://127.0.0.1:7777[,http://...] | --raw ws://HOST:PORT/PATH] [options]
       (https:// URLs: the clients speak TLS and trust any certificate, for a skiff with --tls-cert)

  --clients N        WebSocket clients to connect [100]
  --senders K        how many of them send during the load phase [10]
  --rate R           messages per second per sender [10]
  --duration D       load phase seconds [10]
  --idle-secs S      idle phase seconds before measuring RSS [2]
  --drain-secs S     max wait after the load for outstanding deliveries and acks [5]
  --server-pid PID   read the server's RSS and CPU time from /proc
                     (a comma-separated list, one per --url node, in the same order)
  --redis-pid PID    also report this Redis's CPU time (cluster mode)
  --prefix P         username prefix [random per run]
  --sources K        local source addresses 127.0.0.2.. (default: 1 per 2,000 clients; the kernel's
                     search for a free port slows as one address fills)
  --rcvbuf BYTES     SO_RCVBUF of every client socket [the kernel's autotuning]
  --setup-threads T  HTTP threads for register/login [8]
  --timeout S        hard limit for the whole run [600]
  --register-flood C during the load phase, C more keep-alive HTTP connections each
                     POST /api/register with fresh usernames back to back [0: off];
                     reports registrations/s, their latency and every non-201 answer
  --register-secs S  how long the flood runs, from the start of the load phase
                     [--duration]; --senders 0 gives a flood with no chat load
  --spin             busy-poll instead of sleeping in epoll: at low rates the client's own
                     wake-ups (~10 us each) otherwise dominate the measured latency;
                     costs a full core, so use it only where one is free
  --join-secs S      max wait for the join storm after connecting [60]
  --json             print one JSON object instead of the table
  --presence M       clients speak protocol v2 (/ws?v=2) and take presence as M:
                     each (one event per join), batch (diffs) or count; the join storm
                     is over once every client's online list (or count) reaches N

Reconnect storm (instead of the load phase): with every client connected, run CMD
(e.g. kill -9 the server and start it again, or restart it cleanly); clients that
lose their socket reconnect as the page does (full-jitter exponential backoff,
resuming with since= on v2), the senders chat throughout:
  --storm-cmd CMD    sh -c CMD, after the idle phase; it must return (start the new
                     server in the background)
  --storm-secs S     max wait for every client to be back [60]
  --backoff-ms B,C   the backoff: attempt k waits uniform(0, min(C, B*2^k)) ms [500,10000]

Cluster (several --url nodes sharing one room): client i registers on node i%n, logs in
on node (i+1)%n and opens its WebSocket on node i%n; senders are clients 0..K-1.
One run may span processes (each holds at most its open-file limit of sockets):
  --role R           all: the normal run [all]; listeners: only connects --clients
                     receivers, counts joins and deliveries, never sends
  --ready-file F     (listeners) created once every client is connected and joined
  --stop-file F      (listeners) stop when F appears; it holds the number of accepted
                     messages, and deliveries are awaited (--drain-secs) for that many
  --start-after F    (all) wait for F (e.g. the listeners' --ready-file) before setup
  --done-file F      (all) after the drain, write the accepted count to F (atomically)
  -h, --help
  -V, --version

Every client holds one socket: N clients need an open-file limit above N (`ulimit -n`).
";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// Setup, idle, load, drain: the whole run.
    All,
    /// Receivers only, for a run spread over processes (see the usage).
    Listeners,
}

pub struct Args {
    /// The WebSocket server and the path to upgrade on (the first node).
    pub target: SocketAddr,
    /// Every node (`--url` list), `target` first; one entry for a single node.
    pub targets: Vec<SocketAddr>,
    pub path: String,
    /// `--raw`: no users, no acks or join events; any broadcast server.
    pub raw: bool,
    /// `--url https://...`: every client speaks TLS.
    pub tls: bool,
    pub clients: usize,
    pub senders: usize,
    pub rate: f64,
    pub duration: Duration,
    pub idle: Duration,
    pub drain: Duration,
    /// `--server-pid`: none, or one per node.
    pub pids: Vec<u32>,
    pub redis_pid: Option<u32>,
    pub prefix: String,
    pub sources: usize,
    /// `--rcvbuf`: SO_RCVBUF for the client sockets.
    pub rcvbuf: Option<usize>,
    pub setup_threads: usize,
    pub timeout: Duration,
    /// `--register-flood`: registration connections during the load (0: none).
    pub flood_clients: usize,
    /// `--register-secs`; None: as long as the load phase.
    pub flood_secs: Option<Duration>,
    pub json: bool,
    pub spin: bool,
    pub join_wait: Duration,
    pub role: Role,
    pub ready_file: Option<PathBuf>,
    pub stop_file: Option<PathBuf>,
    pub start_after: Option<PathBuf>,
    pub done_file: Option<PathBuf>,
    /// `--presence`: None for plain `/ws`.
    pub presence: Option<String>,
    pub storm_cmd: Option<String>,
    pub storm_wait: Duration,
    /// Base and cap of the reconnect backoff.
    pub backoff: (Duration, Duration),
    /// `--senders` was given (listeners refuse senders rather than ignore them).
    senders_given: bool,
}

impl Default for Args {
    fn default() -> Args {
        Args {
            target: SocketAddr::from(([127, 0, 0, 1], 7777)),
            targets: vec![SocketAddr::from(([127, 0, 0, 1], 7777))],
            path: "/ws".into(),
            raw: false,
            tls: false,
            clients: 100,
            senders: 10,
            rate: 10.0,
            duration: Duration::from_secs(10),
            idle: Duration::from_secs(2),
            drain: Duration::from_secs(5),
            pids: Vec::new(),
            redis_pid: None,
            prefix: String::new(),
            sources: 0,
            rcvbuf: None,
            setup_threads: 8,
            timeout: Duration::from_secs(600),
            flood_clients: 0,
            flood_secs: None,
            json: false,
            spin: false,
            join_wait: Duration::from_secs(60),
            role: Role::All,
            ready_file: None,
            stop_file: None,
            start_after: None,
            done_file: None,
            presence: None,
            storm_cmd: None,
            storm_wait: Duration::from_secs(60),
            backoff: (Duration::from_millis(500), Duration::from_secs(10)),
            senders_given: false,
        }
    }
}

/// `Ok(None)`: help or version was printed, exit 0.
pub fn parse(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut a = Args::default();
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag}: missing value"));
        let num = |v: String| v.parse::<f64>().map_err(|_| format!("{flag}: not a number: {v}"));
        let secs = |v: String| {
            num(v).and_then(|s| Duration::try_from_secs_f64(s).map_err(|_| format!("{flag}: not a duration")))
        };
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("skiff-bench {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "--url" => {
                let urls = val()?;
                a.tls = urls.trim_start().starts_with("https://");
                let scheme = if a.tls { "https://" } else { "http://" };
                a.targets = list(&urls, |u| host_port(u, scheme).map(|t| t.0))?;
                a.target = a.targets[0];
            }
            "--raw" => {
                (a.target, a.path) = host_port(&val()?, "ws://")?;
                a.targets = vec![a.target];
                a.raw = true;
            }
            "--clients" => a.clients = num(val()?)? as usize,
            "--senders" => {
                a.senders = num(val()?)? as usize;
                a.senders_given = true;
            }
            "--rate" => a.rate = num(val()?)?,
            "--duration" => a.duration = secs(val()?)?,
            "--idle-secs" => a.idle = secs(val()?)?,
            "--drain-secs" => a.drain = secs(val()?)?,
            "--server-pid" => a.pids = list(&val()?, |p| pid(&flag, p))?,
            "--redis-pid" => a.redis_pid = Some(pid(&flag, &val()?)?),
            "--join-secs" => a.join_wait = secs(val()?)?,
            "--role" => {
                a.role = match val()?.as_str() {
                    "all" => Role::All,
                    "listeners" => Role::Listeners,
                    r => return Err(format!("--role: all or listeners, not {r}")),
                }
            }
            "--ready-file" => a.ready_file = Some(val()?.into()),
            "--stop-file" => a.stop_file = Some(val()?.into()),
            "--start-after" => a.start_after = Some(val()?.into()),
            "--done-file" => a.done_file = Some(val()?.into()),
            "--prefix" => a.prefix = val()?,
            "--sources" => a.sources = num(val()?)? as usize,
            "--rcvbuf" => a.rcvbuf = Some(num(val()?)? as usize),
            "--setup-threads" => a.setup_threads = (num(val()?)? as usize).max(1),
            "--timeout" => a.timeout = secs(val()?)?,
            "--register-flood" => a.flood_clients = num(val()?)? as usize,
            "--register-secs" => a.flood_secs = Some(secs(val()?)?),
            "--json" => a.json = true,
            "--presence" => {
                let m = val()?;
                if !matches!(m.as_str(), "each" | "batch" | "count") {
                    return Err(format!("--presence: each, batch or count, not {m}"));
                }
                a.presence = Some(m);
            }
            "--storm-cmd" => a.storm_cmd = Some(val()?),
            "--storm-secs" => a.storm_wait = secs(val()?)?,
            "--backoff-ms" => {
                let v = list(&val()?, |x| x.parse::<u64>().map_err(|_| format!("{flag}: not a number: {x}")))?;
                let [base, cap] = v[..] else { return Err(format!("{flag}: BASE,CAP")) };
                if base == 0 || cap < base {
                    return Err(format!("{flag}: 0 < BASE <= CAP"));
                }
                a.backoff = (Duration::from_millis(base), Duration::from_millis(cap));
            }
            "--spin" => a.spin = true,
            other => return Err(format!("unknown flag {other} (see --help)")),
        }
    }
    validate(a).map(Some)
}

/// The flood runs on one thread and one loop; past this the generator, not the
/// server, would be what is measured.
const MAX_FLOOD_CLIENTS: usize = 1024;

impl Args {
    /// How long the registration flood runs.
    pub fn flood_duration(&self) -> Duration {
        self.flood_secs.unwrap_or(self.duration)
    }
}

/// A comma-separated list, each item parsed by `item`; empty items are errors.
fn list<T>(v: &str, item: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    v.split(',')
        .map(|s| if s.trim().is_empty() { Err(format!("{v}: empty list item")) } else { item(s.trim()) })
        .collect()
}

fn pid(flag: &str, v: &str) -> Result<u32, String> {
    v.parse().map_err(|_| format!("{flag}: not a process id: {v}"))
}

fn validate(mut a: Args) -> Result<Args, String> {
    if a.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    if !a.pids.is_empty() && a.pids.len() != a.targets.len() {
        return Err(format!("--server-pid: {} pids for {} --url nodes (one per node)", a.pids.len(), a.targets.len()));
    }
    if a.targets.len() > 1 && a.flood_clients > 0 {
        return Err("--register-flood: one --url node only".into());
    }
    match a.role {
        Role::Listeners => {
            if a.senders_given && a.senders > 0 {
                return Err("--role listeners never sends: no --senders".into());
            }
            a.senders = 0;
            if a.raw || a.flood_clients > 0 {
                return Err("--role listeners: not with --raw or --register-flood".into());
            }
            if a.stop_file.is_none() {
                return Err("--role listeners needs --stop-file (the run that sends writes it)".into());
            }
            if a.start_after.is_some() || a.done_file.is_some() {
                return Err("--start-after and --done-file are for --role all".into());
            }
        }
        Role::All => {
            if a.ready_file.is_some() || a.stop_file.is_some() {
                return Err("--ready-file and --stop-file are for --role listeners".into());
            }
        }
    }
    if a.sources > 250 {
        return Err("--sources: at most 250 (127.0.0.2 to 127.0.0.251)".into());
    }
    if a.senders > a.clients {
        return Err("--senders exceeds --clients".into());
    }
    if a.flood_clients > MAX_FLOOD_CLIENTS {
        return Err(format!("--register-flood: at most {MAX_FLOOD_CLIENTS} connections"));
    }
    if a.flood_clients > 0 && a.raw {
        return Err("--register-flood needs a skiff server, not --raw".into());
    }
    if a.flood_secs.is_some() && a.flood_clients == 0 {
        return Err("--register-secs without --register-flood".into());
    }
    if a.presence.is_some() && a.raw {
        return Err("--presence needs a skiff server, not --raw".into());
    }
    if let Some(m) = &a.presence {
        a.path = if m == "each" { "/ws?v=2".into() } else { format!("/ws?v=2&presence={m}") };
    }
    if a.storm_cmd.is_some() && (a.raw || a.role != Role::All || a.flood_clients > 0) {
        return Err("--storm-cmd: a skiff server, --role all, no --register-flood".into());
    }
    if a.prefix.is_empty() {
        let mut r = [0u8; 4];
        getrandom::fill(&mut r).map_err(|e| e.to_string())?;
        a.prefix = format!("b{:08x}x", u32::from_le_bytes(r));
    }
    if a.sources == 0 {
        a.sources = a.clients.div_ceil(2_000).clamp(1, 250);
    }
    Ok(a)
}

/// "scheme://host:port/path" -> (address, path). Only numeric IPv4 hosts: the bench
/// only ever targets loopback.
fn host_port(url: &str, scheme: &str) -> Result<(SocketAddr, String), String> {
    let rest = url.strip_prefix(scheme).ok_or_else(|| format!("{url}: expected {scheme}..."))?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let addr = host.parse().map_err(|_| format!("{url}: expected {scheme}IP:PORT"))?;
    Ok((addr, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Option<Args>, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn raw_takes_address_and_path_and_url_keeps_ws() {
        let a = parse_strs(&["--raw", "ws://127.0.0.1:9/chat/room"]).unwrap().unwrap();
        assert!(a.raw);
        assert_eq!((a.target, a.path.as_str()), (SocketAddr::from(([127, 0, 0, 1], 9)), "/chat/room"));
        let a = parse_strs(&["--url", "http://127.0.0.1:8"]).unwrap().unwrap();
        assert!(!a.raw);
        assert_eq!((a.target.port(), a.path.as_str()), (8, "/ws"));
    }

    #[test]
    fn impossible_runs_are_refused_up_front() {
        for (args, what) in [
            (&["--clients", "0"][..], "--clients"),
            (&["--clients", "5", "--senders", "6"], "--senders"),
            (&["--sources", "251"], "--sources"),
            (&["--duration", "-1"], "--duration"),
            (&["--rate"], "missing value"),
            (&["--bogus"], "unknown flag"),
            (&["--register-flood", "5000"], "--register-flood"),
            (&["--register-secs", "3"], "--register-secs"),
            (&["--raw", "ws://127.0.0.1:9/", "--register-flood", "4"], "--raw"),
            (&["--url", "http://127.0.0.1:1,http://127.0.0.1:2", "--server-pid", "5"], "one per node"),
            (&["--url", "http://127.0.0.1:1,", "--clients", "2"], "empty list item"),
            (&["--url", "http://127.0.0.1:1,127.0.0.1:2"], "expected http://"),
            (&["--server-pid", "12,x"], "not a process id"),
            (&["--redis-pid", "-3"], "not a process id"),
            (&["--role", "senders"], "--role"),
            (&["--role", "listeners"], "--stop-file"),
            (&["--role", "listeners", "--stop-file", "s", "--senders", "2"], "never sends"),
            (&["--role", "listeners", "--stop-file", "s", "--done-file", "d"], "--role all"),
            (&["--ready-file", "r"], "--role listeners"),
            (&["--url", "http://127.0.0.1:1,http://127.0.0.1:2", "--register-flood", "2"], "one --url"),
            (&["--presence", "some"], "--presence"),
            (&["--raw", "ws://127.0.0.1:9/", "--presence", "batch"], "--raw"),
            (&["--backoff-ms", "500"], "BASE,CAP"),
            (&["--backoff-ms", "500,100"], "BASE <= CAP"),
        ] {
            let e = parse_strs(args).err().unwrap_or_else(|| panic!("{args:?} accepted"));
            assert!(e.contains(what), "{args:?}: {e}");
        }
    }

    #[test]
    fn the_flood_lasts_as_long_as_the_load_unless_told() {
        let a = parse_strs(&["--register-flood", "64", "--duration", "7"]).unwrap().unwrap();
        assert_eq!((a.flood_clients, a.flood_duration()), (64, Duration::from_secs(7)));
        let a = parse_strs(&["--register-flood", "4", "--register-secs", "2.5", "--senders", "0"]).unwrap().unwrap();
        assert_eq!((a.senders, a.flood_duration()), (0, Duration::from_millis(2500)));
    }

    #[test]
    fn url_and_server_pid_take_lists_one_per_node() {
        let a = parse_strs(&[
            "--url",
            "http://127.0.0.1:7001,http://127.0.0.1:7002, http://127.0.0.1:7003",
            "--server-pid",
            "11,12,13",
            "--redis-pid",
            "10",
        ])
        .unwrap()
        .unwrap();
        let ports: Vec<u16> = a.targets.iter().map(|t| t.port()).collect();
        assert_eq!((ports, a.target.port(), a.path.as_str()), (vec![7001, 7002, 7003], 7001, "/ws"));
        assert_eq!((a.pids, a.redis_pid, a.role), (vec![11, 12, 13], Some(10), Role::All));
        // One node: as before.
        let a = parse_strs(&["--url", "http://127.0.0.1:8", "--server-pid", "42"]).unwrap().unwrap();
        assert_eq!((a.targets.len(), a.pids, a.redis_pid), (1, vec![42], None));
        let a = parse_strs(&[]).unwrap().unwrap();
        assert_eq!((a.targets, a.pids.len()), (vec![a.target], 0));
    }

    #[test]
    fn listeners_send_nothing_and_pair_with_a_sending_run() {
        let a =
            parse_strs(&["--role", "listeners", "--stop-file", "/tmp/s", "--ready-file", "/tmp/r"]).unwrap().unwrap();
        assert_eq!((a.role, a.senders), (Role::Listeners, 0));
        assert_eq!(a.stop_file.as_deref(), Some(std::path::Path::new("/tmp/s")));
        assert_eq!(a.ready_file.as_deref(), Some(std::path::Path::new("/tmp/r")));
        let a = parse_strs(&["--role", "listeners", "--stop-file", "s", "--senders", "0"]).unwrap().unwrap();
        assert_eq!(a.senders, 0);
        let a =
            parse_strs(&["--role", "all", "--start-after", "/tmp/r", "--done-file", "/tmp/s", "--join-secs", "300"])
                .unwrap()
                .unwrap();
        assert_eq!((a.role, a.senders, a.join_wait), (Role::All, 10, Duration::from_secs(300)));
        assert!(a.start_after.is_some() && a.done_file.is_some());
    }

    #[test]
    fn presence_picks_the_v2_path_and_the_storm_its_backoff() {
        let a =
            parse_strs(&["--presence", "batch", "--storm-cmd", "true", "--backoff-ms", "100,2000"]).unwrap().unwrap();
        assert_eq!(a.path, "/ws?v=2&presence=batch");
        assert_eq!(a.backoff, (Duration::from_millis(100), Duration::from_secs(2)));
        assert_eq!(parse_strs(&["--presence", "each"]).unwrap().unwrap().path, "/ws?v=2");
    }

    #[test]
    fn help_and_version_stop_before_a_run() {
        assert!(parse_strs(&["--version"]).unwrap().is_none());
        assert!(parse_strs(&["-h", "--clients", "0"]).unwrap().is_none());
    }
}
