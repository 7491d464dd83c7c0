//! The server's counters, and `/metrics` in the Prometheus text format (0.0.4)
//! rendered from a snapshot of them. Counting happens where things happen; this
//! module only holds the numbers and prints them. Every family gets its `# HELP`
//! and `# TYPE` lines, even while it has no sample yet.

pub mod fanout;
pub mod histogram;
pub mod process;
pub mod route;

pub use histogram::{Histogram, SharedHistogram};
pub use route::Route;

use std::collections::BTreeMap;
use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering};

/// Redis commands from sent to answered, observed by the cluster link where it
/// matches a reply to its command. One per process: a process is one node.
pub static REDIS_ROUNDTRIP: SharedHistogram = SharedHistogram::new(&histogram::LATENCY);

/// Counters kept by the connection layer.
#[derive(Debug, Clone)]
pub struct Stats {
    pub accepted: u64,
    pub refused: u64,
    pub ws_opened: u64,
    pub deliveries: u64,
    pub slow_dropped: u64,
    /// WebSockets closed for sending frames past their frame budget.
    pub frame_flood_closed: u64,
    /// Bytes clients make the server hold now (a gauge; `conn::memory`).
    pub client_memory: u64,
    /// The process-wide budget for `client_memory` (0: none).
    pub memory_budget: u64,
    /// Connections closed because the budget was spent, biggest holders first.
    pub memory_shed: u64,
    /// Every byte read from clients: HTTP requests and WebSocket frames alike.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Connections now in the closing phase (a gauge).
    pub closing: u64,
    /// HTTP responses by status code.
    pub responses: BTreeMap<u16, u64>,
    /// HTTP requests by route and status (101 upgrades included).
    pub requests: BTreeMap<(Route, u16), u64>,
    /// From a request's head parsed to its answer queued, by `Route as usize`.
    pub request_seconds: [Histogram; Route::ALL.len()],
    /// A chat message from the turn that read it to its last recipient's write.
    pub fanout_seconds: Histogram,
}

impl Stats {
    pub const fn new() -> Self {
        const REQUEST: Histogram = Histogram::new(&histogram::LATENCY);
        Stats {
            accepted: 0,
            refused: 0,
            ws_opened: 0,
            deliveries: 0,
            slow_dropped: 0,
            frame_flood_closed: 0,
            client_memory: 0,
            memory_budget: 0,
            memory_shed: 0,
            bytes_in: 0,
            bytes_out: 0,
            closing: 0,
            responses: BTreeMap::new(),
            requests: BTreeMap::new(),
            request_seconds: [REQUEST; Route::ALL.len()],
            fanout_seconds: Histogram::new(&histogram::LATENCY),
        }
    }

