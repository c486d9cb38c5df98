//! The volume lock: one process at a time may have a volume open for writing.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::VolumeError;

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
    pub fn acquire(dir: &Path, read_only: bool) -> Result<Self, VolumeError> {
        Self::acquire_file(&dir.join(LOCK_FILE), read_only).map_err(|e| match e {
            VolumeError::Busy { .. } => VolumeError::Busy {
                path: dir.to_path_buf(),
            },
            other => other,
        })
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
