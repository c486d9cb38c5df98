//! Leases: a user's permission to unwrap, lent to the service that served
//! them, for a while, so a VM outlives its user's token.
//!
//! When an unwrap with a user's token succeeds, the calling service may ask
//! for a lease. The lease is bound to the key context (the volume), to the
//! service's allow-listed identity (UNIX peer uid or TLS client
//! certificate, checked on every call) and to an expiry no later than the
//! policy allows (`lease_max_s` in config.json). Within it, the same
//! service may unwrap blobs of that context again with the lease id
//! instead of a token — still only while the user is on the key's ACL (the
//! sealed one and the current one) and the key is enabled. Revoking the
//! lease, disabling a key of its context or removing its user from the ACL
//! ends it at once.
//!
//! One JSON file per lease, `DIR/leases/<lease id>.json`, replaced
//! atomically; an ended lease stays (with why) until it would have expired.
//! A lease holds no key: a lease id without the service identity and the
//! wrapped blob unwraps nothing.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::api::KeyContext;
use super::error::KmsError;
use super::fsutil;
use super::keys::{read_state_file, state_error};

/// Characters in a lease id (128 random bits in hex).
pub const LEASE_ID_CHARS: usize = 32;

/// A lease as stored (and as `POST /v1/leases/{id}/revoke` answers it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Its id: 32 hex digits.
    pub lease_id: String,
    /// The allow-listed name of the service it is lent to.
    pub service: String,
    /// The user whose unwrap granted it.
    pub user: String,
    /// The volume (and snapshot) it is for.
    pub context: KeyContext,
    /// Granted at, seconds since the UNIX epoch.
    pub created_unix_s: u64,
    /// Ends at, seconds since the UNIX epoch.
    pub expires_unix_s: u64,
    /// Why it ended early (`revoked`, `key_disabled`, `removed_from_acl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
}

/// Checks that `text` is a lease id (so it can name a file).
pub fn parse_lease_id(text: &str) -> Result<&str, KmsError> {
    let valid = text.len() == LEASE_ID_CHARS
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if valid {
        Ok(text)
    } else {
        Err(KmsError::BadRequest(format!(
            "a lease id is {LEASE_ID_CHARS} lowercase hex digits"
        )))
    }
}

/// The directory of leases.
pub struct LeaseStore {
    dir: PathBuf,
    writing: Mutex<()>,
}

impl LeaseStore {
    /// Opens (creating if needed) `DIR/leases`.
    pub fn open(state_dir: &Path) -> Result<Self, KmsError> {
        let dir = state_dir.join("leases");
        if !dir.exists() {
            fsutil::create_private_dir(&dir).map_err(|e| state_error("creating leases dir", e))?;
        }
        Ok(Self {
            dir,
            writing: Mutex::new(()),
        })
    }

    fn path(&self, lease_id: &str) -> PathBuf {
        self.dir.join(format!("{lease_id}.json"))
    }

    /// A new lease for `user`'s unwraps of `context` by `service`, ending
    /// at `expires_unix_s`.
    pub fn grant(
        &self,
        service: &str,
        user: &str,
        context: &KeyContext,
        now_unix_s: u64,
        expires_unix_s: u64,
    ) -> Result<Lease, KmsError> {
        let mut id = [0u8; LEASE_ID_CHARS / 2];
        getrandom::fill(&mut id).map_err(|e| KmsError::Internal(format!("random source: {e}")))?;
        let lease = Lease {
            lease_id: hex::encode(id),
            service: service.to_owned(),
            user: user.to_owned(),
            context: context.clone(),
            created_unix_s: now_unix_s,
            expires_unix_s,
            ended: None,
        };
        let bytes = serde_json::to_vec_pretty(&lease).expect("leases serialize");
        fsutil::write_new(&self.path(&lease.lease_id), &bytes, 0o600)
            .and_then(|()| fsutil::fsync_dir(&self.dir))
            .map_err(|e| state_error("storing new lease", e))?;
        Ok(lease)
    }

    /// The lease `lease_id` (already checked by [`parse_lease_id`]), if known.
    pub fn get(&self, lease_id: &str) -> Result<Option<Lease>, KmsError> {
        read_state_file(
            &self.path(lease_id),
            |lease: &Lease| lease.lease_id == lease_id,
            "holds another lease",
        )
    }

    /// Ends every live lease `matches` picks, for `reason`; returns them.
    /// Leases long expired are removed on the way.
    pub fn end_where(
        &self,
        now_unix_s: u64,
        reason: &str,
        matches: impl Fn(&Lease) -> bool,
    ) -> Result<Vec<Lease>, KmsError> {
        let _writing = self.writing.lock().expect("lease store lock poisoned");
        let stems = fsutil::json_stems(&self.dir).map_err(|e| state_error("listing leases", e))?;
        let mut ended = Vec::new();
        for stem in stems {
            let Ok(id) = parse_lease_id(&stem) else {
                continue;
            };
            let Some(mut lease) = self.get(id)? else {
                continue;
            };
            if lease.expires_unix_s < now_unix_s {
                let _ = std::fs::remove_file(self.path(id));
                continue;
            }
            if lease.ended.is_some() || !matches(&lease) {
                continue;
            }
            lease.ended = Some(reason.to_owned());
            let bytes = serde_json::to_vec_pretty(&lease).expect("leases serialize");
            fsutil::write_atomic(&self.path(id), &bytes, 0o600)
                .map_err(|e| state_error("storing lease", e))?;
            ended.push(lease);
        }
        Ok(ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(volume: &str) -> KeyContext {
        KeyContext {
            volume_id: volume.into(),
            snapshot_id: String::new(),
        }
    }

    #[test]
    fn leases_persist_end_once_and_ids_cannot_name_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = LeaseStore::open(dir.path()).unwrap();
        let a = store
            .grant("svc", "alice", &context("v1"), 100, 200)
            .unwrap();
        let b = store.grant("svc", "bob", &context("v2"), 100, 200).unwrap();
        assert_ne!(a.lease_id, b.lease_id);
        let reopened = LeaseStore::open(dir.path()).unwrap();
        assert_eq!(reopened.get(&a.lease_id).unwrap().unwrap(), a);
        let ended = reopened
            .end_where(150, "revoked", |l| l.context.volume_id == "v1")
            .unwrap();
        assert_eq!(ended.len(), 1);
        assert_eq!(
            reopened.get(&a.lease_id).unwrap().unwrap().ended.as_deref(),
            Some("revoked")
        );
        assert!(reopened.end_where(150, "again", |_| true).unwrap().len() == 1);
        // Expired leases go.
        reopened.end_where(300, "late", |_| true).unwrap();
        assert!(reopened.get(&b.lease_id).unwrap().is_none());
        for bad in ["../keys/x", "ABCDEF0123456789ABCDEF0123456789", "", "0"] {
            assert!(parse_lease_id(bad).is_err(), "{bad}");
        }
        assert!(parse_lease_id(&a.lease_id).is_ok());
    }
}
