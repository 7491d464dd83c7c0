//! WebSocket: the RFC 6455 upgrade checks, and the glue that runs tungstenite's
//! protocol state machine over the connection's bytes. tungstenite never sees the
//! socket: it reads through whatever `Read` it is handed and writes into the
//! connection's `OutQueue`.

pub mod frame;

use crate::chat::close;
use crate::http::Request;
use crate::outq::{Chunk, OutQueue, QueueWriter};
use std::io::{self, Read, Write};
use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

/// Frames and messages larger than this close the socket with 1009.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// tungstenite allocates its read buffer eagerly per socket (128 KiB by default);
/// chat frames are small, so a small buffer keeps thousands of idle sockets cheap.
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

/// One thing read from the peer.
#[derive(Debug, PartialEq, Eq)]
pub enum WsRead {
    Text(String),
    /// A ping, pong or continuation with no message yet: proof of life only.
    Control,
    /// A binary message: we speak text only (close 1003).
    Binary,
    /// The peer closed (its close frame was answered) or the stream ended.
    Closed,
    /// A protocol violation; close with this code.
    Fail(u16),
    /// Nothing more to read now.
    WouldBlock,
}

/// The WebSocket phase of a connection.
pub struct WsConn {
    ctx: WebSocketContext,
}

struct Io<'a, R: Read> {
    input: &'a mut R,
    out: &'a mut OutQueue,
}

impl<R: Read> Read for Io<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl<R: Read> Write for Io<'_, R> {
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
    /// `leftover` is whatever arrived after the upgrade request's head.
    pub fn new(leftover: Vec<u8>) -> Self {
        let ctx = if leftover.is_empty() {
            WebSocketContext::new(Role::Server, Some(config()))
        } else {
            WebSocketContext::from_partially_read(leftover, Role::Server, Some(config()))
        };
        WsConn { ctx }
    }

    /// Reads one message or control frame through `input`. Replies tungstenite owes
    /// (pongs, the close echo) land in `out`.
    pub fn read<R: Read>(&mut self, input: &mut R, out: &mut OutQueue) -> WsRead {
        let mut io = Io { input, out };
        let result = self.ctx.read(&mut io);
        // Pongs and close replies are queued inside tungstenite until flushed.
        let _ = self.ctx.flush(&mut io);
        match result {
            Ok(Message::Text(t)) => WsRead::Text(t.as_str().to_owned()),
            Ok(Message::Binary(_)) => WsRead::Binary,
            Ok(Message::Close(_)) => WsRead::Closed,
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => WsRead::Control,
            Err(e) => map_error(e),
        }
    }

    /// Queues a close frame with `code` (RFC 6455 5.5.1).
    pub fn close(&mut self, code: u16, out: &mut OutQueue) {
        let mut empty: &[u8] = &[];
        let mut io = Io { input: &mut empty, out };
        let frame = CloseFrame { code: CloseCode::from(code), reason: "".into() };
        let _ = self.ctx.close(&mut io, Some(frame));
        let _ = self.ctx.flush(&mut io);
    }

    /// Queues a ping.
    pub fn ping(out: &mut OutQueue) {
        out.push(Chunk::Static(PING));
    }
}

fn map_error(e: WsError) -> WsRead {
    match e {
        WsError::Io(e) if e.kind() == io::ErrorKind::WouldBlock => WsRead::WouldBlock,
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
