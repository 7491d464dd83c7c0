//! Cluster mode in the server: Redis's events applied to the chat replica and to the
//! connections here, one at a time, in channel order. A join that opens a socket
//! here is applied to everyone else first, so the new member hears exactly what
//! came after its own join, as on a single node.

use super::Server;
use crate::chat::Effect;
use crate::cluster::{Cluster, Event};
use crate::conn::Stream;
use crate::log;
use crate::storage::{Done, Origin, Reply};
use crate::ws::close;
use std::rc::Rc;
use std::time::Instant;

impl<S: Stream> Server<S> {
    /// Nothing this node sent to Redis still waits for its answer or its event.
    pub fn cluster_quiet(&self) -> bool {
        self.cx.cluster.as_ref().is_none_or(Cluster::is_quiet)
    }

    /// Applies what Redis brought, event by event, in channel order.
    pub fn run_cluster_events(&mut self, now: Instant) {
        loop {
            let Some(cluster) = self.cx.cluster.as_mut() else { return };
            if cluster.wants_sync() {
                let users: Vec<(String, Origin)> = self
                    .cx
                    .chat
                    .local_users()
                    .map(|(conn, user)| (user.to_owned(), Origin { conn, generation: self.conns[conn].generation }))
                    .collect();
                let history = self.cx.chat.history();
                cluster.sync(&users, (history.epoch(), history.last_id()), now);
            }
            let Some(event) = cluster.next_event() else { return };
            self.on_cluster_event(event, now);
        }
    }

    fn on_cluster_event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Reply(done) => return self.reply(done, now),
            Event::Join { name, mine } => {
                self.cx.chat.apply_join(&name, &mut self.cx.fx);
                self.apply_effects(now);
                if let Some(origin) = mine {
                    self.reply(Done { origin, reply: Reply::Joined }, now);
                    // The client gave up meanwhile (hung up, timed out) or its session
                    // ended: Redis must not keep it online, nor count it (the user may
                    // have other sockets here: two joins crossed).
                    let opened = self.local(origin).is_some_and(|c| self.cx.chat.is_socket_of(&name, c));
                    let Some(cluster) = self.cx.cluster.as_mut().filter(|_| !opened) else { return };
                    // Another join of the user from here, still to settle, is counted
                    // by Redis too: only this socket's count goes (the cluster fuzz
                    // world's crash-given-up-join-took-a-devices-presence).
                    if self.cx.chat.member_of_user(&name).is_some() || cluster.joining(&name) {
                        cluster.devices_closed(&name, 1);
                    } else {
                        cluster.left(&name);
                    }
                }
                return;
            }
            Event::Leave { name } => self.cx.chat.apply_leave(&name, &mut self.cx.fx),
            Event::Banned { name, ban } => self.cx.chat.ban(&name, ban),
            Event::Unbanned { name } => {
                self.cx.chat.unban(&name);
            }
            Event::Message { msg, mine } => {
                let sender = mine.and_then(|o| self.local(o));
                self.cx.chat.apply_message(msg, sender, &mut self.cx.fx);
            }
            // The chat core knows the words (a ban's, a key reset's) and every device
            // a logout closes.
            Event::SessionEnded { id_hash, code } => self.cx.chat.apply_session_end(&id_hash, code, &mut self.cx.fx),
            Event::Devices { name, elsewhere } => self.cx.chat.set_devices_elsewhere(&name, elsewhere),
            Event::OverCap(origin) => {
                if let Some(conn) = self.local(origin) {
                    let reason = Rc::from("too many devices");
                    self.cx.fx.push(Effect::Close { conn, code: close::POLICY, reason });
                }
            }
            Event::LoggedOut { name } => {
                self.cx.chat.close_user(&name, close::NORMAL, Rc::from("logged out"), &mut self.cx.fx);
            }
            Event::SessionGone { id_hash, code, reason } => self.end_session(&id_hash, code, reason, now),
            Event::Control { origin, value } => self.control.on_cluster_value(origin.generation, value, &mut self.cx),
            Event::Kick { name } => {
                self.cx.chat.kick(&name, &mut self.cx.fx);
            }
            Event::Deleted { id } => {
                self.cx.chat.delete_message(id, &mut self.cx.fx);
            }
            Event::Unavailable(origin) => {
                if let Some(conn) = self.local(origin) {
                    self.cx.chat.refused(conn, &mut self.cx.fx);
                }
            }
            Event::SyncedMore { messages, last } => {
                self.cx.chat.continue_snapshot(messages, &mut self.cx.fx);
                if last {
                    self.cx.chat.finish_snapshot(&mut self.cx.fx);
                }
            }
            Event::Synced { snapshot, taken, mine, more, devices } => {
                self.cx.chat.replace_devices_elsewhere(devices);
                let mine: Vec<(u64, usize)> =
                    mine.into_iter().filter_map(|(id, o)| Some((id, self.local(o)?))).collect();
                // A big snapshot's later messages come a slice a turn (`SyncedMore`).
                self.cx.chat.begin_snapshot(snapshot, &mine, &mut self.cx.fx);
                if !more {
                    self.cx.chat.finish_snapshot(&mut self.cx.fx);
                }
                for user in taken {
                    if self.cx.chat.member_of_user(&user).is_some() {
                        log::warn(format_args!("{user} is online on another node now; closing the sockets here"));
                        self.cx.chat.evict_user(&user, &mut self.cx.fx);
                    }
                }
                // Closed while their sessions still name them (the log lines do).
                self.apply_effects(now);
                // Session ends published while this node was away were missed: cached
                // sessions are fetched again when next used. Those with a socket here
                // (the taken ones are closed just above) are asserted again: Redis
                // writes back what it lost (a failover to a replica that lacked them)
                // and says which ended meanwhile.
                let with_socket = self.cx.chat.forget_sessions_without_socket();
                if let Some(cluster) = self.cx.cluster.as_mut() {
                    for id_hash in &with_socket {
                        if let Some((_, user, left)) = self.cx.chat.session_socket(id_hash, now) {
                            cluster.reassert_session(id_hash, &user, left);
                        }
                    }
                }
            }
        }
        self.apply_effects(now);
        self.cx.persist_changes();
    }

    /// A session ended in Redis: its socket here, if any, closes with `code` (and
    /// `reason` in the frame, if any) while the session still names the user, so the
    /// log line does; leaving tells the cluster. Then the session goes.
    fn end_session(&mut self, id_hash: &[u8; 32], code: u16, reason: &str, now: Instant) {
        if let Some((conn, _, _)) = self.cx.chat.session_socket(id_hash, now) {
            if let Some(c) = self.conns.get_mut(conn).filter(|c| c.is_ws()) {
                c.close_ws_because(code, reason, &mut self.cx, now);
                self.queue_flush(conn);
                self.arm(conn);
            }
        }
        self.cx.chat.apply_session_end(id_hash, code, &mut self.cx.fx);
    }

    /// The connection `origin` names, if it is still that one.
    fn local(&self, origin: Origin) -> Option<usize> {
        self.conns.get(origin.conn).filter(|c| c.generation == origin.generation).map(|_| origin.conn)
    }

    /// A member's message goes to Redis; it comes back as an event to deliver.
    pub(super) fn publish(&mut self, conn: usize, author: std::rc::Rc<str>, message: Box<str>) {
        let Some(generation) = self.generation(conn) else { return };
        if let Some(cluster) = self.cx.cluster.as_mut() {
            cluster.publish(Origin { conn, generation }, author, message);
        }
    }
}
