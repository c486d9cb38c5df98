//! Talking to the key-wrapping service from the command line.

use std::path::PathBuf;
use std::time::Duration;

use lsvblk::kms::auth::token::parse_ttl;
use lsvblk::kms::client::KmsClient;
use zeroize::Zeroizing;

use crate::exit::Failure;
use crate::keys::read_token;

/// lsvkms and the user asking it: the options of the commands that unwrap
/// or reseal a key with a user's token.
#[derive(clap::Args)]
pub struct UserKmsArgs {
    /// The key-wrapping service: unix:PATH of its socket.
    #[arg(long, value_parser = parse_kms_address)]
    pub kms: PathBuf,
    /// Token of a user on the key's ACL (from `lsvkms token issue`).
    #[arg(long)]
    pub token_file: PathBuf,
}

/// What sealing a key for other users takes (`acl set`, `clone`): the new
/// ACL, lsvkms, and a user allowed to ask.
#[derive(clap::Args)]
pub struct NewAclArgs {
    /// Users allowed to unwrap the key, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub acl: Vec<String>,
    /// lsvkms, and a user on the ACL of the key (or snapshot) it comes from.
    #[command(flatten)]
    pub kms: UserKmsArgs,
}

impl UserKmsArgs {
    /// A client of the service.
    pub fn client(&self) -> KmsClient {
        client(&self.kms)
    }

    /// The user's token (see [`read_token`]).
    pub fn token(&self) -> Result<Zeroizing<String>, Failure> {
        read_token(&self.token_file)
    }
}

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
