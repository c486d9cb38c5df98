//! Data encryption keys (DEKs) and their public ids.
//!
//! A [`DataKey`] is a 512-bit AES-256-XTS key (two 256-bit halves) held in
//! locked, non-dumpable memory and zeroed on drop. It has no `Clone` (use
//! [`DataKey::try_clone`], which is explicit and can fail), no `Serialize`, and
//! its `Debug` prints only the id and kind.
//!
//! A [`KeyId`] names a key without revealing it: the first 16 bytes of
//! HMAC-SHA256(key material, `"lsvblk/key-id/v1" || kind`). HMAC is a PRF, so
//! the id is one-way, and two different keys collide with probability 2^-128.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::hygiene::RegisterScrub;
use super::locked::{LockedBox, LockedFillError};

/// Bytes of key material of an AES-256-XTS key (two AES-256 keys).
pub const XTS_KEY_BYTES: usize = 64;

/// Bytes in a [`KeyId`].
pub const KEY_ID_BYTES: usize = 16;

/// Domain separation label mixed into every key id.
const KEY_ID_LABEL: &[u8] = b"lsvblk/key-id/v1";

/// What a key is for. Part of the key id, so the same bytes used for two
/// purposes get two ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyKind {
    /// AES-256 in XTS mode: 64 bytes of material.
    Aes256Xts,
    /// AES-256 in XTS mode for a volume whose blocks and log are
    /// authenticated (integrity `mac`): 64 bytes of material. Sealed into
    /// the key's wrapped blob (authenticated there), so a volume holding
    /// such a key can tell that it must carry MACs even when every MAC and
    /// flag was stripped from its files.
    Aes256XtsMac,
}

impl KeyKind {
    /// The byte that stands for this kind in key ids and on disk.
    pub fn code(self) -> u8 {
        match self {
            KeyKind::Aes256Xts => 1,
            KeyKind::Aes256XtsMac => 2,
        }
    }

    /// The kind a byte stands for, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(KeyKind::Aes256Xts),
            2 => Some(KeyKind::Aes256XtsMac),
            _ => None,
        }
    }

    /// Bytes of key material a key of this kind has.
    pub fn material_bytes(self) -> usize {
        match self {
            KeyKind::Aes256Xts | KeyKind::Aes256XtsMac => XTS_KEY_BYTES,
        }
    }

    /// Whether a volume holding a key of this kind must authenticate its
    /// blocks and log (integrity `mac`).
    pub fn requires_macs(self) -> bool {
        self == KeyKind::Aes256XtsMac
    }
}

/// The public, one-way id of a data key. Shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct KeyId(pub [u8; KEY_ID_BYTES]);

impl KeyId {
    /// Derives the id of `material` used as a key of `kind`.
    pub fn derive(kind: KeyKind, material: &[u8]) -> Self {
        // SHA-256 (SHA-NI/AVX2) holds the padded key in vector registers.
        let _registers = RegisterScrub::on_drop();
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(material)
            .expect("HMAC accepts keys of any length");
        mac.update(KEY_ID_LABEL);
        mac.update(&[kind.code()]);
        let digest = mac.finalize().into_bytes();
        let mut id = [0u8; KEY_ID_BYTES];
        id.copy_from_slice(&digest[..KEY_ID_BYTES]);
        KeyId(id)
    }

