//! A small run of skiff-bench against a real skiff: 20 clients for 2 s must lose
//! nothing. Performance figures come from full runs by hand (README), never from
//! timing assertions here.

mod common;

use common::Server;
use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff-bench")).args(args).output().expect("run skiff-bench");
    assert!(out.status.success(), "skiff-bench failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("--json output")
}

#[test]
fn twenty_clients_two_seconds_lose_nothing() {
    let srv = Server::start();
    let url = format!("http://{}", srv.addr);
    let pid = srv.child.id().to_string();
    let r = bench(&[
        "--url",
        &url,
        "--clients",
        "20",
        "--senders",
        "5",
        "--rate",
        "20",
        "--duration",
        "2",
        "--idle-secs",
        "0.5",
        "--server-pid",
        &pid,
        "--json",
    ]);
    let load = &r["load"];
    assert_eq!(r["setup"]["join_events_received"], 190, "the join storm: 20*19/2");
    assert!(load["sent"].as_u64().unwrap() >= 150, "{load}");
    assert_eq!(load["acked"], load["sent"]);
    assert_eq!(load["received"], load["expected_deliveries"]);
    assert_eq!(load["loss"], 0);
    assert!(load["latency_ms"]["samples"].as_u64().unwrap() > 0);
    assert!(load["server_cpu_s"].is_number(), "CPU read from /proc");
}

#[test]
fn refuses_to_run_against_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff-bench"))
        .args(["--url", "http://127.0.0.1:1", "--clients", "2", "--senders", "1", "--timeout", "5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stderr).trim().is_empty());
}

/// A protocol-agnostic broadcast server (every text frame goes to every client,
/// the sender included), the kind `--raw` is for: one thread per client.
fn echo_broadcast_server() -> std::net::SocketAddr {
    use std::sync::mpsc::{channel, Sender};
    use std::sync::{Arc, Mutex};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peers: Arc<Mutex<Vec<Sender<String>>>> = Arc::default();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(stream) = stream else { continue };
            let peers = peers.clone();
            std::thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(stream) else { return };
                let (tx, rx) = channel::<String>();
                peers.lock().unwrap().push(tx);
                let _ = ws.get_mut().set_read_timeout(Some(std::time::Duration::from_millis(5)));
                loop {
                    while let Ok(text) = rx.try_recv() {
                        if ws.send(tungstenite::Message::text(text)).is_err() {
                            return;
                        }
                    }
                    match ws.read() {
                        Ok(tungstenite::Message::Text(t)) => {
                            for p in peers.lock().unwrap().iter() {
                                let _ = p.send(t.as_str().to_owned());
                            }
                        }
                        Ok(tungstenite::Message::Close(_)) => return,
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(e))
                            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                        Err(_) => return,
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn raw_mode_counts_frames_from_any_broadcast_server() {
    let addr = echo_broadcast_server();
    let url = format!("ws://{addr}/");
    let r = bench(&[
        "--raw",
        &url,
        "--clients",
        "5",
        "--senders",
        "2",
        "--rate",
        "10",
        "--duration",
        "1",
        "--idle-secs",
        "0.2",
        "--json",
    ]);
    assert_eq!(r["mode"], "raw");
    let load = &r["load"];
    assert!(load["sent"].as_u64().unwrap() >= 10, "{load}");
    assert_eq!(load["loss"], 0, "{load}");
    assert_eq!(load["received"], load["expected_deliveries"], "self-deliveries are not counted");
}
