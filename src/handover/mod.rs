//! Upgrading in place: on SIGUSR2 the running process re-executes its own binary
//! (a new one after a package upgrade) and hands it the listener, every plain-TCP
//! connection and all the state that goes with them, so no client notices.
//!
//! `state` is the plain data that travels and `codec` its bytes: both sans-IO and
//! unit tested. `os` is the thin part that touches the kernel (the memfd, descriptor
//! flags, the exec itself). Turning a live server into a `State` and back is done
//! next to the private fields it reads: `server/handover.rs`, `conn/handover.rs`,
//! `chat/handover.rs`.

pub mod codec;
pub mod os;
pub mod probe;
pub mod state;

pub use codec::{Decoded, Handed};
pub use state::State;

/// The environment variable that tells a starting skiff it is taking over, and
/// where: `memfd=N,listener=M`. Its name is what the Debian maintainer scripts look
/// for in a running binary to know it can hand over.
pub const ENV: &str = "SKIFF_HANDOVER";
