//! The WebSocket clients: one mio loop drives all of them. Server frames are decoded
//! in place from one shared read buffer, so the generator stays cheaper than the
//! server it measures. The phases in `main.rs` steer the loop through `run`'s tick.

use crate::hist::Histogram;
use crate::progress;
use crate::sys::now_ns;
use crate::tls::Sock;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use skiff::ws::frame;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

mod v2;

/// Client frames carry a zero mask key: masking is mandatory, but a benchmark has
/// no proxy cache to poison, and a zero key spares the XOR.
const MASK: [u8; 4] = [0; 4];

#[derive(PartialEq, Eq, Clone, Copy)]
enum State {
    Connecting,
    Handshake,
    Open,
    Closed,
}

struct Client {
    sock: Sock,
    state: State,
    /// Bytes of a frame (or the handshake response) that straddled reads.
    carry: Vec<u8>,
    /// Bytes not yet written (the handshake request, messages under backpressure).
    out: Vec<u8>,
    writable: bool,
    sent: u64,
    /// When each message still waiting for its ack was sent (`now_ns`), oldest
    /// first: the server acks each socket's messages in order.
    unacked_since: std::collections::VecDeque<u64>,
    /// Which `--url` node it is connected to.
    node: usize,
    /// Where it connects from and to, and its first upgrade request (a reconnect
    /// sends it again, with `since=` on v2).
    source: Ipv4Addr,
    to: SocketAddr,
    request: Vec<u8>,
    /// v2: the last message id seen, for `since=`.
    last_id: u64,
    /// v2: how many users its online list (or count) holds: the hello's, then
    /// every join and leave it heard.
    online: i64,
    /// Reconnect attempts since it was last open (the backoff's exponent).
    attempt: u32,
    /// When it last opened (`now_ns`): messages sent before it are history it
    /// resumed, not live chat.
    opened_ns: u64,
}

/// The reconnect storm's side of the loop (see `storm.rs`): closed clients come back
/// after a full-jitter exponential backoff.
pub struct Storm {
    base: Duration,
    cap: Duration,
    retry: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, usize)>>,
    rng: u64,
    /// Open sockets lost, reconnects started, handshakes refused (non-101 or closed
    /// before the answer), messages replayed by a resume.
    pub drops: u64,
    pub attempts: u64,
    pub refused: u64,
    pub replayed: u64,
    /// When a client last opened (`now_ns`).
    pub last_open_ns: u64,
}

impl Storm {
    pub fn new(base: Duration, cap: Duration) -> Storm {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        let rng = u64::from_le_bytes(seed) | 1;
        let retry = std::collections::BinaryHeap::new();
        Storm { base, cap, retry, rng, drops: 0, attempts: 0, refused: 0, replayed: 0, last_open_ns: 0 }
    }

    /// uniform(0, min(cap, base * 2^attempt)), as the page waits.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let window = self.base.saturating_mul(1u32 << attempt.min(20)).min(self.cap);
        // xorshift64: enough spread for jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let ns = window.as_nanos() as u64;
        Duration::from_nanos(if ns == 0 { 0 } else { self.rng % ns })
    }
}

#[derive(Default, Clone, Copy)]
pub struct Counts {
    pub joins: u64,
    pub leaves: u64,
    pub messages: u64,
    pub other: u64,
}

/// Messages sent by all clients, and the server's answers to them.
#[derive(Default, Clone, Copy)]
pub struct Sends {
    pub sent: u64,
    pub acked: u64,
    pub nacked: u64,
}

pub struct Bench {
    poll: Poll,
    clients: Vec<Client>,
    scratch: Vec<u8>,
    pub hist: Histogram,
    /// Send -> the sender's own ack: what a durable ack costs.
    pub ack_hist: Histogram,
    pub counts: Counts,
    pub sends: Sends,
    /// When the last chat message arrived (ns, `now_ns`), for the delivery rate.
    pub last_delivery_ns: u64,
    /// Chat messages received by the clients of each node (`counts.messages` split).
    pub node_messages: Vec<u64>,
    pub open: usize,
    pub failed: usize,
    raw: bool,
    /// In raw mode, the sender index in each payload tells self-deliveries apart.
    self_deliveries: u64,
    /// Busy-poll instead of sleeping in epoll (see `--spin`).
    spin: bool,
    /// Protocol v2 clients: they count who is online (hello, joins, presence).
    v2: bool,
    /// v2: clients whose online count has reached `full`.
    pub complete: usize,
    pub full: i64,
    /// Set during a reconnect storm.
    pub storm: Option<Storm>,
    /// `https://` nodes: the clients speak TLS.
    tls: bool,
    /// `--rcvbuf`.
    rcvbuf: Option<usize>,
}

