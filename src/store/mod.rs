//! The log store: segments of append-only records, an extent index, and
//! checkpoints. It knows nothing about keys except their ids; it stores
//! ciphertext it is given and hands it back verified.
//!
//! **The on-disk format is documented byte by byte in `docs/format.md`**
//! (segment header block, frames, record headers, block tables, seals,
//! checkpoints, and the recovery procedure); golden tests next to each
//! encoder pin it. In short: a volume directory holds `segments/<id>.seg`
//! (the log) and `checkpoints/<seq>.ckpt` (index snapshots). A version 2
//! segment is a 4 KiB header block, then frames: each append is one frame,
//! 4 KiB-aligned in file offset, length and memory (so segment files can be
//! written with `O_DIRECT`), holding record headers, their block tables (a
//! CRC32C and a tag per block) and their ciphertext. Version 1 segments
//! (records back to back) and version 1 and 2 checkpoints are still read.
//!
//! One file per job: `segment.rs` (segment files and headers), `frame.rs`
//! (version 2 frames, record headers, seal bodies), `record.rs` (what a
//! record says; the version 1 header), `table.rs` (block tables),
//! `aligned.rs` (aligned buffers and their pool), `scan/` (reading
//! segments back), `index.rs` (the extent index), `checkpoint/`,
//! `snapshot.rs` (snapshot points), `io.rs` (`pwritev`), `log/` (heads,
//! appends, flushes, seals, recovery, compaction), `check.rs` (a keyless
//! check of the files, reported rather than repaired).
//!
//! # Opening (recovery)
//! 1. Load the newest checkpoint that passes its checks (older ones are the
//!    fallback; with none, start empty and replay everything); check that
//!    every sealed segment it lists is there and ends with the listed seal.
//! 2. Replay, in any order, every record of segments with id >=
//!    segment_id_next and of the head segments from their offsets; every
//!    header, table and block checksum is verified, and the seals found
//!    must continue the log's seal chain. Newest sequence number wins per
//!    block, so the order does not matter.
//! 3. Set the next sequence number `limits::SEQ_REOPEN_GAP` (2^24) past the
//!    highest seen (a write in flight at the crash may have used numbers
//!    replay never saw).
//! 4. Seal the replayed segments and write a checkpoint.
//!
//! # Snapshots
//! A snapshot is a point in the log (`SnapshotPoint`: next sequence number,
//! next segment id, and each head's (segment, end offset)); a record is in
//! it iff the point covers its position (its frame's offset). Its index —
//! the newest checkpoint (older than the point) plus the covered records,
//! read back and verified — is written as a checkpoint-format file before
//! the next checkpoint, by the running log or, if the process died first,
//! by recovery.
//!
//! # Compaction
//! Live pieces of cleaned segments are appended again unchanged (same
//! sequence number, first block, key id, ciphertext and block table
//! entries) as new data records; then a checkpoint is written that no
//! longer lists the segments about to go, then the segments are deleted,
//! then older checkpoints. So the newest valid checkpoint never names a
//! segment that is gone: if one does, the open fails naming the segment
//! and the checkpoint. Segments that a
//! snapshot index refers to are never deleted. Replay after compaction
//! needs a checkpoint: a full replay from segment 0 finds segments missing
//! and fails (a deleted discard record could otherwise let older data
//! reappear).
//!
//! # Assumptions about the media
//! `fdatasync` makes earlier writes to that file durable; `rename` is atomic;
//! writes that were never synced may be lost or torn at any byte after a
//! power cut, which the checksums detect.

mod aligned;
mod check;
mod checkpoint;
#[cfg(test)]
mod format_tests;
mod frame;
mod index;
mod io;
mod log;
mod macs;
mod record;
mod scan;
mod segment;
mod snapshot;
mod table;

use std::path::{Path, PathBuf};

