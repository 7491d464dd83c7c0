//! The database's files as the file system sees them: created owner-only, wider
//! modes named at start, and why a file cannot be opened, in the operator's words.

use std::path::Path;

/// Why `path` cannot be opened for writing, in the operator's words, when the file
/// system can say: SQLite's own message ("unable to open database file", "attempt
/// to write a readonly database") names neither the path nor the cause.
pub(super) fn explain(path: &Path, existed: bool) -> Option<String> {
    let shown = path.display();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir_shown = dir.display();
    let meta = std::fs::metadata(dir);
    // "directory . is not writable" would send the operator looking; name it.
    let real = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let real_shown = real.display();
    match meta {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!("cannot create database {shown}: no such directory {dir_shown}"));
        }
        Err(e) => return Some(format!("cannot open database {shown}: directory {dir_shown}: {}", reason(e))),
        Ok(m) if !m.is_dir() => return Some(format!("cannot create database {shown}: {dir_shown} is not a directory")),
        Ok(_) => {}
    }
    if existed {
        if let Err(e) = can_write(path) {
            return Some(format!("database {shown} is read-only ({})", reason(e)));
        }
    }
    if let Err(e) = can_write(dir) {
        let what = if existed { format!("database {shown}") } else { format!("cannot create database {shown}") };
        // SQLite creates the -wal and -shm files beside the database.
        return Some(format!("{what}: directory {real_shown} is not writable ({})", reason(e)));
    }
    None
}

/// Creates `path` empty with mode 0600 whatever the umask; an existing file is an error.
pub(super) fn create_owner_only(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    // Set, not masked: a umask like 0277 would leave the owner unable to write.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// The database and the -wal and -shm files beside it that other local users may
/// read or write (group or other bits), each with its mode: one warning at start.
/// Made by an older skiff, a copy, or a hand: skiff does not change modes it did
/// not choose, it says so.
fn open_to_others(path: &Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let side = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        std::path::PathBuf::from(p)
    };
    [path.to_path_buf(), side("-wal"), side("-shm")]
        .into_iter()
        .filter_map(|p| {
            let mode = std::fs::metadata(&p).ok()?.permissions().mode() & 0o777;
            (mode & 0o077 != 0).then_some((p, mode))
        })
        .collect()
}

/// access(2) for writing with the effective ids, the ones every later write runs as.
fn can_write(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    match unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::W_OK, libc::AT_EACCESS) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn reason(e: std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => "permission denied".into(),
        Some(libc::EROFS) => "read-only file system".into(),
        _ => e.to_string(),
    }
}

/// Other local users could read names and messages: said once at start. The mode
/// is the operator's to change (a group may be meant to read it).
pub fn warn_if_open_to_others(db: &Path) {
    let wide = open_to_others(db);
    if !wide.is_empty() {
        let files: Vec<String> = wide.iter().map(|(p, mode)| format!("{} is mode {mode:04o}", p.display())).collect();
        crate::log::warn(format_args!(
            "{}: other local users may read or change it (chmod 600; skiff creates its files owner-only)",
            files.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn a_new_database_is_owner_only_and_wider_files_are_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let mut s = Store::open(&path).unwrap();
        s.register("a").unwrap();
        let mode = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap().permissions().mode() & 0o777;
        // SQLite gives the -wal and -shm files it creates the database's mode.
        assert_eq!((mode("m.db"), mode("m.db-wal"), mode("m.db-shm")), (0o600, 0o600, 0o600));
        assert!(open_to_others(&path).is_empty());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(open_to_others(&path), [(path.clone(), 0o640)]);
    }
}
