//! `skiff ctl` commands carried out on the loop's state: each request becomes a
//! small state machine of storage (or Redis) round trips, and its answer is queued
//! once the last reply is in. Writes are durable before memory changes, so an
//! answer of ok means both, and an error means nothing changed. No sockets here:
//! the listener reads requests and writes answers.

use super::protocol::{no_such_message, unknown_user, Answer, Request, DEFAULT_USERS};
use crate::chat::moderation::{rfc3339, Action, Ban};
use crate::cluster::resp::Value;
use crate::conn::Cx;
use crate::storage::{Origin, Reply, Request as StorageRequest, Wake};
use crate::store::admin::{Query, QueryResult};
use crate::store::Write;
use serde_json::{json, Value as Json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Storage and Redis replies for `skiff ctl` carry this in `Origin::conn` (no client
/// connection has this key) and the request's id in `Origin::generation`.
pub const ORIGIN_CONN: usize = usize::MAX;

/// A request between its round trips.
enum Op {
    Status,
    Users {
        online: bool,
        limit: usize,
    },
    /// The user has no socket here: is there such a user at all?
    Kick {
        name: String,
    },
    /// The canonical name first, then the write.
    Find {
        asked: String,
        what: Moderation,
    },
    Commit {
        name: String,
        what: Moderation,
    },
    DeleteMessage {
        id: u64,
    },
    /// Cluster mode: one Redis function, its reply read by `cluster_answer`; the new
    /// key of a `reset-key`.
    Cluster(Request, Option<String>),
}

#[derive(Clone)]
enum Moderation {
    /// `kick`: a kick --for, a timed ban by another name.
    Ban {
        reason: Option<String>,
        for_s: Option<u64>,
        kick: bool,
    },
    /// The ban as written.
    Banned {
        ban: Ban,
        kick: bool,
    },
    Unban,
    ResetKey {
        key: String,
    },
    DeleteUser {
        messages: bool,
    },
}

pub struct Ops {
    pending: HashMap<u64, Op>,
    answers: Vec<(u64, Answer)>,
    started: Instant,
    /// The database file (single node): what `backup` copies.
    db: Option<PathBuf>,
    waker: Option<Arc<dyn Wake>>,
    backups_tx: Sender<(u64, Result<u64, String>)>,
    backups: Receiver<(u64, Result<u64, String>)>,
    /// Backups running, by request id, with their target file.
    backing_up: HashMap<u64, String>,
}

impl Ops {
    pub fn new(now: Instant) -> Ops {
        let (backups_tx, backups) = mpsc::channel();
        Ops {
            pending: HashMap::new(),
            answers: Vec::new(),
            started: now,
            db: None,
            waker: None,
            backups_tx,
            backups,
            backing_up: HashMap::new(),
        }
    }

    /// Where the database is and how a backup thread wakes the loop.
    pub fn set_database(&mut self, db: PathBuf, waker: Arc<dyn Wake>) {
        self.db = Some(db);
        self.waker = Some(waker);
    }

    pub fn has_answers(&self) -> bool {
        !self.answers.is_empty()
    }

    /// Answers ready for the listener to send, by request id.
    pub fn take_answers(&mut self) -> Vec<(u64, Answer)> {
        std::mem::take(&mut self.answers)
    }

    fn answer(&mut self, id: u64, a: Answer) {
        self.answers.push((id, a));
    }

    /// A new request, id `id` (unique for the life of the process).
    pub fn start(&mut self, id: u64, req: Request, cx: &mut Cx) {
        let origin = Origin { conn: ORIGIN_CONN, generation: id };
        if cx.cluster.is_some() {
            return self.start_cluster(id, origin, req, cx);
        }
        let op = match req {
            // A failing disk is when the operator most needs a status: what memory
            // knows, with the database's counts left out.
            Request::Status if !cx.storage.is_healthy() => return self.answer(id, self.status(cx)),
            Request::Status => {
                cx.submit(origin, StorageRequest::Control(Query::Status));
                Op::Status
            }
            Request::Users { online, limit, after } => {
                let limit = limit.unwrap_or(DEFAULT_USERS);
                let only = online.then(|| cx.chat.online().map(str::to_owned).collect());
                // One row more than shown says whether another page exists.
                cx.submit(origin, StorageRequest::Control(Query::Users { after, limit: limit + 1, only }));
                Op::Users { online, limit }
            }
            Request::Kick { name, for_s: Some(for_s) } => {
                self.find(origin, name, Moderation::Ban { reason: None, for_s: Some(for_s), kick: true }, cx)
            }
            Request::Kick { name, for_s: None } => {
                if cx.chat.kick(&name, &mut cx.fx) {
                    cx.chat.count(Action::Kick);
                    return self.answer(id, Answer::ok(json!({ "name": name })));
                }
                cx.submit(origin, StorageRequest::FindUser { name: name.clone() });
                Op::Kick { name }
            }
            Request::Ban { name, reason, for_s } => {
                self.find(origin, name, Moderation::Ban { reason, for_s, kick: false }, cx)
            }
            Request::Unban { name } => self.find(origin, name, Moderation::Unban, cx),
            Request::ResetKey { name } => self.find(origin, name, Moderation::ResetKey { key: String::new() }, cx),
            Request::DeleteUser { name, messages } => self.find(origin, name, Moderation::DeleteUser { messages }, cx),
            Request::DeleteMessage { id: msg } => {
                if !cx.chat.history().contains(msg) {
                    return self.answer(id, no_such_message(msg));
                }
                cx.storage.apply(origin, Write::DeleteMessage { id: msg });
                Op::DeleteMessage { id: msg }
            }
            Request::Backup { file } => return self.backup(id, file),
        };
        if !cx.storage.is_healthy() {
            // A request that could not be handed over gets no reply: answer now.
            return self.answer(id, storage_unavailable());
        }
        self.pending.insert(id, op);
    }

    fn find(&mut self, origin: Origin, name: String, what: Moderation, cx: &mut Cx) -> Op {
        cx.submit(origin, StorageRequest::FindUser { name: name.clone() });
        Op::Find { asked: name, what }
    }

    fn backup(&mut self, id: u64, file: String) {
        let (Some(db), Some(waker)) = (self.db.clone(), self.waker.clone()) else {
            return self.answer(id, Answer::error("not_supported", "this server has no database to back up"));
        };
        if self.backing_up.values().any(|f| *f == file) {
            return self.answer(id, Answer::error("busy", &format!("a backup to {file} is already running")));
        }
        match crate::storage::spawn_backup(id, db, PathBuf::from(&file), self.backups_tx.clone(), waker) {
            Ok(()) => {
                self.backing_up.insert(id, file);
            }
            Err(e) => self.answer(id, Answer::error("backup_failed", &format!("cannot start the backup: {e}"))),
        }
    }

    /// Backups that finished since the last call.
    pub fn on_backups(&mut self) {
        while let Ok((id, result)) = self.backups.try_recv() {
            let Some(file) = self.backing_up.remove(&id) else { continue };
            let a = match result {
                Ok(bytes) => Answer::ok(json!({ "file": file, "bytes": bytes, "integrity": "ok" })),
                Err(e) => Answer::error("backup_failed", &e),
            };
            self.answer(id, a);
        }
    }

    /// A storage (or Redis) reply for request `id`.
    pub fn on_reply(&mut self, id: u64, reply: Reply, cx: &mut Cx) {
        let Some(op) = self.pending.remove(&id) else { return };
        if reply == Reply::Unavailable {
            let why = if cx.cluster.is_some() { cluster_unavailable() } else { storage_unavailable() };
            return self.answer(id, why);
        }
        let origin = Origin { conn: ORIGIN_CONN, generation: id };
        let answer = match (op, reply) {
            (Op::Status, Reply::Control(QueryResult::Status(c))) => {
                let mut a = self.status(cx);
                a.0.insert("users".into(), c.users.into());
                a.0.insert("banned".into(), c.banned.into());
                a.0.insert("database_bytes".into(), c.db_bytes.into());
                a
            }
            (Op::Users { online, limit }, Reply::Control(QueryResult::Users(mut rows))) => {
                let more = rows.len() > limit;
                rows.truncate(limit);
                let now = Instant::now();
                let users: Vec<Json> = rows
                    .iter()
                    .map(|r| {
                        // The core holds every ban in force, timed ones gone once over.
                        let ban = cx.chat.ban_of(&r.name, now);
                        json!({
                            "name": r.name,
                            "registered": r.registered,
                            "online": cx.chat.is_online(&r.name),
                            "sessions": cx.chat.sessions_of(&r.name),
                            "banned": ban.is_some(),
                            "since": ban.map(|b| rfc3339(b.since_ms)),
                            "until": ban.and_then(|b| b.until_ms).map(rfc3339),
                            "reason": ban.and_then(|b| b.reason.as_deref()),
                        })
                    })
                    .collect();
                let next = more.then(|| rows.last().map(|r| r.name.clone())).flatten();
                Answer::ok(json!({ "online_only": online, "users": users, "next": next }))
            }
            (Op::Kick { .. }, Reply::User(Some(name))) => {
                Answer::error("not_online", &format!("{name} has no open WebSocket"))
            }
            (Op::Kick { name }, _) => unknown_user(&name),
            (Op::Find { what, .. }, Reply::User(Some(name))) => {
                let (write, what) = match what {
                    Moderation::Ban { reason, for_s, kick } => {
                        let at_ms = unix_ms();
                        let until_ms = for_s.map(|f| at_ms.saturating_add(f as i64 * 1000));
                        let write = Write::Ban { username: name.clone(), reason: reason.clone(), at_ms, until_ms };
                        let ban = Ban { since_ms: at_ms, until_ms, reason: reason.map(String::into_boxed_str) };
                        (write, Moderation::Banned { ban, kick })
                    }
                    Moderation::Banned { ban, kick } => {
                        let reason = ban.reason.as_deref().map(str::to_owned);
                        let (at_ms, until_ms) = (ban.since_ms, ban.until_ms);
                        (
                            Write::Ban { username: name.clone(), reason, at_ms, until_ms },
                            Moderation::Banned { ban, kick },
                        )
                    }
                    Moderation::Unban => (Write::Unban { username: name.clone() }, Moderation::Unban),
                    Moderation::ResetKey { .. } => {
                        let (key, key_hash) = crate::store::new_key_and_hash();
                        (Write::ResetKey { username: name.clone(), key_hash }, Moderation::ResetKey { key })
                    }
                    Moderation::DeleteUser { messages } => {
                        (Write::DeleteUser { username: name.clone(), messages }, Moderation::DeleteUser { messages })
                    }
                };
                cx.storage.apply(origin, write);
                if !cx.storage.is_healthy() {
                    return self.answer(id, storage_unavailable());
                }
                self.pending.insert(id, Op::Commit { name, what });
                return;
            }
            (Op::Find { asked, .. }, _) => unknown_user(&asked),
            (Op::Commit { name, what }, Reply::Registered) => self.committed(name, what, cx),
            (Op::Commit { name, .. }, _) => unknown_user(&name),
            (Op::DeleteMessage { id: msg }, Reply::Registered) => {
                cx.chat.delete_message(msg, &mut cx.fx);
                cx.chat.count(Action::DeleteMessage);
                Answer::ok(json!({ "id": msg }))
            }
            (Op::DeleteMessage { id: msg }, _) => {
                // Not on disk: nor should it be in memory.
                cx.chat.delete_message(msg, &mut cx.fx);
                no_such_message(msg)
            }
            (Op::Cluster(..), _) | (Op::Status | Op::Users { .. }, _) => {
                Answer::error("internal", "an unexpected reply; nothing was changed")
            }
        };
        self.answer(id, answer);
    }

    /// The write is durable: memory follows, and the sockets concerned close.
    fn committed(&mut self, name: String, what: Moderation, cx: &mut Cx) -> Answer {
        match what {
            Moderation::Banned { ban, kick } => {
                let reason = ban.close_reason();
                let until = ban.until_ms.map(rfc3339);
                cx.chat.ban(&name, ban);
                let ended = cx.chat.end_user(&name, &reason, &mut cx.fx);
                cx.chat.count(if kick { Action::Kick } else { Action::Ban });
                Answer::ok(json!({ "name": name, "sessions_ended": ended, "until": until }))
            }
            Moderation::Ban { .. } => Answer::error("internal", "a ban committed before it was written"),
            Moderation::Unban => {
                let was = cx.chat.unban(&name);
                cx.chat.count(Action::Unban);
                Answer::ok(json!({ "name": name, "was_banned": was }))
            }
            Moderation::ResetKey { key } => {
                let ended = cx.chat.end_user(&name, "key reset", &mut cx.fx);
                cx.chat.count(Action::ResetKey);
                Answer::ok(json!({ "name": name, "key": key, "sessions_ended": ended }))
            }
            Moderation::DeleteUser { messages } => {
                cx.chat.unban(&name);
                let ended = cx.chat.end_user(&name, "user deleted", &mut cx.fx);
                let deleted = if messages { cx.chat.delete_messages_by(&name, &mut cx.fx).len() } else { 0 };
                cx.chat.count(Action::DeleteUser);
                Answer::ok(json!({ "name": name, "sessions_ended": ended, "messages_deleted": deleted }))
            }
        }
    }

    /// What every status answer says, whichever backend counts the users.
    fn status(&self, cx: &Cx) -> Answer {
        let h = cx.chat.history();
        let cluster = cx.cluster.as_ref().map(|c| if c.is_up() { "up" } else { "degraded" });
        Answer::ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "connections": cx.open_connections,
            "online": cx.chat.online_count(),
            "sessions": cx.chat.session_count(),
            "history": h.len(),
            "last_id": h.last_id(),
            "epoch": h.epoch(),
            "storage": if cx.storage.is_healthy() { "ok" } else { "failing" },
            "cluster": cluster,
        }))
    }

    fn start_cluster(&mut self, id: u64, origin: Origin, req: Request, cx: &mut Cx) {
        use crate::cluster::PREFIX as P;
        let lower = req.name().map(str::to_ascii_lowercase).unwrap_or_default();
        let args: Vec<String> = match &req {
            Request::Status => fcall("skiff_status", &[P]),
            Request::Users { online, limit, after } => {
                let limit = (limit.unwrap_or(DEFAULT_USERS) + 1).to_string();
                let after = after.as_deref().map(str::to_ascii_lowercase).unwrap_or_default();
                fcall("skiff_users", &[P, &after, &limit, if *online { "1" } else { "0" }])
            }
            Request::Kick { for_s: None, .. } => fcall("skiff_kick", &[P, &lower]),
            Request::Kick { for_s: Some(for_s), .. } | Request::Ban { for_s: Some(for_s), .. } => {
                let reason = match &req {
                    Request::Ban { reason, .. } => reason.as_deref().unwrap_or(""),
                    _ => "",
                };
                let at = unix_ms();
                let until = at.saturating_add(*for_s as i64 * 1000);
                let args = fcall("skiff_ban", &[P, &lower, reason, &at.to_string(), &until.to_string()]);
                // The end travels with the request, for the answer to name it.
                self.pending.insert(id, Op::Cluster(req, Some(rfc3339(until))));
                return send(cx, origin, args);
            }
            Request::Ban { reason, .. } => {
                fcall("skiff_ban", &[P, &lower, reason.as_deref().unwrap_or(""), &unix_ms().to_string(), ""])
            }
            Request::Unban { .. } => fcall("skiff_unban", &[P, &lower]),
            Request::ResetKey { .. } => {
                let (key, hash) = crate::store::new_key_and_hash();
                let args = fcall("skiff_reset_key", &[P, &lower, &data_encoding::HEXLOWER.encode(&hash)]);
                self.pending.insert(id, Op::Cluster(req, Some(key)));
                return send(cx, origin, args);
            }
            Request::DeleteUser { messages, .. } => {
                fcall("skiff_delete_user", &[P, &lower, if *messages { "1" } else { "0" }])
            }
            Request::DeleteMessage { id: msg } => fcall("skiff_delete_message", &[P, &msg.to_string()]),
            Request::Backup { .. } => {
                return self.answer(
                    id,
                    Answer::error(
                        "not_supported",
                        "cluster mode keeps no database: Redis's persistence is the backup \
                         (redis-cli BGSAVE, then copy dump.rdb; or copy the appendonly directory)",
                    ),
                );
            }
        };
        self.pending.insert(id, Op::Cluster(req, None));
        send(cx, origin, args);
    }

    /// Cluster mode: Redis answered request `id`'s function call.
    pub fn on_cluster_value(&mut self, id: u64, v: Value, cx: &mut Cx) {
        let Some(Op::Cluster(req, key)) = self.pending.remove(&id) else { return };
        let a = match cluster_answer(&req, key.as_deref(), &v) {
            Some(a) => {
                if a.is_ok() {
                    if let Some(action) = action_of(&req) {
                        cx.chat.count(action);
                    }
                }
                a
            }
            None if matches!(v, Value::Error(_)) => cluster_unavailable(),
            None => Answer::error("internal", "an unexpected reply from Redis"),
        };
        let a = match req {
            Request::Status if a.is_ok() => {
                let mut s = self.status(cx);
                s.0.extend(a.0);
                s
            }
            _ => a,
        };
        self.answer(id, a);
    }
}

