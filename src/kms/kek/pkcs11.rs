//! The PKCS#11 backend: each wrapping-key version is an AES-256 secret key
//! object generated **inside** the token (`CKM_AES_KEY_GEN`: token,
//! private, sensitive, non-extractable, encrypt-only), labelled
//! `<prefix><version>`. Deriving a blob key is one `C_Encrypt` with
//! `CKM_AES_ECB` over four blocks; the key's value never leaves the HSM.
//!
//! Tested against SoftHSM2 (`tests/kms_pkcs11.rs`). Facts about PKCS#11
//! tokens relied on (checked with SoftHSM2): initialise with `OS_LOCKING_OK`; one
//! `Session` per thread (we keep a small pool); a second login answers
//! `CKR_USER_ALREADY_LOGGED_IN`, which is success; look keys up by label
//! before generating, or duplicates appear.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{KekError, MinVersion, WrappingKeys};
use crate::kms::fsutil;
use crate::kms::limits::{KEK_VERSIONS_MAX, PKCS11_SESSIONS};
use crate::kms::seal::{BlobKey, BlobNonce, DERIVE_INPUT_BYTES};

/// Where the HSM is and how to log in (part of `config.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token's label (slot numbers are not stable; labels are).
    pub token_label: String,
    /// A private (0600) file holding the user PIN.
    pub pin_file: PathBuf,
    /// Label prefix of the wrapping-key objects (`lsvkms-kek-v` → `lsvkms-kek-v1`, ...).
    #[serde(default = "default_prefix")]
    pub key_label_prefix: String,
}

fn default_prefix() -> String {
    "lsvkms-kek-v".to_owned()
}

fn hsm(what: &str, error: impl std::fmt::Display) -> KekError {
    KekError::Hsm(format!("{what}: {error}"))
}

/// Wrapping keys inside a PKCS#11 token.
pub struct Pkcs11Kek {
    config: Pkcs11Config,
    // Fields drop in order: sessions close before the context finalizes.
    sessions: Vec<Mutex<Session>>,
    _context: Pkcs11,
    next_session: AtomicUsize,
    keys: RwLock<BTreeMap<u32, ObjectHandle>>,
    version_min: MinVersion,
    rotate_lock: Mutex<()>,
}

impl Pkcs11Kek {
    /// Connects, logs in and finds the wrapping-key versions. With
    /// `create_first`, generates version 1 if the token has none
    /// (`lsvkms init`); otherwise having none is an error.
    pub fn open(
        state_dir: &Path,
        config: &Pkcs11Config,
        create_first: bool,
    ) -> Result<Self, KekError> {
        let context = Pkcs11::new(&config.module).map_err(|e| hsm("loading module", e))?;
        context
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(|e| hsm("C_Initialize", e))?;
        let slot = find_slot(&context, &config.token_label)?;
        let pin = read_pin(&config.pin_file)?;
        let mut sessions = Vec::with_capacity(PKCS11_SESSIONS);
        for _ in 0..PKCS11_SESSIONS {
            let session = context
                .open_rw_session(slot)
                .map_err(|e| hsm("C_OpenSession", e))?;
            login(&session, &pin)?;
            sessions.push(Mutex::new(session));
        }
        let kek = Self {
            config: config.clone(),
            _context: context,
            sessions,
            next_session: AtomicUsize::new(0),
            keys: RwLock::new(BTreeMap::new()),
            version_min: MinVersion::load(state_dir)?,
            rotate_lock: Mutex::new(()),
        };
        let found = kek.find_versions()?;
        if found.is_empty() {
            if !create_first {
                return Err(KekError::Missing(format!("token {:?}", config.token_label)));
            }
            let handle = kek.generate(1)?;
            kek.keys.write().expect("kek lock").insert(1, handle);
        } else {
            *kek.keys.write().expect("kek lock") = found;
        }
        Ok(kek)
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        for slot in &self.sessions {
            if let Ok(guard) = slot.try_lock() {
                return guard;
            }
        }
        let index = self.next_session.fetch_add(1, Ordering::Relaxed) % self.sessions.len();
        self.sessions[index].lock().expect("session lock poisoned")
    }

    fn label(&self, version: u32) -> String {
        format!("{}{version}", self.config.key_label_prefix)
    }

