//! What `skiff ctl` does to the room: a kick, the end of every session of a user
//! (ban, key reset, deletion), bans checked at login, messages taken out of the
//! history (v2 members hear `{"event":"delete","id":N}`). The store is the caller's;
//! this only changes memory and says what to send.

use super::{Chat, Effect, Effects};
use crate::ws::close;
use crate::ws::frame;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A ban: since when, until when (none: until an unban), and why. Times are Unix ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub since_ms: i64,
    pub until_ms: Option<i64>,
    pub reason: Option<Box<str>>,
}

impl Ban {
    /// In force at Unix time `now_ms`.
    pub fn holds(&self, now_ms: i64) -> bool {
        self.until_ms.is_none_or(|u| u > now_ms)
    }

    /// The close reason a banned user's sockets get: `banned`, `banned: REASON`,
    /// `banned until T`, `banned until T: REASON`, cut to fit a close frame.
    pub fn close_reason(&self) -> String {
        let mut r = String::from("banned");
        if let Some(until) = self.until_ms {
            r.push_str(" until ");
            r.push_str(&rfc3339(until));
        }
        if let Some(why) = &self.reason {
            r.push_str(": ");
            r.push_str(why);
        }
        crate::ws::truncate(&r, crate::ws::MAX_CLOSE_REASON).to_owned()
    }
}

/// Unix ms as RFC 3339 UTC to the second (`2026-12-06T15:04:05Z`).
pub fn rfc3339(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 as a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

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

    /// The bans read from the database at start, by lowercased name.
    pub fn set_banned(&mut self, bans: impl IntoIterator<Item = (String, Ban)>) {
        self.banned = bans.into_iter().map(|(n, b)| (n.into_boxed_str(), b)).collect();
    }

    /// The ban in force on `name` at `now`, if any.
    pub fn ban_of(&self, name: &str, now: Instant) -> Option<&Ban> {
        if self.banned.is_empty() {
            return None;
        }
        let now_ms = self.unix_ms(now);
        self.banned.get(name.to_ascii_lowercase().as_str()).filter(|b| b.holds(now_ms))
    }

    pub fn is_banned(&self, name: &str, now: Instant) -> bool {
        self.ban_of(name, now).is_some()
    }

    /// From now on a login of `name` gets no session (the caller ends the ones it has).
    pub fn ban(&mut self, name: &str, ban: Ban) {
        self.banned.insert(name.to_ascii_lowercase().into(), ban);
    }

    /// True if the user was banned.
    pub fn unban(&mut self, name: &str) -> bool {
        self.banned.remove(name.to_ascii_lowercase().as_str()).is_some()
    }

    /// When the next timed ban runs out, by the wall clock set on this core.
    pub(super) fn next_ban_end(&self) -> Option<Instant> {
        let (at, at_ms) = self.wall?;
        let end = self.banned.values().filter_map(|b| b.until_ms).min()?;
        Some(at + Duration::from_millis(end.saturating_sub(at_ms).max(0) as u64))
    }

    /// Forgets the timed bans that have run out by `now`: their users may log in.
    pub(super) fn end_timed_bans(&mut self, now: Instant) {
        if self.wall.is_none() || self.banned.is_empty() {
            return;
        }
        let now_ms = self.unix_ms(now);
        let ended = &mut self.ended_bans;
        self.banned.retain(|name, b| {
            let holds = b.holds(now_ms);
            if let (false, Some(until)) = (holds, b.until_ms) {
                crate::log::info(format_args!("the ban of {name} ran out"));
                ended.push((name.clone(), until));
            }
            holds
        });
    }

    /// Timed bans that ran out since the last call (lowercased name, end in Unix ms).
    pub fn take_ended_bans(&mut self) -> Vec<(Box<str>, i64)> {
        std::mem::take(&mut self.ended_bans)
    }

    /// Closes every WebSocket of the user here with 1000 "kicked" and tells the room
    /// they left; the sessions stay, so they may come back. False if they have no
    /// socket here.
    pub fn kick(&mut self, name: &str, fx: &mut Effects) -> bool {
        self.close_user(name, close::NORMAL, Rc::from("kicked"), fx) > 0
    }

    /// Ends every session of `name` here: their WebSockets close with 1008 and
    /// `reason`, and the room hears the leave. Returns how many sessions ended.
    pub fn end_user(&mut self, name: &str, reason: &str, fx: &mut Effects) -> usize {
        let keys = self.sessions.keys_of_user(name);
        let reason: Rc<str> = Rc::from(reason);
        let mut ended = 0;
        for k in keys {
            if let Some(s) = self.sessions.remove(k) {
                self.ended_with(k, s, close::POLICY, reason.clone(), fx);
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
            max_devices: 5,
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
        assert!(fx
            .iter()
            .any(|e| matches!(e, Effect::Close { conn: 1, code: close::NORMAL, reason } if &**reason == "kicked")));
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
        chat.ban("amy", Ban { since_ms: 0, until_ms: None, reason: None });
        assert_eq!(chat.end_user("amy", "banned", &mut fx), 2);
        assert!(fx
            .iter()
            .any(|e| matches!(e, Effect::Close { conn: 1, code: close::POLICY, reason } if &**reason == "banned")));
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

#[cfg(test)]
mod ban_tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_569_445_000), "2026-12-06T15:04:05Z");
        assert_eq!(rfc3339(951_782_400_999), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn close_reasons_name_the_end_and_the_reason_and_fit_a_frame() {
        let mut b = Ban { since_ms: 0, until_ms: None, reason: None };
        assert_eq!(b.close_reason(), "banned");
        b.reason = Some("link spam".into());
        assert_eq!(b.close_reason(), "banned: link spam");
        b.until_ms = Some(1_796_569_445_000);
        assert_eq!(b.close_reason(), "banned until 2026-12-06T15:04:05Z: link spam");
        b.reason = Some("é".repeat(100).into());
        let r = b.close_reason();
        assert!(r.len() <= 123 && r.starts_with("banned until 2026-12-06T15:04:05Z: é"), "{r}");
        assert!(b.holds(1_796_569_444_999) && !b.holds(1_796_569_445_000));
    }
}
