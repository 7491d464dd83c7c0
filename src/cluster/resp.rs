//! RESP2, the Redis wire format: commands out as arrays of bulk strings, replies in
//! parsed as they arrive. Sans-IO: the caller owns the sockets.
//! Replies come from a server we chose, but a parser that trusts its input is a
//! parser a broken proxy or a wrong port can crash or stall, so the parser resumes
//! where the last read ended (each byte is looked at once, however the reply is cut)
//! and every reply is bounded in bytes and elements before anything is held for it.

/// A reply, or an element of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`: a command failed; the connection is fine.
    Error(String),
    Int(i64),
    /// `$-1` is `Bulk(None)`.
    Bulk(Option<Vec<u8>>),
    /// `*-1` is `Array(None)`.
    Array(Option<Vec<Value>>),
}

impl Value {
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(Some(b)) => Some(b),
            Value::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()?).ok()
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            Value::Bulk(Some(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(Some(v)) => Some(v),
            _ => None,
        }
    }
}

/// The input is not RESP: the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub &'static str);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad reply from Redis: {}", self.0)
    }
}

/// A bulk string larger than this is refused (history pages and snapshots are far
/// smaller; Redis's own limit is 512 MiB).
pub const MAX_BULK: usize = 64 << 20;
/// One reply's bytes on the wire. The largest a node asks for is a sync's snapshot:
/// with `--history 100000` (the flag's cap) of messages of 300 four-byte characters,
/// about 135 MB; twice that leaves room for a big room's online list.
pub const MAX_REPLY_BYTES: usize = 256 << 20;
/// One reply's elements, nested ones included, as declared by its arrays' headers
/// (that snapshot is about 0.9 M: nine per message).
pub const MAX_REPLY_ELEMENTS: usize = 4 << 20;
/// Arrays inside arrays (our replies nest three deep at most).
const MAX_DEPTH: usize = 8;
/// A type byte and a length never need more than this; a longer line is garbage
/// (or a huge error text, which we would not show anyway).
const MAX_LINE: usize = 64 * 1024;
/// An array's or a bulk string's room grows with what arrived, never to what its
/// header declares up front: a peer can declare four million elements and send one.
const FIRST_ROOM: usize = 16;

/// An array whose elements are still coming.
#[derive(Debug)]
struct Open {
    items: Vec<Value>,
    left: usize,
}

/// A bulk string whose bytes are still coming.
#[derive(Debug)]
struct Bulk {
    data: Vec<u8>,
    /// Body bytes still to come, then the CRLF.
    left: usize,
    crlf: u8,
}

/// Replies from one connection, parsed as the bytes arrive: it keeps its place
/// between reads (the open arrays, a bulk string or line half read), so a reply
/// cut into any number of reads costs one pass over its bytes.
#[derive(Debug)]
pub struct Parser {
    /// What one reply may take: bytes, elements.
    limits: (usize, usize),
    /// Arrays being filled, outermost first.
    open: Vec<Open>,
    bulk: Option<Bulk>,
    /// The current line's bytes so far, without its CR...
    line: Vec<u8>,
    /// ...and whether that CR came (its LF must be next).
    cr: bool,
    /// The reply in progress: bytes taken and elements declared so far.
    bytes: usize,
    elements: usize,
    /// Every byte ever taken in: each is looked at once (tests assert on it).
    examined: u64,
}

impl Default for Parser {
    fn default() -> Parser {
        Parser::with_limits(MAX_REPLY_BYTES, MAX_REPLY_ELEMENTS)
    }
}

impl Parser {
    /// A parser whose replies may take at most `bytes` and `elements`.
    pub fn with_limits(bytes: usize, elements: usize) -> Parser {
        Parser {
            limits: (bytes, elements),
            open: Vec::new(),
            bulk: None,
            line: Vec::new(),
            cr: false,
            bytes: 0,
            elements: 0,
            examined: 0,
        }
    }

    /// Takes in bytes until one reply is whole or `input` ends: the reply, if one
    /// completed, and how many bytes were taken (the rest belong to later replies).
    /// After an error the connection must be dropped: the parser's place is lost.
    pub fn feed(&mut self, input: &[u8]) -> Result<(Option<Value>, usize), ProtocolError> {
        let mut pos = 0;
        while pos < input.len() {
            let (done, n) = self.step(&input[pos..])?;
            pos += n;
            self.examined += n as u64;
            self.bytes += n;
            if self.bytes > self.limits.0 {
                return Err(ProtocolError("reply too large"));
            }
            if let Some(v) = done.and_then(|v| self.nest(v)) {
                self.bytes = 0;
                self.elements = 0;
                return Ok((Some(v), pos));
            }
        }
        Ok((None, pos))
    }

