//! Direct I/O: which way the log writes and reads its segment files, and
//! opening a segment's `O_DIRECT` descriptor.
//!
//! With [`IoMode::Direct`] frames go from the writer's aligned memory to
//! the device without passing through the host's page cache: the guest
//! caches what it reads, so a second copy in the host is wasted memory,
//! and filling the page cache first costs more than the write itself. A
//! filesystem that refuses `O_DIRECT` gets [`IoMode::Buffered`] instead,
//! said once in the log. Reads then bypass the page cache too (`reads`,
//! `meta_cache`): ciphertext `O_DIRECT` straight into the caller's memory
//! where it is aligned, a batch's reads in flight together.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::str::FromStr;

use super::super::aligned::{ALIGN, AlignedBuf};

/// How the log writes segment files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IoMode {
    /// `O_DIRECT`: from the writer's memory to the device.
    Direct,
    /// Through the host's page cache (the default, see the module doc).
    #[default]
    Buffered,
}

impl IoMode {
    /// The name `--io` takes and status shows.
    pub fn as_str(self) -> &'static str {
        match self {
            IoMode::Direct => "direct",
            IoMode::Buffered => "buffered",
        }
    }
}

impl fmt::Display for IoMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IoMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "direct" => Ok(IoMode::Direct),
            "buffered" => Ok(IoMode::Buffered),
            other => Err(format!("io mode {other:?}: must be direct or buffered")),
        }
    }
}

/// The mode a log whose segments live in `dir` writes in: `wanted`,
/// unless that is direct and the filesystem refuses `O_DIRECT` (tried with
/// one aligned write to an unnamed file, which leaves nothing behind), then
/// buffered, with one log line saying why.
pub fn mode_for(dir: &Path, wanted: IoMode) -> IoMode {
    if wanted == IoMode::Buffered {
        return IoMode::Buffered;
    }
    match probe_direct(dir) {
        Ok(()) => IoMode::Direct,
        Err(error) => {
            tracing::info!(dir = %dir.display(), %error, "the filesystem refuses O_DIRECT: segment files are written through the page cache (--io buffered)");
            IoMode::Buffered
        }
    }
}

/// Writes one aligned block with `O_DIRECT` to an unnamed file in `dir`.
fn probe_direct(dir: &Path) -> io::Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE | libc::O_DIRECT)
        .open(dir)?;
    let block = AlignedBuf::zeroed(ALIGN);
    super::pwritev_all(&file, &[block.padded()], 0)
}

/// Opens the existing file `path` with `O_DIRECT`: for reads, and for
/// writes too when `write`.
pub fn open_direct(path: &Path, write: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print_their_names() {
        for mode in [IoMode::Direct, IoMode::Buffered] {
            assert_eq!(mode.as_str().parse::<IoMode>(), Ok(mode));
        }
        assert!("cached".parse::<IoMode>().is_err());
    }

    #[test]
    fn buffered_is_kept_and_a_missing_directory_falls_back_to_buffered() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(mode_for(dir.path(), IoMode::Buffered), IoMode::Buffered);
        let missing = dir.path().join("missing");
        assert_eq!(mode_for(&missing, IoMode::Direct), IoMode::Buffered);
    }
}
