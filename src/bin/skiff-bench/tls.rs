//! `--url https://...`: the clients speak TLS (rustls, as the server does). The bench
//! only ever talks to a loopback skiff with a throwaway certificate, so it checks
//! the handshake's signatures but trusts whatever certificate it is shown.

use mio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use std::io::{self, Read, Write};
use std::sync::{Arc, OnceLock};

#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

pub fn client() -> io::Result<ClientConnection> {
    ClientConnection::new(config(), ServerName::try_from("localhost").expect("a valid name")).map_err(io::Error::other)
}

/// A blocking socket with TLS over it, for the setup's HTTP requests.
pub type Blocking = rustls::StreamOwned<ClientConnection, std::net::TcpStream>;

/// A client's non-blocking socket, plain or TLS.
pub enum Sock {
    Plain(TcpStream),
    Tls(Box<(TcpStream, ClientConnection)>),
}

impl Sock {
    pub fn new(sock: TcpStream, tls: bool) -> io::Result<Sock> {
        Ok(if tls { Sock::Tls(Box::new((sock, client()?))) } else { Sock::Plain(sock) })
    }

    pub fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Sock::Plain(s) => s,
            Sock::Tls(t) => &mut t.0,
        }
    }

    /// Sends the records rustls has ready, as far as the socket takes them.
    pub fn push_records(&mut self) -> io::Result<()> {
        match self {
            Sock::Plain(_) => Ok(()),
            Sock::Tls(t) => push(&mut t.0, &mut t.1),
        }
    }
}

fn push(sock: &mut TcpStream, tls: &mut ClientConnection) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (sock, tls) = match self {
            Sock::Plain(s) => return s.read(buf),
            Sock::Tls(t) => (&mut t.0, &mut t.1),
        };
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if tls.read_tls(sock)? == 0 {
                return Ok(0);
            }
            tls.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            // Handshake messages, and plaintext written before the handshake ended.
            push(sock, tls)?;
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (sock, tls) = match self {
            Sock::Plain(s) => return s.write(buf),
            Sock::Tls(t) => (&mut t.0, &mut t.1),
        };
        // Plaintext goes to rustls only once earlier records are out, so
        // backpressure reaches the caller as it does on a plain socket.
        push(sock, tls)?;
        if tls.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = tls.writer().write(buf)?;
        push(sock, tls)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push_records()
    }
}