    /// The id as 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}

/// A key id string that is not 32 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("key id must be {} hex digits, got {got:?}", KEY_ID_BYTES * 2)]
pub struct ParseKeyIdError {
    got: String,
}

impl FromStr for KeyId {
    type Err = ParseKeyIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut id = [0u8; KEY_ID_BYTES];
        hex::decode_to_slice(text, &mut id).map_err(|_| ParseKeyIdError {
            got: text.chars().take(80).collect(),
        })?;
        Ok(KeyId(id))
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a data key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Locked memory could not be had (see `ulimit -l`, RLIMIT_MEMLOCK).
    #[error("cannot lock key memory (check RLIMIT_MEMLOCK / ulimit -l): {0}")]
    Lock(#[source] std::io::Error),
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
    /// Key material of the wrong length for its kind.
    #[error("{kind:?} key needs {expected} bytes of material, got {got}")]
    Length {
        /// The kind asked for.
        kind: KeyKind,
        /// Bytes that kind needs.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
}

/// A data encryption key: material in locked memory, zeroed on drop.
pub struct DataKey {
    id: KeyId,
    kind: KeyKind,
    material: LockedBox<[u8; XTS_KEY_BYTES]>,
}

impl DataKey {
    /// Generates a fresh random key of `kind` from the OS random source.
    pub fn generate(kind: KeyKind) -> Result<Self, KeyError> {
        let material =
            LockedBox::new_filled([0u8; XTS_KEY_BYTES], |bytes: &mut [u8; XTS_KEY_BYTES]| {
                getrandom::fill(bytes).map_err(|e| KeyError::Random(e.to_string()))
            })
            .map_err(flatten_fill_error)?;
        Ok(Self::from_locked(kind, material))
    }

    /// Copies `material` into a new key of `kind`. The caller still owns (and
    /// must wipe) its own copy; use `zeroize::Zeroizing` for it.
    pub fn from_bytes(kind: KeyKind, material: &[u8]) -> Result<Self, KeyError> {
        // The copy into locked memory goes through vector registers.
        let _registers = RegisterScrub::on_drop();
        let expected = kind.material_bytes();
        if material.len() != expected {
            return Err(KeyError::Length {
                kind,
                expected,
                got: material.len(),
            });
        }
        let locked =
            LockedBox::new_filled([0u8; XTS_KEY_BYTES], |bytes: &mut [u8; XTS_KEY_BYTES]| {
                bytes.copy_from_slice(material);
                Ok::<(), KeyError>(())
            })
            .map_err(flatten_fill_error)?;
        Ok(Self::from_locked(kind, locked))
    }

    fn from_locked(kind: KeyKind, material: LockedBox<[u8; XTS_KEY_BYTES]>) -> Self {
        let id = KeyId::derive(kind, material.get());
        Self { id, kind, material }
    }

    /// A second, independent copy of this key in its own locked pages.
    /// Explicit (no `Clone`) because every copy of a key is a liability.
    pub fn try_clone(&self) -> Result<Self, KeyError> {
        Self::from_bytes(self.kind, self.material.get())
    }

    /// The key's public id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The key's kind.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The raw key material. Named loudly so every use is easy to audit; never
    /// log, print or persist what it returns.
    pub fn expose_secret(&self) -> &[u8; XTS_KEY_BYTES] {
        self.material.get()
    }
}

fn flatten_fill_error(error: LockedFillError<KeyError>) -> KeyError {
    match error {
        LockedFillError::Lock(e) => KeyError::Lock(e),
        LockedFillError::Fill(e) => e,
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data key {} ({:?})", self.id, self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_material() {
        let material = [0xA5u8; XTS_KEY_BYTES];
        let key = DataKey::from_bytes(KeyKind::Aes256Xts, &material).unwrap();
        for text in [format!("{key:?}"), format!("{key}"), format!("{key:#?}")] {
            assert!(!text.to_lowercase().contains("a5a5"), "{text}");
            assert!(!text.contains("165"), "{text}");
            assert!(text.contains(&key.id().to_hex()), "{text}");
        }
    }

    #[test]
    fn key_id_is_deterministic_and_depends_on_material() {
        let a = DataKey::from_bytes(KeyKind::Aes256Xts, &[1u8; 64]).unwrap();
        let b = DataKey::from_bytes(KeyKind::Aes256Xts, &[1u8; 64]).unwrap();
        let c = DataKey::from_bytes(KeyKind::Aes256Xts, &[2u8; 64]).unwrap();
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        // The id is not a prefix of the material.
        assert_ne!(&a.id().0[..], &[1u8; 16][..]);
        // Nor can the same material pass for a key of another kind.
        let mac = DataKey::from_bytes(KeyKind::Aes256XtsMac, &[1u8; 64]).unwrap();
        assert_ne!(a.id(), mac.id());
        assert!(mac.kind().requires_macs() && !a.kind().requires_macs());
        assert_eq!(
            KeyKind::from_code(KeyKind::Aes256XtsMac.code()),
            Some(mac.kind())
        );
    }

    #[test]
    fn generated_keys_differ_and_clone_is_equal() {
        let a = DataKey::generate(KeyKind::Aes256Xts).unwrap();
        let b = DataKey::generate(KeyKind::Aes256Xts).unwrap();
        assert_ne!(a.id(), b.id());
        let a2 = a.try_clone().unwrap();
        assert_eq!(a.id(), a2.id());
        assert_eq!(a.expose_secret(), a2.expose_secret());
    }

    #[test]
    fn wrong_length_is_a_typed_error() {
        let err = DataKey::from_bytes(KeyKind::Aes256Xts, &[0u8; 32]).unwrap_err();
        assert!(matches!(
            err,
            KeyError::Length {
                expected: 64,
                got: 32,
                ..
            }
        ));
    }

    #[test]
    fn key_id_round_trips_through_hex_and_json() {
        let key = DataKey::generate(KeyKind::Aes256Xts).unwrap();
        let parsed: KeyId = key.id().to_hex().parse().unwrap();
        assert_eq!(parsed, key.id());
        let json = serde_json::to_string(&key.id()).unwrap();
        assert_eq!(serde_json::from_str::<KeyId>(&json).unwrap(), key.id());
        assert!("zz".parse::<KeyId>().is_err());
    }
}
