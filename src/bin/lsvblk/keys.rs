//! Unwrapping a volume's (or a snapshot's) wrapped keys through lsvkms with
//! the user's token: the ACL sealed in each blob decides.

use std::path::Path;

use base64::Engine;
use lsvblk::crypto::DataKey;
use lsvblk::kms::api::KeyContext;
use lsvblk::kms::client::{ClientError, KmsClient};
use lsvblk::volume::KeyEntry;
use zeroize::Zeroizing;

use crate::exit::{DATA, Failure, USAGE};
use crate::kms::failure;

/// Reads the user's token from `path` (kept out of logs and zeroized). A
/// token file that group or others may read is refused (exit 64, a usage
/// error: the caller fixes the file), as ssh refuses an open private key.
pub fn read_token(path: &Path) -> Result<Zeroizing<String>, Failure> {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
        if mode & 0o077 != 0 {
            return Err(Failure::new(
                USAGE,
                anyhow::anyhow!(
                    "--token-file {} is readable by others (mode {mode:04o}): a token is a credential; chmod 600 it",
                    path.display()
                ),
            ));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::new(
            USAGE,
            anyhow::anyhow!("cannot read --token-file {}: {e}", path.display()),
        )
    })?;
    Ok(Zeroizing::new(text.trim().to_string()))
}

/// Decodes an entry's base64 blob.
pub fn blob_of(entry: &KeyEntry) -> Result<Vec<u8>, Failure> {
    let text = entry.wrapped_blob.as_ref().ok_or_else(|| {
        Failure::new(
            DATA,
            anyhow::anyhow!(
                "key {} has no wrapped blob (was the volume made by `lsvblk create`?)",
                entry.key_id
            ),
        )
    })?;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| {
            Failure::new(
                DATA,
                anyhow::anyhow!(
                    "the wrapped blob of key {} is not base64: {e}",
                    entry.key_id
                ),
            )
        })
}

/// Unwraps every entry (sealed for `volume_id` unless the entry names
/// another volume) with `token`; any refusal stops with lsvkms's reason.
pub fn unwrap_all(
    kms: &KmsClient,
    token: &str,
    volume_id: &str,
    entries: &[KeyEntry],
) -> Result<Vec<DataKey>, Failure> {
    unwrap_entries(volume_id, entries, |blob, context| {
        kms.unwrap(blob, context, token)
    })
}

/// Unwraps every entry (sealed for `volume_id` unless the entry names
/// another volume) with `unwrap`; any refusal stops with lsvkms's reason.
pub fn unwrap_entries(
    volume_id: &str,
    entries: &[KeyEntry],
    mut unwrap: impl FnMut(&[u8], &KeyContext) -> Result<DataKey, ClientError>,
) -> Result<Vec<DataKey>, Failure> {
    let mut keys = Vec::with_capacity(entries.len());
    for entry in entries {
        let blob = blob_of(entry)?;
        let context = KeyContext {
            volume_id: entry
                .context_volume_id
                .clone()
                .unwrap_or_else(|| volume_id.to_string()),
            snapshot_id: String::new(),
        };
        let key = unwrap(&blob, &context).map_err(|e| {
            let what = if e.is_transient() {
                "lsvkms is unavailable (retried until --kms-timeout); cannot unwrap key"
            } else {
                "lsvkms refused to unwrap key"
            };
            failure(&format!("{what} {}", entry.key_id), e)
        })?;
        if key.id() != entry.key_id {
            return Err(Failure::new(
                DATA,
                anyhow::anyhow!(
                    "lsvkms returned key {} for the blob of key {}",
                    key.id(),
                    entry.key_id
                ),
            ));
        }
        keys.push(key);
    }
    Ok(keys)
}
