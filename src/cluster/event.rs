//! The room channel's events, as `library.lua` publishes them: `KIND SEQ FIELDS...`,
//! space-separated, the message text last (it may hold spaces). Names and node ids
//! never hold spaces: names are `[A-Za-z0-9]`, node ids hex.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    Join {
        seq: u64,
        node: String,
        token: String,
        name: String,
    },
    Leave {
        seq: u64,
        node: String,
        name: String,
    },
    Message {
        seq: u64,
        id: u64,
        ts: i64,
        node: String,
        token: String,
        author: String,
        text: String,
    },
    /// A session ended: `code` 1000 (logout) or 1008 (evicted); `hash` is hex.
    SessionEnd {
        seq: u64,
        code: u16,
        hash: String,
    },
    /// `skiff ctl ban` (or `kick --for`): `until` and `reason` when set.
    Ban {
        seq: u64,
        name: String,
        ban: crate::chat::moderation::Ban,
    },
    Unban {
        seq: u64,
        name: String,
    },
    /// Node `node` holds `count` sockets of user `name` now (0: none, the user is
    /// online through other nodes).
    Devices {
        seq: u64,
        node: String,
        name: String,
        count: usize,
    },
    /// A session of `name` was logged out: every node closes every socket of the
    /// user (1000), whatever session opened it.
    Logout {
        seq: u64,
        name: String,
    },
    /// `skiff ctl kick`: the node holding `name`'s socket closes it (1000).
    Kick {
        seq: u64,
        node: String,
        name: String,
    },
    /// `skiff ctl`: message `id` left the history.
    Delete {
        seq: u64,
        id: u64,
    },
}

impl RoomEvent {
    pub fn seq(&self) -> u64 {
        match self {
            RoomEvent::Join { seq, .. }
            | RoomEvent::Leave { seq, .. }
            | RoomEvent::Message { seq, .. }
            | RoomEvent::SessionEnd { seq, .. }
            | RoomEvent::Logout { seq, .. }
            | RoomEvent::Devices { seq, .. }
            | RoomEvent::Kick { seq, .. }
            | RoomEvent::Ban { seq, .. }
            | RoomEvent::Unban { seq, .. }
            | RoomEvent::Delete { seq, .. } => *seq,
        }
    }

    /// `None` for anything malformed (another program publishing on our channel).
    pub fn parse(payload: &[u8]) -> Option<RoomEvent> {
        let text = std::str::from_utf8(payload).ok()?;
        let (kind, rest) = text.split_once(' ')?;
        let (seq, rest) = rest.split_once(' ')?;
        let seq = seq.parse().ok()?;
        let word = |s: &str| (!s.is_empty() && !s.contains(' ')).then(|| s.to_owned());
        Some(match kind {
            "J" => {
                let mut f = rest.splitn(3, ' ');
                let (node, token, name) = (f.next()?, f.next()?, f.next()?);
                RoomEvent::Join { seq, node: word(node)?, token: word(token)?, name: word(name)? }
            }
            "L" => {
                let (node, name) = rest.split_once(' ')?;
                RoomEvent::Leave { seq, node: word(node)?, name: word(name)? }
            }
            "M" => {
                let mut f = rest.splitn(6, ' ');
                let (id, ts, node, token, author) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
                RoomEvent::Message {
                    seq,
                    id: id.parse().ok()?,
                    ts: ts.parse().ok()?,
                    node: word(node)?,
                    token: word(token)?,
                    author: word(author)?,
                    text: f.next()?.to_owned(),
                }
            }
            "E" => {
                let (code, hash) = rest.split_once(' ')?;
                RoomEvent::SessionEnd { seq, code: code.parse().ok()?, hash: word(hash)? }
            }
            "O" => RoomEvent::Logout { seq, name: word(rest)? },
            "N" => {
                let mut f = rest.splitn(3, ' ');
                let (node, name, count) = (f.next()?, f.next()?, f.next()?);
                RoomEvent::Devices { seq, node: word(node)?, name: word(name)?, count: count.parse().ok()? }
            }
            "K" => {
                let (node, name) = rest.split_once(' ')?;
                RoomEvent::Kick { seq, node: word(node)?, name: word(name)? }
            }
            "D" => RoomEvent::Delete { seq, id: rest.parse().ok()? },
            "B" => {
                let mut f = rest.splitn(4, ' ');
                let (name, since, until) = (f.next()?, f.next()?, f.next()?);
                let until_ms = if until == "-" { None } else { Some(until.parse().ok()?) };
                let reason = f.next().filter(|r| !r.is_empty()).map(Into::into);
                let ban = crate::chat::moderation::Ban { since_ms: since.parse().ok()?, until_ms, reason };
                RoomEvent::Ban { seq, name: word(name)?, ban }
            }
            "U" => RoomEvent::Unban { seq, name: word(rest)? },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_library_publishes() {
        assert_eq!(
            RoomEvent::parse(b"J 7 ab12 3.9 Alice"),
            Some(RoomEvent::Join { seq: 7, node: "ab12".into(), token: "3.9".into(), name: "Alice".into() })
        );
        assert_eq!(
            RoomEvent::parse(b"L 8 ab12 Alice"),
            Some(RoomEvent::Leave { seq: 8, node: "ab12".into(), name: "Alice".into() })
        );
        assert_eq!(
            RoomEvent::parse("M 9 41 1764480000123 ab12 3.9 Alice hi  there, ünïcode ".as_bytes()),
            Some(RoomEvent::Message {
                seq: 9,
                id: 41,
                ts: 1764480000123,
                node: "ab12".into(),
                token: "3.9".into(),
                author: "Alice".into(),
                text: "hi  there, ünïcode ".into(),
            })
        );
        assert_eq!(
            RoomEvent::parse(b"E 10 1000 00ff"),
            Some(RoomEvent::SessionEnd { seq: 10, code: 1000, hash: "00ff".into() })
        );
        assert_eq!(RoomEvent::parse(b"M 9 41 1 ab12 3.9 Alice ").unwrap().seq(), 9);
        assert_eq!(
            RoomEvent::parse(b"K 11 ab12 Alice"),
            Some(RoomEvent::Kick { seq: 11, node: "ab12".into(), name: "Alice".into() })
        );
        assert_eq!(RoomEvent::parse(b"D 12 41"), Some(RoomEvent::Delete { seq: 12, id: 41 }));
        assert_eq!(RoomEvent::parse(b"O 13 Alice"), Some(RoomEvent::Logout { seq: 13, name: "Alice".into() }));
        assert_eq!(
            RoomEvent::parse(b"N 14 ab12 Alice 3"),
            Some(RoomEvent::Devices { seq: 14, node: "ab12".into(), name: "Alice".into(), count: 3 })
        );
        assert_eq!(RoomEvent::parse(b"D 12 x"), None);
    }

    #[test]
    fn malformed_events_are_none() {
        for bad in [
            &b""[..],
            b"J",
            b"J x a b c",
            b"Q 1 a",
            b"L 1 node",
            b"M 1 x 1 n t a m",
            b"E 1 1000",
            b"O 1",
            b"O 1 a b",
            b"N 1 n a",
            b"N 1 n a x",
            b"\xff 1",
        ] {
            assert_eq!(RoomEvent::parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
