//! The online key rotation: a new key for new writes at once, then the old
//! keys' blocks re-encrypted by compaction's mover (and, if asked, those
//! kept snapshots hold), then the old keys forgotten and their blobs
//! removed.
//!
//! Crash safety: the superblock records the rotation (from which keys, to
//! which) before any write uses the new key; reopening finds it and the
//! rotation is continued (every step of the mover is crash-safe).

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;

use super::policy::{RotationReason, RotationState};
use super::snapshots::{SnapshotPaths, list_snapshots, snapshot_key_ids, store_snapshot_meta};
use super::tags::{first_forged_block, tag_blocks};
use super::{ActiveKey, Integrity, KeyEntry, Superblock, Volume, VolumeError};
use crate::crypto::{DataKey, KeyId, Tweak};
use crate::store::{
    CheckpointData, CompactOptions, CompactProgress, CompactReport, Location, RekeyPlan,
    StoreError, TableFormat,
};

/// Most passes of the re-encryptor per rotation (writes in flight at the
/// switch may land under the old key after the first pass).
const REKEY_PASSES_MAX: usize = 8;

/// What a finished rotation did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RotationOutcome {
    /// The mover's totals over all passes.
    pub bytes_moved: u64,
    /// Bytes re-encrypted under the new key.
    pub bytes_rekeyed: u64,
    /// Segments deleted.
    pub segments_deleted: u64,
    /// Keys the volume no longer holds (zeroized, blob removed).
    pub forgotten: Vec<KeyId>,
    /// Of those, keys no snapshot needs either: the key service may destroy
    /// them now.
    pub destroyable: Vec<KeyId>,
    /// Keys kept because a snapshot still has blocks under them.
    pub kept_for_snapshots: Vec<KeyId>,
    /// Snapshots whose blocks were re-keyed too.
    pub snapshots_rekeyed: Vec<String>,
    /// Snapshots left under their old keys, and why.
    pub snapshots_skipped: Vec<(String, String)>,
}

impl Volume {
    /// Starts a rotation to `new_key` (from the key service, same ACL):
    /// records it in the superblock, then makes new writes use the new key
    /// at once. [`Volume::continue_rotation`] does the rest.
    pub fn start_rotation(
        &self,
        new_key: DataKey,
        entry: KeyEntry,
        reason: RotationReason,
    ) -> Result<RotationState, VolumeError> {
        self.start_rotation_with(new_key, entry, reason, false)
    }

    /// [`Volume::start_rotation`]; with `include_snapshots` the rotation
    /// also re-keys the blocks of the volume's snapshots (those whose ACL is
    /// the current key's), so the old keys can go even while they are kept.
    pub fn start_rotation_with(
        &self,
        new_key: DataKey,
        entry: KeyEntry,
        reason: RotationReason,
        include_snapshots: bool,
    ) -> Result<RotationState, VolumeError> {
        self.check_writable()?;
        if entry.key_id != new_key.id() {
            return Err(VolumeError::WrongKey {
                expected: entry.key_id,
                got: new_key.id(),
            });
        }
        let _one = self.lifecycle_lock();
        // A snapshot's index is signed under a key the snapshot holds: the
        // current one when it has no block to take a key from. Write the
        // indexes still pending now, while that is the key the snapshots
        // were taken under (after the switch, and after a crash, it is not).
        self.log.materialize_snapshots()?;
        let mut superblock = Superblock::load(&self.dir)?;
        // Every key of this volume's own log but the new one; a rotation
        // that was interrupted keeps its keys in the set.
        let mut from: BTreeSet<KeyId> =
            self.log.key_usage().into_iter().map(|u| u.key_id).collect();
        from.insert(superblock.current_key_id);
        if let Some(previous) = &superblock.rotation {
            from.extend(previous.from.iter().copied());
        }
        from.remove(&entry.key_id);
        // Keys an earlier rotation already forgot have no blocks left.
        from.retain(|k| superblock.keys.iter().any(|e| e.key_id == *k));
        let state = RotationState {
            from: from.into_iter().collect(),
            to: entry.key_id,
            reason,
            started_unix_s: self.clock.now_unix_s(),
            include_snapshots,
        };
        superblock.keys.retain(|k| k.key_id != entry.key_id);
        superblock.keys.push(KeyEntry {
            created_unix_s: self.clock.now_unix_s(),
            ..entry
        });
        superblock.current_key_id = state.to;
        superblock.rotation = Some(state.clone());
        // Durable before any write uses the new key: a reopen must know it.
        superblock.store(&self.dir)?;
        let mut keys = self.keys_mut();
        keys.add(new_key)?;
        keys.set_current(state.to)?;
        tracing::info!(to = %state.to, ?reason, "key rotation started");
        Ok(state)
    }

