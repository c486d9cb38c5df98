//! `volume.json`: the superblock that names a volume and its geometry.
//!
//! JSON because it is small, rarely written, and an operator may want to read
//! it; it never holds key material (only key ids and, later, wrapped blobs).
//! It is replaced atomically: temporary file, fsync, rename, directory fsync.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::VolumeError;
use super::base::BaseRef;
use super::json_file::write_json_atomic;
use super::policy::{KeyPolicy, RotationState};
use crate::crypto::{KeyId, KeyKind};

/// File name of the superblock inside a volume directory.
pub const SUPERBLOCK_FILE: &str = "volume.json";
/// The `format` field every superblock carries.
pub const FORMAT_NAME: &str = "lsvblk-volume";
/// Current superblock format version.
pub const FORMAT_VERSION: u32 = 1;

/// The cipher a volume's blocks are stored with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CipherName {
    /// AES-256-XTS, the only cipher for real volumes.
    Aes256Xts,
    /// No encryption. Only for benchmarks measuring the cost of crypto; a
    /// build without the `null-cipher` feature refuses such volumes.
    Null,
}

/// Whether a volume's records are authenticated (docs/format.md, section
/// 14).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Integrity {
    /// Every block carries a tag (a MAC under a key derived from its data
    /// key), checked before it is decrypted: the default for new volumes.
    Mac,
    /// CRCs only: volumes created before MACs (no `integrity` field), and
    /// a benchmark-only option to measure what the MAC costs.
    #[default]
    Crc,
}

impl Integrity {
    /// Whether this is [`Integrity::Crc`] (not written to `volume.json`,
    /// so that files of volumes created before MACs stay as they are).
    pub fn is_crc(&self) -> bool {
        *self == Integrity::Crc
    }

    /// The kind of data key a volume of this integrity asks the key
    /// service for: with MACs, a kind whose wrapped blob says so
    /// ([`KeyKind::Aes256XtsMac`]), so that stripping the MACs from the
    /// volume's files cannot turn its checks off.
    pub fn key_kind(&self) -> KeyKind {
        match self {
            Integrity::Mac => KeyKind::Aes256XtsMac,
            Integrity::Crc => KeyKind::Aes256Xts,
        }
    }
}

/// One data key the volume knows, by id (never material).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// The key's public id.
    pub key_id: KeyId,
    /// Its kind.
    pub kind: KeyKind,
    /// The key sealed by the wrapping service (base64), when one is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_blob: Option<String>,
    /// When the key was first used, seconds since the Unix epoch.
    pub created_unix_s: u64,
    /// The users the blob's sealed ACL names (a copy for display; the
    /// sealed one is what lsvkms enforces).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acl: Vec<String>,
    /// The volume id the blob is sealed for, when not this volume's (keys a
    /// clone shares with its parent); unwraps must present it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_volume_id: Option<String>,
}

/// The snapshot a clone was made from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    /// Directory of the volume that holds the snapshot (absolute).
    pub volume_dir: PathBuf,
    /// That volume's id.
    pub volume_id: String,
    /// The snapshot's name.
    pub snapshot: String,
    /// The snapshot's id, to detect a different snapshot of the same name.
    pub snapshot_id: String,
}

/// The superblock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superblock {
    /// Always `"lsvblk-volume"`.
    pub format: String,
    /// Superblock format version.
    pub format_version: u32,
    /// Random volume id, 32 hex digits; stamped into segments and checkpoints.
    pub volume_id: String,
    /// Capacity, bytes (a multiple of `block_bytes`).
    pub size_bytes: u64,
    /// Block and XTS data unit size: 512 or 4096.
    pub block_bytes: u32,
    /// Target segment size, bytes.
    pub segment_bytes: u64,
    /// Cipher of the stored blocks.
    pub cipher: CipherName,
    /// Whether blocks are authenticated; absent (`crc`) in volumes created
    /// before MACs.
    #[serde(default, skip_serializing_if = "Integrity::is_crc")]
    pub integrity: Integrity,
    /// The key new writes use.
    pub current_key_id: KeyId,
    /// Every key the volume's blocks may be under.
    pub keys: Vec<KeyEntry>,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix_s: u64,
    /// For a clone: the snapshot whose blocks it reads where it has not
    /// written its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
    /// When keys are rotated and retired.
    #[serde(default)]
    pub key_policy: KeyPolicy,
    /// A key rotation in progress (continued after a crash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationState>,
    /// Keys the volume forgot that the key service is to destroy and has
    /// not confirmed yet (it may have been down): kept here, not only in a
    /// daemon's memory, so that a restart still has them destroyed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destroy_owed: Vec<KeyId>,
    /// An ephemeral volume's owner mark: only the process that created it
    /// (and holds its key, never stored) may load it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_owner: Option<String>,
    /// The plain, read-only image the volume's never-written blocks read
    /// from (`lsvblk create --base`), as it was at create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseRef>,
}

