//! `/metrics` as Prometheus users see it (README "Seeing inside"), and the shipped
//! `deploy/prometheus/` and `deploy/grafana/` files run against the real tools:
//! promtool checks the rules and the scrape config; Debian's `prometheus` binary
//! scrapes real skiff nodes (one on SQLite, one in cluster mode on a private Redis)
//! under a little load, and every dashboard panel's and every alert's expression is
//! evaluated through its HTTP API.
//!
//! Needs `apt-get install prometheus redis-server`. Where promtool or prometheus is
//! missing the tests fail naming that command; SKIFF_SKIP_PROMETHEUS=1 leaves them out
//! on purpose. SKIFF_SKIP_REDIS=1 leaves the cluster node out, and with it the cluster
//! panels and alert.

mod common;
#[path = "common/redis.rs"]
mod redis;

use common::{wait_for, Server, Ws};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const WAIT: Duration = Duration::from_secs(30);

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(file)
}

/// Whether `tool` runs. A missing tool fails the test with the install command, as
/// every other tool-bound test does (a skip would read as a pass in `cargo test`
/// output); SKIFF_SKIP_PROMETHEUS=1 leaves the test out on purpose.
fn tool_or_skip(tool: &str, test: &str) -> bool {
    if std::env::var("SKIFF_SKIP_PROMETHEUS").is_ok_and(|v| v == "1") {
        eprintln!("{test} not run: SKIFF_SKIP_PROMETHEUS=1 opts out of it");
        return false;
    }
    assert!(
        Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success()),
        "{test} needs `{tool}`: run `apt-get install prometheus` (Debian's package has prometheus and promtool), \
         or set SKIFF_SKIP_PROMETHEUS=1 to skip it on purpose"
    );
    true
}

// ---- the text format, parsed as a scraper would -------------------------------------

/// A scrape: every sample by its series (`name{labels}` as printed), and every
/// family's `# TYPE`.
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
    text: String,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        let mut helps = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helps.push(rest.split(' ').next().unwrap().to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(types.insert(name.to_owned(), kind.to_owned()).is_none(), "{name} declared twice");
            } else {
                assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
                let (series, value) = line.rsplit_once(' ').expect("series value");
                let value = if value == "+Inf" { f64::INFINITY } else { value.parse().expect("a number") };
                samples.insert(series.to_owned(), value);
            }
        }
        for name in types.keys() {
            assert!(helps.contains(name), "{name} has a TYPE but no HELP");
        }
        let s = Scrape { samples, types, text: text.to_owned() };
        for series in s.samples.keys() {
            let family = s.family(series);
            assert!(s.types.contains_key(family), "{series}: family {family} has no TYPE");
        }
        s
    }

    /// A sample's family: its name, less `_bucket`/`_sum`/`_count` for a histogram.
    fn family<'a>(&self, series: &'a str) -> &'a str {
        let name = series.split('{').next().unwrap();
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if self.types.get(base).is_some_and(|k| k == "histogram") {
                    return base;
                }
            }
        }
        name
    }

    fn get(&self, series: &str) -> f64 {
        *self.samples.get(series).unwrap_or_else(|| panic!("no sample {series} in\n{}", self.text))
    }

    fn kind(&self, family: &str) -> &str {
        self.types.get(family).unwrap_or_else(|| panic!("no family {family}"))
    }

    /// Checks a histogram series: buckets never fall, +Inf equals the count.
    /// Returns its count. `labels` is `key="v",` (with the comma) or empty.
    fn histogram(&self, family: &str, labels: &str) -> f64 {
        assert_eq!(self.kind(family), "histogram");
        let prefix = format!("{family}_bucket{{{labels}le=\"");
        let mut last = 0.0;
        let mut buckets = 0;
        for line in self.text.lines().filter(|l| l.starts_with(&prefix)) {
            let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(v >= last, "{line}: bucket below the one before");
            last = v;
            buckets += 1;
        }
        assert!(buckets > 1, "{family}{{{labels}}} has no buckets");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.trim_end_matches(',')) };
        let count = self.get(&format!("{family}_count{braces}"));
        assert_eq!(self.get(&format!("{family}_bucket{{{labels}le=\"+Inf\"}}")), count, "+Inf != count");
        assert!(self.get(&format!("{family}_sum{braces}")) >= 0.0);
        count
    }
}

