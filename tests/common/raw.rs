//! A WebSocket client on a raw non-blocking socket, for tests that hold many at once
//! (no thread each): frames are encoded and decoded by skiff's own client half.
#![allow(dead_code)]

use super::common::Server;
use serde_json::Value;
use skiff::ws::frame;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A WebSocket client on a raw socket: frames encoded and decoded by skiff's own
/// client half, so a thousand of them need no thread each.
pub struct Raw {
    pub s: TcpStream,
    buf: Vec<u8>,
    pub texts: Vec<Value>,
    /// A close frame's code, or 0 for a connection that ended without one.
    pub closed: Option<u16>,
}

impl AsMut<Raw> for Raw {
    fn as_mut(&mut self) -> &mut Raw {
        self
    }
}

impl Raw {
    pub fn open(srv: &Server, cookie: &str, path: &str) -> Raw {
        Raw::open_on(srv.connect(), cookie, path)
    }

    pub fn open_on(mut s: TcpStream, cookie: &str, path: &str) -> Raw {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk).expect("upgrade response");
            assert!(n > 0, "closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
        };
        assert!(buf.starts_with(b"HTTP/1.1 101 "), "{}", String::from_utf8_lossy(&buf));
        buf.drain(..end);
        s.set_nonblocking(true).unwrap();
        let mut r = Raw { s, buf: Vec::new(), texts: Vec::new(), closed: None };
        r.feed(&buf);
        r
    }

    pub fn send_frame(&mut self, bytes: &[u8]) {
        self.s.set_nonblocking(false).unwrap();
        self.s.write_all(bytes).unwrap();
        self.s.set_nonblocking(true).unwrap();
    }

    pub fn say(&mut self, message: &str) {
        let text = serde_json::json!({ "message": message }).to_string();
        self.send_frame(&frame::client_frame(frame::TEXT, text.as_bytes(), [1, 2, 3, 4]));
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        let mut pos = 0;
        let mut pongs = Vec::new();
        while let Ok(Some(f)) = frame::decode_server(&self.buf[pos..]) {
            let payload = &self.buf[pos..][f.payload.clone()];
            match f.opcode {
                frame::TEXT => self.texts.push(serde_json::from_slice(payload).expect("JSON text")),
                frame::CLOSE => self.closed = Some(payload.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]))),
                // As a browser does: a test that runs past the server's 75 s silence
                // limit on a busy machine must not lose its quiet clients to it.
                frame::PING => pongs.extend(frame::client_frame(frame::PONG, payload, [5, 6, 7, 8])),
                _ => {}
            }
            pos += f.consumed;
        }
        self.buf.drain(..pos);
        if !pongs.is_empty() && self.closed.is_none() {
            // Best effort: a socket whose buffer is full has bigger news coming.
            let _ = self.s.write(&pongs);
        }
    }

    /// Takes in whatever has arrived, without waiting.
    pub fn poll(&mut self) {
        let mut chunk = [0u8; 65536];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => {
                    self.closed.get_or_insert(0);
                    return;
                }
                Ok(n) => self.feed(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed.get_or_insert(0);
                    return;
                }
            }
        }
    }

    /// Waits (bounded) until `done` holds for what arrived.
    pub fn poll_until(&mut self, limit: Duration, done: impl Fn(&Raw) -> bool) -> bool {
        let start = Instant::now();
        loop {
            self.poll();
            if done(self) {
                return true;
            }
            if start.elapsed() > limit || self.closed.is_some() {
                return done(self);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn messages(&self) -> Vec<String> {
        self.texts.iter().filter_map(|v| v["message"].as_str().map(str::to_owned)).collect()
    }

    pub fn events(&self, kind: &str) -> usize {
        self.texts.iter().filter(|v| v["event"] == kind).count()
    }

    pub fn acks(&self) -> usize {
        self.texts.iter().filter(|v| v["status"] == true).count()
    }
}

/// `count` messages from each client (`s{k}-{i}` from client k), `every` apart on a
/// fixed schedule, each on its own thread, while `during` runs on this one.
pub fn flood<C: AsMut<Raw> + Send, T>(
    clients: &mut [C],
    count: usize,
    every: Duration,
    during: impl FnOnce() -> T,
) -> T {
    std::thread::scope(|s| {
        for (k, c) in clients.iter_mut().enumerate() {
            s.spawn(move || {
                let c = c.as_mut();
                let start = Instant::now();
                for i in 0..count {
                    std::thread::sleep((start + every * i as u32).saturating_duration_since(Instant::now()));
                    c.say(&format!("s{k}-{i}"));
                    c.poll();
                }
            });
        }
        during()
    })
}
