//! The database in SQLite (rusqlite, bundled): migrations by `PRAGMA user_version`,
//! users (only SHA-256 of each key), sessions (only SHA-256 of each id), writes
//! applied in batches of one transaction each. Blocking calls: they run on the
//! storage threads (`storage.rs`), never on the event loop. Nothing here knows
//! about sockets or HTTP.

use crate::chat::Message;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use sha2::{Digest, Sha256};
use std::path::Path;

pub mod admin;
mod files;

pub use files::warn_if_open_to_others;
use files::{create_owner_only, explain};

/// The schema version this build writes; older files are migrated on open.
const SCHEMA_VERSION: i64 = 5;

/// Keys longer than this cannot be ours; refuse them before hashing.
const MAX_KEY_LEN: usize = 256;

#[derive(Debug)]
pub enum StoreError {
    Open(String),
    Corrupt(String),
    Io(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Open(m) | StoreError::Corrupt(m) | StoreError::Io(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StoreError {}

pub enum Registered {
    Created { key: String },
    NameTaken,
}

/// One change the writer applies inside a group commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A new user; the name may turn out to be taken.
    Register {
        username: String,
        key_hash: [u8; 32],
    },
    /// A session, new or seen active: `active_ms` (Unix ms) is at or after its
    /// last activity, so a restart may lengthen a session, never shorten it.
    SaveSession {
        id_hash: [u8; 32],
        username: String,
        active_ms: i64,
    },
    DeleteSession {
        id_hash: [u8; 32],
    },
    /// The highest message id that may be given (`History::wants_reservation`); a
    /// restart continues after it. Written exactly, so a clean stop can give back
    /// the unused part of a block.
    ReserveIds {
        through: u64,
    },
    /// `skiff ctl ban`: the user's sessions go with it. `NotFound` for no such user.
    Ban {
        username: String,
        reason: Option<String>,
        at_ms: i64,
        /// A timed ban's end (Unix ms); none: until an unban.
        until_ms: Option<i64>,
    },
    Unban {
        username: String,
    },
    /// A timed ban ran out: lifted if it is still the one that ends at `until_ms`.
    EndBan {
        username: String,
        until_ms: i64,
    },
    /// A new key (the old one stops working) and no sessions.
    ResetKey {
        username: String,
        key_hash: [u8; 32],
    },
    /// The name becomes free; with `messages`, the user's messages go too.
    DeleteUser {
        username: String,
        messages: bool,
    },
    /// One message out of the history. `NotFound` if it is not kept.
    DeleteMessage {
        id: u64,
    },
    /// A broadcast chat message; rows older than the newest `keep` go.
    Message {
        msg: Message,
        keep: u64,
    },
}

/// What one write did, once its transaction committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    NameTaken,
    /// The user or message a moderation write names does not exist.
    NotFound,
}

/// A session read back at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub id_hash: [u8; 32],
    pub username: String,
    pub active_ms: i64,
}

pub struct Store {
    db: Connection,
}

fn io(e: rusqlite::Error) -> StoreError {
    StoreError::Io(format!("database error: {e}"))
}

