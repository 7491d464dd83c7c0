//! WebSocket: the RFC 6455 upgrade checks and 101 response, the close codes, and
//! the glue that runs tungstenite's protocol state machine over the connection's
//! input buffer. tungstenite never sees the socket: it is handed one whole frame at
//! a time from that buffer and writes into the connection's `OutQueue`.

pub mod frame;

use crate::http::Request;
use crate::outq::{Chunk, OutQueue, QueueWriter};
use std::io::{self, Read, Write};
use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

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

/// tungstenite allocates its read buffer eagerly (128 KiB by default). Frames reach
/// it whole from our buffer, so it only ever holds the one frame being decoded.
const READ_BUFFER: usize = 256;

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

/// The WebSocket state of one connection. Between messages (the usual idle state)
/// it holds no tungstenite context at all: frames are decoded by a context borrowed
/// from a `ContextPool`, and only a connection in the middle of a fragmented message
/// keeps one of its own. That is what keeps an idle socket at a few bytes here.
#[derive(Default)]
pub struct WsConn {
    /// Held exactly while a fragmented message is incomplete.
    partial: Option<Box<Partial>>,
}

/// A fragmented message in progress. tungstenite's context cannot be copied out of
/// the process, so the payload so far is kept beside it: replayed as one unfinished
/// frame into a fresh context (`resume`), it puts a new process where this one was.
/// Kept as payload rather than frames, it is bounded by the message limit however
/// many empty continuation frames a client sends.
struct Partial {
    ctx: Box<WebSocketContext>,
    opcode: u8,
    payload: Vec<u8>,
}

/// One spare decoding context, shared by every connection of the loop. A context
/// is only returned here in its initial state (active, no partial message, empty
/// buffers), so any connection may use it next.
#[derive(Default)]
pub struct ContextPool {
    spare: Option<Box<WebSocketContext>>,
}

impl ContextPool {
    fn take(&mut self) -> Box<WebSocketContext> {
        self.spare.take().unwrap_or_else(|| Box::new(WebSocketContext::new(Role::Server, Some(config()))))
    }

    fn put(&mut self, ctx: Box<WebSocketContext>) {
        if self.spare.is_none() {
            self.spare = Some(ctx);
        }
    }
}

/// Where the frame at the front of `buf` ends, read from its header.
struct FrameExtent {
    len: usize,
    fin: bool,
    opcode: u8,
    /// Where the payload starts, and its mask (zero if unmasked).
    payload_at: usize,
    mask: [u8; 4],
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
    let masked = b1 & 0x80 != 0;
    let mask_at = 2 + len_bytes;
    let mut mask = [0u8; 4];
    if masked {
        match buf.get(mask_at..mask_at + 4) {
            Some(m) => mask.copy_from_slice(m),
            None => return Ok(None),
        }
    }
    let payload_at = mask_at + if masked { 4 } else { 0 };
    Ok(Some(FrameExtent {
        len: payload_at + payload as usize,
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        payload_at,
        mask,
    }))
}

/// tungstenite's view of the connection: one frame's bytes in, the OutQueue out.
struct Io<'a> {
    input: &'a [u8],
    out: &'a mut OutQueue,
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            // Not EOF: the rest of the stream is simply not ours to hand over yet.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.input.read(buf)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        QueueWriter(self.out).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Frames go straight to the OutQueue, in order with the frames we queue ourselves.
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

impl WsConn {
    pub fn new() -> Self {
        Self::default()
    }

    /// True while this connection keeps a decoding context of its own (only in the
    /// middle of a fragmented message).
    pub fn holds_context(&self) -> bool {
        self.partial.is_some()
    }

    /// The fragmented message in progress, if any: its opcode and payload so far.
    pub fn partial(&self) -> Option<(u8, &[u8])> {
        self.partial.as_ref().map(|p| (p.opcode, &p.payload[..]))
    }

    /// A connection in the middle of a fragmented message, as `partial` described
    /// it (in another process). `None` if tungstenite does not take it as the start
    /// of a message still to be continued.
    pub fn resume(opcode: u8, payload: &[u8], pool: &mut ContextPool) -> Option<WsConn> {
        if !matches!(opcode, 0x1 | 0x2) || payload.len() > MAX_MESSAGE_BYTES {
            return None;
        }
        let mut input = frame::client_frame(opcode, payload, [0; 4]);
        // Not final: the rest of the message is still to come from the peer.
        input[0] &= 0x7f;
        let mut ws = WsConn::new();
        let mut replies = OutQueue::new();
        match ws.read(&mut input, &mut replies, pool) {
            WsRead::Control if ws.partial.is_some() && input.is_empty() && replies.is_empty() => Some(ws),
            _ => None,
        }
    }

    /// Decodes the frame at the front of `input`, if it is whole, and removes it.
    /// Replies tungstenite owes (pongs, the close echo) land in `out`.
    pub fn read(&mut self, input: &mut Vec<u8>, out: &mut OutQueue, pool: &mut ContextPool) -> WsRead {
        let extent = match frame_extent(input) {
            Err(code) => return WsRead::Fail(code),
            Ok(Some(e)) if e.len <= input.len() => e,
            Ok(_) => return WsRead::NeedMore,
        };
        let was_fragmented = self.partial.is_some();
        let (mut ctx, kept) = match self.partial.take() {
            Some(p) => (p.ctx, Some((p.opcode, p.payload))),
            None => (pool.take(), None),
        };
        let mut io = Io { input: &input[..extent.len], out };
        let result = ctx.read(&mut io);
        // Pongs and close replies are queued inside tungstenite until flushed.
        let _ = ctx.flush(&mut io);
        let fragmented = match extent.opcode {
            0x0..=0x7 => !extent.fin,
            // Control frames may come between fragments and change nothing.
            _ => was_fragmented,
        };
        // Only a message still unfinished keeps its payload (a copy, unmasked).
        let (opcode, mut payload) = kept.unwrap_or((extent.opcode, Vec::new()));
        if fragmented && extent.opcode <= 0x7 {
            let masked = &input[extent.payload_at..extent.len];
            payload.extend(masked.iter().enumerate().map(|(i, b)| b ^ extent.mask[i % 4]));
        }
        input.drain(..extent.len);
        let read = match result {
            Ok(Message::Text(t)) => WsRead::Text(t.as_str().to_owned()),
            Ok(Message::Binary(_)) => WsRead::Binary,
            Ok(Message::Close(_)) => WsRead::Closed,
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => WsRead::Control,
            // The frame was consumed but completes no message: a fragment.
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => WsRead::Control,
            Err(e) => map_error(e),
        };
        match read {
            WsRead::Text(_) | WsRead::Control | WsRead::Binary if fragmented => {
                self.partial = Some(Box::new(Partial { ctx, opcode, payload }))
            }
            WsRead::Text(_) | WsRead::Control | WsRead::Binary => pool.put(ctx),
            // Closed or failed: the connection is leaving, and so does its context.
            _ => {}
        }
        read
    }

    /// Queues a server ping.
    pub fn ping(out: &mut OutQueue) {
        out.push(Chunk::Static(PING));
    }
}

fn map_error(e: WsError) -> WsRead {
    match e {
        WsError::Io(_) | WsError::ConnectionClosed | WsError::AlreadyClosed => WsRead::Closed,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => WsRead::Closed,
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => WsRead::Fail(close::TOO_BIG),
        WsError::Capacity(_) => WsRead::Fail(close::TOO_BIG),
        WsError::Utf8(_) => WsRead::Fail(close::INVALID_DATA),
        _ => WsRead::Fail(close::PROTOCOL),
    }
}

#[cfg(test)]
mod tests;