    fn find_versions(&self) -> Result<BTreeMap<u32, ObjectHandle>, KekError> {
        let session = self.session();
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
        ];
        let handles = session
            .find_objects(&template)
            .map_err(|e| hsm("C_FindObjects", e))?;
        let mut versions = BTreeMap::new();
        for handle in handles {
            let attributes = session
                .get_attributes(handle, &[AttributeType::Label])
                .map_err(|e| hsm("C_GetAttributeValue", e))?;
            let Some(Attribute::Label(label)) = attributes.first() else {
                continue;
            };
            let label = String::from_utf8_lossy(label);
            let Some(version) = label
                .strip_prefix(&self.config.key_label_prefix)
                .and_then(|v| v.parse::<u32>().ok())
            else {
                continue;
            };
            if version == 0 || version > KEK_VERSIONS_MAX {
                continue;
            }
            if versions.insert(version, handle).is_some() {
                return Err(KekError::Hsm(format!(
                    "two keys labelled {label:?}: remove one"
                )));
            }
        }
        Ok(versions)
    }

    fn generate(&self, version: u32) -> Result<ObjectHandle, KekError> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Label(self.label(version).into_bytes()),
        ];
        self.session()
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(|e| hsm("C_GenerateKey", e))
    }
}

fn find_slot(context: &Pkcs11, label: &str) -> Result<Slot, KekError> {
    let slots = context
        .get_slots_with_token()
        .map_err(|e| hsm("C_GetSlotList", e))?;
    for slot in slots {
        let info = context
            .get_token_info(slot)
            .map_err(|e| hsm("C_GetTokenInfo", e))?;
        if info.label().trim_end() == label {
            return Ok(slot);
        }
    }
    Err(KekError::Hsm(format!("no token labelled {label:?}")))
}

fn read_pin(path: &Path) -> Result<AuthPin, KekError> {
    fsutil::check_private(path)?;
    let bytes =
        Zeroizing::new(fsutil::read_bounded(path, 256).map_err(|e| hsm("reading PIN file", e))?);
    let text =
        std::str::from_utf8(&bytes).map_err(|_| KekError::Hsm("PIN file is not UTF-8".into()))?;
    Ok(AuthPin::from(
        text.trim_end_matches(['\n', '\r']).to_owned(),
    ))
}

fn login(session: &Session, pin: &AuthPin) -> Result<(), KekError> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(hsm("C_Login", e)),
    }
}

impl WrappingKeys for Pkcs11Kek {
    fn backend(&self) -> &'static str {
        "pkcs11"
    }

    fn current_version(&self) -> u32 {
        *self
            .keys
            .read()
            .expect("kek lock")
            .keys()
            .next_back()
            .expect("at least one version")
    }

    fn min_version(&self) -> u32 {
        self.version_min.get()
    }

    fn blob_key(&self, version: u32, nonce: &BlobNonce) -> Result<BlobKey, KekError> {
        self.version_min.check_not_retired(version)?;
        let handle = *self
            .keys
            .read()
            .expect("kek lock")
            .get(&version)
            .ok_or(KekError::UnknownVersion(version))?;
        let input = BlobKey::derive_input(nonce);
        let output = Zeroizing::new(
            self.session()
                .encrypt(&Mechanism::AesEcb, handle, &input)
                .map_err(|e| hsm("C_Encrypt", e))?,
        );
        let output: &[u8; DERIVE_INPUT_BYTES] = output[..]
            .try_into()
            .map_err(|_| KekError::Hsm(format!("ECB returned {} bytes", output.len())))?;
        Ok(BlobKey::from_derive_output(output))
    }

    fn rotate(&self) -> Result<u32, KekError> {
        let _serial = self.rotate_lock.lock().expect("rotate lock");
        let next = self.current_version() + 1;
        if next > KEK_VERSIONS_MAX {
            return Err(KekError::Hsm(format!(
                "at most {KEK_VERSIONS_MAX} versions"
            )));
        }
        let handle = self.generate(next)?;
        self.keys.write().expect("kek lock").insert(next, handle);
        Ok(next)
    }

    fn set_min_version(&self, version_min: u32) -> Result<(), KekError> {
        let _serial = self.rotate_lock.lock().expect("rotate lock");
        self.version_min.raise(version_min, self.current_version())
    }
}
