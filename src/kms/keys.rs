//! Per-key state: one JSON file per key, `DIR/keys/<key id>.json`, each
//! replaced atomically (tmp + fsync + rename + dir fsync). A destroyed key's
//! file stays (a tombstone), so "destroyed" survives restarts and a blob of
//! that key is refused forever.
//!
//! Read-modify-write cycles hold an exclusive `flock` on `DIR/keys/.lock`,
//! so the server and an offline `lsvkms audit check` never lose each
//! other's updates. Reads need no lock: a rename is atomic.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::crypto::{KeyId, KeyKind};

use super::api::{KeyContext, KeyHistory, KeyInfo, KeyState};
use super::error::KmsError;
use super::fsutil;
use super::limits::{FORMER_ACL_USERS_MAX, STATE_FILE_BYTES_MAX};

/// Everything the service keeps about a key (never its material).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key's id.
    pub key_id: KeyId,
    /// Its kind.
    pub key_type: KeyKind,
    /// Lifecycle state.
    pub state: KeyState,
    /// Set when the audit check found a non-ACL unwrap.
    #[serde(default)]
    pub compromised: bool,
    /// Why it was marked compromised.
    #[serde(default)]
    pub compromised_reason: Option<String>,
    /// Creation time, seconds since the UNIX epoch.
    pub created_unix_s: u64,
    /// Wrapping-key versions its blobs have been sealed under.
    pub wrapping_key_versions: Vec<u32>,
    /// The newest ACL sealed for the key: the one it was created with, or
    /// the last one an ACL change (`POST /v1/rewrap` with `acl`) set.
    pub acl: Vec<String>,
    /// Users an ACL change removed. Blobs sealed before the change still
    /// carry them and still unwrap for them, so the audit check must not
    /// call their unwraps compromises. Disjoint from `acl`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub former_acl_users: Vec<String>,
    /// The context sealed in its blob.
    pub context: KeyContext,
    /// Counts the changes to this record (0 when created): what a caller
    /// that already knows the record compares to learn whether anything
    /// changed (`GET /v1/keys/{id}?since=REVISION`).
    #[serde(default)]
    pub revision: u64,
    /// When its state changed last, and the keys of its rotations.
    #[serde(flatten)]
    pub history: KeyHistory,
}

impl KeyRecord {
    /// Replaces the ACL with `acl` (already validated), remembering the
    /// users it removes in `former_acl_users`; refuses (409) if more than
    /// [`FORMER_ACL_USERS_MAX`] would be remembered.
    pub fn set_acl(&mut self, acl: &[String]) -> Result<(), KmsError> {
        let mut former: Vec<String> = self
            .former_acl_users
            .iter()
            .chain(&self.acl)
            .filter(|user| !acl.contains(user))
            .cloned()
            .collect();
        former.sort_unstable();
        former.dedup();
        if former.len() > FORMER_ACL_USERS_MAX {
            return Err(KmsError::Conflict(format!(
                "key {} would remember {} users removed from its ACL, at most \
                 {FORMER_ACL_USERS_MAX}: use a new key",
                self.key_id,
                former.len()
            )));
        }
        self.acl = acl.to_vec();
        self.former_acl_users = former;
        Ok(())
    }

    /// Whether some blob of this key may carry `user` on its ACL: the
    /// user is on the ACL now or was before an ACL change.
    pub fn acl_ever_listed(&self, user: &str) -> bool {
        self.acl
            .iter()
            .chain(&self.former_acl_users)
            .any(|u| u == user)
    }

    /// The public view of the record.
    pub fn info(&self) -> KeyInfo {
        let status = if self.state == KeyState::Destroyed {
            "destroyed"
        } else if self.compromised {
            "compromised"
        } else {
            self.state.name()
        };
        KeyInfo {
            key_id: self.key_id,
            key_type: self.key_type,
            status: status.to_owned(),
            state: self.state,
            compromised: self.compromised,
            created_unix_s: self.created_unix_s,
            wrapping_key_versions: self.wrapping_key_versions.clone(),
            acl: self.acl.clone(),
            revision: self.revision,
            context: Some(self.context.clone()),
            history: self.history.clone(),
        }
    }
}

/// The directory of key records.
pub struct KeyStore {
    dir: PathBuf,
    in_process: Mutex<()>,
}

/// A state-storage failure: `what` failed because of `error`.
pub fn state_error(what: &str, error: impl std::fmt::Display) -> KmsError {
    KmsError::State(format!("{what}: {error}"))
}

