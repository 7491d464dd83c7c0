//! A cluster node's two sockets to Redis, watched by the same poll as the clients.
//! The cluster core says when to open and close them (`Io`); this reads them into
//! it and writes what it has queued. No decision about Redis is made here.

use super::Reactor;
use crate::cluster::{Cluster, Io, LinkId};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::io::{self, Read, Write};
use std::time::Instant;

use crate::tokens::{REDIS_CMD as CMD, REDIS_SUB as SUB, SENTINEL, SENTINEL_WATCH_TOP as WATCH_TOP};
const WATCHES: usize = crate::cluster::sentinel::MAX_SENTINELS;

const READ_CHUNK: usize = 64 * 1024;
/// Bytes read from Redis in one loop turn, all links together: a big reply (a sync
/// of the whole history is ~130 MB) arrives over many turns, each a few ms of
/// parsing, with the clients served in between. TCP holds the rest back.
const READ_PER_TURN: usize = 256 * 1024;

pub struct RedisLinks {
    cmd: Option<TcpStream>,
    sub: Option<TcpStream>,
    sentinel: Option<TcpStream>,
    watches: [Option<TcpStream>; WATCHES],
    /// What this turn may still read.
    budget: usize,
    /// Links the budget cut short: they have more to read (edge-triggered: no new
    /// readiness comes for it), so the next turn reads them first.
    unread: Vec<LinkId>,
}

impl Default for RedisLinks {
    fn default() -> RedisLinks {
        RedisLinks {
            cmd: None,
            sub: None,
            sentinel: None,
            watches: Default::default(),
            budget: READ_PER_TURN,
            unread: Vec::new(),
        }
    }
}

fn link_of(token: Token) -> Option<LinkId> {
    match token {
        CMD => Some(LinkId::Cmd),
        SUB => Some(LinkId::Sub),
        SENTINEL => Some(LinkId::Sentinel),
        Token(t) if (WATCH_TOP - (WATCHES - 1)..=WATCH_TOP).contains(&t) => Some(LinkId::Watch(WATCH_TOP - t)),
        _ => None,
    }
}

fn open(addr: std::net::SocketAddr, token: Token, registry: &Registry) -> io::Result<TcpStream> {
    let mut sock = TcpStream::connect(addr)?;
    let _ = sock.set_nodelay(true);
    registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
    Ok(sock)
}

impl RedisLinks {
    fn sock(&mut self, link: LinkId) -> Option<&mut TcpStream> {
        match link {
            LinkId::Cmd => self.cmd.as_mut(),
            LinkId::Sub => self.sub.as_mut(),
            LinkId::Sentinel => self.sentinel.as_mut(),
            LinkId::Watch(i) => self.watches.get_mut(i)?.as_mut(),
        }
    }

    /// Carries out what the core asked of the sockets, in order.
    fn apply(&mut self, cluster: &mut Cluster, registry: &Registry, now: Instant) {
        while let Some(io) = cluster.poll_io() {
            match io {
                Io::Open(addr) => {
                    self.close(registry);
                    match (open(addr, CMD, registry), open(addr, SUB, registry)) {
                        (Ok(c), Ok(s)) => {
                            (self.cmd, self.sub) = (Some(c), Some(s));
                            cluster.connected(now);
                        }
                        (Err(e), other) | (other, Err(e)) => {
                            if let Ok(mut sock) = other {
                                let _ = registry.deregister(&mut sock);
                            }
                            cluster.on_closed(LinkId::Cmd, &format!("cannot connect: {e}"), now);
                        }
                    }
                }
                Io::Close => self.close(registry),
                Io::OpenSentinel(addr) => {
                    self.close_sentinel(registry);
                    match open(addr, SENTINEL, registry) {
                        Ok(sock) => self.sentinel = Some(sock),
                        Err(e) => cluster.on_closed(LinkId::Sentinel, &format!("cannot connect: {e}"), now),
                    }
                }
                Io::CloseSentinel => self.close_sentinel(registry),
                Io::OpenWatch(i, addr) if i < WATCHES => {
                    self.close_watch(i, registry);
                    match open(addr, Token(WATCH_TOP - i), registry) {
                        Ok(sock) => self.watches[i] = Some(sock),
                        Err(e) => cluster.on_closed(LinkId::Watch(i), &format!("cannot connect: {e}"), now),
                    }
                }
                Io::OpenWatch(..) => {}
                Io::CloseWatch(i) => self.close_watch(i, registry),
            }
        }
    }