/// `rcvbuf`: the socket's SO_RCVBUF (`None`: the kernel's autotuning).
fn connect_from(source: Ipv4Addr, to: SocketAddr, rcvbuf: Option<usize>) -> io::Result<TcpStream> {
    // SAFETY: plain socket calls on a descriptor we own; wrapped in TcpStream at once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let std_sock = std::net::TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one as *const _ as *const _, 4);
        if let Some(bytes) = rcvbuf {
            let bytes = bytes as libc::c_int;
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &bytes as *const _ as *const _, 4);
        }
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

impl Bench {
    pub fn new(raw: bool, spin: bool, v2: bool, full: usize, tls: bool, rcvbuf: Option<usize>) -> io::Result<Bench> {
        Ok(Bench {
            poll: Poll::new()?,
            clients: Vec::new(),
            scratch: vec![0; 256 * 1024],
            hist: Histogram::new(),
            ack_hist: Histogram::new(),
            counts: Counts::default(),
            sends: Sends::default(),
            last_delivery_ns: 0,
            node_messages: Vec::new(),
            open: 0,
            failed: 0,
            raw,
            self_deliveries: 0,
            spin,
            v2,
            complete: 0,
            full: full as i64,
            storm: None,
            tls,
            rcvbuf,
        })
    }

    /// Starts one more client from `source` to node number `node` at `to`; `request`
    /// is its upgrade request. An error here (EMFILE, ...) is synchronous; a refused
    /// connection shows up later as a failed client.
    pub fn connect(&mut self, source: Ipv4Addr, node: usize, to: SocketAddr, request: Vec<u8>) -> io::Result<()> {
        let mut sock = Sock::new(connect_from(source, to, self.rcvbuf)?, self.tls)?;
        let token = Token(self.clients.len());
        self.poll.registry().register(sock.tcp(), token, Interest::READABLE | Interest::WRITABLE)?;
        self.clients.push(Client {
            sock,
            state: State::Connecting,
            carry: Vec::new(),
            out: request,
            writable: false,
            sent: 0,
            unacked_since: std::collections::VecDeque::new(),
            node,
            source,
            to,
            request: Vec::new(),
            last_id: 0,
            online: 0,
            attempt: 0,
            opened_ns: 0,
        });
        let c = self.clients.last_mut().expect("just pushed");
        c.request.clone_from(&c.out);
        if self.node_messages.len() <= node {
            self.node_messages.resize(node + 1, 0);
        }
        Ok(())
    }

    /// Clients that are neither open nor failed yet.
    pub fn in_flight(&self) -> usize {
        self.clients.len() - self.open - self.failed
    }

    pub fn is_open(&self, i: usize) -> bool {
        self.clients[i].state == State::Open
    }

    pub fn sent_by(&self, i: usize) -> u64 {
        self.clients[i].sent
    }

    /// Forgets what the earlier phases measured.
    pub fn reset_load(&mut self) {
        self.hist = Histogram::new();
        self.ack_hist = Histogram::new();
        self.counts.messages = 0;
        self.node_messages.iter_mut().for_each(|m| *m = 0);
        self.last_delivery_ns = 0;
    }

