//! skiff: a tiny real-time chat server. The protocol and chat logic are sans-IO
//! cores (`http`, `ws`, `chat`, `api`); `reactor` is the one thread that moves bytes
//! and time between them and the sockets.

pub mod api;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod control;
pub mod handover;
#[cfg(any(test, feature = "harness"))]
pub mod harness;
pub mod http;
pub mod log;
pub mod metrics;
pub mod outq;
pub mod persist;
pub mod proxy;
pub mod ratelimit;
pub mod reactor;
pub mod server;
pub mod signals;
pub mod startup;
pub mod storage;
pub mod store;
pub mod stream;
pub mod timer;
pub mod tls;
pub mod tokens;
pub mod web;
pub mod ws;

/// The version this binary reports (`--version`, `/metrics`, the start-up log).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
