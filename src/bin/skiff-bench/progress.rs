//! Progress on stderr. On a terminal one status line is rewritten in place; anywhere
//! else (a log file, scripts/bench capturing stderr) escape codes would be litter, so
//! plain lines are printed: one when a phase starts, then at most one per 10 s.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const PLAIN_EVERY: Duration = Duration::from_secs(10);

struct State {
    tty: bool,
    /// A rewritten line is on screen and has no newline yet.
    open: bool,
    label: &'static str,
    last: Option<Instant>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let s = g.get_or_insert_with(|| State { tty: std::io::stderr().is_terminal(), open: false, label: "", last: None });
    f(s)
}

/// Shows `label: text`. Callers may call this often; plain output is thinned here.
pub fn show(label: &'static str, text: &str) {
    with(|s| {
        if s.tty {
            eprint!("\r\x1b[2K{label}: {text}");
            s.open = true;
        } else if s.label != label || s.last.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) {
            eprintln!("{label}: {text}");
            s.label = label;
            s.last = Some(Instant::now());
        }
    })
}

/// Prints a line of its own (a warning, an error), never glued to a status line.
pub fn note(text: &str) {
    clear();
    eprintln!("{text}");
}

/// Removes the status line, so that the report starts on a clean screen.
pub fn clear() {
    with(|s| {
        if s.open {
            eprint!("\r\x1b[2K");
            s.open = false;
        }
    })
}
