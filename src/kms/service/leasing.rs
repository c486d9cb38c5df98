//! Leases ([`crate::kms::leases`]): lent on an unwrap with a token, used
//! instead of one, ended by revocation, a disabled key or an ACL change.

use super::super::api::UnwrapRequest;
use super::super::auth::PeerIdentity;
use super::super::error::KmsError;
use super::super::keys::KeyRecord;
use super::super::leases::{Lease, parse_lease_id};
use super::{Service, now_unix_s};

impl Service {
    /// The lease `lease_id` if it is alive, lent to `service`, and for the
    /// request's context; a request with a lease carries no token.
    pub(super) fn live_lease(
        &self,
        request: &UnwrapRequest,
        lease_id: &str,
        service: &str,
    ) -> Result<Lease, KmsError> {
        if !request.user_token.is_empty() || request.lease_s.is_some() {
            return Err(KmsError::BadRequest(
                "an unwrap with lease_id carries no user_token nor lease_s".into(),
            ));
        }
        let refused = |why: &str| KmsError::LeaseRefused(format!("lease {lease_id} {why}"));
        let lease = self
            .leases
            .get(parse_lease_id(lease_id)?)?
            .ok_or_else(|| refused("is unknown"))?;
        if let Some(reason) = &lease.ended {
            return Err(refused(&format!("has ended ({reason})")));
        }
        if lease.expires_unix_s <= now_unix_s() {
            return Err(refused("has expired"));
        }
        if lease.service != service {
            return Err(refused("is lent to another service"));
        }
        if lease.context != request.context {
            return Err(refused("is for another volume"));
        }
        Ok(lease)
    }

    /// A new lease of `user`'s unwraps of `context` to `service`, for
    /// `lease_s` seconds or the policy's maximum if shorter.
    pub(super) fn lend(
        &self,
        service: &str,
        user: &str,
        context: &super::super::api::KeyContext,
        lease_s: u64,
    ) -> Result<Lease, KmsError> {
        if self.lease_max_s == 0 {
            return Err(KmsError::LeaseRefused(
                "leases are off (lease_max_s is 0 in config.json)".into(),
            ));
        }
        if lease_s == 0 {
            return Err(KmsError::BadRequest("lease_s must be at least 1".into()));
        }
        let now = now_unix_s();
        let expires = now.saturating_add(lease_s.min(self.lease_max_s));
        self.leases.grant(service, user, context, now, expires)
    }

    /// `POST /v1/leases/{id}/revoke`: ends the lease at once.
    pub fn revoke_lease(&self, peer: &PeerIdentity, lease_id: &str) -> Result<Lease, KmsError> {
        let mut entry = self.entry(peer, "lease_revoke");
        entry.lease = Some(lease_id.to_owned());
        let outcome = (|| {
            self.services.authenticate(peer)?;
            let lease_id = parse_lease_id(lease_id)?;
            let mut lease = self
                .leases
                .get(lease_id)?
                .ok_or_else(|| KmsError::LeaseRefused(format!("lease {lease_id} is unknown")))?;
            entry.user = Some(lease.user.clone());
            entry.context = Some(lease.context.clone());
            if lease.ended.is_none() {
                let ended = self
                    .leases
                    .end_where(now_unix_s(), "revoked", |l| l.lease_id == lease_id)?;
                lease = ended.into_iter().next().unwrap_or(lease);
            }
            Ok(lease)
        })();
        self.decide(entry, outcome)
    }

    /// A key was disabled: every lease of its context ends.
    pub(super) fn end_leases_of_disabled(&self, record: &KeyRecord) {
        self.end_leases("key_disabled", record, |_| true);
    }

    /// A key's ACL changed: leases of users no longer on it end.
    pub(super) fn end_leases_off_acl(&self, record: &KeyRecord) {
        self.end_leases("removed_from_acl", record, |l| {
            !record.acl.contains(&l.user)
        });
    }

    fn end_leases(&self, reason: &str, record: &KeyRecord, pick: impl Fn(&Lease) -> bool) {
        let ended = self.leases.end_where(now_unix_s(), reason, |l| {
            l.context.volume_id == record.context.volume_id && pick(l)
        });
        match ended {
            Ok(ended) => {
                for lease in ended {
                    tracing::info!(lease = %lease.lease_id, user = %lease.user, reason, "lease ended");
                }
            }
            // Unwraps still check the key's state and ACL on every use.
            Err(error) => tracing::error!(%error, reason, "could not end leases"),
        }
    }
}
