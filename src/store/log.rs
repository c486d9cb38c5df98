//! The log: appending records through log heads, keeping the extent index,
//! flushing, checkpointing, and recovering after a crash.
//!
//! Locking: a head's mutex is held from the start of an append until its
//! records are in the index, so each head's records enter the index in file
//! order and a checkpoint can name, per head, the offset up to which the
//! index holds everything. Lock order is always head, then index state.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::checkpoint::{self, CheckpointData};
use super::index::{DataLocation, ExtentIndex, Location, Piece};
use super::io::pwritev_all;
use super::record::{RECORD_HEADER_BYTES, RecordHeader, RecordKind, block_checksums};
use super::segment::{self, SEGMENT_HEADER_BYTES};
use super::snapshot::SnapshotPoint;
use super::{StoreError, sync_dir};
use crate::crypto::KeyId;
use crate::limits::{CHECKPOINT_INTERVAL_BYTES, CHECKPOINTS_KEPT};

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
    /// Number of log heads (independent append streams).
    pub heads: usize,
    /// Open without changing anything on disk.
    pub read_only: bool,
}

/// One record to append. The payload is ciphertext for `Data`, empty else.
#[derive(Clone, Copy, Debug)]
pub struct AppendRecord<'a> {
    /// Record kind (not `Seal`).
    pub kind: RecordKind,
    /// Sequence number from [`Log::next_seq`].
    pub seq: u64,
    /// First block.
    pub lba: u64,
    /// Blocks covered.
    pub block_count: u32,
    /// Key of the payload (ignored without payload).
    pub key_id: KeyId,
    /// Ciphertext, `block_count` blocks, for `Data`.
    pub payload: &'a [u8],
    /// The payload's block checksum table (CRC32C of each block, u32 LE),
    /// if the caller computed it while the data was hot; else the log does.
    pub checksums: Option<&'a [u8]>,
    /// Ciphertext copied unchanged from another record (compaction), not
    /// newly encrypted: it does not count toward the key's encrypted bytes.
    pub moved: bool,
}

/// A looked-up piece of a range, ready to read.
#[derive(Clone, Debug)]
pub enum ReadPiece {
    /// Never written here: reads as zeros, or as the parent's blocks for a
    /// clone.
    Hole {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u64,
    },
    /// Discarded or zeroed: reads as zeros.
    Zeros {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u64,
    },
    /// Ciphertext in a segment.
    Data(DataPiece),
}

/// Ciphertext blocks of one record, located in their segment.
#[derive(Clone, Debug)]
pub struct DataPiece {
    /// First block.
    pub lba: u64,
    /// Blocks.
    pub blocks: u64,
    /// Sequence number they were written under (for the XTS tweak).
    pub seq: u64,
    /// Key they are encrypted under.
    pub key_id: KeyId,
    segment_id: u64,
    file: Arc<File>,
    table_offset: u64,
    payload_offset: u64,
}

/// What recovery found and did when the log was opened.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// The checkpoint replay started from, if any.
    pub checkpoint: Option<PathBuf>,
    /// Checkpoints that were skipped because they failed their checks.
    pub skipped_checkpoints: Vec<String>,
    /// Segments scanned.
    pub segments_replayed: usize,
    /// Records applied from the log.
    pub records_replayed: usize,
    /// Torn tails cut off: (segment id, offset, reason).
    pub torn_tails: Vec<(u64, u64, &'static str)>,
}

struct OpenSegment {
    id: u64,
    file: Arc<File>,
    offset: u64,
}

struct Head {
    id: u32,
    open: Option<OpenSegment>,
}

/// What the index lock protects: everything a checkpoint must see at once.
struct IndexState {
    index: ExtentIndex,
    keys: Vec<KeyId>,
    key_indexes: HashMap<KeyId, u32>,
    /// Bytes ever encrypted under each key (parallel to `keys`).
    key_encrypted_bytes: Vec<u64>,
    /// Per head: (open segment, offset up to which the index has its records).
    head_positions: Vec<Option<(u64, u64)>>,
    segment_id_next: u64,
}

