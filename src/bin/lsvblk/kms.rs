//! Talking to the key-wrapping service from the command line.

use std::path::PathBuf;

use lsvblk::kms::client::{ClientError, KmsClient};

use crate::exit::{self, Failure};

/// Parses `--kms unix:PATH` (a bare path also works).
pub fn parse_kms_address(text: &str) -> Result<PathBuf, String> {
    let path = text.strip_prefix("unix:").unwrap_or(text);
    if path.is_empty() {
        return Err("--kms needs unix:PATH of the lsvkms socket".to_string());
    }
    Ok(PathBuf::from(path))
}

/// A client for the service at `socket`.
pub fn client(socket: &PathBuf) -> KmsClient {
    KmsClient::new(socket)
}

/// Maps a service error to a failure with the right exit code.
pub fn failure(action: &str, error: ClientError) -> Failure {
    let code = match &error {
        ClientError::Unavailable { .. } | ClientError::Timeout { .. } => exit::KMS_UNAVAILABLE,
        ClientError::Api {
            status: 401 | 403, ..
        } => exit::DENIED,
        ClientError::Api {
            status: 404 | 409 | 400,
            ..
        } => exit::DENIED,
        ClientError::Api { status: 503, .. } => exit::KMS_UNAVAILABLE,
        _ => exit::SOFTWARE,
    };
    Failure::new(code, anyhow::anyhow!("{action}: {error}"))
}
