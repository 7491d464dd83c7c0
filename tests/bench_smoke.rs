//! A small run of skiff-bench against a real skiff: 20 clients for 2 s must lose
//! nothing, and a registration flood beside 10 clients gets nothing but 201s. Performance figures come from full runs by hand (README), never from
//! timing assertions here. Also the command line's own contract: errors and exits.

mod common;

use common::Server;
use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff-bench")).args(args).output().expect("run skiff-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "skiff-bench failed: {stderr}");
    assert!(!stderr.contains('\x1b'), "no terminal escapes into a pipe: {stderr:?}");
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
    assert_eq!(load["acked"], load["sent"], "every ack is waited for");
    assert_eq!(load["unacked"], 0);
    assert_eq!(load["received"], load["expected_deliveries"]);
    assert_eq!(load["loss"], 0);
    assert!(load["latency_ms"]["samples"].as_u64().unwrap() > 0);
    assert!(load["server_cpu_s"].is_number(), "CPU read from /proc");
}

#[test]
fn https_urls_speak_tls_to_a_skiff_with_its_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let files = common::TlsFiles::new(dir.path());
    let srv = Server::start_in(dir, &files.args());
    let url = format!("https://{}", srv.addr);
    let r = bench(&[
        "--url",
        &url,
        "--clients",
        "10",
        "--senders",
        "2",
        "--rate",
        "20",
        "--duration",
        "1",
        "--idle-secs",
        "0.2",
        "--json",
    ]);
    let load = &r["load"];
    assert_eq!(r["setup"]["join_events_received"], 45, "{r}");
    assert!(load["sent"].as_u64().unwrap() >= 20, "{load}");
    assert_eq!((&load["acked"], &load["loss"]), (&load["sent"], &serde_json::json!(0)), "{load}");
    // And a plain URL to a TLS port gets nowhere: the scheme is what picks TLS.
    let out = Command::new(env!("CARGO_BIN_EXE_skiff-bench"))
        .args(["--url", &format!("http://{}", srv.addr), "--clients", "1", "--senders", "1", "--duration", "0.1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("bad status"), "{stderr}");
}

#[test]
fn a_registration_flood_beside_the_chat_creates_users_and_loses_nothing() {
    let srv = Server::start();
    let url = format!("http://{}", srv.addr);
    let r = bench(&[
        "--url",
        &url,
        "--clients",
        "10",
        "--senders",
        "2",
        "--rate",
        "10",
        "--duration",
        "1",
        "--idle-secs",
        "0.2",
        "--register-flood",
        "4",
        "--json",
    ]);
    let (load, flood) = (&r["load"], &r["register_flood"]);
    assert_eq!(load["loss"], 0, "{load}");
    assert_eq!(load["unacked"], 0, "{load}");
    assert_eq!(flood["clients"], 4, "{flood}");
    let created = flood["created"].as_u64().unwrap();
    assert!(created > 0, "{flood}");
    assert_eq!(flood["sent"].as_u64(), Some(created), "every request answered 201: {flood}");
    assert_eq!(flood["non_201"], 0, "{flood}");
    assert_eq!(flood["statuses"], serde_json::json!({ "201": created }), "{flood}");
    assert_eq!(flood["latency_ms"]["samples"].as_u64(), Some(created), "{flood}");
    assert!(flood["per_s"].as_f64().unwrap() > 0.0, "{flood}");
}

#[test]
fn without_a_flood_the_report_says_so() {
    let srv = Server::start();
    let url = format!("http://{}", srv.addr);
    let r =
        bench(&["--url", &url, "--clients", "2", "--senders", "1", "--duration", "0.2", "--idle-secs", "0", "--json"]);
    assert!(r["register_flood"].is_null(), "{r}");
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

#[test]
fn version_names_the_crate_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff-bench")).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("skiff-bench {}\n", env!("CARGO_PKG_VERSION")));
}

/// Runs skiff-bench with its open-file limit (soft and hard) at `nofile`, so that it
/// cannot raise it, against a listener that never accepts: sockets are all it needs.
fn bench_with_nofile(nofile: u64, clients: usize) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff-bench"));
    cmd.args(["--raw", &url, "--clients", &clients.to_string(), "--senders", "1", "--timeout", "10"]);
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
            match libc::setrlimit(libc::RLIMIT_NOFILE, &lim) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    cmd.output().unwrap()
}

