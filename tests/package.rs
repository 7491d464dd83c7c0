//! The Debian packaging: the settings file and the unit agree with `skiff --help`
//! (always), and the arm64 package's binary, run under qemu user emulation: health,
//! register, login, a chat message from one WebSocket client to another, and a clean
//! SIGTERM.
//!
//! The qemu test runs only when `SKIFF_DEB_DIR` names the directory `scripts/package`
//! filled (`SKIFF_DEB_DIR=target/debian cargo test --test package`; `scripts/package-smoke`
//! and CI do so): building the packages takes minutes, too long for every `cargo test`.
//! Once it is set, a missing package or tool fails the test, never skips it.
//! Needs dpkg-deb, qemu-aarch64-static and Debian's arm64 C library (qemu-user-static,
//! libc6:arm64; scripts/package installs both).

mod common;

use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

const QEMU: &str = "qemu-aarch64-static";
/// The arm64 binary loads Debian's multiarch arm64 libc (libc6:arm64, in
/// /lib/aarch64-linux-gnu), as on a Pi. Not the cross-build sysroot
/// /usr/aarch64-linux-gnu: its loader is a different glibc build from the libc6:arm64
/// that the loader then finds, and with that mismatch the first pthread_create spins
/// forever (seen with 2.36-8cross1 against 2.36-9+deb12u14).
const SYSROOT: &str = "/";
const LOADER: &str = "/lib/ld-linux-aarch64.so.1";

fn deb_dir() -> Option<PathBuf> {
    match std::env::var_os("SKIFF_DEB_DIR") {
        Some(dir) => Some(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)),
        None => {
            eprintln!("package test not run: set SKIFF_DEB_DIR to the directory scripts/package wrote");
            None
        }
    }
}

/// The one `skiff_*_{arch}.deb` in `dir`.
fn deb(dir: &Path, arch: &str) -> PathBuf {
    let suffix = format!("_{arch}.deb");
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("SKIFF_DEB_DIR {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("skiff_"))
        .filter(|p| p.to_str().unwrap().ends_with(&suffix))
        .collect();
    assert_eq!(found.len(), 1, "one skiff_*{suffix} in {}: {found:?} (run scripts/package)", dir.display());
    found.into_iter().next().unwrap()
}

fn tool(cmd: &str, install: &str) {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {cmd}")).output().unwrap().status.success();
    assert!(found, "the package test needs {cmd}: run `{install}`");
}

/// ELF header: 64-bit little-endian, e_machine (offset 18) EM_AARCH64 = 183.
fn assert_aarch64_elf(bin: &Path) {
    let head = std::fs::read(bin).unwrap();
    assert_eq!(&head[..4], b"\x7fELF", "{} is an ELF file", bin.display());
    assert_eq!((head[4], head[5]), (2, 1), "64-bit little-endian");
    assert_eq!(u16::from_le_bytes([head[18], head[19]]), 183, "machine is aarch64");
}

#[test]
fn arm64_package_chats_under_qemu() {
    let Some(dir) = deb_dir() else { return };
    tool("dpkg-deb", "apt-get install -y dpkg");
    tool(QEMU, "apt-get install -y qemu-user-static");
    assert!(
        Path::new(LOADER).exists(),
        "no {LOADER}: run `dpkg --add-architecture arm64 && apt-get update && apt-get install -y libc6:arm64`"
    );
    let deb = deb(&dir, "arm64");
    let root = tempfile::tempdir().unwrap();
    let out = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root.path()).output().unwrap();
    assert!(out.status.success(), "dpkg-deb -x {}: {}", deb.display(), String::from_utf8_lossy(&out.stderr));
    let bin = root.path().join("usr/bin/skiff");
    assert_aarch64_elf(&bin);

    // start_under puts its wrapper before the host binary's path; this wrapper drops
    // that path and runs the arm64 binary in its place, with the same arguments.
    let wrapper = format!("shift; exec {QEMU} -L {SYSROOT} '{}' \"$@\"", bin.display());
    let mut srv = Server::start_under(tempfile::tempdir().unwrap(), &[], &["sh", "-c", &wrapper, "sh"], &[]);

    let health = srv.get("/healthz", None);
    assert_eq!(health.status, 200, "/healthz: {}", health.text());
    let key = srv.register("alice");
    let r = srv.post("/api/login", &format!(r#"{{"key": "{key}"}}"#), None);
    assert_eq!(r.status, 200, "login: {}", r.text());
    assert_eq!(r.json(), json!({"username": "alice"}));
    let alice = r.cookie().expect("session cookie");
    let bob = srv.user("bob");

    let mut a = srv.ws(&alice);
    let mut b = srv.ws(&bob);
    assert_eq!(a.recv(), json!({"event": "join", "username": "bob"}));
    a.say("hello from arm64");
    assert_eq!(a.recv(), json!({"status": true}));
    assert_eq!(b.recv(), json!({"message": "hello from arm64", "author": "alice"}));

    let status = srv.signal(libc::SIGTERM);
    assert!(status.success(), "SIGTERM: skiff under qemu exited {status:?}\n{}", srv.stderr());
    assert_eq!(b.close_code(), Some(1001), "every WebSocket gets 1001 on shutdown");
}

/// /etc/default/skiff documents every `SKIFF_*` variable `skiff --help` lists, each
/// commented out, so the packaged defaults are the unit's and skiff's own.
#[test]
fn settings_file_names_every_variable_commented() {
    let help = Command::new(env!("CARGO_BIN_EXE_skiff")).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let mut from_help: Vec<&str> = help.split_whitespace().filter(|w| w.starts_with("SKIFF_")).collect();
    from_help.sort();
    from_help.dedup();
    assert!(from_help.len() >= 17, "--help lists the env vars: {from_help:?}");

    let file = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/skiff.default")).unwrap();
    let active: Vec<&str> = file.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).collect();
    assert!(active.is_empty(), "deploy/skiff.default sets {active:?}; every line is to be commented");
    let mut in_file: Vec<&str> = file
        .lines()
        .filter_map(|l| l.strip_prefix('#')?.split_once('=').map(|(name, _)| name))
        .filter(|name| name.starts_with("SKIFF_"))
        .collect();
    in_file.sort();
    assert_eq!(in_file, from_help, "deploy/skiff.default has one commented line per variable of --help");
}

/// One unit for the package and the manual install: no flags to edit, settings from
/// /etc/default/skiff, the binary where both put it.
#[test]
fn unit_takes_its_settings_from_the_environment_file() {
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/skiff.service")).unwrap();
    let lines: Vec<&str> = unit.lines().collect();
    assert!(lines.contains(&"ExecStart=/usr/bin/skiff"), "ExecStart is the bare /usr/bin/skiff");
    // Required, not `-/etc/default/skiff`: a missing file fails the start instead of
    // running without the operator's settings.
    assert!(lines.contains(&"EnvironmentFile=/etc/default/skiff"), "the unit reads /etc/default/skiff");
    assert!(lines.contains(&"ExecReload=/bin/kill -USR2 $MAINPID"), "reload is a hand-over");
}
