//! New volumes and new ACLs, each with a key sealed by lsvkms: a volume
//! made from nothing, also one kept in an object store ([`create_volume`]), a writable clone of a snapshot
//! ([`clone_snapshot`]), and the volume's current key sealed again for
//! another set of users ([`set_acl`]). What `lsvblk create`, `lsvblk clone`
//! and `lsvblk acl set` do, minus their arguments and output.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;

use super::{ServiceError, unwrap_all, wrapped_blob};
use crate::crypto::{CryptoPool, DataKey, KeyId, KeyKind};
use crate::kms::api::KeyContext;
use crate::kms::client::KmsClient;
use crate::remote::RemoteStore;
use crate::volume::{
    KeyPolicy, PendingAcl, Superblock, Volume, VolumeError, VolumeOptions, WrappedKey,
    load_snapshot, new_volume_id, set_pending_acl,
};

/// A volume to create: where, how big, who may unwrap its key.
pub struct NewVolume<'a> {
    /// Its directory (absent or empty).
    pub dir: &'a Path,
    /// Capacity in bytes.
    pub size_bytes: u64,
    /// The users lsvkms seals the data key for.
    pub acl: &'a [String],
    /// Geometry and the rest (block size, segment size, ...).
    pub options: VolumeOptions,
    /// The key policy, when not the default.
    pub policy: Option<KeyPolicy>,
    /// The object store that keeps the volume, if any (it must hold no
    /// volume yet).
    pub store: Option<&'a RemoteStore>,
    /// A plain, read-only image the volume starts as (its never-written
    /// blocks read from it), if any.
    pub base: Option<&'a Path>,
}

/// A volume just made, with its own key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The new volume's id (hex, as lsvkms's key context carries it).
    pub volume_id: String,
    /// Its data key (the id, never the key).
    pub key_id: KeyId,
}

/// Creates `new` with a fresh data key from lsvkms, sealed for its ACL and
/// the new volume's id, closes it and, with a store, puts it there. A used
/// directory or a store that holds a volume already is refused before a
/// key is generated (and audited) for a volume that would never exist.
pub fn create_volume(kms: &KmsClient, new: NewVolume<'_>) -> Result<Created, ServiceError> {
    if std::fs::read_dir(new.dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(VolumeError::AlreadyExists {
            path: new.dir.to_path_buf(),
        }
        .into());
    }
    if let Some(store) = new.store {
        crate::remote::check_vacant(store)?;
    }
    let volume_id = new_volume_id()?;
    let (key, wrapped) = new_data_key(
        kms,
        (volume_id, new.options.integrity.key_kind()),
        new.acl,
        "asking lsvkms for a data key",
    )?;
    let key_id = key.id();
    let volume = Volume::create_over_base(
        new.dir,
        new.base,
        new.size_bytes,
        volume_id,
        key,
        Some(wrapped),
        &new.options,
    )?;
    if let Some(policy) = &new.policy {
        volume.set_key_policy(policy)?;
    }
    volume.close()?;
    if let Some(store) = new.store {
        crate::remote::create(store, new.dir)?;
    }
    Ok(Created {
        volume_id: hex::encode(volume_id),
        key_id,
    })
}

/// A clone to make: which snapshot of which volume, where, and who may
/// unwrap the clone's own key.
pub struct NewClone<'a> {
    /// The volume that holds the snapshot.
    pub parent: &'a Path,
    /// The snapshot's name.
    pub snapshot: &'a str,
    /// The clone's directory (absent or empty).
    pub dir: &'a Path,
    /// The users lsvkms seals the clone's key for.
    pub acl: &'a [String],
}

/// A clone just made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cloned {
    /// The clone itself.
    pub created: Created,
    /// The id of the snapshot it was made from.
    pub snapshot_id: String,
}

/// Makes a writable clone of a snapshot: its blocks stay the snapshot's
/// (copy-on-write), new writes use a key of its own from lsvkms. The
/// snapshot's ACL decides who may build on it: its keys are unwrapped with
/// `token` before anything is created.
pub fn clone_snapshot(
    kms: &KmsClient,
    token: &str,
    clone: NewClone<'_>,
) -> Result<Cloned, ServiceError> {
    let parent = Superblock::load(clone.parent)?;
    let meta = load_snapshot(clone.parent, clone.snapshot)?;
    let parent_keys = unwrap_all(kms, token, &parent.volume_id, &meta.keys)?;
    let volume_id = new_volume_id()?;
    // A clone checks its reads as its parent does (its integrity).
    let (key, wrapped) = new_data_key(
        kms,
        (volume_id, parent.integrity.key_kind()),
        clone.acl,
        "asking lsvkms for the clone's data key",
    )?;
    let key_id = key.id();
    let options = VolumeOptions {
        pool: Some(Arc::new(CryptoPool::new(
            1,
            crate::limits::CRYPTO_CHUNK_BYTES_DEFAULT,
        )?)),
        ..VolumeOptions::default()
    };
    let volume = Volume::create_clone_with_id(
        clone.parent,
        clone.snapshot,
        clone.dir,
        volume_id,
        key,
        Some(wrapped),
        parent_keys,
        &options,
    )?;
    volume.close()?;
    Ok(Cloned {
        created: Created {
            volume_id: hex::encode(volume_id),
            key_id,
        },
        snapshot_id: meta.snapshot_id,
    })
}

/// Has lsvkms seal the volume's current key again for `acl` (`token` must
/// be a user on the current ACL) and records the new blob as the volume's
/// pending ACL: its next snapshot, and the volume from then on, carry it.
pub fn set_acl(
    dir: &Path,
    kms: &KmsClient,
    token: &str,
    acl: &[String],
) -> Result<PendingAcl, ServiceError> {
    let superblock = Superblock::load(dir)?;
    let current = superblock
        .keys
        .iter()
        .find(|k| k.key_id == superblock.current_key_id)
        .ok_or(ServiceError::NoCurrentKeyEntry)?;
    let rewrapped = kms
        .rewrap_with_acl(&wrapped_blob(current)?, acl, token)
        .map_err(|source| ServiceError::KeyService {
            action: "lsvkms refused the ACL change".into(),
            source,
        })?;
    let pending = PendingAcl {
        key_id: rewrapped.key_id,
        acl: acl.to_vec(),
        wrapped_blob: base64::engine::general_purpose::STANDARD.encode(&rewrapped.wrapped_blob.0),
        created_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    set_pending_acl(dir, &pending)?;
    Ok(pending)
}

/// A new data key of `kind` from lsvkms for the volume `volume_id`, sealed
/// for `acl` (`action` names the call in an error).
fn new_data_key(
    kms: &KmsClient,
    (volume_id, kind): ([u8; 16], KeyKind),
    acl: &[String],
    action: &str,
) -> Result<(DataKey, WrappedKey), ServiceError> {
    let context = KeyContext {
        volume_id: hex::encode(volume_id),
        snapshot_id: String::new(),
    };
    let generated = kms
        .generate_key_of_kind(kind, acl, &context, None)
        .map_err(|source| ServiceError::KeyService {
            action: action.into(),
            source,
        })?;
    let wrapped = WrappedKey {
        blob: base64::engine::general_purpose::STANDARD.encode(&generated.wrapped_blob),
        acl: acl.to_vec(),
    };
    Ok((generated.key, wrapped))
}
