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
