//! TLS for `--tls-cert/--tls-key`: rustls's sans-IO `ServerConnection` between the
//! TCP socket and the connection's plaintext reads and writes, so HTTPS and WSS run
//! through the same reactor and state machines as plain HTTP.
//!
//! Backpressure: plaintext is handed to rustls only when rustls has no unsent
//! records, so a slow reader's bytes wait in skiff's own `OutQueue` (where the
//! 1 MiB cap applies), never in an unbounded rustls buffer.

use crate::stream::Stream;
use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// Loads the certificate chain and key; errors are one clear line.
pub fn load_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("--tls-cert {}: no certificate found", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The server picks from its own order (rustls's: AES-256-GCM, then the others,
    // every one AEAD with forward secrecy) rather than the client's: testssl.sh rates
    // a server without a cipher order HIGH, and operators run testssl.sh.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// The `Strict-Transport-Security` value skiff sends on its own TLS connections, or
/// `None` without `--tls-cert` (browsers ignore it over plain http, RFC 6797 8.1;
/// behind a proxy it is the proxy's to send) or with `--hsts-max-age 0`, the way to
/// turn it off. (A *sent* max-age=0 would make browsers forget the policy, RFC 6797
/// 6.1.1; `--hsts-max-age 1` comes to the same a second later.)
pub fn hsts(tls: bool, max_age: u32) -> Option<String> {
    (tls && max_age > 0).then(|| format!("max-age={max_age}"))
}

/// A TCP socket, optionally wrapped in TLS.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

pub struct TlsStream {
    sock: TcpStream,
    tls: ServerConnection,
    /// The peer closed TCP (or sent close_notify); reads now report EOF.
    eof: bool,
    /// Bytes read during the handshake: an upper bound of what rustls's input buffer
    /// holds then (a stalled handshake's partial ClientHello), since rustls says
    /// nothing of its buffer sizes.
    handshake_in: usize,
    /// Where the peer's record stream stands: once established, rustls holds no
    /// more input than the unfinished record at its end.
    records: RecordScan,
    /// Records rustls holds until the socket takes them: at most what the last
    /// accepted write (or handshake flight) produced, since plaintext is handed over
    /// only once earlier records are out.
    out_unsent: usize,
}

/// What rustls keeps per connection whatever the peer sends (its state, a 4 KiB
/// read slack in its input buffer, the handshake's transcript), counted against the
/// memory budget as a constant. Measured: an established connection costs about this
/// much more RSS than a plain TCP one (2,000 idle WebSockets: 22.7 vs 7.1 MiB).
pub const TLS_STATE_BYTES: usize = 8 * 1024;

/// rustls buffers at most a 64 KiB handshake message, and once established one
/// record (it refuses a declared length past 16 KiB + 2 KiB; the cap here is what the
/// length field can say), whatever it is sent.
const MAX_HANDSHAKE_INPUT: usize = 0xffff + 4096;
const MAX_RECORD_INPUT: usize = 5 + 0xffff;

/// Follows TLS record boundaries (5-byte header with a 2-byte length, then the body)
/// over the bytes read, to know how much of an unfinished record there is.
#[derive(Debug, Default)]
struct RecordScan {
    header: [u8; 5],
    header_len: usize,
    body_left: usize,
    /// Bytes of the unfinished record at the end of what was read.
    unfinished: usize,
}

impl RecordScan {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                self.unfinished += n;
                bytes = &bytes[n..];
            } else {
                self.header[self.header_len] = bytes[0];
                self.header_len += 1;
                self.unfinished += 1;
                bytes = &bytes[1..];
                if self.header_len == 5 {
                    self.header_len = 0;
                    self.body_left = u16::from_be_bytes([self.header[3], self.header[4]]) as usize;
                }
            }
            if self.body_left == 0 && self.header_len == 0 {
                self.unfinished = 0;
            }
        }
    }
}

/// The socket as rustls reads it, with every byte read shown to the record scan.
struct Scanned<'a> {
    sock: &'a mut TcpStream,
    records: &'a mut RecordScan,
}

impl Read for Scanned<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        self.records.feed(&buf[..n]);
        Ok(n)
    }
}

/// A write of `plain` bytes becomes records that are this large at most.
fn records_for(plain: usize) -> usize {
    plain + (plain / (16 * 1024) + 1) * 64
}