    /// Runs (or resumes) the rotation recorded in the superblock: re-encrypts
    /// every live block under the old keys with the new one and cleans every
    /// segment holding old-key records, then forgets the old keys that no
    /// live block, checkpoint or snapshot needs. Rate-limited by `options`
    /// unless urgent.
    pub fn continue_rotation(
        &self,
        options: &CompactOptions,
        progress: &mut dyn FnMut(&CompactProgress),
    ) -> Result<Option<RotationOutcome>, VolumeError> {
        self.check_writable()?;
        let Some(state) = Superblock::load(&self.dir)?.rotation else {
            return Ok(None);
        };
        let options = CompactOptions {
            rate_bytes_per_s: if state.reason.is_urgent() {
                None
            } else {
                options.rate_bytes_per_s
            },
            ..options.clone()
        };
        let from: BTreeSet<KeyId> = state.from.iter().copied().collect();
        let new_key = self.key(&state.to)?;
        let transform = self.rekey_transform(&new_key);
        let plan = RekeyPlan {
            from: from.clone(),
            to: state.to,
            transform: &transform,
        };
        let mut outcome = RotationOutcome::default();
        for _ in 0..REKEY_PASSES_MAX {
            let report: CompactReport = self.log.rekey(&plan, &options, progress)?;
            outcome.bytes_moved += report.bytes_moved;
            outcome.bytes_rekeyed += report.bytes_rekeyed;
            outcome.segments_deleted += report.segments_deleted;
            let left: u64 = self
                .log
                .key_usage()
                .iter()
                .filter(|u| from.contains(&u.key_id))
                .map(|u| u.live_bytes)
                .sum();
            // Done, or stuck (e.g. a block that fails its checksum): the
            // rotation stays recorded and is retried later.
            if left == 0 || report.bytes_rekeyed == 0 {
                break;
            }
        }
        if state.include_snapshots {
            // While the old keys are still held: they decrypt the blocks.
            self.rekey_snapshots(&state, &mut outcome)?;
        }
        self.finish_rotation(&state, &mut outcome)?;
        Ok(Some(outcome))
    }

