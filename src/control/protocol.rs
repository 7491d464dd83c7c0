//! The control protocol, sans IO: one JSON object per line each way. A request
//! names its command in `cmd`; every answer carries `ok`, and a failed one an
//! `error` code and a one-line `message`. README, "Operating", documents it for
//! scripts that speak it without `skiff ctl`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The longest request line: a name, a reason and a path fit with room to spare.
pub const MAX_LINE: usize = 8 * 1024;
/// The most users one `users` answer lists.
pub const MAX_USERS: usize = 1000;
pub const DEFAULT_USERS: usize = 100;
/// A ban reason is a note for operators, not a document.
pub const MAX_REASON: usize = 500;
/// The longest timed ban: ten years, past which "until an unban" says it better.
pub const MAX_BAN_SECS: u64 = 3650 * 86_400;

/// `30s`, `10m`, `2h`, `7d` (a number and one unit) as seconds, 1 s to 3650 d.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || format!("--for: expected a duration like 30s, 10m, 2h or 7d, got {text:?}");
    let unit_at = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(unit_at);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(per) {
        Some(s) if (1..=MAX_BAN_SECS).contains(&s) => Ok(s),
        _ => Err("--for must be from 1s to 3650d".into()),
    }
}

/// Seconds in the largest unit that divides them: `7200` -> `2h`.
pub fn format_duration(secs: u64) -> String {
    for (per, unit) in [(86_400, 'd'), (3600, 'h'), (60, 'm')] {
        if secs >= per && secs.is_multiple_of(per) {
            return format!("{}{unit}", secs / per);
        }
    }
    format!("{secs}s")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status,
    Users {
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        online: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
    },
    /// With `for`, a timed ban without a reason.
    Kick {
        name: String,
        /// Seconds.
        #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
        for_s: Option<u64>,
    },
    Ban {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Seconds; none: until an unban.
        #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
        for_s: Option<u64>,
    },
    Unban {
        name: String,
    },
    ResetKey {
        name: String,
    },
    DeleteUser {
        name: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        messages: bool,
    },
    DeleteMessage {
        id: u64,
    },
    /// `file`: an absolute path, written by the server (as the user it runs as).
    Backup {
        file: String,
    },
}

impl Request {
    /// What the log says about the request: the command, whom it names, for how
    /// long and why (`ban carol for 2h (link spam)`).
    pub fn summary(&self) -> String {
        let span = |f: &Option<u64>| f.map(|s| format!(" for {}", format_duration(s))).unwrap_or_default();
        match self {
            Request::Status => "status".into(),
            Request::Users { .. } => "users".into(),
            Request::Kick { name, for_s } => format!("kick {name}{}", span(for_s)),
            Request::Ban { name, reason, for_s } => {
                let why = reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
                format!("ban {name}{}{why}", span(for_s))
            }
            Request::Unban { name } => format!("unban {name}"),
            Request::ResetKey { name } => format!("reset-key {name}"),
            Request::DeleteUser { name, messages } => {
                format!("delete-user {name}{}", if *messages { " --messages" } else { "" })
            }
            Request::DeleteMessage { id } => format!("delete-message {id}"),
            Request::Backup { file } => format!("backup {file}"),
        }
    }

    /// The name the request acts on, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            Request::Kick { name, .. }
            | Request::Ban { name, .. }
            | Request::Unban { name }
            | Request::ResetKey { name }
            | Request::DeleteUser { name, .. } => Some(name),
            _ => None,
        }
    }

    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("a request serializes");
        line.push('\n');
        line
    }
}

/// One line parsed into a request that is worth executing, or the answer that
/// refuses it. A name that cannot be a username is an unknown user, here already.
pub fn parse(line: &[u8]) -> Result<Request, Answer> {
    let text = std::str::from_utf8(line).map_err(|_| Answer::error("bad_request", "the request is not UTF-8"))?;
    let text = text.trim_end_matches(['\r', '\n']);
    let req: Request = serde_json::from_str(text).map_err(|e| {
        let why = e.to_string();
        Answer::error("bad_request", &format!("not a control request: {}", why.lines().next().unwrap_or("")))
    })?;
    if let Some(name) = req.name() {
        if !crate::api::valid_username(name) {
            return Err(unknown_user(name));
        }
    }
    match &req {
        Request::Users { limit: Some(n), .. } if !(1..=MAX_USERS).contains(n) => {
            Err(Answer::error("bad_request", &format!("--limit must be from 1 to {MAX_USERS}")))
        }
        Request::Users { after: Some(a), .. } if !crate::api::valid_username(a) => {
            Err(Answer::error("bad_request", "--after takes a username"))
        }
        Request::Ban { reason: Some(r), .. } if r.len() > MAX_REASON || r.chars().any(char::is_control) => {
            Err(Answer::error("bad_request", &format!("a reason is one line of at most {MAX_REASON} bytes")))
        }
        Request::Kick { for_s: Some(s), .. } | Request::Ban { for_s: Some(s), .. }
            if !(1..=MAX_BAN_SECS).contains(s) =>
        {
            Err(Answer::error("bad_request", "--for must be from 1s to 3650d"))
        }
        Request::DeleteMessage { id: 0 } => Err(no_such_message(0)),
        Request::Backup { file } if !file.starts_with('/') => {
            Err(Answer::error("bad_request", "the backup path must be absolute"))
        }
        _ => Ok(req),
    }
}

/// An answer line: `{"ok": true, ...}` or `{"ok": false, "error": CODE, "message": TEXT}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer(pub Map<String, Value>);

