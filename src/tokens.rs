//! Every mio token the loop uses, in one place. Connections take their slab key as
//! token (small numbers, at most the open-file limit); everything else sits at the
//! top of the range, far from them, and the test below keeps the groups apart.

use mio::Token;

/// The HTTP/WebSocket listener.
pub const LISTENER: Token = Token(usize::MAX - 1);
/// Stop and reload signals (signal-hook's pipe).
pub const SIGNALS: Token = Token(usize::MAX - 2);
/// The storage threads have replies for the loop.
pub const STORAGE: Token = Token(usize::MAX - 3);
/// Cluster mode: the Redis link for commands and their replies.
pub const REDIS_CMD: Token = Token(usize::MAX - 4);
/// Cluster mode: the Redis link subscribed to the room's channel.
pub const REDIS_SUB: Token = Token(usize::MAX - 5);
/// The control socket's listener (`skiff ctl`).
pub const CONTROL_LISTENER: Token = Token(usize::MAX - 6);
/// SIGUSR2: hand everything over to the binary at our own path.
pub const UPGRADE: Token = Token(usize::MAX - 9);
/// Sentinel mode: the link to a sentinel.
pub const SENTINEL: Token = Token(usize::MAX - 10);
/// Sentinel mode: watching link `i` is `SENTINEL_WATCH_TOP - i`.
pub const SENTINEL_WATCH_TOP: usize = usize::MAX - 20;
/// Control clients: client `k` is `CONTROL_CLIENT_BASE + k`, far above any
/// connection's slab key and below the fixed tokens.
pub const CONTROL_CLIENT_BASE: usize = usize::MAX / 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_tokens_and_the_ranges_never_meet() {
        let fixed =
            [LISTENER, SIGNALS, STORAGE, REDIS_CMD, REDIS_SUB, CONTROL_LISTENER, UPGRADE, SENTINEL].map(|t| t.0);
        let mut sorted = fixed.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), fixed.len(), "two fixed tokens are the same");
        let watches = SENTINEL_WATCH_TOP + 1 - crate::cluster::sentinel::MAX_SENTINELS..=SENTINEL_WATCH_TOP;
        let controls = CONTROL_CLIENT_BASE..CONTROL_CLIENT_BASE + crate::control::listener::MAX_CLIENTS;
        for t in fixed {
            assert!(!watches.contains(&t) && !controls.contains(&t), "{t}");
        }
        assert!(controls.end < *watches.start());
        // Connections: slab keys, below any open-file limit a process can have.
        assert!(CONTROL_CLIENT_BASE > u32::MAX as usize);
    }
}
