//! The built-in page and `--static DIR` over real sockets: content types, ETags,
//! HEAD, CSP, and every way out of the directory refused.

mod common;

use common::*;
use std::io::Write;

#[test]
fn built_in_page_is_served_with_a_strict_csp() {
    let srv = Server::start();
    let r = srv.get("/", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = r.header("content-security-policy").expect("CSP");
    assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"), "{csp}");
    assert!(r.text().contains("app.js"));
    assert!(!r.text().contains("<script>"), "no inline script in the page");
    assert_eq!(srv.get("/app.js", None).header("content-type"), Some("text/javascript; charset=utf-8"));
    assert_eq!(srv.get("/style.css", None).header("content-type"), Some("text/css; charset=utf-8"));
    let etag = r.header("etag").unwrap().to_owned();
    let again = srv.raw(format!("GET / HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n").as_bytes());
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    let mut s = srv.connect();
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let head = String::from_utf8(read_to_close(&mut s)).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains(&format!("Content-Length: {}\r\n", r.body.len())), "HEAD keeps the length");
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body");
    let r = srv.request("POST", "/", None, Some(""));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[test]
fn static_dir_serves_files_and_refuses_traversal() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "top secret").unwrap();
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "<h1>mine</h1>").unwrap();
    std::fs::create_dir(site.path().join("sub")).unwrap();
    std::fs::write(site.path().join("sub/app.js"), "let x = 1;").unwrap();
    std::fs::create_dir(site.path().join("empty")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), site.path().join("link.txt")).unwrap();
    std::os::unix::fs::symlink(outside.path(), site.path().join("linkdir")).unwrap();
    let srv = Server::start_with(&["--static", site.path().to_str().unwrap()]);

    let r = srv.get("/", None);
    assert_eq!((r.status, r.text().as_str()), (200, "<h1>mine</h1>"));
    let r = srv.get("/sub/app.js", None);
    assert_eq!(r.header("content-type"), Some("text/javascript; charset=utf-8"));
    let etag = r.header("etag").unwrap().to_owned();
    let r = srv.raw(format!("GET /sub/app.js HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n").as_bytes());
    assert_eq!(r.status, 304);
    // Files are read off the loop: HEAD keeps the length and drops the body, other
    // methods are 405 (404 where nothing is), and pipelined requests keep their order.
    let mut s = srv.connect();
    s.write_all(b"HEAD /sub/app.js HTTP/1.1\r\nHost: t\r\n\r\nPOST /sub/app.js HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\nPUT /missing HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let answers = String::from_utf8_lossy(&read_to_close(&mut s)).into_owned();
    let statuses: Vec<&str> = answers.match_indices("HTTP/1.1 ").map(|(i, _)| &answers[i + 9..i + 12]).collect();
    assert_eq!(statuses, ["200", "405", "404", "200"], "{answers}");
    assert!(answers.contains("Content-Length: 10\r\n"), "HEAD keeps the length");
    assert!(!answers.contains("let x = 1;"), "HEAD has no body");
    assert_eq!(srv.get("/empty/", None).status, 404, "no directory listing");
    assert_eq!(srv.get("/nope.html", None).status, 404);
    let secret = outside.path().join("secret.txt");
    let attempts = [
        "/../secret.txt".to_owned(),
        "/%2e%2e/secret.txt".to_owned(),
        "/sub/%2E%2E/%2e%2e/secret.txt".to_owned(),
        "/..%2fsecret.txt".to_owned(),
        format!("/{}", secret.display()),
        format!("/%2f{}", secret.display().to_string().trim_start_matches('/')),
        "/link.txt".to_owned(),
        "/linkdir/secret.txt".to_owned(),
        "/sub/..%5c..%5csecret.txt".to_owned(),
    ];
    for path in attempts {
        let mut s = srv.connect();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
        let r = read_response(&mut s).expect("a response");
        assert!(!r.text().contains("top secret"), "{path} leaked the file");
        assert!(r.status == 404 || r.status == 400, "{path}: {}", r.status);
    }
    // The API still works beside the static files.
    assert_eq!(srv.get("/healthz", None).status, 200);
    assert_eq!(srv.get("/api/nothing", None).status, 404);
}

#[test]
fn a_missing_static_dir_is_a_startup_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["--listen", "127.0.0.1:0", "--static", "/nonexistent/site", "--db", "/tmp/skiff-static-err.db"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--static"));
}
