//! What can go wrong talking to an object store, typed by what the caller
//! should do about it.

use std::path::PathBuf;

use super::ByteRange;

/// Result of an object-store call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An object-store failure. Transient faults (a dropped connection, a
/// timeout, an overloaded or restarting server) are retried inside the store
/// until its deadline; [`Error::Transient`] means the deadline passed.
/// Everything else is permanent: retrying the same call will not help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key that breaks the key rules (our caller's mistake).
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// An empty range was asked for (our caller's mistake).
    #[error("empty byte range {range}")]
    EmptyRange {
        /// The range.
        range: ByteRange,
    },

    /// No object has that key.
    #[error("object {key} not found")]
    NotFound {
        /// The key.
        key: String,
    },

    /// The range starts at or past the end of the object.
    #[error("range {range} is outside object {key}")]
    InvalidRange {
        /// The key.
        key: String,
        /// The range.
        range: ByteRange,
    },

    /// The store refused our credentials or their rights (HTTP 401/403):
    /// wrong access key, wrong secret, or no permission on the bucket.
    #[error("the object store refused our credentials: {detail}")]
    CredentialsRefused {
        /// The store's reason (its error code, e.g. InvalidAccessKeyId).
        detail: String,
    },

    /// The bucket does not exist.
    #[error("bucket {bucket:?} does not exist")]
    BucketMissing {
        /// The bucket.
        bucket: String,
    },

    /// The store kept failing in ways that usually pass (unreachable,
    /// timeouts, 5xx) until the retry deadline ran out.
    #[error(
        "object store unavailable: {op} {key} still failing after {elapsed_s:.1} s of retries: {detail}"
    )]
    Transient {
        /// The operation (PUT, GET, ...).
        op: &'static str,
        /// The key (or prefix) it was for.
        key: String,
        /// How long it was retried.
        elapsed_s: f64,
        /// The last failure.
        detail: String,
    },

    /// The store refused the request for a reason retrying will not fix, or
    /// answered something we cannot use.
    #[error("object store refused {op} {key}: {detail}")]
    Permanent {
        /// The operation.
        op: &'static str,
        /// The key (or prefix) it was for.
        key: String,
        /// What went wrong.
        detail: String,
    },

    /// A local-directory store's file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Local {
        /// What we were doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },

    /// Credentials are missing or cannot be used (before any request).
    #[error("object-store credentials: {reason}")]
    Credentials {
        /// Why.
        reason: String,
    },

    /// The store's configuration is invalid (before any request).
    #[error("object-store configuration: {reason}")]
    Config {
        /// Why.
        reason: String,
    },
}

impl Error {
    /// Whether the store was unreachable or failing until the retry
    /// deadline, as opposed to refusing the request.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient { .. })
    }
}
