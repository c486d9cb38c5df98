//! The key lifecycle of a volume: when a key is due for rotation or
//! retirement (policy, clock, exact per-key byte accounting), and the
//! online rotation itself — a new key for new writes at once, then the old
//! key's blocks re-encrypted by compaction's mover, then the old key
//! forgotten and its blob removed.
//!
//! Crash safety: the superblock records the rotation (from which keys, to
//! which) before any write uses the new key; reopening finds it and the
//! rotation is continued (every step of the mover is crash-safe).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::snapshots::list_snapshots;
use super::{ActiveKey, KeyEntry, Superblock, Volume, VolumeError};
use crate::crypto::{DataKey, KeyId, Tweak};
use crate::store::{
    CompactOptions, CompactProgress, CompactReport, KeyUsage, RekeyPlan, StoreError,
};

/// IEEE P1619 recommends at most 2^36 128-bit blocks (1 TiB) per XTS key.
pub const XTS_KEY_SCOPE_BYTES: u64 = 1 << 40;
/// Default maximum age of a key before it is retired: 120 days.
pub const RETIRE_AGE_DEFAULT_S: u64 = 120 * 24 * 3600;
/// Default age at which a key is rotated: 90 days.
pub const ROTATE_AGE_DEFAULT_S: u64 = 90 * 24 * 3600;
/// Most passes of the re-encryptor per rotation (writes in flight at the
/// switch may land under the old key after the first pass).
const REKEY_PASSES_MAX: usize = 8;

/// When a volume's key is rotated and retired (in `volume.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyPolicy {
    /// Rotate when the key protects more than this many bytes now.
    pub rotate_live_bytes: u64,
    /// Rotate when the key has encrypted more than this many bytes ever.
    pub rotate_encrypted_bytes: u64,
    /// Rotate when the key is older than this, seconds.
    pub rotate_age_s: u64,
    /// Retire (rotate away from) any key older than this, seconds.
    pub retire_age_s: u64,
}

impl Default for KeyPolicy {
    /// Within the XTS key scope (1 TiB per key, counting every byte ever
    /// encrypted), half of it live, 90 days, retirement at 120 days.
    fn default() -> Self {
        Self {
            rotate_live_bytes: XTS_KEY_SCOPE_BYTES / 2,
            rotate_encrypted_bytes: XTS_KEY_SCOPE_BYTES,
            rotate_age_s: ROTATE_AGE_DEFAULT_S,
            retire_age_s: RETIRE_AGE_DEFAULT_S,
        }
    }
}

/// Why a key is (being) rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RotationReason {
    /// It protects more than `rotate_live_bytes`.
    LiveBytes,
    /// It encrypted more than `rotate_encrypted_bytes`.
    EncryptedBytes,
    /// It is older than `rotate_age_s`.
    Age,
    /// It is older than `retire_age_s`.
    Retirement,
    /// The key service (or an operator) says it is compromised: no rate limit.
    Compromised,
    /// Asked for by hand.
    Manual,
}

impl RotationReason {
    /// An urgent rotation runs without a rate limit.
    pub fn is_urgent(self) -> bool {
        self == RotationReason::Compromised
    }
}

/// A rotation in progress, recorded in the superblock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationState {
    /// Keys whose blocks are being re-encrypted.
    pub from: Vec<KeyId>,
    /// The key they go to (the current key).
    pub to: KeyId,
    /// Why.
    pub reason: RotationReason,
    /// When it started, seconds since the Unix epoch.
    pub started_unix_s: u64,
    /// Re-key the blocks kept snapshots hold too (`rotate --include-snapshots`).
    #[serde(default)]
    pub include_snapshots: bool,
}

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

/// Where time comes from, so tests can move it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Seconds since the Unix epoch.
    fn now_unix_s(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_s(&self) -> u64 {
        super::open::unix_now_s()
    }
}

/// The system clock moved by the number of seconds written in a file,
/// re-read at every call (`lsvblk serve --clock-skew-file`, for tests that
/// age keys in a running daemon). A missing or unreadable file means 0.
#[derive(Debug)]
pub struct SkewedClock(pub std::path::PathBuf);

impl Clock for SkewedClock {
    fn now_unix_s(&self) -> u64 {
        let skew: i64 = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        super::open::unix_now_s().saturating_add_signed(skew)
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock showing `now_unix_s`.
    pub fn new(now_unix_s: u64) -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(now_unix_s)))
    }

    /// Moves the clock forward by `seconds`.
    pub fn advance(&self, seconds: u64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix_s(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

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

    pub(super) fn lifecycle_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lifecycle.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Re-encryption for the mover: decrypt with the block's key, encrypt
    /// with `new_key`, same tweak (sequence number, block).
    fn rekey_transform<'a>(
        &'a self,
        new_key: &'a Arc<ActiveKey>,
    ) -> impl Fn(&mut [u8], KeyId, u64, u64) -> Result<(), StoreError> + Sync + 'a {
        let unit = self.unit();
        move |buf: &mut [u8], old: KeyId, seq: u64, lba: u64| {
            let old = self.key(&old).map_err(|_| StoreError::Corrupt {
                path: self.dir.clone(),
                offset_bytes: 0,
                reason: "a block to re-key is under a key the volume does not hold",
            })?;
            let tweak = Tweak::for_block(seq, lba);
            old.decrypt(&self.pool, buf, unit, tweak);
            new_key.encrypt(&self.pool, buf, unit, tweak);
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
        let volume_id = superblock.volume_id_bytes()?;
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
            let paths = super::SnapshotPaths::new(&self.dir, &meta.name);
            let data = crate::store::read_checkpoint(&paths.index, &volume_id)?;
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
                super::snapshots::store_snapshot_meta(&self.dir, &meta)?;
            }
            let plan = RekeyPlan {
                from,
                to: state.to,
                transform: &transform,
            };
            let (new, bytes) = self
                .log
                .rekey_snapshot(&meta.name, &data, &plan, &mut |d| {
                    crate::store::write_snapshot_index(&paths.index, &volume_id, d)
                })?;
            let still_used = used_keys(&new);
            meta.keys
                .retain(|e| still_used.contains(&e.key_id) || e.key_id == state.to);
            meta.current_key_id = state.to;
            super::snapshots::store_snapshot_meta(&self.dir, &meta)?;
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
        let snapshot_keys = snapshot_key_ids(self)?;
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
                super::snapshots::store_snapshot_meta(&self.dir, &meta)?;
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

/// The key ids an index's data extents use.
fn used_keys(data: &crate::store::CheckpointData) -> BTreeSet<KeyId> {
    data.extents
        .iter()
        .filter_map(|(_, e)| match e.location {
            crate::store::Location::Data(d) => Some(data.keys[d.key_index as usize]),
            crate::store::Location::Zero => None,
        })
        .collect()
}

/// Every key id any snapshot of the volume lists.
pub(crate) fn snapshot_key_ids(volume: &Volume) -> Result<BTreeSet<KeyId>, VolumeError> {
    Ok(list_snapshots(volume.dir())?
        .iter()
        .flat_map(|m| m.keys.iter().map(|k| k.key_id))
        .collect())
}
