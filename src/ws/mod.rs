//! WebSocket: the RFC 6455 upgrade checks and 101 response, the close codes, and
//! the decoder of client frames: one whole frame at a time out of the connection's
//! input buffer, replies (pongs, the close echo) into its `OutQueue`.
//!
//! The decoder is skiff's own rather than tungstenite's context because what a
//! connection holds must be what its peer sent and no more: tungstenite reserves a
//! frame's whole announced length, keeps its read buffer's high-water allocation and
//! collects a fragmented message in a buffer of its own, so an unfinished 16 KiB
//! message cost ~59 KiB. Here it costs its payload, kept once.

pub mod frame;

use crate::http::Request;
use crate::outq::{Chunk, OutQueue};

/// Close codes (RFC 6455 7.4.1) that skiff sends.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;

    /// The reason a close with `code` carries when the code alone says why
    /// (CLOSE_REASONS in the docs); codes with several causes pass theirs.
    pub fn reason(code: u16) -> &'static str {
        match code {
            GOING_AWAY => "going away",
            PROTOCOL => "protocol error",
            UNSUPPORTED => "binary frames are not accepted",
            INVALID_DATA => "invalid UTF-8",
            TOO_BIG => "message too big",
            _ => "",
        }
    }
}

/// Frames and messages larger than this close the socket with 1009.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// The longest client frame: a 14-byte header (8-byte length and a mask) and the
/// largest payload we accept. A connection's input buffer never needs more.
pub const MAX_FRAME_BYTES: usize = MAX_MESSAGE_BYTES + 14;

/// A server ping, pre-encoded (FIN | ping, no payload).
pub const PING: &[u8] = &[0x89, 0x00];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeError {
    /// No `Upgrade` header at all: 426, telling the client to upgrade.
    UpgradeRequired,
    /// Some other part of the handshake is wrong: 400.
    Bad(&'static str),
    /// `Sec-WebSocket-Version` is not 13: 400 with the version we speak.
    Version,
}

/// Checks an RFC 6455 opening handshake (section 4.2.1) and returns the
/// `Sec-WebSocket-Accept` value.
pub fn check_upgrade(req: &Request) -> Result<String, UpgradeError> {
    let Some(upgrade) = req.header("upgrade") else {
        return Err(UpgradeError::UpgradeRequired);
    };
    if !upgrade.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"websocket")) {
        return Err(UpgradeError::Bad("upgrade is not websocket"));
    }
    if req.method != "GET" || req.minor_version != 1 {
        return Err(UpgradeError::Bad("websocket needs GET over HTTP/1.1"));
    }
    if !req.connection_has("upgrade") {
        return Err(UpgradeError::Bad("connection lacks upgrade"));
    }
    if req.header("sec-websocket-version").map(|v| v.trim_ascii()) != Some(b"13") {
        return Err(UpgradeError::Version);
    }
    let key = req.header("sec-websocket-key").map(|k| k.trim_ascii()).unwrap_or_default();
    if !is_base64_of_16_bytes(key) {
        return Err(UpgradeError::Bad("bad sec-websocket-key"));
    }
    Ok(tungstenite::handshake::derive_accept_key(key))
}

/// The key must be 16 random bytes in base64: 22 significant characters and "==".
fn is_base64_of_16_bytes(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22].iter().all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        // The last significant character carries only 2 bits; the rest must be zero.
        && b"AQgw".contains(&key[21])
}

