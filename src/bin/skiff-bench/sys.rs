//! What skiff-bench asks the kernel: clocks, CPU time, the server's RSS from /proc,
//! and the open-file limit that bounds how many clients one process can hold.

use std::io;

pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time of the calling thread, so the chat loop and the registration flood (its
/// own thread) each report their own cost.
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

pub fn server_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    Some(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

/// `server_cpu_seconds` of each pid, in order.
pub fn cpu_of(pids: &[u32]) -> Vec<Option<f64>> {
    pids.iter().map(|&p| server_cpu_seconds(p)).collect()
}

/// CPU seconds spent between two `cpu_of` readings, per process.
pub fn cpu_spent(before: &[Option<f64>], after: &[Option<f64>]) -> Vec<Option<f64>> {
    before.iter().zip(after).map(|(b, a)| Some(a.as_ref()? - b.as_ref()?)).collect()
}

pub fn server_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// The open-file limit, (soft, hard).
fn nofile() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct we pass.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft open-file limit to the hard one (no privilege needed) and
/// returns the soft limit now in force.
pub fn raise_nofile() -> Option<u64> {
    let (_, hard) = nofile()?;
    let lim = libc::rlimit { rlim_cur: hard, rlim_max: hard };
    // SAFETY: setrlimit only reads the struct we pass.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    nofile().map(|(soft, _)| soft)
}

/// Descriptors skiff-bench holds besides its clients: stdio, epoll, and slack for
/// what the runtime opens.
const OWN_FDS: u64 = 16;

/// A one-line error, before any work, when `clients` sockets cannot fit under the
/// limit at all. Runs that only just miss are caught by `connect_error` instead: how
/// many descriptors the runtime holds is not worth guessing exactly.
pub fn check_nofile(clients: usize) -> Result<(), String> {
    match nofile() {
        Some((soft, hard)) if clients as u64 >= soft => Err(nofile_advice(clients, soft, hard)),
        _ => Ok(()),
    }
}

fn nofile_advice(clients: usize, soft: u64, hard: u64) -> String {
    let need = clients as u64 + OWN_FDS;
    format!(
        "{clients} clients need about {need} file descriptors, but the open-file limit \
         (RLIMIT_NOFILE) is {soft} (hard limit {hard}); raise it with `ulimit -n {need}` \
         (above the hard limit only as root) or use fewer --clients"
    )
}

/// Turns a failed `socket`/`connect` for client `i` into advice that names the limit.
pub fn connect_error(i: usize, clients: usize, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EMFILE) => {
            let (soft, hard) = nofile().unwrap_or((0, 0));
            format!("client {i}: out of file descriptors (EMFILE): {}", nofile_advice(clients, soft, hard))
        }
        Some(libc::ENFILE) => format!(
            "client {i}: the system-wide file limit is reached (ENFILE); see `sysctl fs.file-max` \
             or use fewer --clients"
        ),
        Some(libc::EADDRNOTAVAIL) => format!(
            "client {i}: out of local ports (EADDRNOTAVAIL); spread clients over more source \
             addresses with --sources"
        ),
        _ => format!("client {i}: connect: {e}"),
    }
}
