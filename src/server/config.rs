//! What the server takes from the command line (and what tests and fuzz targets give
//! it instead).

use crate::api::ApiConfig;
use crate::chat::room::RateLimit;
use crate::chat::ChatConfig;
use crate::conn::ConnConfig;
use crate::http::Limits;
use std::net::IpAddr;

/// What the server needs from the configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub chat: ChatConfig,
    pub conn: ConnConfig,
    pub register_per_minute: u32,
    pub failed_logins_per_minute: u32,
    /// Open connections per client address; 0 = off.
    pub max_connections_per_ip: u32,
}

impl ServerConfig {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let message_rate = (cfg.messages_per_second > 0)
            .then_some(RateLimit { per_second: cfg.messages_per_second, burst: cfg.message_burst });
        ServerConfig {
            chat: ChatConfig {
                session_ttl: cfg.session_ttl,
                // In cluster mode Redis keeps the per-user cap; a node's own cache of
                // sessions must never evict one on its own.
                max_sessions_per_user: if cfg.redis.is_some() { u32::MAX as usize } else { cfg.max_sessions_per_user },
                max_sessions: cfg.max_sessions,
                message_rate,
                history: cfg.history,
                max_devices: cfg.max_devices,
            },
            conn: ConnConfig {
                api: ApiConfig {
                    allowed_origins: cfg.allowed_origins.clone(),
                    allowed_hosts: cfg.allowed_hosts.clone(),
                    static_dir: cfg.static_dir.clone(),
                    metrics_public: cfg.metrics_public,
                    cluster: cfg.redis.is_some(),
                },
                limits: Limits::default(),
                limit_loopback: cfg.limit_loopback,
                trusted_proxies: cfg.trusted_proxies.clone(),
                hsts: crate::tls::hsts(cfg.tls_cert.is_some(), cfg.hsts_max_age),
                frame_rate: (cfg.frames_per_second > 0).then_some(RateLimit {
                    per_second: cfg.frames_per_second,
                    burst: cfg.frames_per_second.saturating_mul(2),
                }),
                memory_budget: cfg.memory_budget,
            },
            register_per_minute: cfg.register_per_minute,
            failed_logins_per_minute: cfg.failed_logins_per_minute,
            max_connections_per_ip: per_ip_cap(cfg.max_connections_per_ip, cfg.max_connections),
        }
    }

    /// Defaults for tests and fuzzing: no limits, nothing public.
    pub fn for_tests(chat: ChatConfig, trusted_proxies: Vec<IpAddr>, metrics_public: bool) -> Self {
        ServerConfig {
            chat,
            conn: ConnConfig {
                api: ApiConfig { metrics_public, ..ApiConfig::default() },
                trusted_proxies,
                ..ConnConfig::default()
            },
            register_per_minute: 0,
            failed_logins_per_minute: 0,
            max_connections_per_ip: 0,
        }
    }
}

/// One address never holds more than half of an explicit `--max-connections`,
/// whatever `--max-connections-per-ip` says: newcomers from elsewhere always find
/// room. (The default maximum, from the descriptor limit, is far above any cap.)
fn per_ip_cap(per_ip: u32, max_connections: Option<usize>) -> u32 {
    match max_connections {
        Some(max) if per_ip > 0 => per_ip.min(u32::try_from(max / 2).unwrap_or(u32::MAX).max(1)),
        _ => per_ip,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_address_gets_at_most_half_the_house() {
        assert_eq!(super::per_ip_cap(64, None), 64);
        assert_eq!(super::per_ip_cap(64, Some(300)), 64);
        assert_eq!(super::per_ip_cap(64, Some(40)), 20);
        assert_eq!(super::per_ip_cap(64, Some(1)), 1);
        assert_eq!(super::per_ip_cap(0, Some(40)), 0, "0 stays off");
    }
}
