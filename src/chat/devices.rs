//! Several devices per user: each session's sockets as a list threaded through the
//! room, presence counted per user (the first socket joins, the last one leaves),
//! and the sockets of a user found through their sessions, never by a scan.

use super::session::SessionKey;
use super::{Chat, ConnId, Effect, Effects, JoinError};
use std::collections::HashSet;
use std::rc::Rc;

/// At most this many sockets are walked in one session's list: the lists are made
/// here and stay short, so a longer walk can only be a bug, never a hang.
const MAX_CHAIN: usize = 1 << 16;

impl Chat {
    /// The sockets on the list starting at `head`, newest first.
    pub(super) fn chain(&self, head: Option<ConnId>) -> Vec<ConnId> {
        let mut out = Vec::new();
        let mut at = head;
        while let Some(c) = at {
            if out.len() == MAX_CHAIN {
                break;
            }
            out.push(c);
            at = self.room.get(c).and_then(|m| m.next());
        }
        out
    }

    /// Every socket of the user (name ignoring case) here.
    pub fn sockets_of_user(&self, name: &str) -> Vec<ConnId> {
        self.sessions.keys_of_user(name).into_iter().flat_map(|k| self.sockets_of_session(k)).collect()
    }

    /// The user of session `k` has a socket here.
    pub fn is_here(&self, k: SessionKey) -> bool {
        self.sessions.get(k).is_some_and(|s| self.sessions.socket_of_user(&s.user).is_some())
    }

    fn sockets_of_session(&self, k: SessionKey) -> Vec<ConnId> {
        self.chain(self.sessions.get(k).and_then(|s| s.socket()))
    }

    /// How many sockets the user holds here, and whether one of them is plain `/ws`.
    pub(super) fn devices_of(&self, name: &str) -> (usize, bool) {
        let conns = self.sockets_of_user(name);
        let v1 = conns.iter().any(|&c| self.room.get(c).is_some_and(|m| !m.v2));
        (conns.len(), v1)
    }

    /// Takes `conn` out of the room and off its session's list; the user's name if
    /// the session is still live.
    pub(super) fn unlink(&mut self, conn: ConnId) -> Option<Rc<str>> {
        let m = self.remove_member(conn)?;
        let s = self.sessions.get(m.session)?;
        let user = s.user.clone();
        if s.socket() == Some(conn) {
            self.sessions.set_socket(m.session, m.next());
        } else {
            let before =
                self.chain(s.socket()).into_iter().find(|&c| self.room.get(c).is_some_and(|p| p.next() == Some(conn)));
            if let Some(p) = before.and_then(|c| self.room.get_mut(c)) {
                p.set_next(m.next());
            }
        }
        Some(user)
    }

    /// `closed` of `user`'s sockets are gone: if they were the last ones, the user
    /// left; if not, a cluster still counts the others.
    pub(super) fn gone(&mut self, user: Rc<str>, closed: usize, fx: &mut Effects) {
        if self.sessions.socket_of_user(&user).is_none() {
            self.users_here -= 1;
            self.left(user, closed, fx);
        } else if self.replica.is_some() {
            fx.push(Effect::DevicesClosed { user, closed });
        }
    }

    /// Cluster mode: the user's sockets on the other nodes, which the device cap
    /// counts beside those here.
    pub fn set_devices_elsewhere(&mut self, name: &str, n: usize) {
        if let Some(r) = self.replica.as_mut() {
            r.set_elsewhere(name, n);
        }
    }

    /// Cluster mode, after a sync: every online user's sockets on other nodes.
    pub fn replace_devices_elsewhere(&mut self, counts: Vec<(String, usize)>) {
        if let Some(r) = self.replica.as_mut() {
            r.replace_elsewhere(counts);
        }
    }

    /// Closes every socket of `name` here with `code` and `reason`; sessions stay.
    /// Returns how many closed.
    pub fn close_user(&mut self, name: &str, code: u16, reason: Rc<str>, fx: &mut Effects) -> usize {
        let conns = self.sockets_of_user(name);
        let mut user = None;
        for &conn in &conns {
            user = self.unlink(conn).or(user);
        }
        if let Some(user) = user {
            self.gone(user, conns.len(), fx);
        }
        for &conn in &conns {
            fx.push(Effect::Close { conn, code, reason: reason.clone() });
        }
        conns.len()
    }

