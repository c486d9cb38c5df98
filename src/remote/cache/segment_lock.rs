//! A lock on a segment file that two processes respect: a clone reading
//! its parent's segments holds it shared, from before it looks for what
//! the parent evicted until its read is done; the parent's cache takes it
//! exclusively, without waiting, to punch a segment's records out, and
//! evicts another segment when it cannot. So a hole is never punched
//! between a clone's refill and its read (`flock(2)`: per open file, and
//! gone when the file closes, also when the process dies).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// A shared lock on a segment file, held until dropped.
pub struct SharedLock {
    _file: File,
}

/// Takes a shared lock on the segment file at `path`, waiting while its
/// owner evicts from it. `None` when there is no such file.
pub fn lock_shared(path: &Path) -> io::Result<Option<SharedLock>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    loop {
        // SAFETY: flock only takes the descriptor, open while `file` lives,
        // and an integer operation.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH) } == 0 {
            return Ok(Some(SharedLock { _file: file }));
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Takes an exclusive lock on `file` if nobody holds a shared one (it goes
/// when `file` closes); false when someone does.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: as in `lock_shared`; LOCK_NB makes it return at once.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(error),
    }
}