impl Store {
    /// Opens or creates the database file. A file that is not a skiff database (or
    /// is corrupt, unwritable, or from a newer skiff) is an error, never replaced.
    /// Writability is proven here, by taking and releasing the write lock: SQLite
    /// quietly opens a read-only file read-only, and every registration would fail.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_checked(path, true)
    }

    /// `open` for a hand-over's new image: the file was in use by this process a
    /// moment ago, so it is not read whole again (quick_check reads every page, a
    /// few milliseconds of the pause with 10,000 users).
    pub fn reopen(path: &Path) -> Result<Store, StoreError> {
        Store::open_checked(path, false)
    }

    fn open_checked(path: &Path, quick_check: bool) -> Result<Store, StoreError> {
        let shown = path.display();
        if path.is_dir() {
            return Err(StoreError::Open(format!("cannot open database {shown}: it is a directory")));
        }
        let existed = path.exists();
        if !existed {
            // SQLite would create it 0644 less the umask, and gives the -wal and -shm
            // files it makes later the database's own mode: owner-only from the first
            // byte keeps names and messages from other local users. A failure here
            // (no such directory, say) is SQLite's to report, explained below.
            let _ = create_owner_only(path);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let opened = Connection::open_with_flags(path, flags)
            .map_err(|e| StoreError::Open(e.to_string()))
            .and_then(|db| Store::init(db, quick_check))
            .and_then(|store| store.prove_writable().map(|()| store));
        opened.map_err(|e| match e {
            StoreError::Corrupt(m) => StoreError::Corrupt(format!("database {shown} is unusable: {m}")),
            StoreError::Open(m) | StoreError::Io(m) => {
                StoreError::Open(explain(path, existed).unwrap_or_else(|| format!("cannot open database {shown}: {m}")))
            }
        })
    }

    /// `BEGIN IMMEDIATE` takes the write lock, which needs a writable file and, in WAL
    /// mode, writable -wal and -shm files; the rollback leaves the file as it was.
    fn prove_writable(&self) -> Result<(), StoreError> {
        if self.db.is_readonly(rusqlite::MAIN_DB).map_err(classify)? {
            return Err(StoreError::Open("attempt to write a readonly database".into()));
        }
        self.db.execute_batch("BEGIN IMMEDIATE; ROLLBACK;").map_err(classify)
    }

    pub fn open_in_memory() -> Result<Store, StoreError> {
        Store::init(Connection::open_in_memory().map_err(io)?, true)
    }

    /// A copy of this database, schema and rows, in a new in-memory one: the fuzz
    /// worlds migrate one store and copy it for each input (src/harness/world.rs).
    #[cfg(feature = "harness")]
    pub fn copy_in_memory(&self) -> Result<Store, StoreError> {
        let mut db = Connection::open_in_memory().map_err(io)?;
        rusqlite::backup::Backup::new(&self.db, &mut db)
            .and_then(|b| b.run_to_completion(1 << 16, std::time::Duration::ZERO, None))
            .map_err(io)?;
        Store::init(db, false)
    }

    fn init(db: Connection, quick_check: bool) -> Result<Store, StoreError> {
        // Reading the header is the first real access: a non-database file fails here.
        let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(classify)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Corrupt(format!(
                "schema version {version} is newer than this skiff understands ({SCHEMA_VERSION})"
            )));
        }
        // quick_check reads every page: cheap for a user table, and it turns a
        // damaged file into a startup error rather than a failure mid-request.
        if quick_check {
            let check: String = db.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(classify)?;
            if check != "ok" {
                return Err(StoreError::Corrupt(check));
            }
        }
        let mode: String = db.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(classify)?;
        if mode != "wal" && mode != "memory" {
            return Err(StoreError::Open(format!("cannot enable WAL (journal mode is {mode})")));
        }
        // FULL: a 201 goes out only after the row survives a power cut.
        // The working set is one small table; SQLite's default 2 MiB page cache would
        // be most of an idle server's memory.
        db.execute_batch(
            "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=1000; PRAGMA cache_size=-256;",
        )
        .map_err(classify)?;
        let mut store = Store { db };
        store.migrate(version)?;
        Ok(store)
    }

    fn migrate(&mut self, from: i64) -> Result<(), StoreError> {
        if from < 1 {
            let tx = self.db.transaction().map_err(classify)?;
            tx.execute_batch(
                "CREATE TABLE users (
                    id INTEGER PRIMARY KEY,
                    username TEXT NOT NULL UNIQUE COLLATE NOCASE,
                    key_hash BLOB NOT NULL UNIQUE,
                    created_at INTEGER NOT NULL DEFAULT (unixepoch())
                 );
                 PRAGMA user_version = 1;",
            )
            .map_err(classify)?;
            tx.commit().map_err(classify)?;
        }
        if from < 2 {
            let tx = self.db.transaction().map_err(classify)?;
            tx.execute_batch(
                "CREATE TABLE sessions (
                    id_hash BLOB PRIMARY KEY,
                    username TEXT NOT NULL,
                    active_ms INTEGER NOT NULL
                 ) WITHOUT ROWID;
                 PRAGMA user_version = 2;",
            )
            .map_err(classify)?;
            tx.commit().map_err(classify)?;
        }
        if from < 3 {
            // The epoch names this history: a new one only with a new database (or
            // a restored backup, `begin_after_restore`).
            let tx = self.db.transaction().map_err(classify)?;
            tx.execute_batch(
                "CREATE TABLE messages (
                    id INTEGER PRIMARY KEY,
                    ts INTEGER NOT NULL,
                    author TEXT NOT NULL,
                    message TEXT NOT NULL
                 );
                 CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
                 PRAGMA user_version = 3;",
            )
            .map_err(classify)?;
            tx.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?1)", params![new_epoch()]).map_err(classify)?;
            tx.commit().map_err(classify)?;
        }
        if from < 4 {
            // Bans (`skiff ctl ban`): the row stays, so the name stays taken.
            let tx = self.db.transaction().map_err(classify)?;
            tx.execute_batch(
                "ALTER TABLE users ADD COLUMN banned_at INTEGER;
                 ALTER TABLE users ADD COLUMN ban_reason TEXT;
                 PRAGMA user_version = 4;",
            )
            .map_err(classify)?;
            tx.commit().map_err(classify)?;
        }
        if from < 5 {
            // Timed bans (`ban --for`, `kick --for`): their end survives a restart.
            let tx = self.db.transaction().map_err(classify)?;
            tx.execute_batch(
                "ALTER TABLE users ADD COLUMN banned_until INTEGER;
                 PRAGMA user_version = 5;",
            )
            .map_err(classify)?;
            tx.commit().map_err(classify)?;
        }
        Ok(())
    }

    /// The name of this database's message history.
    pub fn epoch(&mut self) -> Result<String, StoreError> {
        self.db.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| r.get(0)).map_err(io)
    }

    /// The id reservation on disk: no id above it was ever given (0 if none yet).
    pub fn reserved_ids(&mut self) -> Result<u64, StoreError> {
        let v: Option<String> = self
            .db
            .query_row("SELECT value FROM meta WHERE key = 'reserved_ids'", [], |r| r.get(0))
            .optional()
            .map_err(io)?;
        match v {
            None => Ok(0),
            Some(v) => v.parse().map_err(|_| StoreError::Corrupt(format!("bad id reservation {v:?} in meta"))),
        }
    }

    /// The newest `limit` messages, oldest first, and the highest id ever given
    /// (kept even when `limit` is 0).
    pub fn load_messages(&mut self, limit: usize) -> Result<(Vec<Message>, u64), StoreError> {
        // A deleted newest message leaves its id in meta (`skiff ctl delete-message`).
        let last: i64 = self
            .db
            .query_row(
                "SELECT max(coalesce((SELECT max(id) FROM messages), 0),
                            coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'last_id'), 0))",
                [],
                |r| r.get(0),
            )
            .map_err(io)?;
        let mut stmt =
            self.db.prepare("SELECT id, ts, author, message FROM messages ORDER BY id DESC LIMIT ?1").map_err(io)?;
        let rows = stmt
            .query_map(params![limit as i64], |r| {
                Ok(Message { id: r.get::<_, i64>(0)? as u64, ts: r.get(1)?, author: r.get(2)?, text: r.get(3)? })
            })
            .map_err(io)?;
        let mut out = rows.collect::<Result<Vec<_>, _>>().map_err(io)?;
        out.reverse();
        Ok((out, last.max(0) as u64))
    }

    /// A second connection to the same file for lookups: in WAL mode its reads see
    /// the last commit and never wait for the writer's transaction or fsync.
    pub fn open_reader(path: &Path) -> Result<Store, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let db = Connection::open_with_flags(path, flags).map_err(|e| StoreError::Open(e.to_string()))?;
        db.execute_batch("PRAGMA busy_timeout=1000; PRAGMA cache_size=-256;").map_err(classify)?;
        Ok(Store { db })
    }

    /// Applies `writes` in one transaction, so one fsync makes all of them durable
    /// (group commit). A taken name fails only its own write; any other error fails
    /// the whole batch and nothing of it is applied.
    pub fn apply(&mut self, writes: &[Write]) -> Result<Vec<Written>, StoreError> {
        let tx = self.db.transaction().map_err(io)?;
        let mut results = Vec::with_capacity(writes.len());
        for w in writes {
            results.push(apply_one(&tx, w)?);
        }
        tx.commit().map_err(io)?;
        Ok(results)
    }

    /// The canonical username for a key's hash, if any.
    pub fn user_by_key_hash(&mut self, hash: &[u8; 32]) -> Result<Option<String>, StoreError> {
        let mut stmt = self.db.prepare_cached("SELECT username FROM users WHERE key_hash = ?1").map_err(io)?;
        stmt.query_row(params![&hash[..]], |r| r.get(0)).optional().map_err(io)
    }

    /// Every stored session (expired ones included: the caller decides).
    pub fn load_sessions(&mut self) -> Result<Vec<StoredSession>, StoreError> {
        let mut stmt = self.db.prepare("SELECT id_hash, username, active_ms FROM sessions").map_err(io)?;
        let rows = stmt
            .query_map([], |r| {
                let hash: Vec<u8> = r.get(0)?;
                Ok((hash, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
            })
            .map_err(io)?;
        let mut out = Vec::new();
        for row in rows {
            let (hash, username, active_ms) = row.map_err(io)?;
            // A row that is not ours (a hand edit) is skipped, not fatal.
            if let Ok(id_hash) = <[u8; 32]>::try_from(hash.as_slice()) {
                out.push(StoredSession { id_hash, username, active_ms });
            }
        }
        Ok(out)
    }

    /// Registers `username` (already validated by the caller) in a transaction of
    /// its own. Returns after the row is committed.
    pub fn register(&mut self, username: &str) -> Result<Registered, StoreError> {
        let key = new_key();
        let write = Write::Register { username: username.to_owned(), key_hash: hash_key(&key) };
        match self.apply(std::slice::from_ref(&write))?[0] {
            Written::Done => Ok(Registered::Created { key }),
            Written::NameTaken | Written::NotFound => Ok(Registered::NameTaken),
        }
    }

    /// The canonical username for a key, if any.
    pub fn login(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        match key_hash(key) {
            Some(hash) => self.user_by_key_hash(&hash),
            None => Ok(None),
        }
    }

    /// The bans in force at Unix time `now_ms`, by lowercased name, for the chat
    /// core at start; timed bans that ran out while the server was down are over.
    pub fn bans(&mut self, now_ms: i64) -> Result<Vec<(String, crate::chat::moderation::Ban)>, StoreError> {
        let mut stmt = self
            .db
            .prepare(
                "SELECT lower(username), banned_at, banned_until, ban_reason FROM users
                 WHERE banned_at IS NOT NULL AND (banned_until IS NULL OR banned_until > ?1)",
            )
            .map_err(io)?;
        let mut bans = Vec::new();
        let rows = stmt.query_map(params![now_ms], |r| {
            let reason: Option<String> = r.get(3)?;
            let ban = crate::chat::moderation::Ban {
                since_ms: r.get(1)?,
                until_ms: r.get(2)?,
                reason: reason.map(String::into_boxed_str),
            };
            Ok((r.get::<_, String>(0)?, ban))
        });
        for row in rows.map_err(io)? {
            bans.push(row.map_err(io)?);
        }
        Ok(bans)
    }

    /// The canonical spelling of a name, matched ignoring ASCII case.
    pub fn find_user(&mut self, name: &str) -> Result<Option<String>, StoreError> {
        let mut stmt = self.db.prepare_cached("SELECT username FROM users WHERE username = ?1").map_err(io)?;
        stmt.query_row(params![name], |r| r.get(0)).optional().map_err(io)
    }
}

fn classify(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) =>
        {
            StoreError::Corrupt(e.to_string())
        }
        _ => StoreError::Open(e.to_string()),
    }
}

