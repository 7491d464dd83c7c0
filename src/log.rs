//! Logging to stderr, one line per event, filtered by a level set once at start.
//! Callers never pass keys, session ids or message bodies.

use std::fmt::Arguments;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use crate::config::LogLevel as Level;

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether a line at `level` would be written; lets a caller skip formatting.
pub fn enabled(level: Level) -> bool {
    level != Level::Off && level as u8 <= LEVEL.load(Ordering::Relaxed)
}

fn emit(level: Level, tag: &str, args: Arguments) {
    if !enabled(level) {
        return;
    }
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    // One write per line so concurrent test processes' lines never interleave mid-line.
    let line = format!("{}.{:03} {tag} {args}\n", t.as_secs(), t.subsec_millis());
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
