//! The application's start-up, apart from the loop that runs it: one node from its
//! SQLite file (sessions, history, bans, the id reservation and its arithmetic), or a
//! node of a cluster. A hand-over's new image (and its probe) take the same steps.

use crate::chat::history::RESERVE_BLOCK;
use crate::cluster::{Cluster, ClusterConfig};
use crate::config::Config;
use crate::log;
use crate::server::{Server, ServerConfig};
use crate::storage::Storage;
use crate::store::Store;
use crate::tls::Transport;
use mio::Waker;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The server `cfg` describes: on `store` (one node), or without one a cluster node.
/// `load_saved`: sessions and history come from disk (not on a hand-over, which
/// brings its own).
pub fn server(
    cfg: &Config,
    store: Option<Store>,
    waker: Arc<Waker>,
    load_saved: bool,
) -> Result<Server<Transport>, String> {
    match store {
        Some(store) => {
            let mut server = single_node(cfg, store, waker.clone(), load_saved)?;
            server.control.set_database(cfg.db.clone(), waker);
            Ok(server)
        }
        None => {
            let storage = Storage::files_only(waker).map_err(|e| e.to_string())?;
            let (now, unix_ms) = wall_clock();
            let mut server = Server::new(ServerConfig::from_config(cfg), storage, now, unix_ms);
            join_cluster(&mut server, cfg)?;
            Ok(server)
        }
    }
}

/// One moment on the monotonic clock and as Unix milliseconds: the cores are given
/// both and never read a clock themselves.
pub(crate) fn wall_clock() -> (Instant, i64) {
    let unix_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    (Instant::now(), unix_ms)
}

/// One process, one SQLite file: its sessions and history come back, then it moves
/// to the storage writer thread. A hand-over brings its own sessions and history
/// (`load_saved` false); the bans and the id reservation always come from disk.
fn single_node(
    cfg: &Config,
    mut store: Store,
    waker: Arc<Waker>,
    load_saved: bool,
) -> Result<Server<Transport>, String> {
    if load_saved {
        crate::store::warn_if_open_to_others(&cfg.db);
    }
    let banned = store.bans(wall_clock().1).map_err(|e| format!("cannot read bans: {e}"))?;
    // A hand-over continues the ids it carries, all below the reservation on disk.
    let reserved = store.reserved_ids().map_err(|e| format!("cannot read the id reservation: {e}"))?;
    let saved = if load_saved { Some(load_saved_state(cfg, &mut store)?) } else { None };
    let storage = Storage::spawn(store, &cfg.db, waker, Duration::ZERO).map_err(|e| e.to_string())?;
    let (now, unix_ms) = wall_clock();
    let mut server = Server::new(ServerConfig::from_config(cfg), storage, now, unix_ms);
    server.cx.chat.set_banned(banned);
    match saved {
        Some(saved) => restore_saved(&mut server, saved),
        None => server.cx.chat.set_reserved_ids(reserved),
    }
    Ok(server)
}

/// What a start from disk brings back: sessions, the history (epoch, messages, the
/// last id stored and the last id that may have been given), and the durable
/// reservation the ids continue under.
pub(crate) struct Saved {
    sessions: Vec<crate::store::StoredSession>,
    epoch: String,
    messages: Vec<crate::chat::Message>,
    last_stored: u64,
    last_id: u64,
    reserved: u64,
    history: usize,
    /// The database is a restored backup taken at this moment (Unix ms).
    restored: Option<i64>,
}

/// Reads the saved state and reserves the first block of ids (on `store`, before the
/// writer starts: no id may be given before a reservation covers it).
pub(crate) fn load_saved_state(cfg: &Config, store: &mut Store) -> Result<Saved, String> {
    // First: a restored backup's history gets its new epoch before anything reads it.
    let restored = store.begin_after_restore().map_err(|e| format!("cannot start from the backup: {e}"))?;
    let sessions = store.load_sessions().map_err(|e| format!("cannot read sessions: {e}"))?;
    let epoch = store.epoch().map_err(|e| format!("cannot read the history's epoch: {e}"))?;
    let (messages, last_stored) = store.load_messages(cfg.history).map_err(|e| format!("cannot read history: {e}"))?;
    // After a crash the reservation runs past the last stored message: ids up to it
    // may have been seen live, so the next one follows it. A backup carries the
    // reservation of its moment: the new epoch's ids follow it too, so no id the
    // original had given by then names another message.
    let on_disk = store.reserved_ids().map_err(|e| format!("cannot read the id reservation: {e}"))?;
    let last_id = last_stored.max(on_disk);
    let reserved = last_id + RESERVE_BLOCK;
    Storage::reserve_now(store, reserved).map_err(|e| format!("cannot reserve message ids: {e}"))?;
    Ok(Saved { sessions, epoch, messages, last_stored, last_id, reserved, history: cfg.history, restored })
}

pub(crate) fn restore_saved(server: &mut Server<Transport>, saved: Saved) {
    server.cx.restore_history(&saved.epoch, saved.last_id, saved.messages);
    server.cx.chat.set_reserved_ids(saved.reserved);
    if let Some(taken_ms) = saved.restored {
        let taken = log::rfc3339(Duration::from_millis(taken_ms.max(0) as u64));
        log::info(format_args!("restored from a backup taken at {taken}: new epoch {}", saved.epoch));
    } else if saved.last_id > saved.last_stored && saved.history > 0 {
        // With history off no message is stored and the reservation alone carries the id.
        log::warn(format_args!(
            "the last stop was not clean: message ids {}..={} are skipped, resumes from before them resync",
            saved.last_stored + 1,
            saved.last_id
        ));
    }
    let restored = server.cx.restore_sessions(saved.sessions, Instant::now());
    if restored > 0 {
        log::info(format_args!("{restored} sessions restored"));
    }
}

/// Makes `server` a node of the cluster `cfg` names.
pub(crate) fn join_cluster(server: &mut Server<Transport>, cfg: &Config) -> Result<(), String> {
    let url = cfg.redis.clone().ok_or("cluster mode without --redis")?;
    let cluster_cfg = ClusterConfig {
        url,
        session_ttl: cfg.session_ttl,
        max_sessions_per_user: cfg.max_sessions_per_user,
        history: cfg.history,
        max_devices: cfg.max_devices.max(1),
    };
    server.cx.chat.set_replicated();
    server.cx.cluster = Some(Cluster::new(cluster_cfg, Instant::now()));
    Ok(())
}
