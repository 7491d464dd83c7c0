//! Redis Sentinel: which server is the primary, and when that changes. A sans-IO
//! piece of the cluster core: one link to one sentinel at a time, bytes in, bytes
//! out, `now` given. It asks `SENTINEL GET-MASTER-ADDR-BY-NAME` and then listens on
//! `+switch-master` on the same link; the core connects its links to what it
//! reports, and asks again whenever a link dies, a command says `READONLY` or the
//! server says (`ROLE`) it is a replica. A sentinel that does not answer is left
//! for the next one in the list.
//!
//! Not supported: TLS, Redis ACL users, a sentinel password other than the data
//! password (the URL's one password is offered to the sentinels too, and a sentinel
//! without one just refuses it, which is ignored).

use super::link::{Backoff, Link};
use super::resp::Value;
use crate::log;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The sentinels to ask, in the URL's order, and the name of the primary they watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelSet {
    pub addrs: Vec<SocketAddr>,
    pub master: String,
}

/// A sentinel that says nothing this long is passed over for the next.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// What a sentinel said that the core acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum News {
    /// The primary is here (an answer to our question).
    Primary(SocketAddr),
    /// The sentinels know no primary by that name (yet): ask again later.
    Unknown,
    /// A failover promoted the server here (`+switch-master`).
    Switched(SocketAddr),
    /// The sentinel leading a failover chose the replica to promote: stop writing to
    /// the primary now (`+selected-slave`).
    FailoverStarting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// No link; the next sentinel is tried at `retry_at`.
    Idle,
    /// The question is out; the answer is due by `deadline`.
    Asking,
    /// Answered; subscribed to `+switch-master`.
    Watching,
}

#[derive(Debug)]
pub struct Sentinels {
    set: SentinelSet,
    password: Option<String>,
    link: Option<Link>,
    stage: Stage,
    /// Index into `set.addrs` of the sentinel on `link` (or tried last).
    current: usize,
    since: Instant,
    retry_at: Instant,
    backoff: Backoff,
    /// Replies still owed on the link, in order: AUTH (if any), then the question.
    owed: Vec<Owed>,
    /// A sentinel to open: taken by the core and handed to the reactor.
    open: Option<SocketAddr>,
    /// The link must be dropped (the reactor hears it through the core).
    close: bool,
    /// Asked once: from then on a sentinel is always watched (a lost link is
    /// replaced), so a failover is heard whenever it comes.
    started: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    Auth,
    Question,
    Subscribe,
}

impl Sentinels {
    pub fn new(set: SentinelSet, password: Option<String>, now: Instant) -> Sentinels {
        let last = set.addrs.len().saturating_sub(1);
        Sentinels {
            set,
            password,
            link: None,
            stage: Stage::Idle,
            // The first `open_next` moves to the first sentinel.
            current: last,
            since: now,
            retry_at: now,
            backoff: Backoff::new(),
            owed: Vec::new(),
            open: None,
            close: false,
            started: false,
        }
    }

    pub fn master(&self) -> &str {
        &self.set.master
    }

    /// The core needs the primary's address: ask (now, or as soon as a sentinel
    /// can be reached). The answer comes as `News::Primary` (or `Unknown`).
    pub fn ask(&mut self, now: Instant) {
        self.started = true;
        match self.stage {
            Stage::Idle if now >= self.retry_at => self.open_next(now),
            Stage::Idle => {}
            // A question is out already.
            Stage::Asking => {}
            // The link is subscribed: a subscribed RESP2 connection takes no other
            // command, so the question goes on a fresh link to the same sentinel.
            Stage::Watching => {
                self.drop_link(now, false);
                self.current = self.current.wrapping_sub(1);
                self.open_next(now);
            }
        }
    }