impl Transport {
    pub fn new(sock: TcpStream, tls: Option<&Arc<ServerConfig>>) -> io::Result<Transport> {
        Ok(match tls {
            None => Transport::Plain(sock),
            Some(cfg) => Transport::Tls(Box::new(TlsStream {
                sock,
                tls: ServerConnection::new(cfg.clone()).map_err(io::Error::other)?,
                eof: false,
                handshake_in: 0,
                records: RecordScan::default(),
                out_unsent: 0,
            })),
        })
    }

    pub fn socket_mut(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &mut t.sock,
        }
    }
}

impl TlsStream {
    /// Writes queued TLS records to the socket until done or it would block.
    fn write_records(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_unsent = self.out_unsent.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out_unsent = 0;
        Ok(())
    }

    /// What this connection's TLS layer holds: the constant state, the input rustls
    /// may still buffer, the records it has yet to send.
    fn held(&self) -> usize {
        let input = if self.tls.is_handshaking() {
            self.handshake_in.min(MAX_HANDSHAKE_INPUT)
        } else {
            self.records.unfinished.min(MAX_RECORD_INPUT)
        };
        TLS_STATE_BYTES + input + self.out_unsent
    }

    /// Hands plaintext to rustls only once earlier records are on the wire, then
    /// tries to send the new ones.
    fn write_plain(&mut self, put: impl FnOnce(&mut rustls::Writer<'_>) -> io::Result<usize>) -> io::Result<usize> {
        self.write_records()?;
        let n = put(&mut self.tls.writer())?;
        self.out_unsent = records_for(n);
        match self.write_records() {
            Ok(()) => Ok(n),
            // The plaintext is accepted; its records leave on the next flush.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
            Err(e) => Err(e),
        }
    }

    fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n), // 0 = close_notify received
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.eof {
                return Ok(0);
            }
            let handshaking = self.tls.is_handshaking();
            let mut scanned = Scanned { sock: &mut self.sock, records: &mut self.records };
            match self.tls.read_tls(&mut scanned) {
                Ok(0) => self.eof = true,
                Ok(n) if handshaking => self.handshake_in += n,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            match self.tls.process_new_packets() {
                Ok(state) => self.out_unsent = self.out_unsent.max(state.tls_bytes_to_write()),
                Err(e) => {
                    // Still send the alert that explains the failure (rustls docs).
                    let _ = self.write_records();
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
            // Handshake messages and alerts go out as soon as they exist.
            match self.write_records() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(t) => t.read_plain(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(t) => t.write_plain(|w| w.write(buf)),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write_vectored(bufs),
            Transport::Tls(t) => t.write_plain(|w| w.write_vectored(bufs)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(t) => t.write_records(),
        }
    }
}

impl Stream for Transport {
    fn shutdown_write(&mut self) {
        match self {
            Transport::Plain(s) => s.shutdown_write(),
            Transport::Tls(t) => {
                t.tls.send_close_notify();
                let _ = t.write_records();
                t.sock.shutdown_write();
            }
        }
    }

    fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.tls.wants_write(),
        }
    }

    fn is_secure(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    fn in_handshake(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.tls.is_handshaking(),
        }
    }

    fn held(&self) -> usize {
        match self {
            Transport::Plain(_) => 0,
            Transport::Tls(t) => t.held(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RecordScan;

    fn record(len: usize) -> Vec<u8> {
        let mut r = vec![23, 3, 3];
        r.extend_from_slice(&(len as u16).to_be_bytes());
        r.resize(5 + len, 0xab);
        r
    }

    #[test]
    fn the_scan_knows_the_unfinished_record_whatever_the_reads() {
        let stream: Vec<u8> = [record(100), record(0), record(16 * 1024 + 256)].concat();
        let cut = stream.len() - 7;
        // One read, byte by byte, or in uneven pieces: the same answer.
        for step in [1, 3, 4096, stream.len()] {
            let mut scan = RecordScan::default();
            for piece in stream[..cut].chunks(step) {
                scan.feed(piece);
            }
            assert_eq!(scan.unfinished, 5 + 16 * 1024 + 256 - 7, "step {step}");
            scan.feed(&stream[cut..]);
            assert_eq!(scan.unfinished, 0, "step {step}");
        }
        let mut scan = RecordScan::default();
        scan.feed(&record(10)[..3]);
        assert_eq!(scan.unfinished, 3, "half a header is held too");
    }
}
