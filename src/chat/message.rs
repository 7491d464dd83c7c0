//! A chat message as the room ordered it: the one shape it has from the chat core to
//! the store and back at start-up, across a hand-over, and off the Redis channel. The
//! history ring keeps its own form of it (`history::Entry`: a shared author and the
//! encoded frame); the wire formats (the room channel's `M` event, the JSON frames)
//! are encodings of this.

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub id: u64,
    /// Server time, Unix milliseconds.
    pub ts: i64,
    pub author: String,
    pub text: String,
}
