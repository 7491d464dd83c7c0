//! The arm64 Debian package's binary, run under qemu user emulation: health, register,
//! login, a chat message from one WebSocket client to another, and a clean SIGTERM.
//!
//! Runs only when `SKIFF_DEB_DIR` names the directory `scripts/package` filled
//! (`SKIFF_DEB_DIR=target/debian cargo test --test package`; `scripts/package-smoke`
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
