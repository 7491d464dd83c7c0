//! The bytes of a hand-over: an envelope whose layout never changes, then the state
//! in a versioned format. Any skiff that knows the envelope can find the sockets in
//! it, even one that cannot read the state after it (another version, a corrupt
//! copy): it closes them properly instead of leaking them. Both parts carry their
//! length and a checksum; decoding checks every length against what is left, so bad
//! input is an error, never a panic or a huge allocation. No syscalls here.
//!
//! ```text
//! envelope: MAGIC (16) | count u32 | count x (fd i32, flags u8) | checksum u64
//! state:    version u32 | length u64 | checksum u64 | body (length bytes)
//! ```
//! Integers are little-endian. The envelope's checksum is FNV-1a 64 of its bytes;
//! the state's is FNV-1a 64 over its body's 8-byte words (format 1: over its bytes,
//! eight times the multiplications over the megabytes of a large hand-over).
//! Format 2 adds the cluster section at the end of the body; format 1 is still read.

use super::state::*;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The envelope's layout 1. A later layout gets a new magic; this one stays frozen.
pub const MAGIC: &[u8; 16] = b"SKIFF-HANDOVER-1";
/// The state format this build writes; it reads this and every earlier one.
pub const STATE_VERSION: u32 = 2;

/// A descriptor that crosses the exec with the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handed {
    pub fd: i32,
    /// A WebSocket: if the state cannot be read, it gets a 1001 close frame.
    pub ws: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    Truncated,
    BadMagic,
    Checksum,
    /// A state format this build does not read.
    Version(u32),
    /// Bytes that decode but describe no state this build could have written.
    Invalid(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("truncated"),
            Error::BadMagic => f.write_str("not a skiff hand-over"),
            Error::Checksum => f.write_str("checksum mismatch"),
            Error::Version(v) => write!(f, "state format {v}, this build reads 1 to {STATE_VERSION}"),
            Error::Invalid(why) => write!(f, "invalid state: {why}"),
        }
    }
}

