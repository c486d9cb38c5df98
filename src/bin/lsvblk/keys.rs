//! The user's token from its file, and the library's unwrapping of a
//! volume's (or a snapshot's) keys with it, failures mapped to exit codes.

use std::path::Path;

use lsvblk::crypto::DataKey;
use lsvblk::kms::api::KeyContext;
use lsvblk::kms::client::{ClientError, KmsClient};
use lsvblk::service;
use lsvblk::volume::KeyEntry;
use zeroize::Zeroizing;

use crate::exit::Failure;

/// Reads the user's token from `path` (kept out of logs and zeroized). A
/// token file that group or others may read is refused (exit 64, a usage
/// error: the caller fixes the file), as ssh refuses an open private key.
pub fn read_token(path: &Path) -> Result<Zeroizing<String>, Failure> {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
        if mode & 0o077 != 0 {
            return Err(Failure::usage(format!(
                "--token-file {} is readable by others (mode {mode:04o}): a token is a credential; chmod 600 it",
                path.display()
            )));
        }
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read --token-file {}: {e}", path.display())))?;
    Ok(Zeroizing::new(text.trim().to_string()))
}

/// Unwraps every entry (sealed for `volume_id` unless the entry names
/// another volume) with `token`; any refusal stops with lsvkms's reason
/// (see [`service::unwrap_all`]).
pub fn unwrap_all(
    kms: &KmsClient,
    token: &str,
    volume_id: &str,
    entries: &[KeyEntry],
) -> Result<Vec<DataKey>, Failure> {
    service::unwrap_all(kms, token, volume_id, entries).map_err(Failure::Service)
}

/// Unwraps every entry (sealed for `volume_id` unless the entry names
/// another volume) with `unwrap` (a token's or a lease's unwrap); any
/// refusal stops with lsvkms's reason (see [`service::unwrap_entries`]).
pub fn unwrap_entries(
    volume_id: &str,
    entries: &[KeyEntry],
    unwrap: impl FnMut(&[u8], &KeyContext) -> Result<DataKey, ClientError>,
) -> Result<Vec<DataKey>, Failure> {
    service::unwrap_entries(volume_id, entries, unwrap).map_err(Failure::Service)
}
