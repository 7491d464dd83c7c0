//! skiff-bench: a WebSocket load generator for skiff (and, with `--raw`, for any
//! broadcast server). One mio loop drives every client; server frames are parsed in
//! place from one shared read buffer, so the generator stays cheaper than the server.
//! Every phase has a deadline; the whole run stops by itself.

mod hist;

use hist::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use skiff::ws::frame;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

const USAGE: &str = "\
skiff-bench: load-test a skiff server (or any WebSocket broadcast server with --raw)

usage: skiff-bench [--url http://127.0.0.1:7777 | --raw ws://HOST:PORT/PATH] [options]

  --clients N        WebSocket clients to connect [100]
  --senders K        how many of them send during the load phase [10]
  --rate R           messages per second per sender [10]
  --duration D       load phase seconds [10]
  --idle-secs S      idle phase seconds before measuring RSS [2]
  --drain-secs S     max wait for outstanding deliveries after the load [5]
  --server-pid PID   read the server's RSS and CPU time from /proc
  --prefix P         username prefix [random per run]
  --sources K        local source addresses 127.0.0.2.. (default: 1 per 25,000 clients)
  --setup-threads T  HTTP threads for register/login [8]
  --timeout S        hard limit for the whole run [600]
  --spin             busy-poll instead of sleeping in epoll: at low rates the client's own
                     wake-ups (~10 us each) otherwise dominate the measured latency;
                     costs a full core, so use it only where one is free
  --json             print one JSON object instead of the table
  -h, --help
";

struct Args {
    base: Option<SocketAddr>,
    raw: Option<(SocketAddr, String)>,
    clients: usize,
    senders: usize,
    rate: f64,
    duration: Duration,
    idle: Duration,
    drain: Duration,
    pid: Option<u32>,
    prefix: String,
    sources: usize,
    setup_threads: usize,
    timeout: Duration,
    json: bool,
    spin: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        base: None,
        raw: None,
        clients: 100,
        senders: 10,
        rate: 10.0,
        duration: Duration::from_secs(10),
        idle: Duration::from_secs(2),
        drain: Duration::from_secs(5),
        pid: None,
        prefix: String::new(),
        sources: 0,
        setup_threads: 8,
        timeout: Duration::from_secs(600),
        json: false,
        spin: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag}: missing value"));
        let num = |v: String| v.parse::<f64>().map_err(|_| format!("{flag}: not a number: {v}"));
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--url" => a.base = Some(host_port(&val()?, "http://")?.0),
            "--raw" => a.raw = Some(host_port(&val()?, "ws://")?),
            "--clients" => a.clients = num(val()?)? as usize,
            "--senders" => a.senders = num(val()?)? as usize,
            "--rate" => a.rate = num(val()?)?,
            "--duration" => a.duration = Duration::from_secs_f64(num(val()?)?),
            "--idle-secs" => a.idle = Duration::from_secs_f64(num(val()?)?),
            "--drain-secs" => a.drain = Duration::from_secs_f64(num(val()?)?),
            "--server-pid" => a.pid = Some(num(val()?)? as u32),
            "--prefix" => a.prefix = val()?,
            "--sources" => a.sources = num(val()?)? as usize,
            "--setup-threads" => a.setup_threads = (num(val()?)? as usize).max(1),
            "--timeout" => a.timeout = Duration::from_secs_f64(num(val()?)?),
            "--json" => a.json = true,
            "--spin" => a.spin = true,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.base.is_none() && a.raw.is_none() {
        a.base = Some(SocketAddr::from(([127, 0, 0, 1], 7777)));
    }
    if a.senders > a.clients {
        return Err("--senders exceeds --clients".into());
    }
    if a.prefix.is_empty() {
        let mut r = [0u8; 4];
        getrandom::fill(&mut r).map_err(|e| e.to_string())?;
        a.prefix = format!("b{:08x}x", u32::from_le_bytes(r));
    }
    if a.sources == 0 {
        a.sources = a.clients.div_ceil(25_000).max(1);
    }
    Ok(a)
}