    fn open_next(&mut self, now: Instant) {
        self.current = (self.current.wrapping_add(1)) % self.set.addrs.len();
        let mut link = Link::default();
        self.owed.clear();
        if let Some(pw) = &self.password {
            link.queue(&[b"AUTH".as_slice(), pw.as_bytes()]);
            self.owed.push(Owed::Auth);
        }
        link.queue(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.set.master]);
        self.owed.push(Owed::Question);
        link.queue(&["SUBSCRIBE", "+switch-master"]);
        self.owed.push(Owed::Subscribe);
        self.link = Some(link);
        self.stage = Stage::Asking;
        self.since = now;
        self.open = Some(self.set.addrs[self.current]);
    }

    /// The sentinel the reactor must connect to now, if any.
    pub fn take_open(&mut self) -> Option<SocketAddr> {
        self.open.take()
    }

    /// The reactor must drop the sentinel link.
    pub fn take_close(&mut self) -> bool {
        std::mem::take(&mut self.close)
    }

    pub fn output(&self) -> &[u8] {
        self.link.as_ref().map_or(&[], Link::output)
    }

    pub fn consumed(&mut self, n: usize) {
        if let Some(l) = self.link.as_mut() {
            l.consumed(n);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match self.stage {
            Stage::Idle if self.started => Some(self.retry_at),
            Stage::Idle | Stage::Watching => None,
            Stage::Asking => Some(self.since + ANSWER_TIMEOUT),
        }
    }

    pub fn on_timeout(&mut self, now: Instant) {
        match self.stage {
            Stage::Idle if self.started && now >= self.retry_at => self.open_next(now),
            Stage::Asking if now >= self.since + ANSWER_TIMEOUT => {
                self.failed("did not answer in 2 s", now);
            }
            _ => {}
        }
    }

    /// The sentinel link ended or could not be opened.
    pub fn on_closed(&mut self, why: &str, now: Instant) {
        if self.link.is_some() {
            self.failed(why, now);
        }
    }

    /// This sentinel is no use: the next one is tried (at once while there are
    /// untried ones this round, then after a backoff).
    fn failed(&mut self, why: &str, now: Instant) {
        let addr = self.set.addrs[self.current];
        log::warn(format_args!("redis sentinel {addr}: {why}; trying the next one"));
        self.drop_link(now, true);
        if self.started && now >= self.retry_at {
            self.open_next(now);
        }
    }

    fn drop_link(&mut self, now: Instant, backoff: bool) {
        if self.link.take().is_some() {
            self.close = true;
        }
        self.owed.clear();
        self.stage = Stage::Idle;
        if backoff && self.current + 1 >= self.set.addrs.len() {
            // A whole round failed: wait before the next.
            self.retry_at = now + self.backoff.step();
        }
    }

    /// Bytes from the sentinel link; what they say, in order.
    pub fn on_bytes(&mut self, bytes: &[u8], now: Instant) -> Vec<News> {
        let Some(link) = self.link.as_mut() else { return Vec::new() };
        let values = match link.received(bytes) {
            Ok(v) => v,
            Err(e) => {
                self.failed(&e, now);
                return Vec::new();
            }
        };
        let mut news = Vec::new();
        for v in values {
            if let Some(owed) = (!self.owed.is_empty()).then(|| self.owed.remove(0)) {
                match owed {
                    // A sentinel without a password refuses AUTH; that is fine.
                    Owed::Auth => {}
                    Owed::Question => match parse_addr(&v) {
                        Some(addr) => news.push(News::Primary(addr)),
                        None if matches!(v, Value::Array(None) | Value::Bulk(None)) => news.push(News::Unknown),
                        None => {
                            self.failed(&format!("a strange answer: {v:?}"), now);
                            return news;
                        }
                    },
                    Owed::Subscribe => {
                        if matches!(v, Value::Error(_)) {
                            self.failed("cannot subscribe to +switch-master", now);
                            return news;
                        }
                        self.stage = Stage::Watching;
                        self.backoff.reset();
                    }
                }
                continue;
            }
            // Subscribed: `message +switch-master "NAME OLDIP OLDPORT NEWIP NEWPORT"`.
            let Some(items) = v.as_array() else { continue };
            if items.first().and_then(Value::as_str) != Some("message") {
                continue;
            }
            let Some(text) = items.get(2).and_then(Value::as_str) else { continue };
            let f: Vec<&str> = text.split(' ').collect();
            if f.len() == 5 && f[0] == self.set.master {
                if let Some(addr) = addr_of(f[3], f[4]) {
                    news.push(News::Switched(addr));
                }
            }
        }
        news
    }
}

/// `SENTINEL GET-MASTER-ADDR-BY-NAME`'s answer: `[ip, port]`.
fn parse_addr(v: &Value) -> Option<SocketAddr> {
    let items = v.as_array()?;
    addr_of(items.first()?.as_str()?, items.get(1)?.as_str()?)
}

fn addr_of(ip: &str, port: &str) -> Option<SocketAddr> {
    Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
}

/// `ROLE`'s answer says this server takes writes (`master`).
pub fn is_primary(v: &Value) -> bool {
    v.as_array().and_then(|items| items.first()).and_then(Value::as_str) == Some("master")
}

/// A write refused unrun because the server is no writable primary now: demoted to
/// a replica (`READONLY`), or cut off from its replicas under `min-replicas-to-write`
/// (`NOREPLICAS`, the first thing a primary says once its replica was promoted).
pub fn is_demoted(v: &Value) -> bool {
    matches!(v, Value::Error(e) if e.starts_with("READONLY") || e.starts_with("NOREPLICAS"))
}