#[test]
fn running_out_of_descriptors_says_which_limit_and_exits_cleanly() {
    // 30 clients under a limit of 32 pass the up-front check and hit EMFILE while
    // connecting; 100 are refused before any work.
    for (clients, cause) in [(30, "EMFILE"), (100, "need about")] {
        let out = bench_with_nofile(32, clients);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{clients} clients: {stderr}");
        assert!(stderr.contains(cause), "{clients} clients: {stderr}");
        assert!(stderr.contains("RLIMIT_NOFILE") && stderr.contains("ulimit -n"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
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

/// One run spread over two processes, as for more clients than one process can hold:
/// listeners connect first and only count; the sending run starts once they are in,
/// and tells them, through the stop file, how many messages to wait for. Against one
/// skiff named twice in `--url`, so the round-robin over nodes is exercised too.
#[test]
fn listeners_in_another_process_complete_the_run() {
    let srv = Server::start();
    let url = format!("http://{0},http://{0}", srv.addr);
    let pid = srv.child.id().to_string();
    let pids = format!("{pid},{pid}");
    let dir = tempfile::tempdir().unwrap();
    let (ready, stop) = (dir.path().join("ready"), dir.path().join("stop"));
    let listeners = Command::new(env!("CARGO_BIN_EXE_skiff-bench"))
        .args(["--role", "listeners", "--url", &url, "--server-pid", &pids, "--clients", "8", "--json"])
        .args(["--timeout", "60", "--ready-file", ready.to_str().unwrap(), "--stop-file", stop.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let all = bench(&[
        "--url",
        &url,
        "--server-pid",
        &pids,
        "--clients",
        "6",
        "--senders",
        "3",
        "--rate",
        "10",
        "--duration",
        "1",
        "--idle-secs",
        "0.2",
        "--timeout",
        "60",
        "--start-after",
        ready.to_str().unwrap(),
        "--done-file",
        stop.to_str().unwrap(),
        "--json",
    ]);
    let out = listeners.wait_with_output().unwrap();
    assert!(out.status.success(), "listeners: {}", String::from_utf8_lossy(&out.stderr));
    let l: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!((l["role"].as_str(), all["role"].as_str()), (Some("listeners"), Some("all")));
    let accepted = all["load"]["accepted"].as_u64().unwrap();
    assert!(accepted >= 20, "{all}");
    assert_eq!(l["load"]["accepted"].as_u64(), Some(accepted), "the stop file carries the count");
    assert_eq!(l["load"]["sent"], 0);
    // Every accepted message reaches the 5 other senders' peers here and all 8 there.
    assert_eq!(all["load"]["expected_deliveries"].as_u64(), Some(accepted * 5));
    assert_eq!(l["load"]["expected_deliveries"].as_u64(), Some(accepted * 8));
    assert_eq!((all["load"]["loss"].as_u64(), l["load"]["loss"].as_u64()), (Some(0), Some(0)));
    // The join storm of 14 clients, 14*13/2, split between the processes.
    assert_eq!(l["setup"]["join_events_expected"], 28, "8*7/2 before the others came");
    let joins = l["setup"]["join_events_total"].as_u64().unwrap() + all["setup"]["join_events_total"].as_u64().unwrap();
    assert_eq!(joins, 91, "{l} {all}");
    // Round-robin: clients alternate between the two listed nodes.
    for (r, clients) in [(&l, [4, 4]), (&all, [3, 3])] {
        let nodes = r["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 2);
        let per_node: Vec<u64> = nodes.iter().map(|n| n["clients"].as_u64().unwrap()).collect();
        assert_eq!(per_node, clients);
        let received: u64 = nodes.iter().map(|n| n["received"].as_u64().unwrap()).sum();
        assert_eq!(Some(received), r["load"]["received"].as_u64());
    }
    assert!(all["nodes"][0]["server_cpu_s"].is_number(), "{all}");
    assert!(all["redis"].is_null());
}