    fn close_watch(&mut self, i: usize, registry: &Registry) {
        if let Some(mut sock) = self.watches.get_mut(i).and_then(Option::take) {
            let _ = registry.deregister(&mut sock);
        }
    }

    fn close_sentinel(&mut self, registry: &Registry) {
        if let Some(mut sock) = self.sentinel.take() {
            let _ = registry.deregister(&mut sock);
        }
    }

    fn close(&mut self, registry: &Registry) {
        for mut sock in [self.cmd.take(), self.sub.take()].into_iter().flatten() {
            let _ = registry.deregister(&mut sock);
        }
    }

    /// Reads what `link` has (edge-triggered: until it would block) into the core,
    /// or until this turn's budget is spent: then the link waits in `unread`.
    fn read(&mut self, link: LinkId, cluster: &mut Cluster, now: Instant) {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            if self.budget == 0 {
                if !self.unread.contains(&link) {
                    self.unread.push(link);
                }
                return;
            }
            let want = self.budget.min(READ_CHUNK);
            let Some(sock) = self.sock(link) else { return };
            match sock.read(&mut chunk[..want]) {
                Ok(0) => return cluster.on_closed(link, "connection closed", now),
                Ok(n) => {
                    self.budget -= n;
                    cluster.on_bytes(link, &chunk[..n], now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return cluster.on_closed(link, &e.to_string(), now),
            }
        }
    }

    /// The end of a turn: links the budget cut short are read on, and the next turn
    /// gets a fresh budget (and comes at once if some link still has more).
    fn read_on(&mut self, cluster: &mut Cluster, now: Instant) {
        for link in std::mem::take(&mut self.unread) {
            self.read(link, cluster, now);
        }
        self.budget = READ_PER_TURN;
        cluster.set_input_waiting(!self.unread.is_empty());
    }

    /// Writes what the core has queued for each link, until a socket would block.
    fn write(&mut self, cluster: &mut Cluster, now: Instant) {
        let watches = (0..WATCHES).map(LinkId::Watch);
        for link in [LinkId::Cmd, LinkId::Sub, LinkId::Sentinel].into_iter().chain(watches) {
            loop {
                let out = cluster.output(link);
                if out.is_empty() {
                    break;
                }
                let Some(sock) = self.sock(link) else { break };
                match sock.write(out) {
                    Ok(0) => {
                        cluster.on_closed(link, "connection closed", now);
                        break;
                    }
                    Ok(n) => cluster.consumed(link, n),
                    // Not connected yet, or the buffer is full: writable readiness comes.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::NotConnected => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        cluster.on_closed(link, &e.to_string(), now);
                        break;
                    }
                }
            }
        }
    }
}

impl Reactor {
    /// Readiness on a Redis link; false if `token` is not one.
    pub(super) fn on_redis_ready(&mut self, token: Token, now: Instant) -> bool {
        let Some(link) = link_of(token) else { return false };
        if let Some(cluster) = self.server.cx.cluster.as_mut() {
            self.redis.read(link, cluster, now);
        }
        self.server.run_cluster_events(now);
        true
    }

    /// The end of every loop turn: whatever the turn queued for Redis (a sync
    /// included) goes out in one write per link, the sockets are opened or closed
    /// as the core asks, and what that changes is handled now.
    pub(super) fn flush_redis(&mut self, now: Instant) {
        if self.server.cx.cluster.is_none() {
            return;
        }
        if let Some(cluster) = self.server.cx.cluster.as_mut() {
            self.redis.read_on(cluster, now);
        }
        self.server.run_cluster_events(now);
        let registry = self.poll.registry();
        if let Some(cluster) = self.server.cx.cluster.as_mut() {
            self.redis.apply(cluster, registry, now);
            self.redis.write(cluster, now);
            cluster.flush(now);
            self.redis.apply(cluster, registry, now);
        }
        self.server.run_cluster_events(now);
        self.server.release_input(now);
    }

    /// A hand-over settling: what Redis has sent is taken in and what is queued for
    /// it goes out, outside the loop (the links are read until they would block).
    pub(super) fn pump_redis(&mut self, now: Instant) {
        if self.server.cx.cluster.is_none() {
            return;
        }
        self.on_redis_ready(CMD, now);
        self.on_redis_ready(SUB, now);
        self.on_redis_ready(SENTINEL, now);
        for i in 0..WATCHES {
            self.on_redis_ready(Token(WATCH_TOP - i), now);
        }
        self.flush_redis(now);
    }
}
