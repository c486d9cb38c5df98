//! The operator's calls: the wrapping key's versions, the audit log's
//! records, and health.

use crate::crypto::KeyId;

use super::super::api::{Health, WrappingKeyInfo};
use super::super::audit::verify::query;
use super::super::auth::PeerIdentity;
use super::super::error::KmsError;
use super::super::limits::AUDIT_QUERY_RECORDS_MAX;
use super::{Service, kek_error};

impl Service {
    /// `POST /v1/wrapping-key/rotate`: a new wrapping-key version.
    pub fn rotate(&self, peer: &PeerIdentity) -> Result<WrappingKeyInfo, KmsError> {
        let entry = self.entry(peer, "rotate");
        self.decide(entry.clone(), self.services.authenticate(peer).map(|_| ()))?;
        let version = self
            .kek
            .rotate()
            .map_err(|e| self.act_failed(entry, kek_error(e)))?;
        tracing::info!(version, "wrapping key rotated");
        Ok(self.wrapping_key())
    }

    /// `POST /v1/wrapping-key/min-version`: retire older versions.
    pub fn set_min_version(
        &self,
        peer: &PeerIdentity,
        version_min: u32,
    ) -> Result<WrappingKeyInfo, KmsError> {
        let entry = self.entry(peer, "set_min_version");
        self.decide(entry.clone(), self.services.authenticate(peer).map(|_| ()))?;
        self.kek
            .set_min_version(version_min)
            .map_err(|e| self.act_failed(entry, kek_error(e)))?;
        Ok(self.wrapping_key())
    }

    /// `GET /v1/wrapping-key`.
    pub fn wrapping_key_info(&self, peer: &PeerIdentity) -> Result<WrappingKeyInfo, KmsError> {
        let entry = self.entry(peer, "wrapping_key_info");
        self.decide(
            entry,
            self.services
                .authenticate(peer)
                .map(|_| self.wrapping_key()),
        )
    }

    fn wrapping_key(&self) -> WrappingKeyInfo {
        WrappingKeyInfo {
            backend: self.kek.backend().to_owned(),
            current_version: self.kek.current_version(),
            min_version: self.kek.min_version(),
        }
    }

    /// `GET /v1/audit`: the last `limit` records about `key_id` (or all).
    pub fn audit_query(
        &self,
        peer: &PeerIdentity,
        key_id: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, KmsError> {
        let mut entry = self.entry(peer, "audit_read");
        entry.key_id = key_id;
        let outcome = self.services.authenticate(peer).and_then(|_| {
            if limit == 0 || limit > AUDIT_QUERY_RECORDS_MAX {
                return Err(KmsError::BadRequest(format!(
                    "limit must be 1..={AUDIT_QUERY_RECORDS_MAX}"
                )));
            }
            Ok(())
        });
        self.decide(entry, outcome)?;
        query(&self.audit_path, key_id, limit).map_err(|e| KmsError::State(e.to_string()))
    }

    /// `GET /v1/health` (not audited, needs no identity).
    pub fn health(&self) -> (bool, Health) {
        let audit = self.audit.health();
        let healthy = audit.is_ok();
        let health = Health {
            status: if healthy { "ok" } else { "degraded" }.to_owned(),
            audit: audit
                .as_ref()
                .err()
                .cloned()
                .unwrap_or_else(|| "ok".to_owned()),
            wrapping_key: Some(self.wrapping_key()),
            error: audit
                .as_ref()
                .err()
                .map(|_| KmsError::AuditUnwritable(String::new()).code().to_owned()),
            message: audit.err(),
        };
        (healthy, health)
    }
}
