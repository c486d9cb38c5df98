//! The service's operations, independent of HTTP: each authenticates the
//! caller, decides, **writes the audit record** and only then acts or
//! answers ("no audit record, no key"). A refusal is audited too; if its
//! record cannot be written the caller gets 503 instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::crypto::{DataKey, KeyId};

use super::api::{
    DataKeyRequest, KeyHistory, KeyState, RewrapRequest, UnwrapRequest, validate_acl,
};
use super::audit::log::{AuditLog, AuditOpenError, open_file_sink};
use super::audit::{AuditEntry, AuditKey, Decision};
use super::auth::token::TokenVerifier;
use super::auth::{PeerIdentity, ServiceAllowList, check_acl};
use super::config::{Config, files};
use super::error::KmsError;
use super::kek::{KekError, WrappingKeys};
use super::keys::{KeyRecord, KeyStore};
use super::leases::{Lease, LeaseStore};
use super::metrics::{KmsMetrics, Stage};
use super::refusal::{Refusal, RefusalAudit};
use super::seal::{self, OpenedBlob, SealInput, UncheckedBlob};

mod key_records;
mod leasing;
mod operator;
mod user_keys;

/// A new data key: its plaintext (for the calling service only) and its blob.
pub struct DataKeyGrant {
    /// The key (locked memory).
    pub key: DataKey,
    /// The wrapped blob.
    pub blob: Vec<u8>,
    /// The wrapping-key version it is sealed under.
    pub kek_version: u32,
}

/// A rewrapped blob.
pub struct Rewrapped {
    /// The key inside.
    pub key_id: KeyId,
    /// The new blob.
    pub blob: Vec<u8>,
    /// Its wrapping-key version.
    pub kek_version: u32,
}

/// The key-wrapping service.
pub struct Service {
    kek: Box<dyn WrappingKeys>,
    keys: KeyStore,
    audit: Arc<AuditLog>,
    refusals: Arc<RefusalAudit>,
    audit_path: PathBuf,
    services: ServiceAllowList,
    tokens: TokenVerifier,
    leases: LeaseStore,
    metrics: KmsMetrics,
    lease_max_s: u64,
}

/// An unwrapped key, and the lease the unwrap lent, if it asked for one.
pub struct Unwrapped {
    /// The opened blob (the key in locked memory).
    pub opened: OpenedBlob,
    /// The lease granted with it.
    pub lease: Option<Lease>,
}

/// Seconds since the UNIX epoch.
pub fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn kek_error(error: KekError) -> KmsError {
    match error {
        KekError::Retired {
            version,
            version_min,
        } => KmsError::KekRetired {
            version,
            version_min,
        },
        KekError::UnknownVersion(version) => KmsError::UnknownKekVersion(version),
        KekError::BadMinimum { .. } => KmsError::Conflict(error.to_string()),
        other => KmsError::Kek(other.to_string()),
    }
}