/// The JSON record stored at `path`, or `None` if there is none. A record
/// that `names_itself` refuses (its id is not the one in its file's name)
/// is an error: the file `holds_another` record.
pub fn read_state_file<T: serde::de::DeserializeOwned>(
    path: &Path,
    names_itself: impl FnOnce(&T) -> bool,
    holds_another: &str,
) -> Result<Option<T>, KmsError> {
    let shown = || path.display().to_string();
    let bytes = match fsutil::read_bounded(path, STATE_FILE_BYTES_MAX) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(state_error(&shown(), e)),
    };
    let record: T = serde_json::from_slice(&bytes).map_err(|e| state_error(&shown(), e))?;
    if !names_itself(&record) {
        return Err(state_error(&shown(), holds_another));
    }
    Ok(Some(record))
}

impl KeyStore {
    /// Opens (creating if needed) `DIR/keys`.
    pub fn open(state_dir: &Path) -> Result<Self, KmsError> {
        let dir = state_dir.join("keys");
        if !dir.exists() {
            fsutil::create_private_dir(&dir).map_err(|e| state_error("creating keys dir", e))?;
        }
        Ok(Self {
            dir,
            in_process: Mutex::new(()),
        })
    }

    fn path(&self, key_id: KeyId) -> PathBuf {
        self.dir.join(format!("{key_id}.json"))
    }

    /// The record of `key_id`, if the key is known.
    pub fn get(&self, key_id: KeyId) -> Result<Option<KeyRecord>, KmsError> {
        read_state_file(
            &self.path(key_id),
            |record: &KeyRecord| record.key_id == key_id,
            "holds another key's record",
        )
    }

    /// Every stored record `keep` accepts, oldest first, at most `max` of
    /// them (and whether more matched). Files that are not key records
    /// (the lock, temporaries) are skipped; a damaged record is an error.
    pub fn list(
        &self,
        max: usize,
        keep: impl Fn(&KeyRecord) -> bool,
    ) -> Result<(Vec<KeyRecord>, bool), KmsError> {
        let stems = fsutil::json_stems(&self.dir).map_err(|e| state_error("listing keys", e))?;
        let mut records = Vec::new();
        for stem in stems {
            let Ok(key_id) = stem.parse::<KeyId>() else {
                continue;
            };
            if let Some(record) = self.get(key_id)?
                && keep(&record)
            {
                records.push(record);
            }
        }
        records.sort_by_key(|r| (r.created_unix_s, r.key_id.0));
        let more = records.len() > max;
        records.truncate(max);
        Ok((records, more))
    }

    /// Stores the record of a new key; refuses if the id is already known.
    pub fn create(&self, record: &KeyRecord) -> Result<(), KmsError> {
        let _guard = self.lock()?;
        let bytes = serde_json::to_vec_pretty(record).expect("records serialize");
        fsutil::write_new(&self.path(record.key_id), &bytes, 0o600)
            .and_then(|()| fsutil::fsync_dir(&self.dir))
            .map_err(|e| state_error("storing new key", e))
    }

    /// Applies `change` to the stored record under the lock and stores the
    /// result; `change` may refuse.
    pub fn update(
        &self,
        key_id: KeyId,
        change: impl FnOnce(&mut KeyRecord) -> Result<(), KmsError>,
    ) -> Result<KeyRecord, KmsError> {
        let _guard = self.lock()?;
        let mut record = self.get(key_id)?.ok_or(KmsError::KeyNotFound(key_id))?;
        change(&mut record)?;
        record.revision += 1;
        let bytes = serde_json::to_vec_pretty(&record).expect("records serialize");
        fsutil::write_atomic(&self.path(key_id), &bytes, 0o600)
            .map_err(|e| state_error("storing key", e))?;
        Ok(record)
    }

    fn lock(&self) -> Result<StoreLock<'_>, KmsError> {
        let guard = self.in_process.lock().expect("key store lock poisoned");
        let file = crate::fsmode::private_file_options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(".lock"))
            .map_err(|e| state_error("opening lock file", e))?;
        // SAFETY: flock on an fd we own; blocks until the lock is ours. The
        // lock is released when `file` is closed (dropped with the guard).
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(state_error("flock", std::io::Error::last_os_error()));
        }
        Ok(StoreLock {
            _file: file,
            _guard: guard,
        })
    }
}

