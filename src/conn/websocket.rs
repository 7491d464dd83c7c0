//! The WebSocket phase: whole frames out of the input buffer into the chat core,
//! with a read budget so one busy client cannot starve the rest.

use super::{Conn, Cx, Progress, Step, Stream, PEER_TIMEOUT, PING_INTERVAL};
use crate::chat::room::Bucket;
use crate::chat::session::SessionKey;
use crate::log;
use crate::ws::{self, WsConn, WsRead};
use std::time::Instant;

/// Messages read from one WebSocket before the loop moves on to others.
const READ_BUDGET: usize = 64;

pub struct WsPhase {
    ws: WsConn,
    pub session: SessionKey,
    last_seen: Instant,
    next_ping: Instant,
    /// Every frame takes a token (continuations, pings, pongs and empty ones
    /// too): a flood costs its sender a close, not the server a core. Filled at
    /// the first frame.
    frames: Option<Bucket>,
}

impl WsPhase {
    pub fn new(session: SessionKey, now: Instant) -> Self {
        WsPhase { ws: WsConn::new(), session, last_seen: now, next_ping: now + PING_INTERVAL, frames: None }
    }

    pub fn deadline(&self) -> Instant {
        self.next_ping.min(self.last_seen + PEER_TIMEOUT)
    }

    /// The peer has sent nothing, not even a pong, for too long.
    pub fn silent_since(&self, now: Instant) -> bool {
        now >= self.last_seen + PEER_TIMEOUT
    }

    /// True (and the next ping scheduled) when a ping is due.
    pub fn ping_due(&mut self, now: Instant) -> bool {
        if now < self.next_ping {
            return false;
        }
        self.next_ping = now + PING_INTERVAL;
        true
    }

    /// The decoder's state and the liveness clock, for a hand-over.
    pub fn parts(&self) -> (&WsConn, Instant, Instant) {
        (&self.ws, self.last_seen, self.next_ping)
    }

    pub fn resume(ws: WsConn, session: SessionKey, last_seen: Instant, next_ping: Instant) -> Self {
        WsPhase { ws, session, last_seen, next_ping, frames: None }
    }

    /// Bytes the decoder holds (an unfinished message).
    pub fn held(&self) -> usize {
        self.ws.held()
    }

    /// Mid-way through a fragmented message.
    pub fn holds_partial(&self) -> bool {
        self.ws.holds_partial()
    }
}

impl<S: Stream> Conn<S> {
    pub(super) fn drive_ws(&mut self, cx: &mut Cx, now: Instant) -> Progress {
        let mut budget = READ_BUDGET;
        loop {
            // Its acks wait on the disk: resumed when they go out (`drained`).
            if self.out_high(&cx.log) || cx.chat.holds_too_many_acks(self.key) {
                return Progress::Done(Step::Wait);
            }
            let super::Phase::Ws(w) = &mut self.phase else { return Progress::Again };
            // Checked for each whole frame before it is decoded (a ping past the
            // budget gets no pong), so a flood is cut short within the read that
            // crosses the budget.
            let whole = ws::frame_len(&self.input).is_some_and(|n| n <= self.input.len());
            if let (Some(limit), true) = (cx.cfg.frame_rate, self.metered && whole) {
                if !w.frames.get_or_insert_with(|| Bucket::full(limit, now)).take(limit, now) {
                    cx.stats.frame_flood_closed += 1;
                    log::warn(format_args!("{}: over the frame budget, closed", self.peer()));
                    self.input = Vec::new();
                    self.close_ws_because(ws::close::POLICY, "frame rate", cx, now);
                    return Progress::Again;
                }
            }
            match w.ws.read(&mut self.input, &mut self.out) {
                WsRead::NeedMore => {
                    let before = self.input.len();
                    self.fill(cx, ws::MAX_FRAME_BYTES);
                    if self.input.len() == before {
                        break;
                    }
                    continue;
                }
                WsRead::Text(text) => {
                    w.last_seen = now;
                    cx.chat.on_text(self.key, &text, now, &mut cx.fx);
                }
                WsRead::Control => {
                    w.last_seen = now;
                    cx.chat.on_activity(self.key, now);
                }
                WsRead::Binary => return self.fail_ws(Some(ws::close::UNSUPPORTED), cx, now),
                WsRead::Fail(code) => return self.fail_ws(Some(code), cx, now),
                WsRead::Closed => return self.fail_ws(None, cx, now),
            }
            budget -= 1;
            if budget == 0 {
                return Progress::Done(Step::Yield);
            }
        }
        if self.peer_gone {
            return self.fail_ws(None, cx, now);
        }
        self.release_input();
        Progress::Done(Step::Wait)
    }

    fn fail_ws(&mut self, code: Option<u16>, cx: &mut Cx, now: Instant) -> Progress {
        self.close_ws(code, cx, now);
        Progress::Again
    }
}