/// At most this many sentinels in a URL (each gets a watching link).
pub const MAX_SENTINELS: usize = 8;

/// Passive links, one to every sentinel, subscribed to the steps of a failover. Only
/// the sentinel that leads a failover says `+selected-slave`, shortly before it
/// promotes the replica (the old primary takes writes until then, and whatever it
/// takes after the promotion is thrown away when it becomes a replica): hearing it
/// from whichever sentinel leads, a node stops writing in time.
#[derive(Debug)]
pub struct Watchers {
    addrs: Vec<SocketAddr>,
    master: String,
    password: Option<String>,
    links: Vec<Watch>,
}

#[derive(Debug)]
struct Watch {
    link: Option<Link>,
    retry_at: Instant,
    backoff: Backoff,
    /// The reactor must open (Some) or drop (None after `close`) this link.
    open: Option<SocketAddr>,
    close: bool,
}

/// What the reactor must do with watching link `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchIo {
    Open(usize, SocketAddr),
    Close(usize),
}

impl Watchers {
    pub fn new(set: &SentinelSet, password: Option<String>, now: Instant) -> Watchers {
        let links = set
            .addrs
            .iter()
            .map(|_| Watch { link: None, retry_at: now, backoff: Backoff::new(), open: None, close: false })
            .collect();
        Watchers { addrs: set.addrs.clone(), master: set.master.clone(), password, links }
    }

    fn open(&mut self, i: usize) {
        let mut link = Link::default();
        if let Some(pw) = &self.password {
            link.queue(&[b"AUTH".as_slice(), pw.as_bytes()]);
        }
        link.queue(&["SUBSCRIBE", "+selected-slave", "+switch-master"]);
        let w = &mut self.links[i];
        w.link = Some(link);
        w.open = Some(self.addrs[i]);
    }

    /// What the reactor must do with the watching links, in order.
    pub fn take_io(&mut self) -> Vec<WatchIo> {
        let mut io = Vec::new();
        for (i, w) in self.links.iter_mut().enumerate() {
            if std::mem::take(&mut w.close) {
                io.push(WatchIo::Close(i));
            }
            if let Some(addr) = w.open.take() {
                io.push(WatchIo::Open(i, addr));
            }
        }
        io
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.links.iter().filter(|w| w.link.is_none()).map(|w| w.retry_at).min()
    }

    /// Opens every watch that is due (all of them at first).
    pub fn on_timeout(&mut self, now: Instant) {
        for i in 0..self.links.len() {
            if self.links[i].link.is_none() && now >= self.links[i].retry_at {
                self.open(i);
            }
        }
    }

    pub fn on_closed(&mut self, i: usize, now: Instant) {
        let Some(w) = self.links.get_mut(i) else { return };
        if w.link.take().is_some() {
            w.close = true;
            w.retry_at = now + w.backoff.step();
        }
    }

    pub fn output(&self, i: usize) -> &[u8] {
        self.links.get(i).and_then(|w| w.link.as_ref()).map_or(&[], Link::output)
    }

    pub fn consumed(&mut self, i: usize, n: usize) {
        if let Some(l) = self.links.get_mut(i).and_then(|w| w.link.as_mut()) {
            l.consumed(n);
        }
    }

    /// Bytes from watching link `i`: a failover of our primary starting, or done.
    pub fn on_bytes(&mut self, i: usize, bytes: &[u8], now: Instant) -> Vec<News> {
        let Some(link) = self.links.get_mut(i).and_then(|w| w.link.as_mut()) else { return Vec::new() };
        let values = match link.received(bytes) {
            Ok(v) => v,
            Err(e) => {
                log::warn(format_args!("redis sentinel {}: {e}", self.addrs[i]));
                self.on_closed(i, now);
                return Vec::new();
            }
        };
        let mut news = Vec::new();
        for v in values {
            let Some(items) = v.as_array() else { continue };
            match items.first().and_then(Value::as_str) {
                Some("subscribe") => self.links[i].backoff.reset(),
                Some("message") => {
                    let channel = items.get(1).and_then(Value::as_str);
                    let Some(text) = items.get(2).and_then(Value::as_str) else { continue };
                    let f: Vec<&str> = text.split(' ').collect();
                    match (channel, &f[..]) {
                        // slave IP:PORT IP PORT @ MASTER MASTER_IP MASTER_PORT
                        (Some("+selected-slave"), [_, _, _, _, "@", name, ..]) if *name == self.master => {
                            news.push(News::FailoverStarting)
                        }
                        (Some("+switch-master"), [name, _, _, ip, port]) if *name == self.master => {
                            if let Some(addr) = addr_of(ip, port) {
                                news.push(News::Switched(addr));
                            }
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        news
    }
}
