//! Who may open the vhost-user socket. Whoever connects to it drives the
//! device and reads and writes the decrypted disk, so the socket file is
//! made `0600` (owner only) by default, whatever the umask, or another
//! mode and group for a VMM that runs as another user (libvirt's QEMU):
//! connecting to a UNIX socket needs write permission on its file, which
//! the kernel checks.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The mode and group the socket file gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketAccess {
    /// Permission bits (`0o600` by default; at most `0o777`).
    pub mode: u32,
    /// Group to give the file (a VMM's group, with a mode like `0o660`).
    pub group: Option<u32>,
}

impl Default for SocketAccess {
    fn default() -> Self {
        Self {
            mode: 0o600,
            group: None,
        }
    }
}

impl SocketAccess {
    /// Sets the socket file at `path` to this mode (and group).
    pub fn apply(&self, path: &Path) -> io::Result<()> {
        if self.mode > 0o777 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket mode {:o} has bits beyond 0777", self.mode),
            ));
        }
        if let Some(gid) = self.group {
            std::os::unix::fs::chown(path, None, Some(gid))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(self.mode))
    }
}

/// The gid of group `name` (or a number), from the system's group database.
pub fn group_id(name: &str) -> io::Result<u32> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "group name has a NUL"))?;
    // SAFETY: libc::group is plain data (integers and pointers); all zeros
    // is a valid value, overwritten by getgrnam_r.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into `group` and `buffer`, both valid for
    // the sizes given, and sets `found` to `&group` or null.
    let rc = unsafe {
        libc::getgrnam_r(
            c_name.as_ptr(),
            &mut group,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if found.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no group {name:?}"),
        ));
    }
    Ok(group.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_default_is_owner_only_and_groups_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        SocketAccess::default().apply(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(group_id("root").unwrap(), 0);
        assert_eq!(group_id("123").unwrap(), 123);
        assert!(group_id("no-such-group-here").is_err());
        let too_wide = SocketAccess {
            mode: 0o4777,
            group: None,
        };
        assert!(too_wide.apply(&path).is_err());
    }
}