fn apply_one(tx: &rusqlite::Transaction, w: &Write) -> Result<Written, StoreError> {
    match w {
        Write::Register { username, key_hash } => {
            let mut stmt = tx
                .prepare_cached("INSERT INTO users (username, key_hash) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
                .map_err(io)?;
            let inserted = stmt.execute(params![username, &key_hash[..]]).map_err(io)?;
            Ok(if inserted == 1 { Written::Done } else { Written::NameTaken })
        }
        Write::SaveSession { id_hash, username, active_ms } => {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO sessions (id_hash, username, active_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (id_hash) DO UPDATE SET active_ms = max(active_ms, excluded.active_ms)",
                )
                .map_err(io)?;
            stmt.execute(params![&id_hash[..], username, active_ms]).map_err(io)?;
            Ok(Written::Done)
        }
        Write::DeleteSession { id_hash } => {
            let mut stmt = tx.prepare_cached("DELETE FROM sessions WHERE id_hash = ?1").map_err(io)?;
            stmt.execute(params![&id_hash[..]]).map_err(io)?;
            Ok(Written::Done)
        }
        Write::ReserveIds { through } => {
            let mut stmt = tx
                .prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('reserved_ids', ?1)")
                .map_err(io)?;
            stmt.execute(params![through.to_string()]).map_err(io)?;
            Ok(Written::Done)
        }
        Write::Ban { username, reason, at_ms, until_ms } => {
            let n = tx
                .execute(
                    "UPDATE users SET banned_at = ?2, ban_reason = ?3, banned_until = ?4 WHERE username = ?1",
                    params![username, at_ms, reason, until_ms],
                )
                .map_err(io)?;
            if n == 0 {
                return Ok(Written::NotFound);
            }
            tx.execute("DELETE FROM sessions WHERE username = ?1 COLLATE NOCASE", params![username]).map_err(io)?;
            Ok(Written::Done)
        }
        Write::EndBan { username, until_ms } => {
            tx.execute(
                "UPDATE users SET banned_at = NULL, ban_reason = NULL, banned_until = NULL
                 WHERE username = ?1 AND banned_until = ?2",
                params![username, until_ms],
            )
            .map_err(io)?;
            Ok(Written::Done)
        }
        Write::Unban { username } => {
            let n = tx
                .execute(
                    "UPDATE users SET banned_at = NULL, ban_reason = NULL, banned_until = NULL WHERE username = ?1",
                    params![username],
                )
                .map_err(io)?;
            Ok(if n == 0 { Written::NotFound } else { Written::Done })
        }
        Write::ResetKey { username, key_hash } => {
            let n = tx
                .execute("UPDATE users SET key_hash = ?2 WHERE username = ?1", params![username, &key_hash[..]])
                .map_err(io)?;
            if n == 0 {
                return Ok(Written::NotFound);
            }
            tx.execute("DELETE FROM sessions WHERE username = ?1 COLLATE NOCASE", params![username]).map_err(io)?;
            Ok(Written::Done)
        }
        Write::DeleteUser { username, messages } => {
            let author: Option<String> = tx
                .query_row("SELECT username FROM users WHERE username = ?1", params![username], |r| r.get(0))
                .optional()
                .map_err(io)?;
            let Some(author) = author else { return Ok(Written::NotFound) };
            if *messages {
                keep_last_id(tx)?;
                tx.execute("DELETE FROM messages WHERE author = ?1", params![author]).map_err(io)?;
            }
            tx.execute("DELETE FROM sessions WHERE username = ?1 COLLATE NOCASE", params![author]).map_err(io)?;
            tx.execute("DELETE FROM users WHERE username = ?1", params![author]).map_err(io)?;
            Ok(Written::Done)
        }
        Write::DeleteMessage { id } => {
            keep_last_id(tx)?;
            let n = tx.execute("DELETE FROM messages WHERE id = ?1", params![*id as i64]).map_err(io)?;
            Ok(if n == 0 { Written::NotFound } else { Written::Done })
        }
        Write::Message { msg, keep } => {
            let Message { id, ts, author, text } = msg;
            let mut stmt = tx
                .prepare_cached("INSERT OR REPLACE INTO messages (id, ts, author, message) VALUES (?1, ?2, ?3, ?4)")
                .map_err(io)?;
            stmt.execute(params![*id as i64, ts, author, text]).map_err(io)?;
            // The newest row always stays: it carries the last id across a restart.
            let oldest_kept = id.saturating_sub((*keep).max(1)) as i64;
            let mut trim = tx.prepare_cached("DELETE FROM messages WHERE id <= ?1").map_err(io)?;
            trim.execute(params![oldest_kept]).map_err(io)?;
            Ok(Written::Done)
        }
    }
}

/// Before a message row is deleted: the highest id given goes into meta, so a
/// restart never hands out a deleted newest message's id again.
fn keep_last_id(tx: &rusqlite::Transaction) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO meta (key, value)
         SELECT 'last_id', CAST(max(coalesce((SELECT max(id) FROM messages), 0),
                                    coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'last_id'), 0))
                                AS TEXT)
         WHERE true
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [],
    )
    .map_err(io)?;
    Ok(())
}

