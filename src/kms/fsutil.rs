//! Small file-system helpers with the durability and permission rules the
//! service relies on: atomic replace (tmp + fsync + rename + dir fsync),
//! private files (0600, owned by us), bounded reads.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode bits a private file or directory must not have: any group or other
/// permission.
pub const NOT_PRIVATE_MODE_BITS: u32 = 0o077;

/// Writes `bytes` to `path` atomically with `mode`: a reader sees the old
/// file or the new one, never a mix, and after return the new one survives
/// a power cut.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_of(path)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = write_new(&tmp, bytes, mode).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    fsync_dir(dir)
}

/// Creates `path` (which must not exist) with `mode`, writes and syncs it.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    // The umask may have cleared bits of `mode`; it never adds any, but make
    // the mode exact so a 0600 request is 0600 whatever the umask.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// fsyncs a directory so a rename or create inside it is durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_of(path: &Path) -> io::Result<&Path> {
    match path.parent() {
        Some(parent) if parent.as_os_str().is_empty() => Ok(Path::new(".")),
        Some(parent) => Ok(parent),
        None => Err(io::Error::other("path has no parent")),
    }
}

/// Creates a directory with mode 0700 (and its parents as needed, 0700
/// too); an existing one is made 0700.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    crate::fsmode::create_private_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

/// Why a secret file may not be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    /// The file could not be inspected.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Group or other may access it.
    #[error("{path} has mode {mode:04o}: group/other must have no access (chmod 600)")]
    Exposed {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// Someone else owns it.
    #[error("{path} is owned by uid {owner}, not by us (uid {us})")]
    ForeignOwner {
        /// The file.
        path: String,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        us: u32,
    },
}

/// Refuses a secret file that group or other can access or that another
/// user owns (the wrapping-key file's "refuses to start" rule).
pub fn check_private(path: &Path) -> Result<(), PrivateFileError> {
    let shown = path.display().to_string();
    let meta = fs::metadata(path).map_err(|source| PrivateFileError::Io {
        path: shown.clone(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    if mode & NOT_PRIVATE_MODE_BITS != 0 {
        return Err(PrivateFileError::Exposed { path: shown, mode });
    }
    let us = effective_uid();
    if meta.uid() != us {
        return Err(PrivateFileError::ForeignOwner {
            path: shown,
            owner: meta.uid(),
            us,
        });
    }
    Ok(())
}

/// Our effective uid.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The stems of the `*.json` files in `dir` (one record each).
pub fn json_stems(dir: &Path) -> io::Result<Vec<String>> {
    let mut stems = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) {
            stems.push(stem.to_owned());
        }
    }
    Ok(stems)
}

/// Reads a whole file of at most `bytes_max` bytes.
pub fn read_bounded(path: &Path, bytes_max: u64) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut bytes = Vec::new();
    file.take(bytes_max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > bytes_max {
        return Err(io::Error::other(format!(
            "{} is larger than {bytes_max} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_exact_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        check_private(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            check_private(&path),
            Err(PrivateFileError::Exposed { .. })
        ));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no tmp left");
    }

    #[test]
    fn bounded_read_refuses_big_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, [0u8; 10]).unwrap();
        assert!(read_bounded(&path, 9).is_err());
        assert_eq!(read_bounded(&path, 10).unwrap().len(), 10);
    }
}
