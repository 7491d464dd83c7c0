//! What Redis's replies mean: `library.lua`'s answers decoded into the core's terms,
//! and the names a node gives its connections and sessions in Redis.

use super::resp::Value;
use crate::chat::replicated::Snapshot;
use crate::chat::Message;
use crate::storage::Origin;

/// How a connection is named in events: slab key and generation.
pub fn token(o: Origin) -> String {
    format!("{}.{}", o.conn, o.generation)
}

pub fn parse_token(t: &str) -> Option<Origin> {
    let (conn, generation) = t.split_once('.')?;
    Some(Origin { conn: conn.parse().ok()?, generation: generation.parse().ok()? })
}

pub fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    data_encoding::HEXLOWER.decode(s.as_bytes()).ok()?.try_into().ok()
}

/// `skiff_session`: the user and the milliseconds left, or nothing (no session).
/// skiff_login's answer for a banned user: {'banned', since_ms, until_ms or '',
/// reason or ''}; older libraries answer {'banned'} alone.
pub fn ban(v: &Value) -> Option<crate::chat::moderation::Ban> {
    let items = v.as_array()?;
    let field = |i: usize| items.get(i).and_then(Value::as_str).filter(|s| !s.is_empty());
    Some(crate::chat::moderation::Ban {
        since_ms: field(1)?.parse().ok()?,
        until_ms: field(2).and_then(|u| u.parse().ok()),
        reason: field(3).map(Into::into),
    })
}

pub fn session(v: &Value) -> Option<(String, u64)> {
    let items = v.as_array()?;
    let name = items.first()?.as_str()?.to_owned();
    // -1: no expiry (someone PERSISTed it); treat it as a fresh session.
    let ms = items.get(1)?.as_int()?;
    let ms = if ms < 0 { u64::MAX } else { ms as u64 };
    Some((name, ms))
}

/// `skiff_sync`'s reply: the snapshot, its channel position, and the taken users.
pub fn snapshot(v: &Value) -> Option<(Snapshot, u64, Vec<String>)> {
    let items = v.as_array()?;
    let seq = items.first()?.as_int()? as u64;
    let epoch = items.get(1)?.as_str()?.to_owned();
    let last_id = items.get(2)?.as_int()? as u64;
    let strings =
        |v: &Value| -> Option<Vec<String>> { v.as_array()?.iter().map(|x| x.as_str().map(str::to_owned)).collect() };
    let online = strings(items.get(3)?)?;
    let mut messages = Vec::new();
    for entry in items.get(4)?.as_array()? {
        let e = entry.as_array()?;
        let id: u64 = e.first()?.as_str()?.split('-').next()?.parse().ok()?;
        let fields = e.get(1)?.as_array()?;
        let (mut ts, mut author, mut text) = (None, None, None);
        for kv in fields.chunks(2) {
            let value = kv.get(1)?.as_str()?;
            match kv[0].as_str()? {
                "ts" => ts = value.parse::<i64>().ok(),
                "author" => author = Some(value.to_owned()),
                "message" => text = Some(value.to_owned()),
                _ => {}
            }
        }
        messages.push(Message { id, ts: ts?, author: author?, text: text? });
    }
    messages.reverse();
    let taken = strings(items.get(5)?)?;
    Some((Snapshot { epoch, last_id, online, messages }, seq, taken))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn tokens_and_hashes_round_trip() {
        let o = Origin { conn: 12, generation: 3456 };
        assert_eq!(parse_token(&token(o)), Some(o));
        assert_eq!(parse_token("x.1"), None);
        let h = [0xabu8; 32];
        assert_eq!(unhex32(&hex(&h)), Some(h));
        assert_eq!(unhex32("ab"), None);
    }

    #[test]
    fn reads_a_sync_snapshot() {
        let entry = |id: &str, ts: &str, a: &str, m: &str| {
            Value::Array(Some(vec![
                bulk(id),
                Value::Array(Some(vec![bulk("ts"), bulk(ts), bulk("author"), bulk(a), bulk("message"), bulk(m)])),
            ]))
        };
        let v = Value::Array(Some(vec![
            Value::Int(40),
            bulk("e1"),
            Value::Int(8),
            Value::Array(Some(vec![bulk("Bob"), bulk("al")])),
            Value::Array(Some(vec![entry("8-0", "20", "al", "new"), entry("7-0", "10", "Bob", "old")])),
            Value::Array(Some(vec![bulk("zed")])),
        ]));
        let (snap, seq, taken) = snapshot(&v).expect("well-formed");
        assert_eq!(seq, 40);
        assert_eq!((snap.epoch.as_str(), snap.last_id), ("e1", 8));
        assert_eq!(snap.online, ["Bob", "al"]);
        let m = |id, ts, author: &str, text: &str| Message { id, ts, author: author.into(), text: text.into() };
        assert_eq!(snap.messages, [m(7, 10, "Bob", "old"), m(8, 20, "al", "new")]);
        assert_eq!(taken, ["zed"]);
        assert!(snapshot(&Value::Int(1)).is_none());
    }

    #[test]
    fn a_session_reply_gives_the_time_left() {
        assert_eq!(session(&Value::Array(Some(vec![bulk("al"), Value::Int(5000)]))), Some(("al".into(), 5000)));
        assert_eq!(session(&Value::Array(Some(vec![bulk("al"), Value::Int(-1)]))), Some(("al".into(), u64::MAX)));
        assert_eq!(session(&Value::Bulk(None)), None);
    }
}
