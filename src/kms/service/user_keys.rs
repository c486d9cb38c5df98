//! What a user may learn with their own token: the keys whose ACL lists
//! them (ids, contexts, ACLs, states, times), never key material. lsvkms
//! answers from its key records, which hold no data key.

use super::super::api::{MyKeys, MyKeysRequest};
use super::super::auth::PeerIdentity;
use super::super::error::KmsError;
use super::super::limits::MY_KEYS_MAX;
use super::{Service, now_unix_s};

impl Service {
    /// `POST /v1/keys/mine`: the keys whose current ACL lists the token's
    /// user, oldest first. A user an ACL change removed no longer sees the
    /// key. Audited as `key_list` with the user.
    pub fn my_keys(
        &self,
        peer: &PeerIdentity,
        request: &MyKeysRequest,
    ) -> Result<MyKeys, KmsError> {
        let mut entry = self.entry(peer, "key_list");
        let outcome = (|| {
            self.services.authenticate(peer)?;
            let claims = self.tokens.verify(&request.user_token, now_unix_s())?;
            entry.user = Some(claims.sub.clone());
            let (records, truncated) = self
                .keys
                .list(MY_KEYS_MAX, |record| record.acl.contains(&claims.sub))?;
            Ok(MyKeys {
                user: claims.sub,
                keys: records.iter().map(|r| r.info()).collect(),
                truncated,
            })
        })();
        self.decide(entry, outcome)
    }
}
