//! Upgrading in place (CONTRACT, "Upgrading in place"): SIGUSR2 re-executes the binary
//! at skiff's own path, here a copy in the test's directory that the test replaces
//! the way dpkg does (a new file renamed over it). The new file is the same build
//! with its version bytes changed ("0.1.0" -> "1.2.1"): rebuilding skiff with another
//! version would take minutes on a shared two-core machine, and a changed version is
//! enough to prove the process runs the new image, since only that image holds the
//! new string (`--version` of the file, `/metrics` of the process, /proc/PID/exe).

mod common;
#[path = "common/raw.rs"]
mod raw;
#[path = "common/redis.rs"]
mod redis;
#[path = "common/upgrade.rs"]
mod upgrade;

use common::*;
use raw::{flood, Raw};
use serde_json::Value;
use skiff::ws::frame;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};
use upgrade::*;

/// The issue's load: 1,000 clients, 10 of them sending 50 messages a second, and a
/// hand-over to a binary of another version in the middle. Every socket stays open,
/// every message reaches everyone exactly once and in the one order, every sender
/// gets an ack for each message, and nobody hears a leave.
#[test]
fn a_hand_over_under_load_drops_nothing_and_runs_the_new_binary() {
    const CLIENTS: usize = 1000;
    const SENDERS: usize = 10;
    const PER_SENDER: usize = 100;
    let (srv, exe) = start_copy(&[]);
    let pid = srv.pid();
    let started = Instant::now();
    let mut all = clients(&srv, "u", CLIENTS);
    eprintln!("{CLIENTS} clients up in {:.1} s", started.elapsed().as_secs_f64());
    let next = copy_binary(srv.dir.path(), "skiff.new", Some(NEW_VERSION));
    let out = std::process::Command::new(&next).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("skiff {NEW_VERSION}"));
    assert!(metrics(&srv).contains(&format!("skiff_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));

    let mut senders: Vec<Raw> = all.drain(..SENDERS).collect();
    // 50 a second each, on a fixed schedule; the hand-over 0.7 s in.
    flood(&mut senders, PER_SENDER, Duration::from_millis(20), || {
        std::thread::sleep(Duration::from_millis(700));
        install(&next, &exe);
        usr2(&srv);
    });
    let pause = pause_ms(&srv, 1);
    eprintln!("hand-over under load: pause {pause:.1} ms");

    let total = SENDERS * PER_SENDER;
    for c in all.iter_mut() {
        assert!(c.poll_until(Duration::from_secs(30), |c| c.messages().len() >= total), "got {}", c.messages().len());
    }
    for (k, c) in senders.iter_mut().enumerate() {
        let want = total - PER_SENDER;
        assert!(c.poll_until(Duration::from_secs(30), |c| c.messages().len() >= want && c.acks() >= PER_SENDER));
        assert_eq!(c.acks(), PER_SENDER, "sender {k}: one ack per message");
    }
    let order = all[0].messages();
    assert_eq!(order.len(), total);
    for k in 0..SENDERS {
        let mine: Vec<&String> = order.iter().filter(|m| m.starts_with(&format!("s{k}-"))).collect();
        let want: Vec<String> = (0..PER_SENDER).map(|i| format!("s{k}-{i}")).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>(), "sender {k}'s messages, once each, in order");
    }
    for (i, c) in all.iter().enumerate() {
        assert_eq!(c.closed, None, "client {i} was closed");
        assert_eq!(c.messages(), order, "client {i} saw another order");
        if c.events("leave") > 0 {
            let log = srv.stderr();
            let why: Vec<&str> = log.lines().filter(|l| l.contains(" left ") || l.contains("WARN")).collect();
            panic!("client {i} heard {} leaves; the server said:\n{}", c.events("leave"), why.join("\n"));
        }
    }
    for (k, c) in senders.iter().enumerate() {
        let own = format!("s{k}-");
        let others: Vec<String> = order.iter().filter(|m| !m.starts_with(&own)).cloned().collect();
        assert_eq!(c.closed, None);
        assert_eq!(c.messages(), others, "sender {k}");
    }
    // The same process, now running the new file.
    assert_eq!(srv.pid(), pid);
    let m = metrics(&srv);
    assert!(m.contains(&format!("skiff_build_info{{version=\"{NEW_VERSION}\"}} 1")), "{m}");
    assert!(m.contains(&format!("skiff_connections{{kind=\"websocket\"}} {CLIENTS}\n")), "{m}");
    let image = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(image, exe, "the running image is the file now at the path");
    assert!(srv.stderr().contains(&format!("skiff {NEW_VERSION} took over")));
}

/// A socket whose receive buffer is tiny, so what the server owes it stays in the
/// server's own queue instead of the kernel's.
fn stalled_socket(srv: &Server) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(2048).unwrap();
    sock.connect(&srv.addr.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

fn pipelined(reqs: &[(&str, &str, Option<&str>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (method, path, body) in reqs {
        out.extend_from_slice(format!("{method} {path} HTTP/1.1\r\nHost: t\r\n").as_bytes());
        match body {
            Some(b) => out.extend_from_slice(format!("Content-Length: {}\r\n\r\n{b}", b.len()).as_bytes()),
            None => out.extend_from_slice(b"\r\n"),
        }
    }
    out
}

fn statuses(s: &mut TcpStream, n: usize) -> Vec<u16> {
    (0..n).map(|_| read_response(s).map_or(0, |r| r.status)).collect()
}

/// What is in flight at the exec crosses it: pipelined requests (one waiting on
/// storage), a request half received, a reader that stopped reading with the
/// server's queue full for it, a fragmented message, a v2 client's ids.
#[test]
fn requests_a_half_request_a_stalled_reader_and_a_fragment_cross_the_exec() {
    let (srv, exe) = start_copy(&[]);
    let ann = srv.user("ann");
    let mut ann_ws = Raw::open(&srv, &ann, "/ws");
    let mut slow = Raw::open_on(stalled_socket(&srv), &srv.user("slow"), "/ws");
    let mut cid = Raw::open(&srv, &srv.user("cid"), "/ws?v=2");
    let mut fr = Raw::open(&srv, &srv.user("fr"), "/ws");
    let online_before = srv.get("/api/online", Some(&ann)).json();

    // The stalled reader falls behind by far more than the kernel holds for it.
    // The kernel's buffers for it grow as they fill: send until the server's own
    // queue holds a good part (well below the 1 MiB at which it would be dropped).
    // 4-byte characters: the longest message the server takes, in bytes.
    let big = "\u{1F600}".repeat(290);
    let backlog = |m: &str| -> u64 {
        let line = m.lines().find(|l| l.starts_with("skiff_broadcast_backlog_bytes ")).unwrap();
        line.split(' ').nth(1).unwrap().parse().unwrap()
    };
    let mut sent = 0;
    while backlog(&metrics(&srv)) < 100_000 {
        assert!(sent < 8000, "the server never held a backlog for the stalled reader");
        for _ in 0..50 {
            ann_ws.say(&format!("{sent} {big}"));
            sent += 1;
        }
        assert!(ann_ws.poll_until(Duration::from_secs(20), |c| c.acks() >= sent));
        for c in [&mut cid, &mut fr] {
            assert!(c.poll_until(Duration::from_secs(10), |c| c.messages().len() >= sent));
        }
    }
    eprintln!("{sent} messages sent, {} bytes queued in skiff for the stalled reader", backlog(&metrics(&srv)));
    let last_id = cid.texts.iter().filter_map(|v| v["id"].as_u64()).max().unwrap();

    // A message in two fragments, the first before the exec.
    let mut first = frame::client_frame(frame::TEXT, br#"{"message":"frag"#, [9, 9, 9, 9]);
    first[0] &= 0x7f;
    fr.send_frame(&first);
    // A request cut in the middle of its head.
    let mut half = srv.connect();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    // Pipelined, the first one waiting on the disk while the signal comes.
    let mut before = srv.connect();
    let body = r#"{"username":"pip1"}"#;
    before
        .write_all(&pipelined(&[
            ("POST", "/api/register", Some(body)),
            ("GET", "/healthz", None),
            ("GET", "/nope", None),
        ]))
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));

    install(&copy_binary(srv.dir.path(), "skiff.new", Some(NEW_VERSION)), &exe);
    usr2(&srv);
    // Pipelined into the exec itself.
    let mut during = srv.connect();
    let body = r#"{"username":"pip2"}"#;
    during
        .write_all(&pipelined(&[
            ("GET", "/healthz", None),
            ("POST", "/api/register", Some(body)),
            ("GET", "/healthz", None),
        ]))
        .unwrap();
    let pause = pause_ms(&srv, 1);
    eprintln!("pause {pause:.1} ms");

    assert_eq!(statuses(&mut before, 3), [201, 200, 404]);
    assert_eq!(statuses(&mut during, 3), [200, 201, 200]);
    half.write_all(b"st: t\r\n\r\n").unwrap();
    assert_eq!(statuses(&mut half, 1), [200]);
    fr.send_frame(&frame::client_frame(0x0, br#"ment"}"#, [3, 3, 3, 3]));
    assert!(ann_ws.poll_until(Duration::from_secs(10), |c| c.messages().last().map(String::as_str) == Some("fragment")));

    // Everything the stalled reader was owed arrives now, once, in order, then the rest.
    ann_ws.say("after");
    let want: Vec<String> =
        (0..sent).map(|i| format!("{i} {big}")).chain(["fragment".into(), "after".into()]).collect();
    assert!(
        slow.poll_until(Duration::from_secs(20), |c| c.messages().len() >= want.len()),
        "{}",
        slow.messages().len()
    );
    assert_eq!(slow.messages(), want);
    assert!(cid.poll_until(Duration::from_secs(10), |c| c.messages().len() >= sent + 2));
    let ids: Vec<u64> = cid.texts.iter().filter_map(|v| v["id"].as_u64()).filter(|&id| id > last_id).collect();
    assert_eq!(ids, [last_id + 1, last_id + 2], "the next ids follow on");
    for c in [&ann_ws, &slow, &cid, &fr] {
        assert_eq!(c.closed, None);
        assert_eq!((c.events("leave"), c.events("join")), (0, c.events("join")));
    }
    assert_eq!(fr.events("leave"), 0);
    assert_eq!(srv.get("/api/online", Some(&ann)).json(), online_before, "the room, in connect order");
    assert_eq!(srv.get("/healthz", None).status, 200);
    assert!(metrics(&srv).contains(&format!("skiff_build_info{{version=\"{NEW_VERSION}\"}} 1")));
}

/// The new binary is missing, or is no binary at all: the exec fails, the old
/// process logs why and serves on, storage included; the next hand-over works.
#[test]
fn a_missing_or_broken_binary_leaves_the_old_process_serving() {
    let (srv, exe) = start_copy(&[]);
    let cookie = srv.user("ann");
    let mut ws = Raw::open(&srv, &cookie, "/ws");
    let kept = srv.dir.path().join("skiff.kept");
    std::fs::rename(&exe, &kept).unwrap();
    usr2(&srv);
    wait_log(&srv, "hand-over not done");
    let junk = srv.dir.path().join("skiff.junk");
    std::fs::write(&junk, b"not an executable").unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o755)).unwrap();
    install(&junk, &exe);
    usr2(&srv);
    assert!(wait_for(Duration::from_secs(10), || log_count(&srv, "hand-over not done") == 2), "{}", srv.stderr());
    assert!(srv.stderr().contains("cannot start: Exec format error"), "the failure is named: {}", srv.stderr());
    ws.say("still here");
    assert!(ws.poll_until(Duration::from_secs(10), |c| c.acks() == 1));
    assert_eq!(ws.closed, None);
    // Storage was drained for the exec; it writes again.
    srv.user("bob");
    install(&kept, &exe);
    usr2(&srv);
    pause_ms(&srv, 1);
    ws.say("moved");
    assert!(ws.poll_until(Duration::from_secs(10), |c| c.acks() == 2));
    assert_eq!(ws.closed, None);
}

/// A wrapper at skiff's path that spoils the hand-over on its way (a byte of
/// the state, or its format version) and then runs the real binary: that one closes
/// the WebSockets with 1001 and serves on, with the sessions saved on disk.
fn spoiled_hand_over(spoil: &str) {
    let (srv, exe) = start_copy(&[]);
    let cookie = srv.user("ann");
    let mut ws = Raw::open(&srv, &cookie, "/ws");
    let real = copy_binary(srv.dir.path(), "skiff.real", None);
    let script = format!(
        "#!/bin/sh\nfd=${{SKIFF_HANDOVER#*memfd=}}; fd=${{fd%%,*}}; f=/proc/self/fd/$fd\n{spoil}\nexec {} \"$@\"\n",
        real.display()
    );
    let wrapper = srv.dir.path().join("skiff.wrapper");
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    install(&wrapper, &exe);
    usr2(&srv);
    assert!(ws.poll_until(Duration::from_secs(20), |c| c.closed.is_some()));
    assert_eq!(ws.closed, Some(1001));
    wait_log(&srv, "hand-over state unreadable");
    // The listener never closed, and the session still opens a WebSocket.
    assert_eq!(srv.get("/healthz", None).status, 200);
    let mut again = Raw::open(&srv, &cookie, "/ws");
    again.say("back");
    assert!(again.poll_until(Duration::from_secs(10), |c| c.acks() == 1));
}

#[test]
fn a_corrupt_state_closes_websockets_1001_and_serves_on() {
    spoiled_hand_over(
        "size=$(stat -L -c %s $f); printf '\\377' | dd of=$f bs=1 seek=$((size - 9)) conv=notrunc 2>/dev/null",
    );
}

/// A state format from a later skiff (127; this one reads 1 and 2).
#[test]
fn another_state_version_closes_websockets_1001_and_serves_on() {
    spoiled_hand_over(
        "n=$(od -An -tu4 -j16 -N4 $f | tr -d ' '); printf '\\177' | dd of=$f bs=1 seek=$((28 + 5 * n)) conv=notrunc 2>/dev/null",
    );
}

/// Twenty hand-overs in a row leak no descriptor and no memory.
#[test]
fn twenty_hand_overs_leak_no_descriptor_and_no_memory() {
    let (srv, _exe) = start_copy(&[]);
    let pid = srv.pid();
    let mut ws = clients(&srv, "t", 10);
    let mut first = None;
    let mut sent = [0; 10];
    for n in 1..=20 {
        usr2(&srv);
        pause_ms(&srv, n);
        let c = &mut ws[n % 10];
        c.say(&format!("m{n}"));
        sent[n % 10] += 1;
        let want = sent[n % 10];
        assert!(c.poll_until(Duration::from_secs(10), |c| c.acks() == want), "hand-over {n}");
        let now = (fd_count(pid), rss_kib(pid));
        first.get_or_insert(now);
    }
    let (fds, rss) = (fd_count(pid), rss_kib(pid));
    let (fds1, rss1) = first.unwrap();
    eprintln!("after 1 hand-over: {fds1} fds, {rss1} KiB; after 20: {fds} fds, {rss} KiB");
    assert_eq!(fds, fds1, "descriptors leaked");
    assert!(rss < rss1 + 8 * 1024, "memory grew from {rss1} to {rss} KiB");
    for c in ws.iter_mut() {
        c.poll();
        assert_eq!(c.closed, None);
        assert_eq!(c.events("leave"), 0);
    }
}

/// deploy/debian/postinst reloads instead of restarting only when the running
/// binary holds this name (an older one does not know SIGUSR2, which would kill it).
#[test]
fn the_binary_carries_the_marker_the_package_scripts_look_for() {
    let bin = std::fs::read(env!("CARGO_BIN_EXE_skiff")).unwrap();
    assert!(bin.windows(skiff::handover::ENV.len()).any(|w| w == skiff::handover::ENV.as_bytes()));
    let postinst = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/debian/postinst")).unwrap();
    assert!(postinst.contains(&format!("grep -qa {} ", skiff::handover::ENV)), "{postinst}");
}

/// Cluster mode: node A hands over in the middle of a flood sent through both nodes
/// while node B carries on. Nobody, on either node, hears a leave or a join; every
/// message reaches every client once, in the one global order; every sender gets an
/// ack for each of its messages (none `unavailable`: input waits while the new image
/// syncs); A stays the same node in Redis and runs the new binary.
#[test]
fn a_cluster_node_hands_over_and_nobody_anywhere_notices() {
    const PER_NODE: usize = 30;
    const SENDERS: usize = 3;
    const PER_SENDER: usize = 100;
    let Some(redis) = redis::Redis::start_or_skip("a_cluster_node_hands_over_and_nobody_anywhere_notices") else {
        return;
    };
    let url = redis.url();
    let (a, exe) = start_copy(&["--redis", &url]);
    let b = Server::start_with(&["--redis", &url]);
    let node_id = |srv: &Server| {
        let line = wait_log(srv, "in sync as node ");
        line.split("in sync as node ").nth(1).unwrap().split(':').next().unwrap().to_owned()
    };
    let a_node = node_id(&a);
    node_id(&b);
    let mut on_a = clients(&a, "a", PER_NODE);
    let mut on_b = clients(&b, "b", PER_NODE);
    let everyone = 2 * PER_NODE;
    let watcher = a.user("watcher");
    let online =
        |srv: &Server| srv.get("/api/online", Some(&watcher)).json()["online_clients"].as_array().map_or(0, Vec::len);
    assert!(wait_for(Duration::from_secs(10), || online(&a) == everyone && online(&b) == everyone));
    // What came before the hand-over (joins while setting up) is not looked at.
    std::thread::sleep(Duration::from_millis(300));
    for c in on_a.iter_mut().chain(on_b.iter_mut()) {
        c.poll();
        c.texts.clear();
    }
    let next = copy_binary(a.dir.path(), "skiff.new", Some(NEW_VERSION));
    let mut senders: Vec<Raw> = on_a.drain(..SENDERS).chain(on_b.drain(..SENDERS)).collect();
    // 50 a second each, on a fixed schedule; the hand-over 0.7 s in.
    flood(&mut senders, PER_SENDER, Duration::from_millis(20), || {
        std::thread::sleep(Duration::from_millis(700));
        install(&next, &exe);
        usr2(&a);
    });
    let pause = pause_ms(&a, 1);
    eprintln!("cluster hand-over under load: pause {pause:.1} ms");

    let total = 2 * SENDERS * PER_SENDER;
    let mut listeners: Vec<&mut Raw> = on_a.iter_mut().chain(on_b.iter_mut()).collect();
    for c in listeners.iter_mut() {
        assert!(c.poll_until(Duration::from_secs(30), |c| c.messages().len() >= total), "got {}", c.messages().len());
    }
    let order = listeners[0].messages();
    assert_eq!(order.len(), total, "every message once");
    for k in 0..2 * SENDERS {
        let mine: Vec<&String> = order.iter().filter(|m| m.starts_with(&format!("s{k}-"))).collect();
        let want: Vec<String> = (0..PER_SENDER).map(|i| format!("s{k}-{i}")).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>(), "sender {k}'s messages, once each, in order");
    }
    for (i, c) in listeners.iter().enumerate() {
        assert_eq!(c.closed, None, "listener {i} was closed");
        assert_eq!(c.messages(), order, "listener {i} saw another order");
        assert_eq!((c.events("leave"), c.events("join")), (0, 0), "listener {i} heard a leave or a join");
    }
    for (k, c) in senders.iter_mut().enumerate() {
        let own = format!("s{k}-");
        let others: Vec<String> = order.iter().filter(|m| !m.starts_with(&own)).cloned().collect();
        assert!(c.poll_until(Duration::from_secs(30), |c| c.messages().len() >= others.len() && c.acks() >= PER_SENDER));
        assert_eq!(c.acks(), PER_SENDER, "sender {k}: one ack per message");
        assert!(!c.texts.iter().any(|v| v["status"] == false), "sender {k} got a refusal: {:?}", c.texts);
        assert_eq!(c.closed, None);
        assert_eq!(c.messages(), others, "sender {k}");
        assert_eq!((c.events("leave"), c.events("join")), (0, 0), "sender {k} heard a leave or a join");
    }
    // The same process and the same node, running the new file.
    assert!(a.stderr().contains(&format!("skiff {NEW_VERSION} took over")));
    let syncs: Vec<String> = a.stderr().lines().filter(|l| l.contains("in sync as node ")).map(str::to_owned).collect();
    assert!(syncs.len() >= 2, "the new image synced again: {syncs:?}");
    assert!(syncs.iter().all(|l| l.contains(&format!("in sync as node {a_node}:"))), "{syncs:?}");
    let nodes = redis.cmd(&["SCARD", "skiff:nodes"]);
    assert_eq!(nodes, "2", "no third node appeared in Redis");
    let m = metrics(&a);
    assert!(m.contains(&format!("skiff_build_info{{version=\"{NEW_VERSION}\"}} 1")), "{m}");
    assert_eq!((online(&a), online(&b)), (everyone, everyone), "everyone still online on both nodes");
}

/// skiff's own TLS: a rustls session cannot cross an exec, so TLS connections are
/// closed with 1001 before it (README "Upgrading without downtime"). The listener
/// stays open, sessions survive, and the client that reconnects chats on.
#[test]
fn tls_connections_close_1001_before_the_exec_and_reconnect() {
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
    use std::sync::Arc;
    use tungstenite::client::IntoClientRequest;
    use tungstenite::Message;

    let certs = tempfile::tempdir().unwrap();
    let files = TlsFiles::new(certs.path());
    let (srv, exe) = start_copy(&files.args());
    let mut roots = RootCertStore::empty();
    roots.add(files.der.clone()).unwrap();
    let client = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let connect = || {
        let conn = ClientConnection::new(client.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
        StreamOwned::new(conn, srv.connect())
    };
    let post = |path: &str, body: String| {
        let mut s = connect();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(format!("{head}{body}").as_bytes()).unwrap();
        read_response(&mut s).expect("a response over TLS")
    };
    let user = |name: &str| {
        let r = post("/api/register", serde_json::json!({ "username": name }).to_string());
        assert_eq!(r.status, 201);
        let key = r.json()["key"].as_str().unwrap().to_owned();
        post("/api/login", serde_json::json!({ "key": key }).to_string()).cookie().unwrap()
    };
    let wss = |cookie: &str| {
        let mut req = format!("wss://localhost:{}/ws", srv.addr.port()).into_client_request().unwrap();
        req.headers_mut().insert("Cookie", cookie.parse().unwrap());
        tungstenite::client(req, connect()).expect("wss handshake").0
    };
    let close_code = |ws: &mut tungstenite::WebSocket<StreamOwned<ClientConnection, TcpStream>>| loop {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(e) => panic!("no close frame before the end: {e}"),
        }
    };
    let (ann, bob) = (user("ann"), user("bob"));
    let mut a = wss(&ann);
    let mut b = wss(&bob);
    let next = copy_binary(srv.dir.path(), "skiff.new", Some(NEW_VERSION));
    install(&next, &exe);
    usr2(&srv);
    assert_eq!(close_code(&mut a), Some(1001));
    assert_eq!(close_code(&mut b), Some(1001));
    wait_log(&srv, "TLS connections closed (1001)");
    wait_log(&srv, &format!("skiff {NEW_VERSION} took over"));
    // The same listener serves TLS on, and the sessions came across.
    let mut a = wss(&ann);
    a.send(Message::text(r#"{"message": "after the upgrade"}"#)).unwrap();
    let ack = loop {
        match a.read().expect("an ack") {
            Message::Text(t) => break serde_json::from_str::<Value>(t.as_str()).unwrap(),
            _ => continue,
        }
    };
    assert_eq!(ack, serde_json::json!({"status": true}));
}