pub use aligned::{ALIGN, AlignedBuf, align_up};
pub use check::{CheckDepth, Damage, DamageKind, DamageReport, check_files};
pub use checkpoint::{
    CheckpointData, HeadPosition, SealRef, SealedSegment, list_checkpoints, read as read_checkpoint,
};
pub use index::{DataLocation, Extent, ExtentIndex, Location, Piece};
pub use io::direct::IoMode;
pub use io::meta_cache::{META_CACHE_BYTES_DEFAULT, MetaCacheStats};
pub(crate) use io::punch_hole;
pub use log::{
    AppendRecord, AppendStream, CompactOptions, CompactProgress, CompactReport, DataPiece, HeadId,
    KeyUsage, Log, LogConfig, LogEvents, PieceRead, ReadPiece, ReadPin, ReadRange, RecordPosition,
    RecordShape, RecoveryReport, RekeyPlan, RekeyTransform, SegmentSpace, SpaceReport, TornTail,
    WrittenCheckpoint, open, open_view,
};
pub use macs::MacKeys;
pub use record::{RECORD_HEADER_BYTES, RecordHeader, RecordKind};
pub use segment::{SEGMENT_HEADER_BYTES, SegmentVersion, V2_FIRST_FRAME};
pub use snapshot::{SnapshotPoint, referenced_segments, segments_needed};
pub use table::{TableFormat, V2_ENTRY_BYTES};

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
    /// A segment the newest usable checkpoint names is not there.
    #[error("segment {segment_id:016x} is missing (listed in checkpoint {})", checkpoint.display())]
    ListedSegmentMissing {
        /// Its id.
        segment_id: u64,
        /// The checkpoint that lists it.
        checkpoint: PathBuf,
    },
    /// A sealed segment does not end with the seal a checkpoint or the seal
    /// chain says it has.
    #[error(
        "segment {segment_id:016x}: {reason} (replaced by an older copy, truncated, dropped or foreign?)"
    )]
    SealMismatch {
        /// The segment.
        segment_id: u64,
        /// What differs.
        reason: &'static str,
    },
    /// A version 1 segment where only version 2 segments can be.
    #[error(
        "segment {segment_id:016x} is version 1, but every segment from {v2_floor:016x} on was written as version 2"
    )]
    UnexpectedVersion1 {
        /// The segment.
        segment_id: u64,
        /// The first segment id that must be version 2.
        v2_floor: u64,
    },
    /// A change was asked of a log opened read-only.
    #[error("the volume is open read-only")]
    ReadOnly,
    /// A record or seal is under a key whose MAC key the volume does not
    /// hold (so it can be neither signed nor checked).
    #[error(
        "no MAC key for key {key_id}: the records of an authenticated volume are signed with its keys"
    )]
    MacKeyMissing {
        /// The key.
        key_id: crate::crypto::KeyId,
    },
    /// Something must be signed, and the volume was opened without a key.
    #[error(
        "the volume's records are authenticated (integrity mac): changing it needs its key (--kms and --token-file, or ask the daemon serving it)"
    )]
    NoSigningKey,
    /// The log's records carry MACs, but the volume was opened as one
    /// without (`volume.json` says integrity `crc`).
    #[error(
        "the volume's log is authenticated (its records carry MACs), but volume.json says integrity crc: was its \"integrity\" field removed? Refusing to open it unchecked"
    )]
    IntegrityDowngrade,
    /// One of the volume's keys was made for a volume whose blocks and log
    /// are authenticated (its kind, sealed in its wrapped blob, says so),
    /// but the volume was opened as one without MACs: someone stripped
    /// them (every flag and MAC, CRCs recomputed) to turn the checks off.
    #[error(
        "key {key_id} was made for a volume whose blocks and log are authenticated (its wrapped blob says so), but volume.json says integrity crc: were the volume's MACs stripped from its files? Refusing to open it unchecked"
    )]
    MacsStripped {
        /// The key whose kind requires MACs.
        key_id: crate::crypto::KeyId,
    },
    /// A frame or seal whose checksums are valid fails its MAC: not a torn
    /// write but a change by someone without the key (or a record moved
    /// in from elsewhere). Opening refuses it.
    #[error(
        "segment {segment_id:016x} at offset {offset}: {reason} (tampered with, reordered, replayed or foreign)"
    )]
    Unauthentic {
        /// The segment.
        segment_id: u64,
        /// The frame's offset.
        offset: u64,
        /// What failed.
        reason: &'static str,
    },
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
