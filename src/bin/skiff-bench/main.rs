//! skiff-bench: a WebSocket load generator for skiff (and, with `--raw`, for any
//! broadcast server). A run is four phases, each filling its part of the report:
//! setup (users, connections, the join storm), idle (the server's RSS), load (senders
//! at a fixed rate, then a bounded wait for every delivery and ack), and teardown.
//! With `--register-flood` a registration flood runs on its own thread alongside the
//! load phase (flood.rs), so one run shows what sign-ups do to chat latency.
//! Every phase has a deadline; the whole run stops by itself.
//!
//! Several `--url` nodes (a cluster sharing one room) get the clients round-robin, and
//! one run may span processes: `--role listeners` only connects and counts (setup,
//! then `listen`), beside a normal run that sends; files order the two (see args.rs).

mod args;
mod client;
mod flood;
mod hist;
mod http;
mod progress;
mod report;
mod storm;
mod sys;
mod tls;

use args::{Args, Role};
use client::Bench;
use report::Report;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

/// Handshakes under way at once: enough to keep the server's accept loop busy, few
/// enough to stay inside its listen backlog.
const MAX_IN_FLIGHT: usize = 256;
/// How often the file handshakes between processes look for their file.
const FILE_POLL: Duration = Duration::from_millis(50);
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

fn main() {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => return,
        Err(e) => {
            eprintln!("skiff-bench: {e}");
            std::process::exit(2);
        }
    };
    match run(&args) {
        Ok(report) if args.json => println!("{}", report.json(&args)),
        Ok(report) => report.print_table(&args),
        Err(e) => {
            progress::note(&format!("skiff-bench: {e}"));
            std::process::exit(1);
        }
    }
}

fn run(a: &Args) -> Result<Report, String> {
    sys::raise_nofile();
    sys::check_nofile(a.clients)?;
    let hard_stop = Instant::now() + a.timeout;
    if let Some(f) = &a.start_after {
        progress::show("wait", &format!("waiting for {}", f.display()));
        wait_for_file(f, hard_stop)?;
    }
    let rss_before = rss_of(a);
    let mut bench = Bench::new(a.raw, a.spin, a.presence.is_some(), a.clients, a.tls, a.rcvbuf)
        .map_err(|e| format!("epoll: {e}"))?;
    let setup = setup(a, &mut bench, hard_stop)?;
    let (idle, load, flood) = if a.role == Role::Listeners {
        let idle = report::Idle {
            node_rss_before_kib: rss_before,
            node_rss_users_kib: setup.node_rss_users_kib.clone(),
            node_rss_idle_kib: rss_of(a),
        };
        if let Some(f) = &a.ready_file {
            write_file(f, "ready\n")?;
        }
        (idle, listen(a, &mut bench, hard_stop)?, None)
    } else {
        let idle = idle(a, &mut bench, rss_before, setup.node_rss_users_kib.clone(), hard_stop);
        let flood = prepare_flood(a)?;
        let (load, flood) = load(a, &mut bench, flood, hard_stop);
        if let Some(f) = &a.done_file {
            write_file(f, &format!("{}\n", load.accepted))?;
        }
        (idle, load, flood)
    };
    let joins_total = bench.counts.joins;
    let storm = match a.storm_cmd {
        Some(_) => Some(storm::run(a, &mut bench, hard_stop)?),
        None => None,
    };
    let teardown_s = teardown(&mut bench);
    progress::clear();
    Ok(Report { setup, idle, load, flood, joins_total, teardown_s, storm })
}

fn rss_of(a: &Args) -> Vec<Option<u64>> {
    a.pids.iter().map(|&p| sys::server_rss_kib(p)).collect()
}

fn redis_cpu(a: &Args) -> Option<f64> {
    a.redis_pid.and_then(sys::server_cpu_seconds)
}

fn spent(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some(after? - before?)
}

/// Waits (bounded) until `f` exists: the other process's signal.
fn wait_for_file(f: &Path, until: Instant) -> Result<(), String> {
    while !f.exists() {
        if Instant::now() >= until {
            return Err(format!("{} did not appear before the --timeout", f.display()));
        }
        std::thread::sleep(FILE_POLL);
    }
    Ok(())
}

