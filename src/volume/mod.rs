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
//!
//! One file per job: `write.rs` (the one write path: batches of changes),
//! `read.rs` (the read path), `open.rs` (create, open, clone, snapshot
//! views), `snapshots.rs` (snapshot metadata, delete, clones, pending ACL),
//! `rotation.rs` (online key rotation), `key_state.rs` (key age and usage,
//! rotation due, destroys owed, rewrapping), `policy.rs` (the key policy and
//! rotation state `volume.json` keeps), `superblock.rs` (`volume.json`),
//! `json_file.rs` (atomic JSON files), `clock.rs`, `keyring.rs` (key
//! schedules in locked memory), `stripes.rs` (read-modify-write locks),
//! `lockfile.rs` (one writer per volume, readers per snapshot),
//! `handover.rs` (a served volume: active, standby, handed over to another
//! daemon for a live migration), `error.rs`.
//!
//! Locks: the stripes of a batch, then the keyring (read, for the key),
//! then the log's own (see `store::Log`); the lifecycle lock, then the
//! keyring (write, to add or drop a key), then the log's.

mod base;
mod check;
mod clock;
pub mod ephemeral;
mod error;
#[cfg(test)]
mod format_tests;
pub mod handover;
mod json_file;
mod key_state;
mod keyring;
mod lockfile;
mod open;
mod over_base;
mod policy;
mod read;
pub use read::ReadRequest;
mod rotation;
mod scrub;
mod snapshots;
mod stripes;
mod superblock;
mod tags;
mod write;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use base::{BaseImage, BaseRef};
pub use check::{check_files, check_files_evicted};
pub use clock::{Clock, ManualClock, SkewedClock, SystemClock};
pub use error::VolumeError;
pub use key_state::KeyStatus;
pub use keyring::{ActiveKey, Keyring};
pub use lockfile::VolumeLock;
pub use open::WrappedKey;
pub use over_base::{BaseUse, FlattenProgress, FlattenReport};
pub use policy::{
    KeyPolicy, RETIRE_AGE_DEFAULT_S, ROTATE_AGE_DEFAULT_S, RotationReason, RotationState,
    XTS_KEY_SCOPE_BYTES,
};
pub use rotation::RotationOutcome;
pub use scrub::{ScrubDamage, ScrubReport};
pub use snapshots::{
    PENDING_ACL_FILE, PendingAcl, SNAPSHOTS_DIR, SnapshotMeta, SnapshotPaths, list_snapshots,
    live_clones, load_snapshot, pending_acl, set_pending_acl, validate_snapshot_name,
};
pub use superblock::{CipherName, Integrity, KeyEntry, ParentRef, Superblock, new_volume_id};
pub use write::Change;

use crate::crypto::{CryptoPool, DataUnit, KeyId};
use crate::limits::SECTOR_BYTES;
use crate::store::{
    CompactOptions, CompactProgress, CompactReport, IoMode, Log, RecoveryReport, SpaceReport,
};
use crate::sync::RwLockOrRecover;
use stripes::StripeLocks;

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
    /// Whether `create` makes a volume whose blocks are authenticated
    /// (`Mac`, the default). `Crc` is for benchmarks measuring the MAC's
    /// cost. Ignored by `open` (the volume says).
    pub integrity: Integrity,
    /// The clock key ages are measured with (tests move it); `None`: the
    /// system clock.
    pub clock: Option<Arc<dyn Clock>>,
    /// How the log writes segment files: direct (the default; buffered
    /// where the filesystem refuses it) or buffered.
    pub io: IoMode,
    /// Bytes of frame meta (block tables) the read path keeps in memory,
    /// so a random read needs one device read, not two (0: none).
    pub meta_cache_bytes: u64,
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
            integrity: Integrity::Mac,
            clock: None,
            io: IoMode::default(),
            meta_cache_bytes: crate::store::META_CACHE_BYTES_DEFAULT,
        }
    }
}

/// An open volume. `Sync`: reads and writes may come from many threads.
///
/// Poisoning: its locks are taken with the recovering helpers of
/// [`crate::sync`]. The keyring changes by single inserts and removals;
/// `adopt_acl` is a single value taken or set; the lifecycle lock guards
/// no data in memory, and `volume.json` is replaced atomically.
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
    /// The plain image under the volume (and under its parents), if any:
    /// what blocks no layer holds read.
    base: Option<BaseImage>,
    /// An ACL change the last snapshot took, for the volume to adopt.
    adopt_acl: std::sync::Mutex<Option<PendingAcl>>,
    /// Where key ages are measured from.
    clock: Arc<dyn Clock>,
    /// One key-lifecycle change of the superblock at a time.
    lifecycle: std::sync::Mutex<()>,
    /// What else a flush waits for (an upload to an object store), if set.
    flush_hook: std::sync::OnceLock<Arc<dyn FlushHook>>,
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

    /// For a clone: the snapshots it reads through, nearest first (each a
    /// read-only log of its parent's directory).
    pub fn parent_logs(&self) -> &[Log] {
        &self.parents
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

    /// How this process writes the volume's segment files (direct unless
    /// asked for buffered or the filesystem refuses direct I/O).
    pub fn io_mode(&self) -> IoMode {
        self.log.io_mode()
    }

    /// Hits, misses and size of the read path's frame-meta cache (the
    /// volume's own log; a clone's parents keep their own).
    pub fn meta_cache_stats(&self) -> crate::store::MetaCacheStats {
        self.log.meta_cache_stats()
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
        self.keyring.read_or_recover()
    }

    fn keys_mut(&self) -> std::sync::RwLockWriteGuard<'_, Keyring> {
        self.keyring.write_or_recover()
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
        if let Some(hook) = self.flush_hook.get() {
            hook.after_flush(&self.log)?;
        }
        Ok(())
    }

    /// Waits until lsvkms may destroy keys the volume no longer needs (see
    /// [`FlushHook::before_key_destroy`]).
    pub fn before_key_destroy(&self) -> Result<(), VolumeError> {
        match self.flush_hook.get() {
            Some(hook) => hook.before_key_destroy(&self.log),
            None => Ok(()),
        }
    }

    /// Sets what every [`Volume::flush`] also waits for, after the local
    /// flush (once; later calls are ignored and return false).
    pub fn set_flush_hook(&self, hook: Arc<dyn FlushHook>) -> bool {
        self.flush_hook.set(hook).is_ok()
    }

    /// Flushes, seals the log, writes a checkpoint and releases the volume.
    pub fn close(self) -> Result<(), VolumeError> {
        self.log.close()?;
        Ok(())
    }
}

/// Something a volume's flush also waits for once its log is durable
/// locally: e.g. that the log's tail is in an object store.
pub trait FlushHook: Send + Sync {
    /// Called by [`Volume::flush`] after the local flush; an error fails the
    /// flush.
    fn after_flush(&self, log: &Log) -> Result<(), VolumeError>;

    /// Called before lsvkms is asked to destroy keys the volume no longer
    /// needs: a copy of the volume kept elsewhere must not need them either.
    /// An error puts the destruction off.
    fn before_key_destroy(&self, _log: &Log) -> Result<(), VolumeError> {
        Ok(())
    }
}

/// Reads the superblock of `dir` without opening the volume.
pub fn read_superblock(dir: &Path) -> Result<Superblock, VolumeError> {
    Superblock::load(dir)
}