impl IndexState {
    fn empty(heads: usize) -> Self {
        Self {
            index: ExtentIndex::new(),
            keys: Vec::new(),
            key_indexes: HashMap::new(),
            key_encrypted_bytes: Vec::new(),
            head_positions: vec![None; heads],
            segment_id_next: 0,
        }
    }

    /// Loads a checkpoint's key table and extents into an empty state.
    fn load(&mut self, checkpoint: &CheckpointData) {
        self.keys = checkpoint.keys.clone();
        self.key_encrypted_bytes = checkpoint.key_encrypted_bytes.clone();
        self.key_encrypted_bytes.resize(self.keys.len(), 0);
        self.key_indexes = checkpoint
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (*k, i as u32))
            .collect();
        for (lba, extent) in &checkpoint.extents {
            self.index
                .insert(*lba, extent.blocks, extent.seq, extent.location);
        }
    }

    fn key_index(&mut self, key_id: KeyId) -> u32 {
        if let Some(index) = self.key_indexes.get(&key_id) {
            return *index;
        }
        let index = u32::try_from(self.keys.len()).expect("key table fits u32");
        self.keys.push(key_id);
        self.key_encrypted_bytes.push(0);
        self.key_indexes.insert(key_id, index);
        index
    }
}

/// An open log: segments, extent index, checkpoints.
pub struct Log {
    segments_dir: PathBuf,
    checkpoints_dir: PathBuf,
    config: LogConfig,
    heads: Vec<Mutex<Head>>,
    state: RwLock<IndexState>,
    files: RwLock<BTreeMap<u64, Arc<File>>>,
    seq_next: AtomicU64,
    bytes_since_checkpoint: AtomicU64,
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
    /// next checkpoint at the latest (see `snapshot`).
    unmaterialized: Mutex<Vec<UnmaterializedSnapshot>>,
    /// Segments each snapshot (by name) refers to: never deleted.
    pins: Mutex<BTreeMap<String, std::collections::BTreeSet<u64>>>,
    /// One compaction at a time.
    compact_lock: Mutex<()>,
}

/// A snapshot taken whose index is not written yet.
struct UnmaterializedSnapshot {
    name: String,
    path: PathBuf,
    point: SnapshotPoint,
}

/// A segment no head appends to any more, waiting for the next flush.
struct PendingSeal {
    id: u64,
    file: Arc<File>,
    end: u64,
    /// Full segments get a seal record after the sync; an abandoned one (its
    /// tail may hold a failed write) does not, so replay cuts the tail.
    seal: bool,
}

impl Log {
    /// Creates an empty log in `dir` (which must exist and hold no log).
    pub fn create(dir: &Path, config: LogConfig) -> Result<Self, StoreError> {
        for sub in ["segments", "checkpoints"] {
            let path = dir.join(sub);
            fs::create_dir(&path).map_err(|e| StoreError::io(&path, e))?;
        }
        sync_dir(dir)?;
        let log = Self::empty(dir, config, 0, 0);
        log.checkpoint()?;
        Ok(log)
    }

