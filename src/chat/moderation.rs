//! What `skiff ctl` does to the room: a kick, the end of every session of a user
//! (ban, key reset, deletion), bans checked at login, messages taken out of the
//! history (v2 members hear `{"event":"delete","id":N}`). The store is the caller's;
//! this only changes memory and says what to send.

use super::session::EndReason;
use super::{Chat, Effect, Effects};
use crate::ws::close;
use crate::ws::frame;

/// Operator actions, counted in `skiff_moderation_total{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Kick,
    Ban,
    Unban,
    ResetKey,
    DeleteUser,
    DeleteMessage,
}

impl Action {
    pub const ALL: [Action; 6] =
        [Action::Kick, Action::Ban, Action::Unban, Action::ResetKey, Action::DeleteUser, Action::DeleteMessage];

    pub fn label(self) -> &'static str {
        match self {
            Action::Kick => "kick",
            Action::Ban => "ban",
            Action::Unban => "unban",
            Action::ResetKey => "reset_key",
            Action::DeleteUser => "delete_user",
            Action::DeleteMessage => "delete_message",
        }
    }
}

impl Chat {
    /// Counts one operator action for `/metrics`.
    pub fn count(&mut self, action: Action) {
        self.stats.moderation[action as usize] += 1;
    }

    /// The bans read from the database at start.
    pub fn set_banned(&mut self, lowercased: impl IntoIterator<Item = String>) {
        self.banned = lowercased.into_iter().map(String::into_boxed_str).collect();
    }

    pub fn is_banned(&self, name: &str) -> bool {
        !self.banned.is_empty() && self.banned.contains(name.to_ascii_lowercase().as_str())
    }

    /// From now on a login of `name` gets no session (the caller ends the ones it has).
    pub fn ban(&mut self, name: &str) {
        self.banned.insert(name.to_ascii_lowercase().into());
    }

    /// True if the user was banned.
    pub fn unban(&mut self, name: &str) -> bool {
        self.banned.remove(name.to_ascii_lowercase().as_str())
    }

    /// Closes the user's WebSocket here with 1000 and tells the room they left; the
    /// session stays, so they may come back. False if they have no socket here.
    pub fn kick(&mut self, name: &str, fx: &mut Effects) -> bool {
        let Some(conn) = self.member_of_user(name) else { return false };
        let Some(m) = self.remove_member(conn) else { return false };
        self.sessions.set_socket(m.session, None);
        if let Some(user) = self.sessions.get(m.session).map(|s| s.user.clone()) {
            self.left(user, fx);
        }
        fx.push(Effect::Close { conn, code: close::NORMAL });
        true
    }

    /// Ends every session of `name` here: their WebSocket closes with 1008 and the
    /// room hears the leave. Returns how many sessions ended.
    pub fn end_user(&mut self, name: &str, fx: &mut Effects) -> usize {
        let keys = self.sessions.keys_of_user(name);
        let mut ended = 0;
        for k in keys {
            if let Some(s) = self.sessions.remove(k) {
                self.ended(k, s, EndReason::Evicted, fx);
                ended += 1;
            }
        }
        ended
    }

    /// Takes message `id` out of the history; v2 members are told. False if it is
    /// not kept.
    pub fn delete_message(&mut self, id: u64, fx: &mut Effects) -> bool {
        if !self.history.remove(id) {
            return false;
        }
        fx.push(Effect::BroadcastV2 { frame: delete_frame(id) });
        true
    }

    /// Takes every kept message by `author` out of the history; returns their ids.
    pub fn delete_messages_by(&mut self, author: &str, fx: &mut Effects) -> Vec<u64> {
        let ids = self.history.remove_by(author);
        for &id in &ids {
            fx.push(Effect::BroadcastV2 { frame: delete_frame(id) });
        }
        ids
    }

    /// The user's live sessions here.
    pub fn sessions_of(&self, name: &str) -> usize {
        self.sessions.keys_of_user(name).len()
    }
}