/// What one Redis function's reply means; `key`: the new key of a `reset-key`.
fn cluster_answer(req: &Request, key: Option<&str>, v: &Value) -> Option<Answer> {
    let int = |v: &Value| v.as_int();
    let items = v.as_array();
    let at = |i: usize| items.and_then(|a| a.get(i));
    let name = || at(0).and_then(Value::as_str).map(str::to_owned);
    let n = |i: usize| at(i).and_then(Value::as_int).unwrap_or(0);
    let who = |r: &Request| r.name().unwrap_or("").to_owned();
    Some(match req {
        Request::Status => Answer::ok(json!({
            "users": n(0),
            "online": n(1),
            "banned": n(2),
            "history": n(3),
            "database_bytes": Json::Null,
        })),
        Request::Users { online, limit, .. } => {
            let mut users = Vec::new();
            let now = unix_ms();
            for row in items? {
                let r = row.as_array()?;
                let registered = r.get(1)?.as_str().and_then(|s| s.parse::<i64>().ok()).map(|ms| ms / 1000);
                let text = |i: usize| r.get(i).and_then(Value::as_str).unwrap_or("");
                // 'since_ms reason' and until_ms, as skiff_ban wrote them.
                let (since, why) = text(5).split_once(' ').unwrap_or((text(5), ""));
                let until = text(6).parse::<i64>().ok();
                let banned = r.get(4)?.as_int()? == 1 && until.is_none_or(|u| u > now);
                users.push(json!({
                    "name": r.first()?.as_str()?,
                    "registered": registered,
                    "online": r.get(2)?.as_int()? == 1,
                    "sessions": r.get(3)?.as_int()?,
                    "banned": banned,
                    "since": since.parse::<i64>().ok().filter(|_| banned).map(rfc3339),
                    "until": until.filter(|_| banned).map(rfc3339),
                    "reason": (!why.is_empty() && banned).then_some(why),
                }));
            }
            // One row more than shown says whether another page exists.
            let limit = limit.unwrap_or(DEFAULT_USERS);
            let more = users.len() > limit;
            users.truncate(limit);
            let next = more.then(|| users.last().map(|u| u["name"].clone())).flatten();
            Answer::ok(json!({ "online_only": online, "users": users, "next": next }))
        }
        Request::Kick { name: asked, for_s: None } => match int(v)? {
            1 => Answer::ok(json!({ "name": asked })),
            0 => Answer::error("not_online", &format!("{asked} has no open WebSocket")),
            _ => unknown_user(asked),
        },
        Request::DeleteMessage { id } => match int(v)? {
            1 => Answer::ok(json!({ "id": id })),
            _ => no_such_message(*id),
        },
        _ if matches!(v, Value::Bulk(None) | Value::Array(None)) || items.is_some_and(|a| a.is_empty()) => {
            unknown_user(&who(req))
        }
        // `key` holds a timed ban's end (RFC 3339).
        Request::Ban { .. } | Request::Kick { .. } => {
            Answer::ok(json!({ "name": name()?, "sessions_ended": n(1), "until": key }))
        }
        Request::Unban { .. } => Answer::ok(json!({ "name": name()?, "was_banned": n(1) == 1 })),
        Request::ResetKey { .. } => Answer::ok(json!({ "name": name()?, "key": key?, "sessions_ended": n(1) })),
        Request::DeleteUser { .. } => {
            Answer::ok(json!({ "name": name()?, "sessions_ended": n(1), "messages_deleted": n(2) }))
        }
        Request::Backup { .. } => return None,
    })
}

fn action_of(req: &Request) -> Option<Action> {
    Some(match req {
        Request::Kick { .. } => Action::Kick,
        Request::Ban { .. } => Action::Ban,
        Request::Unban { .. } => Action::Unban,
        Request::ResetKey { .. } => Action::ResetKey,
        Request::DeleteUser { .. } => Action::DeleteUser,
        Request::DeleteMessage { .. } => Action::DeleteMessage,
        Request::Status | Request::Users { .. } | Request::Backup { .. } => return None,
    })
}

fn send(cx: &mut Cx, origin: Origin, args: Vec<String>) {
    if let Some(cluster) = cx.cluster.as_mut() {
        cluster.control(origin, &args);
    }
}

fn fcall(name: &str, args: &[&str]) -> Vec<String> {
    let mut v = vec!["FCALL".to_owned(), name.to_owned(), "0".to_owned()];
    v.extend(args.iter().map(|a| a.to_string()));
    v
}

fn storage_unavailable() -> Answer {
    Answer::error("storage_unavailable", "the database cannot be written now; nothing was changed")
}

fn cluster_unavailable() -> Answer {
    Answer::error("cluster_unavailable", "Redis is unreachable; nothing was changed")
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
