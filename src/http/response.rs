//! HTTP responses: a status, a few headers and a body, serialised into bytes for the
//! connection's write queue. Every response carries the same safety headers; every
//! error carries `{"error": "<code>"}`.

use serde::Serialize;
use std::borrow::Cow;
use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

/// The `Date` header's value (RFC 9110 6.6.1: an origin server with a clock sends it),
/// formatted once per Unix second however many responses that second sees.
#[derive(Debug, Default)]
pub struct DateCache {
    second: Option<i64>,
    value: String,
}

impl DateCache {
    /// The IMF-fixdate for the Unix time `unix_ms` (milliseconds).
    pub fn at(&mut self, unix_ms: i64) -> &str {
        let second = unix_ms.div_euclid(1000);
        if self.second != Some(second) {
            // Before 1970 only with a broken clock; the epoch is the nearest honest answer.
            let t = UNIX_EPOCH + Duration::from_secs(second.max(0) as u64);
            self.value = httpdate::fmt_http_date(t);
            self.second = Some(second);
        }
        &self.value
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    pub body: Cow<'static, [u8]>,
    /// Close the connection after this response, whatever the request asked for.
    pub close: bool,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Response { status, headers: Vec::new(), body: Cow::Borrowed(b""), close: false }
    }

    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        let mut body = serde_json::to_vec(value).expect("serializing into a Vec cannot fail");
        // A body that ends its line: `curl` output does not run into the prompt.
        body.push(b'\n');
        Response::new(status).header("Content-Type", "application/json").with_body(body)
    }

    /// `{"error": code}` with the given status.
    pub fn error(status: u16, code: &'static str) -> Self {
        #[derive(Serialize)]
        struct Error {
            error: &'static str,
        }
        Response::json(status, &Error { error: code })
    }

    pub fn header(mut self, name: &'static str, value: impl Into<Cow<'static, str>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Cow<'static, [u8]>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| &**v)
    }

    /// Serialises the response. `keep_alive` is the connection's decision after this
    /// response; `head` omits the body (HEAD requests) but keeps its length; `date` is
    /// the `Date` value (from a [`DateCache`]), sent on every final response; `hsts`
    /// the `Strict-Transport-Security` value, given only for a connection served over
    /// skiff's own TLS.
    pub fn write_to(&self, out: &mut Vec<u8>, keep_alive: bool, head: bool, date: &str, hsts: Option<&str>) {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        if self.status != 101 && self.status != 100 {
            let _ = write!(out, "Date: {date}\r\nContent-Length: {}\r\n", self.body.len());
            out.extend_from_slice(b"X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n");
            if let Some(hsts) = hsts {
                let _ = write!(out, "Strict-Transport-Security: {hsts}\r\n");
            }
            if !self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("Cache-Control")) {
                out.extend_from_slice(b"Cache-Control: no-store\r\n");
            }
            out.extend_from_slice(if keep_alive { b"Connection: keep-alive\r\n" } else { b"Connection: close\r\n" });
        }
        out.extend_from_slice(b"\r\n");
        if !head {
            out.extend_from_slice(&self.body);
        }
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_responses_carry_json_and_safety_headers() {
        let r = Response::error(404, "not_found");
        let mut out = Vec::new();
        r.write_to(&mut out, true, false, "Sun, 06 Nov 1994 08:49:37 GMT", None);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.contains("Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"));
        assert!(text.contains("Content-Length: 22\r\n"));
        assert!(text.contains("X-Content-Type-Options: nosniff\r\n"));
        assert!(text.contains("Cache-Control: no-store\r\n"));
        assert!(text.contains("Connection: keep-alive\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"error\":\"not_found\"}\n"));
        assert!(!text.contains("Strict-Transport-Security"), "only over skiff's own TLS");
    }

    #[test]
    fn hsts_goes_on_final_responses_only() {
        let mut out = Vec::new();
        Response::error(404, "not_found").write_to(&mut out, true, false, "d", Some("max-age=300"));
        assert!(String::from_utf8(out).unwrap().contains("\r\nStrict-Transport-Security: max-age=300\r\n"));
        // 100 and 101 are not the answer to the request (RFC 9110 15.2): the final
        // response, or the next request on the connection, carries the policy.
        let mut out = Vec::new();
        Response::new(101).header("Upgrade", "websocket").write_to(&mut out, true, false, "d", Some("max-age=300"));
        assert!(!String::from_utf8(out).unwrap().contains("Strict-Transport-Security"));
    }

    #[test]
    fn head_keeps_the_length_but_not_the_body() {
        let r = Response::new(200).with_body(&b"hello"[..]);
        let mut out = Vec::new();
        r.write_to(&mut out, false, true, "Sun, 06 Nov 1994 08:49:37 GMT", None);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn date_is_imf_fixdate_and_formatted_once_per_second() {
        let mut dates = DateCache::default();
        // RFC 9110's own example: 784111777 is Sun, 06 Nov 1994 08:49:37 GMT.
        assert_eq!(dates.at(784_111_777_000), "Sun, 06 Nov 1994 08:49:37 GMT");
        // A new format would be a new allocation while the old string is still alive,
        // so an unchanged address means no formatting happened.
        let first = dates.at(784_111_777_999).as_ptr();
        assert_eq!(dates.at(784_111_777_500).as_ptr(), first, "same second: the cached string");
        assert_eq!(dates.second, Some(784_111_777));
        assert_eq!(dates.at(784_111_778_000), "Sun, 06 Nov 1994 08:49:38 GMT");
        assert_eq!(dates.at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(dates.at(-1), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
