//! The load scenarios in bench/ run by the tools load testers bring, against a real
//! skiff: Artillery (npm, pinned in bench/package.json) with bench/artillery.yml, and
//! Tsung (Debian's package) with bench/tsung.xml, each for a few seconds on loopback,
//! with the commands the book's "Load testing" (docs/src/load-testing.md) prints. A
//! run passes only when the tool itself reports no error, every virtual user
//! finished, and every message each user sent is in skiff's history: a scenario
//! that broke (or did nothing) fails.
//! A missing tool fails with the command that installs it (a skip would read as a
//! pass in `cargo test` output); SKIFF_SKIP_LOADTOOLS=1 opts out on purpose.

mod common;

use common::Server;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Both scenarios: 4 new users a second for 5 s, 5 messages each.
/// Users the scenarios plan (4 a second for 5 s), and the fewest a run may start
/// before it counts as not having run.
const USERS: u64 = 20;
const MIN_USERS: u64 = 5;
const MESSAGES_PER_USER: u64 = 5;
/// A 5 s scenario; the tools start and stop in a few more. Generous for a loaded CI.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// False (and a notice) when opted out; panics naming the install command when the
/// tool is missing.
fn prerequisites(tool: &str, missing: Vec<String>) -> bool {
    if std::env::var("SKIFF_SKIP_LOADTOOLS").is_ok_and(|v| v == "1") {
        eprintln!("{tool} run not done: SKIFF_SKIP_LOADTOOLS=1 opts out of it");
        return false;
    }
    assert!(
        missing.is_empty(),
        "the {tool} test cannot run:\n  {}\nor set SKIFF_SKIP_LOADTOOLS=1 to skip it on purpose",
        missing.join("\n  ")
    );
    true
}