    /// Runs the loop until `deadline` or until `tick` says stop.
    pub fn run(&mut self, deadline: Instant, mut tick: impl FnMut(&mut Bench) -> bool) {
        let mut events = Events::with_capacity(4096);
        let wait = if self.spin { Duration::ZERO } else { Duration::from_millis(1) };
        loop {
            if tick(self) || Instant::now() >= deadline {
                return;
            }
            self.reconnect_due();
            let _ = self.poll.poll(&mut events, Some(wait));
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

    /// Says goodbye (close 1000) to every client without waiting, then drops them.
    pub fn close_all(&mut self) {
        let bye = frame::client_frame(frame::CLOSE, &1000u16.to_be_bytes(), MASK);
        for c in &mut self.clients {
            let _ = c.sock.write(&bye);
        }
        self.clients.clear();
        self.open = 0;
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if c.state == State::Connecting && c.writable {
            c.state = State::Handshake;
        }
        if c.writable && c.sock.push_records().is_err() {
            self.close(i);
            return;
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

    /// Sends one text message from client `i`, if it is open.
    pub fn send(&mut self, i: usize, payload: &[u8]) {
        let c = &mut self.clients[i];
        if c.state != State::Open {
            return;
        }
        frame::encode_client(frame::TEXT, payload, MASK, &mut c.out);
        c.unacked_since.push_back(now_ns());
        c.sent += 1;
        self.sends.sent += 1;
        self.flush(i);
    }

    fn close(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if c.state == State::Closed {
            return;
        }
        let was_open = c.state == State::Open;
        c.state = State::Closed;
        let _ = self.poll.registry().deregister(c.sock.tcp());
        if was_open {
            self.open -= 1;
            if self.v2 && c.online >= self.full {
                self.complete -= 1;
            }
        }
        let Some(st) = self.storm.as_mut() else {
            if !was_open {
                self.failed += 1;
            }
            return;
        };
        if was_open {
            st.drops += 1;
        } else {
            st.refused += 1;
        }
        let wait = st.backoff(c.attempt);
        c.attempt += 1;
        st.retry.push(std::cmp::Reverse((Instant::now() + wait, i)));
    }

    /// Starts the reconnects whose backoff is over.
    fn reconnect_due(&mut self) {
        let now = Instant::now();
        loop {
            let Some(st) = self.storm.as_mut() else { return };
            match st.retry.peek() {
                Some(std::cmp::Reverse((at, _))) if *at <= now => {}
                _ => return,
            }
            let Some(std::cmp::Reverse((_, i))) = st.retry.pop() else { return };
            st.attempts += 1;
            self.reconnect(i);
        }
    }

    /// Client `i` again, on a new socket, resuming where it was (v2 `since=`).
    fn reconnect(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let mut request = c.request.clone();
        if self.v2 && c.last_id > 0 {
            if let Some(at) = request.windows(9).position(|w| w == b" HTTP/1.1") {
                let since = format!("&since={}", c.last_id);
                request.splice(at..at, since.into_bytes());
            }
        }
        let tls = self.tls;
        let rcvbuf = self.rcvbuf;
        let sock = connect_from(c.source, c.to, rcvbuf).and_then(|sock| {
            let mut sock = Sock::new(sock, tls)?;
            self.poll.registry().register(sock.tcp(), Token(i), Interest::READABLE | Interest::WRITABLE)?;
            Ok(sock)
        });
        match sock {
            Ok(sock) => {
                c.sock = sock;
                c.state = State::Connecting;
                c.carry.clear();
                c.out = request;
                c.writable = false;
                c.unacked_since.clear();
                c.online = 0;
            }
            // Out of ports or descriptors for now: the client waits its next turn.
            Err(_) => {
                if let Some(st) = self.storm.as_mut() {
                    st.refused += 1;
                    let wait = st.backoff(c.attempt);
                    c.attempt += 1;
                    st.retry.push(std::cmp::Reverse((Instant::now() + wait, i)));
                }
            }
        }
    }

    /// v2: client `i`'s online count moved by `delta` (or, `set`, is `delta`).
    fn online(&mut self, i: usize, delta: i64, set: bool) {
        let c = &mut self.clients[i];
        let was = c.online >= self.full;
        c.online = if set { delta } else { c.online + delta };
        match (was, c.online >= self.full) {
            (false, true) => self.complete += 1,
            (true, false) => self.complete -= 1,
            _ => {}
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
                progress::note(&format!("client {i}: handshake refused: {}", status.lines().next().unwrap_or("")));
                self.close(i);
                return data.len();
            }
            let c = &mut self.clients[i];
            c.state = State::Open;
            c.attempt = 0;
            c.opened_ns = now;
            self.open += 1;
            if let Some(st) = self.storm.as_mut() {
                st.last_open_ns = now;
            }
            pos = end + 4;
        }
        loop {
            let f = match frame::decode_server(&data[pos..]) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    progress::note(&format!("client {i}: bad server frame: {e:?}"));
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
        const MSG: &[u8] = b"\"message\":\"";
        if self.v2 && self.on_v2_event(i, p) {
            return;
        }
        if !self.raw && p.starts_with(b"{\"status\":") {
            if let Some(sent) = self.clients[i].unacked_since.pop_front() {
                self.ack_hist.record(now.saturating_sub(sent));
            }
            if p.starts_with(b"{\"status\":true") {
                self.sends.acked += 1;
            } else {
                self.sends.nacked += 1;
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
        if let Some(st) = self.storm.as_mut() {
            if sent.is_some_and(|s| s < self.clients[i].opened_ns) {
                st.replayed += 1;
                return;
            }
        }
        self.counts.messages += 1;
        self.node_messages[self.clients[i].node] += 1;
        self.last_delivery_ns = now;
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