fn delete_frame(id: u64) -> std::rc::Rc<[u8]> {
    frame::text(format!("{{\"event\":\"delete\",\"id\":{id}}}").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::super::room::RateLimit;
    use super::super::{ChatConfig, LoginError};
    use super::*;
    use std::time::{Duration, Instant};

    fn chat() -> Chat {
        Chat::new(ChatConfig {
            session_ttl: Duration::from_secs(60),
            max_sessions_per_user: 4,
            max_sessions: 100,
            message_rate: Some(RateLimit { per_second: 100, burst: 100 }),
            history: 10,
        })
    }

    fn join(chat: &mut Chat, user: &str, conn: usize, v2: bool, now: Instant, fx: &mut Effects) {
        let id = chat.login(user, now, fx).unwrap();
        let k = chat.authenticate(&id, now).unwrap();
        chat.join(conn, k, false, v2, now, fx).unwrap();
    }

    fn text(frame: &[u8]) -> String {
        let f = frame::decode_server(frame).unwrap().unwrap();
        String::from_utf8(frame[f.payload].to_vec()).unwrap()
    }

    #[test]
    fn a_kick_closes_with_1000_and_keeps_the_session() {
        let t0 = Instant::now();
        let (mut chat, mut fx) = (chat(), vec![]);
        join(&mut chat, "Amy", 1, false, t0, &mut fx);
        join(&mut chat, "bob", 2, false, t0, &mut fx);
        fx.clear();
        assert!(chat.kick("AMY", &mut fx));
        assert!(!chat.kick("amy", &mut fx), "no socket left to kick");
        assert!(matches!(fx.last(), Some(Effect::Close { conn: 1, code: close::NORMAL })));
        assert!(fx.iter().any(|e| matches!(e, Effect::Broadcast { frame, .. } if text(frame).contains("\"leave\""))));
        assert_eq!(chat.members(), &[2]);
        assert_eq!(chat.sessions_of("amy"), 1, "the session stays: she may reconnect");
    }

    #[test]
    fn ending_a_user_closes_with_1008_and_a_ban_refuses_logins() {
        let t0 = Instant::now();
        let (mut chat, mut fx) = (chat(), vec![]);
        join(&mut chat, "Amy", 1, false, t0, &mut fx);
        chat.login("amy", t0, &mut fx).unwrap();
        join(&mut chat, "bob", 2, false, t0, &mut fx);
        fx.clear();
        chat.ban("amy");
        assert_eq!(chat.end_user("amy", &mut fx), 2);
        assert!(matches!(fx.last(), Some(Effect::Close { conn: 1, code: close::POLICY })));
        assert_eq!(chat.login("AMY", t0, &mut fx), Err(LoginError::Banned));
        assert!(chat.login("bob", t0, &mut fx).is_ok(), "others are not affected");
        assert!(chat.unban("Amy"));
        assert!(chat.login("amy", t0, &mut fx).is_ok());
    }

    #[test]
    fn a_deleted_message_leaves_the_history_and_only_v2_members_hear_of_it() {
        let t0 = Instant::now();
        let (mut chat, mut fx) = (chat(), vec![]);
        join(&mut chat, "amy", 1, true, t0, &mut fx);
        join(&mut chat, "bob", 2, false, t0, &mut fx);
        for conn in [1, 2, 1] {
            chat.on_text(conn, r#"{"message":"hi"}"#, t0, &mut fx);
        }
        fx.clear();
        assert!(chat.delete_message(2, &mut fx));
        assert!(!chat.delete_message(2, &mut fx), "already gone");
        assert!(!chat.delete_message(99, &mut fx));
        let [Effect::BroadcastV2 { frame }] = fx.as_slice() else { panic!("{fx:?}") };
        assert_eq!(text(frame), r#"{"event":"delete","id":2}"#);
        let ids: Vec<u64> = chat.history().page(None, 10).map(|e| e.id).collect();
        assert_eq!(ids, [1, 3]);
        assert_eq!(chat.history().since(0, chat.history().epoch()).unwrap().count(), 2, "a replay skips it");
        fx.clear();
        assert_eq!(chat.delete_messages_by("amy", &mut fx), [1, 3]);
        assert_eq!(fx.len(), 2);
        assert!(chat.history().is_empty());
    }
}