struct StoreLock<'a> {
    _file: File,
    _guard: std::sync::MutexGuard<'a, ()>,
}

/// The state changes `POST /v1/keys/{id}/{action}` offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAction {
    /// Refuse unwraps until enabled.
    Disable,
    /// Serve unwraps again.
    Enable,
    /// Refuse unwraps forever.
    Destroy,
}

impl KeyAction {
    /// The action's name in paths and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            KeyAction::Disable => "disable",
            KeyAction::Enable => "enable",
            KeyAction::Destroy => "destroy",
        }
    }

    /// Parses a path segment.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "disable" => Some(KeyAction::Disable),
            "enable" => Some(KeyAction::Enable),
            "destroy" => Some(KeyAction::Destroy),
            _ => None,
        }
    }

    /// The state after the action, or why it is not allowed. Destroy is
    /// idempotent; nothing leaves `destroyed`.
    pub fn apply(self, record: &KeyRecord) -> Result<KeyState, KmsError> {
        match (self, record.state) {
            (KeyAction::Destroy, _) => Ok(KeyState::Destroyed),
            (_, KeyState::Destroyed) => Err(KmsError::InvalidTransition {
                key_id: record.key_id,
                action: self.name(),
                state: "destroyed",
            }),
            (KeyAction::Disable, _) => Ok(KeyState::Disabled),
            (KeyAction::Enable, _) => Ok(KeyState::Enabled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u8) -> KeyRecord {
        KeyRecord {
            key_id: KeyId([id; 16]),
            key_type: KeyKind::Aes256Xts,
            state: KeyState::Enabled,
            compromised: false,
            compromised_reason: None,
            created_unix_s: 1,
            wrapping_key_versions: vec![1],
            acl: vec!["alice".into()],
            former_acl_users: Vec::new(),
            context: KeyContext::default(),
            revision: 0,
            history: KeyHistory::default(),
        }
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|&n| n.to_owned()).collect()
    }

    #[test]
    fn an_acl_change_remembers_the_users_it_removes() {
        let mut r = record(1);
        r.set_acl(&names(&["alice", "bob"])).unwrap();
        assert!(r.former_acl_users.is_empty());
        r.set_acl(&names(&["carol"])).unwrap();
        assert_eq!(r.former_acl_users, names(&["alice", "bob"]));
        r.set_acl(&names(&["bob", "dave"])).unwrap();
        assert_eq!(r.former_acl_users, names(&["alice", "carol"]));
        assert!(r.acl_ever_listed("alice") && r.acl_ever_listed("dave"));
        assert!(!r.acl_ever_listed("mallory"));
        let text = serde_json::to_string(&record(2)).unwrap();
        assert!(!text.contains("former_acl_users"), "old records unchanged");

        let mut r = record(3);
        for round in 0..FORMER_ACL_USERS_MAX {
            r.set_acl(&[format!("u{round}")]).unwrap();
        }
        assert_eq!(r.former_acl_users.len(), FORMER_ACL_USERS_MAX);
        let refused = r.set_acl(&names(&["x"])).unwrap_err();
        assert_eq!(refused.http_status(), 409);
        assert_eq!(r.acl, [format!("u{}", FORMER_ACL_USERS_MAX - 1)]);
        let bytes = serde_json::to_vec_pretty(&KeyRecord {
            acl: (0..crate::kms::limits::ACL_ENTRIES_MAX)
                .map(|i| format!("{i:0>128}"))
                .collect(),
            former_acl_users: (0..FORMER_ACL_USERS_MAX)
                .map(|i| format!("{i:x>128}"))
                .collect(),
            ..record(4)
        })
        .unwrap();
        assert!((bytes.len() as u64) < STATE_FILE_BYTES_MAX / 4 * 3);
    }

    #[test]
    fn destroyed_is_forever_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        store.create(&record(1)).unwrap();
        assert!(store.create(&record(1)).is_err(), "ids are unique");
        let id = KeyId([1; 16]);
        store
            .update(id, |r| {
                r.state = KeyAction::Destroy.apply(r)?;
                Ok(())
            })
            .unwrap();
        let reopened = KeyStore::open(dir.path()).unwrap();
        let stored = reopened.get(id).unwrap().unwrap();
        assert_eq!(stored.info().status, "destroyed");
        assert!(KeyAction::Enable.apply(&stored).is_err());
        assert!(reopened.get(KeyId([2; 16])).unwrap().is_none());
    }
}
