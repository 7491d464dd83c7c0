//! RFC 9110 6.6.1: every final response from skiff carries a `Date` header, an
//! IMF-fixdate of the server's clock, whichever path produced it (route, storage
//! reply, parser error).

mod common;

use common::*;
use std::time::{Duration, SystemTime};

fn assert_dated(r: &Resp, what: &str) {
    let date = r.header("date").unwrap_or_else(|| panic!("{what} ({}) has no Date header", r.status));
    let at = httpdate::parse_http_date(date).unwrap_or_else(|e| panic!("{what}: Date {date:?} is no HTTP date: {e}"));
    // Also refuses the obsolete RFC 850 and asctime forms, which parse_http_date accepts.
    assert_eq!(httpdate::fmt_http_date(at), date, "{what}: Date is an IMF-fixdate");
    let now = SystemTime::now();
    let skew = now.duration_since(at).unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(5), "{what}: Date {date} is {skew:?} away from now");
}

#[test]
fn every_final_response_is_dated() {
    let srv = Server::start();
    assert_dated(&srv.get("/healthz", None), "GET /healthz");
    let r = srv.post("/api/register", r#"{"username": "dana"}"#, None);
    assert_eq!(r.status, 201);
    assert_dated(&r, "register, answered after the store thread's reply");
    let r = srv.get("/nowhere", None);
    assert_eq!(r.status, 404);
    assert_dated(&r, "unknown path");
    let r = srv.raw(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 400);
    assert_dated(&r, "a request without Host, refused by the parser");
}