    /// One HTTP request answered with `status`, `elapsed` after its head was read.
    pub fn request_done(&mut self, route: Route, status: u16, elapsed: std::time::Duration) {
        let route = route.answered(status);
        *self.requests.entry((route, status)).or_default() += 1;
        self.request_seconds[route as usize].observe_duration(elapsed);
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

/// What the storage threads report, shared with them: they add, `/metrics` reads.
/// Per commit, never per message; no lock.
#[derive(Debug)]
pub struct StorageMetrics {
    /// One group commit: the transaction and its fsync.
    pub commit_seconds: SharedHistogram,
    /// Writes carried by one group commit.
    pub batch_size: SharedHistogram,
    /// Group commits that failed (disk full, read-only, I/O error): nothing applied.
    pub failed_commits: AtomicU64,
    /// Jobs the threads have taken off their queues; the loop counts what it put in.
    pub writes_taken: AtomicU64,
    pub reads_taken: AtomicU64,
}

impl StorageMetrics {
    pub const fn new() -> Self {
        StorageMetrics {
            commit_seconds: SharedHistogram::new(&histogram::LATENCY),
            batch_size: SharedHistogram::new(&histogram::BATCH),
            failed_commits: AtomicU64::new(0),
            writes_taken: AtomicU64::new(0),
            reads_taken: AtomicU64::new(0),
        }
    }
}

impl Default for StorageMetrics {
    fn default() -> Self {
        StorageMetrics::new()
    }
}

/// The storage side of a scrape.
#[derive(Debug, Clone)]
pub struct StorageGauges {
    pub commit_seconds: Histogram,
    pub batch_size: Histogram,
    pub failed_commits: u64,
    /// Writes handed to the writer thread and not yet taken into a commit.
    pub write_queue: u64,
    /// Lookups handed to the reader thread and not yet taken.
    pub read_queue: u64,
}

impl StorageGauges {
    /// `sent`: jobs the loop has handed to (writer, reader).
    pub fn read(m: &StorageMetrics, sent: (u64, u64)) -> Self {
        StorageGauges {
            commit_seconds: m.commit_seconds.snapshot(),
            batch_size: m.batch_size.snapshot(),
            failed_commits: m.failed_commits.load(Ordering::Relaxed),
            write_queue: sent.0.saturating_sub(m.writes_taken.load(Ordering::Relaxed)),
            read_queue: sent.1.saturating_sub(m.reads_taken.load(Ordering::Relaxed)),
        }
    }
}

/// Everything `/metrics` reports, gathered at the moment of the request.
pub struct Snapshot<'a> {
    pub stats: &'a Stats,
    pub chat: &'a crate::chat::ChatStats,
    pub open_connections: u64,
    pub online_users: u64,
    pub sessions: u64,
    pub http_rate_limited: u64,
    pub broadcast_backlog_bytes: u64,
    /// Messages the history ring keeps, and the bytes they take.
    pub history_messages: u64,
    pub history_bytes: u64,
    /// What `/healthz` says: storage (or, in cluster mode, Redis) can do all it promises.
    pub healthy: bool,
    pub storage: StorageGauges,
    pub process: process::Process,
    /// Cluster mode only.
    pub cluster: Option<ClusterGauges>,
}

/// A cluster node's link to Redis, for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClusterGauges {
    /// Connected and in sync.
    pub up: bool,
    /// Users online on every node.
    pub online_users: u64,
    /// Commands sent and not yet answered.
    pub pending_commands: u64,
    /// Times the node got in sync with Redis (1 + reconnects).
    pub syncs: u64,
}

/// A label value as the text format wants it: backslash, double quote and line
/// feed escaped.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `# HELP` text: backslash and line feed escaped (quotes stay as they are).
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

struct Page(String);

