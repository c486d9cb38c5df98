//! Unwrapping a volume's (or a snapshot's) key set through lsvkms with a
//! user's token: the ACL sealed in each blob decides. This is how a daemon
//! gets the keys of the volume it serves, and how a snapshot handed to
//! another user is served with that user's own token.

use base64::Engine;

use super::ServiceError;
use crate::crypto::DataKey;
use crate::kms::api::KeyContext;
use crate::kms::client::{ClientError, KmsClient};
use crate::volume::KeyEntry;

/// The wrapped blob of `entry`, decoded.
pub fn wrapped_blob(entry: &KeyEntry) -> Result<Vec<u8>, ServiceError> {
    let text = entry
        .wrapped_blob
        .as_ref()
        .ok_or(ServiceError::NoWrappedBlob {
            key_id: entry.key_id,
        })?;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| ServiceError::BlobNotBase64 {
            key_id: entry.key_id,
            reason: e.to_string(),
        })
}

/// Unwraps every entry (sealed for `volume_id` unless the entry names
/// another volume) with `token`; any refusal stops with lsvkms's reason.
pub fn unwrap_all(
    kms: &KmsClient,
    token: &str,
    volume_id: &str,
    entries: &[KeyEntry],
) -> Result<Vec<DataKey>, ServiceError> {
    unwrap_entries(volume_id, entries, |blob, context| {
        kms.unwrap(blob, context, token)
    })
}

/// Unwraps every entry (sealed for `volume_id` unless the entry names
/// another volume) with `unwrap`: a user token's unwrap, or a lease's (a
/// daemon restarting without a token); any refusal stops with lsvkms's
/// reason.
pub fn unwrap_entries(
    volume_id: &str,
    entries: &[KeyEntry],
    mut unwrap: impl FnMut(&[u8], &KeyContext) -> Result<DataKey, ClientError>,
) -> Result<Vec<DataKey>, ServiceError> {
    let mut keys = Vec::with_capacity(entries.len());
    for entry in entries {
        let blob = wrapped_blob(entry)?;
        let context = KeyContext {
            volume_id: entry
                .context_volume_id
                .clone()
                .unwrap_or_else(|| volume_id.to_string()),
            snapshot_id: String::new(),
        };
        let key = unwrap(&blob, &context).map_err(|source| ServiceError::KeyService {
            action: if source.is_transient() {
                format!(
                    "lsvkms is unavailable (retried until --kms-timeout); cannot unwrap key {}",
                    entry.key_id
                )
            } else {
                format!("lsvkms refused to unwrap key {}", entry.key_id)
            },
            source,
        })?;
        if key.id() != entry.key_id {
            return Err(ServiceError::WrongKey {
                asked: entry.key_id,
                got: key.id(),
            });
        }
        keys.push(key);
    }
    Ok(keys)
}
