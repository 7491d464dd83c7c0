//! The registration flood (`--register-flood C`): C keep-alive HTTP/1.1 connections,
//! each posting `/api/register` with a fresh username as soon as its previous answer
//! arrives, for `--register-secs`. It runs on its own thread with its own mio loop, so
//! the chat clients on the main loop measure what the flood does to the server, not
//! what it does to the generator. One loop for all C connections: at 10,000+
//! registrations/s a thread per connection would spend the cores the server needs on
//! context switches. Buffers are per connection and reused; a request allocates nothing.

use crate::hist::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the flood waits for answers still outstanding when its time is up: a
/// registration stuck behind a slow disk for longer than this is counted unanswered.
const DRAIN: Duration = Duration::from_secs(10);
/// Reconnects after the server closed a connection, in all: a server that closes
/// every connection must not turn the flood into a connect storm.
const MAX_RECONNECTS: u64 = 1000;
/// An answer larger than this is not a registration answer; the connection is dropped.
const MAX_RESPONSE: usize = 16 * 1024;

pub struct Plan {
    pub target: SocketAddr,
    pub prefix: String,
    pub clients: usize,
    pub secs: Duration,
}

pub struct Outcome {
    /// Requests written, and answers by status (index = status code).
    pub sent: u64,
    pub statuses: Vec<u64>,
    /// Connections the server closed or that failed mid-request (each loses the
    /// request in flight), and requests still unanswered after the drain.
    pub conn_errors: u64,
    pub unanswered: u64,
    /// From the first request to the last answer (answers to requests written
    /// in the window still count when they come during the drain).
    pub flood_s: f64,
    /// Request written to its answer read, every status.
    pub latency: Histogram,
    /// CPU time of the flood's thread: shows how far the generator is from being
    /// the limit (at ~10 us a request, one core drives 100,000 registrations/s).
    pub cpu_s: f64,
}

impl Outcome {
    pub fn ok(&self) -> u64 {
        self.statuses[201]
    }

    /// Every request that did not end in a 201: other statuses, broken connections
    /// and unanswered requests.
    pub fn non_201(&self) -> u64 {
        self.statuses.iter().sum::<u64>() - self.ok() + self.conn_errors + self.unanswered
    }

    pub fn per_s(&self) -> f64 {
        if self.flood_s > 0.0 {
            self.ok() as f64 / self.flood_s
        } else {
            0.0
        }
    }
}

struct Conn {
    sock: TcpStream,
    req: Vec<u8>,
    /// Bytes of `req` written so far.
    written: usize,
    resp: Vec<u8>,
    started: Instant,
    busy: bool,
}

pub struct Flood {
    conns: Vec<Conn>,
    poll: Poll,
    plan: Plan,
    seq: u64,
}

/// Opens every connection before the flood starts, so connection setup is not in the
/// measured window and a server that refuses them fails the run up front.
pub fn prepare(plan: Plan) -> Result<Flood, String> {
    let poll = Poll::new().map_err(|e| format!("flood epoll: {e}"))?;
    let mut conns = Vec::with_capacity(plan.clients);
    for i in 0..plan.clients {
        conns.push(open(&poll, plan.target, i).map_err(|e| format!("flood connection {i}: {e}"))?);
    }
    Ok(Flood { conns, poll, plan, seq: 0 })
}

fn open(poll: &Poll, target: SocketAddr, i: usize) -> io::Result<Conn> {
    let s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    let mut sock = TcpStream::from_std(s);
    poll.registry().register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)?;
    Ok(Conn {
        sock,
        req: Vec::with_capacity(160),
        written: 0,
        resp: Vec::with_capacity(512),
        started: Instant::now(),
        busy: false,
    })
}

impl Flood {
    /// Starts the flood on its own thread; join it for the outcome.
    pub fn start(self) -> JoinHandle<Outcome> {
        std::thread::Builder::new().name("register-flood".into()).spawn(move || self.run()).expect("spawn flood thread")
    }

