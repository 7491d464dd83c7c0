//! The transport under a connection, as the connection sees it: a plain socket, TLS
//! over one (`tls.rs`), or a test double. Below both `conn` and `tls`, so neither
//! reaches into the other.

use std::io::{Read, Write};

/// What a connection's transport must offer: bytes both ways and a half-close.
/// A TCP socket, a TLS session over one, or a test double.
pub trait Stream: Read + Write {
    /// Sends FIN after the last queued byte (`shutdown(SHUT_WR)`).
    fn shutdown_write(&mut self);

    /// Bytes accepted earlier still wait below the write queue (TLS records): the
    /// connection needs a `flush` when the socket is writable again.
    fn wants_write(&self) -> bool {
        false
    }

    /// The client reached us over TLS.
    fn is_secure(&self) -> bool {
        false
    }

    /// The transport is still setting up (a TLS handshake): nothing can be said
    /// to the client yet.
    fn in_handshake(&self) -> bool {
        false
    }

    /// Bytes the transport itself holds for this connection (TLS buffers and
    /// state), for the memory budget.
    fn held(&self) -> usize {
        0
    }
}

impl Stream for mio::net::TcpStream {
    fn shutdown_write(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}
