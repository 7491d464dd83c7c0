//! The reconnect storm (`--storm-cmd`): every client is connected and idle; the
//! command takes the server down and starts it again (kill -9 or a clean restart);
//! each client that loses its socket reconnects as the built-in page does, after
//! uniform(0, min(cap, base * 2^attempt)) and resuming with `since=` on v2. The
//! senders chat throughout, one message per period while open (no catch-up burst).
//! Measured: from the command's start until every client is open again, and the
//! chat latency clients saw meanwhile and for `CHAT_AFTER` after (messages a resume
//! replays are history, not live chat, and are counted apart).

use crate::args::Args;
use crate::client::{Bench, Storm};
use crate::hist::Histogram;
use crate::{progress, sys};
use serde_json::{json, Value};
use std::io::Write;
use std::time::{Duration, Instant};

/// How long the senders go on once every client is back.
const CHAT_AFTER: Duration = Duration::from_secs(2);

pub struct Outcome {
    pub cmd_s: f64,
    pub cmd_ok: bool,
    /// From the command's start to the last client open again; None if not all came back.
    pub back_s: Option<f64>,
    pub open_at_end: usize,
    pub drops: u64,
    pub attempts: u64,
    pub refused: u64,
    pub replayed: u64,
    pub sent: u64,
    pub hist: Histogram,
}

pub fn run(a: &Args, bench: &mut Bench, hard_stop: Instant) -> Result<Outcome, String> {
    let cmd = a.storm_cmd.as_deref().expect("run only with --storm-cmd");
    bench.reset_load();
    bench.storm = Some(Storm::new(a.backoff.0, a.backoff.1));
    let sent0 = bench.sends.sent;
    progress::show("storm", &format!("running: {cmd}"));
    let t0 = Instant::now();
    let t0_ns = sys::now_ns();
    let status = std::process::Command::new("sh").arg("-c").arg(cmd).status().map_err(|e| format!("{cmd}: {e}"))?;
    let cmd_s = t0.elapsed().as_secs_f64();
    let period = Duration::from_secs_f64(1.0 / a.rate.max(0.001));
    let mut next: Vec<Instant> = (0..a.senders).map(|s| t0 + period.mul_f64(s as f64 / a.senders as f64)).collect();
    let mut back: Option<(Instant, u64)> = None;
    let mut shown = t0;
    let mut payload = Vec::with_capacity(64);
    bench.run((t0 + a.storm_wait).min(hard_stop), |b| {
        let now = Instant::now();
        for (s, due) in next.iter_mut().enumerate() {
            if now < *due {
                continue;
            }
            *due = (*due + period).max(now);
            if b.is_open(s) {
                payload.clear();
                let _ = write!(payload, "{{\"message\":\"{s} {} {}\"}}", b.sent_by(s), sys::now_ns());
                b.send(s, &payload);
            }
        }
        let st = b.storm.as_ref().expect("set above");
        if back.is_none() && st.drops > 0 && b.open >= a.clients {
            back = Some((now, st.last_open_ns));
        }
        if shown.elapsed() >= Duration::from_secs(1) {
            shown = now;
            progress::show("storm", &format!("{} of {} open, {} reconnects", b.open, a.clients, st.attempts));
        }
        back.is_some_and(|(at, _)| now >= at + CHAT_AFTER)
    });
    let st = bench.storm.take().expect("set above");
    Ok(Outcome {
        cmd_s,
        cmd_ok: status.success(),
        back_s: back.map(|(_, ns)| ns.saturating_sub(t0_ns) as f64 / 1e9),
        open_at_end: bench.open,
        drops: st.drops,
        attempts: st.attempts,
        refused: st.refused,
        replayed: st.replayed,
        sent: bench.sends.sent - sent0,
        hist: std::mem::replace(&mut bench.hist, Histogram::new()),
    })
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Outcome {
    pub fn json(&self) -> Value {
        json!({
            "cmd_s": self.cmd_s,
            "cmd_ok": self.cmd_ok,
            "back_s": self.back_s,
            "open_at_end": self.open_at_end,
            "drops": self.drops,
            "reconnects": self.attempts,
            "refused": self.refused,
            "replayed": self.replayed,
            "sent": self.sent,
            "delivered": self.hist.count(),
            "chat_p50_ms": ms(self.hist.quantile(0.5)),
            "chat_p99_ms": ms(self.hist.quantile(0.99)),
            "chat_max_ms": ms(self.hist.max()),
        })
    }

    pub fn print(&self, clients: usize) {
        let back = self.back_s.map_or("NOT all back".into(), |s| format!("all back in {s:.2} s"));
        println!(
            "  storm      command {:.2} s{}; {back} ({} of {clients} open at the end); {} drops, {} reconnects, {} refused",
            self.cmd_s,
            if self.cmd_ok { "" } else { " (failed)" },
            self.open_at_end,
            self.drops,
            self.attempts,
            self.refused
        );
        println!(
            "  storm chat {} sent, {} delivered live: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} replayed by resumes",
            self.sent,
            self.hist.count(),
            ms(self.hist.quantile(0.5)),
            ms(self.hist.quantile(0.99)),
            ms(self.hist.max()),
            self.replayed
        );
    }
}