    /// Re-encryption for the mover: check each block's tag (a volume with
    /// MACs) with the block's key, decrypt with it, encrypt with `new_key`,
    /// same tweak (sequence number, block); then the new table entries
    /// (CRCs, and tags under `new_key`).
    fn rekey_transform<'a>(
        &'a self,
        new_key: &'a Arc<ActiveKey>,
    ) -> impl Fn(&mut [u8], &mut [u8], KeyId, u64, u64) -> Result<(), StoreError> + Sync + 'a {
        let unit = self.unit();
        let macs = self.superblock.integrity == Integrity::Mac;
        move |buf: &mut [u8], table: &mut [u8], old: KeyId, seq: u64, lba: u64| {
            let corrupt = |reason| StoreError::Corrupt {
                path: self.dir.clone(),
                offset_bytes: 0,
                reason,
            };
            let old = self.key(&old).map_err(|_| {
                corrupt("a block to re-key is under a key the volume does not hold")
            })?;
            let tweak = Tweak::for_block(seq, lba);
            if macs && first_forged_block(old.mac_key(), tweak, buf, unit.bytes(), table).is_some()
            {
                return Err(corrupt("a block to re-key fails its tag"));
            }
            old.decrypt(&self.pool, buf, unit, tweak);
            new_key.encrypt(&self.pool, buf, unit, tweak);
            TableFormat::V2.fill(buf, unit.bytes(), table);
            if macs {
                tag_blocks(new_key.mac_key(), tweak, buf, unit.bytes(), table);
            }
            Ok(())
        }
    }

    /// Re-keys every snapshot's blocks under the rotation's old keys with
    /// the new key: copies re-encrypted to the log, a new index file
    /// (atomically), the snapshot's metadata gaining the new key's blob
    /// first and losing the old ones last. Snapshots whose ACL is not the
    /// new key's are left as they are (re-keying would change who may read
    /// them), as are those under a key this volume no longer holds.
    fn rekey_snapshots(
        &self,
        state: &RotationState,
        outcome: &mut RotationOutcome,
    ) -> Result<(), VolumeError> {
        let _one = self.lifecycle_lock();
        let superblock = Superblock::load(&self.dir)?;
        let Some(current) = superblock
            .keys
            .iter()
            .find(|k| k.key_id == state.to)
            .cloned()
        else {
            return Ok(());
        };
        let new_key = self.key(&state.to)?;
        let transform = self.rekey_transform(&new_key);
        for mut meta in list_snapshots(&self.dir)? {
            let paths = SnapshotPaths::new(&self.dir, &meta.name);
            // An index that fails its MAC is not re-signed with the new key.
            let data = match self.log.read_snapshot_index(&paths.index) {
                Ok(data) => data,
                Err(error) => {
                    outcome
                        .snapshots_skipped
                        .push((meta.name.clone(), error.to_string()));
                    continue;
                }
            };
            let from: BTreeSet<KeyId> = used_keys(&data)
                .into_iter()
                .filter(|k| *k != state.to)
                .collect();
            if from.is_empty() {
                continue;
            }
            if meta.acl != current.acl {
                outcome.snapshots_skipped.push((
                    meta.name.clone(),
                    "its ACL differs from the new key's".to_string(),
                ));
                continue;
            }
            if let Some(missing) = from.iter().find(|k| self.key(k).is_err()) {
                outcome.snapshots_skipped.push((
                    meta.name.clone(),
                    format!("its key {missing} is not held by the volume any more"),
                ));
                continue;
            }
            if !meta.keys.iter().any(|e| e.key_id == state.to) {
                meta.keys.push(current.clone());
                store_snapshot_meta(&self.dir, &meta)?;
            }
            let plan = RekeyPlan {
                from,
                to: state.to,
                transform: &transform,
            };
            let (new, bytes) = self
                .log
                .rekey_snapshot(&meta.name, &data, &plan, &mut |d| {
                    self.log.write_snapshot_index(&paths.index, d)
                })?;
            let still_used = used_keys(&new);
            meta.keys
                .retain(|e| still_used.contains(&e.key_id) || e.key_id == state.to);
            meta.current_key_id = state.to;
            store_snapshot_meta(&self.dir, &meta)?;
            outcome.bytes_rekeyed += bytes;
            outcome.snapshots_rekeyed.push(meta.name.clone());
        }
        Ok(())
    }

    /// Forgets the old keys no live block uses any more: out of the keyring
    /// (zeroized), out of the superblock; reports which the key service may
    /// destroy (no snapshot needs them).
    fn finish_rotation(
        &self,
        state: &RotationState,
        outcome: &mut RotationOutcome,
    ) -> Result<(), VolumeError> {
        let _one = self.lifecycle_lock();
        let usage = self.log.key_usage();
        let still_live: BTreeSet<KeyId> = usage
            .iter()
            .filter(|u| u.live_bytes > 0)
            .map(|u| u.key_id)
            .collect();
        let snapshot_keys = snapshot_key_ids(&self.dir)?;
        let mut superblock = Superblock::load(&self.dir)?;
        let mut remaining = Vec::new();
        for key_id in &state.from {
            if still_live.contains(key_id) {
                remaining.push(*key_id);
                continue;
            }
            // The log's key table keeps every key it ever had (`from` takes
            // them all, so the rotation cleans any record left under one):
            // a key an earlier rotation forgot is not forgotten, nor handed
            // to the key service to destroy, a second time.
            if !superblock.keys.iter().any(|k| k.key_id == *key_id) {
                continue;
            }
            self.keys_mut().remove(key_id);
            superblock.keys.retain(|k| k.key_id != *key_id);
            outcome.forgotten.push(*key_id);
            if snapshot_keys.contains(key_id) {
                outcome.kept_for_snapshots.push(*key_id);
            } else {
                outcome.destroyable.push(*key_id);
            }
        }
        // Owed until the key service confirms (the caller asks it).
        for key_id in &outcome.destroyable {
            if !superblock.destroy_owed.contains(key_id) {
                superblock.destroy_owed.push(*key_id);
            }
        }
        superblock.rotation = if remaining.is_empty() {
            None
        } else {
            Some(RotationState {
                from: remaining,
                ..state.clone()
            })
        };
        superblock.store(&self.dir)?;
        tracing::info!(
            forgotten = ?outcome.forgotten,
            kept_for_snapshots = ?outcome.kept_for_snapshots,
            "key rotation finished"
        );
        Ok(())
    }
}

/// The key ids an index's data extents use.
fn used_keys(data: &CheckpointData) -> BTreeSet<KeyId> {
    data.extents
        .iter()
        .filter_map(|(_, e)| match e.location {
            Location::Data(d) => Some(data.keys[d.key_index as usize]),
            Location::Zero => None,
        })
        .collect()
}
