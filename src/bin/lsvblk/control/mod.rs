//! The control socket: how `lsvblk snapshot …`, `lsvblk compact` and
//! `lsvblk status` reach a volume that a running `lsvblk serve` holds
//! (the daemon's exclusive lock keeps every other process off the volume).
//!
//! Newline-delimited JSON over a UNIX stream socket at
//! `<volume dir>/control.sock`, one request per connection: the client sends
//! one [`ControlRequest`] line; the daemon answers with zero or more
//! `{"progress": …}` lines and then exactly one final line, `{"ok": …}` or
//! `{"error": {"message": …, "kind": …}}` (`protocol::ControlReply`).
//!
//! Only the daemon's own uid and root may connect (`SO_PEERCRED`); the
//! socket file is mode 0600 as well.

mod client;
mod protocol;
mod server;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use client::{CallError, call};
pub use protocol::{ControlError, ControlRequest};
pub use server::{ControlHandler, ControlServer};

/// The socket's file name inside the volume directory.
pub const CONTROL_SOCKET_NAME: &str = "control.sock";

/// The control socket of the volume in `volume_dir`: `<volume dir>/control.sock`.
pub fn control_socket_path(volume_dir: &Path) -> PathBuf {
    volume_dir.join(CONTROL_SOCKET_NAME)
}

/// The longest path a `sockaddr_un` holds: 108 bytes with the final NUL.
const SUN_PATH_MAX: usize = 107;

/// A name for a socket path that fits in `sockaddr_un`.
///
/// `sun_path` holds 107 bytes, less than volume paths may need. A longer
/// path is reached as `/proc/self/fd/<dirfd>/<file name>` through an
/// `O_PATH` handle on its directory, which this value keeps open: the kernel
/// resolves the magic link to the directory itself, so `bind` and `connect`
/// see the same socket file as the full path would.
struct SocketAddrPath {
    path: PathBuf,
    /// Keeps `/proc/self/fd/<dirfd>` valid while `path` is in use.
    _dir: Option<File>,
}

impl SocketAddrPath {
    fn new(path: &Path) -> io::Result<Self> {
        if path.as_os_str().len() <= SUN_PATH_MAX {
            return Ok(Self {
                path: path.to_owned(),
                _dir: None,
            });
        }
        let too_long = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "socket path {} is {} bytes, more than the {SUN_PATH_MAX} a UNIX socket \
                     address holds, and {why}",
                    path.display(),
                    path.as_os_str().len()
                ),
            )
        };
        let name = path
            .file_name()
            .ok_or_else(|| too_long("it does not end in a file name"))?;
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let dir = File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(dir)?;
        let mut short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        short.push(name);
        if short.as_os_str().as_bytes().len() > SUN_PATH_MAX {
            return Err(too_long("its file name alone is too long"));
        }
        Ok(Self {
            path: short,
            _dir: Some(dir),
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}
