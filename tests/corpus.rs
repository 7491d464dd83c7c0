//! Replays every fuzz corpus file through the same harness functions the fuzz
//! targets call, so CI checks the corpora (and every crash ever kept) on stable.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| run(&data));
        assert!(result.is_ok(), "{target}: {} failed", path.display());
        n += 1;
    }
    assert!(n > 0, "the {target} corpus is empty");
}

#[test]
fn http_request_corpus() {
    replay("http_request", skiff::harness::http_request);
}

#[test]
fn api_body_corpus() {
    replay("api_body", skiff::harness::api_body);
}

#[test]
fn cookie_header_corpus() {
    replay("cookie_header", skiff::harness::cookie_header);
}

#[test]
fn ws_message_corpus() {
    replay("ws_message", skiff::harness::ws_message);
}

#[test]
fn resume_corpus() {
    replay("resume", skiff::harness::resume);
}

#[test]
fn redis_reply_corpus() {
    replay("redis_reply", skiff::harness::redis_reply);
}

#[test]
fn connection_corpus() {
    replay("connection", skiff::harness::connection);
}

/// The structure-aware harness really reaches the room: a hand-written script of
/// two users logging in, upgrading and talking delivers messages.
#[test]
fn connection_script_delivers_messages() {
    // Setup made clients 0..3 (registrations). Then: login u0 (client 4), login u1
    // (client 5), upgrade u0 (client 6), upgrade u1 (client 7), and client 6 / 7 talk.
    let script = [0, 0, 0, 1, 1, 0, 1, 1, 2, 6, 3, 2, 7, 0, 2, 6, 10];
    let s = skiff::harness::connection_run(&script);
    assert_eq!(s.upgraded, 2);
    assert_eq!(s.accepted, 3);
    assert_eq!(s.delivered, 3, "each message reached the other client once");
}

#[test]
fn connection_cluster_corpus() {
    replay("connection_cluster", skiff::harness::connection_cluster);
}

/// Two nodes on the Redis stand-in: users on either node talk both ways, Redis
/// drops node 2's links, node 2 refuses a message while out of sync, comes back
/// after its backoff on the fake clock, and the room goes on in one order.
#[test]
fn connection_cluster_script_survives_a_dropped_link() {
    // Setup made clients 0..3 (registrations on node 1). An argument's low two
    // bits pick the user, the next one the node.
    let script = [
        0, 0, // login u0 on node 1 (client 4)
        0, 5, // login u1 on node 2 (client 5)
        1, 0, // upgrade u0 on node 1 (client 6)
        1, 5, // upgrade u1 on node 2 (client 7)
        2, 6, 0, // client 6 (node 1) says m0
        3, 7, 0, // client 7 (node 2) says m1
        12, 0, // both acks come back
        10, 1, // Redis drops both of node 2's links
        2, 7, 0, // client 7 says m2: node 2 is out of sync, "unavailable"
        12, 10, // 200 ms: node 2's backoff (100 ms) runs out; it reconnects and syncs
        2, 7, 0, // client 7 says m3
        2, 6, 0, // client 6 says m4
    ];
    let s = skiff::harness::connection_cluster_run(&script);
    assert_eq!(s.upgraded, 2);
    assert_eq!(s.accepted, 4, "all but the message sent while node 2 was out of sync");
    assert_eq!(s.delivered, 4, "each accepted message reached the other node's client once");
    assert_eq!(s.syncs, 3, "node 2 synced twice");
}
