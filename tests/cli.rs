//! The command line: help, version, bad flags, env vars, startup errors.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{ChildStdout, Command, Stdio};
use tempfile::TempDir;

fn skiff(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_skiff")).args(args).stdin(Stdio::null()).output().expect("run skiff")
}

#[test]
fn help_and_version() {
    let out = skiff(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--listen", "--db", "--session-ttl", "SKIFF_LISTEN"] {
        assert!(text.contains(flag), "--help mentions {flag}");
    }
    let out = skiff(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("skiff "));
}

#[test]
fn bad_flags_exit_2_with_one_line() {
    for (args, reason) in [
        (&["--bogus"][..], "skiff: unknown flag --bogus"),
        (&["--session-ttl", "abc"], "skiff: --session-ttl: expected a number >= 1, got \"abc\""),
        (&["--listen", "nowhere"], "skiff: --listen: expected IP:PORT, [IPv6]:PORT or HOST:PORT"),
        (&["--session-ttl"], "skiff: --session-ttl: missing value"),
        (&["--metrics-public=yes"], "skiff: --metrics-public takes no value"),
    ] {
        let out = skiff(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or_default();
        assert!(first.starts_with(reason), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_skiff")).env("SKIFF_MAX_SESSIONS", "lots").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a bad env value is a bad flag");
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("skiff: SKIFF_MAX_SESSIONS: expected a number >= 1"));
}

#[test]
fn a_bad_database_path_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x42u8; 8192]).unwrap();
    for db in [garbage.to_str().unwrap(), "/nonexistent/dir/chat.db", dir.path().to_str().unwrap()] {
        let out = skiff(&["--listen", "127.0.0.1:0", "--db", db]);
        assert_eq!(out.status.code(), Some(1), "{db}");
        assert!(out.stdout.is_empty(), "never says listening");
        assert!(String::from_utf8_lossy(&out.stderr).contains("database"), "{db}");
    }
    assert_eq!(std::fs::read(&garbage).unwrap(), vec![0x42u8; 8192], "the corrupt file is untouched");
}

