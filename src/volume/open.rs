//! Creating and opening volumes.

use std::path::Path;
use std::sync::Arc;

use super::base::BaseRef;
use super::clock::{SystemClock, unix_now_s};
use super::policy::KeyPolicy;
use super::snapshots::{self, SnapshotPaths};
use super::stripes::StripeLocks;
use super::superblock::{FORMAT_NAME, FORMAT_VERSION, new_volume_id};
use super::{
    CipherName, Integrity, KeyEntry, Keyring, ParentRef, Superblock, Volume, VolumeError,
    VolumeLock, VolumeOptions,
};
use crate::crypto::{CryptoPool, DataKey};
use crate::limits::{SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, VOLUME_BYTES_MAX};
use crate::store::{self, Log, LogConfig, MacKeys, RecoveryReport};

/// A data key's wrapped form, for the superblock.
#[derive(Clone, Debug, Default)]
pub struct WrappedKey {
    /// The blob lsvkms sealed (base64).
    pub blob: String,
    /// The ACL sealed in it (a copy for display).
    pub acl: Vec<String>,
}

impl Volume {
    /// Creates a volume of `size_bytes` in `dir` (created if missing; must be
    /// empty), encrypted under `key`.
    pub fn create(
        dir: &Path,
        size_bytes: u64,
        key: DataKey,
        options: &VolumeOptions,
    ) -> Result<Self, VolumeError> {
        Self::create_over_base(dir, None, size_bytes, new_volume_id()?, key, None, options)
    }

    /// Creates a volume like [`Volume::create`] with a given volume id and the
    /// key's wrapped blob (sealed by the wrapping service for this volume
    /// id), which the superblock keeps for later unwraps; over the plain,
    /// read-only image `base` if one is given (see `base.rs`): its blocks
    /// never written read from the image, which may not be larger than
    /// `size_bytes` (see [`BaseRef::volume_bytes`] for the usual size).
    pub fn create_over_base(
        dir: &Path,
        base: Option<&Path>,
        size_bytes: u64,
        volume_id: [u8; 16],
        key: DataKey,
        wrapped: Option<WrappedKey>,
        options: &VolumeOptions,
    ) -> Result<Self, VolumeError> {
        let base = base.map(|b| BaseRef::record(b, size_bytes)).transpose()?;
        let mark = |superblock: &mut Superblock| superblock.base = base;
        Self::create_marked(dir, size_bytes, volume_id, key, wrapped, mark, options)
    }

    /// [`Volume::create_over_base`], with `mark` setting what else the new
    /// superblock records (an ephemeral volume's owner, a base image).
    pub(super) fn create_marked(
        dir: &Path,
        size_bytes: u64,
        volume_id: [u8; 16],
        key: DataKey,
        wrapped: Option<WrappedKey>,
        mark: impl FnOnce(&mut Superblock),
        options: &VolumeOptions,
    ) -> Result<Self, VolumeError> {
        check_create_options(size_bytes, options)?;
        prepare_empty_dir(dir)?;
        let lock = VolumeLock::acquire(dir, false)?;
        let mut superblock = new_superblock(volume_id, size_bytes, options, &key, wrapped);
        mark(&mut superblock);
        let keyring = Keyring::new(key, options.null_cipher)?;
        check_key_kinds(&superblock, &keyring)?;
        // The log first, the superblock last: a directory without a
        // superblock is not a volume, so a crash here leaves no half volume.
        let macs = log_keys(&superblock, &keyring);
        let log = Log::create(dir, log_config(&superblock, options, macs)?)?;
        superblock.store(dir)?;
        Self::assemble(dir, Parts::new(superblock, log, keyring, lock), options)
    }

    /// Creates in `dir` a writable clone of snapshot `snapshot` of the volume
    /// in `parent_dir`: it shares the snapshot's blocks (copy-on-write: its
    /// writes go to its own log, under its own `key`) and reads the
    /// snapshot's blocks with `parent_keys` (the snapshot's keys, unwrapped).
    pub fn create_clone(
        parent_dir: &Path,
        snapshot: &str,
        dir: &Path,
        key: DataKey,
        wrapped: Option<WrappedKey>,
        parent_keys: Vec<DataKey>,
        options: &VolumeOptions,
    ) -> Result<Self, VolumeError> {
        let volume_id = new_volume_id()?;
        Self::create_clone_with_id(
            parent_dir,
            snapshot,
            dir,
            volume_id,
            key,
            wrapped,
            parent_keys,
            options,
        )
    }

