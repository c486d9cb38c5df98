//! The volume's keys as it records them: age and usage, whether the policy
//! makes a rotation due, the policy itself, keys owed to the key service to
//! destroy, and replacing wrapped blobs. The lifecycle lock serializes
//! every load-modify-store of `volume.json` these and the rotation make.

use serde::Serialize;

use super::policy::{KeyPolicy, RotationReason, RotationState};
use super::snapshots::{list_snapshots, store_snapshot_meta};
use super::{KeyEntry, Superblock, Volume, VolumeError};
use crate::crypto::KeyId;
use crate::store::KeyUsage;
use crate::sync::LockOrRecover;

/// One key's state, for `status` and `inspect`.
#[derive(Clone, Debug, Serialize)]
pub struct KeyStatus {
    /// The key.
    pub key_id: KeyId,
    /// New writes use it.
    pub current: bool,
    /// Age, seconds.
    pub age_s: u64,
    /// Bytes ever encrypted under it here, and bytes live under it now.
    pub usage: KeyUsage,
}

impl Volume {
    /// The superblock as it is on disk now (keys and rotation state change
    /// while the volume is open).
    pub fn superblock_now(&self) -> Result<Superblock, VolumeError> {
        Superblock::load(&self.dir)
    }

    /// The volume's key policy.
    pub fn key_policy(&self) -> Result<KeyPolicy, VolumeError> {
        Ok(Superblock::load(&self.dir)?.key_policy)
    }

    /// Replaces the key policy.
    pub fn set_key_policy(&self, policy: &KeyPolicy) -> Result<(), VolumeError> {
        self.check_writable()?;
        let _one = self.lifecycle_lock();
        let mut superblock = Superblock::load(&self.dir)?;
        superblock.key_policy = policy.clone();
        superblock.store(&self.dir)
    }

    /// The rotation in progress, if any.
    pub fn rotation(&self) -> Result<Option<RotationState>, VolumeError> {
        Ok(Superblock::load(&self.dir)?.rotation)
    }

    /// One key-lifecycle change of `volume.json` at a time.
    pub(super) fn lifecycle_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lifecycle.lock_or_recover()
    }

    /// Age and usage of every key of the volume's own log.
    pub fn key_status(&self) -> Result<Vec<KeyStatus>, VolumeError> {
        let superblock = Superblock::load(&self.dir)?;
        let now = self.clock.now_unix_s();
        let usage = self.log.key_usage();
        Ok(superblock
            .keys
            .iter()
            .filter(|k| k.context_volume_id.is_none())
            .map(|k| KeyStatus {
                key_id: k.key_id,
                current: k.key_id == superblock.current_key_id,
                age_s: now.saturating_sub(k.created_unix_s),
                usage: usage
                    .iter()
                    .find(|u| u.key_id == k.key_id)
                    .copied()
                    .unwrap_or(KeyUsage {
                        key_id: k.key_id,
                        ..KeyUsage::default()
                    }),
            })
            .collect())
    }

    /// Whether the policy says the current key must be rotated now, and why
    /// (retirement first, then age, then bytes).
    pub fn rotation_due(&self) -> Result<Option<RotationReason>, VolumeError> {
        let superblock = Superblock::load(&self.dir)?;
        if superblock.rotation.is_some() || self.read_only {
            return Ok(None);
        }
        let policy = &superblock.key_policy;
        let Some(current) = self.key_status()?.into_iter().find(|k| k.current) else {
            return Ok(None);
        };
        let reason = if current.age_s >= policy.retire_age_s {
            Some(RotationReason::Retirement)
        } else if current.age_s >= policy.rotate_age_s {
            Some(RotationReason::Age)
        } else if current.usage.encrypted_bytes > policy.rotate_encrypted_bytes {
            Some(RotationReason::EncryptedBytes)
        } else if current.usage.live_bytes > policy.rotate_live_bytes {
            Some(RotationReason::LiveBytes)
        } else {
            None
        };
        Ok(reason)
    }
}

impl Volume {
    /// Keys the volume forgot that the key service is to destroy and has
    /// not confirmed yet (a rotation records them as it forgets them).
    pub fn destroy_owed(&self) -> Result<Vec<KeyId>, VolumeError> {
        Ok(Superblock::load(&self.dir)?.destroy_owed)
    }

    /// Records that the key service is to destroy `keys` (forgotten by
    /// other means than a rotation: a deleted snapshot's).
    pub fn owe_destroy(&self, keys: &[KeyId]) -> Result<(), VolumeError> {
        self.change_destroy_owed(&mut |owed| {
            for key_id in keys {
                if !owed.contains(key_id) {
                    owed.push(*key_id);
                }
            }
        })
    }

    /// Records that the key service destroyed `keys`.
    pub fn destroy_confirmed(&self, keys: &[KeyId]) -> Result<(), VolumeError> {
        self.change_destroy_owed(&mut |owed| owed.retain(|k| !keys.contains(k)))
    }

    fn change_destroy_owed(
        &self,
        change: &mut dyn FnMut(&mut Vec<KeyId>),
    ) -> Result<(), VolumeError> {
        self.check_writable()?;
        let _one = self.lifecycle_lock();
        let mut superblock = Superblock::load(&self.dir)?;
        let before = superblock.destroy_owed.clone();
        change(&mut superblock.destroy_owed);
        if superblock.destroy_owed != before {
            superblock.store(&self.dir)?;
        }
        Ok(())
    }

    /// Replaces wrapped blobs (after the key service sealed them again under
    /// a newer wrapping key): `rewrap` gets each base64 blob of the volume
    /// and of every snapshot and returns its replacement, or `None` to keep
    /// it. Returns how many blobs were replaced. No data key is involved.
    pub fn replace_wrapped_blobs(
        &self,
        rewrap: &mut dyn FnMut(&KeyEntry) -> Result<Option<String>, VolumeError>,
    ) -> Result<usize, VolumeError> {
        self.check_writable()?;
        let _one = self.lifecycle_lock();
        let mut superblock = Superblock::load(&self.dir)?;
        let mut replaced = rewrap_entries(&mut superblock.keys, rewrap)?;
        if replaced > 0 {
            superblock.store(&self.dir)?;
        }
        for mut meta in list_snapshots(&self.dir)? {
            let in_meta = rewrap_entries(&mut meta.keys, rewrap)?;
            if in_meta > 0 {
                store_snapshot_meta(&self.dir, &meta)?;
            }
            replaced += in_meta;
        }
        Ok(replaced)
    }
}

/// Replaces the blobs of `entries` that `rewrap` returns a new one for.
fn rewrap_entries(
    entries: &mut [KeyEntry],
    rewrap: &mut dyn FnMut(&KeyEntry) -> Result<Option<String>, VolumeError>,
) -> Result<usize, VolumeError> {
    let mut replaced = 0;
    for entry in entries {
        if let Some(blob) = rewrap(entry)? {
            entry.wrapped_blob = Some(blob);
            replaced += 1;
        }
    }
    Ok(replaced)
}