impl Answer {
    /// `fields` must be a JSON object; `ok: true` is added.
    pub fn ok(fields: Value) -> Answer {
        let mut map = Map::new();
        map.insert("ok".into(), Value::Bool(true));
        if let Value::Object(f) = fields {
            map.extend(f);
        }
        Answer(map)
    }

    pub fn error(code: &str, message: &str) -> Answer {
        match json!({ "ok": false, "error": code, "message": message }) {
            Value::Object(map) => Answer(map),
            _ => unreachable!("json! of an object literal is an object"),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.0.get("ok") == Some(&Value::Bool(true))
    }

    pub fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field)
    }

    /// The error's one-line message.
    pub fn message(&self) -> &str {
        self.0.get("message").and_then(Value::as_str).unwrap_or("the server gave no reason")
    }

    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(&self.0).expect("a map serializes");
        line.push('\n');
        line
    }

    pub fn from_line(line: &str) -> Option<Answer> {
        match serde_json::from_str(line.trim_end()).ok()? {
            Value::Object(map) if map.contains_key("ok") => Some(Answer(map)),
            _ => None,
        }
    }
}

pub fn unknown_user(name: &str) -> Answer {
    Answer::error("unknown_user", &format!("no user named {name}"))
}

pub fn no_such_message(id: u64) -> Answer {
    Answer::error("no_such_message", &format!("no message {id} in the history"))
}

/// Bytes in, whole lines out: what a control connection has sent so far.
#[derive(Debug, Default)]
pub struct Lines {
    buf: Vec<u8>,
}

/// A line longer than `MAX_LINE`: the connection is answered and closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

impl Lines {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole line (without its newline), `Ok(None)` until one has come.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, TooLong> {
        match self.buf.iter().position(|&b| b == b'\n') {
            Some(at) if at <= MAX_LINE => {
                let mut line: Vec<u8> = self.buf.drain(..=at).collect();
                line.pop();
                Ok(Some(line))
            }
            Some(_) => Err(TooLong),
            None if self.buf.len() > MAX_LINE => Err(TooLong),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused_with_a_reason() {
        for req in [
            Request::Status,
            Request::Users { online: true, limit: Some(5), after: Some("bob".into()) },
            Request::Ban { name: "Amy".into(), reason: Some("spam".into()), for_s: Some(7200) },
            Request::Kick { name: "Amy".into(), for_s: None },
            Request::DeleteUser { name: "amy".into(), messages: true },
            Request::DeleteMessage { id: 42 },
            Request::Backup { file: "/tmp/x.db".into() },
        ] {
            assert_eq!(parse(req.to_line().as_bytes()), Ok(req));
        }
        assert_eq!(parse(br#"{"cmd":"reset-key","name":"al"}"#), Ok(Request::ResetKey { name: "al".into() }));
        let refused = |line: &[u8]| parse(line).err().map(|a| a.get("error").unwrap().as_str().unwrap().to_owned());
        assert_eq!(refused(br#"{"cmd":"kick","name":"no such"}"#).as_deref(), Some("unknown_user"));
        assert_eq!(refused(br#"{"cmd":"delete-message","id":0}"#).as_deref(), Some("no_such_message"));
        for bad in [
            &br#"{"cmd":"explode"}"#[..],
            br#"{"cmd":"delete-message","id":-1}"#,
            br#"{"cmd":"delete-message","id":"7"}"#,
            br#"{"cmd":"kick"}"#,
            br#"{"cmd":"kick","name":"a","extra":1}"#,
            br#"{"cmd":"users","limit":0}"#,
            br#"{"cmd":"ban","name":"a","for":0}"#,
            br#"{"cmd":"backup","file":"relative.db"}"#,
            b"\xff",
            b"[]",
        ] {
            assert_eq!(refused(bad).as_deref(), Some("bad_request"), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn durations_parse_in_one_unit_and_print_in_the_largest() {
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert_eq!(parse_duration("3650d"), Ok(MAX_BAN_SECS));
        for bad in ["", "s", "10", "1.5h", "-1h", "2 h", "2H", "1w", "0s", "3651d", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_duration(7200), "2h");
        assert_eq!(format_duration(90), "90s");
        assert_eq!(format_duration(600), "10m");
        assert_eq!(format_duration(172_800), "2d");
        let ban = Request::Ban { name: "carol".into(), reason: Some("link spam".into()), for_s: Some(7200) };
        assert_eq!(ban.summary(), "ban carol for 2h (link spam)");
        assert_eq!(Request::Kick { name: "bob".into(), for_s: Some(600) }.summary(), "kick bob for 10m");
    }

    #[test]
    fn lines_come_whole_whatever_the_split_and_a_flood_is_cut_off() {
        let input = b"{\"cmd\":\"status\"}\n{\"cmd\":\"users\"}\n";
        for split in 0..input.len() {
            let mut lines = Lines::default();
            let mut got = Vec::new();
            for part in [&input[..split], &input[split..]] {
                lines.push(part);
                while let Some(l) = lines.next_line().unwrap() {
                    got.push(parse(&l).unwrap());
                }
            }
            assert_eq!(got, [Request::Status, Request::Users { online: false, limit: None, after: None }]);
        }
        let mut lines = Lines::default();
        lines.push(&vec![b'x'; MAX_LINE + 1]);
        assert_eq!(lines.next_line(), Err(TooLong));
    }

    #[test]
    fn answers_say_ok_or_why_not() {
        let a = Answer::ok(json!({"name": "amy"}));
        assert!(a.is_ok());
        assert_eq!(Answer::from_line(&a.to_line()), Some(a));
        let e = unknown_user("zed");
        assert!(!e.is_ok());
        assert_eq!(e.message(), "no user named zed");
        assert!(Answer::from_line("{}").is_none());
    }
}
