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

fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame::client_frame(opcode, payload, [9, 8, 7, 6])
}

fn drain(out: &mut OutQueue) -> Vec<u8> {
    let mut v = Vec::new();
    assert_eq!(out.flush_to(0, &mut BroadcastLog::new(), &mut v, usize::MAX).unwrap().0, Flush::Done);
    v
}

/// Reads one frame from `input` with a fresh connection and pool.
fn read_one(input: &[u8]) -> (WsRead, Vec<u8>) {
    let mut input = input.to_vec();
    let mut out = OutQueue::new();
    let read = WsConn::new().read(&mut input, &mut out);
    (read, drain(&mut out))
}

#[test]
fn text_arrives_whole_even_when_split_and_leaves_the_next_frame() {
    let frame = client_frame(0x1, br#"{"message":"hi"}"#);
    let mut ws = WsConn::new();
    let mut out = OutQueue::new();
    let mut input = frame[..3].to_vec();
    assert_eq!(ws.read(&mut input, &mut out), WsRead::NeedMore);
    assert_eq!(input.len(), 3, "a partial frame stays in the buffer");
    input.extend_from_slice(&frame[3..]);
    input.extend_from_slice(&client_frame(0x1, b"next")[..4]);
    assert_eq!(ws.read(&mut input, &mut out), WsRead::Text(r#"{"message":"hi"}"#.into()));
    assert_eq!(input.len(), 4, "only the whole frame was consumed");
    assert!(!ws.holds_partial());
}

#[test]
fn every_length_form_and_every_split_decodes_the_same() {
    for len in [0usize, 125, 126, 300, MAX_MESSAGE_BYTES] {
        let payload = "y".repeat(len);
        let frame = client_frame(0x1, payload.as_bytes());
        for split in [1, 2, 3, 5, 9, frame.len() - 1] {
            let mut ws = WsConn::new();
            let mut out = OutQueue::new();
            let mut input = frame[..split.min(frame.len())].to_vec();
            let first = ws.read(&mut input, &mut out);
            if split < frame.len() {
                assert_eq!(first, WsRead::NeedMore, "len {len} split {split}");
                input.extend_from_slice(&frame[split..]);
                assert_eq!(ws.read(&mut input, &mut out), WsRead::Text(payload.clone()));
            } else {
                assert_eq!(first, WsRead::Text(payload.clone()));
            }
            assert!(input.is_empty());
        }
    }
}

#[test]
fn ping_is_answered_with_pong() {
    assert_eq!(read_one(&client_frame(0x9, b"p")), (WsRead::Control, vec![0x8a, 0x01, b'p']));
}

#[test]
fn binary_oversize_and_bad_utf8_are_reported() {
    assert_eq!(read_one(&client_frame(0x2, b"\x01")).0, WsRead::Binary);
    let big = vec![b'x'; MAX_MESSAGE_BYTES + 1];
    assert_eq!(read_one(&client_frame(0x1, &big)).0, WsRead::Fail(close::TOO_BIG));
    // Refused from the header alone: the 2^40-byte payload is never waited for.
    let header = [&[0x81u8, 0x80 | 127][..], &(1u64 << 40).to_be_bytes()[..]].concat();
    assert_eq!(read_one(&header).0, WsRead::Fail(close::TOO_BIG));
    assert_eq!(read_one(&client_frame(0x1, b"\xff\xfe")).0, WsRead::Fail(close::INVALID_DATA));
}

#[test]
fn an_unmasked_client_frame_is_a_protocol_error() {
    assert_eq!(read_one(&[0x81, 0x01, b'x']).0, WsRead::Fail(close::PROTOCOL));
}

#[test]
fn peer_close_is_echoed() {
    let frame = client_frame(0x8, &1000u16.to_be_bytes());
    assert_eq!(read_one(&frame), (WsRead::Closed, vec![0x88, 0x02, 0x03, 0xe8]));
}

#[test]
fn our_close_carries_the_code() {
    assert_eq!(close_frame(close::POLICY).as_slice(), &[0x88, 0x02, 0x03, 0xf0]);
}

#[test]
fn a_fragmented_message_is_kept_per_connection() {
    let mut out = OutQueue::new();
    let (mut a, mut b) = (WsConn::new(), WsConn::new());
    let mut first = frame::client_frame(frame::TEXT, b"hel", [1, 2, 3, 4]);
    first[0] &= 0x7f; // no FIN: more fragments follow
    let mut input = first;
    assert_eq!(a.read(&mut input, &mut out), WsRead::Control);
    assert!(a.holds_partial());
    // Another connection decodes a whole message meanwhile.
    let mut other = client_frame(0x1, b"other");
    assert_eq!(b.read(&mut other, &mut out), WsRead::Text("other".into()));
    let mut rest = client_frame(0x0, b"lo");
    assert_eq!(a.read(&mut rest, &mut out), WsRead::Text("hello".into()));
    assert!(!a.holds_partial() && !b.holds_partial());
}

#[test]
fn the_101_response_carries_the_accept_value() {
    let head = String::from_utf8(accept_response("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")).unwrap();
    assert_eq!(
        head,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    );
}

/// A message fragmented across a hand-over: the payload so far (a ping in between,
/// a UTF-8 character split over two fragments) resumes in a fresh connection,
/// as in a new process, and the message completes there.
#[test]
fn a_fragmented_message_resumes_from_its_payload_in_a_fresh_context() {
    let mut out = OutQueue::new();
    let mut a = WsConn::new();
    let text = "hé".as_bytes();
    let mut first = client_frame(frame::TEXT, &text[..2]);
    first[0] &= 0x7f;
    first.extend(client_frame(frame::PING, b"p"));
    let mut middle = client_frame(0x0, &text[2..]);
    middle[0] &= 0x7f;
    first.extend(middle);
    for _ in 0..3 {
        assert_eq!(a.read(&mut first, &mut out), WsRead::Control);
    }
    assert!(first.is_empty());
    let (opcode, payload) = a.partial().expect("a message in progress");
    assert_eq!((opcode, payload), (frame::TEXT, text));
    let mut b = WsConn::resume(opcode, payload).expect("resumable");
    assert_eq!(b.partial(), Some((frame::TEXT, text)));
    let mut rest = client_frame(0x0, b"llo");
    assert_eq!(b.read(&mut rest, &mut out), WsRead::Text("héllo".into()));
    assert!(!b.holds_partial());
    // Only the pong went out, from the first process.
    assert_eq!(drain(&mut out), [0x8a, 0x01, b'p']);
}

#[test]
fn resume_refuses_what_no_peer_could_have_started() {
    assert!(WsConn::resume(0x0, b"cont").is_none());
    assert!(WsConn::resume(0x9, b"ping").is_none());
    assert!(WsConn::resume(frame::TEXT, &[0xff, 0xfe]).is_none(), "not UTF-8");
    assert!(WsConn::resume(frame::TEXT, &vec![b'a'; MAX_MESSAGE_BYTES + 1]).is_none());
    assert!(WsConn::resume(frame::BINARY, b"\x00\x01").is_some());
}

fn unfinished(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = client_frame(opcode, payload);
    f[0] &= 0x7f;
    f
}

#[test]
fn what_rfc_6455_forbids_is_a_protocol_error() {
    let mut rsv = client_frame(0x1, b"x");
    rsv[0] |= 0x40;
    assert_eq!(read_one(&rsv).0, WsRead::Fail(close::PROTOCOL), "RSV1 without an extension");
    assert_eq!(read_one(&unfinished(0x9, b"p")).0, WsRead::Fail(close::PROTOCOL), "a fragmented ping");
    assert_eq!(read_one(&client_frame(0x9, &[0; 126])).0, WsRead::Fail(close::PROTOCOL), "a long ping");
    assert_eq!(read_one(&client_frame(0x0, b"x")).0, WsRead::Fail(close::PROTOCOL), "a stray continuation");
    assert_eq!(read_one(&client_frame(0x3, b"x")).0, WsRead::Fail(close::PROTOCOL), "a reserved opcode");
    assert_eq!(read_one(&client_frame(0x8, &[3])).0, WsRead::Fail(close::PROTOCOL), "a 1-byte close");
    let mut ws = WsConn::new();
    let mut out = OutQueue::new();
    assert_eq!(ws.read(&mut unfinished(0x1, b"a"), &mut out), WsRead::Control);
    assert_eq!(ws.read(&mut client_frame(0x1, b"b"), &mut out), WsRead::Fail(close::PROTOCOL), "a new message mid-way");
}

#[test]
fn close_codes_no_endpoint_may_send_are_answered_1002() {
    for code in [999u16, 1004, 1005, 1006, 1014, 1015, 2999, 5000] {
        let (read, reply) = read_one(&client_frame(0x8, &code.to_be_bytes()));
        assert_eq!(read, WsRead::Closed, "{code}");
        assert_eq!(reply[..4], [0x88, 20, 0x03, 0xea], "{code}");
    }
    let mut with_reason = 4000u16.to_be_bytes().to_vec();
    with_reason.extend_from_slice(b"bye");
    assert_eq!(read_one(&client_frame(0x8, &with_reason)), (WsRead::Closed, [&[0x88, 5][..], &with_reason].concat()));
    assert_eq!(read_one(&client_frame(0x8, &[0x03, 0xe8, 0xff])).0, WsRead::Fail(close::INVALID_DATA));
    assert_eq!(read_one(&client_frame(0x8, b"")), (WsRead::Closed, vec![0x88, 0x00]));
}

/// What an unfinished message holds is its payload and a few bytes, however it
/// arrived; empty continuations add nothing, and the limit spans all fragments.
#[test]
fn an_unfinished_message_holds_what_arrived_and_no_more() {
    let mut ws = WsConn::new();
    let mut out = OutQueue::new();
    assert_eq!(ws.held(), 0);
    assert_eq!(ws.read(&mut unfinished(0x1, &[b'a'; 1000]), &mut out), WsRead::Control);
    for _ in 0..100 {
        assert_eq!(ws.read(&mut unfinished(0x0, &[b'b'; 100]), &mut out), WsRead::Control);
        assert_eq!(ws.read(&mut unfinished(0x0, b""), &mut out), WsRead::Control);
    }
    let arrived = 1000 + 100 * 100;
    assert!(ws.held() < arrived + arrived / 8 + 256, "{} held for {arrived}", ws.held());
    let rest = MAX_MESSAGE_BYTES - arrived;
    assert_eq!(ws.read(&mut unfinished(0x0, &vec![b'c'; rest]), &mut out), WsRead::Control);
    assert_eq!(ws.read(&mut client_frame(0x0, b"d"), &mut out), WsRead::Fail(close::TOO_BIG));
}

#[test]
fn text_that_cannot_become_utf8_fails_at_its_fragment() {
    let mut ws = WsConn::new();
    let mut out = OutQueue::new();
    // A character cut after its first byte waits for the rest...
    assert_eq!(ws.read(&mut unfinished(0x1, &"é".as_bytes()[..1]), &mut out), WsRead::Control);
    // ...which must be a continuation byte.
    assert_eq!(ws.read(&mut unfinished(0x0, b"x"), &mut out), WsRead::Fail(close::INVALID_DATA));
    let mut ws = WsConn::new();
    assert_eq!(ws.read(&mut unfinished(0x1, &"é".as_bytes()[..1]), &mut out), WsRead::Control);
    assert_eq!(ws.read(&mut client_frame(0x0, b""), &mut out), WsRead::Fail(close::INVALID_DATA), "cut at the end");
}

#[test]
fn reserve_modest_leaves_little_slack_and_respects_the_cap() {
    let mut v = Vec::new();
    for _ in 0..16 * 1024 {
        reserve_modest(&mut v, 1, 16 * 1024);
        v.push(0u8);
    }
    assert_eq!(v.capacity(), 16 * 1024, "the cap is the frame's limit");
    let mut v = vec![0u8; 4000];
    v.shrink_to_fit();
    reserve_modest(&mut v, 96, usize::MAX);
    assert!(v.capacity() < 4096 + 4096 / 8 + 65, "{}", v.capacity());
}
