//! WebSocket frames encoded and decoded by hand, both directions. Server frames are
//! unmasked (RFC 6455 5.1), so one encoding serves every recipient of a broadcast.
//! The client half (masked frames out, server frames in) is for skiff-bench and the
//! tests, which speak as clients; the server reads client frames with its own decoder
//! (`ws::WsConn` in mod.rs), which keeps no more than what has arrived.
//! No I/O here: bytes in, bytes out.

use std::ops::Range;
use std::rc::Rc;

/// Opcodes (RFC 6455 5.2).
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xa;

const FIN: u8 = 0x80;
const MASKED: u8 = 0x80;
const FIN_TEXT: u8 = FIN | TEXT;

/// Longest header of an unmasked frame: 2 bytes + 8-byte extended length.
const MAX_HEADER: usize = 10;

/// Header bytes before the mask key for a payload of `len`: the 7-bit, 16-bit and
/// 64-bit length forms (RFC 6455 5.2).
fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

/// Writes a header into `hdr`, which is exactly `header_len(len)` bytes.
fn put_header(hdr: &mut [u8], b0: u8, mask_bit: u8, len: usize) {
    hdr[0] = b0;
    match hdr.len() {
        2 => hdr[1] = mask_bit | len as u8,
        4 => {
            hdr[1] = mask_bit | 126;
            hdr[2..].copy_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            hdr[1] = mask_bit | 127;
            hdr[2..].copy_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// A builder that leaves room for the header in front of the payload, so the
/// finished frame is one allocation and no payload copy within it.
pub struct TextFrame {
    buf: Vec<u8>,
}

impl TextFrame {
    pub fn with_capacity(payload: usize) -> Self {
        let mut buf = Vec::with_capacity(MAX_HEADER + payload);
        buf.resize(MAX_HEADER, 0);
        TextFrame { buf }
    }

    /// The payload is written here (it must be UTF-8 text).
    pub fn payload(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    pub fn finish(mut self) -> Rc<[u8]> {
        let len = self.buf.len() - MAX_HEADER;
        let start = MAX_HEADER - header_len(len);
        put_header(&mut self.buf[start..MAX_HEADER], FIN_TEXT, 0, len);
        Rc::from(&self.buf[start..])
    }
}

/// A whole text frame for a fixed payload (acks, events).
pub fn text(payload: &[u8]) -> Rc<[u8]> {
    let mut f = TextFrame::with_capacity(payload.len());
    f.payload().extend_from_slice(payload);
    f.finish()
}

/// Appends one final (FIN) masked client frame to `out` (RFC 6455 5.3). A zero
/// `mask` leaves the payload as it is, which is what skiff-bench sends: masking is
/// mandatory, but a load generator has no proxy cache to poison.
pub fn encode_client(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    let at = out.len();
    let hdr = header_len(payload.len());
    out.resize(at + hdr, 0);
    put_header(&mut out[at..], FIN | (opcode & 0x0f), MASKED, payload.len());
    out.extend_from_slice(&mask);
    if mask == [0; 4] {
        out.extend_from_slice(payload);
    } else {
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }
}

/// `encode_client` into a fresh buffer.
pub fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_len(payload.len()) + 4 + payload.len());
    encode_client(opcode, payload, mask, &mut out);
    out
}

/// One server frame found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    pub fin: bool,
    pub opcode: u8,
    /// Where the payload lies in the buffer that was decoded.
    pub payload: Range<usize>,
    /// Bytes this frame takes, header included: decode again from here.
    pub consumed: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A server must not mask its frames (RFC 6455 5.1).
    Masked,
    /// A 64-bit length with its top bit set (RFC 6455 5.2), or beyond this address space.
    BadLength,
}

/// Decodes the server frame at the start of `buf`. `Ok(None)` means the frame is
/// not whole yet: call again with the same bytes and more after them. Nothing is
/// copied; the payload is a range of `buf`.
pub fn decode_server(buf: &[u8]) -> Result<Option<ServerFrame>, FrameError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b1 & MASKED != 0 {
        return Err(FrameError::Masked);
    }
    let (len, hdr) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(l) => (u16::from_be_bytes([l[0], l[1]]) as u64, 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(l) => (u64::from_be_bytes(l.try_into().expect("8 bytes")), 10),
            None => return Ok(None),
        },
        n => (n as u64, 2usize),
    };
    if len >> 63 != 0 {
        return Err(FrameError::BadLength);
    }
    let len = usize::try_from(len).map_err(|_| FrameError::BadLength)?;
    let end = hdr.checked_add(len).ok_or(FrameError::BadLength)?;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(ServerFrame { fin: b0 & FIN != 0, opcode: b0 & 0x0f, payload: hdr..end, consumed: end }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    use tungstenite::protocol::frame::{Frame, FrameHeader};

    /// Payload sizes at the edges of the three length forms.
    const LENS: [usize; 8] = [0, 1, 125, 126, 300, 65535, 65536, 70000];

    fn expected_header(len: usize) -> usize {
        match len {
            0..126 => 2,
            126..65536 => 4,
            _ => 10,
        }
    }

    fn payload_of(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn server_text_frames_take_all_three_length_forms() {
        for len in LENS {
            let payload = payload_of(len);
            let f = text(&payload);
            assert_eq!(f.len(), len + expected_header(len), "len {len}");
            let d = decode_server(&f).unwrap().expect("whole frame");
            assert_eq!((d.fin, d.opcode, d.consumed), (true, TEXT, f.len()));
            assert_eq!(&f[d.payload], &payload[..]);
        }
    }

    #[test]
    fn client_frames_parse_as_masked_frames_in_tungstenite() {
        for len in LENS {
            let payload = payload_of(len);
            let mask = [0x12, 0x34, 0x56, 0x78];
            let f = client_frame(BINARY, &payload, mask);
            assert_eq!(f.len(), expected_header(len) + 4 + len, "len {len}");
            let mut cur = Cursor::new(&f[..]);
            let (h, n) = FrameHeader::parse(&mut cur).unwrap().expect("whole header");
            assert_eq!(n as usize, len);
            assert!(h.is_final);
            assert_eq!(h.opcode, OpCode::Data(Data::Binary));
            assert_eq!(h.mask, Some(mask));
            let body = &f[cur.position() as usize..];
            let unmasked: Vec<u8> = body.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            assert_eq!(unmasked, payload, "len {len}");
            if len > 0 {
                assert_ne!(body, &payload[..], "len {len}: a non-zero key changes the bytes");
            }
        }
    }

    #[test]
    fn zero_mask_leaves_the_payload_readable() {
        let f = client_frame(TEXT, b"hi", [0; 4]);
        assert_eq!(f, [0x81, 0x82, 0, 0, 0, 0, b'h', b'i']);
    }

    #[test]
    fn encode_client_appends_after_what_is_queued() {
        let mut out = b"queued".to_vec();
        encode_client(PONG, b"p", [1, 2, 3, 4], &mut out);
        assert_eq!(out, [b'q', b'u', b'e', b'u', b'e', b'd', 0x8a, 0x81, 1, 2, 3, 4, b'p' ^ 1]);
    }

    #[test]
    fn decodes_what_tungstenite_encodes() {
        let frames = [
            Frame::ping(vec![1, 2]),
            Frame::close(None),
            Frame::message(vec![b'x'; 70000], OpCode::Data(Data::Text), false),
        ];
        for f in frames {
            let (fin, op, payload) = (f.header().is_final, u8::from(f.header().opcode), f.payload().to_vec());
            let mut wire = Vec::new();
            f.format(&mut wire).unwrap();
            let d = decode_server(&wire).unwrap().expect("whole frame");
            assert_eq!((d.fin, d.opcode, d.consumed), (fin, op, wire.len()));
            assert_eq!(&wire[d.payload], &payload[..]);
        }
    }

    /// Three frames, one of each length form, back to back.
    fn stream() -> (Vec<u8>, Vec<Vec<u8>>) {
        let payloads: Vec<Vec<u8>> = [5, 300, 70000].map(payload_of).into();
        let wire = payloads.iter().flat_map(|p| text(p).to_vec()).collect();
        (wire, payloads)
    }

    #[test]
    fn every_strict_prefix_needs_more() {
        let (wire, _) = stream();
        let first = decode_server(&wire).unwrap().unwrap().consumed;
        let second = first + decode_server(&wire[first..]).unwrap().unwrap().consumed;
        for (start, end) in [(0, first), (first, second), (second, wire.len())] {
            for cut in start..end {
                assert_eq!(decode_server(&wire[start..cut]), Ok(None), "frame at {start}, cut at {cut}");
            }
        }
    }

    #[test]
    fn chunked_input_yields_the_same_frames() {
        let (wire, payloads) = stream();
        for chunk in [1, 2, 3, 9, 10, 11, 127, 4096, wire.len()] {
            let (mut buf, mut got) = (Vec::new(), Vec::new());
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(f) = decode_server(&buf).unwrap() {
                    assert_eq!(f.opcode, TEXT);
                    got.push(buf[f.payload].to_vec());
                    buf.drain(..f.consumed);
                }
            }
            assert!(buf.is_empty(), "chunk {chunk}: bytes left over");
            assert_eq!(got, payloads, "chunk {chunk}");
        }
    }

    #[test]
    fn masked_or_impossible_server_frames_are_errors() {
        assert_eq!(decode_server(&client_frame(TEXT, b"x", [1, 2, 3, 4])), Err(FrameError::Masked));
        let mut huge = vec![0x81, 127];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(decode_server(&huge), Err(FrameError::BadLength));
    }
}
