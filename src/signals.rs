//! Which thread takes the stop and upgrade signals, and when they wait. The
//! handlers only write a byte into a pipe the loop reads (`reactor`); this module
//! makes sure that byte is never written where nobody will read it: by a storage
//! thread in the instant before an exec, or by a handler-less image across one.

/// The signals that must wait while no handler is installed: their default action
/// ends the process, which half-way through a hand-over loses every connection.
/// The mask survives the exec; the new process unblocks them with handlers in place.
const HELD: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGUSR2, libc::SIGHUP];

pub fn hold(hold: bool) {
    let how = if hold { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
    // SAFETY: pthread_sigmask only changes this thread's mask.
    unsafe { libc::pthread_sigmask(how, &held_set(), std::ptr::null_mut()) };
}

fn held_set() -> libc::sigset_t {
    // SAFETY: a sigset_t is plain data, initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HELD {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Runs `spawn` (which starts a thread) with the held signals blocked, so that the
/// new thread, which inherits the mask, never takes them: a stop signal handled on
/// another thread in the instant before an exec would write its byte into a pipe
/// that the next image never reads. Only the loop's thread takes them; while it
/// holds them they stay pending, and a pending signal survives the exec.
pub fn spawn_without<T>(spawn: impl FnOnce() -> T) -> T {
    // SAFETY: a sigset_t is plain data; pthread_sigmask only changes this thread's
    // mask, which is put back as it was.
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &held_set(), &mut old);
        let out = spawn();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        out
    }
}
