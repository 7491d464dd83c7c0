//! A hand-over's probe: before the exec, the new binary is started once with every
//! descriptor the exec would hand over and takes the state in memory, as the next
//! image would; only its "ok" lets the old process exec it. The kernel parts it
//! shares with the exec are in `os`.

use super::os::{is_open, own, parse_and_take, set_inherit, Inherited};
use super::ENV;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The first argument of a probe run: an older skiff, which knows no such flag,
/// exits 2 at once instead of starting a second server on the port.
pub const PROBE_FLAG: &str = "--handover-probe";

/// The variable that tells a probe what `ENV` would tell the next image, and where
/// to write its verdict: `status=N` on top of `env_value`'s fields.
pub const PROBE_ENV: &str = "SKIFF_HANDOVER_PROBE";

/// What a probe writes when it has taken over everything in memory: `ok N` (N
/// connections).
pub const PROBE_OK: &str = "ok";

/// Runs `exe` as a probe of the hand-over that `value` (an `env_value`) describes,
/// with every descriptor the exec would hand over, and waits up to `limit` for its
/// verdict. The probe imports the whole state as the next image would, touches
/// no socket, and answers on a pipe; anything else (a file that will not start, a
/// crash, an abort, another program, no answer in time) is a refusal, said in one
/// line. The old process has changed nothing meanwhile, so it serves on.
pub fn run(exe: &std::path::Path, value: &str, limit: std::time::Duration) -> Result<String, String> {
    use std::os::unix::process::ExitStatusExt;
    let (read, write) = pipe()?;
    let write_fd = write.as_raw_fd();
    set_inherit(write_fd, true).map_err(|e| format!("pipe: {e}"))?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let spawned = std::process::Command::new(exe)
        .arg(PROBE_FLAG)
        .args(&args)
        .env_remove(ENV)
        .env(PROBE_ENV, format!("{value},status={write_fd}"))
        .stdin(std::process::Stdio::null())
        // Nothing a probe prints is for the scripts reading skiff's stdout.
        .stdout(std::process::Stdio::null())
        .spawn();
    drop(write);
    let mut child = spawned.map_err(|e| format!("cannot start: {e}"))?;
    let deadline = std::time::Instant::now() + limit;
    let answer = read_line_until(read, deadline);
    // A probe that answered, or closed the pipe, is exiting: give it until the
    // deadline to be reaped (with a little grace), then make sure of it.
    let mut status = None;
    if !matches!(answer, Ok(Answer::TimedOut)) {
        let grace = deadline.max(std::time::Instant::now()) + std::time::Duration::from_millis(500);
        while status.is_none() && std::time::Instant::now() < grace {
            match child.try_wait() {
                Ok(Some(st)) => status = Some(st),
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(1)),
                Err(_) => break,
            }
        }
    }
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    match (answer, status) {
        (Ok(Answer::Line(line)), _) if line.starts_with(PROBE_OK) => Ok(line),
        (Ok(Answer::Line(line)), _) => Err(format!("the new binary refused the state: {line}")),
        (Err(e), _) => Err(format!("reading the new binary's answer: {e}")),
        (Ok(_), Some(st)) => Err(match (st.code(), st.signal()) {
            (_, Some(sig)) => format!("the new binary was killed by signal {sig} before taking over"),
            (Some(code), _) => format!("the new binary exited with status {code} without taking over"),
            _ => "the new binary stopped without taking over".to_owned(),
        }),
        (Ok(_), None) => Err(format!("the new binary did not answer within {} s", limit.as_secs())),
    }
}

/// What came from a probe's pipe.
enum Answer {
    Line(String),
    /// Every writer closed it without a whole line.
    Closed,
    TimedOut,
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", io::Error::last_os_error()));
    }
    // SAFETY: both were just created and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The first line written into `read` before its writers closed it or `deadline`
/// passed.
fn read_line_until(read: OwnedFd, deadline: std::time::Instant) -> io::Result<Answer> {
    let mut file = File::from(read);
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(Answer::TimedOut);
        }
        let mut pfd = libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll reads and writes the one pollfd it is given.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().clamp(1, i32::MAX as u128) as i32) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            continue;
        }
        let mut buf = [0u8; 256];
        let n = match file.read(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => r?,
        };
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.iter().position(|&b| b == b'\n') {
            return Ok(Answer::Line(String::from_utf8_lossy(&got[..end]).into_owned()));
        }
        if n == 0 || got.len() > 4096 {
            return Ok(Answer::Closed);
        }
    }
}

/// The probe's side: what `PROBE_ENV` names, taken as `inherit` takes `ENV`, and
/// the descriptor to write the verdict to.
pub fn inherit_probe() -> Option<(Result<Inherited, String>, Option<OwnedFd>)> {
    let main_ns = super::os::monotonic_ns();
    let value = std::env::var(PROBE_ENV).ok()?;
    std::env::remove_var(PROBE_ENV);
    let status = value
        .split(',')
        .find_map(|p| p.strip_prefix("status="))
        .and_then(|v| v.parse::<RawFd>().ok())
        .filter(|&fd| fd > 2 && is_open(fd))
        .map(own);
    Some((parse_and_take(&value).map(|i| Inherited { main_ns, ..i }), status))
}
