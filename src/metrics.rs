//! The server's counters, and `/metrics` in the Prometheus text format rendered from
//! a snapshot of them. Counting happens where things happen; this module only
//! holds the numbers and prints them.

use std::collections::BTreeMap;
use std::fmt::Write;

/// Counters kept by the connection layer.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub accepted: u64,
    pub refused: u64,
    pub ws_opened: u64,
    pub deliveries: u64,
    pub slow_dropped: u64,
    /// Every byte read from clients: HTTP requests and WebSocket frames alike.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Connections now in the closing phase (a gauge).
    pub closing: u64,
    /// HTTP responses by status code.
    pub responses: BTreeMap<u16, u64>,
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

struct Page(String);

impl Page {
    fn metric(&mut self, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
        // Writing into a String cannot fail.
        let _ = writeln!(self.0, "# HELP skiff_{name} {help}\n# TYPE skiff_{name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(self.0, "skiff_{name}{labels} {v}");
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.metric(name, kind, help, &[("", value)]);
    }
}

pub fn render(s: &Snapshot) -> String {
    let st = s.stats;
    let cs = s.chat;
    let mut p = Page(String::with_capacity(2048));
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
    p.one(
        "broadcast_backlog_bytes",
        "gauge",
        "Broadcast bytes some client has yet to be sent (each frame counted once).",
        s.broadcast_backlog_bytes,
    );
    p.one("history_messages", "gauge", "Messages kept for v2 resume and /api/history.", s.history_messages);
    p.one("history_bytes", "gauge", "Memory the kept messages take (entries, frames, texts).", s.history_bytes);
    p.one("slow_clients_dropped_total", "counter", "WebSockets dropped for not reading.", st.slow_dropped);
    p.metric(
        "rate_limited_total",
        "counter",
        "Requests and messages refused by rate limits.",
        &[("{kind=\"message\"}", cs.rate_limited), ("{kind=\"http\"}", s.http_rate_limited)],
    );
    let statuses: Vec<(String, u64)> = st.responses.iter().map(|(s, n)| (format!("{{status=\"{s}\"}}"), *n)).collect();
    let statuses: Vec<(&str, u64)> = statuses.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    p.metric("http_responses_total", "counter", "HTTP responses by status.", &statuses);
    let actions: Vec<(String, u64)> = crate::chat::moderation::Action::ALL
        .iter()
        .map(|a| (format!("{{action=\"{}\"}}", a.label()), cs.moderation[*a as usize]))
        .collect();
    let actions: Vec<(&str, u64)> = actions.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    p.metric("moderation_total", "counter", "Operator actions taken with skiff ctl.", &actions);
    p.one("bytes_received_total", "counter", "Bytes read from clients.", st.bytes_in);
    p.one("bytes_sent_total", "counter", "Bytes written to clients.", st.bytes_out);
    // Which binary answers: after a hand-over, the new one.
    let version = format!("{{version=\"{}\"}}", crate::VERSION);
    p.metric("build_info", "gauge", "Always 1; the version is the label.", &[(&version, 1)]);
    if let Some(c) = s.cluster {
        p.one("cluster_up", "gauge", "1 while connected to Redis and in sync.", u64::from(c.up));
        p.one("cluster_online_users", "gauge", "Users with an open WebSocket on any node.", c.online_users);
        p.one("cluster_pending_commands", "gauge", "Redis commands sent and not yet answered.", c.pending_commands);
        p.one("cluster_syncs_total", "counter", "Times this node got in sync with Redis.", c.syncs);
    }
    p.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_has_help_and_type_and_http_is_the_remainder() {
        let mut stats = Stats { closing: 2, bytes_in: 77, ..Stats::default() };
        stats.responses.insert(404, 3);
        let chat = crate::chat::ChatStats::default();
        let text = render(&Snapshot {
            stats: &stats,
            chat: &chat,
            open_connections: 10,
            online_users: 5,
            sessions: 6,
            http_rate_limited: 0,
            broadcast_backlog_bytes: 0,
            history_messages: 0,
            history_bytes: 0,
            cluster: Some(ClusterGauges { up: true, online_users: 9, pending_commands: 0, syncs: 1 }),
        });
        assert!(text.contains("skiff_cluster_up 1\n") && text.contains("skiff_cluster_online_users 9\n"));
        assert!(text.contains("skiff_connections{kind=\"http\"} 3\n"));
        assert!(text.contains("skiff_connections{kind=\"websocket\"} 5\n"));
        assert!(text.contains("skiff_http_responses_total{status=\"404\"} 3\n"));
        assert!(text.contains("skiff_bytes_received_total 77\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} has no TYPE line");
        }
    }
}