// Writing into a String cannot fail: the results of `writeln!` are ignored.
impl Page {
    /// The `# HELP` and `# TYPE` lines of family `name` (its full name).
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}\n# TYPE {name} {kind}", escape_help(help));
    }

    /// One sample; `labels` is empty or a whole `{...}`.
    fn sample(&mut self, name: &str, labels: &str, value: impl Display) {
        let _ = writeln!(self.0, "{name}{labels} {value}");
    }

    fn metric(&mut self, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
        let name = format!("skiff_{name}");
        self.family(&name, kind, help);
        for (labels, v) in samples {
            self.sample(&name, labels, v);
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.metric(name, kind, help, &[("", value)]);
    }

    /// A family from `/proc`, left out when it could not be read.
    fn process(&mut self, name: &str, kind: &str, help: &str, value: Option<impl Display>) {
        if let Some(v) = value {
            self.family(name, kind, help);
            self.sample(name, "", v);
        }
    }

    /// A histogram family: one series per `(labels, histogram)`, `labels` being
    /// `key="value"` pairs without braces (empty for none).
    fn histogram(&mut self, name: &str, help: &str, series: &[(&str, &Histogram)]) {
        let name = format!("skiff_{name}");
        self.family(&name, "histogram", help);
        for (labels, h) in series {
            let unit = h.buckets.unit;
            let sep = if labels.is_empty() { "" } else { "," };
            for (bound, n) in h.cumulative() {
                let le = bound.map_or("+Inf".to_owned(), |b| scaled(b, unit));
                let _ = writeln!(self.0, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {n}");
            }
            let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
            self.sample(&format!("{name}_sum"), &braces, scaled(h.sum(), unit));
            self.sample(&format!("{name}_count"), &braces, h.count());
        }
    }
}

/// A value observed in `unit`, in the exported base unit.
fn scaled(v: u64, unit: histogram::Unit) -> String {
    match unit {
        histogram::Unit::Seconds => format!("{}", v as f64 / 1e9),
        histogram::Unit::Count => v.to_string(),
    }
}

pub fn render(s: &Snapshot) -> String {
    let st = s.stats;
    let cs = s.chat;
    let mut p = Page(String::with_capacity(16 * 1024));
    // Connections in the WebSocket phase are exactly the room's members.
    let http = s.open_connections.saturating_sub(s.online_users + st.closing);
    p.metric(
        "connections",
        "gauge",
        "Open connections by kind.",
        &[("{kind=\"http\"}", http), ("{kind=\"websocket\"}", s.online_users), ("{kind=\"closing\"}", st.closing)],
    );
    p.one("online_users", "gauge", "Users with an open WebSocket.", s.online_users);
    p.one("sessions", "gauge", "Live sessions.", s.sessions);
    p.one("connections_accepted_total", "counter", "TCP connections accepted.", st.accepted);
    p.one("connections_refused_total", "counter", "Connections closed at once (max connections).", st.refused);
    p.one("websockets_opened_total", "counter", "WebSocket upgrades accepted.", st.ws_opened);
    p.one("messages_received_total", "counter", "Chat messages received.", cs.messages_in);
    p.one("messages_rejected_total", "counter", "Chat messages answered with an error ack.", cs.messages_rejected);
    p.one("messages_broadcast_total", "counter", "Chat messages accepted and broadcast.", cs.broadcasts);
    p.one("deliveries_total", "counter", "Frames queued to recipients by broadcasts.", st.deliveries);
    p.histogram(
        "broadcast_fanout_seconds",
        "A chat message from the loop turn that read it to its last recipient's bytes handed to the kernel.",
        &[("", &st.fanout_seconds)],
    );
    p.one(
        "broadcast_backlog_bytes",
        "gauge",
        "Broadcast bytes some client has yet to be sent (each frame counted once).",
        s.broadcast_backlog_bytes,
    );
    p.one("history_messages", "gauge", "Messages kept for v2 resume and /api/history.", s.history_messages);
    p.one("history_bytes", "gauge", "Memory the kept messages take (entries, frames, texts).", s.history_bytes);
    p.one("slow_clients_dropped_total", "counter", "WebSockets dropped for not reading.", st.slow_dropped);
    p.one(
        "client_memory_bytes",
        "gauge",
        "Bytes clients make the server hold: unfinished requests, frames and messages, queued output, held acks, TLS.",
        st.client_memory,
    );
    p.one("client_memory_budget_bytes", "gauge", "The process-wide budget for client_memory_bytes.", st.memory_budget);
    p.one(
        "memory_budget_closed_total",
        "counter",
        "Connections closed because clients held more than the memory budget, biggest first.",
        st.memory_shed,
    );
    p.one(
        "frame_flood_closed_total",
        "counter",
        "WebSockets closed (1008) for sending frames past their frame budget.",
        st.frame_flood_closed,
    );
    p.metric(
        "rate_limited_total",
        "counter",
        "Requests and messages refused by rate limits.",
        &[("{kind=\"message\"}", cs.rate_limited), ("{kind=\"http\"}", s.http_rate_limited)],
    );
    let statuses: Vec<(String, u64)> = st.responses.iter().map(|(s, n)| (format!("{{status=\"{s}\"}}"), *n)).collect();
    let statuses: Vec<(&str, u64)> = statuses.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    p.metric("http_responses_total", "counter", "HTTP responses by status.", &statuses);
    let requests: Vec<(String, u64)> = st
        .requests
        .iter()
        .map(|((r, s), n)| (format!("{{route=\"{}\",status=\"{s}\"}}", escape_label(r.label())), *n))
        .collect();
    let requests: Vec<(&str, u64)> = requests.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    p.metric(
        "http_requests_total",
        "counter",
        "HTTP requests by route template and status (WebSocket upgrades as 101).",
        &requests,
    );
    // Only routes that served something: an empty histogram per route is noise.
    let routes: Vec<(String, &Histogram)> = Route::ALL
        .iter()
        .map(|r| (format!("route=\"{}\"", escape_label(r.label())), &st.request_seconds[*r as usize]))
        .filter(|(_, h)| h.count() > 0)
        .collect();
    let routes: Vec<(&str, &Histogram)> = routes.iter().map(|(l, h)| (l.as_str(), *h)).collect();
    p.histogram(
        "http_request_duration_seconds",
        "HTTP requests from the head read to the answer queued, storage waits included, by route template.",
        &routes,
    );
    let actions: Vec<(String, u64)> = crate::chat::moderation::Action::ALL
        .iter()
        .map(|a| (format!("{{action=\"{}\"}}", a.label()), cs.moderation[*a as usize]))
        .collect();
    let actions: Vec<(&str, u64)> = actions.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    p.metric("moderation_total", "counter", "Operator actions taken with skiff ctl.", &actions);
    p.one("bytes_received_total", "counter", "Bytes read from clients.", st.bytes_in);
    p.one("bytes_sent_total", "counter", "Bytes written to clients.", st.bytes_out);
    p.one(
        "healthy",
        "gauge",
        "1 while /healthz answers ok: storage (or, in cluster mode, Redis) works.",
        u64::from(s.healthy),
    );
    let sg = &s.storage;
    p.histogram(
        "storage_commit_seconds",
        "One group commit of the storage writer: the transaction and its fsync.",
        &[("", &sg.commit_seconds)],
    );
    p.histogram("storage_batch_size", "Writes carried by one group commit.", &[("", &sg.batch_size)]);
    p.one(
        "storage_failures_total",
        "counter",
        "Group commits that failed (disk full, read-only, I/O error); their writes answered 503.",
        sg.failed_commits,
    );
    p.metric(
        "storage_queue_depth",
        "gauge",
        "Jobs handed to a storage thread and not yet taken.",
        &[("{thread=\"writer\"}", sg.write_queue), ("{thread=\"reader\"}", sg.read_queue)],
    );
    // Which binary answers: after a hand-over, the new one.
    let version = format!("{{version=\"{}\"}}", escape_label(crate::VERSION));
    p.metric("build_info", "gauge", "Always 1; the version is the label.", &[(&version, 1)]);
    if let Some(c) = s.cluster {
        p.one("cluster_up", "gauge", "1 while connected to Redis and in sync.", u64::from(c.up));
        p.one("cluster_online_users", "gauge", "Users with an open WebSocket on any node.", c.online_users);
        p.one("cluster_pending_commands", "gauge", "Redis commands sent and not yet answered.", c.pending_commands);
        p.one("cluster_syncs_total", "counter", "Times this node got in sync with Redis.", c.syncs);
        p.histogram(
            "cluster_redis_roundtrip_seconds",
            "Redis commands from sent to answered.",
            &[("", &REDIS_ROUNDTRIP.snapshot())],
        );
    }
    let pr = &s.process;
    p.process("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", pr.resident_bytes);
    p.process("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", pr.virtual_bytes);
    p.process(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        pr.cpu_seconds,
    );
    p.process("process_open_fds", "gauge", "Number of open file descriptors.", pr.open_fds);
    p.process("process_max_fds", "gauge", "Maximum number of open file descriptors.", pr.max_fds);
    p.process(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        pr.start_time_seconds,
    );
    p.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn snapshot<'a>(stats: &'a Stats, chat: &'a crate::chat::ChatStats, cluster: bool) -> Snapshot<'a> {
        let storage = StorageMetrics::new();
        storage.commit_seconds.observe_duration(Duration::from_millis(3));
        storage.batch_size.observe(5);
        storage.writes_taken.store(7, Ordering::Relaxed);
        Snapshot {
            stats,
            chat,
            open_connections: 10,
            online_users: 5,
            sessions: 6,
            http_rate_limited: 0,
            broadcast_backlog_bytes: 0,
            history_messages: 0,
            history_bytes: 0,
            healthy: true,
            storage: StorageGauges::read(&storage, (9, 0)),
            process: process::Process::read(),
            cluster: cluster.then_some(ClusterGauges { up: true, online_users: 9, pending_commands: 0, syncs: 1 }),
        }
    }

    /// The family a sample line belongs to: its name, less a histogram's suffix
    /// when the family is declared without it.
    fn family_of<'a>(text: &str, line: &'a str) -> &'a str {
        let name = line.split(['{', ' ']).next().unwrap();
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if text.contains(&format!("# TYPE {base} histogram\n")) {
                    return base;
                }
            }
        }
        name
    }

    #[test]
    fn every_sample_has_help_and_type_and_http_is_the_remainder() {
        let mut stats = Stats { closing: 2, bytes_in: 77, ..Stats::default() };
        stats.responses.insert(404, 3);
        stats.request_done(Route::User, 404, Duration::from_micros(700));
        stats.request_done(Route::Static, 404, Duration::from_micros(70));
        stats.fanout_seconds.observe_duration(Duration::from_millis(2));
        let chat = crate::chat::ChatStats::default();
        let text = render(&snapshot(&stats, &chat, true));
        assert!(text.contains("skiff_cluster_up 1\n") && text.contains("skiff_cluster_online_users 9\n"));
        assert!(text.contains("skiff_connections{kind=\"http\"} 3\n"));
        assert!(text.contains("skiff_connections{kind=\"websocket\"} 5\n"));
        assert!(text.contains("skiff_http_responses_total{status=\"404\"} 3\n"));
        assert!(text.contains("skiff_bytes_received_total 77\n"));
        assert!(text.contains("skiff_http_requests_total{route=\"/api/user/{name}\",status=\"404\"} 1\n"), "{text}");
        assert!(
            text.contains("skiff_http_requests_total{route=\"other\",status=\"404\"} 1\n"),
            "a missing file is other"
        );
        assert!(
            text.contains("skiff_http_request_duration_seconds_bucket{route=\"/api/user/{name}\",le=\"0.001\"} 1\n")
        );
        assert!(text.contains("skiff_http_request_duration_seconds_count{route=\"other\"} 1\n"));
        assert!(!text.contains("route=\"/ws\""), "routes that served nothing have no series");
        assert!(text.contains("skiff_broadcast_fanout_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("skiff_broadcast_fanout_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("skiff_broadcast_fanout_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("skiff_broadcast_fanout_seconds_sum 0.002\n"));
        assert!(text.contains("skiff_broadcast_fanout_seconds_count 1\n"));
        assert!(text.contains("skiff_storage_commit_seconds_count 1\n"));
        assert!(
            text.contains("skiff_storage_batch_size_bucket{le=\"4\"} 0\nskiff_storage_batch_size_bucket{le=\"8\"} 1\n")
        );
        assert!(text.contains("skiff_storage_queue_depth{thread=\"writer\"} 2\n"));
        assert!(text.contains("skiff_cluster_redis_roundtrip_seconds_count "));
        assert!(text.contains(&format!("skiff_build_info{{version=\"{}\"}} 1\n", crate::VERSION)));
        for family in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("\n{family} ")), "{family} missing");
        }
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP line");
                assert!(!declared.contains(&name.to_owned()), "{name} declared twice");
                declared.push(name.to_owned());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(!line.starts_with('#'), "a comment that is neither HELP nor TYPE: {line}");
            let name = family_of(&text, line);
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} has no TYPE line");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "{line}: value is not a number");
        }
    }

    #[test]
    fn without_cluster_mode_there_are_no_cluster_families() {
        let stats = Stats::default();
        let chat = crate::chat::ChatStats::default();
        let text = render(&snapshot(&stats, &chat, false));
        assert!(!text.contains("skiff_cluster_"));
        assert!(text.contains("# TYPE skiff_http_request_duration_seconds histogram\n"), "declared before any request");
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("line\nbreak"), "line\\nbreak");
        assert_eq!(escape_label("/api/user/{name}"), "/api/user/{name}", "braces need no escaping");
        assert_eq!(escape_help("a \"quoted\" back\\slash\nnext"), "a \"quoted\" back\\\\slash\\nnext");
        let mut p = Page(String::new());
        p.histogram("x", "with a\nbreak", &[(r#"k="v""#, &Histogram::new(&histogram::BATCH))]);
        assert!(p.0.starts_with("# HELP skiff_x with a\\nbreak\n# TYPE skiff_x histogram\n"), "{}", p.0);
        assert!(p.0.contains("skiff_x_bucket{k=\"v\",le=\"1\"} 0\n"));
        assert!(p.0.ends_with("skiff_x_sum{k=\"v\"} 0\nskiff_x_count{k=\"v\"} 0\n"));
    }
}