/// Writes `text` to `f` at once (a temporary file, renamed), so a reader polling for
/// `f` never sees it half written.
fn write_file(f: &Path, text: &str) -> Result<(), String> {
    let tmp = f.with_extension("tmp");
    std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, f)).map_err(|e| format!("{}: {e}", f.display()))
}

// --- setup -----------------------------------------------------------------------

fn setup(a: &Args, bench: &mut Bench, hard_stop: Instant) -> Result<report::Setup, String> {
    let t0 = Instant::now();
    let cookies = if a.raw {
        vec![String::new(); a.clients]
    } else {
        progress::show("setup", &format!("registering {} users", a.clients));
        http::setup_users(&a.targets, a.tls, &a.prefix, a.clients, a.setup_threads)?
    };
    let users_s = t0.elapsed().as_secs_f64();
    let node_rss_users_kib = rss_of(a);
    // The join storm's cost: the servers' CPU from the first connect to the last join.
    let (cpu0, redis0, t1) = (sys::cpu_of(&a.pids), redis_cpu(a), Instant::now());
    let connect_s = connect(a, bench, &cookies, hard_stop)?;
    let (joins_expected, joins_received) = join_storm(a, bench, hard_stop);
    Ok(report::Setup {
        users_s,
        node_rss_users_kib,
        connect_s,
        joins_expected,
        joins_received,
        joins_s: t1.elapsed().as_secs_f64(),
        node_cpu_s: sys::cpu_spent(&cpu0, &sys::cpu_of(&a.pids)),
        redis_cpu_s: spent(redis0, redis_cpu(a)),
        total_s: t0.elapsed().as_secs_f64(),
    })
}

fn upgrade_request(a: &Args, to: SocketAddr, cookie: &str) -> Vec<u8> {
    let cookie = if cookie.is_empty() { String::new() } else { format!("Cookie: {cookie}\r\n") };
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2tpZmYtYmVuY2gta2V5IQ==\r\n{cookie}\r\n",
        a.path, to
    )
    .into_bytes()
}

/// Client `i`'s local address. One source address has ~28,000 ephemeral ports, so
/// `--sources` spreads large runs over 127.0.0.2, 127.0.0.3, ...
fn source(a: &Args, i: usize) -> Ipv4Addr {
    if a.sources <= 1 {
        Ipv4Addr::LOCALHOST
    } else {
        Ipv4Addr::new(127, 0, 0, 2 + (i % a.sources) as u8)
    }
}

