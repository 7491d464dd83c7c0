//! The standard `process_*` families every Prometheus client library exports, read
//! from `/proc` at scrape time (a scrape every few seconds costs a few syscalls;
//! the loop keeps nothing up to date for them).

/// What `/proc` says about this process. A field that cannot be read is `None`
/// and its family is left out rather than reported as zero.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Process {
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

impl Process {
    pub fn read() -> Process {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let stat = stat.as_deref().and_then(StatFields::parse);
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time(&s));
        // SAFETY: sysconf has no preconditions.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let ticks = (ticks > 0).then_some(ticks as f64);
        let statm = std::fs::read_to_string("/proc/self/statm").ok();
        let mut pages = statm.as_deref().unwrap_or("").split_whitespace().map(|f| f.parse::<u64>().ok());
        let page = u64::try_from(page).unwrap_or(4096);
        let virtual_bytes = pages.next().flatten().map(|p| p * page);
        let resident_bytes = pages.next().flatten().map(|p| p * page);
        Process {
            resident_bytes,
            virtual_bytes,
            cpu_seconds: stat.zip(ticks).map(|(s, t)| (s.utime + s.stime) as f64 / t),
            open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64),
            max_fds: max_fds(),
            start_time_seconds: stat.zip(ticks).zip(boot).map(|((s, t), b)| b as f64 + s.starttime as f64 / t),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct StatFields {
    utime: u64,
    stime: u64,
    starttime: u64,
}

impl StatFields {
    /// `/proc/PID/stat`: the command name is in parentheses and may hold spaces or
    /// parentheses itself, so fields are counted from the last `)` (proc(5)).
    fn parse(stat: &str) -> Option<StatFields> {
        let after = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = after.split_whitespace().collect();
        // proc(5) numbers fields from 1 with state as field 3: utime is 14, stime 15,
        // starttime 22, so 11, 12 and 19 after the name.
        let num = |i: usize| f.get(i)?.parse::<u64>().ok();
        Some(StatFields { utime: num(11)?, stime: num(12)?, starttime: num(19)? })
    }
}

/// `btime` in `/proc/stat`: boot time, seconds since the epoch.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

/// The soft descriptor limit: the one `accept` runs into.
// `rlim_t` is 32 bits on some 32-bit targets, 64 here.
#[allow(clippy::unnecessary_cast)]
fn max_fds() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct we pass.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_past_a_name_with_spaces_and_parentheses() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 3 0 123456 10000000 500 18446744073709551615";
        let f = StatFields::parse(line).unwrap();
        assert_eq!((f.utime, f.stime, f.starttime), (250, 75, 123456));
        assert!(StatFields::parse("4242 (short) S 1").is_none());
    }

    #[test]
    fn boot_time_is_found_among_the_other_lines() {
        assert_eq!(boot_time("cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n"), Some(1_700_000_000));
        assert_eq!(boot_time("cpu 1\n"), None);
    }

    #[test]
    fn this_process_reads_as_alive_and_started_in_the_past() {
        let p = Process::read();
        assert!(p.resident_bytes.unwrap() > 0);
        assert!(p.virtual_bytes.unwrap() >= p.resident_bytes.unwrap());
        assert!(p.cpu_seconds.unwrap() >= 0.0);
        let open = p.open_fds.unwrap();
        assert!(open >= 3 && open <= p.max_fds.unwrap(), "{open} open of {:?}", p.max_fds);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let start = p.start_time_seconds.unwrap();
        // Boot time is whole seconds and ticks are 10 ms: allow a little slack.
        assert!(start <= now + 2.0 && start > now - 24.0 * 3600.0 * 365.0, "started at {start}, now {now}");
    }
}