/// SHA-256 of a key, or `None` for a string that cannot be a key of ours.
pub fn key_hash(key: &str) -> Option<[u8; 32]> {
    (!key.is_empty() && key.len() <= MAX_KEY_LEN).then(|| hash_key(key))
}

fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A new key and its hash: the key goes to the user once, the hash to the disk.
pub fn new_key_and_hash() -> (String, [u8; 32]) {
    let key = new_key();
    let hash = hash_key(&key);
    (key, hash)
}

/// 32 bytes (256 bits) from the OS CSPRNG as 43 characters of unpadded base64url.
fn new_key() -> String {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).expect("the OS random number generator failed");
    base64url(&raw)
}

/// A new history's name: 48 random bits as 8 characters of base64url.
fn new_epoch() -> String {
    let mut raw = [0u8; 6];
    getrandom::fill(&mut raw).expect("the OS random number generator failed");
    base64url(&raw)
}

fn base64url(bytes: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_known_vectors() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn register_login_and_case_insensitive_names() {
        let mut s = Store::open_in_memory().unwrap();
        let Registered::Created { key } = s.register("Alice").unwrap() else { panic!("created") };
        assert_eq!(key.len(), 43);
        assert!(matches!(s.register("alice").unwrap(), Registered::NameTaken));
        assert_eq!(s.login(&key).unwrap().as_deref(), Some("Alice"));
        assert_eq!(s.login("nope").unwrap(), None);
        assert_eq!(s.login(&"k".repeat(300)).unwrap(), None);
        assert_eq!(s.find_user("ALICE").unwrap().as_deref(), Some("Alice"));
        assert_eq!(s.find_user("bob").unwrap(), None);
    }

    #[test]
    fn keys_differ_and_only_hashes_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut s = Store::open(&path).unwrap();
        let Registered::Created { key: k1 } = s.register("a").unwrap() else { panic!() };
        let Registered::Created { key: k2 } = s.register("b").unwrap() else { panic!() };
        assert_ne!(k1, k2);
        drop(s);
        let mut bytes = std::fs::read(&path).unwrap();
        if let Ok(wal) = std::fs::read(dir.path().join("t.db-wal")) {
            bytes.extend(wal);
        }
        assert!(!bytes.windows(k1.len()).any(|w| w == k1.as_bytes()));
        // Reopening keeps users; keys still log in.
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.login(&k2).unwrap().as_deref(), Some("b"));
        let mode: String = s.db.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn unusable_files_are_errors_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![7u8; 4096]).unwrap();
        let err = Store::open(&garbage).err().expect("garbage is refused");
        assert!(err.to_string().contains("garbage.db"), "{err}");
        assert_eq!(std::fs::read(&garbage).unwrap(), vec![7u8; 4096]);
        assert!(Store::open(dir.path()).is_err(), "a directory");
        assert!(Store::open(&dir.path().join("no/such/dir/x.db")).is_err(), "missing parent");
        // A database from a newer skiff.
        let future = dir.path().join("future.db");
        Connection::open(&future).unwrap().execute_batch("PRAGMA user_version = 99").unwrap();
        let err = Store::open(&future).err().expect("newer schema refused");
        assert!(err.to_string().contains("newer"), "{err}");
    }
}