/// The response that completes the upgrade; `accept` comes from `check_upgrade`.
pub fn accept_response(accept: &str) -> Vec<u8> {
    const HEAD: &[u8] =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ";
    let mut out = Vec::with_capacity(HEAD.len() + accept.len() + 4);
    out.extend_from_slice(HEAD);
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// A server close frame carrying `code` and its usual reason (RFC 6455 5.5.1), unmasked.
pub fn close_frame(code: u16) -> Chunk {
    close_frame_with(code, close::reason(code))
}

/// The most a close frame's reason may hold: 125 bytes of payload less the code.
pub const MAX_CLOSE_REASON: usize = 123;

/// A server close frame carrying `code` and `reason`, cut at a character boundary
/// to fit the 125 bytes a control frame may carry.
pub fn close_frame_with(code: u16, reason: &str) -> Chunk {
    let reason = truncate(reason, MAX_CLOSE_REASON);
    let [hi, lo] = code.to_be_bytes();
    let mut f = Vec::with_capacity(4 + reason.len());
    f.extend_from_slice(&[0x88, 2 + reason.len() as u8, hi, lo]);
    f.extend_from_slice(reason.as_bytes());
    Chunk::Owned(f)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An unmasked control frame; `payload` is at most 125 bytes (the caller checked).
fn control_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(2 + payload.len());
    f.extend_from_slice(&[0x80 | opcode, payload.len() as u8]);
    f.extend_from_slice(payload);
    f
}

/// Grows `v` to take `extra` more bytes with little slack (an eighth plus a few
/// bytes), never past `max` unless `extra` itself needs it: a buffer holds about
/// what arrived, not the doubling `Vec` would give it, and a trickle of small reads
/// still reallocates only a logarithmic number of times.
pub fn reserve_modest(v: &mut Vec<u8>, extra: usize, max: usize) {
    let need = v.len() + extra;
    if need > v.capacity() {
        let target = (need + need / 8 + 64).min(max).max(need);
        v.reserve_exact(target - v.len());
    }
}

/// One thing read from the peer.
#[derive(Debug, PartialEq, Eq)]
pub enum WsRead {
    Text(String),
    /// A ping, pong or message fragment with no message yet: proof of life only.
    Control,
    /// A binary message: we speak text only (close 1003).
    Binary,
    /// The peer closed; its close frame was answered.
    Closed,
    /// A protocol violation; close with this code.
    Fail(u16),
    /// The buffer holds no whole frame yet.
    NeedMore,
}

/// The WebSocket state of one connection: between messages (the usual idle state)
/// nothing at all; in the middle of a fragmented message, its payload so far.
#[derive(Default)]
pub struct WsConn {
    partial: Option<Box<Partial>>,
}

/// A fragmented message in progress, bounded by the message limit however many
/// (empty) continuation frames a client sends.
struct Partial {
    opcode: u8,
    payload: Vec<u8>,
    /// Text checked as UTF-8 up to here; a character split over two fragments
    /// is checked once its end arrives.
    checked: usize,
}

impl Partial {
    /// Checks the text added since the last call. A message that can no longer
    /// become UTF-8 fails now, not at its last fragment.
    fn check(&mut self) -> Result<(), u16> {
        if self.opcode == frame::TEXT {
            self.checked = utf8_prefix(&self.payload, self.checked)?;
        }
        Ok(())
    }
}

/// How far `buf` is valid UTF-8 from `from` on, where a cut-off character at
/// the very end is still to be completed; an invalid byte is 1007.
fn utf8_prefix(buf: &[u8], from: usize) -> Result<usize, u16> {
    match std::str::from_utf8(&buf[from..]) {
        Ok(_) => Ok(buf.len()),
        Err(e) if e.error_len().is_none() => Ok(from + e.valid_up_to()),
        Err(_) => Err(close::INVALID_DATA),
    }
}

/// The frame at the front of the input buffer, as its header tells it.
struct FrameExtent {
    /// Header and payload.
    len: usize,
    fin: bool,
    /// RSV1-3: no extension is negotiated, so any of them set is an error.
    rsv: u8,
    opcode: u8,
    /// Where the payload starts, and its mask (`None`: the client did not mask).
    payload_at: usize,
    mask: Option<[u8; 4]>,
}

/// `Ok(None)` until the header is complete; a frame over the limit is refused from
/// its header alone, before any of its payload is buffered.
fn frame_extent(buf: &[u8]) -> Result<Option<FrameExtent>, u16> {
    let [b0, b1, rest @ ..] = buf else { return Ok(None) };
    let (payload, len_bytes) = match b1 & 0x7f {
        126 if rest.len() >= 2 => (u64::from(u16::from_be_bytes([rest[0], rest[1]])), 2),
        127 if rest.len() >= 8 => (u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")), 8),
        126 | 127 => return Ok(None),
        n => (u64::from(n), 0),
    };
    if payload > MAX_MESSAGE_BYTES as u64 {
        return Err(close::TOO_BIG);
    }
    let mask_at = 2 + len_bytes;
    let mask = if b1 & 0x80 != 0 {
        match buf.get(mask_at..mask_at + 4) {
            Some(m) => Some([m[0], m[1], m[2], m[3]]),
            None => return Ok(None),
        }
    } else {
        None
    };
    let payload_at = mask_at + if mask.is_some() { 4 } else { 0 };
    Ok(Some(FrameExtent {
        len: payload_at + payload as usize,
        fin: b0 & 0x80 != 0,
        rsv: b0 & 0x70,
        opcode: b0 & 0x0f,
        payload_at,
        mask,
    }))
}

/// Bytes the frame at the front of `buf` takes in all, once its header is in:
/// the input buffer grows to that and no further.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    frame_extent(buf).ok().flatten().map(|e| e.len)
}

/// Close codes a peer may send (RFC 6455 7.4); any other is a protocol error.
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

impl WsConn {
    pub fn new() -> Self {
        Self::default()
    }

    /// True in the middle of a fragmented message.
    pub fn holds_partial(&self) -> bool {
        self.partial.is_some()
    }

    /// Bytes this connection's decoder holds (the unfinished message).
    pub fn held(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.payload.capacity() + std::mem::size_of::<Partial>())
    }

    /// The fragmented message in progress, if any: its opcode and payload so far.
    pub fn partial(&self) -> Option<(u8, &[u8])> {
        self.partial.as_ref().map(|p| (p.opcode, &p.payload[..]))
    }

    /// A connection in the middle of a fragmented message, as `partial` described
    /// it (in another process). `None` if no peer could have started it.
    pub fn resume(opcode: u8, payload: &[u8]) -> Option<WsConn> {
        if !matches!(opcode, frame::TEXT | frame::BINARY) || payload.len() > MAX_MESSAGE_BYTES {
            return None;
        }
        let mut p = Partial { opcode, payload: payload.to_vec(), checked: 0 };
        p.check().ok()?;
        Some(WsConn { partial: Some(Box::new(p)) })
    }

    /// Decodes the frame at the front of `input`, if it is whole, and removes it.
    /// Replies owed (pongs, the close echo) land in `out`.
    pub fn read(&mut self, input: &mut Vec<u8>, out: &mut OutQueue) -> WsRead {
        let extent = match frame_extent(input) {
            Err(code) => return WsRead::Fail(code),
            Ok(Some(e)) if e.len <= input.len() => e,
            Ok(_) => return WsRead::NeedMore,
        };
        let read = self.decode(&extent, &mut input[extent.payload_at..extent.len], out);
        input.drain(..extent.len);
        read
    }

    fn decode(&mut self, e: &FrameExtent, payload: &mut [u8], out: &mut OutQueue) -> WsRead {
        // A server MUST close on an unmasked client frame (RFC 6455 5.1).
        let Some(mask) = e.mask else { return WsRead::Fail(close::PROTOCOL) };
        if e.rsv != 0 {
            return WsRead::Fail(close::PROTOCOL);
        }
        payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= mask[i % 4]);
        match e.opcode {
            frame::CLOSE | frame::PING | frame::PONG if !e.fin || payload.len() > 125 => WsRead::Fail(close::PROTOCOL),
            frame::PING => {
                out.push(Chunk::Owned(control_frame(frame::PONG, payload)));
                WsRead::Control
            }
            frame::PONG => WsRead::Control,
            frame::CLOSE => closed(payload, out),
            0x0 => self.continuation(e.fin, payload),
            frame::TEXT | frame::BINARY if self.partial.is_some() => WsRead::Fail(close::PROTOCOL),
            // Refused at its first frame: none of it is kept.
            frame::BINARY => WsRead::Binary,
            frame::TEXT if e.fin => match std::str::from_utf8(payload) {
                Ok(text) => WsRead::Text(text.to_owned()),
                Err(_) => WsRead::Fail(close::INVALID_DATA),
            },
            frame::TEXT => {
                let mut p = Partial { opcode: e.opcode, payload: Vec::new(), checked: 0 };
                reserve_modest(&mut p.payload, payload.len(), MAX_MESSAGE_BYTES);
                p.payload.extend_from_slice(payload);
                if let Err(code) = p.check() {
                    return WsRead::Fail(code);
                }
                self.partial = Some(Box::new(p));
                WsRead::Control
            }
            _ => WsRead::Fail(close::PROTOCOL),
        }
    }

    fn continuation(&mut self, fin: bool, payload: &[u8]) -> WsRead {
        let Some(p) = self.partial.as_mut() else { return WsRead::Fail(close::PROTOCOL) };
        if p.payload.len() + payload.len() > MAX_MESSAGE_BYTES {
            return WsRead::Fail(close::TOO_BIG);
        }
        reserve_modest(&mut p.payload, payload.len(), MAX_MESSAGE_BYTES);
        p.payload.extend_from_slice(payload);
        if let Err(code) = p.check() {
            return WsRead::Fail(code);
        }
        if !fin {
            return WsRead::Control;
        }
        let p = self.partial.take().expect("checked above");
        match p.opcode {
            frame::TEXT => match String::from_utf8(p.payload) {
                Ok(text) => WsRead::Text(text),
                Err(_) => WsRead::Fail(close::INVALID_DATA),
            },
            _ => WsRead::Binary,
        }
    }

    /// Queues a server ping.
    pub fn ping(out: &mut OutQueue) {
        out.push(Chunk::Static(PING));
    }
}

/// The peer's close frame: answered with its own code and reason (RFC 6455 5.5.1),
/// or 1002 when the code is one no endpoint may send.
fn closed(payload: &[u8], out: &mut OutQueue) -> WsRead {
    match payload {
        [] => out.push(Chunk::Static(&[0x88, 0x00])),
        [_] => return WsRead::Fail(close::PROTOCOL),
        [hi, lo, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                return WsRead::Fail(close::INVALID_DATA);
            }
            if close_code_allowed(u16::from_be_bytes([*hi, *lo])) {
                out.push(Chunk::Owned(control_frame(frame::CLOSE, payload)));
            } else {
                out.push(close_frame_with(close::PROTOCOL, "Protocol violation"));
            }
        }
    }
    WsRead::Closed
}

#[cfg(test)]
mod tests;
