//! Creating and opening volumes.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::superblock::{FORMAT_NAME, FORMAT_VERSION};
use super::{
    CipherName, KeyEntry, Keyring, StripeLocks, Superblock, Volume, VolumeError, VolumeLock,
    VolumeOptions,
};
use crate::crypto::{CryptoPool, DataKey};
use crate::limits::{SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, VOLUME_BYTES_MAX};
use crate::store::{self, Log, LogConfig, RecoveryReport};

impl Volume {
    /// Creates a volume of `size_bytes` in `dir` (created if missing; must be
    /// empty), encrypted under `key`.
    pub fn create(
        dir: &Path,
        size_bytes: u64,
        key: DataKey,
        options: &VolumeOptions,
    ) -> Result<Self, VolumeError> {
        Self::create_with_id(dir, size_bytes, new_volume_id()?, key, None, options)
    }

    /// Creates a volume like [`Volume::create`] with a given volume id and the
    /// key's wrapped blob (base64, sealed by the wrapping service for this
    /// volume id), which the superblock keeps for later unwraps.
    pub fn create_with_id(
        dir: &Path,
        size_bytes: u64,
        volume_id: [u8; 16],
        key: DataKey,
        wrapped_blob: Option<String>,
        options: &VolumeOptions,
    ) -> Result<Self, VolumeError> {
        check_create_options(size_bytes, options)?;
        prepare_empty_dir(dir)?;
        let lock = VolumeLock::acquire(dir, false)?;
        let now = unix_now_s();
        let superblock = Superblock {
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
            current_key_id: key.id(),
            keys: vec![KeyEntry {
                key_id: key.id(),
                kind: key.kind(),
                wrapped_blob,
                created_unix_s: now,
            }],
            created_unix_s: now,
        };
        let keyring = Keyring::new(key, options.null_cipher)?;
        // The log first, the superblock last: a directory without a
        // superblock is not a volume, so a crash here leaves no half volume.
        let log = Log::create(dir, log_config(&superblock, options)?)?;
        superblock.store(dir)?;
        Self::assemble(
            dir,
            superblock,
            log,
            keyring,
            options,
            RecoveryReport::default(),
            lock,
        )
    }

    /// Opens the volume in `dir` with its data `key`, recovering from any
    /// crash (see `store` for what recovery does).
    pub fn open(dir: &Path, key: DataKey, options: &VolumeOptions) -> Result<Self, VolumeError> {
        // Refuse a directory that is not a volume before touching it.
        Superblock::load(dir)?;
        let lock = VolumeLock::acquire(dir, options.read_only)?;
        Self::open_locked(dir, lock, key, options)
    }

    /// Opens the volume in `dir` under a lock the caller already holds: a
    /// daemon takes the lock before it asks the key service for the key, so
    /// a second daemon is refused before any key is released to it.
    pub fn open_locked(
        dir: &Path,
        lock: VolumeLock,
        key: DataKey,
        options: &VolumeOptions,
    ) -> Result<Self, VolumeError> {
        let superblock = Superblock::load(dir)?;
        if key.id() != superblock.current_key_id {
            return Err(VolumeError::WrongKey {
                expected: superblock.current_key_id,
                got: key.id(),
            });
        }
        let keyring = Keyring::new(key, superblock.cipher == CipherName::Null)?;
        let (log, report) = store::open(dir, log_config(&superblock, options)?)?;
        Self::assemble(dir, superblock, log, keyring, options, report, lock)
    }

    fn assemble(
        dir: &Path,
        superblock: Superblock,
        log: Log,
        keyring: Keyring,
        options: &VolumeOptions,
        recovery: RecoveryReport,
        lock: VolumeLock,
    ) -> Result<Self, VolumeError> {
        let pool = match &options.pool {
            Some(pool) => Arc::clone(pool),
            None => Arc::new(
                CryptoPool::with_defaults().map_err(|e| VolumeError::BadOption(e.to_string()))?,
            ),
        };
        Ok(Volume {
            dir: dir.to_path_buf(),
            superblock,
            log,
            keyring,
            pool,
            stripes: StripeLocks::new(),
            read_only: options.read_only,
            recovery,
            _lock: lock,
        })
    }
}

/// A fresh random volume id.
pub fn new_volume_id() -> Result<[u8; 16], VolumeError> {
    let mut volume_id = [0u8; 16];
    getrandom::fill(&mut volume_id)
        .map_err(|e| VolumeError::BadOption(format!("random source failed: {e}")))?;
    Ok(volume_id)
}

fn log_config(superblock: &Superblock, options: &VolumeOptions) -> Result<LogConfig, VolumeError> {
    Ok(LogConfig {
        volume_id: superblock.volume_id_bytes()?,
        block_shift: superblock.block_shift(),
        capacity_blocks: superblock.size_bytes / u64::from(superblock.block_bytes),
        segment_bytes: superblock.segment_bytes,
        heads: options.heads.max(1),
        read_only: options.read_only,
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
            std::fs::create_dir_all(dir).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