    fn run(mut self) -> Outcome {
        let mut out = Outcome {
            sent: 0,
            statuses: vec![0; 600],
            conn_errors: 0,
            unanswered: 0,
            flood_s: 0.0,
            latency: Histogram::new(),
            cpu_s: 0.0,
        };
        let cpu0 = crate::sys::own_cpu_seconds();
        let t0 = Instant::now();
        let end = t0 + self.plan.secs;
        let hard_stop = end + DRAIN;
        let mut reconnects = 0;
        let mut last_answer = t0;
        for i in 0..self.conns.len() {
            self.issue(i, &mut out);
        }
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            let busy = self.conns.iter().filter(|c| c.busy).count();
            if (now >= end && busy == 0) || now >= hard_stop {
                out.unanswered = busy as u64;
                break;
            }
            let wait = if now < end { end - now } else { hard_stop - now };
            if let Err(e) = self.poll.poll(&mut events, Some(wait.min(Duration::from_millis(100)))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    out.unanswered = busy as u64;
                    break;
                }
            }
            for ev in events.iter() {
                let i = ev.token().0;
                match self.step(i, &mut out) {
                    Ok(true) => {
                        last_answer = Instant::now();
                        if last_answer < end {
                            self.issue(i, &mut out);
                        }
                    }
                    Ok(false) => {}
                    Err(_) => {
                        out.conn_errors += u64::from(self.conns[i].busy);
                        self.conns[i].busy = false;
                        let _ = self.poll.registry().deregister(&mut self.conns[i].sock);
                        if Instant::now() < end && reconnects < MAX_RECONNECTS {
                            reconnects += 1;
                            if let Ok(c) = open(&self.poll, self.plan.target, i) {
                                self.conns[i] = c;
                                self.issue(i, &mut out);
                            }
                        }
                    }
                }
            }
        }
        out.flood_s = (last_answer - t0).as_secs_f64();
        out.cpu_s = crate::sys::own_cpu_seconds() - cpu0;
        out
    }

    /// Writes the next registration on connection `i`: a fresh name each time,
    /// `<prefix>r<seq>` (chat users are `<prefix><digits>`, so the two never meet).
    fn issue(&mut self, i: usize, out: &mut Outcome) {
        let c = &mut self.conns[i];
        let body_len = r#"{"username":""}"#.len() + self.plan.prefix.len() + 1 + digits(self.seq);
        c.req.clear();
        let _ = write!(
            c.req,
            "POST /api/register HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
             Content-Length: {body_len}\r\n\r\n{{\"username\":\"{}r{}\"}}",
            self.plan.prefix, self.seq
        );
        self.seq += 1;
        c.written = 0;
        c.resp.clear();
        c.busy = true;
        c.started = Instant::now();
        out.sent += 1;
        // Written at once: the socket is almost always writable, and an edge already
        // consumed would otherwise leave the request waiting for one that never comes.
        let _ = flush(c);
    }

    /// Advances connection `i` on an event: writes what is left of the request, reads
    /// the answer. Ok(true) when a whole answer was read and counted; Err when the
    /// connection is unusable.
    fn step(&mut self, i: usize, out: &mut Outcome) -> io::Result<bool> {
        let c = &mut self.conns[i];
        flush(c)?;
        let mut buf = [0u8; 4096];
        loop {
            match c.sock.read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => c.resp.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if c.resp.len() > MAX_RESPONSE {
                return Err(io::ErrorKind::InvalidData.into());
            }
        }
        if !c.busy {
            // Bytes nobody asked for: a keep-alive peer never sends them.
            return if c.resp.is_empty() { Ok(false) } else { Err(io::ErrorKind::InvalidData.into()) };
        }
        match parse_response(&c.resp) {
            Some((status, len)) if len == c.resp.len() => {
                out.statuses[usize::from(status).min(599)] += 1;
                out.latency.record(c.started.elapsed().as_nanos() as u64);
                c.busy = false;
                c.resp.clear();
                Ok(true)
            }
            // More than one answer to one request.
            Some((_, len)) if len < c.resp.len() => Err(io::ErrorKind::InvalidData.into()),
            _ => Ok(false),
        }
    }
}

fn flush(c: &mut Conn) -> io::Result<()> {
    while c.written < c.req.len() {
        match c.sock.write(&c.req[c.written..]) {
            Ok(n) => c.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// A complete HTTP response head in `b`: (status, head + body length), or None while
/// the head or its `Content-Length` is incomplete (a head without one is answered as
/// if the length were zero; skiff always sends it).
fn parse_response(b: &[u8]) -> Option<(u16, usize)> {
    let head_end = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = &b[..head_end];
    let status = std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()?;
    let mut len = 0usize;
    for line in head.split(|&c| c == b'\n') {
        if let Some(colon) = line.iter().position(|&c| c == b':') {
            if line[..colon].eq_ignore_ascii_case(b"content-length") {
                len = std::str::from_utf8(&line[colon + 1..]).ok()?.trim().parse().ok()?;
            }
        }
    }
    Some((status, head_end + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_complete_only_with_their_whole_body() {
        let r = b"HTTP/1.1 201 Created\r\ncontent-length: 11\r\n\r\n{\"key\":\"k\"}";
        assert_eq!(parse_response(r), Some((201, r.len())));
        assert_eq!(parse_response(&r[..20]), None);
        let (status, len) = parse_response(&r[..r.len() - 3]).unwrap();
        assert_eq!(status, 201);
        assert!(len > r.len() - 3, "the body is still short");
    }

    #[test]
    fn digit_counts_match_formatting() {
        for n in [0u64, 9, 10, 99, 100, 12_345, u64::MAX] {
            assert_eq!(digits(n), n.to_string().len());
        }
    }
}
