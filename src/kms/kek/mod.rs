//! Wrapping-key backends: where the versioned wrapping key (KEK) lives.
//!
//! A backend does one thing with the wrapping key of version `v`: encrypt
//! four AES blocks ([`crate::kms::seal::BlobKey::derive_input`]) to derive a
//! blob's per-blob key. The file backend does it in software from 0600 key
//! files; the PKCS#11 backend asks the HSM (`CKM_AES_ECB`) and never sees
//! the key. Versions only grow; blobs under versions below the minimum are
//! refused (raise it once every blob has been rewrapped).

pub mod file;
pub mod pkcs11;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

use super::fsutil;
use super::limits::STATE_FILE_BYTES_MAX;
use super::seal::{BlobKey, BlobNonce};

/// Why the wrapping key could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KekError {
    /// No wrapping key of this version exists here.
    #[error("no wrapping key of version {0}")]
    UnknownVersion(u32),
    /// The version is below the minimum still accepted.
    #[error("wrapping-key version {version} is retired (minimum {version_min})")]
    Retired {
        /// The version asked for.
        version: u32,
        /// The minimum.
        version_min: u32,
    },
    /// The minimum version cannot move that way.
    #[error("minimum version {asked} invalid: must be >= {version_min} and <= {current}")]
    BadMinimum {
        /// Asked for.
        asked: u32,
        /// Current minimum.
        version_min: u32,
        /// Newest version.
        current: u32,
    },
    /// A key file or the key directory is unsafe to use.
    #[error(transparent)]
    Insecure(#[from] fsutil::PrivateFileError),
    /// Reading or writing key files failed.
    #[error("wrapping-key storage: {0}")]
    Io(String),
    /// The HSM refused or failed.
    #[error("PKCS#11: {0}")]
    Hsm(String),
    /// No wrapping key at all: run `lsvkms init`.
    #[error("no wrapping key found in {0} (run `lsvkms init`)")]
    Missing(String),
}

/// A versioned wrapping key, wherever it lives.
pub trait WrappingKeys: Send + Sync {
    /// `file` or `pkcs11`.
    fn backend(&self) -> &'static str;
    /// The version new blobs are sealed under (the highest).
    fn current_version(&self) -> u32;
    /// The lowest version still accepted.
    fn min_version(&self) -> u32;
    /// The per-blob key of the blob sealed under `version` with `nonce`.
    /// Refuses unknown and retired versions.
    fn blob_key(&self, version: u32, nonce: &BlobNonce) -> Result<BlobKey, KekError>;
    /// Makes a new version (generated inside the backend) and returns it.
    fn rotate(&self) -> Result<u32, KekError>;
    /// Raises the minimum accepted version. Never lowers it.
    fn set_min_version(&self, version_min: u32) -> Result<(), KekError>;
}

/// The minimum-version record shared by all backends: `DIR/kek-min-version.json`.
#[derive(Debug, Serialize, Deserialize)]
struct MinVersionFile {
    min_version: u32,
}

/// Where the minimum version is kept.
pub fn min_version_path(dir: &Path) -> PathBuf {
    dir.join("kek-min-version.json")
}

/// The lowest wrapping-key version still accepted, as both backends keep
/// it: in memory for every unwrap, durably in `DIR/kek-min-version.json`.
pub struct MinVersion {
    dir: PathBuf,
    version_min: AtomicU32,
}

impl MinVersion {
    /// Reads the minimum version kept in `dir` (1 if never raised).
    pub fn load(dir: &Path) -> Result<Self, KekError> {
        let path = min_version_path(dir);
        let version_min = match fsutil::read_bounded(&path, STATE_FILE_BYTES_MAX) {
            Ok(bytes) => serde_json::from_slice::<MinVersionFile>(&bytes)
                .map(|file| file.min_version.max(1))
                .map_err(|e| KekError::Io(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(KekError::Io(format!("{}: {e}", path.display()))),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            version_min: AtomicU32::new(version_min),
        })
    }

    /// The minimum version.
    pub fn get(&self) -> u32 {
        self.version_min.load(Ordering::Acquire)
    }

    /// Raises the minimum to `asked` (at most `current`, the newest
    /// version), durably first. Callers serialize raises with rotations.
    pub fn raise(&self, asked: u32, current: u32) -> Result<(), KekError> {
        let version_min = self.get();
        if asked < version_min || asked > current {
            return Err(KekError::BadMinimum {
                asked,
                version_min,
                current,
            });
        }
        let bytes = serde_json::to_vec(&MinVersionFile { min_version: asked })
            .map_err(|e| KekError::Io(e.to_string()))?;
        fsutil::write_atomic(&min_version_path(&self.dir), &bytes, 0o600)
            .map_err(|e| KekError::Io(format!("storing minimum version: {e}")))?;
        self.version_min.store(asked, Ordering::Release);
        Ok(())
    }

    /// Refuses `version` if it is retired.
    pub fn check_not_retired(&self, version: u32) -> Result<(), KekError> {
        let version_min = self.get();
        if version < version_min {
            return Err(KekError::Retired {
                version,
                version_min,
            });
        }
        Ok(())
    }
}
