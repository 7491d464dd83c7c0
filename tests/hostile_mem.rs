//! Hostile clients against the real skiff over raw sockets: what an unfinished
//! message costs the server, the process-wide memory budget, and the frame budget.
//! Memory is read from the server's /proc status (VmRSS); nothing here times anything.

mod common;
#[path = "common/raw.rs"]
mod raw;

use common::*;
use raw::Raw;
use skiff::ws::frame;
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

const MASK: [u8; 4] = [7, 1, 3, 5];

/// The first frame of a text message that is never finished (no FIN).
fn first_fragment(len: usize) -> Vec<u8> {
    let mut f = frame::client_frame(frame::TEXT, &vec![b'a'; len], MASK);
    f[0] &= 0x7f;
    f
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Sends a ping and reads until its pong: everything sent before it has been
/// taken in by the server. False if the socket closed or nothing came in time.
fn ping_through(r: &mut Raw, tag: u8) -> bool {
    r.send_frame(&frame::client_frame(frame::PING, &[tag], MASK));
    let pong = [0x8a, 0x01, tag];
    let (start, mut seen, mut chunk) = (Instant::now(), Vec::new(), [0u8; 65536]);
    while start.elapsed() < IO_TIMEOUT {
        match r.s.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => {
                seen.extend_from_slice(&chunk[..n]);
                if seen.windows(3).any(|w| w == pong) {
                    return true;
                }
                // Only the tail can still hold the start of a pong.
                let keep = seen.len().saturating_sub(2);
                seen.drain(..keep);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    false
}

/// `n` WebSockets, one user each.
fn sockets(srv: &Server, prefix: &str, n: usize) -> Vec<Raw> {
    (0..n).map(|i| Raw::open(srv, &srv.user(&format!("{prefix}{i}")), "/ws")).collect()
}

/// Settles the room's join traffic, so it is not counted as what the fragments cost.
fn quiet(socks: &mut [Raw]) {
    for (i, r) in socks.iter_mut().enumerate() {
        assert!(ping_through(r, (i % 200) as u8), "socket {i} answers a ping");
    }
}

/// An unfinished message costs about what arrived: 500 sockets each leave a 4 KiB
/// first fragment without its end. (Before skiff decoded frames itself, each held
/// the fragment three times over: ~13 KiB, and ~59 KiB at 16 KiB.)
#[test]
fn unfinished_fragmented_messages_cost_what_arrived() {
    const N: usize = 500;
    const FRAGMENT: usize = 4096;
    let srv = Server::start();
    let mut socks = sockets(&srv, "f", N);
    quiet(&mut socks);
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib(srv.child.id());
    for r in &mut socks {
        r.send_frame(&first_fragment(FRAGMENT));
    }
    for (i, r) in socks.iter_mut().enumerate() {
        assert!(ping_through(r, (i % 200) as u8), "socket {i}: a ping in the middle of a message is answered");
    }
    let after = rss_kib(srv.child.id());
    let per_socket = after.saturating_sub(before) as f64 * 1024.0 / N as f64;
    eprintln!("RSS {before} -> {after} KiB: {per_socket:.0} bytes per unfinished {FRAGMENT}-byte message");
    assert!(per_socket < 8.0 * 1024.0, "an unfinished {FRAGMENT}-byte message costs {per_socket:.0} bytes");
    // Still in the middle of their messages: one finishes, and the server speaks it.
    let mut first = frame::client_frame(frame::TEXT, br#"{"message":"do"#, MASK);
    first[0] &= 0x7f;
    let mut mid = frame::client_frame(0x0, b"n", MASK);
    mid[0] &= 0x7f;
    let last = frame::client_frame(0x0, br#"e"}"#, MASK);
    let mut fresh = Raw::open(&srv, &srv.user("finisher"), "/ws");
    fresh.send_frame(&[first, mid, last].concat());
    assert!(fresh.poll_until(IO_TIMEOUT, |r| r.acks() == 1), "a fragmented message completes: {:?}", fresh.texts);
}

fn metric(srv: &Server, name: &str) -> Option<u64> {
    let page = srv.get("/metrics", None).text();
    page.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Past the budget the biggest holders go (1008), the small ones stay, and an
/// ordinary client chatting meanwhile loses nothing.
#[test]
fn the_memory_budget_closes_the_biggest_holders_first() {
    let srv = Server::start_with(&["--memory-budget", "256K"]);
    let mut chat = srv.ws(&srv.user("chatter"));
    chat.set_timeout(IO_TIMEOUT);
    let mut small = sockets(&srv, "s", 10);
    let mut big = sockets(&srv, "b", 30);
    quiet(&mut small);
    quiet(&mut big);
    for r in &mut small {
        r.send_frame(&first_fragment(1024));
    }
    let mut said = 0;
    for (i, r) in big.iter_mut().enumerate() {
        r.send_frame(&first_fragment(14 * 1024));
        if i % 5 == 0 {
            chat.say(&format!("m{said}"));
            said += 1;
        }
    }
    let mut acks = 0;
    while acks < said {
        if chat.recv()["status"] == true {
            acks += 1;
        }
    }
    // Every close the server counted has reached its socket, twice in a row: the
    // last fragments may still be arriving and tip the count over again.
    let (start, mut agreed) = (Instant::now(), 0);
    let closed = loop {
        std::thread::sleep(Duration::from_millis(50));
        big.iter_mut().for_each(Raw::poll);
        let closed: Vec<usize> = (0..big.len()).filter(|&i| big[i].closed.is_some()).collect();
        let counted = metric(&srv, "skiff_memory_budget_closed_total");
        agreed = if counted == Some(closed.len() as u64) && !closed.is_empty() { agreed + 1 } else { 0 };
        if agreed == 2 || start.elapsed() > IO_TIMEOUT {
            break closed;
        }
    };
    assert!(!closed.is_empty(), "30 x 14 KiB held against a 256 KiB budget closes some");
    for &i in &closed {
        assert_eq!(big[i].closed, Some(1008), "big holder {i} is closed with 1008");
    }
    assert!(closed.len() < big.len(), "only as many as the budget needs are closed: {closed:?}");
    for (i, r) in small.iter_mut().enumerate() {
        assert!(ping_through(r, i as u8), "small holder {i} keeps its connection");
    }
    let held = metric(&srv, "skiff_client_memory_bytes").expect("skiff_client_memory_bytes");
    assert!(held <= 256 * 1024, "held {held} after shedding");
    assert_eq!(metric(&srv, "skiff_memory_budget_closed_total"), Some(closed.len() as u64));
    chat.say("after");
    assert_eq!(chat.recv_until(|v| v.get("status").is_some())["status"], true, "the chatter still chats");
}

/// Every frame counts: a flood of empty continuation frames is closed with 1008
/// however little each frame carries.
#[test]
fn an_empty_frame_flood_is_closed_with_1008() {
    let srv = Server::start_with(&["--limit-loopback"]);
    let mut r = Raw::open(&srv, &srv.user("flooder"), "/ws");
    let mut empty = frame::client_frame(0x0, b"", MASK);
    empty[0] &= 0x7f;
    let mut burst = first_fragment(1);
    for _ in 0..20_000 {
        burst.extend_from_slice(&empty);
    }
    r.s.set_nonblocking(false).unwrap();
    // The server may close before it has read it all.
    let _ = r.s.write_all(&burst);
    r.s.set_nonblocking(true).unwrap();
    assert!(r.poll_until(IO_TIMEOUT, |r| r.closed.is_some()), "the flood is closed");
    assert_eq!(r.closed, Some(1008));
    let mut ok = Raw::open(&srv, &srv.user("calm"), "/ws");
    ok.say("hello");
    assert!(ok.poll_until(IO_TIMEOUT, |r| r.acks() == 1), "a calm client is served: {:?}", ok.texts);
    assert_eq!(metric(&srv, "skiff_frame_flood_closed_total"), Some(1));
}