    /// Every reply `input` completes, in order; its incomplete tail waits inside.
    pub fn feed_all(&mut self, mut input: &[u8], out: &mut Vec<Value>) -> Result<(), ProtocolError> {
        while !input.is_empty() {
            let (v, n) = self.feed(input)?;
            out.extend(v);
            input = &input[n..];
        }
        Ok(())
    }

    /// Elements of an unfinished reply held so far.
    pub fn held(&self) -> usize {
        self.open.iter().map(|o| o.items.len()).sum()
    }

    /// Drops up to `n` held elements (a parser given up with millions in it is
    /// freed over several turns, not in one); true once nothing is held.
    pub fn shed(&mut self, mut n: usize) -> bool {
        while let Some(top) = self.open.last_mut() {
            let k = n.min(top.items.len());
            top.items.truncate(top.items.len() - k);
            // The room goes back with the elements: freeing 128 MB of it in one
            // call, at the end, is itself a stall.
            top.items.shrink_to_fit();
            n -= k;
            if !top.items.is_empty() {
                return false;
            }
            self.open.pop();
        }
        self.bulk = None;
        true
    }

    /// Bytes taken in since the parser was made.
    pub fn examined(&self) -> u64 {
        self.examined
    }

    /// One piece of progress: a line or (part of) a bulk string's body. Returns a
    /// value it completed and the bytes taken.
    fn step(&mut self, input: &[u8]) -> Result<(Option<Value>, usize), ProtocolError> {
        if let Some(b) = self.bulk.as_mut() {
            return match bulk_step(b, input)? {
                None => Ok((None, input.len())),
                Some(n) => {
                    let data = self.bulk.take().map(|b| b.data).unwrap_or_default();
                    Ok((Some(Value::Bulk(Some(data))), n))
                }
            };
        }
        if self.cr {
            if input[0] != b'\n' || self.line.is_empty() {
                return Err(ProtocolError("bad line ending"));
            }
            self.cr = false;
            let line = std::mem::take(&mut self.line);
            let v = self.header(&line);
            // The line's room is kept for the next one.
            self.line = line;
            self.line.clear();
            return Ok((v?, 1));
        }
        let (taken, cr) = match input.iter().position(|&b| b == b'\r') {
            Some(at) => (at, true),
            None => (input.len(), false),
        };
        if self.line.len() + taken > MAX_LINE {
            return Err(ProtocolError("line too long"));
        }
        self.line.extend_from_slice(&input[..taken]);
        self.cr = cr;
        Ok((None, taken + usize::from(cr)))
    }

    /// A whole line: a value, or the start of a bulk string or an array.
    fn header(&mut self, line: &[u8]) -> Result<Option<Value>, ProtocolError> {
        let (kind, text) = (line[0], &line[1..]);
        let v = match kind {
            b'+' => Value::Simple(String::from_utf8_lossy(text).into_owned()),
            b'-' => Value::Error(String::from_utf8_lossy(text).into_owned()),
            b':' => Value::Int(int(text)?),
            b'$' => match length(text)? {
                None => Value::Bulk(None),
                Some(n) if n > MAX_BULK || n > self.limits.0.saturating_sub(self.bytes) => {
                    return Err(ProtocolError("bulk string too large"));
                }
                Some(n) => {
                    let data = Vec::with_capacity(n.min(FIRST_ROOM));
                    self.bulk = Some(Bulk { data, left: n, crlf: 0 });
                    return Ok(None);
                }
            },
            b'*' => match length(text)? {
                None => Value::Array(None),
                Some(n) if n > self.limits.1.saturating_sub(self.elements) => {
                    return Err(ProtocolError("array too large"))
                }
                Some(_) if self.open.len() >= MAX_DEPTH => return Err(ProtocolError("arrays nested too deep")),
                Some(0) => Value::Array(Some(Vec::new())),
                Some(n) => {
                    self.elements += n;
                    self.open.push(Open { items: Vec::with_capacity(n.min(FIRST_ROOM)), left: n });
                    return Ok(None);
                }
            },
            _ => return Err(ProtocolError("unknown type byte")),
        };
        Ok(Some(v))
    }

    /// `v` is whole: it fills a slot of the innermost open array (closing every
    /// array it completes), or it is the reply.
    fn nest(&mut self, mut v: Value) -> Option<Value> {
        while let Some(top) = self.open.last_mut() {
            if top.items.len() == top.items.capacity() {
                // Doubling, but never past the declared count.
                top.items.reserve_exact(top.items.len().min(top.left));
            }
            top.items.push(v);
            top.left -= 1;
            if top.left > 0 {
                return None;
            }
            let items = self.open.pop().map(|o| o.items).unwrap_or_default();
            v = Value::Array(Some(items));
        }
        Some(v)
    }
}

