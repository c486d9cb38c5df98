//! The service's errors, each naming who is at fault, and the one function
//! that maps them to HTTP statuses and stable error codes.

use crate::crypto::KeyId;

use super::api::InvalidField;
use super::seal::SealError;

/// Why a call to the key-wrapping service was refused or failed.
///
/// [`KmsError::http_status`] and [`KmsError::code`] match every variant with
/// no `_` arm: a new error cannot ship before someone decides what the
/// caller sees.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// The request is malformed (bad JSON, a field out of bounds).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request body is larger than the service accepts.
    #[error("request body too large: {0}")]
    TooLarge(String),
    /// The request head (request line and headers) is larger, or has more
    /// lines, than the service accepts.
    #[error("request head too large: {0}")]
    HeadTooLarge(String),
    /// The request was not complete in time (or never started).
    #[error("request timeout: {0}")]
    RequestTimeout(String),
    /// The wrapped blob does not parse or does not authenticate.
    #[error("wrapped blob rejected: {0}")]
    BadBlob(#[from] SealError),
    /// The context in the request differs from the one sealed in the blob.
    #[error("context does not match the one sealed in the blob")]
    ContextMismatch,
    /// The calling service could not be identified.
    #[error("calling service not authenticated: {0}")]
    Unauthenticated(String),
    /// The calling service is identified but not on the allow-list.
    #[error("service {0} is not allowed")]
    ServiceNotAllowed(String),
    /// The user token is missing, malformed, badly signed or from an unknown issuer.
    #[error("user token invalid: {0}")]
    TokenInvalid(String),
    /// The user token has expired.
    #[error("user token expired {ago_s} s ago")]
    TokenExpired {
        /// Seconds since expiry.
        ago_s: u64,
    },
    /// The user is authenticated but not on the key's ACL.
    #[error("user {user:?} is not on the ACL of key {key_id}")]
    NotOnAcl {
        /// The token's subject.
        user: String,
        /// The key asked for.
        key_id: KeyId,
    },
    /// The lease is unknown, ended, expired, another service's or another
    /// context's, or leases are off.
    #[error("lease refused: {0}")]
    LeaseRefused(String),
    /// No such path or method.
    #[error("no such endpoint: {0}")]
    NoRoute(String),
    /// The key id is not known to this service.
    #[error("key {0} not found")]
    KeyNotFound(KeyId),
    /// The key is disabled (reversible).
    #[error("key {0} is disabled")]
    KeyDisabled(KeyId),
    /// The key is destroyed (forever).
    #[error("key {0} is destroyed")]
    KeyDestroyed(KeyId),
    /// A state change that the key's state does not allow.
    #[error("key {key_id}: cannot {action} a {state} key")]
    InvalidTransition {
        /// The key.
        key_id: KeyId,
        /// What was asked.
        action: &'static str,
        /// The key's state.
        state: &'static str,
    },
    /// The blob names a wrapping-key version this service does not have.
    #[error("no wrapping key of version {0}")]
    UnknownKekVersion(u32),
    /// The endpoint exists but not with this method.
    #[error("method {method} not allowed on {path}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path.
        path: String,
    },
    /// The blob is sealed under a wrapping-key version below the minimum.
    #[error("wrapping-key version {version} is retired (minimum {version_min})")]
    KekRetired {
        /// The blob's version.
        version: u32,
        /// The minimum still accepted.
        version_min: u32,
    },
    /// A request that would break an invariant (e.g. lowering the minimum version).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The audit record could not be written and synced: fail closed.
    #[error("audit log unwritable, refusing: {0}")]
    AuditUnwritable(String),
    /// The wrapping-key backend (file, HSM) failed.
    #[error("wrapping-key backend failed: {0}")]
    Kek(String),
    /// Key state could not be read or written.
    #[error("key state storage failed: {0}")]
    State(String),
    /// Too many connections or queued calls.
    #[error("service busy: {0}")]
    Busy(String),
    /// A bug or an impossible condition; please report it.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<InvalidField> for KmsError {
    fn from(invalid: InvalidField) -> Self {
        KmsError::BadRequest(invalid.0)
    }
}

