//! The kernel side of a hand-over, kept thin: the binary's path, the memfd the
//! state travels in, which descriptors survive the exec, the exec itself, and on
//! the other side, finding what was handed over. Nothing here knows the state.

use super::ENV;
use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::OnceLock;

static EXE: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Remembers the path this binary was started from. Call first thing in `main`:
/// once a package upgrade has replaced the file, /proc/self/exe names a deleted
/// inode, while the path itself leads to the new binary.
pub fn remember_exe() {
    EXE.get_or_init(|| {
        let from_proc = std::fs::read_link("/proc/self/exe").ok();
        from_proc.or_else(|| {
            let arg0 = PathBuf::from(std::env::args_os().next()?);
            (arg0.components().count() > 1).then(|| std::path::absolute(&arg0).unwrap_or(arg0))
        })
    });
}

/// The path to execute on a hand-over.
pub fn exe() -> Option<PathBuf> {
    EXE.get().cloned().flatten()
}

/// Whether `path` is there and executable by us (access(2), X_OK).
pub fn check_executable(path: &std::path::Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: access only reads the NUL-terminated path it is given.
    if unsafe { libc::access(c.as_ptr(), libc::X_OK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An empty memory file, close-on-exec (the caller clears that flag just before
/// the exec).
pub fn memfd() -> io::Result<File> {
    let name = c"skiff-handover";
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new
    // descriptor or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// A memory file holding `bytes`, positioned at its start.
pub fn memfd_with(bytes: &[u8]) -> io::Result<OwnedFd> {
    let mut file = memfd()?;
    file.write_all(bytes)?;
    file.rewind()?;
    Ok(file.into())
}

/// The hand-over's memory file, mapped read-only where it is: the state is decoded
/// in place, not copied into this process first, and the pages it is done with
/// leave this process's memory (`release`).
pub struct StateBytes {
    file: File,
    ptr: *mut libc::c_void,
    len: usize,
    /// Bytes below this are given back to the kernel for good (holes punched).
    punched: std::cell::Cell<usize>,
}

impl StateBytes {
    fn map(file: File) -> io::Result<StateBytes> {
        let len = usize::try_from(file.metadata()?.len()).map_err(io::Error::other)?;
        if len == 0 {
            return Ok(StateBytes { file, ptr: std::ptr::null_mut(), len, punched: Default::default() });
        }
        // Populated in one call: a page fault for each of 30,000 pages of a large
        // state cost more than reading them. The pages are the memory file's own,
        // shared, not copies.
        let flags = libc::MAP_SHARED | libc::MAP_POPULATE;
        // SAFETY: a new read-only shared mapping of a file we own; nothing else in
        // this process writes the file while it is mapped.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, flags, file.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(StateBytes { file, ptr, len, punched: Default::default() })
    }

    pub fn bytes(&self) -> &[u8] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }

    /// The decoder is done with the bytes below `upto`: their pages leave this
    /// process's resident set and are freed from the memory file (a probe never
    /// does that: the next image reads them).
    pub fn release(&self, upto: usize) {
        let page = page_size();
        let end = upto.min(self.len) / page * page;
        let from = self.punched.get();
        if self.ptr.is_null() || end <= from {
            return;
        }
        // SAFETY: [ptr + from, ptr + end) lies in the mapping; MADV_DONTNEED on a
        // shared file mapping only drops this process's view of those pages, which
        // the punched hole then frees. A failure of either only keeps memory.
        unsafe {
            libc::madvise(self.ptr.cast::<u8>().add(from).cast(), end - from, libc::MADV_DONTNEED);
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            libc::fallocate(self.file.as_raw_fd(), mode, from as libc::off_t, (end - from) as libc::off_t);
        }
        self.punched.set(end);
    }
}

impl Drop for StateBytes {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: the mapping made in `map`, unmapped once.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as usize
}

/// Lets `fd` survive the exec (`inherit`) or not.
pub fn set_inherit(fd: RawFd, inherit: bool) -> io::Result<()> {
    // FD_CLOEXEC is the only descriptor flag Linux has, so the flags are set without
    // reading them first: one syscall per socket, 10,000 fewer in a large hand-over.
    let flags = if inherit { 0 } else { libc::FD_CLOEXEC };
    // SAFETY: F_SETFD only writes the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Replaces this process with `exe`, same arguments, same environment plus `ENV`
/// set to `value`. Returns only if the exec failed.
pub fn exec(exe: &std::path::Path, value: &str) -> io::Error {
    let cstr = |b: &[u8]| CString::new(b).map_err(io::Error::other);
    let build = || -> io::Result<(CString, Vec<CString>, Vec<CString>)> {
        let path = cstr(exe.as_os_str().as_bytes())?;
        let argv = std::env::args_os().map(|a| cstr(a.as_bytes())).collect::<io::Result<Vec<_>>>()?;
        let mut envp = Vec::new();
        for (k, v) in std::env::vars_os().filter(|(k, _)| k != ENV) {
            let mut kv: OsString = k;
            kv.push("=");
            kv.push(v);
            envp.push(cstr(kv.as_bytes())?);
        }
        envp.push(cstr(format!("{ENV}={value}").as_bytes())?);
        Ok((path, argv, envp))
    };
    let (path, argv, envp) = match build() {
        Ok(parts) => parts,
        Err(e) => return e,
    };
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    // SAFETY: path, argv and envp are NUL-terminated strings kept alive by the
    // CStrings above, and both arrays end with a null pointer, as execve requires.
    unsafe { libc::execve(path.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
    io::Error::last_os_error()
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock on both sides of the exec, so
/// the new process can say how long the pause was.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The value of `ENV` for a hand-over.
/// `epoll`: the epoll instance, its watches of the handed sockets intact; `since_ns`
/// and `exec_ns`: when the hand-over began and when the exec was called.
pub fn env_value(memfd: RawFd, listener: RawFd, epoll: RawFd, since_ns: u64, exec_ns: u64) -> String {
    format!("memfd={memfd},listener={listener},epoll={epoll},since={since_ns},exec={exec_ns}")
}

/// What the previous process left: its listener, the bytes of its hand-over, and
/// when it began, when it called exec and when this image started (`monotonic_ns`;
/// 0 if the previous process did not say).
pub struct Inherited {
    pub listener: OwnedFd,
    /// The previous process's epoll instance, if it handed one over: every handed
    /// socket is still watched there under its slab key, so nothing is registered
    /// again (10,000 epoll_ctl calls are most of a large hand-over's pause).
    pub epoll: Option<OwnedFd>,
    pub bytes: io::Result<StateBytes>,
    pub since_ns: u64,
    pub exec_ns: u64,
    pub main_ns: u64,
}

/// Takes over what `ENV` names, if this process was started by a hand-over, and
/// clears it from the environment. `Err` is a line for the log: the variable does
/// not name a usable listener (the process then starts as if fresh).
pub fn inherit() -> Option<Result<Inherited, String>> {
    let main_ns = monotonic_ns();
    let value = std::env::var(ENV).ok()?;
    // Single-threaded still (first thing in main): nothing reads the environment
    // concurrently. The next exec must not see a stale value either.
    std::env::remove_var(ENV);
    Some(parse_and_take(&value).map(|i| Inherited { main_ns, ..i }))
}

pub(super) fn parse_and_take(value: &str) -> Result<Inherited, String> {
    let mut memfd = None;
    let mut listener = None;
    let (mut since_ns, mut exec_ns) = (0, 0);
    let mut epoll = None;
    for part in value.split(',') {
        match part.split_once('=') {
            Some(("memfd", v)) => memfd = v.parse::<RawFd>().ok(),
            Some(("listener", v)) => listener = v.parse::<RawFd>().ok(),
            Some(("since", v)) => since_ns = v.parse().unwrap_or(0),
            Some(("exec", v)) => exec_ns = v.parse().unwrap_or(0),
            Some(("epoll", v)) => epoll = v.parse::<RawFd>().ok(),
            _ => {}
        }
    }
    let listener =
        listener.filter(|&fd| is_listening_socket(fd)).ok_or(format!("{ENV}={value}: no listening socket"))?;
    let listener = own(listener);
    let epoll = epoll.filter(|&fd| fd > 2 && fd != listener.as_raw_fd() && is_epoll(fd)).map(own);
    let bytes = match memfd.filter(|&fd| fd > 2 && fd != listener.as_raw_fd() && is_open(fd)) {
        Some(fd) => StateBytes::map(File::from(own(fd))),
        None => Err(io::Error::other("no state descriptor")),
    };
    Ok(Inherited { listener, epoll, bytes, since_ns, exec_ns, main_ns: 0 })
}

/// Takes ownership of a descriptor the previous process handed over. Callers check
/// it is open first.
pub fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` is open (checked by the caller) and was handed over by the
    // previous image of this process: no other owner exists in this one.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD reads a descriptor's flags; an unopened one gives EBADF.
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
}

fn is_epoll(fd: RawFd) -> bool {
    is_open(fd)
        && std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .is_ok_and(|target| target.as_os_str().as_bytes() == b"anon_inode:[eventpoll]")
}

/// Makes `poll` the epoll instance `inherited` is (dup2 onto its descriptor, which
/// stays close-on-exec), so the watches made by the previous process hold. mio
/// keeps no registrations of its own on Linux: the kernel's list is the list.
pub fn adopt_epoll(poll: &mio::Poll, inherited: OwnedFd) -> io::Result<()> {
    let target = poll.as_raw_fd();
    // SAFETY: both descriptors are open; dup2 closes `target`'s old epoll instance
    // and makes the number refer to the inherited one, which `poll` then owns.
    if unsafe { libc::dup2(inherited.as_raw_fd(), target) } < 0 {
        return Err(io::Error::last_os_error());
    }
    set_inherit(target, false)
}

/// Takes `fd` out of the adopted epoll instance `poll`, so that it can be watched
/// anew through mio (which, in debug builds, refuses to change a watch it did not
/// make). A descriptor that was not watched there is fine too.
pub fn unwatch(poll: &mio::Poll, fd: RawFd) -> io::Result<()> {
    // SAFETY: EPOLL_CTL_DEL reads no event argument; both descriptors are open.
    let r = unsafe { libc::epoll_ctl(poll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
    match r {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            e => Err(e),
        },
    }
}

fn is_socket(fd: RawFd) -> bool {
    // SAFETY: fstat writes the zeroed struct it is given.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
    }
}

fn is_listening_socket(fd: RawFd) -> bool {
    if fd <= 2 || !is_open(fd) || !is_socket(fd) {
        return false;
    }
    let mut on: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `on`.
    let r = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN, (&mut on as *mut libc::c_int).cast(), &mut len)
    };
    r == 0 && on == 1
}

/// Sockets this process inherited (open, not close-on-exec) other than `except`:
/// what the previous process handed over when its list of them is unreadable.
pub fn inherited_sockets(except: &[RawFd]) -> Vec<OwnedFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return Vec::new() };
    let fds: Vec<RawFd> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    fds.into_iter()
        .filter(|&fd| fd > 2 && !except.contains(&fd) && is_socket(fd))
        // SAFETY: F_GETFD reads the flags of a descriptor listed as open.
        .filter(|&fd| matches!(unsafe { libc::fcntl(fd, libc::F_GETFD) }, f if f >= 0 && f & libc::FD_CLOEXEC == 0))
        .map(own)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_memfd_holds_the_bytes_from_its_start_and_the_inherit_flag_flips() {
        let fd = memfd_with(b"state bytes").unwrap();
        set_inherit(fd.as_raw_fd(), true).unwrap();
        // SAFETY: F_GETFD on a descriptor we own.
        assert_eq!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) } & libc::FD_CLOEXEC, 0);
        set_inherit(fd.as_raw_fd(), false).unwrap();
        let mut got = String::new();
        File::from(fd).read_to_string(&mut got).unwrap();
        assert_eq!(got, "state bytes");
    }

    #[test]
    fn a_value_without_a_listening_socket_is_refused() {
        assert!(parse_and_take("memfd=0,listener=1").is_err());
        assert!(parse_and_take("garbage").is_err());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = l.as_raw_fd();
        std::mem::forget(l); // owned by the Inherited below from here on
        let got = parse_and_take(&env_value(-1, fd, -1, 5, 7)).unwrap();
        assert_eq!(got.exec_ns, 7);
        assert!(got.epoll.is_none(), "no epoll instance named");
        assert_eq!((got.listener.as_raw_fd(), got.since_ns), (fd, 5));
        assert!(got.bytes.is_err(), "no memfd named");
    }
}
