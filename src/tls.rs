//! TLS for `--tls-cert/--tls-key`: rustls's sans-IO `ServerConnection` between the
//! TCP socket and the connection's plaintext reads and writes, so HTTPS and WSS run
//! through the same reactor and state machines as plain HTTP.
//!
//! Backpressure: plaintext is handed to rustls only when rustls has no unsent
//! records, so a slow reader's bytes wait in skiff's own `OutQueue` (where the
//! 1 MiB cap applies), never in an unbounded rustls buffer.

use crate::conn::Stream;
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
}

impl Transport {
    pub fn new(sock: TcpStream, tls: Option<&Arc<ServerConfig>>) -> io::Result<Transport> {
        Ok(match tls {
            None => Transport::Plain(sock),
            Some(cfg) => Transport::Tls(Box::new(TlsStream {
                sock,
                tls: ServerConnection::new(cfg.clone()).map_err(io::Error::other)?,
                eof: false,
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
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Hands plaintext to rustls only once earlier records are on the wire, then
    /// tries to send the new ones.
    fn write_plain(&mut self, put: impl FnOnce(&mut rustls::Writer<'_>) -> io::Result<usize>) -> io::Result<usize> {
        self.write_records()?;
        let n = put(&mut self.tls.writer())?;
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
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // Still send the alert that explains the failure (rustls docs).
                let _ = self.write_records();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
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
}
