//! The file backend (the embedded default): one 32-byte AES-256 key file
//! per version, `DIR/kek/vNNNNNN.key`, mode 0600, owned by the service's
//! user. Opening refuses any key file (or the key directory) that group or
//! other can access. Keys are expanded once into locked, non-dumpable memory.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use aes::Aes256;
use aes::cipher::KeyInit;
use zeroize::Zeroizing;

use super::{KekError, MinVersion, WrappingKeys};
use crate::crypto::hygiene::RegisterScrub;
use crate::crypto::locked::{LockedBox, LockedFillError, scrub_stack};
use crate::kms::fsutil;
use crate::kms::limits::KEK_VERSIONS_MAX;
use crate::kms::seal::{BlobKey, BlobNonce};

/// Bytes of one wrapping-key file.
pub const KEK_FILE_BYTES: usize = 32;

/// Wrapping keys kept in 0600 files.
pub struct FileKek {
    state_dir: PathBuf,
    keys: RwLock<BTreeMap<u32, LockedBox<Aes256>>>,
    version_min: MinVersion,
    rotate_lock: Mutex<()>,
}

fn kek_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("kek")
}

fn version_path(state_dir: &Path, version: u32) -> PathBuf {
    kek_dir(state_dir).join(format!("v{version:06}.key"))
}

fn io_error(what: &str, error: impl std::fmt::Display) -> KekError {
    KekError::Io(format!("{what}: {error}"))
}

impl FileKek {
    /// Creates the key directory and wrapping-key version 1 (`lsvkms init`).
    pub fn create(state_dir: &Path) -> Result<Self, KekError> {
        let dir = kek_dir(state_dir);
        if dir.exists()
            && fs::read_dir(&dir)
                .map_err(|e| io_error("kek dir", e))?
                .next()
                .is_some()
        {
            return Err(KekError::Io(format!(
                "{} already holds keys",
                dir.display()
            )));
        }
        fsutil::create_private_dir(&dir).map_err(|e| io_error("creating kek dir", e))?;
        write_new_version(state_dir, 1)?;
        Self::open(state_dir)
    }

    /// Loads every version from `DIR/kek/`, refusing exposed files.
    pub fn open(state_dir: &Path) -> Result<Self, KekError> {
        let dir = kek_dir(state_dir);
        fsutil::check_private(&dir)?;
        let mut keys = BTreeMap::new();
        let entries = fs::read_dir(&dir).map_err(|e| io_error(&dir.display().to_string(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error("listing kek dir", e))?;
            let name = entry.file_name();
            let Some(version) = parse_version_name(&name.to_string_lossy()) else {
                continue;
            };
            if keys.len() >= KEK_VERSIONS_MAX as usize {
                return Err(KekError::Io(format!(
                    "more than {KEK_VERSIONS_MAX} versions"
                )));
            }
            keys.insert(version, load_key(&entry.path())?);
        }
        if keys.is_empty() {
            return Err(KekError::Missing(dir.display().to_string()));
        }
        Ok(Self {
            state_dir: state_dir.to_path_buf(),
            keys: RwLock::new(keys),
            version_min: MinVersion::load(state_dir)?,
            rotate_lock: Mutex::new(()),
        })
    }
}

fn parse_version_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix('v')?.strip_suffix(".key")?;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|v| *v > 0)
}

fn load_key(path: &Path) -> Result<LockedBox<Aes256>, KekError> {
    // Key expansion and the move into locked pages run through vector
    // registers.
    let _registers = RegisterScrub::on_drop();
    fsutil::check_private(path)?;
    let mut file = File::open(path).map_err(|e| io_error(&path.display().to_string(), e))?;
    let raw = LockedBox::new_filled([0u8; KEK_FILE_BYTES], |bytes: &mut [u8; KEK_FILE_BYTES]| {
        file.read_exact(bytes)?;
        let mut extra = [0u8; 1];
        match file.read(&mut extra)? {
            0 => Ok(()),
            _ => Err(std::io::Error::other("longer than 32 bytes")),
        }
    })
    .map_err(|e| match e {
        LockedFillError::Lock(e) => io_error("locking key memory", e),
        LockedFillError::Fill(e) => io_error(&path.display().to_string(), e),
    })?;
    let cipher = Aes256::new_from_slice(raw.get()).expect("32-byte key");
    let locked = LockedBox::new(cipher).map_err(|e| io_error("locking key memory", e));
    // The schedule was built on our stack before it moved into locked pages.
    scrub_stack();
    locked
}