    /// Whether this session's user may open a WebSocket now (the 409 checks): plain
    /// `/ws` only as the user's one socket; v2 beside other v2 ones, up to the cap.
    /// In a cluster the cap counts the user's sockets on other nodes too, as last
    /// heard from Redis; a user with none here is Redis's to check (skiff_join),
    /// so this node's view, perhaps a moment old, never refuses what Redis let in.
    pub fn can_join(&self, k: SessionKey, v2: bool) -> Result<(), JoinError> {
        let s = self.sessions.get(k).ok_or(JoinError::NoSession)?;
        let (open, any_v1) = self.devices_of(&s.user);
        if open == 0 {
            return Ok(());
        }
        if !v2 || any_v1 {
            return Err(JoinError::AlreadyConnected);
        }
        let elsewhere = self.replica.as_ref().map_or(0, |r| r.elsewhere(&s.user));
        if open + elsewhere >= self.max_devices {
            return Err(JoinError::TooManyDevices);
        }
        Ok(())
    }

    /// Online users in the order of their first socket, each once.
    pub(super) fn online_once(&self) -> impl Iterator<Item = &str> + '_ {
        let mut seen: HashSet<&str> = HashSet::new();
        self.room.iter().filter_map(|m| self.username(m.session)).filter(move |n| seen.insert(n))
    }
}

#[cfg(test)]
mod tests {
    use super::super::room::RateLimit;
    use super::super::{ChatConfig, JoinError};
    use super::*;
    use crate::ws::{close, frame};
    use std::time::{Duration, Instant};

    fn chat(max_devices: usize) -> Chat {
        Chat::new(ChatConfig {
            session_ttl: Duration::from_secs(60),
            max_sessions_per_user: 8,
            max_sessions: 100,
            message_rate: Some(RateLimit { per_second: 100, burst: 100 }),
            history: 10,
            max_devices,
        })
    }

    fn session(chat: &mut Chat, user: &str, now: Instant) -> (SessionKey, [u8; 32]) {
        let id = chat.login(user, now, &mut vec![]).unwrap();
        (chat.authenticate(&id, now).unwrap(), id)
    }

