//! `skiff ctl` requests applied to the server: the work is `control::Ops`'s; here
//! its effects (sockets to close, leaves, delete events) reach the connections.

use super::Server;
use crate::conn::Stream;
use crate::control::Request;
use crate::storage::Done;
use std::time::Instant;

impl<S: Stream> Server<S> {
    /// A `skiff ctl` request; `id` is unique for the life of the process. The answer
    /// comes from `control.take_answers`, now or after storage (or Redis) replies.
    pub fn on_control(&mut self, id: u64, req: Request, now: Instant) {
        self.control.start(id, req, &mut self.cx);
        self.apply_effects(now);
        self.cx.persist_changes();
    }

    pub(super) fn control_reply(&mut self, done: Done, now: Instant) {
        self.control.on_reply(done.origin.generation, done.reply, &mut self.cx);
        self.apply_effects(now);
        self.cx.persist_changes();
    }

    /// Backups that have finished (their thread woke the loop).
    pub fn on_backups(&mut self) {
        self.control.on_backups();
    }
}
