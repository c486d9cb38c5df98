//! Why a key-care or maintenance operation failed.

use crate::crypto::KeyId;
use crate::crypto::pool::PoolError;
use crate::kms::client::ClientError;
use crate::remote::RemoteError;
use crate::volume::VolumeError;

/// Why a [`KeyCare`](super::KeyCare) operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Another rotation holds the volume (one at a time).
    #[error("a key rotation is already running")]
    RotationRunning,
    /// The operation needs lsvkms and none was given.
    #[error("no key service configured (--kms)")]
    NoKeyService,
    /// The current key's entry lists no ACL, so a new key cannot be asked
    /// for on the same terms.
    #[error("the volume does not record its key's ACL; cannot ask for a new key")]
    NoAcl,
    /// The superblock has no entry for its own current key (a bug or a
    /// damaged superblock).
    #[error("no entry for the current key")]
    NoCurrentKeyEntry,
    /// lsvkms was down, silent or refused (`action` says what was asked).
    #[error("{action}: {source}")]
    KeyService {
        /// What was asked of lsvkms.
        action: String,
        /// How the call failed.
        #[source]
        source: ClientError,
    },
    /// lsvkms refused to rewrap some blobs (one message per key).
    #[error("lsvkms refused to rewrap: {}", .0.join("; "))]
    RewrapRefused(Vec<String>),
    /// A key entry has no wrapped blob to unwrap.
    #[error("key {key_id} has no wrapped blob (was the volume made by `lsvblk create`?)")]
    NoWrappedBlob {
        /// The entry's key.
        key_id: KeyId,
    },
    /// A key entry's wrapped blob is not base64.
    #[error("the wrapped blob of key {key_id} is not base64: {reason}")]
    BlobNotBase64 {
        /// The entry's key.
        key_id: KeyId,
        /// What the decoder said.
        reason: String,
    },
    /// lsvkms unwrapped a blob to another key than its entry names.
    #[error("lsvkms returned key {got} for the blob of key {asked}")]
    WrongKey {
        /// The key the entry names.
        asked: KeyId,
        /// The key that came back.
        got: KeyId,
    },
    /// The crypto threads for a volume opened here could not be started.
    #[error(transparent)]
    CryptoPool(#[from] PoolError),
    /// A volume opened here was still shared when it was to be closed (a
    /// bug: whatever borrowed it has returned).
    #[error("the volume is still in use and cannot be closed")]
    VolumeStillInUse,
    /// The object store of a volume kept in one refused or failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The volume refused or failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
}
