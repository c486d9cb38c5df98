//! The key lifecycle of a served (or opened) volume: rotations when the
//! policy says so or when lsvkms marks a key compromised, resuming an
//! interrupted rotation, destroying keys nothing needs any more, and
//! replacing blobs after lsvkms rotated its wrapping key.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::{Value, json};

use super::ServiceError;
use crate::crypto::KeyId;
use crate::kms::api::{KeyContext, KeyInfo};
use crate::kms::client::{ClientError, KmsClient};
use crate::kms::keys::KeyAction;
use crate::store::CompactOptions;
use crate::sync::LockOrRecover;
use crate::volume::{KeyEntry, RotationReason, Volume, VolumeError};

/// An operator's rotation request (`lsvblk rotate`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotateRequest {
    /// The key that is compromised: rotate away from it without a rate
    /// limit and have lsvkms destroy it afterwards.
    pub compromised: Option<KeyId>,
    /// Re-encryption rate, MiB/s (None: the caretaker's; 0: no limit).
    pub rate_mib_s: Option<u64>,
    /// Re-key the blocks kept snapshots hold too.
    pub include_snapshots: bool,
}

/// The volume's key caretaker.
pub struct KeyCare {
    volume: Arc<Volume>,
    kms: Option<KmsClient>,
    /// Background re-encryption rate, MiB/s (0: unlimited).
    rate_mib: u64,
    stop: Arc<AtomicBool>,
    /// One rotation at a time.
    rotating: Mutex<()>,
    status: Mutex<CareStatus>,
}

/// What `status` shows about keys.
#[derive(Default)]
struct CareStatus {
    progress: Option<Value>,
    last: Option<Value>,
    rotations: u64,
    /// Compromised keys a snapshot still needs (cannot be destroyed).
    compromised_kept: Vec<KeyId>,
    last_error: Option<String>,
    /// What lsvkms last said about each key (state, ACL, revision): a poll
    /// passes the revision and is answered "unchanged" (not audited) until
    /// the record changes.
    kms_keys: std::collections::BTreeMap<KeyId, KeyInfo>,
    /// Polls of lsvkms for key state so far.
    kms_polls: u64,
}

impl KeyCare {
    /// A caretaker for `volume`, talking to lsvkms through `kms`.
    pub fn new(
        volume: Arc<Volume>,
        kms: Option<KmsClient>,
        rate_mib: u64,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Self {
            volume,
            kms,
            rate_mib,
            stop,
            rotating: Mutex::new(()),
            status: Mutex::new(CareStatus::default()),
        }
    }