/// The blob in `wrapped`, not yet authenticated; its key id goes into the
/// audit `entry` whatever happens next.
fn parsed_blob<'a>(
    wrapped: &'a [u8],
    entry: &mut AuditEntry,
) -> Result<UncheckedBlob<'a>, KmsError> {
    let blob = seal::parse(wrapped)?;
    entry.key_id = Some(blob.key_id);
    Ok(blob)
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Service {
    /// Opens everything the state directory `dir` configures. A damaged audit
    /// log is fatal; an audit log that cannot be opened makes every call
    /// fail with 503 (fail closed) while health reports why.
    pub fn open(dir: &Path, config: &Config) -> Result<Self, KmsError> {
        let kek = config.open_kek(dir).map_err(kek_error)?;
        let keys = KeyStore::open(dir)?;
        let tokens = config.token_verifier(dir)?;
        let audit_path = Config::resolve(dir, &config.audit_path);
        let audit_key = AuditKey::load(&dir.join(files::AUDIT_KEY))
            .map_err(|e| KmsError::State(format!("audit key: {e}")))?;
        let audit = match open_file_sink(&audit_path, &audit_key) {
            Ok((sink, head)) => AuditLog::start(Box::new(sink), audit_key, head)
                .map_err(|e| KmsError::Internal(format!("starting audit writer: {e}")))?,
            Err(AuditOpenError::Io { path, source }) => {
                tracing::error!(%path, error = %source, "audit log cannot be opened: every call will be refused");
                AuditLog::refusing(format!("audit log {path}: {source}"))
            }
            Err(damaged) => return Err(KmsError::State(damaged.to_string())),
        };
        let audit = Arc::new(audit);
        let refusals = RefusalAudit::start(Arc::downgrade(&audit))
            .map_err(|e| KmsError::Internal(format!("starting the refusal audit: {e}")))?;
        let metrics = KmsMetrics::new(audit.sync_latency());
        Ok(Self {
            kek,
            keys,
            audit,
            refusals,
            audit_path,
            services: config.allow_list(),
            tokens,
            leases: LeaseStore::open(dir)?,
            lease_max_s: config.lease_max_s,
            metrics,
        })
    }

    /// How `peer` shows up in the audit log: its allow-listed name, or
    /// how it looked (`uid:N`, `tls:<fingerprint>`).
    fn principal(&self, peer: &PeerIdentity) -> String {
        self.services
            .authenticate(peer)
            .unwrap_or_else(|_| peer.describe())
    }

    fn entry(&self, peer: &PeerIdentity, action: &str) -> AuditEntry {
        AuditEntry {
            service: self.principal(peer),
            user: None,
            action: action.to_owned(),
            key_id: None,
            context: None,
            decision: Decision::Allow,
            reason: "ok".to_owned(),
            count: None,
            lease: None,
        }
    }

    /// Audits the decision `outcome` stands for; a record that cannot be
    /// written turns any outcome into [`KmsError::AuditUnwritable`].
    fn decide<T>(
        &self,
        mut entry: AuditEntry,
        outcome: Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        if let Err(error) = &outcome {
            entry.decision = Decision::Deny;
            entry.reason = error.code().to_owned();
        }
        match self.audit.append(entry) {
            Ok(_) => outcome,
            Err(reason) => Err(KmsError::AuditUnwritable(reason)),
        }
    }

    /// After an allowed call failed to act: records that (best effort).
    fn act_failed(&self, mut entry: AuditEntry, error: KmsError) -> KmsError {
        entry.decision = Decision::Error;
        entry.reason = error.code().to_owned();
        if let Err(reason) = self.audit.append(entry) {
            tracing::error!(%reason, "could not audit a failed action");
        }
        error
    }

    /// Whether `peer` is an allow-listed service.
    pub fn is_allowed(&self, peer: &PeerIdentity) -> bool {
        self.services.authenticate(peer).is_ok()
    }

    /// Counts a refusal before any API call (a stranger, no slot, a
    /// request too large, malformed or too slow); audited in counts.
    pub fn note_refusal(&self, peer: &PeerIdentity, refusal: Refusal) {
        self.metrics.refused(Stage::Connection, refusal.code());
        self.refusals.note(&self.principal(peer), refusal);
    }

    /// The service's counters (for `lsvkms serve --metrics`).
    pub fn metrics(&self) -> &KmsMetrics {
        &self.metrics
    }

    /// Audits the refusals counted so far and stops counting in the
    /// background (before the process exits).
    pub fn shutdown(&self) {
        self.refusals.stop();
        self.refusals.flush(&self.audit);
    }

    /// Counts a call in progress (for audit group commit) until dropped.
    pub fn begin_call(&self) -> super::audit::log::CallGuard {
        self.audit.begin_call()
    }

    /// Audits the refusal of a call that never reached an operation (bad
    /// body, bad path) and returns the error to answer with.
    pub fn refuse(&self, peer: &PeerIdentity, action: &str, error: KmsError) -> KmsError {
        let entry = self.entry(peer, action);
        match self.decide::<()>(entry, Err(error)) {
            Err(error) => error,
            Ok(()) => unreachable!("a refusal stays a refusal"),
        }
    }

    /// `POST /v1/datakey`: a new key, sealed under the current version.
    pub fn datakey(
        &self,
        peer: &PeerIdentity,
        request: &DataKeyRequest,
    ) -> Result<DataKeyGrant, KmsError> {
        let mut entry = self.entry(peer, "datakey");
        entry.context = Some(request.context.clone());
        let outcome = self.datakey_checked(peer, request, &mut entry);
        let grant = self.decide(entry.clone(), outcome)?;
        let record = KeyRecord {
            key_id: grant.key.id(),
            key_type: grant.key.kind(),
            state: KeyState::Enabled,
            compromised: false,
            compromised_reason: None,
            created_unix_s: now_unix_s(),
            wrapping_key_versions: vec![grant.kek_version],
            acl: request.acl.clone(),
            former_acl_users: Vec::new(),
            context: request.context.clone(),
            revision: 0,
            history: KeyHistory {
                replaces: request.replaces,
                ..KeyHistory::default()
            },
        };
        self.keys
            .create(&record)
            .map_err(|e| self.act_failed(entry.clone(), e))?;
        if let Some(old) = request.replaces {
            self.keys
                .update(old, |old| {
                    old.history.replaced_by = Some(record.key_id);
                    Ok(())
                })
                .map_err(|e| self.act_failed(entry, e))?;
        }
        Ok(grant)
    }

    fn datakey_checked(
        &self,
        peer: &PeerIdentity,
        request: &DataKeyRequest,
        entry: &mut AuditEntry,
    ) -> Result<DataKeyGrant, KmsError> {
        self.services.authenticate(peer)?;
        validate_acl(&request.acl)?;
        request.context.validate()?;
        if let Some(old) = request.replaces {
            let record = self.record(old)?;
            if record.context.volume_id != request.context.volume_id {
                return Err(KmsError::BadRequest(format!(
                    "replaces names key {old}, which is another volume's"
                )));
            }
        }
        let key =
            DataKey::generate(request.key_type).map_err(|e| KmsError::Internal(e.to_string()))?;
        entry.key_id = Some(key.id());
        let input = SealInput {
            key: &key,
            created_unix_s: now_unix_s(),
            acl: &request.acl,
            context: &request.context,
        };
        let (blob, kek_version) = self.seal_current(&input)?;
        Ok(DataKeyGrant {
            key,
            blob,
            kek_version,
        })
    }

    fn seal_current(&self, input: &SealInput<'_>) -> Result<(Vec<u8>, u32), KmsError> {
        let version = self.kek.current_version();
        let nonce =
            seal::random_nonce().map_err(|e| KmsError::Internal(format!("random source: {e}")))?;
        let blob_key = self.kek.blob_key(version, &nonce).map_err(kek_error)?;
        Ok((seal::seal(input, version, &nonce, &blob_key), version))
    }

    /// The key's record, whatever its state.
    fn record(&self, key_id: KeyId) -> Result<KeyRecord, KmsError> {
        self.keys.get(key_id)?.ok_or(KmsError::KeyNotFound(key_id))
    }

    /// The key's record if its state allows use.
    fn usable(&self, key_id: KeyId) -> Result<KeyRecord, KmsError> {
        let record = self.record(key_id)?;
        match record.state {
            KeyState::Enabled => Ok(record),
            KeyState::Disabled => Err(KmsError::KeyDisabled(key_id)),
            KeyState::Destroyed => Err(KmsError::KeyDestroyed(key_id)),
        }
    }

    fn open_blob(&self, blob: &UncheckedBlob<'_>) -> Result<OpenedBlob, KmsError> {
        let blob_key = self
            .kek
            .blob_key(blob.kek_version, &blob.nonce)
            .map_err(kek_error)?;
        Ok(blob.open(&blob_key)?)
    }

    /// `POST /v1/unwrap`: the DEK, if service, token (or a lease lent to
    /// this service) and ACL all agree; with `lease_s`, also a lease.
    pub fn unwrap(
        &self,
        peer: &PeerIdentity,
        request: &UnwrapRequest,
    ) -> Result<Unwrapped, KmsError> {
        let mut entry = self.entry(peer, "unwrap");
        let outcome = self.unwrap_checked(peer, request, &mut entry);
        let lent = outcome.as_ref().ok().and_then(|u| u.lease.clone());
        let decided = self.decide(entry, outcome);
        if let (Err(_), Some(lease)) = (&decided, lent) {
            // Not audited, so not lent: end it (best effort).
            let _ = self
                .leases
                .end_where(now_unix_s(), "unaudited", |l| l.lease_id == lease.lease_id);
        }
        decided
    }

    fn unwrap_checked(
        &self,
        peer: &PeerIdentity,
        request: &UnwrapRequest,
        entry: &mut AuditEntry,
    ) -> Result<Unwrapped, KmsError> {
        let service = self.services.authenticate(peer)?;
        let blob = parsed_blob(&request.wrapped_blob.0, entry)?;
        entry.context = Some(request.context.clone());
        let lease = match &request.lease_id {
            Some(lease_id) => {
                entry.lease = Some(lease_id.clone());
                Some(self.live_lease(request, lease_id, &service)?)
            }
            None => None,
        };
        let user = match &lease {
            Some(lease) => lease.user.clone(),
            None => self.tokens.verify(&request.user_token, now_unix_s())?.sub,
        };
        entry.user = Some(user.clone());
        // Authenticate the blob before anything else reads its header, so a
        // tampered blob is always "bad_blob" (400), whichever byte changed.
        let opened = self.open_blob(&blob)?;
        let record = self.usable(blob.key_id)?;
        if blob.context != request.context {
            return Err(KmsError::ContextMismatch);
        }
        check_acl(&user, &opened.acl, blob.key_id)?;
        if lease.is_some() {
            // A lease needs its user on the ACL now, not only in the blob.
            check_acl(&user, &record.acl, blob.key_id)?;
            return Ok(Unwrapped {
                opened,
                lease: None,
            });
        }
        let lease = match request.lease_s {
            Some(lease_s) => {
                let lease = self.lend(&service, &user, &request.context, lease_s)?;
                entry.lease = Some(lease.lease_id.clone());
                Some(lease)
            }
            None => None,
        };
        Ok(Unwrapped { opened, lease })
    }

    /// `POST /v1/rewrap`: the same key sealed under the current version,
    /// with the sealed ACL or, when `request.acl` is set, with that one.
    ///
    /// An ACL change is audited as action `reacl` with the token's user;
    /// it needs a valid token whose subject is on the blob's current ACL,
    /// and replaces the ACL in the key's record.
    pub fn rewrap(
        &self,
        peer: &PeerIdentity,
        request: &RewrapRequest,
    ) -> Result<Rewrapped, KmsError> {
        let action = if request.acl.is_some() {
            "reacl"
        } else {
            "rewrap"
        };
        let mut entry = self.entry(peer, action);
        let outcome = self.rewrap_checked(peer, request, &mut entry);
        let rewrapped = self.decide(entry.clone(), outcome)?;
        self.keys
            .update(rewrapped.key_id, |record| {
                if !record
                    .wrapping_key_versions
                    .contains(&rewrapped.kek_version)
                {
                    record.wrapping_key_versions.push(rewrapped.kek_version);
                }
                match &request.acl {
                    Some(acl) => record.set_acl(acl),
                    None => Ok(()),
                }
            })
            .map_err(|e| self.act_failed(entry, e))
            .inspect(|record| {
                if request.acl.is_some() {
                    self.end_leases_off_acl(record);
                }
            })?;
        Ok(rewrapped)
    }

    fn rewrap_checked(
        &self,
        peer: &PeerIdentity,
        request: &RewrapRequest,
        entry: &mut AuditEntry,
    ) -> Result<Rewrapped, KmsError> {
        self.services.authenticate(peer)?;
        let blob = parsed_blob(&request.wrapped_blob.0, entry)?;
        entry.context = Some(blob.context.clone());
        // An ACL change is an unwrap-level decision: the token's user must
        // be allowed by the ACL sealed in the blob (checked once it opens).
        let user = match &request.acl {
            None if request.user_token.is_some() => {
                return Err(KmsError::BadRequest(
                    "user_token is only used with acl".into(),
                ));
            }
            None => None,
            Some(acl) => {
                validate_acl(acl)?;
                let token = request.user_token.as_deref().ok_or_else(|| {
                    KmsError::TokenInvalid("user_token is required to change the ACL".into())
                })?;
                let claims = self.tokens.verify(token, now_unix_s())?;
                entry.user = Some(claims.sub.clone());
                Some(claims.sub)
            }
        };
        let opened = self.open_blob(&blob)?;
        let mut record = self.usable(blob.key_id)?;
        if let Some(user) = &user {
            check_acl(user, &opened.acl, blob.key_id)?;
        }
        if let Some(acl) = &request.acl {
            // Refuse before sealing what the record could not store.
            record.set_acl(acl)?;
        }
        let input = SealInput {
            key: &opened.key,
            created_unix_s: opened.created_unix_s,
            acl: request.acl.as_deref().unwrap_or(&opened.acl),
            context: &opened.context,
        };
        let (blob, kek_version) = self.seal_current(&input)?;
        Ok(Rewrapped {
            key_id: opened.key.id(),
            blob,
            kek_version,
        })
    }
}