fn scrape(srv: &Server) -> Scrape {
    let r = srv.get("/metrics", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"));
    Scrape::parse(&r.text())
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Three users in the room; the first says `n` messages and everyone else gets them.
fn chat(srv: &Server, names: [&str; 3], n: usize) -> (Vec<String>, Vec<Ws>) {
    let cookies: Vec<String> = names.iter().map(|name| srv.user(name)).collect();
    let mut socks: Vec<Ws> = cookies.iter().map(|c| srv.ws(c)).collect();
    for i in 0..n {
        socks[0].say(&format!("hello {i}"));
        socks[0].recv_until(|v| v["status"] == true);
        for s in &mut socks[1..] {
            s.recv_until(|v| v["message"] == format!("hello {i}").as_str());
        }
    }
    (cookies, socks)
}

#[test]
fn every_family_is_declared_and_counts_what_happened() {
    let srv = Server::start();
    let start = unix_now();
    let before = scrape(&srv);
    assert_eq!(before.histogram("skiff_broadcast_fanout_seconds", ""), 0.0);

    let (cookies, _socks) = chat(&srv, ["alice", "bob", "carol"], 5);
    const N: usize = 7;
    for _ in 0..N {
        assert_eq!(srv.get("/api/online", Some(&cookies[0])).status, 200);
    }
    assert_eq!(srv.get("/api/user/bob", Some(&cookies[0])).status, 200);
    assert_eq!(srv.get("/api/user/nobody", Some(&cookies[0])).status, 404);
    assert_eq!(srv.get("/no/such/page", None).status, 404);
    assert_eq!(srv.get("/", None).status, 200);

    // The fan-out is observed after the last recipient's write, which the clients
    // have read by now; the scrape may still race the loop's next flush slice.
    let mut m = scrape(&srv);
    wait_for(WAIT, || {
        m = scrape(&srv);
        m.histogram("skiff_broadcast_fanout_seconds", "") >= 5.0
    });
    // 5 messages, each to two recipients; the joins are not messages.
    assert_eq!(m.histogram("skiff_broadcast_fanout_seconds", ""), 5.0);
    assert!(m.get("skiff_broadcast_fanout_seconds_sum") < 5.0 * 10.0, "a loopback fan-out takes far under 10 s");

    let requests = |route: &str, status: u16| {
        m.get(&format!("skiff_http_requests_total{{route=\"{route}\",status=\"{status}\"}}"))
    };
    assert!(requests("/api/online", 200) >= N as f64);
    assert_eq!(requests("/api/register", 201), 3.0);
    assert_eq!(requests("/api/login", 200), 3.0);
    assert_eq!(requests("/ws", 101), 3.0);
    assert_eq!(requests("/api/user/{name}", 200), 1.0);
    assert_eq!(requests("/api/user/{name}", 404), 1.0);
    assert_eq!(requests("other", 404), 1.0, "an unknown path is `other`");
    assert_eq!(requests("static", 200), 1.0);
    assert!(!m.text.contains("/api/user/bob") && !m.text.contains("/no/such"), "raw paths never become labels");
    assert!(m.histogram("skiff_http_request_duration_seconds", "route=\"/api/online\",") >= N as f64);
    assert_eq!(m.histogram("skiff_http_request_duration_seconds", "route=\"/api/register\","), 3.0);
    // Waited for its commit: a registration takes at least one fsync, not nothing.
    assert!(m.get("skiff_http_request_duration_seconds_sum{route=\"/api/register\"}") > 0.0);

    // Three registrations, and the sessions written behind them: at least one
    // commit, each with its batch observed.
    let commits = m.histogram("skiff_storage_commit_seconds", "");
    assert!(commits >= 1.0);
    assert_eq!(m.histogram("skiff_storage_batch_size", ""), commits, "one batch size per commit");
    assert!(m.get("skiff_storage_batch_size_sum") >= 3.0, "the three registrations were written");
    assert_eq!(m.get("skiff_storage_failures_total"), 0.0);
    assert!(m.get("skiff_storage_queue_depth{thread=\"writer\"}") >= 0.0);
    assert!(m.get("skiff_storage_queue_depth{thread=\"reader\"}") >= 0.0);
    assert_eq!(m.get("skiff_healthy"), 1.0);
    assert_eq!(m.get("skiff_history_messages"), 5.0);
    assert_eq!(m.get("skiff_online_users"), 3.0);
    assert_eq!(m.get(&format!("skiff_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), 1.0);
    assert!(!m.text.contains("skiff_cluster_"), "no cluster families on a single node");

    let rss = m.get("process_resident_memory_bytes");
    assert!((1e6..1e9).contains(&rss), "resident memory {rss}");
    assert!(m.get("process_virtual_memory_bytes") >= rss);
    assert!(m.get("process_cpu_seconds_total") >= 0.0);
    let (open, max) = (m.get("process_open_fds"), m.get("process_max_fds"));
    // Three WebSockets, the listener, epoll, the database: at least these.
    assert!(open >= 6.0 && open < max, "{open} descriptors open of {max}");
    let started = m.get("process_start_time_seconds");
    assert!(started > start - 60.0 && started <= unix_now() + 1.0, "started at {started}, test began {start}");
    for (family, kind) in [
        ("process_resident_memory_bytes", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("skiff_http_requests_total", "counter"),
        ("skiff_http_request_duration_seconds", "histogram"),
        ("skiff_storage_commit_seconds", "histogram"),
        ("skiff_storage_batch_size", "histogram"),
        ("skiff_broadcast_fanout_seconds", "histogram"),
        ("skiff_storage_queue_depth", "gauge"),
        ("skiff_storage_failures_total", "counter"),
        ("skiff_history_messages", "gauge"),
        ("skiff_build_info", "gauge"),
    ] {
        assert_eq!(m.kind(family), kind, "{family}");
    }

    // Counters only grow; the CPU spent on all this shows.
    let later = scrape(&srv);
    for (series, v) in &m.samples {
        if series.starts_with("skiff_") && m.kind(m.family(series)) == "counter" {
            assert!(later.get(series) >= *v, "{series} went down");
        }
    }
}

// ---- promtool ---------------------------------------------------------------------

#[test]
fn promtool_accepts_the_shipped_rules_and_scrape_config_and_the_alerts_fire_as_tested() {
    if !tool_or_skip("promtool", "promtool_accepts_the_shipped_rules_and_scrape_config_and_the_alerts_fire_as_tested") {
        return;
    }
    // `test rules`: every alert fires on its own series after its `for`, with the
    // labels and text it promises, and none fires on a healthy node.
    for (args, file) in [
        (["check", "rules"], "prometheus/skiff.rules.yml"),
        (["check", "config"], "prometheus/prometheus.yml"),
        (["test", "rules"], "prometheus/skiff.rules.test.yml"),
    ] {
        let out = Command::new("promtool").args(args).arg(deploy(file)).output().expect("run promtool");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "promtool {} {file}:\n{text}", args.join(" "));
        assert!(text.contains("SUCCESS"), "{text}");
    }
}

// ---- a real Prometheus --------------------------------------------------------------

/// A `prometheus` process on a loopback port with its own directory, killed on Drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus on `config` and waits (bounded) until it is ready. It cannot
    /// listen on port 0 and say which port it got, so a free port is picked and the
    /// start retried if another process took it meanwhile.
    fn start(config: &str) -> Prometheus {
        let mut dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let mut last = String::new();
        for attempt in 0..5 {
            let port = redis::free_port();
            let log = std::fs::File::create(dir.path().join(format!("prometheus-{attempt}.log"))).unwrap();
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn prometheus");
            let mut p = Prometheus { child, port, dir };
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                if p.child.try_wait().unwrap().is_some() {
                    break;
                }
                if p.get("/-/ready").is_some_and(|(status, _)| status == 200) {
                    return p;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            last = p.log(attempt);
            dir = std::mem::replace(&mut p.dir, tempfile::tempdir().unwrap());
        }
        panic!("prometheus did not become ready in 5 tries; its last log:\n{last}");
    }

    fn log(&self, attempt: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("prometheus-{attempt}.log"))).unwrap_or_default()
    }

    /// One GET (HTTP/1.0, so the body ends with the connection): status and body.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let (head, body) = raw.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
    }

    /// `/api/v1/...` as JSON; panics unless Prometheus answers `"status": "success"`.
    fn api(&self, path: &str) -> Value {
        let (status, body) = self.get(path).unwrap_or_else(|| panic!("no answer to {path}"));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert!(status == 200 && v["status"] == "success", "{path}: {status} {body}");
        v
    }

    /// An instant query's result vector (or scalar, as one element).
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", urlencode(expr));
        let (status, body) = self.get(&path).ok_or("no answer")?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("{status}: {}", v["error"]));
        }
        match v["data"]["resultType"].as_str() {
            Some("vector" | "matrix") => Ok(v["data"]["result"].as_array().cloned().unwrap_or_default()),
            _ => Ok(vec![v["data"]["result"].clone()]),
        }
    }

    fn value(&self, expr: &str) -> Option<f64> {
        let r = self.query(expr).ok()?;
        r.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The shipped scrape config, made to scrape `targets` every second and to load the
/// shipped rules: the live test runs the file operators copy, not one of its own.
fn live_config(targets: &[String]) -> String {
    let shipped = std::fs::read_to_string(deploy("prometheus/prometheus.yml")).unwrap();
    let rules = deploy("prometheus/skiff.rules.yml");
    let list = targets.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
    let mut config = shipped.clone();
    for (from, to) in [
        ("scrape_interval: 15s", "scrape_interval: 1s".to_owned()),
        ("evaluation_interval: 15s", "evaluation_interval: 1s".to_owned()),
        ("- skiff.rules.yml", format!("- {}", rules.display())),
        ("[\"127.0.0.1:7777\"]", format!("[{list}]")),
    ] {
        assert!(config.contains(from), "deploy/prometheus/prometheus.yml no longer has {from:?}");
        config = config.replace(from, &to);
    }
    config
}

/// Every `expr` of the dashboard's panels, rows' nested panels included.
fn panel_exprs(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dash["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = stack.pop() {
        if let Some(nested) = p["panels"].as_array() {
            stack.extend(nested);
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            out.push((title, t["expr"].as_str().expect("a target without expr").to_owned()));
        }
    }
    out
}

/// A dashboard expression as Grafana would send it: every node, and a rate window
/// that holds several of this test's 1 s scrapes.
fn grafana_vars(expr: &str) -> String {
    expr.replace("$instance", ".+").replace("$__rate_interval", "1m")
}

/// The operands of an alert condition: the expression split at top-level `or`,
/// `and`, `unless`, then at top-level comparisons, number literals dropped.
/// `x > 0.25` returns `x`. An alert that is quiet (as every one should be here)
/// returns no series, which says nothing about whether its metric exists; its
/// operands must return series, so a misspelt or missing metric fails the test.
fn operands(expr: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let (mut depth, mut quoted) = (0i32, false);
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        match c {
            '"' => quoted = !quoted,
            '(' | '{' | '[' if !quoted => depth += 1,
            ')' | '}' | ']' if !quoted => depth -= 1,
            _ => {}
        }
        if depth == 0 && !quoted {
            let rest = &expr[i..];
            let word = [" or ", " and ", " unless "].into_iter().find(|w| rest.starts_with(w));
            let cmp = ["==", "!=", ">=", "<=", ">", "<"].into_iter().find(|w| rest.starts_with(w));
            if let Some(sep) = word.or(cmp) {
                parts.push(String::new());
                i += sep.len();
                continue;
            }
        }
        parts.last_mut().unwrap().push(c);
        i += 1;
    }
    parts.into_iter().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty() && p.parse::<f64>().is_err()).collect()
}