/// A decoded hand-over: the descriptors always (the envelope is intact), the state
/// if this build can read it.
#[derive(Debug)]
pub struct Decoded {
    pub handed: Vec<Handed>,
    pub state: Result<State, Error>,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// FNV-1a's steps over little-endian 8-byte words, then the bytes left over.
pub fn checksum_words(bytes: &[u8]) -> u64 {
    let words = bytes.chunks_exact(8);
    let tail = words.remainder();
    let h =
        words.fold(FNV_OFFSET, |h, w| (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(FNV_PRIME));
    tail.iter().fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// A size the encoded state will not outgrow, so its buffer is never copied.
fn size_hint(state: &State) -> usize {
    let conns: usize = state.conns.iter().map(|c| 128 + c.input.len() + c.output.len()).sum();
    let sessions: usize = state.chat.sessions.sessions.iter().map(|s| 96 + s.user.len()).sum();
    let history: usize = state.chat.history.entries.iter().map(|e| 32 + e.author.len() + e.text.len()).sum();
    let cluster = state.cluster.as_ref().map_or(0, |c| 64 + c.online.iter().map(|n| 8 + n.len()).sum::<usize>());
    4096 + conns + sessions + history + state.chat.room.len() * 40 + cluster
}

/// The envelope and the state, `handed[i]` being the socket of `state.conns[i]`.
pub fn encode(state: &State, handed: &[Handed]) -> Vec<u8> {
    let mut body = W(Vec::with_capacity(size_hint(state)));
    body.state(state);
    let mut out = W(Vec::with_capacity(64 + handed.len() * 5 + body.0.len()));
    out.0.extend_from_slice(MAGIC);
    out.u32(handed.len() as u32);
    for h in handed {
        out.i32(h.fd);
        out.u8(u8::from(h.ws));
    }
    let sum = checksum(&out.0);
    out.u64(sum);
    out.u32(STATE_VERSION);
    out.u64(body.0.len() as u64);
    out.u64(checksum_words(&body.0));
    out.0.extend_from_slice(&body.0);
    out.0
}

/// Reads a hand-over. `Err` only when the envelope itself is unreadable.
pub fn decode(bytes: &[u8]) -> Result<Decoded, Error> {
    let mut r = R(bytes);
    if r.take(MAGIC.len())? != MAGIC {
        return Err(Error::BadMagic);
    }
    let count = r.count(5)?;
    let mut handed = Vec::with_capacity(count);
    for _ in 0..count {
        let fd = r.i32()?;
        let ws = r.u8()? & 1 == 1;
        handed.push(Handed { fd, ws });
    }
    let envelope_len = bytes.len() - r.0.len();
    if r.u64()? != checksum(&bytes[..envelope_len]) {
        return Err(Error::Checksum);
    }
    Ok(Decoded { handed, state: decode_state(&mut r) })
}

fn decode_state(r: &mut R<'_>) -> Result<State, Error> {
    let version = r.u32()?;
    if version == 0 || version > STATE_VERSION {
        return Err(Error::Version(version));
    }
    let len = usize::try_from(r.u64()?).map_err(|_| Error::Truncated)?;
    let sum = r.u64()?;
    let body = r.take(len)?;
    let expected = if version == 1 { checksum(body) } else { checksum_words(body) };
    if expected != sum {
        return Err(Error::Checksum);
    }
    let mut b = R(body);
    let mut state = b.state()?;
    if version >= 2 {
        state.cluster = b.cluster()?;
    }
    if !b.0.is_empty() {
        return Err(Error::Invalid("bytes after the state"));
    }
    Ok(state)
}

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn rel(&mut self, v: Rel) {
        self.i64(v.0);
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.0.extend_from_slice(v);
    }
    fn ip(&mut self, ip: &IpAddr) {
        match ip {
            IpAddr::V4(a) => {
                self.u8(4);
                self.0.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                self.u8(6);
                self.0.extend_from_slice(&a.octets());
            }
        }
    }
    fn key(&mut self, (key, generation): (usize, u64)) {
        self.u64(key as u64);
        self.u64(generation);
    }

    fn state(&mut self, s: &State) {
        self.u64(s.next_generation);
        self.u32(s.conns.len() as u32);
        for c in &s.conns {
            self.conn(c);
        }
        self.chat(&s.chat);
        for windows in [&s.register_limits, &s.login_limits] {
            self.u32(windows.len() as u32);
            for w in windows {
                self.ip(&w.ip);
                self.rel(w.start);
                self.u32(w.count);
            }
        }
        self.u64(s.http_rate_limited);
        let t = &s.stats;
        for v in [t.accepted, t.refused, t.ws_opened, t.deliveries, t.slow_dropped, t.bytes_in, t.bytes_out] {
            self.u64(v);
        }
        self.u32(t.responses.len() as u32);
        for &(status, n) in &t.responses {
            self.u16(status);
            self.u64(n);
        }
        match &s.cluster {
            None => self.u8(0),
            Some(c) => {
                self.u8(1);
                self.bytes(c.node.as_bytes());
                self.u32(c.online.len() as u32);
                for name in &c.online {
                    self.bytes(name.as_bytes());
                }
                self.u32(c.deferred_logouts.len() as u32);
                for h in &c.deferred_logouts {
                    self.0.extend_from_slice(h);
                }
            }
        }
    }

    fn conn(&mut self, c: &ConnState) {
        self.u64(c.key as u64);
        self.u64(c.generation);
        self.ip(&c.peer.ip());
        self.u16(c.peer.port());
        let flags =
            u8::from(c.metered) | u8::from(c.readable) << 1 | u8::from(c.write_shut) << 2 | u8::from(c.peer_gone) << 3;
        self.u8(flags);
        self.bytes(&c.input);
        self.bytes(&c.output);
        match &c.phase {
            PhaseState::Http { deadline, continue_sent } => {
                self.u8(0);
                self.rel(*deadline);
                self.bool(*continue_sent);
            }
            PhaseState::Ws(w) => {
                self.u8(1);
                self.key(w.session);
                self.rel(w.last_seen);
                self.rel(w.next_ping);
                match &w.partial {
                    None => self.u8(0),
                    Some((opcode, payload)) => {
                        self.u8(1);
                        self.u8(*opcode);
                        self.bytes(payload);
                    }
                }
            }
            PhaseState::Closing { until } => {
                self.u8(2);
                self.rel(*until);
            }
        }
    }

    fn chat(&mut self, c: &ChatState) {
        self.u64(c.sessions.next_generation);
        self.u32(c.sessions.sessions.len() as u32);
        for s in &c.sessions.sessions {
            self.key((s.key, s.generation));
            self.0.extend_from_slice(&s.id_hash);
            self.bytes(s.user.as_bytes());
            self.rel(s.last_active);
            self.rel(s.saved);
        }
        self.u32(c.room.len() as u32);
        for m in &c.room {
            self.u64(m.conn as u64);
            self.key(m.session);
            match m.bucket {
                None => self.u8(0),
                Some((tokens, last)) => {
                    self.u8(1);
                    self.u32(tokens.to_bits());
                    self.rel(last);
                }
            }
            self.bool(m.v2);
        }
        let h = &c.history;
        self.bytes(h.epoch.as_bytes());
        self.u64(h.last_id);
        self.u32(h.entries.len() as u32);
        for e in &h.entries {
            self.u64(e.id);
            self.i64(e.ts);
            self.bytes(e.author.as_bytes());
            self.bytes(e.text.as_bytes());
        }
        for v in [c.messages_in, c.messages_rejected, c.rate_limited, c.broadcasts] {
            self.u64(v);
        }
    }
}

struct R<'a>(&'a [u8]);

/// Keys (connection and session slots) beyond this are refused: a slab is as long
/// as its highest key, and no server holds anywhere near 16 million of either.
const MAX_KEY: u64 = 1 << 24;

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.0.len() {
            return Err(Error::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }
    fn bool(&mut self) -> Result<bool, Error> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Error::Invalid("boolean")),
        }
    }
    fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32, Error> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, Error> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn rel(&mut self) -> Result<Rel, Error> {
        Ok(Rel(self.i64()?))
    }
    /// An element count, checked against the bytes left (each element takes at
    /// least `min` of them) before anything is allocated for it.
    fn count(&mut self, min: usize) -> Result<usize, Error> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.0.len() {
            return Err(Error::Truncated);
        }
        Ok(n)
    }
    fn bytes(&mut self) -> Result<Vec<u8>, Error> {
        let n = usize::try_from(self.u64()?).map_err(|_| Error::Truncated)?;
        Ok(self.take(n)?.to_vec())
    }
    fn string(&mut self) -> Result<String, Error> {
        String::from_utf8(self.bytes()?).map_err(|_| Error::Invalid("text is not UTF-8"))
    }
    fn ip(&mut self) -> Result<IpAddr, Error> {
        match self.u8()? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>()?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.array::<16>()?))),
            _ => Err(Error::Invalid("address family")),
        }
    }
    fn slot(&mut self) -> Result<usize, Error> {
        let key = self.u64()?;
        if key >= MAX_KEY {
            return Err(Error::Invalid("slot key out of range"));
        }
        Ok(key as usize)
    }
    fn key(&mut self) -> Result<(usize, u64), Error> {
        Ok((self.slot()?, self.u64()?))
    }

    fn state(&mut self) -> Result<State, Error> {
        let next_generation = self.u64()?;
        let n = self.count(40)?;
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(self.conn()?);
        }
        let chat = self.chat()?;
        let mut limits = [Vec::new(), Vec::new()];
        for windows in &mut limits {
            let n = self.count(17)?;
            windows.reserve(n);
            for _ in 0..n {
                windows.push(Window { ip: self.ip()?, start: self.rel()?, count: self.u32()? });
            }
        }
        let [register_limits, login_limits] = limits;
        let http_rate_limited = self.u64()?;
        let mut t = [0u64; 7];
        for v in &mut t {
            *v = self.u64()?;
        }
        let n = self.count(10)?;
        let mut responses = Vec::with_capacity(n);
        for _ in 0..n {
            responses.push((self.u16()?, self.u64()?));
        }
        let [accepted, refused, ws_opened, deliveries, slow_dropped, bytes_in, bytes_out] = t;
        let stats =
            StatsState { accepted, refused, ws_opened, deliveries, slow_dropped, bytes_in, bytes_out, responses };
        Ok(State {
            next_generation,
            conns,
            chat,
            register_limits,
            login_limits,
            http_rate_limited,
            stats,
            cluster: None,
        })
    }

    fn cluster(&mut self) -> Result<Option<ClusterState>, Error> {
        match self.u8()? {
            0 => return Ok(None),
            1 => {}
            _ => return Err(Error::Invalid("cluster marker")),
        }
        let node = self.string()?;
        let n = self.count(4)?;
        let mut online = Vec::with_capacity(n);
        for _ in 0..n {
            online.push(self.string()?);
        }
        let n = self.count(32)?;
        let mut deferred_logouts = Vec::with_capacity(n);
        for _ in 0..n {
            deferred_logouts.push(self.array::<32>()?);
        }
        Ok(Some(ClusterState { node, online, deferred_logouts }))
    }

    fn conn(&mut self) -> Result<ConnState, Error> {
        let key = self.slot()?;
        let generation = self.u64()?;
        let peer = SocketAddr::new(self.ip()?, self.u16()?);
        let flags = self.u8()?;
        if flags >> 4 != 0 {
            return Err(Error::Invalid("connection flags"));
        }
        let input = self.bytes()?;
        let output = self.bytes()?;
        let phase = match self.u8()? {
            0 => PhaseState::Http { deadline: self.rel()?, continue_sent: self.bool()? },
            1 => {
                let session = self.key()?;
                let last_seen = self.rel()?;
                let next_ping = self.rel()?;
                let partial = match self.u8()? {
                    0 => None,
                    1 => Some((self.u8()?, self.bytes()?)),
                    _ => return Err(Error::Invalid("fragment marker")),
                };
                PhaseState::Ws(WsState { session, last_seen, next_ping, partial })
            }
            2 => PhaseState::Closing { until: self.rel()? },
            _ => return Err(Error::Invalid("connection phase")),
        };
        Ok(ConnState {
            key,
            generation,
            peer,
            metered: flags & 1 != 0,
            readable: flags & 2 != 0,
            write_shut: flags & 4 != 0,
            peer_gone: flags & 8 != 0,
            input,
            output,
            phase,
        })
    }

    fn chat(&mut self) -> Result<ChatState, Error> {
        let next_generation = self.u64()?;
        let n = self.count(72)?;
        let mut sessions = Vec::with_capacity(n);
        for _ in 0..n {
            let (key, generation) = self.key()?;
            let id_hash = self.array::<32>()?;
            let user = self.string()?;
            sessions.push(SessionState {
                key,
                generation,
                id_hash,
                user,
                last_active: self.rel()?,
                saved: self.rel()?,
            });
        }
        let n = self.count(25)?;
        let mut room = Vec::with_capacity(n);
        for _ in 0..n {
            let conn = self.slot()?;
            let session = self.key()?;
            let bucket = match self.u8()? {
                0 => None,
                1 => Some((f32::from_bits(self.u32()?), self.rel()?)),
                _ => return Err(Error::Invalid("bucket marker")),
            };
            room.push(MemberState { conn, session, bucket, v2: self.bool()? });
        }
        let epoch = self.string()?;
        let last_id = self.u64()?;
        let n = self.count(32)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(Message { id: self.u64()?, ts: self.i64()?, author: self.string()?, text: self.string()? });
        }
        let history = HistoryState { epoch, last_id, entries };
        let mut c = [0u64; 4];
        for v in &mut c {
            *v = self.u64()?;
        }
        let [messages_in, messages_rejected, rate_limited, broadcasts] = c;
        Ok(ChatState {
            sessions: SessionsState { next_generation, sessions },
            room,
            history,
            messages_in,
            messages_rejected,
            rate_limited,
            broadcasts,
        })
    }
}

#[cfg(test)]
mod tests;
