//! Logging to stderr, one line per event, filtered by a level set once at start:
//! `2026-11-30T04:01:02.123Z INFO message` (RFC 3339, UTC, milliseconds).
//! Callers never pass keys, session ids or message bodies.

use std::fmt::Arguments;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How much skiff logs. `Off` < `Error` < ... < `Debug`: a line is written when its
/// level is at most the configured one (and the configured one is not `Off`).
/// Here, not in `config`: logging is a lower layer every module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Off,
    Error,
    Warn,
    Info,
    Debug,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether a line at `level` would be written; lets a caller skip formatting.
pub fn enabled(level: Level) -> bool {
    passes(level, LEVEL.load(Ordering::Relaxed))
}

fn passes(level: Level, max: u8) -> bool {
    level != Level::Off && level as u8 <= max
}

fn emit(level: Level, tag: &str, args: Arguments) {
    if !enabled(level) {
        return;
    }
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    // One write per line so concurrent test processes' lines never interleave mid-line.
    let line = format!("{} {tag} {args}\n", rfc3339(t));
    let _ = std::io::stderr().write_all(line.as_bytes());
}

pub fn error(args: Arguments) {
    emit(Level::Error, "ERROR", args)
}
pub fn warn(args: Arguments) {
    emit(Level::Warn, "WARN", args)
}
pub fn info(args: Arguments) {
    emit(Level::Info, "INFO", args)
}
pub fn debug(args: Arguments) {
    emit(Level::Debug, "DEBUG", args)
}

/// One HTTP request at debug: method, path without its query (a query may one day
/// carry something private), status, time to answer. Formats nothing when debug is off.
pub fn request(peer: &dyn std::fmt::Display, method: &str, path: &str, status: u16, took: std::time::Duration) {
    if enabled(Level::Debug) {
        debug(format_args!("{}", request_line(peer, method, path, status, took)));
    }
}

fn request_line(
    peer: &dyn std::fmt::Display,
    method: &str,
    path: &str,
    status: u16,
    took: std::time::Duration,
) -> String {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    format!("{peer} {method} {path} {status} {}us", took.as_micros())
}

/// `since_epoch` as `YYYY-MM-DDTHH:MM:SS.mmmZ`, proleptic Gregorian, UTC.
pub fn rfc3339(since_epoch: std::time::Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

/// Days since 1970-01-01 -> (year, month, day), after Howard Hinnant's
/// `civil_from_days`: count in 400-year eras of 146,097 days, with years starting
/// on March 1 so that the leap day falls at the end of the year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_by_hand_matches_known_instants() {
        for (secs, millis, want) in [
            (0, 0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.005Z"), // a leap day of a century leap year
            (951_868_799, 999, "2000-02-29T23:59:59.999Z"),
            (4_107_542_400, 0, "2100-03-01T00:00:00.000Z"), // 2100 is not a leap year
            (1_709_251_199, 0, "2024-02-29T23:59:59.000Z"),
            (1_798_761_599, 0, "2026-12-31T23:59:59.000Z"),
            (1_795_924_862, 123, "2026-11-29T04:01:02.123Z"),
        ] {
            assert_eq!(rfc3339(Duration::from_secs(secs) + Duration::from_millis(millis)), want, "{secs}");
        }
        // Every day for 500 years follows the one before by the calendar's rules.
        let month_len = |y: u64, m: u64| match m {
            2 if y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400)) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let mut last = civil_from_days(0);
        for day in 1..(500 * 366) {
            let (y, m, d) = last;
            let want = match (d < month_len(y, m), m) {
                (true, _) => (y, m, d + 1),
                (false, 12) => (y + 1, 1, 1),
                (false, _) => (y, m + 1, 1),
            };
            last = civil_from_days(day);
            assert_eq!(last, want, "day {day}");
        }
    }

    #[test]
    fn a_request_line_leaves_out_the_query() {
        let line = request_line(&"127.0.0.1:5", "GET", "/api/history?limit=5&before=9", 200, Duration::from_micros(42));
        assert_eq!(line, "127.0.0.1:5 GET /api/history 200 42us");
    }

    #[test]
    fn off_disables_every_level() {
        let all = [Level::Off, Level::Error, Level::Warn, Level::Info, Level::Debug];
        assert!(all.iter().all(|&l| !passes(l, Level::Off as u8)));
        let at_warn: Vec<_> = all.iter().filter(|&&l| passes(l, Level::Warn as u8)).collect();
        assert_eq!(at_warn, [&Level::Error, &Level::Warn]);
        assert!(passes(Level::Debug, Level::Debug as u8));
    }
}