    /// The presence events in `fx`, as ("join"|"leave", name).
    fn presence(fx: &Effects) -> Vec<(String, String)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Broadcast { frame: f, .. } => {
                    let d = frame::decode_server(f).unwrap().unwrap();
                    let v: serde_json::Value = serde_json::from_slice(&f[d.payload]).unwrap();
                    Some((v["event"].as_str()?.to_owned(), v["username"].as_str()?.to_owned()))
                }
                _ => None,
            })
            .collect()
    }

    fn ev(kind: &str, name: &str) -> (String, String) {
        (kind.to_owned(), name.to_owned())
    }

    #[test]
    fn presence_counts_a_user_once_across_devices_and_sessions() {
        let t0 = Instant::now();
        let (mut chat, mut fx) = (chat(5), vec![]);
        let (laptop, _) = session(&mut chat, "amy", t0);
        let (phone, _) = session(&mut chat, "Amy", t0);
        chat.join(1, laptop, false, true, t0, &mut fx).unwrap();
        chat.join(2, laptop, false, true, t0, &mut fx).unwrap();
        chat.join(3, phone, false, true, t0 + Duration::from_secs(1), &mut fx).unwrap();
        let (bob, _) = session(&mut chat, "bob", t0);
        chat.join(4, bob, false, false, t0, &mut fx).unwrap();
        assert_eq!(presence(&fx), [ev("join", "amy"), ev("join", "bob")], "one join for amy's three sockets");
        assert_eq!(chat.online().collect::<Vec<_>>(), ["amy", "bob"]);
        assert_eq!(chat.online_count(), 2);
        assert!(chat.members_have_sessions());
        fx.clear();
        for conn in [2, 1] {
            chat.leave(conn, &mut fx);
        }
        assert!(presence(&fx).is_empty(), "the phone is still open");
        assert!(chat.is_online("amy") && chat.members_have_sessions());
        assert_eq!(chat.online().collect::<Vec<_>>(), ["amy", "bob"]);
        chat.leave(3, &mut fx);
        assert_eq!(presence(&fx), [ev("leave", "amy")]);
        assert_eq!(chat.online_count(), 1);
        assert!(!chat.is_online("amy"));
    }

    #[test]
    fn the_device_cap_and_the_plain_ws_rule() {
        let t0 = Instant::now();
        let (mut chat, mut fx) = (chat(2), vec![]);
        let (k, _) = session(&mut chat, "amy", t0);
        chat.join(1, k, false, true, t0, &mut fx).unwrap();
        assert_eq!(chat.can_join(k, false), Err(JoinError::AlreadyConnected), "v2 blocks plain /ws");
        chat.join(2, k, false, true, t0, &mut fx).unwrap();
        assert_eq!(chat.can_join(k, true), Err(JoinError::TooManyDevices));
        assert_eq!(chat.join(3, k, false, true, t0, &mut fx), Err(JoinError::TooManyDevices));
        chat.leave(1, &mut fx);
        assert_eq!(chat.can_join(k, true), Ok(()), "a place is free again");
        let (b, _) = session(&mut chat, "bob", t0);
        chat.join(4, b, false, false, t0, &mut fx).unwrap();
        assert_eq!(chat.can_join(b, true), Err(JoinError::AlreadyConnected), "plain /ws blocks v2");
    }

    #[test]
    fn in_a_cluster_the_cap_counts_the_user_s_sockets_on_other_nodes() {
        let t0 = Instant::now();
        let (mut chat, mut fx) = (chat(3), vec![]);
        let (k, _) = session(&mut chat, "amy", t0);
        chat.set_devices_elsewhere("amy", 9);
        assert_eq!(chat.can_join(k, true), Ok(()), "a single node has no other nodes");
        chat.set_replicated();
        chat.set_devices_elsewhere("AMY", 3);
        assert_eq!(chat.can_join(k, true), Ok(()), "none here: Redis counts (skiff_join)");
        chat.join(1, k, false, true, t0, &mut fx).unwrap();
        assert_eq!(chat.can_join(k, true), Err(JoinError::TooManyDevices));
        chat.set_devices_elsewhere("amy", 1);
        chat.join(2, k, false, true, t0, &mut fx).unwrap();
        assert_eq!(chat.can_join(k, true), Err(JoinError::TooManyDevices), "two here, one elsewhere");
        chat.replace_devices_elsewhere(vec![("bob".into(), 2)]);
        assert_eq!(chat.can_join(k, true), Ok(()));
        // Redis counts the devices a node closes while it still holds the user.
        fx.clear();
        chat.leave(2, &mut fx);
        assert!(matches!(&fx[..], [Effect::DevicesClosed { user, closed: 1 }] if &**user == "amy"), "{fx:?}");
        fx.clear();
        chat.leave(1, &mut fx);
        assert!(matches!(&fx[..], [Effect::Left { user, .. }] if &**user == "amy"), "{fx:?}");
    }

    #[test]
    fn a_message_reaches_the_senders_other_devices_and_only_the_sender_is_acked() {
        let t0 = Instant::now();
        let (mut chat, mut fx) = (chat(5), vec![]);
        let (k, _) = session(&mut chat, "amy", t0);
        chat.join(1, k, false, true, t0, &mut fx).unwrap();
        chat.join(2, k, false, true, t0, &mut fx).unwrap();
        fx.clear();
        chat.on_text(1, r#"{"message":"hi"}"#, t0, &mut fx);
        chat.on_committed(1, true, &mut fx);
        assert!(matches!(&fx[0], Effect::Message { except: Some(1), .. }), "to every member but the sender");
        assert!(matches!(&fx[1], Effect::Send { to: 1, .. }));
        assert_eq!(fx.len(), 2);
    }

    #[test]
    fn logout_kick_and_ban_close_every_socket_of_the_user_with_a_reason() {
        let t0 = Instant::now();
        let (mut chat, mut fx) = (chat(5), vec![]);
        let (laptop, id) = session(&mut chat, "amy", t0);
        let (phone, _) = session(&mut chat, "amy", t0);
        for (conn, k) in [(1, laptop), (2, laptop), (3, phone)] {
            chat.join(conn, k, false, true, t0, &mut fx).unwrap();
        }
        let closed = |fx: &Effects, want: &str| {
            let mut c: Vec<usize> = fx
                .iter()
                .filter_map(|e| match e {
                    Effect::Close { conn, reason, .. } if &**reason == want => Some(*conn),
                    _ => None,
                })
                .collect();
            c.sort_unstable();
            c
        };
        fx.clear();
        assert!(chat.kick("AMY", &mut fx));
        assert_eq!(closed(&fx, "kicked"), [1, 2, 3]);
        assert_eq!(presence(&fx), [ev("leave", "amy")]);
        for (conn, k) in [(1, laptop), (2, laptop), (3, phone)] {
            chat.join(conn, k, false, true, t0, &mut fx).unwrap();
        }
        fx.clear();
        chat.logout(&id, t0, &mut fx);
        assert_eq!(closed(&fx, "logged out"), [1, 2, 3]);
        assert_eq!(presence(&fx), [ev("leave", "amy")], "one leave");
        assert!(chat.members().is_empty() && chat.online_count() == 0);
        chat.join(3, phone, false, true, t0, &mut fx).unwrap();
        fx.clear();
        assert_eq!(chat.end_user("amy", "banned: spam", &mut fx), 1);
        assert!(
            matches!(&fx[1], Effect::Close { conn: 3, code: close::POLICY, reason } if &**reason == "banned: spam")
        );
    }

    #[test]
    fn a_hand_over_carries_every_device_and_counts_presence_as_before() {
        let t0 = Instant::now();
        let (mut old, mut fx) = (chat(5), vec![]);
        let (laptop, _) = session(&mut old, "amy", t0);
        let (phone, _) = session(&mut old, "amy", t0);
        let (bob, _) = session(&mut old, "bob", t0);
        for (conn, k, v2) in [(1, laptop, true), (4, bob, false), (2, laptop, true), (3, phone, true)] {
            old.join(conn, k, false, v2, t0, &mut fx).unwrap();
        }
        let mut new = chat(5);
        new.import(old.export(t0), t0).expect("several v2 sockets of a user cross");
        assert_eq!(new.online().collect::<Vec<_>>(), ["amy", "bob"]);
        assert_eq!(new.online_count(), 2);
        assert!(new.members_have_sessions());
        let mut socks = new.sockets_of_user("AMY");
        socks.sort_unstable();
        assert_eq!(socks, [1, 2, 3]);
        fx.clear();
        for conn in [1, 3] {
            new.leave(conn, &mut fx);
        }
        assert!(presence(&fx).is_empty());
        new.leave(2, &mut fx);
        assert_eq!(presence(&fx), [ev("leave", "amy")]);

        // A plain /ws socket beside another of its user is no state this build makes.
        let mut state = old.export(t0);
        state.room.iter_mut().for_each(|m| m.v2 = false);
        assert!(chat(5).import(state, t0).is_err());
    }

    #[test]
    fn a_timed_ban_ends_by_itself_on_the_fake_clock() {
        let t0 = Instant::now();
        let (mut chat, mut fx) = (chat(5), vec![]);
        chat.set_wall_clock(t0, 1_000_000);
        let ban = super::super::moderation::Ban { since_ms: 1_000_000, until_ms: Some(1_002_000), reason: None };
        chat.ban("amy", ban);
        assert_eq!(chat.next_deadline(), Some(t0 + Duration::from_secs(2)));
        assert!(chat.login("amy", t0 + Duration::from_millis(1999), &mut fx).is_err());
        chat.on_timeout(t0 + Duration::from_secs(2), &mut fx);
        assert_eq!(chat.next_deadline(), None, "nothing left to wake for");
        assert_eq!(chat.take_ended_bans(), [("amy".into(), 1_002_000)], "for the store to lift");
        assert!(chat.login("amy", t0 + Duration::from_secs(2), &mut fx).is_ok());
    }
}
