//! Ephemeral volumes: scratch disks and VM save/restore state, storage that
//! disappears with the VM.
//!
//! The data key is generated in locked memory by the process that creates
//! the volume and never leaves it: it is not wrapped, not sent to the key
//! service, not written anywhere. The data goes through the same encrypted
//! log as any volume's. `volume.json` records the key's id (never a blob)
//! and the creating process's **owner mark**, a random value that only that
//! process knows; [`super::Superblock::load`] in any other process refuses
//! the volume ([`VolumeError::Ephemeral`]), so no inspect, snapshot, clone
//! or second serve touches it. When the process ends, the directory is
//! deleted; a directory left by a killed process is ciphertext under a key
//! that died with it — unreadable by construction — and is deleted by the
//! next [`remove_leftover`] on it.

use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;

use super::superblock::SUPERBLOCK_FILE;
use super::{Volume, VolumeError, VolumeLock, VolumeOptions, new_volume_id};
use crate::crypto::DataKey;

/// This process's owner mark: 128 random bits, made at first use, kept in
/// memory only.
pub fn owner_mark() -> &'static str {
    static MARK: OnceLock<String> = OnceLock::new();
    MARK.get_or_init(|| {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the OS random source works");
        hex::encode(bytes)
    })
}

impl Volume {
    /// Creates an ephemeral volume of `size_bytes` in `dir` (absent or
    /// empty): a data key generated here, in locked memory, never wrapped
    /// and never stored; the volume readable by this process only.
    pub fn create_ephemeral(
        dir: &Path,
        size_bytes: u64,
        options: &VolumeOptions,
    ) -> Result<Self, VolumeError> {
        let key = DataKey::generate(options.integrity.key_kind())?;
        Self::create_marked(
            dir,
            size_bytes,
            new_volume_id()?,
            key,
            None,
            |superblock| superblock.ephemeral_owner = Some(owner_mark().to_owned()),
            options,
        )
    }
}

/// Whether `dir` holds an ephemeral volume (of any process), read without
/// the owner check.
pub fn is_ephemeral(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(SUPERBLOCK_FILE))
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .is_some_and(|superblock| superblock["ephemeral_owner"].is_string())
}

/// Deletes what an ephemeral volume's process left in `dir` (it was killed):
/// `Ok(true)` if something was removed, `Ok(false)` if `dir` is absent or
/// empty. Refuses a directory that holds anything else (a real volume is
/// never deleted) and one whose volume a live process still holds (Busy).
pub fn remove_leftover(dir: &Path) -> Result<bool, VolumeError> {
    let empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(VolumeError::Io {
                path: dir.to_path_buf(),
                source: e,
            });
        }
    };
    if empty {
        return Ok(false);
    }
    if !is_ephemeral(dir) {
        return Err(VolumeError::AlreadyExists {
            path: dir.to_path_buf(),
        });
    }
    // The lock is free only if the process that made it is gone.
    let lock = VolumeLock::acquire(dir, false)?;
    remove_dir(dir)?;
    drop(lock);
    Ok(true)
}

/// Deletes an ephemeral volume's directory (at the end of its process).
pub fn remove_dir(dir: &Path) -> Result<(), VolumeError> {
    std::fs::remove_dir_all(dir).map_err(|e| VolumeError::Io {
        path: dir.to_path_buf(),
        source: e,
    })
}
