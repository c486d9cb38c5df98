//! The key policy and rotation state a volume keeps in `volume.json`: when
//! its key is rotated and retired, and the rotation in progress. Types only:
//! the rotation procedure is in `rotation`, the checks in `key_state`.

use serde::{Deserialize, Serialize};

use crate::crypto::KeyId;

/// IEEE P1619 recommends at most 2^36 128-bit blocks (1 TiB) per XTS key.
pub const XTS_KEY_SCOPE_BYTES: u64 = 1 << 40;
/// Default maximum age of a key before it is retired: 120 days.
pub const RETIRE_AGE_DEFAULT_S: u64 = 120 * 24 * 3600;
/// Default age at which a key is rotated: 90 days.
pub const ROTATE_AGE_DEFAULT_S: u64 = 90 * 24 * 3600;
/// When a volume's key is rotated and retired (in `volume.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyPolicy {
    /// Rotate when the key protects more than this many bytes now.
    pub rotate_live_bytes: u64,
    /// Rotate when the key has encrypted more than this many bytes ever.
    pub rotate_encrypted_bytes: u64,
    /// Rotate when the key is older than this, seconds.
    pub rotate_age_s: u64,
    /// Retire (rotate away from) any key older than this, seconds.
    pub retire_age_s: u64,
}

impl Default for KeyPolicy {
    /// Within the XTS key scope (1 TiB per key, counting every byte ever
    /// encrypted), half of it live, 90 days, retirement at 120 days.
    fn default() -> Self {
        Self {
            rotate_live_bytes: XTS_KEY_SCOPE_BYTES / 2,
            rotate_encrypted_bytes: XTS_KEY_SCOPE_BYTES,
            rotate_age_s: ROTATE_AGE_DEFAULT_S,
            retire_age_s: RETIRE_AGE_DEFAULT_S,
        }
    }
}

/// Why a key is (being) rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RotationReason {
    /// It protects more than `rotate_live_bytes`.
    LiveBytes,
    /// It encrypted more than `rotate_encrypted_bytes`.
    EncryptedBytes,
    /// It is older than `rotate_age_s`.
    Age,
    /// It is older than `retire_age_s`.
    Retirement,
    /// The key service (or an operator) says it is compromised: no rate limit.
    Compromised,
    /// Asked for by hand.
    Manual,
}

impl RotationReason {
    /// An urgent rotation runs without a rate limit.
    pub fn is_urgent(self) -> bool {
        self == RotationReason::Compromised
    }
}

/// A rotation in progress, recorded in the superblock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationState {
    /// Keys whose blocks are being re-encrypted.
    pub from: Vec<KeyId>,
    /// The key they go to (the current key).
    pub to: KeyId,
    /// Why.
    pub reason: RotationReason,
    /// When it started, seconds since the Unix epoch.
    pub started_unix_s: u64,
    /// Re-key the blocks kept snapshots hold too (`rotate --include-snapshots`).
    #[serde(default)]
    pub include_snapshots: bool,
}