impl KmsError {
    /// The HTTP status this error is answered with.
    pub fn http_status(&self) -> u16 {
        match self {
            KmsError::BadRequest(_)
            | KmsError::BadBlob(_)
            | KmsError::ContextMismatch
            | KmsError::UnknownKekVersion(_) => 400,
            KmsError::MethodNotAllowed { .. } => 405,
            KmsError::RequestTimeout(_) => 408,
            KmsError::TooLarge(_) => 413,
            KmsError::HeadTooLarge(_) => 431,
            KmsError::Unauthenticated(_)
            | KmsError::TokenInvalid(_)
            | KmsError::TokenExpired { .. } => 401,
            KmsError::ServiceNotAllowed(_)
            | KmsError::NotOnAcl { .. }
            | KmsError::LeaseRefused(_) => 403,
            KmsError::NoRoute(_) | KmsError::KeyNotFound(_) => 404,
            KmsError::KeyDisabled(_)
            | KmsError::KeyDestroyed(_)
            | KmsError::InvalidTransition { .. }
            | KmsError::KekRetired { .. }
            | KmsError::Conflict(_) => 409,
            KmsError::AuditUnwritable(_)
            | KmsError::Kek(_)
            | KmsError::State(_)
            | KmsError::Busy(_) => 503,
            KmsError::Internal(_) => 500,
        }
    }

    /// The stable, machine-readable error code (the `error` field of the
    /// JSON body). Documented in README.md, "The key-wrapping service"; never renamed.
    pub fn code(&self) -> &'static str {
        match self {
            KmsError::BadRequest(_) => "bad_request",
            KmsError::TooLarge(_) => "too_large",
            KmsError::HeadTooLarge(_) => "head_too_large",
            KmsError::RequestTimeout(_) => "request_timeout",
            KmsError::BadBlob(_) => "bad_blob",
            KmsError::ContextMismatch => "context_mismatch",
            KmsError::Unauthenticated(_) => "unauthenticated",
            KmsError::ServiceNotAllowed(_) => "service_not_allowed",
            KmsError::TokenInvalid(_) => "token_invalid",
            KmsError::TokenExpired { .. } => "token_expired",
            KmsError::NotOnAcl { .. } => "not_on_acl",
            KmsError::LeaseRefused(_) => "lease_refused",
            KmsError::NoRoute(_) => "no_route",
            KmsError::MethodNotAllowed { .. } => "method_not_allowed",
            KmsError::UnknownKekVersion(_) => "unknown_wrapping_key_version",
            KmsError::KeyNotFound(_) => "key_not_found",
            KmsError::KeyDisabled(_) => "key_disabled",
            KmsError::KeyDestroyed(_) => "key_destroyed",
            KmsError::InvalidTransition { .. } => "invalid_transition",
            KmsError::KekRetired { .. } => "wrapping_key_retired",
            KmsError::Conflict(_) => "conflict",
            KmsError::AuditUnwritable(_) => "audit_unavailable",
            KmsError::Kek(_) => "wrapping_key_unavailable",
            KmsError::State(_) => "state_unavailable",
            KmsError::Busy(_) => "busy",
            KmsError::Internal(_) => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_the_documented_ones() {
        let id = KeyId::default();
        assert_eq!(
            KmsError::NotOnAcl {
                user: "u".into(),
                key_id: id
            }
            .http_status(),
            403
        );
        assert_eq!(KmsError::TokenExpired { ago_s: 1 }.http_status(), 401);
        assert_eq!(KmsError::KeyDestroyed(id).http_status(), 409);
        assert_eq!(KmsError::AuditUnwritable("x".into()).http_status(), 503);
        assert_eq!(KmsError::BadBlob(SealError::Truncated).http_status(), 400);
        assert_eq!(KmsError::KeyNotFound(id).code(), "key_not_found");
    }
}