impl Superblock {
    /// The volume id as raw bytes.
    pub fn volume_id_bytes(&self) -> Result<[u8; 16], VolumeError> {
        let mut id = [0u8; 16];
        hex::decode_to_slice(&self.volume_id, &mut id).map_err(|_| VolumeError::NotAVolume {
            path: PathBuf::from(SUPERBLOCK_FILE),
            reason: format!("volume_id {:?} is not 32 hex digits", self.volume_id),
        })?;
        Ok(id)
    }

    /// log2 of the block size.
    pub fn block_shift(&self) -> u8 {
        self.block_bytes.trailing_zeros() as u8
    }

    /// Reads and checks the superblock of the volume in `dir`.
    pub fn load(dir: &Path) -> Result<Self, VolumeError> {
        let path = dir.join(SUPERBLOCK_FILE);
        let not_a_volume = |reason: String| VolumeError::NotAVolume {
            path: dir.to_path_buf(),
            reason,
        };
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(not_a_volume(format!("no {SUPERBLOCK_FILE}")));
            }
            Err(e) => return Err(VolumeError::Io { path, source: e }),
        };
        let superblock: Superblock = serde_json::from_str(&text)
            .map_err(|e| not_a_volume(format!("{SUPERBLOCK_FILE} does not parse: {e}")))?;
        if superblock.format != FORMAT_NAME {
            return Err(not_a_volume(format!(
                "format is {:?}, not {FORMAT_NAME:?}",
                superblock.format
            )));
        }
        if superblock.format_version != FORMAT_VERSION {
            return Err(VolumeError::UnsupportedFormat {
                path,
                version: superblock.format_version,
            });
        }
        superblock.check_geometry().map_err(not_a_volume)?;
        superblock.volume_id_bytes()?;
        if superblock
            .ephemeral_owner
            .as_deref()
            .is_some_and(|owner| owner != super::ephemeral::owner_mark())
        {
            return Err(VolumeError::Ephemeral {
                path: dir.to_path_buf(),
            });
        }
        Ok(superblock)
    }

    fn check_geometry(&self) -> Result<(), String> {
        if !matches!(self.block_bytes, 512 | 4096) {
            return Err(format!(
                "block_bytes {} is not 512 or 4096",
                self.block_bytes
            ));
        }
        if self.size_bytes == 0 || !self.size_bytes.is_multiple_of(u64::from(self.block_bytes)) {
            return Err(format!(
                "size_bytes {} is not a positive multiple of the block size",
                self.size_bytes
            ));
        }
        if self.size_bytes > crate::limits::VOLUME_BYTES_MAX {
            return Err(format!(
                "size_bytes {} exceeds the maximum",
                self.size_bytes
            ));
        }
        let segment_range = crate::limits::SEGMENT_BYTES_MIN..=crate::limits::SEGMENT_BYTES_MAX;
        if !segment_range.contains(&self.segment_bytes) {
            return Err(format!("segment_bytes {} out of range", self.segment_bytes));
        }
        Ok(())
    }

    /// Writes the superblock into `dir` atomically and durably.
    pub fn store(&self, dir: &Path) -> Result<(), VolumeError> {
        write_json_atomic(&dir.join(SUPERBLOCK_FILE), self)
    }
}

/// A fresh random 16-byte id: a volume's, or a snapshot's.
pub fn new_volume_id() -> Result<[u8; 16], VolumeError> {
    let mut volume_id = [0u8; 16];
    getrandom::fill(&mut volume_id)
        .map_err(|e| VolumeError::BadOption(format!("random source failed: {e}")))?;
    Ok(volume_id)
}
