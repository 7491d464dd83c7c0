//! The room's order behind one boundary, in the spirit of centrifuge's `Broker`: a
//! member's message, join and leave go in (`publish`, `announce_join`, `left`);
//! messages, joins and leaves in the room's order come out and are applied here
//! (`apply_message`, `apply_join`, `apply_leave`), the same way for both engines.
//!
//! - The memory engine (one node) orders at once: the next id and this moment's
//!   time in the same turn, applied before `publish` returns.
//! - The Redis engine (a cluster node: the core is a replica) hands its input to the
//!   cluster as effects (`Publish`, `Left`); the results come back off the room's
//!   channel, in the order Redis gave every node, through the same `apply_*`.
//!
//! A message becomes frames in one place, `deliver`.

use super::{event_frame, frame, v2_ack, Chat, ConnId, Effect, Effects, Message, Outgoing, ACK_OK, ACK_UNAVAILABLE};
use crate::outq::Chunk;
use std::rc::Rc;
use std::time::Instant;

impl Chat {
    /// In: a member's valid message. The memory engine delivers it now and holds the
    /// sender's ack until the message is on disk (`on_committed`); the Redis engine
    /// publishes it, and the ack comes with it off the channel.
    pub(super) fn publish(&mut self, conn: ConnId, author: Rc<str>, text: &str, now: Instant, fx: &mut Effects) {
        if self.replica.is_some() {
            if let Some(m) = self.room.get_mut(conn) {
                m.unacked += 1;
                self.in_flight.sent(conn);
            }
            fx.push(Effect::Publish { conn, author, message: text.into() });
            return;
        }
        // No durable reservation covers another id (the disk refuses writes): the
        // message goes nowhere rather than under an id a crash could reuse.
        let Some(id) = self.history.next_id() else {
            self.stats.messages_rejected += 1;
            return self.ack(conn, Chunk::Static(ACK_UNAVAILABLE), None, fx);
        };
        let ts = self.unix_ms(now);
        let kept = self.history.cap() > 0;
        if kept {
            // The store's copy; with history off the message is never written, and
            // this path (every message) allocates only the frames.
            self.new_messages.push(Message { id, ts, author: author.to_string(), text: text.to_owned() });
        }
        self.deliver(id, ts, author, text, Some(conn), fx);
        let ack = if self.is_v2(conn) { v2_ack(id) } else { Chunk::Static(ACK_OK) };
        // With history off nothing is written: the reserved id is all a crash could
        // break, and it is durable already.
        self.ack(conn, ack, kept.then_some(id), fx);
    }

    /// In: `user` joined here on `conn`. Replicated, everyone (here too) heard it
    /// from the channel already, before the socket opened.
    pub(super) fn announce_join(&mut self, conn: ConnId, user: &str, fx: &mut Effects) {
        if self.replica.is_none() {
            fx.push(Effect::Broadcast { except: Some(conn), frame: event_frame("join", user) });
            self.note_presence(user, true);
        }
    }

    /// In: a member here is gone: tell the room, or (replicated) the cluster.
    pub(super) fn left(&mut self, user: Rc<str>, closed: usize, fx: &mut Effects) {
        if self.replica.is_some() {
            fx.push(Effect::Left { user, closed });
        } else {
            fx.push(Effect::Broadcast { except: None, frame: event_frame("leave", &user) });
            self.note_presence(&user, false);
        }
    }

    /// A join or leave for the members that take them in batches (`presence.rs`);
    /// nothing to keep while none does.
    pub(super) fn note_presence(&mut self, user: &str, joined: bool) {
        if self.room.subscribers() == (0, 0) {
            self.presence.unobserved_change();
            return;
        }
        let name = self.sessions.shared_name(user).unwrap_or_else(|| Rc::from(user));
        self.presence.note(&name, joined);
    }

    /// Out: a message in the room's order becomes its frames (v1 and v2, each encoded
    /// once), joins the history and goes to every member but `except`.
    fn deliver(&mut self, id: u64, ts: i64, author: Rc<str>, text: &str, except: Option<ConnId>, fx: &mut Effects) {
        let mut v1 = frame::TextFrame::with_capacity(text.len() + author.len() + 32);
        serde_json::to_writer(v1.payload(), &Outgoing { message: text, author: &author })
            .expect("serializing into a Vec cannot fail");
        let entry = Self::history_entry(id, ts, author, text);
        let v2 = entry.frame.clone();
        self.history.push(entry);
        self.stats.broadcasts += 1;
        fx.push(Effect::Message { except, v1: v1.finish(), v2 });
    }

    /// Out (Redis engine): a message in the global order; `sender` is the member here
    /// that sent it, if any: it gets the ack instead of the message.
    pub fn apply_message(&mut self, msg: Message, sender: Option<ConnId>, fx: &mut Effects) {
        let author = self.sessions.shared_name(&msg.author).unwrap_or_else(|| Rc::from(msg.author.as_str()));
        let sender = sender.filter(|&c| self.room.get(c).is_some());
        self.deliver(msg.id, msg.ts, author, &msg.text, sender, fx);
        if let Some(conn) = sender {
            let ack = if self.is_v2(conn) { v2_ack(msg.id) } else { Chunk::Static(ACK_OK) };
            self.settle(conn, ack, fx);
        }
    }

    /// Out (Redis engine): the outcome of `conn`'s oldest message still out, `frame`
    /// (its ack, or its refusal), and then the acks that waited behind it.
    pub(super) fn settle(&mut self, conn: ConnId, frame: Chunk, fx: &mut Effects) {
        let released = self.in_flight.settle(conn, frame, |frame| fx.push(Effect::Send { to: conn, frame }));
        if let Some(m) = self.room.get_mut(conn) {
            m.unacked = m.unacked.saturating_sub(released);
        }
    }

    /// Out (Redis engine): `conn`'s oldest message still out was refused
    /// ("unavailable": Redis was not reached, or did not answer).
    pub fn refused(&mut self, conn: ConnId, fx: &mut Effects) {
        self.settle(conn, Chunk::Static(ACK_UNAVAILABLE), fx);
    }

    /// Out (Redis engine): someone joined, on any node. The joiner (if it is ours) is
    /// not a member yet: it hears no join of its own.
    pub fn apply_join(&mut self, name: &str, fx: &mut Effects) {
        let Some(r) = self.replica.as_mut() else { return };
        if r.insert(name) {
            fx.push(Effect::Broadcast { except: None, frame: event_frame("join", name) });
            self.note_presence(name, true);
        }
    }

    /// Out (Redis engine): someone left, on any node.
    pub fn apply_leave(&mut self, name: &str, fx: &mut Effects) {
        let Some(r) = self.replica.as_mut() else { return };
        if r.remove(name) {
            fx.push(Effect::Broadcast { except: None, frame: event_frame("leave", name) });
            self.note_presence(name, false);
        }
    }
}
