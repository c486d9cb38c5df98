//! Authentication at two levels (the patent's cluster level and user level)
//! and the ACL check.
//!
//! - **Service identity**: the UNIX peer's uid (`SO_PEERCRED`, set by the
//!   kernel, cannot be forged by the peer) checked against an allow-list,
//!   or on TCP the TLS client certificate (its SHA-256 fingerprint checked
//!   against an allow-list, after the TLS layer verified it against the
//!   client CA).
//! - **User identity**: a signed, expiring token ([`token`]).
//! - **Authorization**: the token's subject must be on the ACL sealed in the
//!   blob ([`check_acl`]).

pub mod peer;
pub mod token;

use std::collections::HashMap;

use crate::crypto::KeyId;

use super::error::KmsError;

/// How a connection's peer was identified by the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerIdentity {
    /// A UNIX-socket peer, from `SO_PEERCRED`.
    Unix {
        /// The peer's effective uid.
        uid: u32,
        /// The peer's process id (for logs only; pids are reused).
        pid: i32,
    },
    /// A TLS peer whose certificate chain the TLS layer verified.
    Tls {
        /// SHA-256 of the leaf certificate (DER), lowercase hex.
        cert_sha256: String,
    },
    /// The transport gave no identity (e.g. TLS without a client certificate).
    Anonymous,
}

impl PeerIdentity {
    /// How the peer shows up in the audit log when it is not allow-listed.
    pub fn describe(&self) -> String {
        match self {
            PeerIdentity::Unix { uid, .. } => format!("uid:{uid}"),
            PeerIdentity::Tls { cert_sha256 } => format!("tls:{cert_sha256}"),
            PeerIdentity::Anonymous => "anonymous".to_owned(),
        }
    }
}

/// Services allowed to call: uid → name, certificate fingerprint → name.
#[derive(Clone, Debug, Default)]
pub struct ServiceAllowList {
    unix: HashMap<u32, String>,
    tls: HashMap<String, String>,
}

impl ServiceAllowList {
    /// Builds the list from (uid, name) and (fingerprint, name) pairs.
    pub fn new(
        unix: impl IntoIterator<Item = (u32, String)>,
        tls: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        Self {
            unix: unix.into_iter().collect(),
            tls: tls
                .into_iter()
                .map(|(fingerprint, name)| (fingerprint.to_ascii_lowercase(), name))
                .collect(),
        }
    }

    /// The allow-listed name of `peer`, or why it may not call.
    pub fn authenticate(&self, peer: &PeerIdentity) -> Result<String, KmsError> {
        let name = match peer {
            PeerIdentity::Unix { uid, .. } => self.unix.get(uid),
            PeerIdentity::Tls { cert_sha256 } => self.tls.get(cert_sha256),
            PeerIdentity::Anonymous => {
                return Err(KmsError::Unauthenticated("no client identity".into()));
            }
        };
        name.cloned()
            .ok_or_else(|| KmsError::ServiceNotAllowed(peer.describe()))
    }
}

/// Refuses `user` unless it is on `acl`.
pub fn check_acl(user: &str, acl: &[String], key_id: KeyId) -> Result<(), KmsError> {
    if acl.iter().any(|entry| entry == user) {
        Ok(())
    } else {
        Err(KmsError::NotOnAcl {
            user: user.to_owned(),
            key_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_by_uid_and_fingerprint() {
        let list = ServiceAllowList::new([(0, "root".into())], [("AB".into(), "remote".into())]);
        let root = PeerIdentity::Unix { uid: 0, pid: 1 };
        assert_eq!(list.authenticate(&root).unwrap(), "root");
        let other = PeerIdentity::Unix { uid: 1000, pid: 1 };
        assert_eq!(list.authenticate(&other).unwrap_err().http_status(), 403);
        let tls = PeerIdentity::Tls {
            cert_sha256: "ab".into(),
        };
        assert_eq!(list.authenticate(&tls).unwrap(), "remote");
        assert_eq!(
            list.authenticate(&PeerIdentity::Anonymous)
                .unwrap_err()
                .http_status(),
            401
        );
    }

    #[test]
    fn acl_is_exact_match() {
        let acl = vec!["alice".to_owned()];
        assert!(check_acl("alice", &acl, KeyId::default()).is_ok());
        assert!(check_acl("Alice", &acl, KeyId::default()).is_err());
        assert!(check_acl("alic", &acl, KeyId::default()).is_err());
    }
}
