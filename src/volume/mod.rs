//! A `Volume`: an encrypted, log-structured virtual disk in a directory.
//!
//! Byte-addressed like a disk: offsets and lengths are multiples of 512. The
//! volume's block (4096 B by default, or 512 B) is both the unit of the log
//! and the XTS data unit; writes that cover part of a block read, patch and
//! rewrite the whole block (read-modify-write).
//!
//! Every write takes a fresh sequence number and is encrypted with the tweak
//! (sequence number, block number), so writing the same data to the same
//! block twice gives two different ciphertexts.
//!
//! Durability: when `write`, `discard` or `write_zeroes` returns, the change
//! is in the kernel (it survives `kill -9`); when `flush` returns, every change
//! that returned before it is on stable storage (it survives a power cut).

mod keyring;
mod lifecycle;
mod lockfile;
mod snapshots;
mod stripes;
mod superblock;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use keyring::{ActiveKey, Keyring};
pub use lifecycle::{
    Clock, KeyPolicy, KeyStatus, ManualClock, RETIRE_AGE_DEFAULT_S, RotationOutcome,
    RotationReason, RotationState, SkewedClock, SystemClock, XTS_KEY_SCOPE_BYTES,
};
pub use lockfile::VolumeLock;
pub use snapshots::{
    PENDING_ACL_FILE, PendingAcl, SNAPSHOTS_DIR, SnapshotMeta, SnapshotPaths, list_snapshots,
    live_clones, load_snapshot, pending_acl, set_pending_acl, validate_snapshot_name,
};
pub use superblock::{CipherName, KeyEntry, ParentRef, Superblock};

use crate::crypto::key::KeyError;
use crate::crypto::{CryptoPool, DataUnit, KeyId, Tweak};
use crate::limits::{SECTOR_BYTES, WRITE_BYTES_MAX};
use crate::store::{
    AppendRecord, CompactOptions, CompactProgress, CompactReport, DataPiece, Log, ReadPiece,
    RecordKind, RecoveryReport, SpaceReport, StoreError,
};
use stripes::StripeLocks;

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

/// How to create or open a volume.
#[derive(Clone, Debug)]
pub struct VolumeOptions {
    /// Block size for `create`: 4096 (default) or 512. Ignored by `open`.
    pub block_bytes: u32,
    /// Target segment size for `create`, bytes. Ignored by `open`.
    pub segment_bytes: u64,
    /// Log heads (independent append streams; one per I/O queue is ideal).
    pub heads: usize,
    /// Open read-only: no writes, nothing on disk changes.
    pub read_only: bool,
    /// The crypto pool to use; `None` builds one with defaults.
    pub pool: Option<Arc<CryptoPool>>,
    /// Benchmark only: store blocks unencrypted. Needs the `null-cipher`
    /// feature; never use it for data.
    pub null_cipher: bool,
    /// The clock key ages are measured with (tests move it); `None`: the
    /// system clock.
    pub clock: Option<Arc<dyn Clock>>,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        Self {
            block_bytes: crate::limits::BLOCK_BYTES_DEFAULT,
            segment_bytes: crate::limits::SEGMENT_BYTES_DEFAULT,
            heads: 1,
            read_only: false,
            pool: None,
            null_cipher: false,
            clock: None,
        }
    }
}

/// An open volume. `Sync`: reads and writes may come from many threads.
pub struct Volume {
    dir: PathBuf,
    superblock: Superblock,
    log: Log,
    keyring: std::sync::RwLock<Keyring>,
    pool: Arc<CryptoPool>,
    stripes: StripeLocks,
    read_only: bool,
    recovery: RecoveryReport,
    /// For a clone (or a snapshot of one): the snapshots it reads through
    /// where it has no blocks of its own, nearest first.
    parents: Vec<Log>,
    /// The snapshot this is a read-only view of, if it is one.
    snapshot: Option<String>,
    /// An ACL change the last snapshot took, for the volume to adopt.
    adopt_acl: std::sync::Mutex<Option<PendingAcl>>,
    /// Where key ages are measured from.
    clock: Arc<dyn Clock>,
    /// One key-lifecycle change of the superblock at a time.
    lifecycle: std::sync::Mutex<()>,
    _lock: VolumeLock,
    _parent_locks: Vec<VolumeLock>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("dir", &self.dir)
            .field("volume_id", &self.superblock.volume_id)
            .field("size_bytes", &self.superblock.size_bytes)
            .finish_non_exhaustive()
    }
}

