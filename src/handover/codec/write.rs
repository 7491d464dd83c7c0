//! Writing a hand-over's state body (see `codec`).

use super::super::state::*;
use std::net::IpAddr;

/// The state's body as it is written: bytes gather in `buf` and go to `sink` in
/// chunks of about `SPILL`, so a large history is never held twice in memory.
pub(super) struct W<'s> {
    pub(super) buf: Vec<u8>,
    sink: &'s mut dyn FnMut(&[u8]),
    /// Tests write formats 1 and 2, whose kept messages are texts.
    #[cfg(test)]
    pub(super) text_entries: bool,
    /// Tests write formats 1 to 3, whose members have no presence mode.
    #[cfg(test)]
    pub(super) without_presence: bool,
}

/// Bytes gathered before they go to the sink.
const SPILL: usize = 256 * 1024;

impl<'s> W<'s> {
    pub(super) fn new(sink: &'s mut dyn FnMut(&[u8])) -> Self {
        W {
            buf: Vec::with_capacity(SPILL + 64 * 1024),
            sink,
            #[cfg(test)]
            text_entries: false,
            #[cfg(test)]
            without_presence: false,
        }
    }

    /// Hands what has gathered to the sink once there is enough of it.
    fn spill(&mut self) {
        if self.buf.len() >= SPILL {
            self.flush();
        }
    }

    pub(super) fn flush(&mut self) {
        (self.sink)(&self.buf);
        self.buf.clear();
    }

    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn rel(&mut self, v: Rel) {
        self.i64(v.0);
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.buf.extend_from_slice(v);
    }
    fn ip(&mut self, ip: &IpAddr) {
        match ip {
            IpAddr::V4(a) => {
                self.u8(4);
                self.buf.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                self.u8(6);
                self.buf.extend_from_slice(&a.octets());
            }
        }
    }
    fn key(&mut self, (key, generation): (usize, u64)) {
        self.u64(key as u64);
        self.u64(generation);
    }

    pub(super) fn state(&mut self, s: &State) {
        self.u64(s.next_generation);
        self.u32(s.conns.len() as u32);
        for c in &s.conns {
            self.conn(c);
            self.spill();
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
                    self.buf.extend_from_slice(h);
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
            self.buf.extend_from_slice(&s.id_hash);
            self.bytes(s.user.as_bytes());
            self.rel(s.last_active);
            self.rel(s.saved);
            self.spill();
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
            #[cfg(test)]
            if self.without_presence {
                continue;
            }
            self.u8(m.presence);
        }
        let h = &c.history;
        self.bytes(h.epoch.as_bytes());
        self.u64(h.last_id);
        self.u32(h.entries.len() as u32);
        for e in &h.entries {
            self.u64(e.id);
            self.i64(e.ts);
            self.bytes(e.author.as_bytes());
            #[cfg(test)]
            if self.text_entries {
                let v: serde_json::Value = serde_json::from_slice(e.json()).expect("a frame of JSON");
                self.bytes(v["message"].as_str().expect("a message").as_bytes());
                continue;
            }
            self.bytes(&e.frame);
            self.spill();
        }
        for v in [c.messages_in, c.messages_rejected, c.rate_limited, c.broadcasts] {
            self.u64(v);
        }
    }
}