fn write_new_version(state_dir: &Path, version: u32) -> Result<(), KekError> {
    let mut key = Zeroizing::new([0u8; KEK_FILE_BYTES]);
    getrandom::fill(&mut key[..]).map_err(|e| io_error("random source", e))?;
    let path = version_path(state_dir, version);
    fsutil::write_atomic(&path, &key[..], 0o600)
        .map_err(|e| io_error(&path.display().to_string(), e))
}

impl WrappingKeys for FileKek {
    fn backend(&self) -> &'static str {
        "file"
    }

    fn current_version(&self) -> u32 {
        let keys = self.keys.read().expect("kek lock poisoned");
        *keys.keys().next_back().expect("at least one version")
    }

    fn min_version(&self) -> u32 {
        self.version_min.get()
    }

    fn blob_key(&self, version: u32, nonce: &BlobNonce) -> Result<BlobKey, KekError> {
        self.version_min.check_not_retired(version)?;
        let keys = self.keys.read().expect("kek lock poisoned");
        let cipher = keys
            .get(&version)
            .ok_or(KekError::UnknownVersion(version))?;
        Ok(BlobKey::derive_with(cipher.get(), nonce))
    }

    fn rotate(&self) -> Result<u32, KekError> {
        let _serial = self.rotate_lock.lock().expect("rotate lock poisoned");
        let next = self.current_version() + 1;
        if next > KEK_VERSIONS_MAX {
            return Err(KekError::Io(format!("at most {KEK_VERSIONS_MAX} versions")));
        }
        write_new_version(&self.state_dir, next)?;
        let cipher = load_key(&version_path(&self.state_dir, next))?;
        self.keys
            .write()
            .expect("kek lock poisoned")
            .insert(next, cipher);
        Ok(next)
    }

    fn set_min_version(&self, version_min: u32) -> Result<(), KekError> {
        let _serial = self.rotate_lock.lock().expect("rotate lock poisoned");
        self.version_min.raise(version_min, self.current_version())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_rotate_reopen_and_retire() {
        let dir = tempfile::tempdir().unwrap();
        let kek = FileKek::create(dir.path()).unwrap();
        assert_eq!(kek.current_version(), 1);
        let nonce = [7u8; 12];
        let k1 = kek.blob_key(1, &nonce).unwrap();
        assert_eq!(kek.rotate().unwrap(), 2);
        let reopened = FileKek::open(dir.path()).unwrap();
        assert_eq!(reopened.current_version(), 2);
        assert_eq!(format!("{k1:?}"), "BlobKey(<secret>)");
        assert!(matches!(
            reopened.blob_key(3, &nonce),
            Err(KekError::UnknownVersion(3))
        ));
        reopened.set_min_version(2).unwrap();
        assert!(matches!(
            reopened.blob_key(1, &nonce),
            Err(KekError::Retired { .. })
        ));
        assert!(reopened.set_min_version(1).is_err(), "never lowered");
        assert_eq!(FileKek::open(dir.path()).unwrap().min_version(), 2);
    }

    #[test]
    fn refuses_a_key_file_group_can_read() {
        let dir = tempfile::tempdir().unwrap();
        drop(FileKek::create(dir.path()).unwrap());
        let path = version_path(dir.path(), 1);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            FileKek::open(dir.path()),
            Err(KekError::Insecure(_))
        ));
    }
}
