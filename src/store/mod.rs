//! The log store: segments of append-only records, an extent index, and
//! checkpoints. It knows nothing about keys except their ids; it stores
//! ciphertext it is given and hands it back verified.
//!
//! # On-disk format (version 1)
//!
//! All integers are little-endian. CRC32C is the Castagnoli CRC (iSCSI,
//! polynomial 0x1EDC6F41, reflected, initial and final XOR 0xFFFFFFFF), as
//! computed by the `crc32c` crate. A volume is a directory:
//!
//! ```text
//! volume.json            superblock (JSON, see `volume`)
//! lock                   flock(2)ed by the process that has the volume open
//! segments/<id>.seg      the log; <id> is 16 lowercase hex digits
//! checkpoints/<seq>.ckpt index snapshots; <seq> is the checkpoint's seq_next
//! snapshots/<name>.json  a snapshot's metadata block (JSON, see `volume`),
//!                        holding its SnapshotPoint
//! snapshots/<name>.index the snapshot's frozen index: checkpoint format,
//!                        no head positions
//! ```
//!
//! The log has one head per I/O queue plus one for compaction: each head
//! appends to its own segment.
//!
//! ## Segment file
//! A 64-byte segment header, then records back to back, with no padding.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 4  | magic `LSVS` |
//! | 4  | 2  | segment format version = 1 |
//! | 6  | 2  | zero |
//! | 8  | 8  | segment id (must equal the id in the file name) |
//! | 16 | 16 | volume id (the superblock's `volume_id`, raw bytes) |
//! | 32 | 4  | log head that wrote the segment (informational) |
//! | 36 | 24 | zero |
//! | 60 | 4  | CRC32C of bytes 0..60 |
//!
//! ## Record
//! A 64-byte record header; for `Data` records it is followed by the block
//! checksum table (`block_count` × u32: CRC32C of each block's ciphertext)
//! and then the ciphertext (`block_count` × block size). Other kinds have no
//! table and no payload. Record length = 64 + 4·n + n·block size for data,
//! 64 otherwise.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 4  | magic `LSVR` |
//! | 4  | 2  | record format version = 1 |
//! | 6  | 1  | kind: 1 data, 2 discard, 3 write-zeroes, 4 seal |
//! | 7  | 1  | flags: bit 0 = moved (data copied unchanged by compaction, not newly encrypted); other bits 0 |
//! | 8  | 8  | sequence number (seal: 0) |
//! | 16 | 8  | first block (LBA in volume blocks; seal: 0) |
//! | 24 | 4  | block count (seal: 0, others ≥ 1) |
//! | 28 | 1  | log2 of the block size: 9 (512 B) or 12 (4096 B) |
//! | 29 | 3  | zero |
//! | 32 | 16 | key id of the ciphertext (zero without payload) |
//! | 48 | 4  | CRC32C of the block checksum table (zero without payload) |
//! | 52 | 8  | zero |
//! | 60 | 4  | CRC32C of bytes 0..60 |
//!
//! Each ciphertext block is AES-256-XTS with the block as the data unit and
//! the tweak = (sequence number << 64) | block number, as a little-endian
//! 128-bit value (see `crypto::xts::Tweak::for_block`).
//!
//! A **seal** record is the last record of a segment that will never be
//! appended to again; it is written only after every earlier record was
//! synced. A segment ending in a seal must be valid throughout: an invalid
//! header or checksum table in it is corruption and opening fails; a block
//! whose checksum fails is indexed anyway and reading it is an error. A segment without a seal was a log
//! head when the writer stopped: replay stops at its first invalid record (the
//! torn tail), cuts the file there and seals it.
//!
//! ## Checkpoint file
//! A 64-byte header, then the body: head positions, key table, extents.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 4  | magic `LSVC` |
//! | 4  | 2  | checkpoint format version = 2 (version 1 is still read) |
//! | 6  | 2  | zero |
//! | 8  | 16 | volume id |
//! | 24 | 8  | seq_next: every write before the checkpoint had a smaller sequence number |
//! | 32 | 8  | segment_id_next: segments with this id or higher are replayed whole |
//! | 40 | 4  | H = number of head positions |
//! | 44 | 4  | K = number of key ids |
//! | 48 | 8  | E = number of extents |
//! | 56 | 4  | CRC32C of the body |
//! | 60 | 4  | CRC32C of bytes 0..60 |
//!
//! Body: H × (segment id u64, offset u64) — segments a head had open, to be
//! replayed from that offset; then K key table entries (version 2: 16-byte
//! key id + u64 bytes ever encrypted under it in this volume, moves not
//! counted; version 1: the 16-byte id alone); then E × 56-byte
//! extents, sorted by first block and disjoint:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8 | first block |
//! | 8  | 8 | block count (≥ 1) |
//! | 16 | 8 | sequence number of the write |
//! | 24 | 8 | segment id, or 0xFFFF_FFFF_FFFF_FFFF for blocks that read as zeros |
//! | 32 | 8 | offset of the record header in the segment |
//! | 40 | 8 | first block of the record |
//! | 48 | 4 | block count of the record |
//! | 52 | 4 | index into the key table |
//!
//! # Opening (recovery)
//! 1. Load the newest checkpoint that passes its checks (older ones are the
//!    fallback; with none, start empty and replay everything).
//! 2. Replay, in any order, every record of segments with id ≥
//!    segment_id_next and of the head segments from their offsets; every
//!    header, table and block checksum is verified. Newest sequence number
//!    wins per block, so the order does not matter.
//! 3. Set the next sequence number 2^32 past the highest seen (a write in
//!    flight at the crash may have used numbers replay never saw).
//! 4. Seal the replayed segments and write a checkpoint.
//!
//! # Snapshots
//! A snapshot is a point in the log (`SnapshotPoint`: next sequence number,
//! next segment id, and each head's (segment, end offset)); a record is in
//! it iff the point covers its position. Its index — the newest checkpoint
//! (older than the point) plus the covered records, read back and verified
//! — is written as a checkpoint-format file before the next checkpoint, by
//! the running log or, if the process died first, by recovery.
//!
//! # Compaction
//! Live pieces of cleaned segments are appended again unchanged (same
//! sequence number, first block, key id, ciphertext and block checksums) as
//! new data records; then a checkpoint is written, then the segments are
//! deleted, then older checkpoints. So the newest checkpoint that passes its
//! checks never refers to a segment that is gone: if one does, the open
//! fails naming the segment (`SegmentMissing`). Segments that
//! a snapshot index refers to are never deleted. Replay after compaction
//! needs a checkpoint: a full replay from segment 0 finds segments missing
//! and fails (a deleted discard record could otherwise let older data
//! reappear).
//!
//! # Assumptions about the media
//! `fdatasync` makes earlier writes to that file durable; `rename` is atomic;
//! writes that were never synced may be lost or torn at any byte after a
//! power cut, which the checksums detect.

mod check;
mod checkpoint;
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
    LogConfig, ReadPiece, RecordPosition, RecoveryReport, RekeyPlan, RekeyTransform, SegmentSpace,
    SpaceReport, TornTail, open, open_view, write_snapshot_index,
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
