//! The WebSocket glue driven without sockets: client frames from a byte feed,
//! replies collected from the OutQueue.

use super::*;
use crate::outq::{BroadcastLog, Flush};

fn req(headers: &[(&str, &str)]) -> Request {
    Request {
        method: "GET".into(),
        target: "/ws".into(),
        minor_version: 1,
        headers: headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect(),
        body: vec![],
    }
}

const GOOD: &[(&str, &str)] = &[
    ("Host", "x"),
    ("Upgrade", "websocket"),
    ("Connection", "keep-alive, Upgrade"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

#[test]
fn accepts_the_rfc_example_and_derives_its_accept_value() {
    // RFC 6455 section 1.3's worked example.
    assert_eq!(check_upgrade(&req(GOOD)).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

#[test]
fn rejects_bad_handshakes() {
    let without = |name: &str| GOOD.iter().copied().filter(|(n, _)| *n != name).collect::<Vec<_>>();
    let with = |name: &str, value: &'static str| {
        GOOD.iter().map(|&(n, v)| if n == name { (n, value) } else { (n, v) }).collect::<Vec<_>>()
    };
    assert_eq!(check_upgrade(&req(&without("Upgrade"))), Err(UpgradeError::UpgradeRequired));
    assert!(matches!(check_upgrade(&req(&with("Upgrade", "h2c"))), Err(UpgradeError::Bad(_))));
    assert!(matches!(check_upgrade(&req(&without("Connection"))), Err(UpgradeError::Bad(_))));
    assert_eq!(check_upgrade(&req(&with("Sec-WebSocket-Version", "8"))), Err(UpgradeError::Version));
    assert!(matches!(check_upgrade(&req(&without("Sec-WebSocket-Key"))), Err(UpgradeError::Bad(_))));
    assert!(matches!(check_upgrade(&req(&with("Sec-WebSocket-Key", "abc"))), Err(UpgradeError::Bad(_))));
    // 24 characters but not 16 bytes' worth of base64 (stray bits in the last char).
    assert!(matches!(
        check_upgrade(&req(&with("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZR=="))),
        Err(UpgradeError::Bad(_))
    ));
    let mut post = req(GOOD);
    post.method = "POST".into();
    assert!(matches!(check_upgrade(&post), Err(UpgradeError::Bad(_))));
}

/// Bytes that arrive in pieces; `WouldBlock` when the current piece is used up.
struct Feed {
    data: Vec<u8>,
    pos: usize,
    limit: usize,
}

impl Read for Feed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let end = self.limit.min(self.data.len());
        if self.pos >= end {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(end - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame::client_frame(opcode, payload, [9, 8, 7, 6])
}

fn drain(out: &mut OutQueue) -> Vec<u8> {
    let mut v = Vec::new();
    assert_eq!(out.flush_to(0, &mut BroadcastLog::new(), &mut v, usize::MAX).unwrap().0, Flush::Done);
    v
}

#[test]
fn text_arrives_whole_even_when_split() {
    let frame = client_frame(frame::TEXT, br#"{"message":"hi"}"#);
    let mut feed = Feed { data: frame.clone(), pos: 0, limit: 3 };
    let mut ws = WsConn::new(vec![]);
    let mut out = OutQueue::new();
    assert_eq!(ws.read(&mut feed, &mut out), WsRead::WouldBlock);
    feed.limit = frame.len();
    assert_eq!(ws.read(&mut feed, &mut out), WsRead::Text(r#"{"message":"hi"}"#.into()));
}

#[test]
fn leftover_bytes_from_the_upgrade_are_read_first() {
    let frame = client_frame(frame::TEXT, b"early");
    let mut ws = WsConn::new(frame);
    let mut nothing = Feed { data: vec![], pos: 0, limit: 0 };
    assert_eq!(ws.read(&mut nothing, &mut OutQueue::new()), WsRead::Text("early".into()));
}

#[test]
fn ping_is_answered_with_pong() {
    let mut feed = Feed { data: client_frame(frame::PING, b"p"), pos: 0, limit: usize::MAX };
    let mut ws = WsConn::new(vec![]);
    let mut out = OutQueue::new();
    assert_eq!(ws.read(&mut feed, &mut out), WsRead::Control);
    assert_eq!(drain(&mut out), vec![0x8a, 0x01, b'p']);
}

#[test]
fn binary_oversize_and_bad_utf8_are_reported() {
    let mut out = OutQueue::new();
    let mut feed = Feed { data: client_frame(frame::BINARY, b"\x01"), pos: 0, limit: usize::MAX };
    assert_eq!(WsConn::new(vec![]).read(&mut feed, &mut out), WsRead::Binary);
    let big = vec![b'x'; MAX_MESSAGE_BYTES + 1];
    let mut feed = Feed { data: client_frame(frame::TEXT, &big), pos: 0, limit: usize::MAX };
    assert_eq!(WsConn::new(vec![]).read(&mut feed, &mut out), WsRead::Fail(close::TOO_BIG));
    let mut feed = Feed { data: client_frame(frame::TEXT, b"\xff\xfe"), pos: 0, limit: usize::MAX };
    assert_eq!(WsConn::new(vec![]).read(&mut feed, &mut out), WsRead::Fail(close::INVALID_DATA));
}

#[test]
fn an_unmasked_client_frame_is_a_protocol_error() {
    let mut feed = Feed { data: vec![0x81, 0x01, b'x'], pos: 0, limit: usize::MAX };
    let mut out = OutQueue::new();
    assert_eq!(WsConn::new(vec![]).read(&mut feed, &mut out), WsRead::Fail(close::PROTOCOL));
}

#[test]
fn peer_close_is_echoed() {
    let mut feed = Feed { data: client_frame(frame::CLOSE, &1000u16.to_be_bytes()), pos: 0, limit: usize::MAX };
    let mut ws = WsConn::new(vec![]);
    let mut out = OutQueue::new();
    assert_eq!(ws.read(&mut feed, &mut out), WsRead::Closed);
    assert_eq!(drain(&mut out), vec![0x88, 0x02, 0x03, 0xe8]);
}

#[test]
fn our_close_carries_the_code() {
    let mut ws = WsConn::new(vec![]);
    let mut out = OutQueue::new();
    ws.close(close::POLICY, &mut out);
    assert_eq!(drain(&mut out), vec![0x88, 0x02, 0x03, 0xf0]);
}
