//! The keys a volume's blocks are encrypted under, ready to use: each key's
//! expanded AES-256-XTS schedule and its MAC key (`crypto::mac`) live in
//! locked memory.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::VolumeError;
use crate::crypto::locked::LockedBox;
use crate::crypto::mac::{Mac, MacDomain, MacKey};
use crate::crypto::{CryptoPool, DataKey, DataUnit, KeyId, Tweak, XtsCipher};
use crate::store::MacKeys;
use crate::sync::RwLockOrRecover;

/// How one key transforms blocks.
enum Transform {
    Xts(LockedBox<XtsCipher>),
    /// Identity: only for benchmarks (`null-cipher` feature).
    #[cfg(feature = "null-cipher")]
    Null,
}

/// One usable key: its id, its schedule, its MAC key, and the key itself
/// (kept so the volume can hand it on, e.g. to a re-encryptor, without
/// asking the KMS).
pub struct ActiveKey {
    key: DataKey,
    transform: Transform,
    mac: LockedBox<MacKey>,
}

impl ActiveKey {
    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.key.id()
    }

    /// The MAC key derived from this key (block tags, record MACs).
    pub fn mac_key(&self) -> &MacKey {
        self.mac.get()
    }

    /// Encrypts whole blocks in place with `pool`.
    pub fn encrypt(&self, pool: &CryptoPool, buf: &mut [u8], unit: DataUnit, first: Tweak) {
        match &self.transform {
            Transform::Xts(cipher) => pool.encrypt(cipher.get(), buf, unit, first),
            #[cfg(feature = "null-cipher")]
            Transform::Null => {}
        }
    }

    /// Encrypts whole blocks in place on the calling thread.
    pub fn encrypt_here(&self, buf: &mut [u8], unit: DataUnit, first: Tweak) {
        match &self.transform {
            Transform::Xts(cipher) => cipher.get().encrypt(buf, unit, first),
            #[cfg(feature = "null-cipher")]
            Transform::Null => {}
        }
    }

    /// Decrypts whole blocks in place on the calling thread.
    pub fn decrypt_here(&self, buf: &mut [u8], unit: DataUnit, first: Tweak) {
        match &self.transform {
            Transform::Xts(cipher) => cipher.get().decrypt(buf, unit, first),
            #[cfg(feature = "null-cipher")]
            Transform::Null => {}
        }
    }

    /// Decrypts whole blocks in place with `pool`.
    pub fn decrypt(&self, pool: &CryptoPool, buf: &mut [u8], unit: DataUnit, first: Tweak) {
        match &self.transform {
            Transform::Xts(cipher) => pool.decrypt(cipher.get(), buf, unit, first),
            #[cfg(feature = "null-cipher")]
            Transform::Null => {}
        }
    }
}

impl std::fmt::Debug for ActiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveKey")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

/// Keys by id, and which one new writes use.
#[derive(Debug)]
pub struct Keyring {
    current: Option<Arc<ActiveKey>>,
    by_id: HashMap<KeyId, Arc<ActiveKey>>,
    null_cipher: bool,
    /// The same keys as the log sees them, kept in step.
    log_keys: Arc<LogMacKeys>,
}

/// A keyring's keys as its volume's log signs and checks MACs with them
/// ([`MacKeys`]): a copy kept in step with the keyring, behind a lock of
/// its own that is taken last and held for one MAC only (the log asks for
/// MACs under its own locks, which the keyring's holders may wait for).
#[derive(Debug, Default)]
pub struct LogMacKeys {
    keys: RwLock<LogMacKeyState>,
}

#[derive(Debug, Default)]
struct LogMacKeyState {
    current: Option<KeyId>,
    by_id: HashMap<KeyId, Arc<ActiveKey>>,
}

impl MacKeys for LogMacKeys {
    fn current(&self) -> Option<KeyId> {
        self.keys.read_or_recover().current
    }

    fn mac(&self, key: &KeyId, domain: MacDomain, parts: &[&[u8]]) -> Option<Mac> {
        let key = self.keys.read_or_recover().by_id.get(key).cloned()?;
        Some(key.mac_key().mac(domain, parts))
    }

    fn required(&self) -> bool {
        let state = self.keys.read_or_recover();
        state.by_id.values().any(|k| k.key.kind().requires_macs())
    }
}

impl Keyring {
    /// A keyring whose current (and only) key is `key`.
    pub fn new(key: DataKey, null_cipher: bool) -> Result<Self, VolumeError> {
        Self::with_keys(Some(key.id()), vec![key], null_cipher)
    }

