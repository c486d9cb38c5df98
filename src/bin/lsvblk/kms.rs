//! Talking to the key-wrapping service from the command line.

use std::path::PathBuf;
use std::time::Duration;

use lsvblk::kms::auth::token::parse_ttl;

use lsvblk::kms::client::{ClientError, KmsClient};

use crate::exit::Failure;

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

/// Parses `--kms-timeout` (`90s`, `2m`; a bare number is seconds).
pub fn parse_kms_timeout(text: &str) -> Result<Duration, String> {
    parse_ttl(text).map(Duration::from_secs)
}

/// A failed service call while doing `action` (its exit code: `exit`).
pub fn failure(action: &str, error: ClientError) -> Failure {
    Failure::kms(action, error)
}
