//! The kernel side of a hand-over: the memfd, descriptor flags, the exec.
