//! Where the cluster's Redis is: the parsed `--redis` value (parsing stays with the
//! other flags in `config`). Here, in the engine, so that the engine needs nothing
//! from `config` and the two no longer import each other.

use std::net::SocketAddr;

/// `redis://[:PASSWORD@]HOST:PORT[/DB]` or
/// `redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]`, its hosts
/// resolved once at start.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub target: RedisTarget,
    pub password: Option<String>,
    pub db: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Server(SocketAddr),
    /// Whichever server these sentinels name as the primary (`cluster::sentinel`).
    Sentinels(super::sentinel::SentinelSet),
}

// Never print the password: logs and panics see the addresses only.
impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            RedisTarget::Server(addr) => write!(f, "redis://{addr}/{}", self.db),
            RedisTarget::Sentinels(s) => {
                let hosts: Vec<String> = s.addrs.iter().map(SocketAddr::to_string).collect();
                write!(f, "redis+sentinel://{}/{}/{}", hosts.join(","), s.master, self.db)
            }
        }
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}