#[cfg(test)]
mod migration_tests {
    use super::*;

    #[test]
    fn timed_bans_load_until_they_end_and_end_only_once_theirs() {
        let mut s = Store::open_in_memory().unwrap();
        s.register("Carol").unwrap();
        let ban = |until_ms| Write::Ban { username: "Carol".into(), reason: Some("spam".into()), at_ms: 10, until_ms };
        s.apply(&[ban(Some(5_000))]).unwrap();
        let bans = s.bans(4_999).unwrap();
        assert_eq!(bans.len(), 1);
        assert_eq!(
            (bans[0].0.as_str(), bans[0].1.until_ms, bans[0].1.reason.as_deref()),
            ("carol", Some(5_000), Some("spam"))
        );
        assert!(s.bans(5_000).unwrap().is_empty(), "over at its end, restart or not");
        s.apply(&[ban(Some(9_000))]).unwrap();
        s.apply(&[Write::EndBan { username: "carol".into(), until_ms: 5_000 }]).unwrap();
        assert_eq!(s.bans(6_000).unwrap().len(), 1, "a newer ban is not lifted by the old one's end");
        s.apply(&[Write::EndBan { username: "carol".into(), until_ms: 9_000 }]).unwrap();
        assert!(s.bans(0).unwrap().is_empty());
    }

    #[test]
    fn a_version_1_database_is_migrated_keeping_its_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let key = "k".repeat(43);
        {
            let db = Connection::open(&path).unwrap();
            db.execute_batch(
                "CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT NOT NULL UNIQUE COLLATE NOCASE,
                    key_hash BLOB NOT NULL UNIQUE, created_at INTEGER NOT NULL DEFAULT (unixepoch()));
                 PRAGMA user_version = 1;",
            )
            .unwrap();
            db.execute("INSERT INTO users (username, key_hash) VALUES ('Old', ?1)", params![&hash_key(&key)[..]])
                .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        let version: i64 = s.db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(s.login(&key).unwrap().as_deref(), Some("Old"));
        assert!(s.load_sessions().unwrap().is_empty());
        assert_eq!(s.load_messages(10).unwrap(), (vec![], 0));
        let epoch = s.epoch().unwrap();
        assert_eq!(epoch.len(), 8);
        drop(s);
        assert_eq!(Store::open(&path).unwrap().epoch().unwrap(), epoch, "the epoch stays with the database");
    }
}