#[test]
fn env_vars_configure_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("env.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .env("SKIFF_LISTEN", "127.0.0.1:1")
        .env("SKIFF_DB", &db)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    assert!(line.starts_with("listening on http://127.0.0.1:"), "{line}");
    assert!(!line.contains("127.0.0.1:1\n"), "the flag wins over SKIFF_LISTEN");
    assert!(db.exists(), "SKIFF_DB was used");
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts skiff with `args` (and a fresh database unless `--db` is among them),
/// returns it with its stdout and the first line.
fn start(args: &[&str], envs: &[(&str, &str)]) -> (std::process::Child, BufReader<ChildStdout>, String, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
    if !args.contains(&"--db") {
        cmd.arg("--db").arg(dir.path().join("chat.db"));
    }
    let mut child =
        cmd.args(args).envs(envs.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    (child, out, line, dir)
}

/// SIGTERM, then everything left on stdout and stderr.
fn stop(mut child: std::process::Child, mut out: BufReader<ChildStdout>) -> (String, String) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(child.wait().unwrap().success(), "a SIGTERM'd skiff exits 0");
    (rest, err)
}

#[test]
fn listen_accepts_a_host_name() {
    let (child, out, line, _dir) = start(&["--listen", "localhost:0"], &[]);
    let port = line.trim().strip_prefix("listening on http://127.0.0.1:").unwrap_or_else(|| panic!("{line:?}"));
    let mut s = TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop(child, out);
}

#[test]
fn an_unresolvable_listen_name_exits_2() {
    // In a fresh network namespace no query leaves the machine: the lookup fails at once.
    let out = Command::new("unshare")
        .args(["--net", env!("CARGO_BIN_EXE_skiff"), "--db", "/nonexistent/never-opened.db", "--listen"])
        .arg("no-such-host.invalid:7777")
        .stdin(Stdio::null())
        .output()
        .expect("unshare (util-linux) runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(
            "skiff: --listen no-such-host.invalid:7777: cannot resolve host name \"no-such-host.invalid\""
        ),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_bad_rust_log_exits_2_naming_the_directive() {
    for (value, named) in [("verbose", "\"verbose\""), ("warn,skiff=chatty", "\"skiff=chatty\"")] {
        let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["--listen", "127.0.0.1:0", "--db", "/nonexistent/never-opened.db"])
            .env("RUST_LOG", value)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "RUST_LOG={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or_default();
        assert!(first.starts_with("skiff: RUST_LOG: ") && first.contains(named), "{err}");
    }
}

fn get(port: u16, host: &str) -> String {
    let mut s = TcpStream::connect((host, port)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn a_wildcard_address_also_prints_a_url_to_open() {
    for (listen, shown) in [("0.0.0.0:0", "0.0.0.0"), ("[::]:0", "[::]")] {
        let (child, mut out, line, _dir) = start(&["--listen", listen], &[]);
        let port =
            line.trim().strip_prefix(&format!("listening on http://{shown}:")).unwrap_or_else(|| panic!("{line:?}"));
        let mut second = String::new();
        out.read_line(&mut second).unwrap();
        assert_eq!(second, format!("open http://localhost:{port}/\n"));
        assert!(get(port.parse().unwrap(), "localhost").starts_with("HTTP/1.1 200"), "the URL to open answers");
        let (rest, _) = stop(child, out);
        assert_eq!(rest, "", "two lines, nothing more");
    }
    let (child, out, line, _dir) = start(&["--listen", "127.0.0.1:0"], &[]);
    assert!(line.starts_with("listening on http://127.0.0.1:"), "{line}");
    let (rest, _) = stop(child, out);
    assert_eq!(rest, "", "a specific address is already a URL to open: one line");
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ LEVEL ...`; returns (timestamp, level).
fn log_line(line: &str) -> (&str, &str) {
    let (ts, rest) = line.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
    let shape = ts.bytes().enumerate().all(|(i, b)| match i {
        4 | 7 => b == b'-',
        10 => b == b'T',
        13 | 16 => b == b':',
        19 => b == b'.',
        23 => b == b'Z',
        _ => b.is_ascii_digit(),
    });
    assert!(ts.len() == 24 && shape, "RFC 3339 UTC with milliseconds: {line:?}");
    (ts, rest.split(' ').next().unwrap())
}

#[test]
fn log_lines_carry_rfc3339_utc_timestamps_and_follow_rust_log() {
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let before = skiff::log::rfc3339(now() - std::time::Duration::from_secs(1));
    let levels = |rust_log: &str| -> Vec<String> {
        let (child, out, line, _dir) = start(&["--listen", "127.0.0.1:0"], &[("RUST_LOG", rust_log)]);
        let port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();
        get(port, "127.0.0.1");
        let (_, err) = stop(child, out);
        let after = skiff::log::rfc3339(now() + std::time::Duration::from_secs(1));
        err.lines()
            .map(|l| {
                let (ts, level) = log_line(l);
                assert!(before.as_str() <= ts && ts <= after.as_str(), "{ts} is now ({before}..{after})");
                level.to_owned()
            })
            .collect()
    };
    let info = levels("info");
    assert!(info.contains(&"INFO".to_owned()) && !info.contains(&"DEBUG".to_owned()), "{info:?}");
    // The connection is logged at debug; skiff's own directive wins in either order.
    for rust_log in ["skiff=debug,warn", "warn,skiff=trace", "debug"] {
        assert!(levels(rust_log).contains(&"DEBUG".to_owned()), "RUST_LOG={rust_log}");
    }
    for rust_log in ["skiff=info,debug", "other=debug"] {
        let got = levels(rust_log);
        assert!(got.contains(&"INFO".to_owned()) && !got.contains(&"DEBUG".to_owned()), "{rust_log}: {got:?}");
    }
    assert_eq!(levels("off"), Vec::<String>::new());
    assert_eq!(levels("skiff=warn,info"), Vec::<String>::new(), "nothing goes wrong: no warn lines");
}
