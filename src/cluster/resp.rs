//! RESP2, the Redis wire format: commands out as arrays of bulk strings, replies in
//! parsed from a byte buffer as they arrive. Sans-IO: the caller owns the sockets.
//! Replies come from a server we chose, but a parser that trusts its input is a
//! parser a broken proxy or a wrong port can crash, so every length is bounded.

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
/// Elements in one array (a snapshot of 100,000 online users is 200,000).
pub const MAX_ARRAY: usize = 4 << 20;
/// Arrays inside arrays (our replies nest three deep at most).
const MAX_DEPTH: usize = 8;

/// Parses one whole reply from the front of `buf`: `Ok(None)` if more bytes are
/// needed, else the value and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, ProtocolError> {
    let mut pos = 0;
    match value(buf, &mut pos, 0)? {
        Some(v) => Ok(Some((v, pos))),
        None => Ok(None),
    }
}

fn value(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Option<Value>, ProtocolError> {
    let Some(line) = line(buf, *pos)? else { return Ok(None) };
    let (kind, text) = (buf[*pos], &buf[*pos + 1..line]);
    let after = line + 2;
    let v = match kind {
        b'+' | b'-' => {
            let s = String::from_utf8_lossy(text).into_owned();
            *pos = after;
            if kind == b'+' {
                Value::Simple(s)
            } else {
                Value::Error(s)
            }
        }
        b':' => {
            *pos = after;
            Value::Int(int(text)?)
        }
        b'$' => {
            let n = int(text)?;
            if n == -1 {
                *pos = after;
                return Ok(Some(Value::Bulk(None)));
            }
            let n = usize::try_from(n).map_err(|_| ProtocolError("negative length"))?;
            if n > MAX_BULK {
                return Err(ProtocolError("bulk string too large"));
            }
            let end = after + n;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError("bulk string without CRLF"));
            }
            *pos = end + 2;
            Value::Bulk(Some(buf[after..end].to_vec()))
        }
        b'*' => {
            let n = int(text)?;
            if n == -1 {
                *pos = after;
                return Ok(Some(Value::Array(None)));
            }
            let n = usize::try_from(n).map_err(|_| ProtocolError("negative length"))?;
            if n > MAX_ARRAY {
                return Err(ProtocolError("array too large"));
            }
            if depth >= MAX_DEPTH {
                return Err(ProtocolError("arrays nested too deep"));
            }
            let mut items = Vec::with_capacity(n.min(1024));
            let mut p = after;
            for _ in 0..n {
                match value(buf, &mut p, depth + 1)? {
                    Some(v) => items.push(v),
                    None => return Ok(None),
                }
            }
            *pos = p;
            Value::Array(Some(items))
        }
        _ => return Err(ProtocolError("unknown type byte")),
    };
    Ok(Some(v))
}

/// The index of the CR ending the line that starts at `from`, if the line is whole.
fn line(buf: &[u8], from: usize) -> Result<Option<usize>, ProtocolError> {
    // A type byte and a length never need more than this; a longer line is garbage
    // (or a huge error text, which we would not show anyway).
    const MAX_LINE: usize = 64 * 1024;
    let window = &buf[from..buf.len().min(from + MAX_LINE)];
    match window.iter().position(|&b| b == b'\r') {
        Some(cr) if cr + 1 < window.len() => {
            if window[cr + 1] != b'\n' || cr == 0 {
                return Err(ProtocolError("bad line ending"));
            }
            Ok(Some(from + cr))
        }
        Some(_) => Ok(None),
        None if window.len() == MAX_LINE => Err(ProtocolError("line too long")),
        None => Ok(None),
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
        assert!(parse(format!("*{}\r\n", MAX_ARRAY + 1).as_bytes()).is_err());
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
}
