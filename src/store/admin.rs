//! What `skiff ctl` reads from the database (counts, the user list, the bans) and
//! the online backup. Blocking, like the rest of `store`: the storage threads and
//! the backup thread run these, never the event loop.

use super::{classify, io, Store, StoreError};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::Path;

/// A read `skiff ctl` waits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Status,
    /// Users ordered by lowercased name, after `after`; `only`: just these names.
    Users {
        after: Option<String>,
        limit: usize,
        only: Option<Vec<String>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryResult {
    Status(Counts),
    Users(Vec<UserRow>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub users: u64,
    pub banned: u64,
    /// The database's pages (the -wal file aside).
    pub db_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub name: String,
    /// Unix seconds.
    pub registered: i64,
    pub banned: bool,
}

impl Store {
    pub fn query(&mut self, q: Query) -> Result<QueryResult, StoreError> {
        match q {
            Query::Status => self.counts().map(QueryResult::Status),
            Query::Users { after, limit, only } => {
                self.list_users(after.as_deref(), limit, only).map(QueryResult::Users)
            }
        }
    }

    fn counts(&mut self) -> Result<Counts, StoreError> {
        let (users, banned): (i64, i64) = self
            .db
            .query_row("SELECT count(*), count(banned_at) FROM users", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(io)?;
        let pages: i64 = self.db.query_row("PRAGMA page_count", [], |r| r.get(0)).map_err(io)?;
        let size: i64 = self.db.query_row("PRAGMA page_size", [], |r| r.get(0)).map_err(io)?;
        Ok(Counts { users: users as u64, banned: banned as u64, db_bytes: (pages * size) as u64 })
    }

    fn list_users(
        &mut self,
        after: Option<&str>,
        limit: usize,
        only: Option<Vec<String>>,
    ) -> Result<Vec<UserRow>, StoreError> {
        let row = |r: &rusqlite::Row| {
            Ok(UserRow { name: r.get(0)?, registered: r.get(1)?, banned: r.get::<_, Option<i64>>(2)?.is_some() })
        };
        let mut out = Vec::new();
        match only {
            Some(names) => {
                let mut stmt = self
                    .db
                    .prepare_cached("SELECT username, created_at, banned_at FROM users WHERE username = ?1")
                    .map_err(io)?;
                for name in names {
                    if let Some(r) = stmt.query_map(params![name], row).map_err(io)?.next() {
                        out.push(r.map_err(io)?);
                    }
                }
                out.sort_by_key(|r| r.name.to_ascii_lowercase());
                out.retain(|r| after.is_none_or(|a| r.name.to_ascii_lowercase() > a.to_ascii_lowercase()));
                out.truncate(limit);
            }
            None => {
                // The UNIQUE NOCASE index serves both the order and the `after` seek.
                let mut stmt = self
                    .db
                    .prepare_cached(
                        "SELECT username, created_at, banned_at FROM users
                         WHERE ?1 IS NULL OR username > ?1 ORDER BY username LIMIT ?2",
                    )
                    .map_err(io)?;
                for r in stmt.query_map(params![after, limit as i64], row).map_err(io)? {
                    out.push(r.map_err(io)?);
                }
            }
        }
        Ok(out)
    }

    /// The names of banned users (lowercased), for the chat core at start.
    pub fn banned_names(&mut self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.db.prepare("SELECT lower(username) FROM users WHERE banned_at IS NOT NULL").map_err(io)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(io)?;
        rows.collect::<Result<Vec<String>, _>>().map_err(io)
    }
}

/// The meta row that makes a copy a backup: when its snapshot was read (Unix ms).
const BACKUP_MARK: &str = "backup_taken_ms";

/// A consistent copy of the database at `db` in `dest` (which must not exist), made
/// from a read-only connection of its own: `VACUUM INTO` reads one snapshot, so
/// neither the writer nor the reader waits for it. The copy is owner-only (0600)
/// whatever the umask, is marked as a backup taken now (the live database is not
/// touched), and is checked with `PRAGMA integrity_check`; a copy that fails is
/// removed. Returns the copy's size.
pub fn backup(db: &Path, dest: &Path) -> Result<u64, StoreError> {
    let shown = dest.display();
    // O_EXCL: a file that appears between a check and the copy is never overwritten.
    // VACUUM INTO fills an empty file and keeps its mode.
    match super::create_owner_only(dest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(StoreError::Io(format!("{shown} exists; a backup never overwrites a file")))
        }
        Err(e) => return Err(StoreError::Io(format!("cannot write {shown}: {e}"))),
    }
    let made = copy(db, dest).and_then(|()| {
        verify(dest).map_err(|e| StoreError::Corrupt(format!("the copy {shown} failed its check: {e}")))
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(dest);
        return Err(e);
    }
    std::fs::metadata(dest).map(|m| m.len()).map_err(|e| StoreError::Io(e.to_string()))
}

fn copy(db: &Path, dest: &Path) -> Result<(), StoreError> {
    let cannot = |e: rusqlite::Error| StoreError::Io(format!("cannot write {}: {e}", dest.display()));
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let src = Connection::open_with_flags(db, flags).map_err(|e| StoreError::Open(e.to_string()))?;
    src.execute_batch("PRAGMA busy_timeout=5000;").map_err(classify)?;
    let dest_str = dest.to_str().ok_or_else(|| StoreError::Io("the backup path is not UTF-8".into()))?;
    // The snapshot is read from the statement's start: that is when the backup is.
    let taken_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    src.execute("VACUUM INTO ?1", params![dest_str]).map_err(cannot)?;
    drop(src);
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let copy = Connection::open_with_flags(dest, flags).map_err(cannot)?;
    copy.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        params![BACKUP_MARK, taken_ms.to_string()],
    )
    .map_err(cannot)?;
    Ok(())
}

impl Store {
    /// A database that is a restored backup begins a new history: its messages end
    /// where the backup was taken, while clients may have seen later ones under the
    /// same ids. In one transaction the mark goes and a new epoch is written, so a
    /// crash just after still leaves the new epoch. Returns when the backup was
    /// taken (Unix ms), `None` for a database that is not a backup.
    pub fn begin_after_restore(&mut self) -> Result<Option<i64>, StoreError> {
        let tx = self.db.transaction().map_err(io)?;
        let mark: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = ?1", params![BACKUP_MARK], |r| r.get(0))
            .optional()
            .map_err(io)?;
        let Some(mark) = mark else { return Ok(None) };
        let taken_ms = mark.parse().map_err(|_| StoreError::Corrupt(format!("bad backup mark {mark:?} in meta")))?;
        tx.execute("UPDATE meta SET value = ?1 WHERE key = 'epoch'", params![super::new_epoch()]).map_err(io)?;
        tx.execute("DELETE FROM meta WHERE key = ?1", params![BACKUP_MARK]).map_err(io)?;
        tx.commit().map_err(io)?;
        Ok(Some(taken_ms))
    }
}

fn verify(path: &Path) -> Result<(), String> {
    let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| e.to_string())?;
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(|e| e.to_string())?;
    if check != "ok" {
        return Err(check);
    }
    let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| e.to_string())?;
    if version != super::SCHEMA_VERSION {
        return Err(format!("schema version {version}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Registered, Write, Written};

    #[test]
    fn bans_resets_and_deletions_change_only_what_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let mut s = Store::open(&path).unwrap();
        let Registered::Created { key } = s.register("Alice").unwrap() else { panic!() };
        s.register("bob").unwrap();
        let ban = Write::Ban { username: "alice".into(), reason: Some("spam".into()), at_ms: 1, until_ms: None };
        assert_eq!(s.apply(&[ban]).unwrap(), [Written::Done]);
        let ghost = Write::Ban { username: "nobody".into(), reason: None, at_ms: 1, until_ms: None };
        assert_eq!(s.apply(&[ghost]).unwrap(), [Written::NotFound]);
        assert_eq!(s.banned_names().unwrap(), ["alice"]);
        let QueryResult::Users(rows) = s.query(Query::Users { after: None, limit: 10, only: None }).unwrap() else {
            panic!()
        };
        assert_eq!(
            rows.iter().map(|r| (r.name.as_str(), r.banned)).collect::<Vec<_>>(),
            [("Alice", true), ("bob", false)]
        );
        let QueryResult::Users(rows) =
            s.query(Query::Users { after: Some("ALICE".into()), limit: 10, only: None }).unwrap()
        else {
            panic!()
        };
        assert_eq!(rows.len(), 1, "after is exclusive and ignores case");
        // The key still names the user: a ban is not a deletion.
        assert_eq!(s.login(&key).unwrap().as_deref(), Some("Alice"));
        let (new_key, hash) = crate::store::new_key_and_hash();
        assert_eq!(s.apply(&[Write::ResetKey { username: "ALICE".into(), key_hash: hash }]).unwrap(), [Written::Done]);
        assert_eq!(s.login(&key).unwrap(), None, "the old key stops working");
        assert_eq!(s.login(&new_key).unwrap().as_deref(), Some("Alice"));
        assert_eq!(
            s.apply(&[Write::DeleteUser { username: "alice".into(), messages: false }]).unwrap(),
            [Written::Done]
        );
        assert!(matches!(s.register("alice").unwrap(), Registered::Created { .. }), "the name is free again");
        let QueryResult::Status(c) = s.query(Query::Status).unwrap() else { panic!() };
        assert_eq!((c.users, c.banned), (2, 0));
        assert!(c.db_bytes > 0);
    }

    #[test]
    fn deleting_the_newest_message_keeps_its_id_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let mut s = Store::open(&path).unwrap();
        let msg = |id: u64, author: &str| Write::Message {
            msg: crate::chat::Message { id, ts: 1, author: author.into(), text: format!("m{id}") },
            keep: 100,
        };
        s.apply(&[msg(1, "a"), msg(2, "b"), msg(3, "a")]).unwrap();
        assert_eq!(s.apply(&[Write::DeleteMessage { id: 3 }]).unwrap(), [Written::Done]);
        assert_eq!(s.apply(&[Write::DeleteMessage { id: 3 }]).unwrap(), [Written::NotFound]);
        s.register("a").unwrap();
        s.apply(&[Write::DeleteUser { username: "a".into(), messages: true }]).unwrap();
        drop(s);
        let mut s = Store::open(&path).unwrap();
        let (messages, last) = s.load_messages(10).unwrap();
        assert_eq!(messages.iter().map(|m| m.id).collect::<Vec<_>>(), [2]);
        assert_eq!(last, 3, "id 3 is never given again");
    }

    #[test]
    fn a_backup_is_a_checked_copy_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.db");
        let mut s = Store::open(&path).unwrap();
        let Registered::Created { key } = s.register("carol").unwrap() else { panic!() };
        let copy = dir.path().join("copy.db");
        assert!(backup(&path, &copy).unwrap() > 0);
        let mut restored = Store::open(&copy).unwrap();
        assert_eq!(restored.login(&key).unwrap().as_deref(), Some("carol"));
        let before = std::fs::read(&copy).unwrap();
        assert!(backup(&path, &copy).is_err(), "an existing file is refused");
        assert_eq!(std::fs::read(&copy).unwrap(), before, "and left as it was");
        assert!(backup(&path, &dir.path().join("no/such/dir.db")).is_err());
    }

    #[test]
    fn a_backup_is_owner_only_and_marked_and_its_restore_begins_a_new_epoch_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.db");
        let mut live = Store::open(&path).unwrap();
        let epoch = live.epoch().unwrap();
        let copy = dir.path().join("copy.db");
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        backup(&path, &copy).unwrap();
        assert_eq!(std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(live.begin_after_restore().unwrap(), None, "the live database is not marked");
        assert_eq!(live.epoch().unwrap(), epoch);
        let mut restored = Store::open(&copy).unwrap();
        assert_eq!(restored.epoch().unwrap(), epoch, "opening alone changes nothing");
        let taken = restored.begin_after_restore().unwrap().expect("the copy says it is a backup");
        assert!(taken >= before, "taken at {taken}, asked at {before}");
        let new_epoch = restored.epoch().unwrap();
        assert_ne!(new_epoch, epoch);
        assert_eq!(new_epoch.len(), 8);
        drop(restored);
        let mut again = Store::open(&copy).unwrap();
        assert_eq!(again.begin_after_restore().unwrap(), None, "a restore is begun once");
        assert_eq!(again.epoch().unwrap(), new_epoch);
    }
}
