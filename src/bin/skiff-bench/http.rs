//! Users for the run, over plain HTTP/1.1 keep-alive: register, then log in for the
//! session cookie each WebSocket presents. Blocking sockets on a few threads: this is
//! setup, not what is measured.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// Registers and logs in users `prefix0..prefixN` over keep-alive connections from
/// several threads; returns their cookies in order. With several nodes, user `i`
/// registers on node `i % n` and logs in on node `(i + 1) % n`: a cluster must accept
/// a session begun anywhere.
pub fn setup_users(
    nodes: &[SocketAddr],
    tls: bool,
    prefix: &str,
    n: usize,
    threads: usize,
) -> Result<Vec<String>, String> {
    let chunks: Vec<Vec<usize>> = (0..threads).map(|t| (t..n).step_by(threads).collect()).collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|ids| {
            let prefix = prefix.to_owned();
            let nodes = nodes.to_vec();
            std::thread::spawn(move || -> Result<Vec<(usize, String)>, String> {
                let mut conns: Vec<Option<Http>> = nodes.iter().map(|_| None).collect();
                let mut out = Vec::with_capacity(ids.len());
                for i in ids {
                    let (status, body, _) = conn(&mut conns, &nodes, tls, i)?
                        .post("/api/register", &format!(r#"{{"username":"{prefix}{i}"}}"#))?;
                    if status != 201 {
                        return Err(format!("register {prefix}{i}: HTTP {status} {}", String::from_utf8_lossy(&body)));
                    }
                    let key = json_str(&body, "key").ok_or("register: no key")?;
                    let (status, _, cookie) =
                        conn(&mut conns, &nodes, tls, i + 1)?.post("/api/login", &format!(r#"{{"key":"{key}"}}"#))?;
                    if status != 200 {
                        return Err(format!("login {prefix}{i}: HTTP {status}"));
                    }
                    out.push((i, cookie.ok_or("login: no cookie")?));
                }
                Ok(out)
            })
        })
        .collect();
    let mut cookies = vec![String::new(); n];
    for h in handles {
        for (i, c) in h.join().map_err(|_| "setup thread panicked")?? {
            cookies[i] = c;
        }
    }
    Ok(cookies)
}

/// The keep-alive connection to node `i % n`, opened when first needed.
fn conn<'a>(conns: &'a mut [Option<Http>], nodes: &[SocketAddr], tls: bool, i: usize) -> Result<&'a mut Http, String> {
    let c = &mut conns[i % nodes.len()];
    if c.is_none() {
        *c = Some(Http::connect(nodes[i % nodes.len()], tls)?);
    }
    Ok(c.as_mut().expect("just opened"))
}

enum Link {
    Plain(std::net::TcpStream),
    Tls(Box<crate::tls::Blocking>),
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Link::Plain(s) => s.read(buf),
            Link::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Link::Plain(s) => s.write(buf),
            Link::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Link::Plain(s) => s.flush(),
            Link::Tls(s) => s.flush(),
        }
    }
}

/// One request at a time, each answer read whole: the reader's buffer is empty
/// whenever a request is written through it.
struct Http {
    r: BufReader<Link>,
}

impl Http {
    fn connect(addr: SocketAddr, tls: bool) -> Result<Http, String> {
        let s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let _ = s.set_nodelay(true);
        let link = if tls {
            Link::Tls(Box::new(rustls::StreamOwned::new(crate::tls::client().map_err(|e| e.to_string())?, s)))
        } else {
            Link::Plain(s)
        };
        Ok(Http { r: BufReader::new(link) })
    }

    fn post(&mut self, path: &str, body: &str) -> Result<(u16, Vec<u8>, Option<String>), String> {
        let req = format!("POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        self.r.get_mut().write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.r.read_line(&mut line).map_err(|e| e.to_string())?;
        let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(format!("bad status {line:?}"))?;
        let (mut len, mut cookie) = (0usize, None);
        loop {
            line.clear();
            self.r.read_line(&mut line).map_err(|e| e.to_string())?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((n, v)) = l.split_once(':') {
                if n.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                } else if n.eq_ignore_ascii_case("set-cookie") {
                    cookie = v.trim().split(';').next().map(str::to_owned);
                }
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).map_err(|e| e.to_string())?;
        Ok((status, body, cookie))
    }
}

/// The string value of `"name":"..."` in a small JSON body (keys are URL-safe).
fn json_str(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find(&format!("\"{name}\":\""))? + name.len() + 4;
    Some(text[start..].split('"').next()?.to_owned())
}
