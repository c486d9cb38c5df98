//! Places that keep whole, immutable objects: an S3-compatible bucket or a
//! local directory, behind one small blocking interface.
//!
//! This is the foundation a volume's sealed segments, checkpoints and
//! metadata will be stored through. It knows nothing about the log: an
//! object is a key and some bytes, written whole and never modified in
//! place (a `put` of an existing key replaces it whole).
//!
//! - [`S3Store`]: a bucket (and optional key prefix) on any S3-compatible
//!   endpoint. Transient failures (connection refused, timeouts, 5xx) are
//!   retried with exponential backoff up to a deadline; what is left is a
//!   typed [`Error`].
//! - [`LocalDirStore`]: files under a root directory, each object written to
//!   a temporary file, synced, then renamed (or hard-linked, for
//!   [`ObjectStore::put_if_absent`]) into place.
//!
//! Keys are [`ObjectKey`]s: `/`-separated segments of a restricted alphabet,
//! so the same key names the same object in both stores and in every S3
//! implementation.
//!
//! Calls block the calling thread; the stores are `Send + Sync` and meant to
//! be shared (`Arc<dyn ObjectStore>`) by the threads of a daemon.

#[doc(hidden)]
pub mod contract;
mod credentials;
mod error;
mod key;
mod local;
#[cfg(test)]
pub(crate) mod memory;
mod s3;

pub use credentials::Credentials;
pub use error::{Error, Result};
pub use key::ObjectKey;
pub use local::LocalDirStore;
pub use s3::{S3Config, S3Store};

use bytes::Bytes;

/// What [`ObjectStore::put_if_absent`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object did not exist; ours is now there.
    Created,
    /// An object of that name already existed (with other bytes); nothing
    /// was written.
    AlreadyExists,
}

/// Which bytes of an object a ranged read wants. Follows HTTP range
/// semantics (RFC 9110 §14.1.2) as S3 does: a range that reaches past the
/// end of the object is cut at the end; one that starts at or past the end
/// is [`Error::InvalidRange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// Bytes `start..end` (end exclusive; `start < end`).
    Span {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// Bytes from `start` to the end of the object.
    From(u64),
    /// The last `n` bytes (`n > 0`), or the whole object if it is shorter.
    Suffix(u64),
}

impl ByteRange {
    /// Checks the range on its own (before any object is seen): an empty
    /// span or suffix is a caller's mistake, refused before any I/O.
    pub fn check(self) -> Result<()> {
        let empty = match self {
            ByteRange::Span { start, end } => start >= end,
            ByteRange::From(_) => false,
            ByteRange::Suffix(n) => n == 0,
        };
        if empty {
            return Err(Error::EmptyRange { range: self });
        }
        Ok(())
    }

    /// The byte offsets this range selects in an object of `size` bytes, or
    /// `None` if it selects nothing (it starts at or past the end).
    pub fn resolve(self, size: u64) -> Option<std::ops::Range<u64>> {
        let range = match self {
            ByteRange::Span { start, end } => start..end.min(size),
            ByteRange::From(start) => start..size,
            ByteRange::Suffix(n) => size.saturating_sub(n)..size,
        };
        (range.start < range.end).then_some(range)
    }
}

impl std::fmt::Display for ByteRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The HTTP Range header's notation (inclusive end).
        match *self {
            ByteRange::Span { start, end } => write!(f, "bytes={start}-{}", end.saturating_sub(1)),
            ByteRange::From(start) => write!(f, "bytes={start}-"),
            ByteRange::Suffix(n) => write!(f, "bytes=-{n}"),
        }
    }
}

/// An object as a listing or `head` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key.
    pub key: ObjectKey,
    /// Its size in bytes.
    pub size: u64,
}

/// A place that keeps whole, immutable objects. Every call blocks until the
/// store has answered (after any retries); implementations are shared by
/// many threads.
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Writes `bytes` as object `key`, replacing any object of that name.
    /// When it returns, the object is durable in the store and a `get` sees
    /// it whole (never a part of it).
    fn put(&self, key: &ObjectKey, bytes: Bytes) -> Result<()>;

    /// Writes `bytes` as object `key` only if no object of that name exists:
    /// of several racing creators exactly one gets [`PutOutcome::Created`].
    /// An existing object holding exactly `bytes` counts as created (that is
    /// our own write whose answer was lost and whose retry found it), so
    /// callers make the bytes of each attempt unique (a random writer id).
    fn put_if_absent(&self, key: &ObjectKey, bytes: Bytes) -> Result<PutOutcome>;

    /// Reads a whole object.
    fn get(&self, key: &ObjectKey) -> Result<Bytes>;

    /// Reads the bytes of `range` (see [`ByteRange`]).
    fn get_range(&self, key: &ObjectKey, range: ByteRange) -> Result<Bytes>;

    /// The object's size, without reading it.
    fn head(&self, key: &ObjectKey) -> Result<ObjectInfo>;

    /// Every object whose key lies under `prefix` (its key starts with
    /// `prefix` followed by `/`), in byte order of the keys. Large listings
    /// are fetched page by page underneath.
    fn list(&self, prefix: &ObjectKey) -> Result<Vec<ObjectInfo>>;

    /// Like [`ObjectStore::list`], only the keys that sort after `after`
    /// (for scanning from a known point, e.g. segments newer than a
    /// checkpoint's).
    fn list_after(&self, prefix: &ObjectKey, after: &ObjectKey) -> Result<Vec<ObjectInfo>>;

    /// Deletes objects; keys that do not exist are not an error.
    fn delete(&self, keys: &[ObjectKey]) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_like_http() {
        let span = |start, end| ByteRange::Span { start, end };
        assert_eq!(span(0, 4).resolve(10), Some(0..4));
        assert_eq!(span(8, 20).resolve(10), Some(8..10), "cut at the end");
        assert_eq!(span(10, 20).resolve(10), None, "starts at the end");
        assert_eq!(ByteRange::From(3).resolve(10), Some(3..10));
        assert_eq!(ByteRange::From(10).resolve(10), None);
        assert_eq!(ByteRange::Suffix(4).resolve(10), Some(6..10));
        assert_eq!(
            ByteRange::Suffix(40).resolve(10),
            Some(0..10),
            "whole object"
        );
        assert_eq!(ByteRange::Suffix(4).resolve(0), None);
        assert!(span(5, 5).check().is_err());
        assert!(span(6, 5).check().is_err());
        assert!(ByteRange::Suffix(0).check().is_err());
        assert!(ByteRange::From(0).check().is_ok());
    }

    #[test]
    fn ranges_display_as_http_headers() {
        assert_eq!(
            ByteRange::Span {
                start: 0,
                end: 4096
            }
            .to_string(),
            "bytes=0-4095"
        );
        assert_eq!(ByteRange::From(7).to_string(), "bytes=7-");
        assert_eq!(ByteRange::Suffix(512).to_string(), "bytes=-512");
    }
}