mod open;

pub use open::{WrappedKey, new_volume_id};

impl Volume {
    /// The volume's superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.superblock
    }

    /// Capacity, bytes.
    pub fn size_bytes(&self) -> u64 {
        self.superblock.size_bytes
    }

    /// Block size, bytes.
    pub fn block_bytes(&self) -> u32 {
        self.superblock.block_bytes
    }

    /// Id of the key new writes use (none for a snapshot or maintenance open).
    pub fn current_key_id(&self) -> Option<KeyId> {
        self.current_key().ok().map(|k| k.id())
    }

    /// The volume's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The snapshot this volume is a read-only view of, if it is one.
    pub fn snapshot_name(&self) -> Option<&str> {
        self.snapshot.as_deref()
    }

    /// Cleans mostly-dead segments (see `store` compaction); safe while the
    /// volume is read and written. Segments of snapshots are kept.
    pub fn compact(
        &self,
        options: &CompactOptions,
        progress: &mut dyn FnMut(&CompactProgress),
    ) -> Result<CompactReport, VolumeError> {
        self.check_writable()?;
        Ok(self.log.compact(options, progress)?)
    }

    /// Live and total bytes per segment.
    pub fn space(&self) -> Result<SpaceReport, VolumeError> {
        Ok(self.log.space()?)
    }

    /// True when opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// What recovery did when the volume was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The log underneath (for inspection tools and tests).
    pub fn log(&self) -> &Log {
        &self.log
    }

    fn keys(&self) -> std::sync::RwLockReadGuard<'_, Keyring> {
        self.keyring.read().unwrap_or_else(|p| p.into_inner())
    }

    fn keys_mut(&self) -> std::sync::RwLockWriteGuard<'_, Keyring> {
        self.keyring.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The key new writes use.
    fn current_key(&self) -> Result<Arc<ActiveKey>, VolumeError> {
        self.keys().current().cloned()
    }

    /// The key with `id`.
    fn key(&self, id: &KeyId) -> Result<Arc<ActiveKey>, VolumeError> {
        self.keys().get(id).cloned()
    }

    fn unit(&self) -> DataUnit {
        DataUnit::new(self.superblock.block_bytes).expect("block size is a valid data unit")
    }

    fn shift(&self) -> u32 {
        self.superblock.block_bytes.trailing_zeros()
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        if !offset.is_multiple_of(u64::from(SECTOR_BYTES))
            || !len.is_multiple_of(u64::from(SECTOR_BYTES))
        {
            return Err(VolumeError::Misaligned { offset, len });
        }
        let size = self.superblock.size_bytes;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(VolumeError::OutOfRange { offset, len, size });
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<(), VolumeError> {
        if self.read_only {
            Err(VolumeError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Reads `buf.len()` bytes at `offset`. Never-written, discarded and
    /// zeroed blocks read as zeros; a block whose checksum fails is an error.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        self.check_range(offset, buf.len() as u64)?;
        let block_bytes = u64::from(self.superblock.block_bytes);
        let first = offset / block_bytes;
        let end = (offset + buf.len() as u64).div_ceil(block_bytes);
        if offset.is_multiple_of(block_bytes) && (buf.len() as u64).is_multiple_of(block_bytes) {
            return self.read_blocks(first, buf);
        }
        // Part of a block: read whole blocks into a bounce buffer.
        let mut bounce = vec![0u8; ((end - first) * block_bytes) as usize];
        self.read_blocks(first, &mut bounce)?;
        let skip = (offset - first * block_bytes) as usize;
        buf.copy_from_slice(&bounce[skip..skip + buf.len()]);
        Ok(())
    }

    /// Reads `offset..offset + Σ len` into several buffers in order (a
    /// scatter list, such as a guest's descriptors). Buffers that hold whole
    /// blocks are read in place; otherwise one bounce buffer is used.
    pub fn read_vectored(&self, offset: u64, bufs: &mut [&mut [u8]]) -> Result<(), VolumeError> {
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        self.check_range(offset, total)?;
        let block_bytes = u64::from(self.superblock.block_bytes);
        let in_place = offset.is_multiple_of(block_bytes)
            && bufs
                .iter()
                .all(|b| (b.len() as u64).is_multiple_of(block_bytes));
        if in_place {
            let mut at = offset;
            for buf in bufs.iter_mut() {
                self.read_blocks(at / block_bytes, buf)?;
                at += buf.len() as u64;
            }
            return Ok(());
        }
        let mut bounce = vec![0u8; total as usize];
        self.read(offset, &mut bounce)?;
        let mut at = 0;
        for buf in bufs.iter_mut() {
            buf.copy_from_slice(&bounce[at..at + buf.len()]);
            at += buf.len();
        }
        Ok(())
    }

    /// Reads whole blocks from `lba` into `buf`: ciphertext straight into the
    /// buffer, verified, then decrypted in place.
    fn read_blocks(&self, lba: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        self.read_blocks_from(0, lba, buf)
    }

    /// Reads whole blocks through layer `layer` (0: the volume's own log,
    /// then its parent snapshots): holes fall through to the next layer.
    fn read_blocks_from(&self, layer: usize, lba: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        let shift = self.shift();
        let blocks = (buf.len() >> shift) as u64;
        let log = if layer == 0 {
            &self.log
        } else {
            &self.parents[layer - 1]
        };
        for piece in log.lookup(lba, blocks)? {
            match piece {
                ReadPiece::Hole { lba: at, blocks } if layer < self.parents.len() => {
                    let start = ((at - lba) << shift) as usize;
                    let part = &mut buf[start..start + ((blocks << shift) as usize)];
                    self.read_blocks_from(layer + 1, at, part)?;
                }
                ReadPiece::Hole { lba: at, blocks } | ReadPiece::Zeros { lba: at, blocks } => {
                    let start = ((at - lba) << shift) as usize;
                    buf[start..start + ((blocks << shift) as usize)].fill(0);
                }
                ReadPiece::Data(data) => {
                    let start = ((data.lba - lba) << shift) as usize;
                    let part = &mut buf[start..start + ((data.blocks << shift) as usize)];
                    self.read_piece(log, &data, part)?;
                }
            }
        }
        Ok(())
    }

    /// Reads one piece's ciphertext into `part` (guest memory, for a vhost
    /// read), then on the crypto pool verifies each block's checksum and
    /// decrypts it in place, chunk by chunk while it is in cache.
    fn read_piece(&self, log: &Log, piece: &DataPiece, part: &mut [u8]) -> Result<(), VolumeError> {
        let mut checksums = vec![0u8; piece.blocks as usize * 4];
        log.read_ciphertext_unverified(piece, part, &mut checksums)?;
        let key = self.key(&piece.key_id)?;
        let unit = self.unit();
        let first = Tweak::for_block(piece.seq, piece.lba);
        let verified = self.pool.try_run_with_side(
            part,
            &mut checksums,
            4,
            unit,
            first,
            |chunk, side, tweak| {
                for (index, (block, crc)) in chunk
                    .chunks_exact(unit.bytes())
                    .zip(side.chunks_exact(4))
                    .enumerate()
                {
                    if crc32c::crc32c(block).to_le_bytes() != crc {
                        // The tweak's low half is the chunk's first block number.
                        return Err(tweak.0 as u64 - piece.lba + index as u64);
                    }
                }
                key.decrypt_here(chunk, unit, tweak);
                Ok(())
            },
        );
        verified.map_err(|index| VolumeError::Store(log.block_corrupt(piece, index)))
    }

    /// Writes `data` at `offset`. Writes of up to 64 MiB are atomic across a
    /// crash (all old or all new); larger ones are split into such pieces.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        self.check_writable()?;
        self.check_range(offset, data.len() as u64)?;
        for (index, piece) in data.chunks(WRITE_BYTES_MAX as usize).enumerate() {
            self.write_one(offset + index as u64 * WRITE_BYTES_MAX, piece)?;
        }
        Ok(())
    }

    /// Writes `data` at `offset`, encrypting it in place: for callers that
    /// already copied the data (from guest memory, say) and need it no more.
    pub fn write_owned(&self, offset: u64, data: Vec<u8>) -> Result<(), VolumeError> {
        self.write_batch(vec![(offset, data)])
    }

    /// Writes several buffers, each at its offset, appending them to the log
    /// with one `pwritev`: the way to keep a deep queue of small writes cheap.
    /// Each write is atomic on its own; they succeed or fail together.
    /// Writes that are not whole blocks, or too large, go one by one.
    pub fn write_batch(&self, writes: Vec<(u64, Vec<u8>)>) -> Result<(), VolumeError> {
        self.check_writable()?;
        let block_bytes = u64::from(self.superblock.block_bytes);
        let mut whole = Vec::with_capacity(writes.len());
        for (offset, data) in writes {
            self.check_range(offset, data.len() as u64)?;
            let aligned = offset.is_multiple_of(block_bytes)
                && (data.len() as u64).is_multiple_of(block_bytes)
                && data.len() as u64 <= WRITE_BYTES_MAX;
            if aligned && !data.is_empty() {
                whole.push((offset / block_bytes, data));
            } else {
                self.write(offset, &data)?;
            }
        }
        if whole.is_empty() {
            return Ok(());
        }
        let ranges: Vec<(u64, u64)> = whole
            .iter()
            .map(|(lba, data)| (*lba, lba + (data.len() as u64 >> self.shift())))
            .collect();
        let _held = self.stripes.lock_ranges(&ranges, false);
        let key = self.current_key()?;
        let key = &*key;
        let sealed: Vec<(u64, Vec<u8>)> = whole
            .iter_mut()
            .map(|(lba, data)| {
                // Take the sequence number before encrypting: it is half of
                // the XTS tweak, and no two writes under one key may share one.
                let seq = self.log.next_seq();
                (seq, self.encrypt_and_checksum(key, seq, *lba, data))
            })
            .collect();
        let records: Vec<AppendRecord<'_>> = whole
            .iter()
            .zip(&sealed)
            .map(|((lba, data), (seq, checksums))| AppendRecord {
                kind: RecordKind::Data,
                seq: *seq,
                lba: *lba,
                block_count: (data.len() >> self.shift()) as u32,
                key_id: key.id(),
                payload: data,
                checksums: Some(checksums),
                moved: false,
            })
            .collect();
        self.log.append(head_hint(), &records)?;
        Ok(())
    }

    fn write_one(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        let block_bytes = u64::from(self.superblock.block_bytes);
        let first = offset / block_bytes;
        let end = (offset + data.len() as u64).div_ceil(block_bytes);
        let aligned =
            offset.is_multiple_of(block_bytes) && (data.len() as u64).is_multiple_of(block_bytes);
        // A partial block is read, patched and rewritten; no other write may
        // touch that block in between (see `stripes`).
        let _held = self.stripes.lock(first, end, !aligned);
        let mut shadow = if aligned {
            data.to_vec()
        } else {
            self.patch_blocks(offset, data, first, end)?
        };
        self.append_data(first, &mut shadow)
    }

    /// Builds the whole-block image of a partial-block write: old contents of
    /// the edge blocks, new data over them.
    fn patch_blocks(
        &self,
        offset: u64,
        data: &[u8],
        first: u64,
        end: u64,
    ) -> Result<Vec<u8>, VolumeError> {
        let block_bytes = u64::from(self.superblock.block_bytes);
        let mut shadow = vec![0u8; ((end - first) * block_bytes) as usize];
        let bs = block_bytes as usize;
        if !offset.is_multiple_of(block_bytes) {
            self.read_blocks(first, &mut shadow[..bs])?;
        }
        let data_end = offset + data.len() as u64;
        if !data_end.is_multiple_of(block_bytes)
            && (end - 1 > first || offset.is_multiple_of(block_bytes))
        {
            let last = shadow.len() - bs;
            self.read_blocks(end - 1, &mut shadow[last..])?;
        }
        let skip = (offset - first * block_bytes) as usize;
        shadow[skip..skip + data.len()].copy_from_slice(data);
        Ok(shadow)
    }

    /// Encrypts whole blocks in place under a fresh sequence number and
    /// appends them as one record.
    fn append_data(&self, lba: u64, shadow: &mut [u8]) -> Result<(), VolumeError> {
        let key = self.current_key()?;
        let key = &*key;
        let seq = self.log.next_seq();
        let checksums = self.encrypt_and_checksum(key, seq, lba, shadow);
        let record = AppendRecord {
            kind: RecordKind::Data,
            seq,
            lba,
            block_count: (shadow.len() >> self.shift()) as u32,
            key_id: key.id(),
            payload: shadow,
            checksums: Some(&checksums),
            moved: false,
        };
        self.log.append(head_hint(), &[record])?;
        Ok(())
    }

    /// Encrypts whole blocks in place with the tweaks of (`seq`, block) and
    /// returns their checksum table; each chunk is encrypted and checksummed
    /// on the crypto pool while it is in cache.
    fn encrypt_and_checksum(
        &self,
        key: &ActiveKey,
        seq: u64,
        lba: u64,
        data: &mut [u8],
    ) -> Vec<u8> {
        let unit = self.unit();
        let mut checksums = vec![0u8; data.len() / unit.bytes() * 4];
        let first = Tweak::for_block(seq, lba);
        let done: Result<(), ()> = self.pool.try_run_with_side(
            data,
            &mut checksums,
            4,
            unit,
            first,
            |chunk, side, tweak| {
                key.encrypt_here(chunk, unit, tweak);
                for (block, crc) in chunk
                    .chunks_exact(unit.bytes())
                    .zip(side.chunks_exact_mut(4))
                {
                    crc.copy_from_slice(&crc32c::crc32c(block).to_le_bytes());
                }
                Ok(())
            },
        );
        debug_assert!(done.is_ok());
        checksums
    }

    /// Discards `len` bytes at `offset`: the whole blocks inside the range
    /// read as zeros afterwards (partial blocks at the edges are left as they
    /// are, as a discard is only a hint).
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        let block_bytes = u64::from(self.superblock.block_bytes);
        let first = offset.div_ceil(block_bytes);
        let end = (offset + len) / block_bytes;
        self.append_zero_records(RecordKind::Discard, first, end)
    }

    /// Writes zeros over `len` bytes at `offset`, without storing any data
    /// for the whole blocks inside the range. With `unmap` those blocks are
    /// recorded as deallocated (like a discard) rather than as zeroed; both
    /// read as zeros.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), VolumeError> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        let block_bytes = u64::from(self.superblock.block_bytes);
        let first = offset.div_ceil(block_bytes);
        let end = (offset + len) / block_bytes;
        if first >= end {
            // Entirely inside one block (or two partial ones): write zeros.
            return self.write(offset, &vec![0u8; len as usize]);
        }
        let head_bytes = first * block_bytes - offset;
        if head_bytes > 0 {
            self.write(offset, &vec![0u8; head_bytes as usize])?;
        }
        let tail_bytes = offset + len - end * block_bytes;
        if tail_bytes > 0 {
            self.write(end * block_bytes, &vec![0u8; tail_bytes as usize])?;
        }
        let kind = if unmap {
            RecordKind::Discard
        } else {
            RecordKind::Zeroes
        };
        self.append_zero_records(kind, first, end)
    }

    fn append_zero_records(
        &self,
        kind: RecordKind,
        first: u64,
        end: u64,
    ) -> Result<(), VolumeError> {
        let mut lba = first;
        while lba < end {
            let blocks = (end - lba).min(u64::from(u32::MAX)) as u32;
            let _held = self.stripes.lock(lba, lba + u64::from(blocks), false);
            let record = AppendRecord {
                kind,
                seq: self.log.next_seq(),
                lba,
                block_count: blocks,
                key_id: KeyId::default(),
                payload: &[],
                checksums: None,
                moved: false,
            };
            self.log.append(head_hint(), &[record])?;
            lba += u64::from(blocks);
        }
        Ok(())
    }

    /// Makes every change that returned before this call durable. Writes a
    /// checkpoint when enough log has accumulated since the last one.
    pub fn flush(&self) -> Result<(), VolumeError> {
        if self.read_only {
            return Ok(());
        }
        if self.log.checkpoint_due() {
            self.log.checkpoint()?;
        } else {
            self.log.flush()?;
        }
        Ok(())
    }

    /// Flushes, seals the log, writes a checkpoint and releases the volume.
    pub fn close(self) -> Result<(), VolumeError> {
        self.log.close()?;
        Ok(())
    }
}

/// Which log head the calling thread appends through: threads spread over
/// heads so that concurrent writers rarely wait for one another.
fn head_hint() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static HINT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    HINT.with(|hint| *hint)
}

/// Reads the superblock of `dir` without opening the volume.
pub fn read_superblock(dir: &Path) -> Result<Superblock, VolumeError> {
    Superblock::load(dir)
}
