//! Another local user, for tests of who may connect to a socket: a child
//! forked from the test process that switches to another uid and gid and
//! then makes **only system calls** (no allocation, no locks), so it is
//! safe to fork from a test binary full of threads.
//!
//! Its work is written as plain functions over values prepared before the
//! fork (a `sockaddr_un`, static byte strings).
#![allow(dead_code)]

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// `nobody` on Debian: not allow-listed anywhere.
pub const NOBODY: u32 = 65534;

/// A forked child running as another user; killed and reaped on drop.
pub struct Stranger {
    pid: libc::pid_t,
    status: Option<i32>,
}

impl Stranger {
    /// Forks a child that drops its supplementary groups, becomes
    /// `uid`/`gid`, runs `work` and exits with what it returns (100 if it
    /// could not switch user). `work` must only make system calls.
    pub fn spawn(uid: u32, gid: u32, work: impl FnOnce() -> i32) -> Self {
        // SAFETY: fork(2); the child below only makes async-signal-safe
        // system calls (setgroups, setgid, setuid, what `work` does, _exit).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: plain system calls in the child; _exit never returns.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    libc::_exit(100);
                }
                libc::_exit(work());
            }
        }
        Stranger { pid, status: None }
    }

    /// Waits for the child to exit (at most `wait`) and returns its exit
    /// code; panics if it was killed by a signal or is still running.
    pub fn wait(&mut self, wait: Duration) -> i32 {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child, with a valid status pointer.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if rc == self.pid {
                assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
                let code = libc::WEXITSTATUS(status);
                self.status = Some(code);
                return code;
            }
            assert!(std::time::Instant::now() < deadline, "child still running");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        if self.status.is_none() {
            // SAFETY: kill and reap our own, not yet reaped, child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// The address of the UNIX socket at `path`, built before a fork.
pub fn unix_address(path: &Path) -> libc::sockaddr_un {
    // SAFETY: sockaddr_un is plain data; all zeros is a valid value.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < address.sun_path.len(), "socket path too long");
    for (to, from) in address.sun_path.iter_mut().zip(bytes) {
        *to = *from as libc::c_char;
    }
    address
}

/// A non-blocking connection to `address`, or -1. System calls only.
pub fn connect(address: &libc::sockaddr_un) -> i32 {
    // SAFETY: socket/connect/close with a valid address of the right size.
    unsafe {
        let fd = libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return -1;
        }
        let len = size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if libc::connect(fd, (address as *const libc::sockaddr_un).cast(), len) != 0 {
            libc::close(fd);
            return -1;
        }
        fd
    }
}

/// Sleeps `ms` milliseconds. System calls only.
pub fn sleep_ms(ms: u64) {
    let pause = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: nanosleep with a valid timespec.
    unsafe { libc::nanosleep(&pause, std::ptr::null_mut()) };
}

/// Milliseconds on the monotonic clock. System calls only.
pub fn now_ms() -> u64 {
    // SAFETY: clock_gettime with a valid timespec pointer.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000
}

/// What a trickler sends, one byte at a time: a request head that never
/// ends (after it, `a` forever).
const TRICKLE: &[u8] = b"GET /v1/health HTTP/1.1\r\nHost: lsvkms\r\nX-Trickle: ";

/// Most connections one trickler keeps.
pub const TRICKLE_CONNECTIONS_MAX: usize = 256;

/// Keeps `connections` connections to `address` trickling one byte each
/// every `interval_ms` for `run_ms`, reconnecting any the server closes.
/// Returns 0. System calls only.
pub fn trickle(
    address: &libc::sockaddr_un,
    connections: usize,
    interval_ms: u64,
    run_ms: u64,
) -> i32 {
    let connections = connections.min(TRICKLE_CONNECTIONS_MAX);
    let mut fds = [-1i32; TRICKLE_CONNECTIONS_MAX];
    let mut sent = [0usize; TRICKLE_CONNECTIONS_MAX];
    let end = now_ms() + run_ms;
    while now_ms() < end {
        for i in 0..connections {
            if fds[i] < 0 {
                fds[i] = connect(address);
                sent[i] = 0;
                if fds[i] < 0 {
                    continue;
                }
            }
            let byte = TRICKLE.get(sent[i]).copied().unwrap_or(b'a');
            // SAFETY: send one byte from a valid buffer; close our own fd.
            let wrote = unsafe {
                libc::send(
                    fds[i],
                    (&raw const byte).cast(),
                    1,
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if wrote == 1 {
                sent[i] += 1;
            } else {
                // SAFETY: closing our own descriptor once.
                unsafe { libc::close(fds[i]) };
                fds[i] = -1;
            }
        }
        sleep_ms(interval_ms);
    }
    0
}
