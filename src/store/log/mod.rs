//! The log: appending records through log heads, keeping the extent index,
//! flushing, checkpointing, and recovering after a crash.
//!
//! One file per job: `append.rs` (records into a head's segment and the
//! index), `durability.rs` (flush, seal, checkpoint, close), `read.rs`
//! (lookups and ciphertext reads), `state.rs` (what the index lock
//! protects), `replay.rs` (which segments to scan, and scanning them),
//! `recovery.rs` (opening), `snapshots.rs` (taking snapshots, pins),
//! `snapshot_index.rs` (building and writing a snapshot's index, the one
//! place that does), `compact.rs` and `rekey.rs` (the mover).
//!
//! A head's mutex is held from the start of an append until its records are
//! in the index, so each head's records enter the index in file order and a
//! checkpoint can name, per head, the offset up to which the index holds
//! everything. The order the locks are taken in is written next to them, in
//! [`Log`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use super::frame::Mac;
use super::io::direct::{self, IoMode};
use super::io::meta_cache::{MetaCache, MetaCacheStats};
use super::io::uring::WriteRing;
use super::macs::MacKeys;
use super::segment::{self, SegmentVersion};
use super::{StoreError, sync_dir};
use crate::limits::{CHECKPOINT_INTERVAL_BYTES, SPARE_SEGMENTS_PER_HEAD};
use crate::sync::RwLockOrRecover;
use durability::PendingSeal;
use snapshots::UnmaterializedSnapshot;
use spares::SpareSegments;
use state::IndexState;

mod append;
mod append_stream;
mod authenticate;
mod checkpoint_state;
mod compact;
mod durability;
mod events;
mod pieces;
mod read;
mod recovery;
mod rekey;
mod replay;
mod snapshot_index;
mod snapshots;
mod spares;
mod state;
mod verify;

pub use append::{AppendRecord, RecordPosition, RecordShape};
pub use append_stream::AppendStream;
pub use compact::{
    CompactOptions, CompactProgress, CompactReport, RekeyPlan, RekeyTransform, SegmentSpace,
    SpaceReport,
};
pub use events::{LogEvents, ReadPin, ReadRange, WrittenCheckpoint};
pub use read::{DataPiece, PieceRead, ReadPiece};
pub use recovery::{RecoveryReport, TornTail, open, open_view};
pub use rekey::KeyUsage;
pub(crate) use replay::list_segments;
pub(crate) use verify::chain_seals;

/// Fixed facts about the log, from the volume's superblock.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Volume id, stamped into every segment and checkpoint.
    pub volume_id: [u8; 16],
    /// log2 of the block size (9 or 12).
    pub block_shift: u8,
    /// Blocks in the volume.
    pub capacity_blocks: u64,
    /// Target segment size; a head moves to a new segment once past it.
    pub segment_bytes: u64,
    /// Number of guest log heads (independent append streams), at least 1.
    pub heads: usize,
    /// Open without changing anything on disk.
    pub read_only: bool,
    /// How segment files are written (direct unless the filesystem refuses
    /// it; see [`Log::io_mode`]).
    pub io: IoMode,
    /// Bytes of frame meta (block table pages) the read path keeps in
    /// memory ([`super::io::meta_cache`]; 0: none).
    pub meta_cache_bytes: u64,
    /// The keys records and seals are MACed with, when the volume's
    /// records are authenticated (integrity `mac`); `None` for CRCs only.
    pub macs: Option<Arc<dyn MacKeys>>,
}

/// One of the log's guest heads: `0 .. LogConfig::heads`. The caller says
/// which head each append goes through: a queue worker its queue index, so
/// that queues never wait for each other's head; callers that are not queue
/// workers (tools, tests, the volume's own convenience calls) use
/// [`HeadId::FIRST`]. Compaction appends through a head of its own, which
/// only the store uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HeadId(pub usize);

impl HeadId {
    /// The first head: what callers that are not queue workers append through.
    pub const FIRST: HeadId = HeadId(0);
}

impl std::fmt::Display for HeadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "head {}", self.0)
    }
}

/// A segment file the log has open, and its format version.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    /// Buffered: syncs, truncation, reads and writes without `direct`.
    pub(crate) file: File,
    /// The `O_DIRECT` descriptor of a log in direct mode: frames are
    /// written (segments this process appends to) and ciphertext and
    /// frame meta are read through it.
    pub(crate) direct: Option<File>,
    pub(crate) version: SegmentVersion,
    /// Its header says its records carry MACs.
    pub(crate) macs: bool,
}

impl SegmentFile {
    /// A segment opened for reading (and buffered writes).
    pub(crate) fn buffered(file: File, version: SegmentVersion, macs: bool) -> Self {
        Self {
            file,
            direct: None,
            version,
            macs,
        }
    }

    /// The descriptor frames are written through: the `O_DIRECT` one if
    /// there is one (every frame is aligned in offset, length and memory).
    pub(crate) fn frame_writer(&self) -> &File {
        self.direct.as_ref().unwrap_or(&self.file)
    }

