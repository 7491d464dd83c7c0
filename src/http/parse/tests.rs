//! Table tests over byte slices; every case is also fed split at every byte index
//! and must come out the same (a request may arrive a byte at a time).

use super::*;

fn whole(input: &[u8]) -> (Vec<Request>, Option<HttpError>) {
    parse_all(input, &[], Limits::default())
}

/// Parses whole, then at every single split point and byte-at-a-time, and checks
/// they agree. Returns the whole-input result.
fn check(input: &[u8]) -> (Vec<Request>, Option<HttpError>) {
    let expected = whole(input);
    for i in 1..input.len() {
        assert_eq!(parse_all(input, &[i], Limits::default()), expected, "split at {i} of {:?}", show(input));
    }
    let every: Vec<usize> = (1..input.len()).collect();
    assert_eq!(parse_all(input, &every, Limits::default()), expected, "byte at a time: {:?}", show(input));
    expected
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn one(input: &[u8]) -> Request {
    let (reqs, err) = check(input);
    assert_eq!(err, None, "{:?}", show(input));
    assert_eq!(reqs.len(), 1, "{:?}", show(input));
    reqs.into_iter().next().unwrap()
}

fn err(input: &[u8]) -> HttpError {
    let (_, e) = check(input);
    e.unwrap_or_else(|| panic!("expected an error for {:?}", show(input)))
}

#[test]
fn simple_get_and_post() {
    let r = one(b"GET /api/user/bob?x=1 HTTP/1.1\r\nHost: a\r\nCookie: session=x\r\n\r\n");
    assert_eq!(r.method, "GET");
    assert_eq!(r.path(), "/api/user/bob");
    assert_eq!(r.header("COOKIE"), Some(&b"session=x"[..]));
    assert!(r.keep_alive());
    let r = one(b"POST /api/login HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(r.body, b"hello");
}

#[test]
fn keep_alive_rules() {
    assert!(!one(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n").keep_alive());
    assert!(!one(b"GET / HTTP/1.0\r\n\r\n").keep_alive());
    assert!(one(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive());
    let r = one(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: Upgrade\r\n\r\n");
    assert!(r.connection_has("upgrade"));
}

#[test]
fn pipelined_requests_come_out_in_order() {
    let (reqs, e) = check(
        b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiGET /c HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert_eq!(e, None);
    let paths: Vec<&str> = reqs.iter().map(|r| r.path()).collect();
    assert_eq!(paths, ["/a", "/b", "/c"]);
    assert_eq!(reqs[1].body, b"hi");
}

#[test]
fn leading_empty_lines_are_ignored() {
    assert_eq!(one(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").path(), "/");
}

#[test]
fn chunked_bodies_with_extensions_and_trailers() {
    let r = one(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n");
    assert_eq!(r.body, b"abc0123456789");
    let r = one(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n");
    assert!(r.body.is_empty());
}

#[test]
fn limits() {
    let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "a".repeat(8200));
    assert_eq!(err(big.as_bytes()), HttpError::HeadTooLarge);
    // Endless header bytes without an end: refused at 8 KiB, not buffered forever.
    let endless = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000));
    assert_eq!(whole(endless.as_bytes()).1, Some(HttpError::HeadTooLarge));
    let many: String = (0..70).map(|i| format!("X{i}: y\r\n")).collect();
    assert_eq!(err(format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes()), HttpError::HeadTooLarge);
    // Too large as soon as the head says so, before any body arrives.
    assert_eq!(whole(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4097\r\n\r\n").1, Some(HttpError::BodyTooLarge));
    let exact = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4096\r\n\r\n{}", "b".repeat(4096));
    assert_eq!(whole(exact.as_bytes()).0[0].body.len(), 4096);
    let chunks = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n801\r\n",
        "c".repeat(0x800)
    );
    assert_eq!(whole(chunks.as_bytes()).1, Some(HttpError::BodyTooLarge));
}

#[test]
fn framing_attacks_are_400() {
    let cases: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nName : x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\rHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\n\r\n",
        b"\x00GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"xx GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / FOO/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1\r\nHost: a\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n",
    ];
    for case in cases {
        match err(case) {
            HttpError::BadRequest(_) => {}
            other => panic!("{:?}: expected 400, got {other:?}", show(case)),
        }
    }
}

#[test]
fn unknown_versions_are_505() {
    for v in ["HTTP/2.0", "HTTP/1.2", "HTTP/3.0", "HTTP/0.9"] {
        let req = format!("GET / {v}\r\nHost: a\r\n\r\n");
        assert_eq!(err(req.as_bytes()), HttpError::VersionNotSupported, "{v}");
    }
}

#[test]
fn repeated_identical_content_length_is_accepted() {
    let r = one(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok");
    assert_eq!(r.body, b"ok");
}

#[test]
fn expect_continue_is_announced_once() {
    let mut p = RequestParser::new(Limits::default());
    let head = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n".to_vec();
    assert_eq!(p.parse(&head), Ok(Some(Parsed::Continue)));
    assert_eq!(p.parse(&head), Ok(None));
    let mut full = head.clone();
    full.extend_from_slice(b"hi");
    match p.parse(&full) {
        Ok(Some(Parsed::Request { request, consumed })) => {
            assert_eq!(request.body, b"hi");
            assert_eq!(consumed, full.len());
        }
        other => panic!("{other:?}"),
    }
    // Body already here: no 100 needed.
    let mut p = RequestParser::new(Limits::default());
    assert!(matches!(p.parse(&full), Ok(Some(Parsed::Request { .. }))));
    // No body: no 100 either.
    let mut p = RequestParser::new(Limits::default());
    let get = b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n";
    assert!(matches!(p.parse(get), Ok(Some(Parsed::Request { .. }))));
}

#[test]
fn upgrade_leaves_the_following_bytes() {
    let mut p = RequestParser::new(Limits::default());
    let mut buf = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n".to_vec();
    let head_len = buf.len();
    buf.extend_from_slice(&[0x81, 0x85, 1, 2, 3, 4]);
    match p.parse(&buf) {
        Ok(Some(Parsed::Request { consumed, .. })) => assert_eq!(consumed, head_len),
        other => panic!("{other:?}"),
    }
}

#[test]
fn errors_map_to_statuses_and_codes() {
    assert_eq!((HttpError::HeadTooLarge.status(), HttpError::HeadTooLarge.code()), (431, "header_too_large"));
    assert_eq!((HttpError::BodyTooLarge.status(), HttpError::BodyTooLarge.code()), (413, "body_too_large"));
    assert_eq!(HttpError::BadRequest("x").status(), 400);
    assert_eq!(HttpError::VersionNotSupported.status(), 505);
}
