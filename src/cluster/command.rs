//! The commands a node sends, beside the functions of `library.lua` they call: one
//! constructor per function, arguments in the order the Lua reads them (`a[1]` is
//! always the key prefix). Nothing here decides when to send what.

use super::reply::hex;
use super::PREFIX;

/// The Lua library, loaded (REPLACE) on every connect: the running binary's version
/// of every function is the one its node calls.
pub const LIBRARY: &str = include_str!("library.lua");

pub type Command = Vec<Vec<u8>>;

pub fn fcall(name: &str, args: &[&str]) -> Command {
    let mut v = vec![b"FCALL".to_vec(), name.as_bytes().to_vec(), b"0".to_vec()];
    v.extend(args.iter().map(|a| a.as_bytes().to_vec()));
    v
}

pub fn auth(password: &str) -> Command {
    vec![b"AUTH".to_vec(), password.as_bytes().to_vec()]
}

pub fn select(db: u32) -> Command {
    vec![b"SELECT".to_vec(), db.to_string().into_bytes()]
}

/// What is loaded: the library without its comment lines and indentation. Redis
/// refuses a bulk over 16 KB from a client not yet authenticated (FUNCTION LOAD is
/// pipelined right behind AUTH) and drops the link, so with a wrong password the
/// node would never read the WRONGPASS that says why.
/// Stripped once per process: every connect loads it, and the fuzz worlds connect
/// two nodes per input (stripping 20 KB of Lua was a sixth of their time).
fn library_code() -> &'static str {
    static CODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CODE.get_or_init(|| {
        let lines: Vec<&str> =
            LIBRARY.lines().map(str::trim_start).filter(|l| !l.is_empty() && !l.starts_with("--")).collect();
        lines.join("\n")
    })
}

pub fn load_library() -> Command {
    ["FUNCTION", "LOAD", "REPLACE", library_code()].iter().map(|a| a.as_bytes().to_vec()).collect()
}

pub fn subscribe() -> Command {
    vec![b"SUBSCRIBE".to_vec(), format!("{PREFIX}room").into_bytes()]
}

pub fn register(username: &str, key_hash: &[u8; 32]) -> Command {
    fcall("skiff_register", &[PREFIX, &username.to_ascii_lowercase(), username, &hex(key_hash)])
}

pub fn login(key_hash: &[u8; 32], session: &[u8; 32], ttl_ms: u128, cap: usize) -> Command {
    fcall("skiff_login", &[PREFIX, &hex(key_hash), &hex(session), &ttl_ms.to_string(), &cap.to_string()])
}

pub fn find_user(name: &str) -> Command {
    vec![b"HGET".to_vec(), format!("{PREFIX}users").into_bytes(), name.to_ascii_lowercase().into_bytes()]
}

pub fn session(id_hash: &[u8; 32]) -> Command {
    fcall("skiff_session", &[PREFIX, &hex(id_hash)])
}

pub fn logout(id_hash: &[u8; 32]) -> Command {
    fcall("skiff_logout", &[PREFIX, &hex(id_hash)])
}

/// `skiff_reassert`: the session of a socket this node holds, written again for
/// `ttl_ms` if this Redis lacks it and the user is still the one registered at
/// `created` (empty: not known here).
pub fn reassert(id_hash: &[u8; 32], name: &str, ttl_ms: u128, created: &str) -> Command {
    let (hash, lower, ttl) = (hex(id_hash), name.to_ascii_lowercase(), ttl_ms.to_string());
    fcall("skiff_reassert", &[PREFIX, &hash, &lower, name, &ttl, created])
}

/// `WAIT 1 ms`: answers once a replica has every write this link made before it, or
/// after `ms` with 0.
pub fn wait_replica(ms: u128) -> Command {
    vec![b"WAIT".to_vec(), b"1".to_vec(), ms.to_string().into_bytes()]
}

pub fn renew(id_hash: &[u8; 32], ttl_ms: u128) -> Command {
    fcall("skiff_renew", &[PREFIX, &hex(id_hash), &ttl_ms.to_string()])
}

