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
