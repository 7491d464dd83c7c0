//! A fake socket for driving `Server` without the OS: two byte queues, a switch for
//! the client hanging up, and a write allowance to force partial writes.

use crate::conn::Stream;
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::rc::Rc;

/// The two ends of a fake socket: what the client sent and the server has not read,
/// and what the server wrote. `room` is how many more bytes the server may write
/// before `WouldBlock`, to exercise partial writes.
#[derive(Default)]
pub struct Pipe {
    pub to_server: Vec<u8>,
    pub read_pos: usize,
    pub client_closed: bool,
    pub to_client: Vec<u8>,
    pub room: usize,
    pub server_shut: bool,
}

#[derive(Clone, Default)]
pub struct MockStream(pub Rc<RefCell<Pipe>>);

impl Read for MockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut p = self.0.borrow_mut();
        let avail = p.to_server.len() - p.read_pos;
        if avail == 0 {
            return if p.client_closed { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
        }
        let n = avail.min(buf.len());
        let start = p.read_pos;
        buf[..n].copy_from_slice(&p.to_server[start..start + n]);
        p.read_pos += n;
        Ok(n)
    }
}

impl Write for MockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut p = self.0.borrow_mut();
        if p.client_closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if p.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(p.room);
        p.room -= n;
        p.to_client.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for MockStream {
    fn shutdown_write(&mut self) {
        self.0.borrow_mut().server_shut = true;
    }
}
