//! Key records: their state (disable, enable, destroy) and what anyone
//! allow-listed may read of them (never key material).

use crate::crypto::KeyId;

use super::super::api::KeyInfo;
use super::super::auth::PeerIdentity;
use super::super::error::KmsError;
use super::super::keys::KeyAction;
use super::{Service, now_unix_s};

impl Service {
    /// `POST /v1/keys/{id}/disable|enable|destroy`.
    pub fn set_state(
        &self,
        peer: &PeerIdentity,
        key_id: KeyId,
        action: KeyAction,
    ) -> Result<KeyInfo, KmsError> {
        let mut entry = self.entry(peer, action.name());
        entry.key_id = Some(key_id);
        let outcome = self
            .services
            .authenticate(peer)
            .and_then(|_| action.apply(&self.record(key_id)?).map(|_| ()));
        self.decide(entry.clone(), outcome)?;
        let record = self
            .keys
            .update(key_id, |record| {
                record.state = action.apply(record)?;
                record.history.state_changed_unix_s = Some(now_unix_s());
                Ok(())
            })
            .map_err(|e| self.act_failed(entry, e))?;
        tracing::info!(key_id = %key_id, action = action.name(), "key state changed");
        if action == KeyAction::Disable {
            self.end_leases_of_disabled(&record);
        }
        Ok(record.info())
    }

    /// `GET /v1/keys/{id}`: status, type, created, versions; never material.
    pub fn key_info(&self, peer: &PeerIdentity, key_id: KeyId) -> Result<KeyInfo, KmsError> {
        self.key_info_since(peer, key_id, None)
            .map(|info| info.expect("always answered without `since`"))
    }

    /// `GET /v1/keys/{id}?since=REVISION`: `None` while the record is still
    /// at `since` — an answer that tells the caller nothing new, so it is
    /// **not audited** (a daemon polls every 2 s; auditing each poll wrote
    /// ~43 000 records a day per volume). A changed record, an unknown key
    /// or a refusal is answered and audited as `key_info`.
    pub fn key_info_since(
        &self,
        peer: &PeerIdentity,
        key_id: KeyId,
        since: Option<u64>,
    ) -> Result<Option<KeyInfo>, KmsError> {
        let mut entry = self.entry(peer, "key_info");
        entry.key_id = Some(key_id);
        let outcome = self
            .services
            .authenticate(peer)
            .and_then(|_| self.record(key_id));
        if let (Ok(record), Some(since)) = (&outcome, since)
            && record.revision == since
        {
            return Ok(None);
        }
        self.decide(entry, outcome.map(|record| Some(record.info())))
    }
}
