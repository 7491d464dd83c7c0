//! Database start-up errors that need the file system to say no: a read-only file, an
//! unwritable directory, a read-only file system. Tests run as root, whom permission
//! bits do not stop, so the permission cases run skiff as `nobody` (setpriv) and the
//! read-only file system is a tmpfs remounted read-only in a private mount namespace.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A directory `nobody` can enter and read but not write, with a copy of the binary
/// in it (the build tree may sit under a directory `nobody` cannot enter).
fn locked_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("skiff");
    std::fs::copy(env!("CARGO_BIN_EXE_skiff"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, bin)
}

/// `bin` as an unprivileged user (as is, when the tests are not root).
fn unprivileged(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn run_unprivileged(bin: &Path, db: &Path) -> Output {
    let mut cmd = unprivileged(bin);
    cmd.args(["--listen", "127.0.0.1:0", "--db"]).arg(db);
    output_within(cmd, Duration::from_secs(10))
}

/// `cmd.output()`, except that a skiff which starts anyway (and would serve until
/// stopped) is killed after `limit` and fails the test.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("skiff started on a database it cannot write: {}", String::from_utf8_lossy(&out.stdout));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A valid skiff database with one user, made and closed by this process.
fn make_db(path: &Path) {
    let mut store = skiff::store::Store::open(path).unwrap();
    assert!(matches!(store.register("alice").unwrap(), skiff::store::Registered::Created { .. }));
}

fn refused(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty(), "never says listening");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err.trim_end().to_owned()
}

#[test]
fn a_read_only_database_file_is_a_startup_error() {
    let (dir, bin) = locked_dir();
    let db = dir.path().join("chat.db");
    make_db(&db);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    // With a writable directory SQLite opens the file read-only without a word, makes
    // its -wal and -shm beside it, and reads fine: only writes would fail, later.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = refused(&run_unprivileged(&bin, &db));
    assert_eq!(err, format!("skiff: database {} is read-only (permission denied)", db.display()));
    // The same in a directory nobody may write either.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = refused(&run_unprivileged(&bin, &db));
    assert_eq!(err, format!("skiff: database {} is read-only (permission denied)", db.display()));
}

#[test]
fn an_unwritable_directory_is_a_startup_error() {
    let (dir, bin) = locked_dir();
    let db = dir.path().join("new.db");
    let err = refused(&run_unprivileged(&bin, &db));
    assert_eq!(
        err,
        format!(
            "skiff: cannot create database {}: directory {} is not writable (permission denied)",
            db.display(),
            dir.path().display()
        )
    );
    assert!(!db.exists());
    // A relative path names the real directory, not ".".
    let mut cmd = unprivileged(&bin);
    cmd.args(["--listen", "127.0.0.1:0", "--db", "rel.db"]).current_dir(dir.path());
    let err = refused(&output_within(cmd, Duration::from_secs(10)));
    let real = dir.path().canonicalize().unwrap();
    assert_eq!(
        err,
        format!(
            "skiff: cannot create database rel.db: directory {} is not writable (permission denied)",
            real.display()
        )
    );
    // A writable file in that directory is no better: SQLite needs the directory
    // for the -wal and -shm files.
    let db = dir.path().join("chat.db");
    make_db(&db);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = refused(&run_unprivileged(&bin, &db));
    assert_eq!(
        err,
        format!(
            "skiff: database {}: directory {} is not writable (permission denied)",
            db.display(),
            dir.path().display()
        )
    );
}

#[test]
fn a_missing_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("no/such/chat.db");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.args(["--listen", "127.0.0.1:0", "--db"]).arg(&db);
    let out = output_within(cmd, Duration::from_secs(10));
    let err = refused(&out);
    assert_eq!(
        err,
        format!("skiff: cannot create database {}: no such directory {}", db.display(), db.parent().unwrap().display())
    );
}

#[test]
fn a_database_on_a_read_only_file_system_is_a_startup_error() {
    let made = tempfile::tempdir().unwrap();
    make_db(&made.path().join("chat.db"));
    let mnt = tempfile::tempdir().unwrap();
    let (m, db) = (mnt.path().display().to_string(), mnt.path().join("chat.db"));
    // The mount lives and dies with the private namespace of this one shell.
    let script = format!(
        "mount -t tmpfs tmpfs {m} && cp {src}/chat.db {m}/ && mount -o remount,ro {m} && exec \"$0\" --listen 127.0.0.1:0 --db {m}/chat.db",
        src = made.path().display()
    );
    let mut cmd = Command::new("unshare");
    if !is_root() {
        cmd.arg("--map-root-user");
    }
    cmd.args(["--mount", "sh", "-c", &script, env!("CARGO_BIN_EXE_skiff")]);
    let out = output_within(cmd, Duration::from_secs(10));
    let err = refused(&out);
    assert_eq!(err, format!("skiff: database {} is read-only (read-only file system)", db.display()));
}