/// Takes a bulk string's body and CRLF from `input`: `Some(n)` once it is whole
/// (`n` bytes taken), `None` if all of `input` went in and more is needed.
fn bulk_step(b: &mut Bulk, input: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let body = input.len().min(b.left);
    if body > 0 {
        if b.data.capacity() - b.data.len() < body {
            b.data.reserve_exact(body.max(b.data.len()).min(b.left));
        }
        b.data.extend_from_slice(&input[..body]);
        b.left -= body;
    }
    let mut n = body;
    while b.crlf < 2 && n < input.len() {
        if input[n] != b"\r\n"[usize::from(b.crlf)] {
            return Err(ProtocolError("bulk string without CRLF"));
        }
        b.crlf += 1;
        n += 1;
    }
    Ok((b.left == 0 && b.crlf == 2).then_some(n))
}

/// Parses one whole reply from the front of `buf`: `Ok(None)` if more bytes are
/// needed, else the value and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, ProtocolError> {
    match Parser::default().feed(buf)? {
        (Some(v), n) => Ok(Some((v, n))),
        (None, _) => Ok(None),
    }
}

/// A length: `None` for -1 (a nil), else a count.
fn length(text: &[u8]) -> Result<Option<usize>, ProtocolError> {
    match int(text)? {
        -1 => Ok(None),
        n => usize::try_from(n).map(Some).map_err(|_| ProtocolError("negative length")),
    }
}

fn int(text: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(text).ok().and_then(|s| s.parse().ok()).ok_or(ProtocolError("bad integer"))
}