    /// [`Volume::create_clone`] with a given volume id (the one the clone's
    /// wrapped key was sealed for).
    #[allow(clippy::too_many_arguments)]
    pub fn create_clone_with_id(
        parent_dir: &Path,
        snapshot: &str,
        dir: &Path,
        volume_id: [u8; 16],
        key: DataKey,
        wrapped: Option<WrappedKey>,
        parent_keys: Vec<DataKey>,
        options: &VolumeOptions,
    ) -> Result<Self, VolumeError> {
        let parent_dir = parent_dir.canonicalize().map_err(|e| VolumeError::Io {
            path: parent_dir.to_path_buf(),
            source: e,
        })?;
        let parent = Superblock::load(&parent_dir)?;
        let meta = snapshots::load_snapshot(&parent_dir, snapshot)?;
        let options = VolumeOptions {
            block_bytes: parent.block_bytes,
            segment_bytes: parent.segment_bytes,
            null_cipher: parent.cipher == CipherName::Null,
            // Its reads fall through to the parent's blocks, checked alike.
            integrity: parent.integrity,
            ..options.clone()
        };
        check_create_options(meta.size_bytes, &options)?;
        prepare_empty_dir(dir)?;
        let dir = dir.canonicalize().map_err(|e| VolumeError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let lock = VolumeLock::acquire(&dir, false)?;
        let mut superblock = new_superblock(volume_id, meta.size_bytes, &options, &key, wrapped);
        superblock.keys.extend(meta.keys.iter().map(|entry| {
            KeyEntry {
                context_volume_id: Some(
                    entry
                        .context_volume_id
                        .clone()
                        .unwrap_or_else(|| parent.volume_id.clone()),
                ),
                ..entry.clone()
            }
        }));
        // A clone reads through its snapshot to the same base image.
        superblock.base.clone_from(&parent.base);
        superblock.parent = Some(ParentRef {
            volume_dir: parent_dir.clone(),
            volume_id: parent.volume_id.clone(),
            snapshot: snapshot.to_string(),
            snapshot_id: meta.snapshot_id.clone(),
        });
        let mut keys = parent_keys;
        let current = key.id();
        keys.push(key);
        let keyring = Keyring::with_keys(Some(current), keys, options.null_cipher)?;
        check_key_kinds(&superblock, &keyring)?;
        // Hold the parent snapshot (shared lock) and register on it before
        // the clone exists, so it cannot be deleted under the clone.
        let parents = snapshots::open_parent_views(&superblock, &keyring)?;
        let paths = SnapshotPaths::new(&parent_dir, snapshot);
        snapshots::register_clone(&paths, &superblock.volume_id, &dir)?;
        let macs = log_keys(&superblock, &keyring);
        let log = Log::create(&dir, log_config(&superblock, &options, macs)?)?;
        superblock.store(&dir)?;
        let parts = Parts {
            parents,
            ..Parts::new(superblock, log, keyring, lock)
        };
        Self::assemble(&dir, parts, &options)
    }

    /// Opens the volume in `dir` with its data `key`, recovering from any
    /// crash (see `store` for what recovery does).
    pub fn open(dir: &Path, key: DataKey, options: &VolumeOptions) -> Result<Self, VolumeError> {
        // Refuse a directory that is not a volume before touching it.
        Superblock::load(dir)?;
        let lock = VolumeLock::acquire(dir, options.read_only)?;
        Self::open_locked(dir, lock, vec![key], options)
    }

    /// Opens the volume in `dir` under a lock the caller already holds: a
    /// daemon takes the lock before it asks the key service for the keys, so
    /// a second daemon is refused before any key is released to it. `keys`
    /// must hold the volume's current key; a clone also needs its parent
    /// snapshot's keys to read the blocks it shares.
    pub fn open_locked(
        dir: &Path,
        lock: VolumeLock,
        keys: Vec<DataKey>,
        options: &VolumeOptions,
    ) -> Result<Self, VolumeError> {
        let superblock = Superblock::load(dir)?;
        if !keys.iter().any(|k| k.id() == superblock.current_key_id) {
            return Err(VolumeError::WrongKey {
                expected: superblock.current_key_id,
                got: keys.first().map(|k| k.id()).unwrap_or_default(),
            });
        }
        let keyring = Keyring::with_keys(
            Some(superblock.current_key_id),
            keys,
            superblock.cipher == CipherName::Null,
        )?;
        Self::open_with_keyring(dir, lock, superblock, keyring, options)
    }

    /// Opens the volume in `dir` without any key, for work that never needs
    /// plaintext: snapshots, compaction, inspection. Reads and writes fail
    /// with [`VolumeError::NoKey`].
    pub fn open_for_maintenance(dir: &Path, options: &VolumeOptions) -> Result<Self, VolumeError> {
        let superblock = Superblock::load(dir)?;
        let lock = VolumeLock::acquire(dir, options.read_only)?;
        let keyring = Keyring::with_keys(None, Vec::new(), false)?;
        Self::open_with_keyring(dir, lock, superblock, keyring, options)
    }

    fn open_with_keyring(
        dir: &Path,
        lock: VolumeLock,
        superblock: Superblock,
        keyring: Keyring,
        options: &VolumeOptions,
    ) -> Result<Self, VolumeError> {
        check_key_kinds(&superblock, &keyring)?;
        let parents = snapshots::open_parent_views(&superblock, &keyring)?;
        let unmaterialized = snapshots::unmaterialized(dir)?;
        let config = log_config(&superblock, options, log_keys(&superblock, &keyring))?;
        let (log, report) = store::open(dir, config, &unmaterialized)?;
        if !options.read_only {
            snapshots::remove_orphans(dir)?;
        }
        let parts = Parts {
            parents,
            recovery: report,
            ..Parts::new(superblock, log, keyring, lock)
        };
        let volume = Self::assemble(dir, parts, options)?;
        volume.pin_snapshots()?;
        Ok(volume)
    }

    /// Opens snapshot `name` of the volume in `dir` read-only, with `keys`
    /// (its key set, unwrapped). Works while another process serves the
    /// volume; the snapshot cannot be deleted while it is open.
    pub fn open_snapshot(
        dir: &Path,
        name: &str,
        keys: Vec<DataKey>,
        options: &VolumeOptions,
    ) -> Result<Self, VolumeError> {
        let superblock = Superblock::load(dir)?;
        let keyring = Keyring::with_keys(None, keys, superblock.cipher == CipherName::Null)?;
        check_key_kinds(&superblock, &keyring)?;
        let (log, lock) = snapshots::open_snapshot_view(dir, &superblock, name, &keyring)?;
        let parents = snapshots::open_parent_views(&superblock, &keyring)?;
        let options = VolumeOptions {
            read_only: true,
            ..options.clone()
        };
        let parts = Parts {
            parents,
            ..Parts::new(superblock, log, keyring, lock)
        };
        let mut volume = Self::assemble(dir, parts, &options)?;
        volume.snapshot = Some(name.to_string());
        Ok(volume)
    }

    /// The volume in `dir` made of `parts`, with the crypto pool and clock
    /// of `options`.
    fn assemble(dir: &Path, parts: Parts, options: &VolumeOptions) -> Result<Self, VolumeError> {
        let Parts {
            superblock,
            log,
            keyring,
            recovery,
            lock,
            parents,
        } = parts;
        let (parent_logs, parent_locks) = parents.into_iter().unzip();
        let pool = match &options.pool {
            Some(pool) => Arc::clone(pool),
            None => Arc::new(
                CryptoPool::with_defaults().map_err(|e| VolumeError::BadOption(e.to_string()))?,
            ),
        };
        let base = superblock.base.as_ref().map(BaseRef::open).transpose()?;
        Ok(Volume {
            dir: dir.to_path_buf(),
            base,
            superblock,
            log,
            keyring: std::sync::RwLock::new(keyring),
            pool,
            stripes: StripeLocks::new(),
            read_only: options.read_only,
            recovery,
            parents: parent_logs,
            snapshot: None,
            adopt_acl: std::sync::Mutex::new(None),
            clock: options
                .clock
                .clone()
                .unwrap_or_else(|| Arc::new(SystemClock)),
            lifecycle: std::sync::Mutex::new(()),
            flush_hook: std::sync::OnceLock::new(),
            _lock: lock,
            _parent_locks: parent_locks,
        })
    }
}

/// What [`Volume::assemble`] makes a volume of: the opened pieces and the
/// locks that keep them ours.
struct Parts {
    superblock: Superblock,
    log: Log,
    keyring: Keyring,
    /// What opening the log recovered (nothing for a new volume).
    recovery: RecoveryReport,
    /// The volume's own lock.
    lock: VolumeLock,
    /// A clone's parent snapshots, each with the lock that holds it.
    parents: Vec<(Log, VolumeLock)>,
}

impl Parts {
    /// A volume without parents and without recovery to report.
    fn new(superblock: Superblock, log: Log, keyring: Keyring, lock: VolumeLock) -> Self {
        Self {
            superblock,
            log,
            keyring,
            recovery: RecoveryReport::default(),
            lock,
            parents: Vec::new(),
        }
    }
}

fn new_superblock(
    volume_id: [u8; 16],
    size_bytes: u64,
    options: &VolumeOptions,
    key: &DataKey,
    wrapped: Option<WrappedKey>,
) -> Superblock {
    let now = options
        .clock
        .as_ref()
        .map_or_else(unix_now_s, |c| c.now_unix_s());
    let (wrapped_blob, acl) = wrapped.map_or((None, Vec::new()), |w| (Some(w.blob), w.acl));
    Superblock {
        format: FORMAT_NAME.to_string(),
        format_version: FORMAT_VERSION,
        volume_id: hex::encode(volume_id),
        size_bytes,
        block_bytes: options.block_bytes,
        segment_bytes: options.segment_bytes,
        cipher: if options.null_cipher {
            CipherName::Null
        } else {
            CipherName::Aes256Xts
        },
        integrity: options.integrity,
        current_key_id: key.id(),
        keys: vec![KeyEntry {
            key_id: key.id(),
            kind: key.kind(),
            wrapped_blob,
            created_unix_s: now,
            acl,
            context_volume_id: None,
        }],
        created_unix_s: now,
        parent: None,
        key_policy: KeyPolicy::default(),
        rotation: None,
        destroy_owed: Vec::new(),
        ephemeral_owner: None,
        base: None,
    }
}

/// Refuses a volume that holds a key made for an authenticated volume
/// (its kind, sealed in its wrapped blob, says so) when its superblock says
/// integrity `crc`: its MACs were stripped to turn the checks off
/// (docs/format.md, section 14).
fn check_key_kinds(superblock: &Superblock, keyring: &Keyring) -> Result<(), VolumeError> {
    match keyring.requiring_macs() {
        Some(key_id) if superblock.integrity == Integrity::Crc => {
            Err(store::StoreError::MacsStripped { key_id }.into())
        }
        _ => Ok(()),
    }
}

/// The keys the log of a volume with `superblock` signs and checks its
/// MACs with: `keyring`'s, if its records are authenticated.
fn log_keys(superblock: &Superblock, keyring: &Keyring) -> Option<Arc<dyn MacKeys>> {
    (superblock.integrity == Integrity::Mac).then(|| keyring.log_keys() as Arc<dyn MacKeys>)
}

/// The log configuration of a volume with `superblock`, opened with
/// `options`; `macs` as [`LogConfig::macs`].
pub(super) fn log_config(
    superblock: &Superblock,
    options: &VolumeOptions,
    macs: Option<Arc<dyn MacKeys>>,
) -> Result<LogConfig, VolumeError> {
    Ok(LogConfig {
        volume_id: superblock.volume_id_bytes()?,
        block_shift: superblock.block_shift(),
        capacity_blocks: superblock.size_bytes / u64::from(superblock.block_bytes),
        segment_bytes: superblock.segment_bytes,
        heads: options.heads.max(1),
        read_only: options.read_only,
        io: options.io,
        meta_cache_bytes: options.meta_cache_bytes,
        macs,
    })
}

fn check_create_options(size_bytes: u64, options: &VolumeOptions) -> Result<(), VolumeError> {
    let bad = |text: String| Err(VolumeError::BadOption(text));
    if !matches!(options.block_bytes, 512 | 4096) {
        return bad(format!(
            "block size {} B: must be 512 or 4096",
            options.block_bytes
        ));
    }
    if size_bytes == 0 || !size_bytes.is_multiple_of(u64::from(options.block_bytes)) {
        return bad(format!(
            "size {size_bytes} B: must be a positive multiple of the {} B block",
            options.block_bytes
        ));
    }
    if size_bytes > VOLUME_BYTES_MAX {
        return bad(format!(
            "size {size_bytes} B: the largest volume is {VOLUME_BYTES_MAX} B"
        ));
    }
    if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&options.segment_bytes) {
        return bad(format!(
            "segment size {} B: must be between {SEGMENT_BYTES_MIN} and {SEGMENT_BYTES_MAX}",
            options.segment_bytes
        ));
    }
    if options.read_only {
        return bad("cannot create a volume read-only".to_string());
    }
    Ok(())
}

fn prepare_empty_dir(dir: &Path) -> Result<(), VolumeError> {
    let io = |e| VolumeError::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(VolumeError::AlreadyExists {
                    path: dir.to_path_buf(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::fsmode::create_private_dir_all(dir).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}
