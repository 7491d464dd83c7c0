//! The stand-in's `skiff ctl` functions (the second half of `library.lua`): the
//! operator's commands, each closing sockets only through the room's events.

use super::{array, bulk, int, Answer, FakeRedis, PREFIX};
use crate::cluster::resp::Value;

impl FakeRedis {
    /// FCALL of a `skiff ctl` function (`a[0]` is the prefix), or "not found".
    pub(super) fn ctl(&mut self, name: &str, a: &[&str]) -> Answer {
        let arity = |n: usize| if a.len() < n { Err(format!("ERR {name}: {n} arguments expected")) } else { Ok(()) };
        match name {
            "skiff_status" => Ok(array(vec![
                Value::Int(self.users.len() as i64),
                Value::Int(self.online.len() as i64),
                Value::Int(self.banned.len() as i64),
                Value::Int(self.history.len() as i64),
            ])),
            "skiff_users" => {
                arity(4)?;
                self.users_page(a[1], int(a[2])?, a[3] == "1")
            }
            "skiff_kick" => {
                arity(2)?;
                Ok(Value::Int(self.kick(a[1])))
            }
            "skiff_ban" => {
                arity(4)?;
                Ok(self.ban(a[1], a[2], a[3], a.get(4).copied().unwrap_or("")))
            }
            "skiff_unban" => {
                arity(2)?;
                Ok(match self.users.get(a[1]).cloned() {
                    Some(name) => {
                        self.banuntil.remove(a[1]);
                        let was = self.banned.remove(a[1]).is_some();
                        if was {
                            self.publish("U", &name);
                        }
                        array(vec![bulk(&name), Value::Int(was as i64)])
                    }
                    None => Value::Bulk(None),
                })
            }
            "skiff_reset_key" => {
                arity(3)?;
                Ok(self.reset_key(a[1], a[2]))
            }
            "skiff_delete_user" => {
                arity(3)?;
                Ok(self.delete_user(a[1], a[2] == "1"))
            }
            "skiff_delete_message" => {
                arity(2)?;
                let id: u64 = a[1].parse().map_err(|_| "ERR Invalid stream ID specified as stream command argument")?;
                Ok(Value::Int(self.delete_message(id)))
            }
            _ => Err(format!("ERR Function not found: {name} ({PREFIX})")),
        }
    }

    /// Users by lowercased name after `after`, at most `limit`: {name, registered,
    /// online, live sessions, banned}.
    fn users_page(&mut self, after: &str, limit: i64, online_only: bool) -> Answer {
        let mut lowers: Vec<String> = if online_only {
            self.online.members().iter().map(|n| n.to_ascii_lowercase()).collect()
        } else {
            self.users.keys().cloned().collect()
        };
        lowers.sort();
        let mut out = Vec::new();
        for lower in lowers {
            if out.len() as i64 >= limit {
                break;
            }
            let Some(name) = self.users.get(&lower).cloned() else { continue };
            if lower.as_str() <= after {
                continue;
            }
            // A Lua table ends at its first nil: a user with no registration time
            // is listed by name alone.
            let Some(created) = self.created.get(&lower) else {
                out.push(array(vec![bulk(&name)]));
                continue;
            };
            let created = bulk(&created.to_string());
            let online = Value::Int(self.presence.contains_key(&lower) as i64);
            let sessions = Value::Int(self.live_sessions(&lower));
            let ban = self.banned.get(&lower).cloned();
            let banned = Value::Int(ban.is_some() as i64);
            // As library.lua: the ban's "since reason" and its end ('' for no timed
            // bans here).
            let until = self.banuntil.get(&lower).cloned().unwrap_or_default();
            out.push(array(vec![
                bulk(&name),
                created,
                online,
                sessions,
                banned,
                bulk(&ban.unwrap_or_default()),
                bulk(&until),
            ]));
        }
        Ok(array(out))
    }