    fn empty(dir: &Path, config: LogConfig, seq_next: u64, segment_id_next: u64) -> Self {
        // The guest's heads, then one for compaction (so moved, cold blocks
        // do not mix with hot ones).
        let heads = (0..config.heads.max(1) + 1)
            .map(|id| {
                Mutex::new(Head {
                    id: id as u32,
                    open: None,
                })
            })
            .collect::<Vec<_>>();
        Self {
            segments_dir: dir.join("segments"),
            checkpoints_dir: dir.join("checkpoints"),
            state: RwLock::new(IndexState {
                segment_id_next,
                ..IndexState::empty(heads.len())
            }),
            heads,
            config,
            files: RwLock::new(BTreeMap::new()),
            seq_next: AtomicU64::new(seq_next),
            bytes_since_checkpoint: AtomicU64::new(0),
            checkpoint_lock: Mutex::new(()),
            pending: Mutex::new(Vec::new()),
            dir_dirty: AtomicBool::new(false),
            flush_lock: Mutex::new(()),
            unmaterialized: Mutex::new(Vec::new()),
            pins: Mutex::new(BTreeMap::new()),
            compact_lock: Mutex::new(()),
        }
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Takes the next write sequence number. Never returns the same number
    /// twice for one volume, across reopens and crashes.
    pub fn next_seq(&self) -> u64 {
        self.seq_next.fetch_add(1, Ordering::Relaxed)
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

    /// The open file of segment `id`.
    fn segment_file(&self, id: u64) -> Result<Arc<File>, StoreError> {
        self.files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .ok_or(StoreError::SegmentMissing { segment_id: id })
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, IndexState> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, IndexState> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends `records` (one `pwritev`) through head `head_hint % heads` and
    /// puts them in the index. When this returns Ok the records are in the
    /// kernel: they survive a crash of this process, not yet a power cut.
    pub fn append(&self, head_hint: usize, records: &[AppendRecord<'_>]) -> Result<(), StoreError> {
        self.append_on(head_hint % (self.heads.len() - 1), records)
            .map(|_| ())
    }

    /// Appends through the compaction head, the last one.
    fn append_compacted(
        &self,
        records: &[AppendRecord<'_>],
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        self.append_on(self.heads.len() - 1, records)
    }

    /// Appends through head `head_index`; returns where each record went
    /// (segment id, offset of its header).
    fn append_on(
        &self,
        head_index: usize,
        records: &[AppendRecord<'_>],
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        if self.config.read_only {
            return Err(StoreError::ReadOnly);
        }
        let mut head = self.heads[head_index]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let block_bytes = 1usize << self.config.block_shift;
        let headers: Vec<RecordHeader> = records
            .iter()
            .map(|r| self.header_for(r, block_bytes))
            .collect();
        let tables: Vec<std::borrow::Cow<'_, [u8]>> = records
            .iter()
            .map(|r| match (r.kind, r.checksums) {
                (RecordKind::Data, Some(given)) => {
                    assert_eq!(
                        given.len(),
                        r.block_count as usize * 4,
                        "checksum table size"
                    );
                    debug_assert_eq!(given, &block_checksums(r.payload, block_bytes)[..]);
                    std::borrow::Cow::Borrowed(given)
                }
                (RecordKind::Data, None) => block_checksums(r.payload, block_bytes).into(),
                _ => std::borrow::Cow::Borrowed(&[][..]),
            })
            .collect();
        let encoded: Vec<[u8; RECORD_HEADER_BYTES]> = headers
            .iter()
            .zip(&tables)
            .map(|(h, t)| {
                RecordHeader {
                    table_crc32c: if h.kind == RecordKind::Data {
                        crc32c::crc32c(t)
                    } else {
                        0
                    },
                    ..*h
                }
                .encode()
            })
            .collect();
        let mut slices: Vec<&[u8]> = Vec::with_capacity(records.len() * 3);
        for ((header, table), record) in encoded.iter().zip(&tables).zip(records) {
            slices.extend([&header[..], &table[..], record.payload]);
        }
        let total: u64 = slices.iter().map(|s| s.len() as u64).sum();
        self.ensure_segment(&mut head)?;
        let open = head.open.as_mut().expect("ensure_segment opened one");
        let start = open.offset;
        if let Err(error) = pwritev_all(&open.file, &slices, start) {
            let path = segment::segment_path(&self.segments_dir, open.id);
            // Take back whatever part landed so the segment stays a clean log;
            // if even that fails, abandon the segment (replay cuts the tail).
            if open.file.set_len(start).is_err() {
                let abandoned = PendingSeal {
                    id: open.id,
                    file: Arc::clone(&open.file),
                    end: start,
                    seal: false,
                };
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(abandoned);
                head.open = None;
            }
            return Err(StoreError::io(&path, error));
        }
        open.offset += total;
        let (segment_id, end) = (open.id, open.offset);
        let mut state = self.write_state();
        let mut offset = start;
        let mut locations = Vec::with_capacity(records.len());
        for (header, record) in headers.iter().zip(records) {
            self.apply(&mut state, segment_id, offset, header, record.key_id);
            locations.push((segment_id, offset));
            offset += header.record_bytes();
        }
        state.head_positions[head_index] = Some((segment_id, end));
        drop(state);
        drop(head);
        self.bytes_since_checkpoint
            .fetch_add(total, Ordering::Relaxed);
        Ok(locations)
    }

    fn header_for(&self, record: &AppendRecord<'_>, block_bytes: usize) -> RecordHeader {
        assert!(
            record.kind != RecordKind::Seal,
            "seal records are the log's own"
        );
        assert!(record.block_count > 0);
        assert!(record.lba + u64::from(record.block_count) <= self.config.capacity_blocks);
        let payload_expected = if record.kind == RecordKind::Data {
            record.block_count as usize * block_bytes
        } else {
            0
        };
        assert_eq!(record.payload.len(), payload_expected, "payload size");
        RecordHeader {
            kind: record.kind,
            seq: record.seq,
            lba: record.lba,
            block_count: record.block_count,
            block_shift: self.config.block_shift,
            key_id: if record.kind == RecordKind::Data {
                record.key_id
            } else {
                KeyId::default()
            },
            table_crc32c: 0,
            moved: record.moved && record.kind == RecordKind::Data,
        }
    }

    /// Puts one record into the index (newest wins).
    fn apply(
        &self,
        state: &mut IndexState,
        segment_id: u64,
        offset: u64,
        header: &RecordHeader,
        key_id: KeyId,
    ) {
        let location = match header.kind {
            RecordKind::Data => {
                let key_index = state.key_index(key_id);
                if !header.moved {
                    state.key_encrypted_bytes[key_index as usize] += header.payload_bytes();
                }
                Location::Data(DataLocation {
                    segment_id,
                    record_offset: offset,
                    record_lba: header.lba,
                    record_blocks: header.block_count,
                    key_index,
                })
            }
            RecordKind::Discard | RecordKind::Zeroes => Location::Zero,
            RecordKind::Seal => return,
        };
        state.index.insert(
            header.lba,
            u64::from(header.block_count),
            header.seq,
            location,
        );
    }

    /// Makes sure the head has an open segment with room, sealing a full one
    /// and starting the next.
    fn ensure_segment(&self, head: &mut Head) -> Result<(), StoreError> {
        if let Some(open) = &head.open {
            if open.offset < self.config.segment_bytes {
                return Ok(());
            }
            // No sync here: the guest has not asked for durability, and a
            // sync in the write path would make appends as slow as the disk.
            // The next flush syncs and seals it (a seal must follow a sync).
            let full = head.open.take().expect("checked above");
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(PendingSeal {
                    id: full.id,
                    file: full.file,
                    end: full.offset,
                    seal: true,
                });
        }
        // Allocate, create and publish the segment under the index lock, so a
        // checkpoint sees either none of it or all of it (see module docs).
        let mut state = self.write_state();
        let id = state.segment_id_next;
        let file =
            segment::create_segment(&self.segments_dir, id, &self.config.volume_id, head.id)?;
        // The directory entry becomes durable at the next flush.
        self.dir_dirty.store(true, Ordering::SeqCst);
        state.segment_id_next = id + 1;
        state.head_positions[head.id as usize] = Some((id, SEGMENT_HEADER_BYTES));
        drop(state);
        let file = Arc::new(file);
        self.files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::clone(&file));
        head.open = Some(OpenSegment {
            id,
            file,
            offset: SEGMENT_HEADER_BYTES,
        });
        Ok(())
    }

    /// Seals a segment: sync its records, then append the seal record. A seal
    /// promises that every record before it is durable.
    fn seal(&self, id: u64, file: &File, offset: u64) -> Result<(), StoreError> {
        let path = segment::segment_path(&self.segments_dir, id);
        file.sync_data().map_err(|e| StoreError::io(&path, e))?;
        self.write_seal_record(id, file, offset)
    }

    /// Appends the seal record at `offset`; the caller synced the segment.
    fn write_seal_record(&self, id: u64, file: &File, offset: u64) -> Result<(), StoreError> {
        let path = segment::segment_path(&self.segments_dir, id);
        let seal = RecordHeader {
            kind: RecordKind::Seal,
            seq: 0,
            lba: 0,
            block_count: 0,
            block_shift: self.config.block_shift,
            key_id: KeyId::default(),
            table_crc32c: 0,
            moved: false,
        };
        pwritev_all(file, &[&seal.encode()], offset).map_err(|e| StoreError::io(&path, e))
    }

    /// Makes every record appended before this call durable (fdatasync).
    pub fn flush(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let result = self.sync_all(&pending);
        if result.is_err() {
            // Keep them for the next flush to retry.
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(pending);
            return result;
        }
        // Every record before each seal is durable now: seal the full ones.
        for segment in pending.iter().filter(|p| p.seal) {
            self.write_seal_record(segment.id, &segment.file, segment.end)?;
        }
        Ok(())
    }

    /// Syncs the segment directory (if a segment was created), the segments
    /// that left their heads, and every head's open segment.
    fn sync_all(&self, pending: &[PendingSeal]) -> Result<(), StoreError> {
        if self.dir_dirty.swap(false, Ordering::SeqCst)
            && let Err(error) = sync_dir(&self.segments_dir)
        {
            self.dir_dirty.store(true, Ordering::SeqCst);
            return Err(error);
        }
        let open: Vec<(u64, Arc<File>)> = self
            .heads
            .iter()
            .filter_map(|head| {
                let head = head.lock().unwrap_or_else(|p| p.into_inner());
                head.open.as_ref().map(|o| (o.id, Arc::clone(&o.file)))
            })
            .collect();
        let segments = pending
            .iter()
            .map(|p| (p.id, &p.file))
            .chain(open.iter().map(|(id, f)| (*id, f)));
        for (id, file) in segments {
            file.sync_data()
                .map_err(|e| StoreError::io(&segment::segment_path(&self.segments_dir, id), e))?;
        }
        Ok(())
    }

    /// The range `blocks` blocks from `lba` as pieces to read.
    pub fn lookup(&self, lba: u64, blocks: u64) -> Result<Vec<ReadPiece>, StoreError> {
        let state = self.read_state();
        let pieces = state.index.lookup(lba, blocks);
        let files = self.files.read().unwrap_or_else(|p| p.into_inner());
        pieces
            .into_iter()
            .map(|piece| self.resolve(&state, &files, piece))
            .collect()
    }

    fn resolve(
        &self,
        state: &IndexState,
        files: &BTreeMap<u64, Arc<File>>,
        piece: Piece,
    ) -> Result<ReadPiece, StoreError> {
        let d = match piece.extent {
            None => {
                return Ok(ReadPiece::Hole {
                    lba: piece.lba,
                    blocks: piece.blocks,
                });
            }
            Some((_, Location::Zero)) => {
                return Ok(ReadPiece::Zeros {
                    lba: piece.lba,
                    blocks: piece.blocks,
                });
            }
            Some((_, Location::Data(d))) => d,
        };
        let seq = piece.extent.map_or(0, |(seq, _)| seq);
        let file = files.get(&d.segment_id).ok_or(StoreError::SegmentMissing {
            segment_id: d.segment_id,
        })?;
        let first = piece.lba - d.record_lba;
        let table_start = d.record_offset + RECORD_HEADER_BYTES as u64;
        let payload_start = table_start + u64::from(d.record_blocks) * 4;
        Ok(ReadPiece::Data(DataPiece {
            lba: piece.lba,
            blocks: piece.blocks,
            seq,
            key_id: state.keys[d.key_index as usize],
            segment_id: d.segment_id,
            file: Arc::clone(file),
            table_offset: table_start + first * 4,
            payload_offset: payload_start + (first << self.config.block_shift),
        }))
    }

    /// The error for block `index` of `piece` failing its checksum.
    pub fn block_corrupt(&self, piece: &DataPiece, index: u64) -> StoreError {
        StoreError::Corrupt {
            path: segment::segment_path(&self.segments_dir, piece.segment_id),
            offset_bytes: piece.payload_offset + (index << self.config.block_shift),
            reason: "block checksum mismatch",
        }
    }

    /// Reads the ciphertext of `piece` into `buf` and its block checksums
    /// into `table` (4 bytes per block) without checking them: the caller
    /// verifies each block (see [`Log::block_corrupt`]) before using it; the
    /// volume does so on the crypto pool, next to decryption.
    pub fn read_ciphertext_unverified(
        &self,
        piece: &DataPiece,
        buf: &mut [u8],
        table: &mut [u8],
    ) -> Result<(), StoreError> {
        assert_eq!(buf.len() as u64, piece.blocks << self.config.block_shift);
        assert_eq!(table.len() as u64, piece.blocks * 4);
        let path = || segment::segment_path(&self.segments_dir, piece.segment_id);
        let short = |offset| StoreError::Corrupt {
            path: path(),
            offset_bytes: offset,
            reason: "segment ends inside an indexed record",
        };
        if !segment::read_exact_or_eof(&piece.file, buf, piece.payload_offset)
            .map_err(|e| StoreError::io(&path(), e))?
        {
            return Err(short(piece.payload_offset));
        }
        if !segment::read_exact_or_eof(&piece.file, table, piece.table_offset)
            .map_err(|e| StoreError::io(&path(), e))?
        {
            return Err(short(piece.table_offset));
        }
        Ok(())
    }

    /// Writes a checkpoint of the index, making the log it covers durable
    /// first, and deletes checkpoints beyond the newest few.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self
            .checkpoint_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // A snapshot taken before this checkpoint must be on disk first:
        // recovery can rebuild it only from a checkpoint older than it.
        self.materialize_snapshots()?;
        let data = {
            let state = self.read_state();
            CheckpointData {
                seq_next: self.seq_next.load(Ordering::Relaxed),
                segment_id_next: state.segment_id_next,
                heads: state.head_positions.iter().flatten().copied().collect(),
                keys: state.keys.clone(),
                key_encrypted_bytes: state.key_encrypted_bytes.clone(),
                extents: state.index.iter().map(|(lba, e)| (lba, *e)).collect(),
            }
        };
        self.flush()?;
        checkpoint::write(&self.checkpoints_dir, &self.config.volume_id, &data)?;
        self.bytes_since_checkpoint.store(0, Ordering::Relaxed);
        for old in checkpoint::list_checkpoints(&self.checkpoints_dir)?
            .into_iter()
            .skip(CHECKPOINTS_KEPT)
        {
            fs::remove_file(&old).map_err(|e| StoreError::io(&old, e))?;
        }
        Ok(())
    }

    /// Seals every open segment and writes a final checkpoint, so the next
    /// open replays nothing.
    pub fn close(&self) -> Result<(), StoreError> {
        if self.config.read_only {
            return Ok(());
        }
        self.close_heads();
        // The checkpoint's flush syncs and seals every segment.
        self.checkpoint()
    }

    /// Takes every head's open segment off it (the next append starts a new
    /// one) and queues it for the next flush to seal.
    fn close_heads(&self) {
        for head in &self.heads {
            let mut head = head.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(open) = head.open.take() {
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(PendingSeal {
                        id: open.id,
                        file: open.file,
                        end: open.offset,
                        seal: true,
                    });
                self.write_state().head_positions[head.id as usize] = None;
            }
        }
    }
}

mod compact;
mod recovery;
mod rekey;
mod snapshots;
pub use compact::{
    CompactOptions, CompactProgress, CompactReport, RekeyPlan, SegmentSpace, SpaceReport,
};
pub use recovery::{open, open_view};
pub use rekey::KeyUsage;
pub use snapshots::write_snapshot_index;
