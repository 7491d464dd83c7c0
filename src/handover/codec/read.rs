//! Reading a hand-over's state body (see `codec`). Every length is checked against
//! what is left before anything is allocated for it.

use super::super::state::*;
use super::{Error, WordSum};
use crate::chat::history::{server_payload, Entry};
use crate::chat::Chat;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;

/// How the body is being read: whether the history is kept (a probe checks it and
/// drops it), who is told as the reading passes through it, and the body's
/// checksum so far.
pub struct Reading<'r, 'b> {
    pub(super) keep_history: bool,
    /// `release(upto)`: the bytes before offset `upto` of what was decoded will not
    /// be read again.
    pub(super) release: &'r mut dyn FnMut(usize),
    pub(super) body: &'b [u8],
    /// Where the body starts in what was decoded.
    pub(super) base: usize,
    /// The body up to here is summed and released.
    pub(super) released: usize,
    pub(super) sum: WordSum,
}

/// Bytes between two calls of `release`.
pub(super) const RELEASE_EVERY: usize = 1 << 20;

impl Reading<'_, '_> {
    /// The reading has `left` bytes of the body to go: what it has passed is summed
    /// and let go, a chunk at a time.
    fn passed(&mut self, left: usize) {
        let at = self.body.len() - left;
        if at >= self.released + RELEASE_EVERY {
            self.sum.update(&self.body[self.released..at]);
            self.released = at;
            (self.release)(self.base + at);
        }
    }
}

/// An unmasked, final text frame whose header's length is its payload's.
fn is_text_frame(frame: &[u8]) -> bool {
    let payload = server_payload(frame);
    let declared = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => frame.get(2..4).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize),
        Some(127) => frame.get(2..10).map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")) as usize),
        Some(n) => Some(n as usize),
        None => None,
    };
    frame.first() == Some(&0x81) && declared == Some(payload.len())
}

pub(super) struct R<'a>(pub(super) &'a [u8]);

/// Keys (connection and session slots) beyond this are refused: a slab is as long
/// as its highest key, and no server holds anywhere near 16 million of either.
pub(super) const MAX_KEY: u64 = 1 << 24;

impl<'a> R<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
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
    pub(super) fn u8(&mut self) -> Result<u8, Error> {
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
    pub(super) fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(super) fn i32(&mut self) -> Result<i32, Error> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    pub(super) fn u64(&mut self) -> Result<u64, Error> {
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
    pub(super) fn count(&mut self, min: usize) -> Result<usize, Error> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.0.len() {
            return Err(Error::Truncated);
        }
        Ok(n)
    }
    fn slice(&mut self) -> Result<&'a [u8], Error> {
        let n = usize::try_from(self.u64()?).map_err(|_| Error::Truncated)?;
        self.take(n)
    }
    fn bytes(&mut self) -> Result<Vec<u8>, Error> {
        Ok(self.slice()?.to_vec())
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

    pub(super) fn state(&mut self, version: u32, reading: &mut Reading<'_, '_>) -> Result<State, Error> {
        let next_generation = self.u64()?;
        let n = self.count(40)?;
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(self.conn()?);
        }
        let chat = self.chat(version, reading)?;
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

    pub(super) fn cluster(&mut self) -> Result<Option<ClusterState>, Error> {
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

    fn chat(&mut self, version: u32, reading: &mut Reading<'_, '_>) -> Result<ChatState, Error> {
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
            let v2 = self.bool()?;
            let presence = if version >= 4 { self.u8()? } else { 0 };
            room.push(MemberState { conn, session, bucket, v2, presence });
        }
        let epoch = self.string()?;
        let last_id = self.u64()?;
        let n = self.count(32)?;
        let mut entries = Vec::with_capacity(if reading.keep_history { n } else { 0 });
        // Each author's name once, as the ring shares it.
        let mut authors: HashMap<&'a [u8], Rc<str>> = HashMap::new();
        for _ in 0..n {
            let id = self.u64()?;
            let ts = self.i64()?;
            let name = self.slice()?;
            let author = match authors.get(name) {
                Some(a) => a.clone(),
                None => {
                    let a: Rc<str> =
                        Rc::from(std::str::from_utf8(name).map_err(|_| Error::Invalid("author is not UTF-8"))?);
                    authors.insert(name, a.clone());
                    a
                }
            };
            let frame: Option<Rc<[u8]>> = if version >= 3 {
                let frame = self.slice()?;
                if !is_text_frame(frame) {
                    return Err(Error::Invalid("a kept message's frame"));
                }
                reading.keep_history.then(|| Rc::from(frame))
            } else {
                // Formats 1 and 2 carried the text; the frame is made from it.
                let text = std::str::from_utf8(self.slice()?).map_err(|_| Error::Invalid("text is not UTF-8"))?;
                reading.keep_history.then(|| Chat::history_entry(id, ts, author.clone(), text).frame)
            };
            if let Some(frame) = frame {
                entries.push(Entry { id, ts, author, frame });
            }
            reading.passed(self.0.len());
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