    fn live_sessions(&mut self, lower: &str) -> i64 {
        let members = self.usess(lower).map(|l| l.0.members()).unwrap_or_default();
        members.iter().filter(|h| self.live_session(h).is_some()).count() as i64
    }

    /// Ends every live session of the user (event E with `code`: 1008, or 4001 for a
    /// key reset and 4002 for a deleted user, as library.lua); how many there were.
    fn end_sessions(&mut self, lower: &str, code: &str) -> i64 {
        let mut ended = 0;
        let members = self.usess(lower).map(|l| l.0.members()).unwrap_or_default();
        for h in members {
            if self.live_session(&h).is_some() {
                self.end_session(&h, code);
                self.publish("E", &format!("{code} {h}"));
                ended += 1;
            }
        }
        self.usess.remove(lower);
        ended
    }

    /// The user's key hash: `keyof`, else the first key naming them.
    fn key_of(&self, lower: &str, name: &str) -> Option<String> {
        self.keyof.get(lower).cloned().or_else(|| self.keys.iter().find(|(_, n)| *n == name).map(|(k, _)| k.clone()))
    }

    fn kick(&mut self, lower: &str) -> i64 {
        let Some(name) = self.users.get(lower).cloned() else { return -1 };
        let Some(node) = self.presence.get(lower).cloned() else { return 0 };
        self.publish("K", &format!("{node} {name}"));
        1
    }

    fn ban(&mut self, lower: &str, reason: &str, at_ms: &str, until_ms: &str) -> Value {
        let Some(name) = self.users.get(lower).cloned() else { return Value::Bulk(None) };
        self.banned.insert(lower.to_owned(), format!("{at_ms} {reason}"));
        if until_ms.is_empty() {
            self.banuntil.remove(lower);
        } else {
            self.banuntil.insert(lower.to_owned(), until_ms.to_owned());
        }
        // As library.lua: the B event tells every node the ban, its end and reason.
        let mut note = format!("{name} {at_ms} {}", if until_ms.is_empty() { "-" } else { until_ms });
        if !reason.is_empty() {
            note = format!("{note} {reason}");
        }
        self.publish("B", &note);
        let ended = self.end_sessions(lower, "1008");
        array(vec![bulk(&name), Value::Int(ended)])
    }

    fn reset_key(&mut self, lower: &str, new: &str) -> Value {
        let Some(name) = self.users.get(lower).cloned() else { return Value::Bulk(None) };
        if let Some(old) = self.key_of(lower, &name) {
            self.keys.remove(&old);
        }
        self.keys.insert(new.to_owned(), name.clone());
        self.keyof.insert(lower.to_owned(), new.to_owned());
        let ended = self.end_sessions(lower, "4001");
        array(vec![bulk(&name), Value::Int(ended)])
    }

    /// The name is free at once; with `messages`, their kept messages go too, oldest
    /// first, each with a D event.
    fn delete_user(&mut self, lower: &str, messages: bool) -> Value {
        let Some(name) = self.users.get(lower).cloned() else { return Value::Bulk(None) };
        if let Some(old) = self.key_of(lower, &name) {
            self.keys.remove(&old);
        }
        self.users.remove(lower);
        self.keyof.remove(lower);
        self.banned.remove(lower);
        self.created.remove(lower);
        let ended = self.end_sessions(lower, "4002");
        let mut deleted = 0;
        if messages {
            let ids: Vec<u64> = self.history.iter().filter(|e| e.author == name).map(|e| e.id).collect();
            for id in ids {
                deleted += self.delete_message(id);
            }
        }
        array(vec![bulk(&name), Value::Int(ended), Value::Int(deleted)])
    }

    fn delete_message(&mut self, id: u64) -> i64 {
        let Some(i) = self.history.iter().position(|e| e.id == id) else { return 0 };
        self.history.remove(i);
        self.publish("D", &id.to_string());
        1
    }
}