    fn status_mut(&self) -> std::sync::MutexGuard<'_, CareStatus> {
        self.status.lock_or_recover()
    }

    /// The right to rotate: one rotation at a time.
    fn one_rotation(&self) -> Result<std::sync::MutexGuard<'_, ()>, ServiceError> {
        self.rotating
            .try_lock()
            .map_err(|_| ServiceError::RotationRunning)
    }

    fn kms(&self) -> Result<&KmsClient, ServiceError> {
        self.kms.as_ref().ok_or(ServiceError::NoKeyService)
    }

    /// One look at the keys (the daemon calls it every few seconds): resume
    /// a rotation, rotate a compromised or due key, destroy what is owed,
    /// replace blobs sealed under an old wrapping key.
    pub fn tick(&self) {
        // Without lsvkms (an ephemeral volume) there is nothing to ask.
        if self.volume.is_read_only() || self.kms.is_none() {
            return;
        }
        let result = (|| -> Result<(), ServiceError> {
            self.destroy_pending();
            if self.volume.rotation()?.is_some() {
                self.continue_rotation(None, &mut |_| {})?;
                return Ok(());
            }
            if let Some(key_id) = self.compromised_key()? {
                tracing::warn!(%key_id, "lsvkms reports the key compromised: rotating now");
                // Snapshots are re-keyed too, so the key can be destroyed.
                self.rotate(
                    RotationReason::Compromised,
                    Some(key_id),
                    None,
                    true,
                    &mut |_| {},
                )?;
                return Ok(());
            }
            if let Some(reason) = self.volume.rotation_due()? {
                tracing::info!(?reason, "key rotation due");
                self.rotate(reason, None, None, false, &mut |_| {})?;
            }
            self.rewrap_if_newer()?;
            Ok(())
        })();
        self.status_mut().last_error = result.err().map(|e| e.to_string());
    }

    /// The first of the volume's own keys lsvkms says is compromised.
    fn compromised_key(&self) -> Result<Option<KeyId>, ServiceError> {
        let Some(kms) = &self.kms else {
            return Ok(None);
        };
        let kept = self.status_mut().compromised_kept.clone();
        let keys = self.volume.key_status()?;
        self.status_mut()
            .kms_keys
            .retain(|id, _| keys.iter().any(|k| k.key_id == *id));
        for key in keys {
            if kept.contains(&key.key_id) {
                continue;
            }
            match self.poll_key(kms, key.key_id) {
                Ok(info) if info.compromised => return Ok(Some(key.key_id)),
                Ok(_) => {}
                Err(source) => {
                    return Err(ServiceError::KeyService {
                        action: format!("asking lsvkms about key {}", key.key_id),
                        source,
                    });
                }
            }
        }
        Ok(None)
    }

    /// What lsvkms says about `key_id` now: asked with the revision last
    /// seen, so an unchanged key costs lsvkms no audit record; a change is
    /// logged here.
    fn poll_key(&self, kms: &KmsClient, key_id: KeyId) -> Result<KeyInfo, ClientError> {
        let known = self.status_mut().kms_keys.get(&key_id).cloned();
        let answer = match &known {
            Some(info) => kms.key_info_since(key_id, info.revision)?,
            None => Some(kms.key_info(key_id)?),
        };
        let mut status = self.status_mut();
        status.kms_polls += 1;
        match answer {
            None => Ok(known.expect("asked with a revision")),
            Some(info) => {
                if known.as_ref().is_some_and(|k| k.status != info.status) {
                    tracing::warn!(%key_id, status = %info.status, "lsvkms reports a new key state");
                }
                status.kms_keys.insert(key_id, info.clone());
                Ok(info)
            }
        }
    }

    /// Rotates to a new key from lsvkms (same ACL) and re-encrypts the old
    /// key's blocks (also those kept snapshots hold, with
    /// `include_snapshots`); `compromised` names the key that forced it.
    pub fn rotate(
        &self,
        reason: RotationReason,
        compromised: Option<KeyId>,
        rate_mib: Option<u64>,
        include_snapshots: bool,
        progress: &mut dyn FnMut(Value),
    ) -> Result<Value, ServiceError> {
        let _one = self.one_rotation()?;
        let superblock = self.volume.superblock_now()?;
        if superblock.rotation.is_none() {
            let current = superblock
                .keys
                .iter()
                .find(|k| k.key_id == superblock.current_key_id)
                .ok_or(ServiceError::NoCurrentKeyEntry)?;
            if current.acl.is_empty() {
                return Err(ServiceError::NoAcl);
            }
            let generated = self
                .kms()?
                .generate_key_of_kind(
                    superblock.integrity.key_kind(),
                    &current.acl,
                    &KeyContext {
                        volume_id: superblock.volume_id.clone(),
                        snapshot_id: String::new(),
                    },
                    Some(current.key_id),
                )
                .map_err(|source| ServiceError::KeyService {
                    action: "asking lsvkms for a key".into(),
                    source,
                })?;
            let entry = KeyEntry {
                key_id: generated.key.id(),
                kind: generated.key.kind(),
                wrapped_blob: Some(
                    base64::engine::general_purpose::STANDARD.encode(&generated.wrapped_blob),
                ),
                created_unix_s: 0,
                acl: current.acl.clone(),
                context_volume_id: None,
            };
            self.volume
                .start_rotation_with(generated.key, entry, reason, include_snapshots)?;
        }
        let outcome = self.run_continue(rate_mib, progress);
        drop(_one);
        let mut outcome = outcome?;
        if let Some(key_id) = compromised {
            outcome["compromised"] = json!(key_id);
        }
        Ok(outcome)
    }

    /// Rotates now because an operator asked (`lsvblk rotate`): a
    /// compromised key forces the snapshots' blocks to be re-keyed too, so
    /// that it can be destroyed.
    pub fn rotate_as_asked(
        &self,
        asked: &RotateRequest,
        progress: &mut dyn FnMut(Value),
    ) -> Result<Value, ServiceError> {
        let reason = if asked.compromised.is_some() {
            RotationReason::Compromised
        } else {
            RotationReason::Manual
        };
        self.rotate(
            reason,
            asked.compromised,
            asked.rate_mib_s,
            asked.include_snapshots || asked.compromised.is_some(),
            progress,
        )
    }

    /// Continues the rotation recorded in the volume.
    pub fn continue_rotation(
        &self,
        rate_mib: Option<u64>,
        progress: &mut dyn FnMut(Value),
    ) -> Result<Value, ServiceError> {
        let _one = self.one_rotation()?;
        self.run_continue(rate_mib, progress)
    }

    fn run_continue(
        &self,
        rate_mib: Option<u64>,
        progress: &mut dyn FnMut(Value),
    ) -> Result<Value, ServiceError> {
        let rotation = self.volume.rotation()?;
        let rate = rate_mib.unwrap_or(self.rate_mib);
        let options = CompactOptions {
            live_ratio_max: 1.0,
            rate_bytes_per_s: (rate > 0).then_some(rate << 20),
            stop: Some(Arc::clone(&self.stop)),
            crash_after_steps: None,
        };
        let started = std::time::Instant::now();
        let result = self.volume.continue_rotation(&options, &mut |p| {
            let value = serde_json::to_value(p).unwrap_or(Value::Null);
            self.status_mut().progress = Some(value.clone());
            progress(value);
        });
        self.status_mut().progress = None;
        let Some(outcome) = result? else {
            return Ok(json!({ "rotation": null }));
        };
        let seconds = started.elapsed().as_secs_f64();
        let compromised = rotation
            .as_ref()
            .filter(|r| r.reason == RotationReason::Compromised)
            .map(|r| r.from.clone())
            .unwrap_or_default();
        {
            let mut status = self.status_mut();
            // The volume recorded `outcome.destroyable` as owed to lsvkms.
            status.rotations += 1;
            for key_id in &outcome.kept_for_snapshots {
                if compromised.contains(key_id) {
                    tracing::warn!(%key_id, "a compromised key is kept: snapshots still need it; delete them to destroy it");
                    status.compromised_kept.push(*key_id);
                }
            }
        }
        self.destroy_pending();
        let value = json!({
            "reason": rotation.map(|r| r.reason),
            "outcome": outcome,
            "seconds": seconds,
            "rekey_mib_per_s": outcome.bytes_rekeyed as f64 / (1 << 20) as f64 / seconds.max(1e-9),
            "current_key_id": self.volume.current_key_id(),
        });
        self.status_mut().last = Some(value.clone());
        Ok(value)
    }

    /// Tells lsvkms to destroy the keys the volume owes it (recorded in the
    /// volume until lsvkms confirms: retried, also after a restart, if it
    /// is down).
    pub fn destroy_pending(&self) {
        let Some(kms) = &self.kms else {
            return;
        };
        let owed = match self.volume.destroy_owed() {
            Ok(owed) => owed,
            Err(error) => {
                tracing::warn!(%error, "cannot read the keys owed to lsvkms");
                return;
            }
        };
        if owed.is_empty() {
            return;
        }
        // A copy of the volume in an object store must not need them either.
        if let Err(error) = self.volume.before_key_destroy() {
            tracing::warn!(%error, "the keys owed to lsvkms wait for the object store");
            return;
        }
        let mut destroyed = Vec::new();
        for key_id in owed {
            match kms.set_key_state(key_id, KeyAction::Destroy) {
                Ok(_) => {
                    tracing::info!(%key_id, "lsvkms destroyed the old key");
                    destroyed.push(key_id);
                }
                // lsvkms does not know the key (another service's, or its
                // state was reset): nothing left to destroy; asking again
                // every few seconds would never end.
                Err(ClientError::Api { status: 404, .. }) => {
                    tracing::warn!(%key_id, "lsvkms does not know the key to destroy; dropping it");
                    destroyed.push(key_id);
                }
                Err(error) => {
                    tracing::warn!(%key_id, %error, "lsvkms did not destroy the key yet; will retry");
                }
            }
        }
        if destroyed.is_empty() {
            return;
        }
        if let Err(error) = self.volume.destroy_confirmed(&destroyed) {
            tracing::warn!(%error, "cannot record the keys lsvkms destroyed; will ask again");
        }
    }

    /// Owes lsvkms the destruction of `keys` (from a deleted snapshot), and
    /// asks for it.
    pub fn owe_destroy(&self, keys: &[KeyId]) {
        if let Err(error) = self.volume.owe_destroy(keys) {
            tracing::warn!(%error, ?keys, "cannot record keys owed to lsvkms");
        }
        self.destroy_pending();
    }

    /// Replaces every blob of the volume and its snapshots sealed under an
    /// older wrapping-key version (all of them unless `only_if_older`).
    pub fn rewrap(&self, only_if_older: bool) -> Result<Value, ServiceError> {
        rewrap_blobs(&self.volume, self.kms()?, only_if_older)
    }

    fn rewrap_if_newer(&self) -> Result<(), ServiceError> {
        if self.kms.is_some() {
            self.rewrap(true)?;
        }
        Ok(())
    }

    /// Keys, policy, rotation state and progress, for `lsvblk status`.
    pub fn status(&self) -> Result<Value, VolumeError> {
        let keys = self.volume.key_status()?;
        let superblock = self.volume.superblock_now()?;
        let due = self.volume.rotation_due()?;
        let status = self.status_mut();
        Ok(json!({
            "current_key_id": superblock.current_key_id,
            "keys": keys,
            "policy": superblock.key_policy,
            "rotation_due": due,
            "rotation": superblock.rotation,
            "progress": status.progress,
            "last_rotation": status.last,
            "rotations": status.rotations,
            "pending_destroy": superblock.destroy_owed,
            "compromised_kept_for_snapshots": status.compromised_kept,
            "last_error": status.last_error,
            "kms_keys": status.kms_keys.values().collect::<Vec<_>>(),
            "kms_polls": status.kms_polls,
        }))
    }
}

