//! Where a volume's objects live under its prefix, and what their names say.
//!
//! ```text
//! volume-id                               the volume's id (created once)
//! lease/<epoch>                           one writer's lease (created once)
//! lease/<epoch>.released                  its writer stopped cleanly
//! e<epoch>/base.json                      what the epoch adopted from before
//! e<epoch>/segments/<id>-<len>-<crc>.seg  a sealed segment
//! e<epoch>/checkpoints/<seq>-<len>-<crc>.ckpt
//! e<epoch>/meta/<seq>-<len>-<crc>.json    volume.json and snapshots/
//! ```
//!
//! Numbers are lowercase hex (epochs, ids and sequence numbers 16 digits,
//! crc 8); `len` and `crc` are the object's length and CRC32C, checked on
//! every download, so a truncated or altered object is an error, never data.

use bytes::Bytes;

use super::error::{RemoteError, Result};
use crate::objstore::ObjectKey;

/// The object that names the volume a prefix holds.
pub const VOLUME_ID_KEY: &str = "volume-id";
/// The folder of the leases.
pub const LEASE_DIR: &str = "lease";

/// What an object of an epoch holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// A sealed segment (its number is the segment id).
    Segment,
    /// A checkpoint (its number is its `seq_next`).
    Checkpoint,
    /// The metadata files (number: the checkpoint they were taken with).
    Meta,
}

impl ObjectKind {
    fn folder(self) -> &'static str {
        match self {
            ObjectKind::Segment => "segments",
            ObjectKind::Checkpoint => "checkpoints",
            ObjectKind::Meta => "meta",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            ObjectKind::Segment => "seg",
            ObjectKind::Checkpoint => "ckpt",
            ObjectKind::Meta => "json",
        }
    }
}

/// One stored object of an epoch, as its name describes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoredObject {
    /// What it holds.
    pub kind: ObjectKind,
    /// Segment id or sequence number.
    pub number: u64,
    /// The epoch that wrote it.
    pub epoch: u64,
    /// Its length, bytes.
    pub len: u64,
    /// CRC32C of its bytes.
    pub crc: u32,
}

impl StoredObject {
    /// Describes `bytes` as object `number` of `kind` written by `epoch`.
    pub fn describe(kind: ObjectKind, number: u64, epoch: u64, bytes: &[u8]) -> Self {
        Self {
            kind,
            number,
            epoch,
            len: bytes.len() as u64,
            crc: crc32c::crc32c(bytes),
        }
    }

    /// Its key under the volume's prefix.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(format!(
            "{}/{}/{:016x}-{:x}-{:08x}.{}",
            epoch_folder(self.epoch),
            self.kind.folder(),
            self.number,
            self.len,
            self.crc,
            self.kind.suffix()
        ))
        .expect("generated keys are valid")
    }

    /// Parses a key `key()` made; `None` for any other key.
    pub fn parse(key: &str) -> Option<Self> {
        let mut parts = key.split('/');
        let epoch = u64::from_str_radix(parts.next()?.strip_prefix('e')?, 16).ok()?;
        let kind = match parts.next()? {
            "segments" => ObjectKind::Segment,
            "checkpoints" => ObjectKind::Checkpoint,
            "meta" => ObjectKind::Meta,
            _ => return None,
        };
        let name = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let stem = name.strip_suffix(kind.suffix())?.strip_suffix('.')?;
        let mut fields = stem.split('-');
        let number = u64::from_str_radix(fields.next()?, 16).ok()?;
        let len = u64::from_str_radix(fields.next()?, 16).ok()?;
        let crc = u32::from_str_radix(fields.next()?, 16).ok()?;
        if fields.next().is_some() {
            return None;
        }
        Some(Self {
            kind,
            number,
            epoch,
            len,
            crc,
        })
    }

    /// Checks downloaded bytes against the name: length, then CRC32C.
    pub fn verify(&self, bytes: &Bytes) -> Result<()> {
        let corrupt = |reason: String| RemoteError::Corrupt {
            key: self.key().as_str().to_string(),
            reason,
        };
        if bytes.len() as u64 != self.len {
            return Err(corrupt(format!(
                "{} bytes, its name says {} (truncated or replaced)",
                bytes.len(),
                self.len
            )));
        }
        let crc = crc32c::crc32c(bytes);
        if crc != self.crc {
            return Err(corrupt(format!(
                "CRC32C {crc:08x}, its name says {:08x}",
                self.crc
            )));
        }
        Ok(())
    }
}

/// `e<epoch>`: the folder of an epoch's objects.
pub fn epoch_folder(epoch: u64) -> String {
    format!("e{epoch:016x}")
}

/// The base manifest of an epoch.
pub fn base_key(epoch: u64) -> ObjectKey {
    ObjectKey::new(format!("{}/base.json", epoch_folder(epoch))).expect("valid key")
}

/// The lease of an epoch.
pub fn lease_key(epoch: u64) -> ObjectKey {
    ObjectKey::new(format!("{LEASE_DIR}/{epoch:016x}")).expect("valid key")
}

/// The marker that an epoch's writer stopped cleanly.
pub fn released_key(epoch: u64) -> ObjectKey {
    ObjectKey::new(format!("{LEASE_DIR}/{epoch:016x}.released")).expect("valid key")
}

/// A key of the prefix's root (`volume-id`, `lease`).
pub fn root_key(name: &str) -> ObjectKey {
    ObjectKey::new(name).expect("valid key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_check_bytes() {
        let bytes = Bytes::from_static(b"segment bytes");
        let object = StoredObject::describe(ObjectKind::Segment, 0x2a, 3, &bytes);
        let key = object.key();
        assert!(
            key.as_str()
                .starts_with("e0000000000000003/segments/000000000000002a-d-")
        );
        assert_eq!(StoredObject::parse(key.as_str()), Some(object.clone()));
        object.verify(&bytes).unwrap();
        let short = bytes.slice(..5);
        assert!(
            object
                .verify(&short)
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
        let altered = Bytes::from_static(b"segment bytez");
        assert!(
            object
                .verify(&altered)
                .unwrap_err()
                .to_string()
                .contains("CRC32C")
        );
        for other in [
            "e1/base.json",
            "lease/0000000000000001",
            "e1/segments/x.seg",
            "x",
        ] {
            assert_eq!(StoredObject::parse(other), None, "{other}");
        }
    }
}
