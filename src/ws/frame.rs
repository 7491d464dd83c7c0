//! Server-to-client WebSocket frames, encoded by hand. Server frames are unmasked
//! (RFC 6455 5.1), so one encoding serves every recipient of a broadcast.

use std::rc::Rc;

const FIN_TEXT: u8 = 0x81;

/// Longest header of an unmasked frame: 2 bytes + 8-byte extended length.
const MAX_HEADER: usize = 10;

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
        let start = write_header(&mut self.buf[..MAX_HEADER], len);
        Rc::from(&self.buf[start..])
    }
}

/// Writes the header ending at `hdr.len()` and returns where it starts.
fn write_header(hdr: &mut [u8], len: usize) -> usize {
    let end = hdr.len();
    if len < 126 {
        hdr[end - 2] = FIN_TEXT;
        hdr[end - 1] = len as u8;
        end - 2
    } else if len <= u16::MAX as usize {
        hdr[end - 4] = FIN_TEXT;
        hdr[end - 3] = 126;
        hdr[end - 2..].copy_from_slice(&(len as u16).to_be_bytes());
        end - 4
    } else {
        hdr[end - 10] = FIN_TEXT;
        hdr[end - 9] = 127;
        hdr[end - 8..].copy_from_slice(&(len as u64).to_be_bytes());
        end - 10
    }
}

/// A whole text frame for a fixed payload (acks, events).
pub fn text(payload: &[u8]) -> Rc<[u8]> {
    let mut f = TextFrame::with_capacity(payload.len());
    f.payload().extend_from_slice(payload);
    f.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(frame: &[u8]) -> (u8, &[u8]) {
        let (len, off) = match frame[1] {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        assert_eq!(frame.len(), off + len, "length field must match the payload");
        (frame[0], &frame[off..])
    }

    #[test]
    fn all_three_length_forms() {
        for len in [0usize, 1, 125, 126, 300, 65535, 65536, 70000] {
            let payload = vec![b'x'; len];
            let f = text(&payload);
            let (op, p) = decode(&f);
            assert_eq!(op, 0x81);
            assert_eq!(p, &payload[..]);
            let expected_header = if len < 126 {
                2
            } else if len < 65536 {
                4
            } else {
                10
            };
            assert_eq!(f.len(), len + expected_header);
        }
    }
}