/// Seals every wrapped blob of `volume` and its snapshots again under
/// lsvkms's newest wrapping key (only those under an older version if
/// `only_if_older`). No data key is unwrapped.
pub fn rewrap_blobs(
    volume: &Volume,
    kms: &KmsClient,
    only_if_older: bool,
) -> Result<Value, ServiceError> {
    let current = kms
        .health()
        .ok()
        .and_then(|h| h.wrapping_key)
        .map(|w| w.current_version);
    let mut failures = Vec::new();
    let replaced = volume.replace_wrapped_blobs(&mut |entry| {
        let Some(text) = &entry.wrapped_blob else {
            return Ok(None);
        };
        let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(text) else {
            return Ok(None);
        };
        let version = crate::kms::seal::parse(&blob).ok().map(|b| b.kek_version);
        if only_if_older && version >= current {
            return Ok(None);
        }
        match kms.rewrap(&blob) {
            Ok(new) => Ok(Some(
                base64::engine::general_purpose::STANDARD.encode(&new.wrapped_blob.0),
            )),
            Err(error) => {
                failures.push(format!("{}: {error}", entry.key_id));
                Ok(None)
            }
        }
    })?;
    if replaced > 0 {
        tracing::info!(
            replaced,
            "wrapped blobs sealed again under the newest wrapping key"
        );
    }
    if !failures.is_empty() && !only_if_older {
        return Err(ServiceError::RewrapRefused(failures));
    }
    Ok(json!({ "replaced": replaced, "wrapping_key_version": current, "failed": failures }))
}
