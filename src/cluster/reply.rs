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

/// `skiff_sync`'s reply: the snapshot, its channel position and the taken users;
/// the snapshot's messages are left as Redis sent them (newest first), for `message`
/// to read a slice at a time. Taken apart, not copied.
pub fn snapshot(v: Value) -> Option<(Snapshot, Vec<Value>, u64, Vec<String>)> {
    let mut items = array(v)?.into_iter();
    let seq = items.next()?.as_int()? as u64;
    let epoch = string(items.next()?)?;
    let last_id = items.next()?.as_int()? as u64;
    let online = strings(items.next()?)?;
    let entries = array(items.next()?)?;
    let taken = strings(items.next()?)?;
    Some((Snapshot { epoch, last_id, online, messages: Vec::new() }, entries, seq, taken))
}

/// The history's newest entries (`XREVRANGE`), newest first, up to `last_id`: a
/// later one was published after the snapshot and comes as a channel event. Only
/// those few at the front are looked at: the rest wait for their slice's turn.
pub fn history(v: Value, last_id: u64) -> Option<Vec<Value>> {
    let mut entries = array(v)?;
    let id = |e: &Value| -> Option<u64> { e.as_array()?.first()?.as_str()?.split('-').next()?.parse().ok() };
    let later = entries.iter().take_while(|e| id(e).is_some_and(|id| id > last_id)).count();
    entries.drain(..later);
    Some(entries)
}

/// One entry of the history stream: `[id, [field, value, ...]]`.
pub fn message(entry: Value) -> Option<Message> {
    let mut e = array(entry)?.into_iter();
    let id: u64 = e.next()?.as_str()?.split('-').next()?.parse().ok()?;
    let mut fields = array(e.next()?)?.into_iter();
    let (mut ts, mut author, mut text) = (None, None, None);
    while let (Some(key), Some(value)) = (fields.next(), fields.next()) {
        match key.as_str()? {
            "ts" => ts = value.as_str()?.parse::<i64>().ok(),
            "author" => author = Some(string(value)?),
            "message" => text = Some(string(value)?),
            _ => {}
        }
    }
    Some(Message { id, ts: ts?, author: author?, text: text? })
}

fn array(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(Some(items)) => Some(items),
        _ => None,
    }
}

fn string(v: Value) -> Option<String> {
    match v {
        Value::Bulk(Some(b)) => String::from_utf8(b).ok(),
        Value::Simple(s) => Some(s),
        _ => None,
    }
}

fn strings(v: Value) -> Option<Vec<String>> {
    array(v)?.into_iter().map(string).collect()
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
        let (snap, entries, seq, taken) = snapshot(v).expect("well-formed");
        assert_eq!(seq, 40);
        assert_eq!((snap.epoch.as_str(), snap.last_id), ("e1", 8));
        assert_eq!(snap.online, ["Bob", "al"]);
        let m = |id, ts, author: &str, text: &str| Message { id, ts, author: author.into(), text: text.into() };
        let messages: Vec<Option<Message>> = entries.into_iter().rev().map(message).collect();
        assert_eq!(messages, [Some(m(7, 10, "Bob", "old")), Some(m(8, 20, "al", "new"))]);
        assert_eq!(taken, ["zed"]);
        assert!(snapshot(Value::Int(1)).is_none());
        assert_eq!(message(entry("x-0", "1", "a", "b")), None);
        assert_eq!(message(Value::Array(Some(vec![bulk("9-0"), Value::Int(3)]))), None);
    }

    #[test]
    fn a_session_reply_gives_the_time_left() {
        assert_eq!(session(&Value::Array(Some(vec![bulk("al"), Value::Int(5000)]))), Some(("al".into(), 5000)));
        assert_eq!(session(&Value::Array(Some(vec![bulk("al"), Value::Int(-1)]))), Some(("al".into(), u64::MAX)));
        assert_eq!(session(&Value::Bulk(None)), None);
    }
}