/// Runs `cmd` in a process group of its own, killed whole if it outlives `limit`
/// (Tsung's Erlang VM and Artillery's workers are children of what we start).
fn run_bounded(mut cmd: Command, limit: Duration, log: &Path) -> ExitStatus {
    let out = std::fs::File::create(log).expect("tool log");
    let err = out.try_clone().expect("tool log");
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().expect("start the tool");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > limit {
            // SAFETY: kill(2) on the process group our own child leads.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!("{cmd:?} did not finish in {limit:?}:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Erlang's port mapper for one Tsung run, in the foreground (not `-daemon`), killed
/// on Drop: nothing of the run stays behind.
struct Epmd {
    child: std::process::Child,
    port: u16,
}

impl Epmd {
    fn start() -> Epmd {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("epmd")
            .args(["-address", "127.0.0.1", "-port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("epmd (Tsung's Erlang brings it)");
        let up = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && up.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        Epmd { child, port }
    }
}

impl Drop for Epmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every chat message in skiff's history, as (author, text), oldest first, read by a
/// user of the test's own.
fn history(srv: &Server) -> Vec<(String, String)> {
    let cookie = srv.user("observer");
    let r = srv.get("/api/history?limit=500", Some(&cookie));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| (m["author"].as_str().unwrap().to_owned(), m["message"].as_str().unwrap().to_owned()))
        .collect()
}

/// Each of USERS authors (named with `prefix`) sent exactly its MESSAGES_PER_USER
/// messages, `text(i, author)` for i in 1..=5, in order.
fn assert_every_message_arrived(srv: &Server, prefix: &str, users: u64, text: impl Fn(u64, &str) -> String) {
    let mut by_author: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (author, message) in history(srv) {
        assert!(author.starts_with(prefix), "a message from {author:?}, not a load-test user: {message:?}");
        by_author.entry(author).or_default().push(message);
    }
    assert_eq!(by_author.len() as u64, users, "authors in the history: {:?}", by_author.keys());
    for (author, messages) in &by_author {
        let expected: Vec<String> = (1..=MESSAGES_PER_USER).map(|i| text(i, author)).collect();
        assert_eq!(messages, &expected, "{author}'s messages");
    }
}

/// The major version of the `node` on PATH, if there is one that runs.
fn node_major() -> Option<u32> {
    let out = Command::new("node").arg("--version").output().ok().filter(|o| o.status.success())?;
    String::from_utf8_lossy(&out.stdout).trim().strip_prefix('v')?.split('.').next()?.parse().ok()
}

#[test]
fn artillery_scenario_runs_clean() {
    let artillery = root().join("bench/node_modules/.bin/artillery");
    let mut missing = Vec::new();
    match node_major() {
        None => missing.push("no node: run `apt-get install nodejs npm`".to_owned()),
        // Debian 12's node 18 lacks the global `File` the locked Artillery's undici needs.
        Some(major) if major < 20 => missing.push(format!(
            "node {major} is too old for the locked Artillery (20 or newer): run \
             `npm install -g --prefix /usr/local node@22` (scripts/test does)"
        )),
        Some(_) => {}
    }
    if !artillery.exists() {
        missing.push("no Artillery: run `cd bench && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci`".to_owned());
    }
    if !prerequisites("Artillery", missing) {
        return;
    }
    let srv = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("artillery-report.json");
    let log = dir.path().join("artillery.log");
    // README's command, with the target on this test's port.
    let mut cmd = Command::new(&artillery);
    cmd.current_dir(root())
        .env("ARTILLERY_DISABLE_TELEMETRY", "1")
        .args(["run", "--target", &format!("ws://{}/ws", srv.addr), "--output"])
        .arg(&report)
        .arg("bench/artillery.yml");
    let started = Instant::now();
    let status = run_bounded(cmd, TOOL_TIMEOUT, &log);
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!("artillery ran {:.1} s", started.elapsed().as_secs_f64());
    assert!(status.success(), "artillery exited {status:?} (a failed `ensure` check is exit 1):\n{output}");

    let report: Value = serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("report is JSON");
    let counters = report["aggregate"]["counters"].as_object().expect("aggregate counters");
    let count = |name: &str| counters.get(name).and_then(Value::as_u64).unwrap_or(0);
    let errors: Vec<_> = counters.iter().filter(|(k, _)| k.starts_with("errors.")).collect();
    assert!(errors.is_empty(), "Artillery counted errors: {errors:?}\n{output}");
    assert_eq!(count("vusers.failed"), 0, "{output}");
    // The tool decides how many users it starts in its 5 s (on a busy machine it may be
    // fewer than the 20 planned); every one it started must have done everything.
    let users = count("vusers.created");
    assert!((MIN_USERS..=USERS).contains(&users), "{users} users created:\n{output}");
    assert_eq!(count("vusers.completed"), users, "{output}");
    assert_eq!(count("skiff.registered"), users);
    assert_eq!(count("skiff.logged_in"), users);
    assert_eq!(count("skiff.acks"), users * MESSAGES_PER_USER);
    assert!(count("skiff.messages_received") > 0, "no user saw another's message: {counters:?}");
    assert_every_message_arrived(&srv, "art", users, |i, author| format!("message {i} from {author}"));
}

/// The whole run's totals from Tsung's last stats dump. A counter line is `NAME
/// PERIOD TOTAL`; a sample line is `NAME COUNT MEAN STDDEV MAX MIN MEAN_BEFORE
/// COUNT_BEFORE`, where "before" means the earlier periods, so its total is COUNT +
/// COUNT_BEFORE.
fn tsung_totals(log: &str) -> BTreeMap<String, u64> {
    let last_dump = log.rsplit("# stats: dump at").next().unwrap_or("");
    last_dump
        .lines()
        .filter_map(|l| l.strip_prefix("stats: "))
        // Monitoring lines ({cpu,"node"} ...) hold no request counts.
        .filter(|l| !l.starts_with('{'))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?.to_owned();
            let numbers: Vec<f64> = words.map(|w| w.parse().ok()).collect::<Option<_>>()?;
            let total = match numbers.as_slice() {
                [_, total] => *total,
                [count, _, _, _, _, _, before] => count + before,
                _ => return None,
            };
            Some((name, total as u64))
        })
        .collect()
}

#[test]
fn tsung_scenario_runs_clean() {
    let mut missing = Vec::new();
    if !Command::new("tsung").arg("-v").output().is_ok_and(|o| o.status.success()) {
        missing.push("no tsung: run `apt-get install tsung`".to_owned());
    }
    if !prerequisites("Tsung", missing) {
        return;
    }
    let srv = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let xml = std::fs::read_to_string(root().join("bench/tsung.xml")).unwrap();
    assert_eq!(
        xml.matches("port=\"7777\"").count(),
        2,
        "bench/tsung.xml names port 7777 in <server> and <change_type>"
    );
    let config = dir.path().join("tsung.xml");
    std::fs::write(&config, xml.replace("port=\"7777\"", &format!("port=\"{}\"", srv.addr.port()))).unwrap();
    let logs = dir.path().join("logs");
    let log = dir.path().join("tsung-run.log");
    // Erlang would start an epmd daemon that outlives the test: this one is the test's,
    // on a port of its own, and is stopped with it.
    let epmd = Epmd::start();
    // README's command. -n: no web dashboard on port 8091. -I and the Erlang settings
    // keep Tsung's own node and epmd on loopback; HOME keeps its ~/.tsung in the temp dir.
    let mut cmd = Command::new("tsung");
    cmd.current_dir(dir.path())
        .env("HOME", dir.path())
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .env("ERL_EPMD_PORT", epmd.port.to_string())
        .env("ERL_FLAGS", "-kernel inet_dist_use_interface {127,0,0,1}")
        .args(["-n", "-I", "127.0.0.1", "-f"])
        .arg(&config)
        .arg("-l")
        .arg(&logs)
        .arg("start");
    let started = Instant::now();
    let status = run_bounded(cmd, TOOL_TIMEOUT, &log);
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!("tsung ran {:.1} s", started.elapsed().as_secs_f64());
    // Tsung exits 0 whatever happened to its users; the stats say what did.
    assert!(status.success(), "tsung exited {status:?}:\n{output}");
    let run_dirs: Vec<PathBuf> =
        std::fs::read_dir(&logs).expect("tsung's log directory").map(|e| e.unwrap().path()).collect();
    assert_eq!(run_dirs.len(), 1, "one dated run directory under {}: {run_dirs:?}", logs.display());
    let stats = std::fs::read_to_string(run_dirs[0].join("tsung.log")).expect("tsung.log");
    let totals = tsung_totals(&stats);
    let total = |name: &str| totals.get(name).copied().unwrap_or(0);

    let failures: Vec<_> = totals
        .iter()
        .filter(|(name, n)| {
            **n > 0
                && (name.starts_with("error")
                    || name.starts_with("match_")
                    || ["nomatch", "timeout", "websocket_fail"].contains(&name.as_str())
                    || name.starts_with('4')
                    || name.starts_with('5'))
        })
        .collect();
    assert!(failures.is_empty(), "Tsung counted failures {failures:?} in its stats:\n{stats}\n{output}");
    // Tsung ends its arrival phase on time: on a busy machine it starts fewer than the
    // 20 users planned (12 seen in a CI run). Every user it started must finish.
    let users = total("users_count");
    assert!((MIN_USERS..=USERS).contains(&users), "{users} users started: {stats}");
    assert_eq!(total("finish_users_count"), users, "{stats}");
    assert_eq!(total("201"), users, "registrations: {stats}");
    assert_eq!(total("200"), users, "logins: {stats}");
    assert_eq!(total("websocket_succ"), users, "upgrades: {stats}");
    assert_eq!(total("tr_message"), users * MESSAGES_PER_USER, "{stats}");
    // Every register, login and message reply matched what it must be.
    assert_eq!(total("match"), users * (2 + MESSAGES_PER_USER), "{stats}");
    assert_every_message_arrived(&srv, "ts", users, |i, author| format!("tsung {i} from {author}"));
}