/// "scheme://host:port/path" -> (address, path). Only numeric IPv4 hosts: the bench
/// only ever targets loopback.
fn host_port(url: &str, scheme: &str) -> Result<(SocketAddr, String), String> {
    let rest = url.strip_prefix(scheme).ok_or_else(|| format!("{url}: expected {scheme}..."))?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let addr = host.parse().map_err(|_| format!("{url}: expected {scheme}IP:PORT"))?;
    Ok((addr, path))
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn server_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    Some(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

fn server_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit only touch the struct we pass.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

// --- setup over HTTP -------------------------------------------------------------

/// Registers and logs in users `prefix0..prefixN` over keep-alive connections from
/// several threads; returns their cookies in order.
fn setup_users(base: SocketAddr, prefix: &str, n: usize, threads: usize) -> Result<Vec<String>, String> {
    let chunks: Vec<Vec<usize>> = (0..threads).map(|t| (t..n).step_by(threads).collect()).collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|ids| {
            let prefix = prefix.to_owned();
            std::thread::spawn(move || -> Result<Vec<(usize, String)>, String> {
                let mut http = Http::connect(base)?;
                let mut out = Vec::with_capacity(ids.len());
                for i in ids {
                    let (status, body, _) = http.post("/api/register", &format!(r#"{{"username":"{prefix}{i}"}}"#))?;
                    if status != 201 {
                        return Err(format!("register {prefix}{i}: HTTP {status} {}", String::from_utf8_lossy(&body)));
                    }
                    let key = json_str(&body, "key").ok_or("register: no key")?;
                    let (status, _, cookie) = http.post("/api/login", &format!(r#"{{"key":"{key}"}}"#))?;
                    if status != 200 {
                        return Err(format!("login {prefix}{i}: HTTP {status}"));
                    }
                    out.push((i, cookie.ok_or("login: no cookie")?));
                }
                Ok(out)
            })
        })
        .collect();
    let mut cookies = vec![String::new(); n];
    for h in handles {
        for (i, c) in h.join().map_err(|_| "setup thread panicked")?? {
            cookies[i] = c;
        }
    }
    Ok(cookies)
}

struct Http {
    r: BufReader<std::net::TcpStream>,
    w: std::net::TcpStream,
}

impl Http {
    fn connect(addr: SocketAddr) -> Result<Http, String> {
        let s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let _ = s.set_nodelay(true);
        Ok(Http { r: BufReader::new(s.try_clone().map_err(|e| e.to_string())?), w: s })
    }

    fn post(&mut self, path: &str, body: &str) -> Result<(u16, Vec<u8>, Option<String>), String> {
        let req = format!("POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        self.w.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.r.read_line(&mut line).map_err(|e| e.to_string())?;
        let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(format!("bad status {line:?}"))?;
        let (mut len, mut cookie) = (0usize, None);
        loop {
            line.clear();
            self.r.read_line(&mut line).map_err(|e| e.to_string())?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((n, v)) = l.split_once(':') {
                if n.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                } else if n.eq_ignore_ascii_case("set-cookie") {
                    cookie = v.trim().split(';').next().map(str::to_owned);
                }
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).map_err(|e| e.to_string())?;
        Ok((status, body, cookie))
    }
}

/// The string value of `"name":"..."` in a small JSON body (keys are URL-safe).
fn json_str(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find(&format!("\"{name}\":\""))? + name.len() + 4;
    Some(text[start..].split('"').next()?.to_owned())
}

// --- WebSocket clients -----------------------------------------------------------

#[derive(PartialEq, Eq, Clone, Copy)]
enum State {
    Connecting,
    Handshake,
    Open,
    Closed,
}

struct Client {
    sock: TcpStream,
    state: State,
    /// Bytes of a frame (or the handshake response) that straddled reads.
    carry: Vec<u8>,
    /// Bytes not yet written (the handshake request, messages under backpressure).
    out: Vec<u8>,
    writable: bool,
    sent: u64,
    acks: u64,
    nacks: u64,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    joins: u64,
    leaves: u64,
    messages: u64,
    other: u64,
}

struct Bench {
    poll: Poll,
    clients: Vec<Client>,
    scratch: Vec<u8>,
    hist: Histogram,
    counts: Counts,
    open: usize,
    failed: usize,
    raw: bool,
    /// In raw mode, the sender index in each payload tells self-deliveries apart.
    self_deliveries: u64,
    /// Busy-poll instead of sleeping in epoll (see `--spin`).
    spin: bool,
}

fn connect_from(source: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    // SAFETY: plain socket calls on a descriptor we own; wrapped in TcpStream at once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let std_sock = std::net::TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one as *const _ as *const _, 4);
        if source != Ipv4Addr::LOCALHOST {
            let sa = sockaddr(SocketAddrV4::new(source, 0));
            if libc::bind(fd, &sa as *const _ as *const _, std::mem::size_of_val(&sa) as u32) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let SocketAddr::V4(v4) = to else { return Err(io::Error::other("IPv4 only")) };
        let sa = sockaddr(v4);
        if libc::connect(fd, &sa as *const _ as *const _, std::mem::size_of_val(&sa) as u32) != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        Ok(TcpStream::from_std(std_sock))
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
        sin_zero: [0; 8],
    }
}

/// Client frames carry a zero mask key: masking is mandatory, but a benchmark has
/// no proxy cache to poison, and a zero key spares the XOR.
const MASK: [u8; 4] = [0; 4];

impl Bench {
    fn new(raw: bool) -> io::Result<Bench> {
        Ok(Bench {
            poll: Poll::new()?,
            clients: Vec::new(),
            scratch: vec![0; 256 * 1024],
            hist: Histogram::new(),
            counts: Counts::default(),
            open: 0,
            failed: 0,
            raw,
            self_deliveries: 0,
            spin: false,
        })
    }

    fn add(&mut self, mut sock: TcpStream, request: Vec<u8>) -> io::Result<()> {
        let token = Token(self.clients.len());
        self.poll.registry().register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
        self.clients.push(Client {
            sock,
            state: State::Connecting,
            carry: Vec::new(),
            out: request,
            writable: false,
            sent: 0,
            acks: 0,
            nacks: 0,
        });
        Ok(())
    }

    /// Runs the loop until `deadline` or until `done` says stop.
    fn run(&mut self, deadline: Instant, mut tick: impl FnMut(&mut Bench) -> bool) {
        let mut events = Events::with_capacity(4096);
        loop {
            if tick(self) || Instant::now() >= deadline {
                return;
            }
            let _ =
                self.poll.poll(&mut events, Some(if self.spin { Duration::ZERO } else { Duration::from_millis(1) }));
            for ev in events.iter() {
                let i = ev.token().0;
                if ev.is_writable() {
                    self.clients[i].writable = true;
                    self.flush(i);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.read(i);
                }
            }
        }
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if c.state == State::Connecting && c.writable {
            c.state = State::Handshake;
        }
        while c.writable && !c.out.is_empty() {
            match c.sock.write(&c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(i);
                    return;
                }
            }
        }
    }

    fn send(&mut self, i: usize, payload: &[u8]) {
        let c = &mut self.clients[i];
        if c.state != State::Open {
            return;
        }
        frame::encode_client(frame::TEXT, payload, MASK, &mut c.out);
        c.sent += 1;
        self.flush(i);
    }

    fn close(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if c.state == State::Open {
            self.open -= 1;
        }
        if c.state != State::Closed {
            if c.state != State::Open {
                self.failed += 1;
            }
            c.state = State::Closed;
            let _ = self.poll.registry().deregister(&mut c.sock);
        }
    }

    fn read(&mut self, i: usize) {
        loop {
            let c = &mut self.clients[i];
            if c.state == State::Closed {
                return;
            }
            let n = match c.sock.read(&mut self.scratch) {
                Ok(0) => return self.close(i),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(i),
            };
            let now = now_ns();
            let mut scratch = std::mem::take(&mut self.scratch);
            let mut carry = std::mem::take(&mut self.clients[i].carry);
            let data: &[u8] = if carry.is_empty() {
                &scratch[..n]
            } else {
                carry.extend_from_slice(&scratch[..n]);
                &carry
            };
            let used = self.consume(i, data, now);
            let rest = data[used..].to_vec();
            carry.clear();
            carry.extend_from_slice(&rest);
            self.clients[i].carry = carry;
            scratch.truncate(scratch.capacity());
            self.scratch = scratch;
            if n < self.scratch.len() {
                return;
            }
        }
    }

    /// Handles whole frames (or the handshake response) in `data`; returns bytes used.
    fn consume(&mut self, i: usize, data: &[u8], now: u64) -> usize {
        let mut pos = 0;
        if self.clients[i].state != State::Open {
            let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else { return 0 };
            if !data.starts_with(b"HTTP/1.1 101") {
                let status = String::from_utf8_lossy(&data[..data.len().min(40)]).into_owned();
                eprintln!("client {i}: handshake refused: {}", status.lines().next().unwrap_or(""));
                self.close(i);
                return data.len();
            }
            self.clients[i].state = State::Open;
            self.open += 1;
            pos = end + 4;
        }
        loop {
            let f = match frame::decode_server(&data[pos..]) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("client {i}: bad server frame: {e:?}");
                    self.close(i);
                    return data.len();
                }
            };
            let payload = &data[pos + f.payload.start..pos + f.payload.end];
            match f.opcode {
                frame::TEXT => self.on_text(i, payload, now),
                frame::CLOSE => self.close(i),
                frame::PING => {
                    frame::encode_client(frame::PONG, payload, MASK, &mut self.clients[i].out);
                    self.flush(i);
                }
                _ => {}
            }
            pos += f.consumed;
        }
        pos
    }

    fn on_text(&mut self, i: usize, p: &[u8], now: u64) {
        const MSG: &[u8] = b"{\"message\":\"";
        if !self.raw && p.starts_with(b"{\"status\":") {
            if p.starts_with(b"{\"status\":true") {
                self.clients[i].acks += 1;
            } else {
                self.clients[i].nacks += 1;
            }
            return;
        }
        if !self.raw && p.starts_with(b"{\"event\":\"join") {
            self.counts.joins += 1;
            return;
        }
        if !self.raw && p.starts_with(b"{\"event\":\"leave") {
            self.counts.leaves += 1;
            return;
        }
        let Some(start) = p.windows(MSG.len()).position(|w| w == MSG) else {
            self.counts.other += 1;
            return;
        };
        // "<sender> <seq> <sent-ns>"
        let mut fields = p[start + MSG.len()..].split(|&b| b == b' ' || b == b'"');
        let sender = fields.next().and_then(parse_u64);
        let _seq = fields.next();
        let sent = fields.next().and_then(parse_u64);
        if self.raw && sender == Some(i as u64) {
            self.self_deliveries += 1;
            return;
        }
        self.counts.messages += 1;
        if let Some(sent) = sent {
            self.hist.record(now.saturating_sub(sent));
        }
    }
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    b.iter().try_fold(0u64, |acc, &d| d.is_ascii_digit().then(|| acc * 10 + (d - b'0') as u64))
}

fn progress(label: &str, text: String) {
    eprint!("\r\x1b[2K{label}: {text}");
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("skiff-bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("\nskiff-bench: {e}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> Result<(), String> {
    raise_nofile();
    let hard_stop = Instant::now() + a.timeout;
    let rss_before = a.pid.and_then(server_rss_kib);
    let mut bench = Bench::new(a.raw.is_some()).map_err(|e| e.to_string())?;
    bench.spin = a.spin;
    let (target, path) = match &a.raw {
        Some((addr, path)) => (*addr, path.clone()),
        None => (a.base.expect("set in parse_args"), "/ws".to_string()),
    };

    // Setup: users, then WebSockets.
    let t_setup = Instant::now();
    let cookies = match a.raw {
        Some(_) => vec![String::new(); a.clients],
        None => {
            progress("setup", format!("registering {} users", a.clients));
            setup_users(target, &a.prefix, a.clients, a.setup_threads)?
        }
    };
    let t_users = t_setup.elapsed();
    let t_ws = Instant::now();
    let mut next = 0;
    let max_inflight = 256;
    let mut last_progress = Instant::now();
    bench.run(hard_stop, |b| {
        while next < cookies.len() && b.clients.len() - b.open - b.failed < max_inflight {
            let source = Ipv4Addr::new(127, 0, 0, 1 + (next % a.sources) as u8 + (a.sources > 1) as u8);
            let cookie =
                if cookies[next].is_empty() { String::new() } else { format!("Cookie: {}\r\n", cookies[next]) };
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2tpZmYtYmVuY2gta2V5IQ==\r\n{cookie}\r\n"
            );
            match connect_from(source, target).and_then(|s| b.add(s, req.into_bytes())) {
                Ok(()) => {}
                Err(e) => {
                    eprintln!("\nconnect {next}: {e}");
                    b.failed += 1;
                    b.clients.push(Client {
                        sock: connect_from(Ipv4Addr::LOCALHOST, target).unwrap_or_else(|_| panic!("no socket")),
                        state: State::Closed,
                        carry: vec![],
                        out: vec![],
                        writable: false,
                        sent: 0,
                        acks: 0,
                        nacks: 0,
                    });
                }
            }
            next += 1;
        }
        if last_progress.elapsed() > Duration::from_secs(1) {
            last_progress = Instant::now();
            progress("setup", format!("{} of {} connected", b.open, a.clients));
        }
        b.open + b.failed >= a.clients
    });
    let t_connect = t_ws.elapsed();
    if bench.open < a.clients {
        return Err(format!("only {} of {} clients connected ({} failed)", bench.open, a.clients, bench.failed));
    }
    // The join storm: every client sees everyone who connected after it.
    let expected_joins = if a.raw.is_some() { 0 } else { (a.clients as u64) * (a.clients as u64 - 1) / 2 };
    let join_deadline = Instant::now() + Duration::from_secs(60).min(hard_stop - Instant::now());
    bench.run(join_deadline, |b| b.counts.joins >= expected_joins);
    let joins_seen = bench.counts.joins;
    let t_setup_total = t_setup.elapsed();

    // Idle.
    progress("idle", format!("{} clients connected, waiting {:?}", bench.open, a.idle));
    bench.run(Instant::now() + a.idle, |_| false);
    let rss_idle = a.pid.and_then(server_rss_kib);

    // Load.
    let cpu_server0 = a.pid.and_then(server_cpu_seconds);
    let cpu_self0 = own_cpu_seconds();
    bench.hist = Histogram::new();
    bench.counts.messages = 0;
    let t_load = Instant::now();
    let load_end = t_load + a.duration;
    let mut sent_total = 0u64;
    let mut payload = Vec::with_capacity(64);
    let mut last_progress = Instant::now();
    bench.run(load_end.min(hard_stop), |b| {
        let elapsed = t_load.elapsed().as_secs_f64();
        for s in 0..a.senders {
            // Senders are spread evenly over each period, so K senders at R msg/s
            // offer one message every 1/(K*R) s rather than K at once.
            let due = (elapsed * a.rate + s as f64 / a.senders as f64) as u64;
            while b.clients[s].sent < due && b.clients[s].state == State::Open {
                payload.clear();
                let seq = b.clients[s].sent;
                let _ = write!(payload, "{{\"message\":\"{s} {seq} {}\"}}", now_ns());
                let p = std::mem::take(&mut payload);
                b.send(s, &p);
                payload = p;
                sent_total += 1;
            }
        }
        if last_progress.elapsed() > Duration::from_secs(1) {
            last_progress = Instant::now();
            progress("load", format!("sent {sent_total}, received {}", b.counts.messages));
        }
        false
    });
    let load_secs = t_load.elapsed().as_secs_f64();
    let expected = sent_total * (a.clients as u64 - 1);
    let drain_end = Instant::now() + a.drain;
    bench.run(drain_end.min(hard_stop), |b| b.counts.messages >= expected);
    let deliver_secs = t_load.elapsed().as_secs_f64();
    let cpu_server = match (cpu_server0, a.pid.and_then(server_cpu_seconds)) {
        (Some(x), Some(y)) => Some(y - x),
        _ => None,
    };
    let cpu_self = own_cpu_seconds() - cpu_self0;
    let received = bench.counts.messages;
    let acked: u64 = bench.clients.iter().map(|c| c.acks).sum();
    let nacked: u64 = bench.clients.iter().map(|c| c.nacks).sum();

    // Teardown.
    let t_down = Instant::now();
    let bye = frame::client_frame(frame::CLOSE, &1000u16.to_be_bytes(), MASK);
    for c in &mut bench.clients {
        let _ = c.sock.write(&bye);
    }
    let clients = std::mem::take(&mut bench.clients);
    drop(clients);
    let t_teardown = t_down.elapsed();
    eprint!("\r\x1b[2K");

    let ms = |ns: u64| ns as f64 / 1e6;
    let h = &bench.hist;
    let per_conn = match (rss_before, rss_idle) {
        (Some(b), Some(i)) => Some((i.saturating_sub(b)) as f64 / a.clients as f64),
        _ => None,
    };
    let report = serde_json::json!({
        "mode": if a.raw.is_some() { "raw" } else { "skiff" },
        "clients": a.clients,
        "senders": a.senders,
        "rate_per_sender": a.rate,
        "duration_s": a.duration.as_secs_f64(),
        "setup": {
            "users_s": t_users.as_secs_f64(),
            "connect_s": t_connect.as_secs_f64(),
            "connects_per_s": a.clients as f64 / t_connect.as_secs_f64(),
            "join_events_expected": expected_joins,
            "join_events_received": joins_seen,
            "total_s": t_setup_total.as_secs_f64(),
        },
        "idle": {
            "server_rss_before_kib": rss_before,
            "server_rss_idle_kib": rss_idle,
            "server_rss_per_client_kib": per_conn,
        },
        "load": {
            "sent": sent_total,
            "acked": acked,
            "nacked": nacked,
            "expected_deliveries": expected,
            "received": received,
            "loss": expected.saturating_sub(received),
            "deliveries_per_s": received as f64 / deliver_secs,
            "offered_per_s": expected as f64 / load_secs,
            "latency_ms": {
                "p50": ms(h.quantile(0.50)),
                "p99": ms(h.quantile(0.99)),
                "p999": ms(h.quantile(0.999)),
                "max": ms(h.max()),
                "samples": h.count(),
            },
            "server_cpu_s": cpu_server,
            "server_cpu_us_per_delivery": cpu_server.map(|c| c * 1e6 / received.max(1) as f64),
            "bench_cpu_s": cpu_self,
            "bench_cpu_us_per_frame": cpu_self * 1e6 / received.max(1) as f64,
        },
        "teardown_s": t_teardown.as_secs_f64(),
    });
    if a.json {
        println!("{report}");
    } else {
        let l = &report["load"];
        let opt = |v: &serde_json::Value, f: &dyn Fn(f64) -> String| v.as_f64().map_or("-".into(), f);
        println!(
            "skiff-bench: {} clients, {} senders x {} msg/s for {:.0} s",
            a.clients,
            a.senders,
            a.rate,
            a.duration.as_secs_f64()
        );
        println!(
            "  setup      users {:.2} s, connect {:.2} s ({:.0} connects/s), joins {}/{}",
            t_users.as_secs_f64(),
            t_connect.as_secs_f64(),
            a.clients as f64 / t_connect.as_secs_f64(),
            joins_seen,
            expected_joins
        );
        println!(
            "  idle       server RSS {} KiB, {} KiB per client",
            rss_idle.map_or("-".into(), |v| v.to_string()),
            per_conn.map_or("-".into(), |v| format!("{v:.2}"))
        );
        println!(
            "  load       sent {sent_total}, acked {acked}, expected {expected}, received {received}, loss {}",
            expected.saturating_sub(received)
        );
        println!(
            "             {:.0} deliveries/s; latency p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms, max {:.3} ms",
            l["deliveries_per_s"].as_f64().unwrap_or(0.0),
            ms(h.quantile(0.5)),
            ms(h.quantile(0.99)),
            ms(h.quantile(0.999)),
            ms(h.max())
        );
        println!(
            "  cpu        server {} s ({} us/delivery), bench {:.2} s ({:.2} us/frame)",
            opt(&l["server_cpu_s"], &|v| format!("{v:.2}")),
            opt(&l["server_cpu_us_per_delivery"], &|v| format!("{v:.2}")),
            cpu_self,
            l["bench_cpu_us_per_frame"].as_f64().unwrap_or(0.0)
        );
        println!("  teardown   {:.2} s", t_teardown.as_secs_f64());
    }
    Ok(())
}