    /// The descriptor ciphertext and frame meta are read through: the
    /// `O_DIRECT` one if there is one (reads through it must be aligned).
    pub(crate) fn read_fd(&self) -> &File {
        self.direct.as_ref().unwrap_or(&self.file)
    }
}

/// A head's open segment: where its next frame goes, and the record chain
/// so far (for its seal).
struct OpenSegment {
    id: u64,
    file: Arc<SegmentFile>,
    offset: u64,
    /// Records appended to it so far.
    records: u64,
    /// MAC of the last of them (zero without MACs).
    last_mac: Mac,
}

/// One log head (append stream) and its open segment, if any.
struct Head {
    id: u32,
    open: Option<OpenSegment>,
    /// The ring its frames are written through (direct mode where the
    /// kernel allows io_uring); else `pwritev`.
    ring: Option<WriteRing>,
}

/// An open log: segments, extent index, checkpoints.
///
/// **Lock order.** A thread holding some of these locks takes another only
/// if it comes later in this list (so two threads can never wait for each
/// other):
///
/// 1. `compact_lock` (one compaction or re-key at a time);
/// 2. `checkpoint_lock` (one checkpoint at a time; a snapshot holds it so
///    no checkpoint falls between its capture and its queueing);
/// 3. `unmaterialized` (the queue of snapshot indexes to write);
/// 4. `flush_lock` (one flush at a time);
/// 5. `heads[i]`, several only in index order (a snapshot takes them all);
/// 6. `pins`;
/// 7. `pending` (segments waiting for a flush to seal them);
/// 8. `state` (the index and what a checkpoint must see with it);
/// 9. `files` (the open segment files).
///
/// **Poisoning.** Every lock here is taken with [`crate::sync`]'s
/// recovering helpers: no panic possible while one is held leaves its data
/// half changed. The `()` locks guard no data. A head, `pending`, `files`,
/// `pins` and `unmaterialized` change by single pushes, inserts and
/// removals. The index state changes in `IndexState::apply`, whose only
/// panics are assertions on the record that `append` checks before taking
/// any lock. The log on disk is the truth either way: a reopen rebuilds all
/// of it.
pub struct Log {
    segments_dir: PathBuf,
    checkpoints_dir: PathBuf,
    config: LogConfig,
    /// The guest heads, then the compaction head (the last one).
    heads: Vec<Mutex<Head>>,
    state: RwLock<IndexState>,
    files: RwLock<BTreeMap<u64, Arc<SegmentFile>>>,
    seq_next: AtomicU64,
    bytes_since_checkpoint: AtomicU64,
    /// Bytes appended since the log was opened, by any head (compaction's
    /// included): see `write_mark`.
    bytes_appended: AtomicU64,
    checkpoint_lock: Mutex<()>,
    /// Segments that left a head (full or abandoned) and are not yet synced;
    /// the next flush syncs them and then seals the full ones.
    pending: Mutex<Vec<PendingSeal>>,
    /// A segment file was created since the directory was last synced.
    dir_dirty: AtomicBool,
    /// One flush at a time: a flush that returns must not leave syncs of
    /// segments it took from `pending` to another flush still running.
    flush_lock: Mutex<()>,
    /// Snapshot indexes taken but not yet written out; written before the
    /// next checkpoint at the latest (see `snapshots`).
    unmaterialized: Mutex<Vec<UnmaterializedSnapshot>>,
    /// Segments each snapshot (by name) refers to: never deleted.
    pins: Mutex<BTreeMap<String, BTreeSet<u64>>>,
    /// One compaction at a time.
    compact_lock: Mutex<()>,
    /// Who hears of seals and checkpoints (see `events`), if anyone.
    events: OnceLock<Arc<dyn events::LogEvents>>,
    /// How this process writes segment files: the configured mode, or
    /// buffered where the filesystem refuses direct I/O.
    io_mode: IoMode,
    /// Block table pages, for reads (see `read`).
    meta_cache: MetaCache,
    /// Segment files compaction emptied, kept for the next new segments
    /// (see `spares`).
    spares: SpareSegments,
}

impl Log {
    /// Creates an empty log in `dir` (which must exist and hold no log).
    pub fn create(dir: &Path, config: LogConfig) -> Result<Self, StoreError> {
        for sub in ["segments", "checkpoints"] {
            let path = dir.join(sub);
            crate::fsmode::create_private_dir(&path).map_err(|e| StoreError::io(&path, e))?;
        }
        sync_dir(dir)?;
        let log = Self::empty(dir, config, 0, 0);
        log.checkpoint()?;
        Ok(log)
    }