#[test]
fn operands_split_conditions_but_not_label_matchers() {
    assert_eq!(operands(r#"up{job="skiff"} == 0"#), [r#"up{job="skiff"}"#]);
    assert_eq!(operands("a == 0 or increase(b[5m]) > 0"), ["a", "increase(b[5m])"]);
    assert_eq!(
        operands(r#"histogram_quantile(0.99, sum by (le) (rate(x{a!="b>c"}[5m]))) > 0.25"#),
        [r#"histogram_quantile(0.99, sum by (le) (rate(x{a!="b>c"}[5m])))"#]
    );
    assert_eq!(operands("a / b >= 0.8"), ["a / b"]);
}

#[test]
fn prometheus_scrapes_skiff_and_every_panel_and_alert_returns_series() {
    const TEST: &str = "prometheus_scrapes_skiff_and_every_panel_and_alert_returns_series";
    if !tool_or_skip("prometheus", TEST) {
        return;
    }
    let single = Server::start();
    let redis = redis::Redis::start_or_skip(TEST);
    let node = redis.as_ref().map(|r| Server::start_with(&["--redis", &r.url()]));
    let mut targets = vec![single.addr.to_string()];
    targets.extend(node.iter().map(|n| n.addr.to_string()));
    let prom = Prometheus::start(&live_config(&targets));

    // A little load on each: users, messages over WebSocket, a few HTTP requests.
    let (cookies, _socks) = chat(&single, ["alice", "bob", "carol"], 5);
    for _ in 0..5 {
        single.get("/api/online", Some(&cookies[0]));
    }
    single.get("/api/user/bob", Some(&cookies[0]));
    single.get("/nope", None);
    let _cluster_chat = node.as_ref().map(|n| {
        assert!(wait_for(WAIT, || n.get("/healthz", None).status == 200), "the node never got in sync with Redis");
        let (cookies, socks) = chat(n, ["dave", "erin", "frank"], 3);
        n.get("/api/online", Some(&cookies[0]));
        socks
    });

    // Enough scrapes of every target for rates and increases (two samples in the
    // window at least), and a round of every rule evaluated after them.
    let n = targets.len() as f64;
    let scraped = wait_for(WAIT, || {
        prom.value(r#"count(min_over_time(up{job="skiff"}[1m]) == 1)"#) == Some(n)
            && prom.value(r#"min(count_over_time(skiff_broadcast_fanout_seconds_count[1m]))"#).is_some_and(|c| c >= 3.0)
            && prom.value("min(skiff_broadcast_fanout_seconds_count)").is_some_and(|c| c >= 3.0)
    });
    assert!(scraped, "prometheus did not scrape every node 3 times with the messages counted:\n{}", prom.log(0));
    let rules_ran = wait_for(WAIT, || {
        let v = prom.api("/api/v1/rules");
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect();
        !rules.is_empty() && rules.iter().all(|r| r["health"] != "unknown")
    });
    assert!(rules_ran, "the rules were never evaluated");

    if node.is_some() {
        let rtt = prom.value("sum(skiff_cluster_redis_roundtrip_seconds_count)").unwrap_or(0.0);
        assert!(rtt >= 3.0, "the cluster node timed {rtt} Redis round trips for three logins and messages");
    }

    let cluster_only = |expr: &str| expr.contains("skiff_cluster_");
    let mut failures = Vec::new();
    let mut evaluated = 0;

    let dash: Value = serde_json::from_str(&std::fs::read_to_string(deploy("grafana/skiff.json")).unwrap()).unwrap();
    let exprs = panel_exprs(&dash);
    assert!(exprs.len() >= 20, "the dashboard has {} expressions", exprs.len());
    for (title, expr) in exprs {
        if node.is_none() && cluster_only(&expr) {
            eprintln!("not evaluated without Redis: panel {title:?}: {expr}");
            continue;
        }
        evaluated += 1;
        match prom.query(&grafana_vars(&expr)) {
            Ok(r) if r.is_empty() => failures.push(format!("panel {title:?}: no series for {expr}")),
            Ok(_) => {}
            Err(e) => failures.push(format!("panel {title:?}: {expr}: {e}")),
        }
    }

    let rules = prom.api("/api/v1/rules");
    let alerts: Vec<Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .filter(|r| r["type"] == "alerting")
        .collect();
    let names: Vec<&str> = alerts.iter().map(|a| a["name"].as_str().unwrap()).collect();
    for wanted in [
        "SkiffDown",
        "SkiffStorageDegraded",
        "SkiffClusterDegraded",
        "SkiffSlowClientsDropped",
        "SkiffFanoutSlow",
        "SkiffDescriptorsNearLimit",
    ] {
        assert!(names.contains(&wanted), "no alert {wanted} in {names:?}");
    }
    for a in &alerts {
        let (name, expr) = (a["name"].as_str().unwrap(), a["query"].as_str().unwrap());
        // Prometheus evaluated it every second: an invalid one says so here.
        if a["health"] != "ok" {
            failures.push(format!("alert {name}: health {} ({})", a["health"], a["lastError"]));
        }
        if a["state"] != "inactive" {
            failures.push(format!("alert {name} is {} on a healthy, idle server", a["state"]));
        }
        if let Err(e) = prom.query(expr) {
            failures.push(format!("alert {name}: {expr}: {e}"));
        }
        for operand in operands(expr) {
            if node.is_none() && cluster_only(&operand) {
                eprintln!("not evaluated without Redis: alert {name}: {operand}");
                continue;
            }
            evaluated += 1;
            match prom.query(&operand) {
                Ok(r) if r.is_empty() => failures.push(format!("alert {name}: no series for {operand}")),
                Ok(_) => {}
                Err(e) => failures.push(format!("alert {name}: {operand}: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{} of {evaluated} expressions failed:\n{}", failures.len(), failures.join("\n"));
    eprintln!("{evaluated} panel and alert expressions returned series from {} skiff nodes", targets.len());
}
