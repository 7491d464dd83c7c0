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
//! Format 2 adds the cluster section at the end of the body; format 3 carries each
//! kept message as its v2 frame instead of its text (the ring's own form: nothing
//! to re-encode, nothing copied twice); format 4 adds each member's presence mode
//! after its `v2` flag (older formats: one event each). Formats 1 to 3 are still read.
//!
//! The body is written in chunks straight to its destination (`encode_to`), with
//! its length and checksum put in place at the end, and read in place (`decode_with`)
//! with the caller told which bytes it is done with: a hand-over of a 100,000
//! message history never holds the history twice in one process.

use super::state::*;
use std::fmt;
use std::io::{self, Seek, SeekFrom, Write};

mod read;
mod write;

pub use read::Reading;
use read::R;
use write::W;

/// The envelope's layout 1. A later layout gets a new magic; this one stays frozen.
pub const MAGIC: &[u8; 16] = b"SKIFF-HANDOVER-1";
/// The state format this build writes; it reads this and every earlier one.
pub const STATE_VERSION: u32 = 4;

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
    let mut h = WordSum::default();
    h.update(bytes);
    h.finish()
}

/// `checksum_words` over bytes that come in pieces of any size.
pub(super) struct WordSum {
    h: u64,
    pending: [u8; 8],
    held: usize,
}

impl Default for WordSum {
    fn default() -> Self {
        WordSum { h: FNV_OFFSET, pending: [0; 8], held: 0 }
    }
}

impl WordSum {
    fn word(h: u64, w: &[u8]) -> u64 {
        (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(FNV_PRIME)
    }

    pub(super) fn update(&mut self, mut bytes: &[u8]) {
        if self.held > 0 {
            let take = (8 - self.held).min(bytes.len());
            self.pending[self.held..self.held + take].copy_from_slice(&bytes[..take]);
            self.held += take;
            bytes = &bytes[take..];
            if self.held < 8 {
                return;
            }
            self.h = Self::word(self.h, &self.pending);
            self.held = 0;
        }
        let words = bytes.chunks_exact(8);
        let tail = words.remainder();
        self.h = words.fold(self.h, Self::word);
        self.pending[..tail.len()].copy_from_slice(tail);
        self.held = tail.len();
    }

    fn finish(&self) -> u64 {
        self.pending[..self.held].iter().fold(self.h, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
    }
}

/// The envelope and the state, `handed[i]` being the socket of `state.conns[i]`,
/// as one buffer (tests, small states).
pub fn encode(state: &State, handed: &[Handed]) -> Vec<u8> {
    let mut out = io::Cursor::new(Vec::new());
    encode_to(state, handed, &mut out).expect("writing into a Vec cannot fail");
    out.into_inner()
}

/// Writes the envelope and the state to `out`, the body in chunks as it is made;
/// its length and checksum are written last, into their places before it. Returns
/// the bytes written.
pub fn encode_to<O: Write + Seek>(state: &State, handed: &[Handed], out: &mut O) -> io::Result<u64> {
    let mut head = Vec::with_capacity(64 + handed.len() * 5);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&(handed.len() as u32).to_le_bytes());
    for h in handed {
        head.extend_from_slice(&h.fd.to_le_bytes());
        head.push(u8::from(h.ws));
    }
    let sum = checksum(&head);
    head.extend_from_slice(&sum.to_le_bytes());
    head.extend_from_slice(&STATE_VERSION.to_le_bytes());
    let patch_at = head.len() as u64;
    head.extend_from_slice(&[0; 16]);
    let start = out.stream_position()?;
    out.write_all(&head)?;
    let mut sum = WordSum::default();
    let mut len = 0u64;
    let mut failed = None;
    let mut sink = |bytes: &[u8]| {
        if failed.is_none() {
            sum.update(bytes);
            len += bytes.len() as u64;
            failed = out.write_all(bytes).err();
        }
    };
    let mut body = W::new(&mut sink);
    body.state(state);
    body.flush();
    drop(body);
    if let Some(e) = failed {
        return Err(e);
    }
    let mut patch = [0u8; 16];
    patch[..8].copy_from_slice(&len.to_le_bytes());
    patch[8..].copy_from_slice(&sum.finish().to_le_bytes());
    out.seek(SeekFrom::Start(start + patch_at))?;
    out.write_all(&patch)?;
    let end = out.seek(SeekFrom::End(0))?;
    Ok(end - start)
}

/// Reads a hand-over. `Err` only when the envelope itself is unreadable.
pub fn decode(bytes: &[u8]) -> Result<Decoded, Error> {
    decode_with(bytes, true, &mut |_| {})
}

/// `decode`, telling `release` which bytes it is done with (see `Reading`); with
/// `keep_history` false every kept message is checked and none is kept.
pub fn decode_with(bytes: &[u8], keep_history: bool, release: &mut dyn FnMut(usize)) -> Result<Decoded, Error> {
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
    let state = decode_state(bytes, &mut r, keep_history, release);
    Ok(Decoded { handed, state })
}

fn decode_state(all: &[u8], r: &mut R<'_>, keep_history: bool, release: &mut dyn FnMut(usize)) -> Result<State, Error> {
    let version = r.u32()?;
    if version == 0 || version > STATE_VERSION {
        return Err(Error::Version(version));
    }
    let len = usize::try_from(r.u64()?).map_err(|_| Error::Truncated)?;
    let sum = r.u64()?;
    let base = all.len() - r.0.len();
    let body = r.take(len)?;
    if version == 1 && checksum(body) != sum {
        return Err(Error::Checksum);
    }
    // Formats 2 and 3: summed as the reading goes, one pass over the bytes. What a
    // bad body decodes to is thrown away below (decoding is bounded and panics on
    // nothing); `release` may have freed bytes nobody reads again anyway.
    let mut reading = Reading { keep_history, release, body, base, released: 0, sum: WordSum::default() };
    let mut b = R(body);
    let decoded = b.state(version, &mut reading).and_then(|mut state| {
        if version >= 2 {
            state.cluster = b.cluster()?;
        }
        Ok(state)
    });
    if version >= 2 {
        reading.sum.update(&body[reading.released..]);
        if reading.sum.finish() != sum {
            return Err(Error::Checksum);
        }
    }
    let state = decoded?;
    if !b.0.is_empty() {
        return Err(Error::Invalid("bytes after the state"));
    }
    Ok(state)
}

#[cfg(test)]
mod tests;