/// `cap`: the most sockets the user may hold across the cluster, this one included.
pub fn join(name: &str, node: &str, token: &str, v2: bool, cap: usize) -> Command {
    let (lower, v2, cap) = (name.to_ascii_lowercase(), if v2 { "1" } else { "0" }, cap.to_string());
    fcall("skiff_join", &[PREFIX, &lower, name, node, token, v2, &cap])
}

/// `skiff_devices`: this node opened (`delta` > 0) or closed sockets of a user it
/// holds, beside the one its join made.
pub fn devices(name: &str, node: &str, delta: i64) -> Command {
    fcall("skiff_devices", &[PREFIX, &name.to_ascii_lowercase(), name, node, &delta.to_string()])
}

pub fn leave(name: &str, node: &str) -> Command {
    fcall("skiff_leave", &[PREFIX, &name.to_ascii_lowercase(), name, node])
}

pub fn stop(node: &str) -> Command {
    fcall("skiff_stop", &[PREFIX, node])
}

pub fn heartbeat(node: &str, ttl_ms: u128) -> Command {
    fcall("skiff_heartbeat", &[PREFIX, node, &ttl_ms.to_string()])
}

pub fn reap() -> Command {
    fcall("skiff_reap", &[PREFIX])
}

/// `skiff_sync`: this node is alive (`ttl_ms`), proposes `epoch` should Redis have
/// none, has seen the history up to `seen` (epoch, last id), and holds these
/// WebSockets (name, connection token).
pub fn sync(
    node: &str,
    ttl_ms: u128,
    epoch: &str,
    keep: usize,
    seen: (&str, u64),
    users: &[(String, String)],
) -> Command {
    let (ttl, keep, seen_id) = (ttl_ms.to_string(), keep.to_string(), seen.1.to_string());
    let mut args: Vec<&str> = vec![PREFIX, node, &ttl, epoch, &keep, seen.0, &seen_id];
    let lowers: Vec<String> = users.iter().map(|(name, _)| name.to_ascii_lowercase()).collect();
    for ((name, token), lower) in users.iter().zip(&lowers) {
        args.extend([lower.as_str(), name.as_str(), token.as_str()]);
    }
    fcall("skiff_sync", &args)
}

/// `skiff_message`'s arguments, borrowed: this runs for every message, so they are
/// encoded straight from the text instead of being copied into a `Command`.
pub fn message<'a>(node: &'a str, token: &'a str, author: &'a str, text: &'a str, keep: &'a str) -> [&'a str; 9] {
    ["FCALL", "skiff_message", "0", PREFIX, node, token, author, text, keep]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(c: &Command) -> Vec<String> {
        c.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect()
    }

    /// The argument order `library.lua` reads: a user's lowercased name first (the
    /// key), then the name as registered.
    #[test]
    fn calls_put_their_arguments_where_the_lua_reads_them() {
        assert_eq!(
            words(&join("Ann", "n1", "3.9", true, 5)),
            ["FCALL", "skiff_join", "0", PREFIX, "ann", "Ann", "n1", "3.9", "1", "5"]
        );
        assert_eq!(words(&devices("Ann", "n1", -2)), ["FCALL", "skiff_devices", "0", PREFIX, "ann", "Ann", "n1", "-2"]);
        let users = [("Bob".to_owned(), "1.2".to_owned())];
        assert_eq!(
            words(&sync("n1", 6000, "e9", 100, ("e1", 41), &users)),
            ["FCALL", "skiff_sync", "0", PREFIX, "n1", "6000", "e9", "100", "e1", "41", "bob", "Bob", "1.2"]
        );
        assert_eq!(words(&find_user("ZED")), ["HGET", "skiff:users", "zed"]);
        assert!(LIBRARY.contains("redis.register_function('skiff_sync'"));
        let sent = &load_library()[3];
        assert!(sent.starts_with(b"#!lua name=skiff\n"), "the shebang line stays first");
    }

    #[test]
    fn the_library_loaded_fits_what_redis_takes_before_auth() {
        let code = library_code();
        assert!(code.starts_with("#!lua name=skiff\n") && code.contains("redis.register_function('skiff_sync'"));
        assert!(!code.contains("\n--"));
        assert!(code.len() < 16 * 1024 - 1024, "{} bytes: keep a margin under 16 KB", code.len());
    }
}