    /// A keyring of `keys`; new writes use the one with id `current` (which
    /// must be among them), or none (a read-only or maintenance open).
    pub fn with_keys(
        current: Option<KeyId>,
        keys: Vec<DataKey>,
        null_cipher: bool,
    ) -> Result<Self, VolumeError> {
        let mut by_id = HashMap::new();
        for key in keys {
            let active = Arc::new(activate(key, null_cipher)?);
            by_id.insert(active.id(), active);
        }
        let current = match current {
            Some(id) => Some(Arc::clone(
                by_id
                    .get(&id)
                    .ok_or(VolumeError::UnknownKey { key_id: id })?,
            )),
            None => None,
        };
        let keyring = Self {
            current,
            by_id,
            null_cipher,
            log_keys: Arc::default(),
        };
        keyring.publish();
        Ok(keyring)
    }

    /// A key made for a volume whose blocks and log are authenticated
    /// ([`crate::crypto::KeyKind::requires_macs`]), if the keyring holds
    /// one: then the volume opens only as integrity `mac`, every MAC
    /// checked.
    pub fn requiring_macs(&self) -> Option<KeyId> {
        self.by_id
            .values()
            .map(|active| &active.key)
            .find(|key| key.kind().requires_macs())
            .map(DataKey::id)
    }

    /// The keys as the log uses them (see [`LogMacKeys`]).
    pub fn log_keys(&self) -> Arc<LogMacKeys> {
        Arc::clone(&self.log_keys)
    }

    /// Those of the keys `ids` the keyring holds, as a log checks MACs with
    /// them (a snapshot's keys, for its index); `None` if it holds none.
    pub fn log_keys_for(&self, ids: impl IntoIterator<Item = KeyId>) -> Option<Arc<dyn MacKeys>> {
        let by_id: HashMap<KeyId, Arc<ActiveKey>> = ids
            .into_iter()
            .filter_map(|id| Some((id, Arc::clone(self.by_id.get(&id)?))))
            .collect();
        if by_id.is_empty() {
            return None;
        }
        let state = LogMacKeyState {
            current: None,
            by_id,
        };
        Some(Arc::new(LogMacKeys {
            keys: RwLock::new(state),
        }))
    }

    /// Brings the log's copy of the keys up to date.
    fn publish(&self) {
        let mut state = self.log_keys.keys.write_or_recover();
        state.current = self.current.as_ref().map(|k| k.id());
        state.by_id.clone_from(&self.by_id);
    }

    /// Adds `key` (its schedule goes to locked memory).
    pub fn add(&mut self, key: DataKey) -> Result<(), VolumeError> {
        let active = Arc::new(activate(key, self.null_cipher)?);
        self.by_id.insert(active.id(), active);
        self.publish();
        Ok(())
    }

    /// Makes the key with `id` (already added) the one new writes use.
    pub fn set_current(&mut self, id: KeyId) -> Result<(), VolumeError> {
        let key = self
            .by_id
            .get(&id)
            .ok_or(VolumeError::UnknownKey { key_id: id })?;
        self.current = Some(Arc::clone(key));
        self.publish();
        Ok(())
    }

    /// Forgets the key with `id` (never the current one). Its material and
    /// schedule are overwritten when the last reader in flight lets go.
    pub fn remove(&mut self, id: &KeyId) -> bool {
        if self.current.as_ref().is_some_and(|c| c.id() == *id) {
            return false;
        }
        let removed = self.by_id.remove(id).is_some();
        self.publish();
        removed
    }

    /// Ids of the keys held.
    pub fn ids(&self) -> Vec<KeyId> {
        self.by_id.keys().copied().collect()
    }

    /// The key new writes use.
    pub fn current(&self) -> Result<&Arc<ActiveKey>, VolumeError> {
        self.current.as_ref().ok_or(VolumeError::NoKey)
    }

    /// The key with `id`, if the volume holds it.
    pub fn get(&self, id: &KeyId) -> Result<&Arc<ActiveKey>, VolumeError> {
        self.by_id
            .get(id)
            .ok_or(VolumeError::UnknownKey { key_id: *id })
    }
}

fn activate(key: DataKey, null_cipher: bool) -> Result<ActiveKey, VolumeError> {
    let transform = if null_cipher {
        null_transform()?
    } else {
        // Expanded in place in locked pages; `new_locked` scrubs the stack
        // and the registers it used.
        let locked = XtsCipher::new_locked(key.expose_secret())
            .map_err(|e| VolumeError::Key(crate::crypto::key::KeyError::Lock(e)))?;
        Transform::Xts(locked)
    };
    let mac = MacKey::derive_locked(key.expose_secret())
        .map_err(|e| VolumeError::Key(crate::crypto::key::KeyError::Lock(e)))?;
    Ok(ActiveKey {
        key,
        transform,
        mac,
    })
}

#[cfg(feature = "null-cipher")]
fn null_transform() -> Result<Transform, VolumeError> {
    Ok(Transform::Null)
}

#[cfg(not(feature = "null-cipher"))]
fn null_transform() -> Result<Transform, VolumeError> {
    Err(VolumeError::NullCipherUnavailable)
}
