//! The volume lock: one process at a time may have a volume open for writing.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use super::VolumeError;

/// How long a writer waits for readers (`lsvblk status`, inspection: short
/// read-only opens) to let go of the lock before it reports it busy. A
/// writer holding it is reported at once.
pub const READERS_WAIT: Duration = Duration::from_secs(5);

/// File name of the lock file inside a volume directory.
pub const LOCK_FILE: &str = "lock";

/// An flock(2) on the volume's lock file, released when dropped (or when the
/// process dies, so a crash never leaves a stale lock).
#[derive(Debug)]
pub struct VolumeLock {
    _file: File,
}

impl VolumeLock {
    /// Takes the lock: exclusive for a writer, shared for a read-only open.
    /// A writer waits up to [`READERS_WAIT`] while only readers hold it (a
    /// `status` that opened the volume between two daemons of a hand-over
    /// or a restart must not make the next one fail); another writer makes
    /// it `Busy` at once.
    pub fn acquire(dir: &Path, read_only: bool) -> Result<Self, VolumeError> {
        let path = dir.join(LOCK_FILE);
        let deadline = Instant::now() + READERS_WAIT;
        loop {
            match Self::acquire_file(&path, read_only) {
                Err(VolumeError::Busy { .. })
                    if !read_only
                        && Instant::now() < deadline
                        && Self::acquire_file(&path, true).is_ok() =>
                {
                    // Only readers hold it (a shared lock was granted and
                    // is dropped again): they finish soon.
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(VolumeError::Busy { .. }) => {
                    return Err(VolumeError::Busy {
                        path: dir.to_path_buf(),
                    });
                }
                other => return other,
            }
        }
    }

    /// Takes an flock on the file at `path` (created if missing), shared or
    /// exclusive, without waiting: `Busy` when another process holds it.
    pub fn acquire_file(path: &Path, shared: bool) -> Result<Self, VolumeError> {
        let path = path.to_path_buf();
        let file = crate::fsmode::private_file_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| VolumeError::Io {
                path: path.clone(),
                source: e,
            })?;
        let mode = if shared { libc::LOCK_SH } else { libc::LOCK_EX };
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::WouldBlock {
                return Err(VolumeError::Busy { path });
            }
            return Err(VolumeError::Io {
                path,
                source: error,
            });
        }
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_waits_for_readers_but_not_for_another_writer() {
        let dir = tempfile::tempdir().unwrap();
        // A reader (a status) holds the lock for a moment.
        let reader = VolumeLock::acquire(dir.path(), true).unwrap();
        let released = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(reader);
        });
        let asked = Instant::now();
        let writer = VolumeLock::acquire(dir.path(), false).unwrap();
        assert!(asked.elapsed() >= Duration::from_millis(150));
        released.join().unwrap();
        // A second writer is refused at once; so is a reader.
        let asked = Instant::now();
        assert!(matches!(
            VolumeLock::acquire(dir.path(), false),
            Err(VolumeError::Busy { .. })
        ));
        assert!(matches!(
            VolumeLock::acquire(dir.path(), true),
            Err(VolumeError::Busy { .. })
        ));
        assert!(asked.elapsed() < READERS_WAIT / 2);
        drop(writer);
    }
}
