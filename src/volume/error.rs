//! What can go wrong with a volume.

use std::path::PathBuf;

use crate::crypto::KeyId;
use crate::crypto::key::KeyError;
use crate::limits::SECTOR_BYTES;
use crate::store::StoreError;

/// What can go wrong with a volume.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    /// The directory is not a volume (or not one this version understands).
    #[error("{} is not an lsvblk volume: {reason}", path.display())]
    NotAVolume {
        /// The directory.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// An ephemeral volume of another process: its key lived only in that
    /// process's memory.
    #[error(
        "{} is an ephemeral volume: its data key exists only in the memory of the `lsvblk serve --ephemeral` that made it (gone if that daemon is), so nothing else can read it: no inspect, snapshot, clone or second serve. It is deleted when that daemon exits, or by the next `lsvblk serve --ephemeral` on it",
        path.display()
    )]
    Ephemeral {
        /// The directory.
        path: PathBuf,
    },
    /// The base image under the volume is gone or is not the one it was
    /// created over.
    #[error(
        "base image {}: {reason}; the volume's unwritten blocks would read differently, so it is not opened (restore the image as it was)",
        path.display()
    )]
    BaseChanged {
        /// The image.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// The superblock has a format version this build cannot read.
    #[error("{}: unsupported volume format version {version}", path.display())]
    UnsupportedFormat {
        /// The superblock.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// `create` was pointed at a directory that already holds something.
    #[error("{} already exists and is not empty", path.display())]
    AlreadyExists {
        /// The directory.
        path: PathBuf,
    },
    /// The key given is not the volume's key.
    #[error("wrong key: the volume is encrypted under key {expected}, the key given is {got}")]
    WrongKey {
        /// The volume's current key id.
        expected: KeyId,
        /// The id of the key given.
        got: KeyId,
    },
    /// Blocks are encrypted under a key the volume was not opened with.
    #[error("blocks are encrypted under key {key_id}, which this volume was not opened with")]
    UnknownKey {
        /// The missing key.
        key_id: KeyId,
    },
    /// A flush could not make the volume's log durable in its object store.
    #[error("flush to the object store failed: {reason}")]
    RemoteFlush {
        /// Why.
        reason: String,
    },
    /// The request reaches past the end of the volume.
    #[error("range {offset}+{len} B is past the end of the {size} B volume")]
    OutOfRange {
        /// Request offset, bytes.
        offset: u64,
        /// Request length, bytes.
        len: u64,
        /// Volume size, bytes.
        size: u64,
    },
    /// Offset or length is not a multiple of 512.
    #[error("range {offset}+{len} B is not aligned to {SECTOR_BYTES} B sectors")]
    Misaligned {
        /// Request offset, bytes.
        offset: u64,
        /// Request length, bytes.
        len: u64,
    },
    /// A change was asked of a read-only volume.
    #[error("the volume is open read-only")]
    ReadOnly,
    /// The volume was opened without its data key (for maintenance): it
    /// can be snapshotted and compacted, not read or written.
    #[error("the volume was opened without its data key")]
    NoKey,
    /// No snapshot of that name.
    #[error("no snapshot named {name:?}")]
    NoSuchSnapshot {
        /// The name asked for.
        name: String,
    },
    /// A snapshot of that name exists already.
    #[error("a snapshot named {name:?} exists already")]
    SnapshotExists {
        /// The name.
        name: String,
    },
    /// The snapshot cannot be deleted while something uses it.
    #[error("snapshot {name:?} is in use by {by}")]
    SnapshotInUse {
        /// The snapshot.
        name: String,
        /// What uses it.
        by: String,
    },
    /// The snapshot's index has not been written yet (the daemon serving the
    /// volume writes it right after taking it).
    #[error("snapshot {name:?} is not written out yet; is the daemon serving the volume running?")]
    SnapshotNotReady {
        /// The snapshot.
        name: String,
    },
    /// Another process has the volume open.
    #[error("{} is in use by another process (its lock file is held)", path.display())]
    Busy {
        /// The volume directory.
        path: PathBuf,
    },
    /// An option is out of range.
    #[error("invalid option: {0}")]
    BadOption(String),
    /// The volume uses the null cipher and this build does not support it.
    #[error("the volume is unencrypted (benchmark-only null cipher); this build refuses it")]
    NullCipherUnavailable,
    /// A key could not be set up.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file outside the log failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