/// Appends one command (an array of bulk strings) to `out`.
pub fn encode<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    out.push(b'*');
    push_len(out, args.len());
    for a in args {
        let a = a.as_ref();
        out.push(b'$');
        push_len(out, a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(bytes: &[u8]) -> Value {
        let (v, used) = parse(bytes).unwrap().expect("a whole reply");
        assert_eq!(used, bytes.len());
        v
    }

    #[test]
    fn parses_every_type() {
        assert_eq!(whole(b"+OK\r\n"), Value::Simple("OK".into()));
        assert_eq!(whole(b"-ERR no\r\n"), Value::Error("ERR no".into()));
        assert_eq!(whole(b":-42\r\n"), Value::Int(-42));
        assert_eq!(whole(b"$3\r\na\r\n\r\n"), Value::Bulk(Some(b"a\r\n".to_vec())));
        assert_eq!(whole(b"$0\r\n\r\n"), Value::Bulk(Some(Vec::new())));
        assert_eq!(whole(b"$-1\r\n"), Value::Bulk(None));
        assert_eq!(whole(b"*-1\r\n"), Value::Array(None));
        assert_eq!(
            whole(b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n"),
            Value::Array(Some(vec![Value::Int(1), Value::Array(Some(vec![Value::Bulk(Some(b"x".to_vec()))]))]))
        );
    }

    #[test]
    fn every_prefix_of_a_reply_asks_for_more() {
        let reply = b"*3\r\n$5\r\nhello\r\n:7\r\n*2\r\n+a\r\n$-1\r\n";
        for cut in 0..reply.len() {
            assert_eq!(parse(&reply[..cut]), Ok(None), "cut at {cut}");
        }
        let mut two = reply.to_vec();
        two.extend_from_slice(b"+next\r\n");
        let (_, used) = parse(&two).unwrap().unwrap();
        assert_eq!(used, reply.len());
    }

    #[test]
    fn garbage_and_oversize_are_errors() {
        assert!(parse(b"?\r\n").is_err());
        assert!(parse(b":12x\r\n").is_err());
        assert!(parse(b"$-2\r\n").is_err());
        assert!(parse(b"$1\r\nab\r\n").is_err());
        assert!(parse(b"+a\rb\r\n").is_err());
        assert!(parse(format!("${}\r\n", MAX_BULK + 1).as_bytes()).is_err());
        assert!(parse(format!("*{}\r\n", MAX_REPLY_ELEMENTS + 1).as_bytes()).is_err());
        assert!(parse(b"$999999999\r\n").is_err());
        assert!(parse(&b"*1\r\n".repeat(MAX_DEPTH + 1)).is_err());
        assert!(parse(&vec![b'+'; 70 * 1024]).is_err());
    }

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut out = Vec::new();
        encode(&mut out, &["SET", "k", ""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        // What we encode, Redis (and our parser) reads back.
        assert_eq!(
            whole(&out),
            Value::Array(Some(vec![
                Value::Bulk(Some(b"SET".to_vec())),
                Value::Bulk(Some(b"k".to_vec())),
                Value::Bulk(Some(Vec::new()))
            ]))
        );
    }

    /// Replies of every kind back to back, as a pipelined link reads them.
    fn mixed() -> Vec<u8> {
        let mut bytes =
            b"*3\r\n$5\r\nhello\r\n:7\r\n*2\r\n+a\r\n$-1\r\n+OK\r\n-ERR x\r\n$0\r\n\r\n*0\r\n*-1\r\n".to_vec();
        encode(&mut bytes, &["SET", "k\r\n", ""]);
        bytes
    }

    fn all(p: &mut Parser, bytes: &[u8]) -> Vec<Value> {
        let mut out = Vec::new();
        p.feed_all(bytes, &mut out).unwrap();
        out
    }

    #[test]
    fn replies_fed_a_byte_at_a_time_are_the_same_as_whole() {
        let bytes = mixed();
        let whole = all(&mut Parser::default(), &bytes);
        assert_eq!(whole.len(), 7);
        for step in [1, 2, 3, 7] {
            let mut p = Parser::default();
            let mut got = Vec::new();
            for chunk in bytes.chunks(step) {
                got.extend(all(&mut p, chunk));
            }
            assert_eq!(got, whole, "fed {step} bytes at a time");
            assert_eq!(p.examined(), bytes.len() as u64);
        }
    }

    #[test]
    fn a_big_array_in_chunks_costs_one_pass() {
        let n = 100_000;
        let mut bytes = format!("*{n}\r\n").into_bytes();
        for i in 0..n {
            bytes.extend_from_slice(format!("${}\r\nm{i}\r\n", format!("m{i}").len()).as_bytes());
        }
        let mut p = Parser::default();
        let mut got = Vec::new();
        for chunk in bytes.chunks(1000) {
            got.extend(all(&mut p, chunk));
            // Nothing is looked at twice: every read costs what it brought.
        }
        assert_eq!(p.examined(), bytes.len() as u64);
        assert_eq!(got.len(), 1);
        let items = got[0].as_array().unwrap();
        assert_eq!(items.len(), n);
        assert_eq!(items[n - 1].as_str(), Some(format!("m{}", n - 1).as_str()));
    }

    #[test]
    fn declared_sizes_get_no_room_until_their_bytes_come() {
        let mut p = Parser::default();
        assert_eq!(all(&mut p, format!("*{MAX_REPLY_ELEMENTS}\r\n:1\r\n:2\r\n").as_bytes()), []);
        assert!(p.open[0].items.capacity() <= FIRST_ROOM, "{}", p.open[0].items.capacity());
        let mut p = Parser::default();
        assert_eq!(all(&mut p, format!("${MAX_BULK}\r\nabc").as_bytes()), []);
        assert!(p.bulk.as_ref().unwrap().data.capacity() <= FIRST_ROOM);
        // Room grows with what arrives, never past what was declared.
        let mut p = Parser::default();
        let got = all(&mut p, b"*20\r\n");
        assert!(got.is_empty());
        for _ in 0..20 {
            all(&mut p, b":1\r\n");
            if let Some(o) = p.open.first() {
                assert!(o.items.capacity() <= 20 && o.items.capacity() <= 2 * o.items.len().max(FIRST_ROOM));
            }
        }
        assert!(p.open.is_empty());
    }

    #[test]
    fn a_parser_given_up_sheds_what_it_holds_in_pieces() {
        let mut p = Parser::default();
        all(&mut p, b"*3\r\n:1\r\n*100\r\n");
        all(&mut p, &b":2\r\n".repeat(40));
        assert_eq!(p.held(), 41);
        assert!(!p.shed(30));
        assert_eq!(p.held(), 11);
        assert!(p.shed(30));
        assert_eq!(p.held(), 0);
    }

    #[test]
    fn a_reply_past_the_limits_is_refused_as_it_grows() {
        // Bytes: the reply is refused once it outgrows the limit, however it is cut.
        let mut p = Parser::with_limits(100, 1000);
        let mut bytes = b"*50\r\n".to_vec();
        for _ in 0..50 {
            bytes.extend_from_slice(b":1\r\n");
        }
        let mut failed = false;
        for chunk in bytes.chunks(3) {
            if p.feed_all(chunk, &mut Vec::new()).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
        // Elements: declared ones count, nested too, before any arrives.
        let mut p = Parser::with_limits(1000, 10);
        assert!(p.feed_all(b"*2\r\n*5\r\n", &mut Vec::new()).is_ok());
        assert!(p.feed_all(b":1\r\n:1\r\n:1\r\n:1\r\n:1\r\n*4\r\n", &mut Vec::new()).is_err());
        // The counts start afresh with each reply.
        let mut p = Parser::with_limits(1000, 10);
        for _ in 0..5 {
            assert_eq!(all(&mut p, b"*8\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n").len(), 1);
        }
        let mut p = Parser::with_limits(1000, 10);
        assert!(p.feed_all(b"$1001\r\n", &mut Vec::new()).is_err());
    }
}
