//! The command line: help, version, bad flags, env vars, startup errors.

mod common;

use std::process::{Command, Stdio};

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
    for args in [&["--bogus"][..], &["--session-ttl", "abc"], &["--listen", "nowhere"], &["--session-ttl"]] {
        let out = skiff(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.trim().is_empty(), "a reason for {args:?}");
    }
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
