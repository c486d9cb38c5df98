//! Key operations on a volume no daemon serves: it is opened here, with
//! its keys unwrapped by lsvkms for the user's token, and closed again.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::Value;

use super::{KeyCare, RotateRequest, ServiceError, unwrap_all};
use crate::crypto::CryptoPool;
use crate::kms::client::KmsClient;
use crate::volume::{Superblock, Volume, VolumeLock, VolumeOptions};

/// Rotates the key of the volume in `dir`, which no daemon serves, as
/// [`KeyCare::rotate_as_asked`] does (a re-encryption rate left out means
/// no limit). The volume is locked first (another holder makes this
/// [`VolumeError::Busy`](crate::volume::VolumeError::Busy)), then opened
/// with every key of its superblock unwrapped with `token`: a user not on
/// the volume's ACL is refused before anything changes.
pub fn rotate_unserved(
    dir: &Path,
    kms: KmsClient,
    token: &str,
    asked: &RotateRequest,
    progress: &mut dyn FnMut(Value),
) -> Result<Value, ServiceError> {
    let superblock = Superblock::load(dir)?;
    let lock = VolumeLock::acquire(dir, false)?;
    let keys = unwrap_all(&kms, token, &superblock.volume_id, &superblock.keys)?;
    let pool = CryptoPool::new(0, crate::limits::CRYPTO_CHUNK_BYTES_DEFAULT)?;
    let options = VolumeOptions {
        pool: Some(Arc::new(pool)),
        ..VolumeOptions::default()
    };
    let volume = Arc::new(Volume::open_locked(dir, lock, keys, &options)?);
    let care = KeyCare::new(
        Arc::clone(&volume),
        Some(kms),
        0,
        Arc::new(AtomicBool::new(false)),
    );
    let result = care.rotate_as_asked(asked, progress);
    drop(care);
    let volume = Arc::into_inner(volume).ok_or(ServiceError::VolumeStillInUse)?;
    volume.close()?;
    result
}
