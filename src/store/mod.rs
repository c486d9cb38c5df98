//! The log store: segments of append-only records, an extent index, and
//! checkpoints. It knows nothing about keys except their ids; it stores
//! ciphertext it is given and hands it back verified.
//!
//! **The on-disk format is documented byte by byte in `docs/format.md`**:
//! the segment and record headers, the block checksum table, seal records,
//! checkpoints and snapshot indexes, the JSON files, the file names, the
//! version history, the recovery procedure step by step and what is assumed
//! of the media. `format_tests.rs` pins every header to the bytes shown
//! there.
//!
//! In short: a volume directory holds `segments/<id>.seg` (the log: one
//! segment per log head at a time, records back to back, a seal record once
//! a segment is full and synced), `checkpoints/<seq_next>.ckpt` (the extent
//! index written out) and, per snapshot, `snapshots/<name>.index` (its
//! frozen index, checkpoint format). Every write has a sequence number; for
//! every block the record with the highest one wins, so replay order does
//! not matter. Opening loads the newest valid checkpoint, replays what was
//! appended after it (cutting the torn tail of an unsealed segment), and
//! sets the next sequence number `limits::SEQ_REOPEN_GAP` (2^24) past the
//! highest seen, so that a write in flight at a crash never shares an XTS
//! tweak with a later one.
//!
//! Modules: `record` (record headers and the block checksum table),
//! `segment` (segment files: header, scanning), `index` (the extent index),
//! `checkpoint` (checkpoint files), `snapshot` (snapshot points), `io`
//! (`pwritev`), `log` (the log itself: heads, append, flush, lookups,
//! recovery, snapshots, compaction, re-keying), `check` (a keyless check
//! of the files, reported rather than repaired).

mod check;
mod checkpoint;
#[cfg(test)]
mod format_tests;
mod index;
mod io;
mod log;
mod record;
mod segment;
mod snapshot;

use std::path::{Path, PathBuf};

pub use check::{CheckDepth, Damage, DamageKind, DamageReport, check_files};
pub use checkpoint::{CheckpointData, list_checkpoints, read as read_checkpoint};
pub use index::{DataLocation, Extent, ExtentIndex, Location, Piece};
pub use log::{
    AppendRecord, CompactOptions, CompactProgress, CompactReport, DataPiece, HeadId, KeyUsage, Log,
    LogConfig, LogEvents, ReadPiece, RecordPosition, RecoveryReport, RekeyPlan, RekeyTransform,
    SegmentSpace, SpaceReport, TornTail, WrittenCheckpoint, open, open_view, write_snapshot_index,
};
pub use record::{
    BLOCK_CHECKSUM_BYTES, RECORD_HEADER_BYTES, RecordHeader, RecordKind, block_checksums,
    checksum_table_bytes, fill_block_checksums, first_corrupt_block,
};
pub use segment::SEGMENT_HEADER_BYTES;
pub use snapshot::{SnapshotPoint, referenced_segments};

/// What can go wrong in the store. Corruption is data (an `Err`), never a
/// panic; the path and offset say where to look.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O call failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The directory does not hold a log.
    #[error("{} is not an lsvblk volume: {reason}", path.display())]
    NotAStore {
        /// The directory.
        path: PathBuf,
        /// What is missing.
        reason: &'static str,
    },
    /// Bytes that must be valid are not.
    #[error("{} is corrupt at byte {offset_bytes}: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Where the damage starts.
        offset_bytes: u64,
        /// What check failed.
        reason: &'static str,
    },
    /// A segment file carries another volume's id.
    #[error("{} belongs to another volume ({volume_id})", path.display())]
    ForeignSegment {
        /// The segment file.
        path: PathBuf,
        /// The volume id it carries.
        volume_id: String,
    },
    /// A checkpoint file fails its checks.
    #[error("checkpoint {} is unusable: {reason}", path.display())]
    BadCheckpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What check failed.
        reason: &'static str,
    },
    /// A segment that recovery or a read needs is not there.
    #[error("segment {segment_id:016x} is missing")]
    SegmentMissing {
        /// Its id.
        segment_id: u64,
    },
    /// A change was asked of a log opened read-only.
    #[error("the volume is open read-only")]
    ReadOnly,
    /// An append named a log head the log does not have (the volume was
    /// opened with fewer heads than the caller has queues).
    #[error("no log {head}: the volume was opened with {heads} head(s)")]
    NoSuchHead {
        /// The head asked for.
        head: HeadId,
        /// How many guest heads the log has.
        heads: usize,
    },
    /// A long operation stopped early on request (tests simulate a crash
    /// this way); everything it did so far is consistent.
    #[error("interrupted")]
    Interrupted,
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Fsyncs a directory so that entries created or renamed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}
