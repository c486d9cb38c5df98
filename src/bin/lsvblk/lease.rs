//! Leases in the daemon: `lsvblk serve --lease 30d` asks lsvkms, with the
//! user's token, to lend this service the right to unwrap the volume's
//! keys again for that user; the lease ids go to `VOLUME/lease.json`
//! (0600). A later `lsvblk serve` without `--token-file` (a restart, an
//! upgrade, a host reboot) unwraps with them instead of a token.
//!
//! Keeping the ids in a file is safe because a lease id is no credential on
//! its own: lsvkms accepts it only from the service identity it was lent to
//! (the peer uid of the UNIX socket, or the TLS client certificate), only
//! for the volume it names, only while the user is on the key's ACL and
//! the key is enabled. Whoever can act as that service could unwrap
//! anyway once the user came with a token; revoking the lease ends it.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use lsvblk::crypto::DataKey;
use lsvblk::kms::api::KeyContext;
use lsvblk::kms::client::{ClientError, KmsClient, LentLease};
use lsvblk::volume::KeyEntry;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::exit::Failure;
use crate::keys::{read_token, unwrap_entries};

/// The file, in the volume directory, that keeps the daemon's leases.
pub const LEASE_FILE: &str = "lease.json";

/// `VOLUME/lease.json`: one lease per key context (volume id).
#[derive(Default, Serialize, Deserialize)]
struct LeaseFile {
    leases: BTreeMap<String, LentLease>,
}

/// What a daemon unwraps with.
pub enum Credential {
    /// The user's token; with `lease_s`, also ask for leases.
    Token {
        token: Zeroizing<String>,
        lease_s: Option<u64>,
    },
    /// The leases kept in the volume directory (no token given).
    Leases,
}

impl Credential {
    /// The token from `token_file`, or, without one, the volume's leases.
    pub fn from_args(
        token_file: Option<&Path>,
        lease_s: Option<u64>,
        volume: &Path,
    ) -> Result<Self, Failure> {
        match token_file {
            Some(path) => Ok(Credential::Token {
                token: read_token(path)?,
                lease_s,
            }),
            None if volume.join(LEASE_FILE).exists() => Ok(Credential::Leases),
            None => Err(Failure::Usage(anyhow::anyhow!(
                "--token-file is required: {} holds no lease (serve once with --token-file and --lease)",
                volume.display()
            ))),
        }
    }
}

/// Unwraps every entry of `entries` with `credential`; with a token and
/// `lease_s`, stores the leases lent in `volume`'s lease file.
pub fn unwrap_all_with(
    kms: &KmsClient,
    credential: &Credential,
    volume: &Path,
    volume_id: &str,
    entries: &[KeyEntry],
) -> Result<Vec<DataKey>, Failure> {
    let path = volume.join(LEASE_FILE);
    match credential {
        Credential::Token {
            token,
            lease_s: None,
        } => unwrap_entries(volume_id, entries, |blob, context| {
            kms.unwrap(blob, context, token)
        }),
        Credential::Token {
            token,
            lease_s: Some(lease_s),
        } => {
            let mut file = LeaseFile::default();
            let keys = unwrap_entries(volume_id, entries, |blob, context| {
                let (key, lease) = kms.unwrap_lending(blob, context, token, *lease_s)?;
                file.leases.insert(context.volume_id.clone(), lease);
                Ok(key)
            })?;
            store(&path, &file)?;
            for (volume_id, lease) in &file.leases {
                tracing::info!(volume_id, lease = %lease.lease_id, expires_unix_s = lease.expires_unix_s, "lsvkms lent a lease: restarts need no token until it ends");
            }
            Ok(keys)
        }
        Credential::Leases => {
            let file = load(&path)?;
            unwrap_entries(volume_id, entries, |blob, context: &KeyContext| {
                let lease = file.leases.get(&context.volume_id).ok_or_else(|| {
                    ClientError::Protocol(format!(
                        "{} holds no lease for volume {}",
                        path.display(),
                        context.volume_id
                    ))
                })?;
                kms.unwrap_with_lease(blob, context, &lease.lease_id)
            })
        }
    }
}

fn load(path: &PathBuf) -> Result<LeaseFile, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Io(anyhow::anyhow!("{}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| Failure::Usage(anyhow::anyhow!("{}: {e}", path.display())))
}

/// Writes the lease file atomically, mode 0600.
fn store(path: &Path, file: &LeaseFile) -> Result<(), Failure> {
    let io = |e: std::io::Error| Failure::Io(anyhow::anyhow!("{}: {e}", path.display()));
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    let text = serde_json::to_string_pretty(file).expect("lease files serialize");
    out.write_all(text.as_bytes())
        .and_then(|()| out.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
