//! Operating a running skiff: `skiff ctl` and the control socket it talks to. A
//! Unix stream socket (mode 0600, never a network peer) served by the reactor's
//! own loop; line-delimited JSON requests and answers (`protocol`, sans IO); the
//! commands carried out on the server's state through storage or Redis (`exec`);
//! the socket's bytes (`listener`); the command-line client (`cli`).

pub mod cli;
pub mod exec;
pub mod listener;
pub mod protocol;

pub use exec::{Ops, ORIGIN_CONN};
pub use protocol::{Answer, Request};