/// Opens every WebSocket; returns the seconds it took. The first synchronous
/// failure (out of descriptors or ports) ends the run with advice.
fn connect(a: &Args, bench: &mut Bench, cookies: &[String], hard_stop: Instant) -> Result<f64, String> {
    let t0 = Instant::now();
    let (mut next, mut error, mut shown) = (0, None, t0);
    progress::show("connect", &format!("opening {} WebSockets", a.clients));
    bench.run(hard_stop, |b| {
        while next < a.clients && b.in_flight() < MAX_IN_FLIGHT {
            let (node, to) = (next % a.targets.len(), a.targets[next % a.targets.len()]);
            if let Err(e) = b.connect(source(a, next), node, to, upgrade_request(a, to, &cookies[next])) {
                error = Some(sys::connect_error(next, a.clients, &e));
                return true;
            }
            next += 1;
        }
        if shown.elapsed() >= PROGRESS_EVERY {
            shown = Instant::now();
            progress::show("connect", &format!("{} of {} connected", b.open, a.clients));
        }
        b.open + b.failed >= a.clients
    });
    if let Some(e) = error {
        return Err(e);
    }
    if bench.open < a.clients {
        return Err(format!("only {} of {} clients connected ({} failed)", bench.open, a.clients, bench.failed));
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Waits for the join storm: each client sees everyone who connected after it,
/// N(N-1)/2 events (clients of other processes that connect later add theirs, which
/// the listeners' report counts but does not wait for). Returns (expected, received).
fn join_storm(a: &Args, bench: &mut Bench, hard_stop: Instant) -> (u64, u64) {
    let n = a.clients as u64;
    if a.presence.is_some() {
        // v2: over once every client's online list (or count) holds all N.
        progress::show("joins", &format!("waiting for {n} clients to see {n} online"));
        bench.run((Instant::now() + a.join_wait).min(hard_stop), |b| b.complete >= a.clients);
        return (n, bench.complete as u64);
    }
    let expected = if a.raw { 0 } else { n * (n - 1) / 2 };
    progress::show("joins", &format!("waiting for {expected} join events"));
    bench.run((Instant::now() + a.join_wait).min(hard_stop), |b| b.counts.joins >= expected);
    (expected, bench.counts.joins)
}

// --- idle, load, teardown --------------------------------------------------------

fn idle(
    a: &Args,
    bench: &mut Bench,
    rss_before: Vec<Option<u64>>,
    rss_users: Vec<Option<u64>>,
    hard_stop: Instant,
) -> report::Idle {
    progress::show("idle", &format!("{} clients connected, waiting {:.1} s", bench.open, a.idle.as_secs_f64()));
    bench.run((Instant::now() + a.idle).min(hard_stop), |_| false);
    report::Idle { node_rss_before_kib: rss_before, node_rss_users_kib: rss_users, node_rss_idle_kib: rss_of(a) }
}

/// `--role listeners` after setup: counts deliveries until the sending run's
/// `--done-file` (our `--stop-file`) appears with the number of accepted messages,
/// then waits (at most `--drain-secs`) for each of them on every client.
fn listen(a: &Args, bench: &mut Bench, hard_stop: Instant) -> Result<report::Load, String> {
    let stop = a.stop_file.as_deref().expect("validated: listeners have a --stop-file");
    bench.reset_load();
    let (t0, t0_ns, cpu_self0) = (Instant::now(), sys::now_ns(), sys::own_cpu_seconds());
    let (mut looked, mut shown) = (t0, t0);
    progress::show("listen", &format!("{} clients listening until {} appears", bench.open, stop.display()));
    bench.run(hard_stop, |b| {
        if shown.elapsed() >= PROGRESS_EVERY {
            shown = Instant::now();
            progress::show("listen", &format!("received {}, joins {}", b.counts.messages, b.counts.joins));
        }
        looked.elapsed() >= FILE_POLL && {
            looked = Instant::now();
            stop.exists()
        }
    });
    let load_s = t0.elapsed().as_secs_f64();
    let text =
        std::fs::read_to_string(stop).map_err(|_| format!("{} did not appear before the --timeout", stop.display()))?;
    let accepted: u64 = text.trim().parse().map_err(|_| format!("{}: not a count: {text:?}", stop.display()))?;
    let expected = accepted * a.clients as u64;
    progress::show("drain", &format!("waiting up to {:.1} s for {expected} deliveries", a.drain.as_secs_f64()));
    bench.run((Instant::now() + a.drain).min(hard_stop), |b| b.counts.messages >= expected);
    Ok(report::Load {
        sent: 0,
        acked: 0,
        nacked: 0,
        unacked: None,
        accepted,
        expected,
        received: bench.counts.messages,
        load_s,
        deliver_s: bench.last_delivery_ns.saturating_sub(t0_ns) as f64 / 1e9,
        start_ns: t0_ns,
        last_delivery_ns: bench.last_delivery_ns,
        hist: std::mem::replace(&mut bench.hist, hist::Histogram::new()),
        ack_hist: std::mem::replace(&mut bench.ack_hist, hist::Histogram::new()),
        server_cpu_s: None,
        node_cpu_s: vec![None; a.pids.len()],
        node_received: bench.node_messages.clone(),
        redis_cpu_s: None,
        bench_cpu_s: sys::own_cpu_seconds() - cpu_self0,
    })
}

/// Opens the flood's connections (if any) before the load phase, so their setup is
/// not part of what the chat clients measure.
fn prepare_flood(a: &Args) -> Result<Option<flood::Flood>, String> {
    if a.flood_clients == 0 {
        return Ok(None);
    }
    progress::show("flood", &format!("opening {} registration connections", a.flood_clients));
    let plan =
        flood::Plan { target: a.target, prefix: a.prefix.clone(), clients: a.flood_clients, secs: a.flood_duration() };
    flood::prepare(plan).map(Some)
}

fn load(
    a: &Args,
    bench: &mut Bench,
    flood: Option<flood::Flood>,
    hard_stop: Instant,
) -> (report::Load, Option<flood::Outcome>) {
    let (cpu_server0, redis0) = (sys::cpu_of(&a.pids), redis_cpu(a));
    let cpu_self0 = sys::own_cpu_seconds();
    bench.reset_load();
    let (t0, t0_ns) = (Instant::now(), sys::now_ns());
    let flood = flood.map(flood::Flood::start);
    offer(a, bench, t0, hard_stop);
    let load_s = t0.elapsed().as_secs_f64();
    let expected = drain(a, bench, hard_stop);
    // The flood thread stops by itself (its window plus a bounded drain).
    let flood = flood.map(|h| {
        progress::show("flood", "waiting for the registration flood to end");
        h.join().expect("flood thread panicked")
    });
    let node_cpu_s = sys::cpu_spent(&cpu_server0, &sys::cpu_of(&a.pids));
    let redis_cpu_s = spent(redis0, redis_cpu(a));
    // All nodes together (one node: that node), None unless every node was read.
    let server_cpu_s = if node_cpu_s.is_empty() { None } else { node_cpu_s.iter().copied().sum() };
    let s = bench.sends;
    let load = report::Load {
        sent: s.sent,
        acked: s.acked,
        nacked: s.nacked,
        unacked: (!a.raw).then(|| s.sent.saturating_sub(s.acked + s.nacked)),
        accepted: s.sent.saturating_sub(s.nacked),
        expected,
        received: bench.counts.messages,
        load_s,
        deliver_s: bench.last_delivery_ns.saturating_sub(t0_ns) as f64 / 1e9,
        start_ns: t0_ns,
        last_delivery_ns: bench.last_delivery_ns,
        hist: std::mem::replace(&mut bench.hist, hist::Histogram::new()),
        ack_hist: std::mem::replace(&mut bench.ack_hist, hist::Histogram::new()),
        server_cpu_s,
        node_cpu_s,
        node_received: bench.node_messages.clone(),
        redis_cpu_s,
        bench_cpu_s: sys::own_cpu_seconds() - cpu_self0,
    };
    (load, flood)
}

/// The load itself: `--senders` clients send at `--rate` each, spread evenly over
/// each period, so K senders at R msg/s offer one message every 1/(K*R) s rather
/// than K at once. Each message carries "<sender> <seq> <sent-ns>".
fn offer(a: &Args, bench: &mut Bench, t0: Instant, hard_stop: Instant) {
    let mut payload = Vec::with_capacity(64);
    let mut shown = t0;
    progress::show("load", &format!("{} senders x {} msg/s for {:.1} s", a.senders, a.rate, a.duration.as_secs_f64()));
    bench.run((t0 + a.duration).min(hard_stop), |b| {
        let elapsed = t0.elapsed().as_secs_f64();
        for s in 0..a.senders {
            let due = (elapsed * a.rate + s as f64 / a.senders as f64) as u64;
            while b.sent_by(s) < due && b.is_open(s) {
                payload.clear();
                let _ = write!(payload, "{{\"message\":\"{s} {} {}\"}}", b.sent_by(s), sys::now_ns());
                b.send(s, &payload);
            }
        }
        if shown.elapsed() >= PROGRESS_EVERY {
            shown = Instant::now();
            progress::show("load", &format!("sent {}, received {}", b.sends.sent, b.counts.messages));
        }
        false
    });
}

/// After the load, waits (at most `--drain-secs`) until every message is acked or
/// refused and every accepted one has reached the N-1 other clients: measured any
/// earlier, frames still in flight would count as lost. Returns the deliveries
/// expected: refused messages are not broadcast.
fn drain(a: &Args, bench: &mut Bench, hard_stop: Instant) -> u64 {
    let others = a.clients as u64 - 1;
    let expected = |b: &Bench| b.sends.sent.saturating_sub(b.sends.nacked) * others;
    let answered = |b: &Bench| a.raw || b.sends.acked + b.sends.nacked >= b.sends.sent;
    progress::show("drain", &format!("waiting up to {:.1} s for the last deliveries and acks", a.drain.as_secs_f64()));
    bench.run((Instant::now() + a.drain).min(hard_stop), |b| answered(b) && b.counts.messages >= expected(b));
    expected(bench)
}

fn teardown(bench: &mut Bench) -> f64 {
    let t0 = Instant::now();
    bench.close_all();
    t0.elapsed().as_secs_f64()
}