    fn empty(dir: &Path, config: LogConfig, seq_next: u64, segment_id_next: u64) -> Self {
        let segments_dir = dir.join("segments");
        let io_mode = match config.read_only {
            true => config.io,
            false => direct::mode_for(&segments_dir, config.io),
        };
        let mut rings = write_rings(config.heads.max(1) + 1, io_mode, config.read_only);
        // The guest's heads, then one for compaction (so moved, cold blocks
        // do not mix with hot ones).
        let heads = (0..config.heads.max(1) + 1)
            .map(|id| {
                Mutex::new(Head {
                    id: id as u32,
                    open: None,
                    ring: rings.next().flatten(),
                })
            })
            .collect::<Vec<_>>();
        let config_meta_cache_bytes = config.meta_cache_bytes;
        let spare_limit = match config.read_only {
            true => 0,
            false => heads.len() * SPARE_SEGMENTS_PER_HEAD,
        };
        let spares = SpareSegments::open(&segments_dir, spare_limit);
        let mut state = IndexState::empty(heads.len());
        state.segment_id_next = segment_id_next;
        Self {
            segments_dir,
            io_mode,
            checkpoints_dir: dir.join("checkpoints"),
            state: RwLock::new(state),
            heads,
            config,
            files: RwLock::new(BTreeMap::new()),
            seq_next: AtomicU64::new(seq_next),
            bytes_since_checkpoint: AtomicU64::new(0),
            bytes_appended: AtomicU64::new(0),
            checkpoint_lock: Mutex::new(()),
            pending: Mutex::new(Vec::new()),
            dir_dirty: AtomicBool::new(false),
            flush_lock: Mutex::new(()),
            unmaterialized: Mutex::new(Vec::new()),
            pins: Mutex::new(BTreeMap::new()),
            compact_lock: Mutex::new(()),
            events: OnceLock::new(),
            meta_cache: MetaCache::new(config_meta_cache_bytes),
            spares,
        }
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// How this process writes segment files: `LogConfig::io`, or
    /// buffered where the filesystem refuses direct I/O.
    pub fn io_mode(&self) -> IoMode {
        self.io_mode
    }

    /// Hits, misses and size of the frame-meta cache of the read path.
    pub fn meta_cache_stats(&self) -> MetaCacheStats {
        self.meta_cache.stats()
    }

    /// Takes the next write sequence number. Never returns the same number
    /// twice for one volume, across reopens and crashes.
    pub fn next_seq(&self) -> u64 {
        self.seq_next.fetch_add(1, Ordering::Relaxed)
    }

    /// The sequence number the next write will take, without taking it:
    /// unchanged for as long as nothing is written.
    pub fn peek_next_seq(&self) -> u64 {
        self.seq_next.load(Ordering::Relaxed)
    }

    /// A mark that changes whenever anything is appended to the log: guest
    /// writes (which take new sequence numbers) and compaction's moves
    /// (which keep theirs, so `peek_next_seq` alone misses them).
    pub fn write_mark(&self) -> (u64, u64) {
        (
            self.seq_next.load(Ordering::Relaxed),
            self.bytes_appended.load(Ordering::Relaxed),
        )
    }

    /// Number of extents in the index.
    pub fn extent_count(&self) -> usize {
        self.read_state().index.len()
    }

    /// True when enough has been appended since the last checkpoint that the
    /// next flush should write one.
    pub fn checkpoint_due(&self) -> bool {
        self.bytes_since_checkpoint.load(Ordering::Relaxed) >= CHECKPOINT_INTERVAL_BYTES
    }

    /// The path of segment `id`.
    fn segment_path(&self, id: u64) -> PathBuf {
        segment::segment_path(&self.segments_dir, id)
    }

    /// The open file of segment `id`.
    fn segment_file(&self, id: u64) -> Result<Arc<SegmentFile>, StoreError> {
        self.files
            .read_or_recover()
            .get(&id)
            .cloned()
            .ok_or(StoreError::SegmentMissing { segment_id: id })
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, IndexState> {
        self.state.read_or_recover()
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, IndexState> {
        self.state.write_or_recover()
    }

    /// Whether this log changes anything on disk: not when opened
    /// read-only, nor when its records are authenticated and it was opened
    /// without a key (it could sign nothing it wrote).
    fn writes(&self) -> bool {
        !self.config.read_only
            && self
                .config
                .macs
                .as_ref()
                .is_none_or(|k| k.current().is_some())
    }

    /// The compaction head: the last one, after the guest heads.
    fn compaction_head(&self) -> usize {
        self.heads.len() - 1
    }
}

/// One write ring per head for a log writing in `mode`: rings only for
/// direct writes (buffered writes are page-cache copies, done when
/// `pwritev` returns), none when the kernel refuses io_uring (said once)
/// or `LSVBLK_IO_URING=0`.
fn write_rings(
    heads: usize,
    mode: IoMode,
    read_only: bool,
) -> impl Iterator<Item = Option<WriteRing>> {
    let wanted = mode == IoMode::Direct
        && !read_only
        && std::env::var("LSVBLK_IO_URING")
            .ok()
            .is_none_or(|v| v != "0");
    let mut refused = false;
    (0..heads).map(move |_| {
        if !wanted || refused {
            return None;
        }
        WriteRing::new()
            .inspect_err(|error| {
                refused = true;
                tracing::info!(%error, "io_uring refused: segment writes use pwritev");
            })
            .ok()
    })
}
