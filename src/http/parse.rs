//! The incremental HTTP/1.x request parser: bytes in, whole requests (or a precise
//! error) out, with skiff's limits and strict RFC 9112 framing. httparse reads the
//! head; this module finds where the head ends, enforces what httparse leaves to
//! the caller (Host, Content-Length, Transfer-Encoding, line endings), and frames
//! the body. No syscalls, no clock here.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_head: usize,
    pub max_body: usize,
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_head: 8 * 1024, max_body: 4 * 1024, max_headers: 64 }
    }
}

/// Every way a request can be refused. All of them end the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    HeadTooLarge,
    BodyTooLarge,
    BadRequest(&'static str),
    VersionNotSupported,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::BadRequest(_) => 400,
            HttpError::VersionNotSupported => 505,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            HttpError::HeadTooLarge => "header_too_large",
            HttpError::BodyTooLarge => "body_too_large",
            HttpError::BadRequest(_) => "bad_request",
            HttpError::VersionNotSupported => "http_version_not_supported",
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::HeadTooLarge => f.write_str("request head too large"),
            HttpError::BodyTooLarge => f.write_str("request body too large"),
            HttpError::BadRequest(why) => write!(f, "bad request: {why}"),
            HttpError::VersionNotSupported => f.write_str("HTTP version not supported"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub minor_version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The value of query parameter `name` (the first, undecoded: skiff's own
    /// parameters are numbers and base64url), `Some("")` for a bare `name`.
    pub fn query(&self, name: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    pub fn connection_has(&self, token: &str) -> bool {
        self.headers_named("connection")
            .flat_map(|v| v.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    }

    pub fn keep_alive(&self) -> bool {
        if self.minor_version >= 1 {
            !self.connection_has("close")
        } else {
            self.connection_has("keep-alive")
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Request { request: Request, consumed: usize },
    Continue,
}

/// A chunk-size line or trailer line longer than this is refused: nothing legitimate
/// needs it, and it bounds what we buffer before deciding.
const MAX_CHUNK_LINE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Reading a chunk-size line.
    Size,
    /// This many data bytes of the current chunk still to come.
    Data(usize),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer fields after the last chunk, up to an empty line.
    Trailer,
}

#[derive(Debug)]
enum Body {
    Length(usize),
    Chunked { state: Chunked, decoded: Vec<u8>, trailer_bytes: usize },
}

/// What we know of a request whose head is complete but whose body is not.
#[derive(Debug)]
struct Pending {
    request: Request,
    /// Bytes of leading CRLFs plus the head.
    head_len: usize,
    body: Body,
    /// Bytes after the head already consumed by the chunked decoder.
    body_pos: usize,
    expect_continue: bool,
}

pub struct RequestParser {
    limits: Limits,
    /// How far the search for the end of the head has looked.
    scanned: usize,
    pending: Option<Box<Pending>>,
    continue_sent: bool,
}

impl RequestParser {
    pub fn new(limits: Limits) -> Self {
        RequestParser { limits, scanned: 0, pending: None, continue_sent: false }
    }

    /// A `100 Continue` went out for the request in progress. The rest of the
    /// parser's state follows from the buffer (it is parsed again from its start);
    /// this alone does not, and a second 100 would confuse the client.
    pub fn continue_sent(&self) -> bool {
        self.continue_sent
    }

    /// A parser that starts over on a buffer whose request already had its 100.
    pub fn resume(limits: Limits, continue_sent: bool) -> Self {
        RequestParser { continue_sent, ..RequestParser::new(limits) }
    }

    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<Parsed>, HttpError> {
        if self.pending.is_none() {
            let Some(p) = self.parse_head(buf)? else { return Ok(None) };
            self.pending = Some(Box::new(p));
        }
        let p = self.pending.as_mut().expect("set above");
        let done = match &mut p.body {
            Body::Length(n) => buf.len() >= p.head_len + *n,
            Body::Chunked { state, decoded, trailer_bytes } => {
                decode_chunked(&buf[p.head_len..], &mut p.body_pos, state, decoded, trailer_bytes, &self.limits)?
            }
        };
        if !done {
            if p.expect_continue && !self.continue_sent {
                self.continue_sent = true;
                return Ok(Some(Parsed::Continue));
            }
            return Ok(None);
        }
        let mut p = self.pending.take().expect("set above");
        let consumed = match p.body {
            Body::Length(n) => {
                p.request.body = buf[p.head_len..p.head_len + n].to_vec();
                p.head_len + n
            }
            Body::Chunked { decoded, .. } => {
                p.request.body = decoded;
                p.head_len + p.body_pos
            }
        };
        *self = RequestParser::new(self.limits);
        Ok(Some(Parsed::Request { request: p.request, consumed }))
    }

    fn parse_head(&mut self, buf: &[u8]) -> Result<Option<Pending>, HttpError> {
        // RFC 9112 2.2: ignore empty lines before the request-line.
        let mut skip = 0;
        while buf[skip..].starts_with(b"\r\n") && skip < self.limits.max_head {
            skip += 2;
        }
        if buf[skip..] == *b"\r" {
            return Ok(None);
        }
        let window = &buf[..buf.len().min(self.limits.max_head)];
        let Some(end) = self.find_head_end(window, skip) else {
            if buf.len() >= self.limits.max_head {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(None);
        };
        let head = &buf[skip..end];
        check_line_endings(head)?;
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut slots);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(HttpError::BadRequest("incomplete head")),
            Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
            Err(httparse::Error::Version) => return Err(version_error(head)),
            Err(httparse::Error::HeaderName) => return Err(HttpError::BadRequest("bad header name")),
            Err(httparse::Error::HeaderValue) => return Err(HttpError::BadRequest("bad header value")),
            Err(httparse::Error::Token) => return Err(HttpError::BadRequest("bad method or target")),
            Err(_) => return Err(HttpError::BadRequest("malformed head")),
        }
        if req.headers.len() > self.limits.max_headers {
            return Err(HttpError::HeadTooLarge);
        }
        let minor_version = req.version.unwrap_or(1);
        let method = req.method.unwrap_or("").to_owned();
        let target = req.path.unwrap_or("").to_owned();
        if target.is_empty() {
            return Err(HttpError::BadRequest("empty target"));
        }
        let mut headers = Vec::with_capacity(req.headers.len());
        for h in req.headers.iter() {
            if h.value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(HttpError::BadRequest("control character in header value"));
            }
            headers.push((h.name.to_owned(), h.value.to_vec()));
        }
        let request = Request { method, target, minor_version, headers, body: Vec::new() };
        let hosts = request.headers_named("host").count();
        if hosts > 1 || (minor_version == 1 && hosts == 0) {
            return Err(HttpError::BadRequest("missing or repeated host"));
        }
        let length = content_length(&request)?;
        let chunked = transfer_encoding(&request)?;
        let body = match (length, chunked) {
            (Some(_), true) => return Err(HttpError::BadRequest("content-length with transfer-encoding")),
            (_, true) => Body::Chunked { state: Chunked::Size, decoded: Vec::new(), trailer_bytes: 0 },
            (Some(n), false) if n > self.limits.max_body as u64 => return Err(HttpError::BodyTooLarge),
            (Some(n), false) => Body::Length(n as usize),
            (None, false) => Body::Length(0),
        };
        let has_body = !matches!(body, Body::Length(0));
        let expect_continue = minor_version == 1
            && has_body
            && request.header("expect").is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"));
        Ok(Some(Pending { request, head_len: end, body, body_pos: 0, expect_continue }))
    }

    /// The end of the head (just past its terminating empty line) in `buf`, looking
    /// only at bytes not examined before. A bare-LF terminator counts too, so that
    /// such heads are refused rather than waited on.
    fn find_head_end(&mut self, buf: &[u8], from: usize) -> Option<usize> {
        let start = self.scanned.saturating_sub(2).max(from);
        for i in start..buf.len() {
            if buf[i] == b'\n' {
                match buf.get(i + 1) {
                    Some(b'\n') => return Some(i + 2),
                    Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
                    Some(b'\r') if i + 2 == buf.len() => {
                        self.scanned = i;
                        return None;
                    }
                    None => {
                        self.scanned = i;
                        return None;
                    }
                    _ => {}
                }
            }
        }
        self.scanned = buf.len();
        None
    }
}

/// Every CR must start a CRLF and every LF end one (no bare CR, no bare LF).
fn check_line_endings(head: &[u8]) -> Result<(), HttpError> {
    for (i, &b) in head.iter().enumerate() {
        match b {
            b'\r' if head.get(i + 1) != Some(&b'\n') => return Err(HttpError::BadRequest("bare CR")),
            b'\n' if i == 0 || head[i - 1] != b'\r' => return Err(HttpError::BadRequest("bare LF")),
            _ => {}
        }
    }
    Ok(())
}

/// httparse reports every unusable version the same way; tell a well-formed but
/// unsupported version (505) from a malformed request line (400).
fn version_error(head: &[u8]) -> HttpError {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    match parts.as_slice() {
        [_, _, v]
            if v.len() == 8
                && v.starts_with(b"HTTP/")
                && v[5].is_ascii_digit()
                && v[6] == b'.'
                && v[7].is_ascii_digit() =>
        {
            HttpError::VersionNotSupported
        }
        _ => HttpError::BadRequest("malformed request line"),
    }
}

fn content_length(req: &Request) -> Result<Option<u64>, HttpError> {
    let mut found: Option<u64> = None;
    for value in req.headers_named("content-length") {
        for part in value.split(|&b| b == b',') {
            let digits = part.trim_ascii();
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(HttpError::BadRequest("bad content-length"));
            }
            let n = std::str::from_utf8(digits)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(HttpError::BadRequest("content-length overflows"))?;
            match found {
                Some(prev) if prev != n => return Err(HttpError::BadRequest("conflicting content-length")),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// True for `Transfer-Encoding: chunked`; anything else present is refused.
fn transfer_encoding(req: &Request) -> Result<bool, HttpError> {
    let mut codings = req.headers_named("transfer-encoding").flat_map(|v| v.split(|&b| b == b',')).peekable();
    if codings.peek().is_none() {
        return Ok(false);
    }
    if req.minor_version == 0 {
        return Err(HttpError::BadRequest("transfer-encoding in HTTP/1.0"));
    }
    let all: Vec<&[u8]> = codings.map(|c| c.trim_ascii()).collect();
    if all.len() == 1 && all[0].eq_ignore_ascii_case(b"chunked") {
        Ok(true)
    } else {
        Err(HttpError::BadRequest("unsupported transfer-encoding"))
    }
}

/// Decodes as much chunked body as `buf` (the bytes after the head) holds, from
/// `*pos` on. True when the whole body, trailers included, has arrived.
fn decode_chunked(
    buf: &[u8],
    pos: &mut usize,
    state: &mut Chunked,
    decoded: &mut Vec<u8>,
    trailer_bytes: &mut usize,
    limits: &Limits,
) -> Result<bool, HttpError> {
    loop {
        let rest = &buf[*pos..];
        match *state {
            Chunked::Size => {
                let Some(line) = take_line(rest)? else { return Ok(false) };
                let (size_part, _extensions) = match line.iter().position(|&b| b == b';') {
                    Some(i) => (&line[..i], &line[i..]),
                    None => (line, &line[line.len()..]),
                };
                let size_part = size_part.trim_ascii_end();
                if size_part.is_empty() || size_part.len() > 16 || !size_part.iter().all(u8::is_ascii_hexdigit) {
                    return Err(HttpError::BadRequest("bad chunk size"));
                }
                let size = u64::from_str_radix(std::str::from_utf8(size_part).expect("hex is ASCII"), 16)
                    .map_err(|_| HttpError::BadRequest("bad chunk size"))?;
                if size > (limits.max_body - decoded.len()) as u64 {
                    return Err(HttpError::BodyTooLarge);
                }
                *pos += line.len() + 2;
                *state = if size == 0 { Chunked::Trailer } else { Chunked::Data(size as usize) };
            }
            Chunked::Data(left) => {
                if rest.is_empty() {
                    return Ok(false);
                }
                let n = left.min(rest.len());
                decoded.extend_from_slice(&rest[..n]);
                *pos += n;
                *state = if n == left { Chunked::DataEnd } else { Chunked::Data(left - n) };
            }
            Chunked::DataEnd => {
                match rest {
                    [b'\r', b'\n', ..] => {}
                    [] | [b'\r'] => return Ok(false),
                    _ => return Err(HttpError::BadRequest("chunk data not followed by CRLF")),
                }
                *pos += 2;
                *state = Chunked::Size;
            }
            Chunked::Trailer => {
                let Some(line) = take_line(rest)? else { return Ok(false) };
                *pos += line.len() + 2;
                if line.is_empty() {
                    return Ok(true);
                }
                *trailer_bytes += line.len() + 2;
                if *trailer_bytes > limits.max_head {
                    return Err(HttpError::HeadTooLarge);
                }
                if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) || !line.contains(&b':') {
                    return Err(HttpError::BadRequest("bad trailer field"));
                }
            }
        }
    }
}

/// One CRLF-terminated line (without the CRLF), or None if it has not all arrived.
fn take_line(buf: &[u8]) -> Result<Option<&[u8]>, HttpError> {
    for (i, &b) in buf.iter().enumerate().take(MAX_CHUNK_LINE + 2) {
        match b {
            b'\r' => {
                return match buf.get(i + 1) {
                    Some(b'\n') => Ok(Some(&buf[..i])),
                    Some(_) => Err(HttpError::BadRequest("bare CR")),
                    None => Ok(None),
                }
            }
            b'\n' => return Err(HttpError::BadRequest("bare LF")),
            _ => {}
        }
    }
    if buf.len() > MAX_CHUNK_LINE {
        return Err(HttpError::BadRequest("chunk line too long"));
    }
    Ok(None)
}

/// Feeds `input` to a fresh parser in pieces cut at `splits` (the buffer grows as a
/// socket's would; consumed bytes are removed as the reactor removes them), and
/// collects the requests up to the end or the first error. `Continue` is skipped.
/// Fuzz targets and tests compare splits against the whole input at once.
pub fn parse_all(input: &[u8], splits: &[usize], limits: Limits) -> (Vec<Request>, Option<HttpError>) {
    let mut points: Vec<usize> = splits.iter().copied().filter(|&s| s > 0 && s < input.len()).collect();
    points.sort_unstable();
    points.dedup();
    points.push(input.len());
    let mut parser = RequestParser::new(limits);
    let mut buf = Vec::new();
    let mut requests = Vec::new();
    let mut fed = 0;
    for p in points {
        buf.extend_from_slice(&input[fed..p]);
        fed = p;
        loop {
            match parser.parse(&buf) {
                Ok(None) => break,
                Ok(Some(Parsed::Continue)) => continue,
                Ok(Some(Parsed::Request { request, consumed })) => {
                    buf.drain(..consumed);
                    requests.push(request);
                }
                Err(e) => return (requests, Some(e)),
            }
        }
    }
    (requests, None)
}

#[cfg(test)]
mod tests;
