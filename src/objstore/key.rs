//! Object keys: a restricted alphabet that means the same thing as an S3 key,
//! an `object_store` path and a relative file path.

use super::error::{Error, Result};

/// Longest key accepted, in bytes (S3's own limit).
pub const KEY_BYTES_MAX: usize = 1024;

/// The name of an object: one or more segments joined by `/`. A segment is
/// non-empty, made of `A-Z a-z 0-9 . _ -`, and does not start with `.`
/// (so `.` and `..` cannot appear, and names starting with `.` are free for a
/// store's own temporary files). Checked once, when the key is made.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Checks `key` and makes it a key.
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        match why_invalid(&key) {
            None => Ok(ObjectKey(key)),
            Some(reason) => Err(Error::InvalidKey { key, reason }),
        }
    }

    /// This key with `segments` (one or more, `/`-separated) appended.
    pub fn join(&self, segments: &str) -> Result<Self> {
        Self::new(format!("{}/{segments}", self.0))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this key lies under `prefix` (starts with `prefix/`).
    pub fn is_under(&self, prefix: &ObjectKey) -> bool {
        self.0
            .strip_prefix(prefix.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn why_invalid(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        return Some("empty");
    }
    if key.len() > KEY_BYTES_MAX {
        return Some("longer than 1024 bytes");
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return Some("empty segment (leading, trailing or doubled '/')");
        }
        if segment.starts_with('.') {
            return Some("a segment starts with '.'");
        }
        let allowed = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-');
        if !segment.bytes().all(allowed) {
            return Some("characters other than A-Z a-z 0-9 . _ - /");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_keys_a_volume_uses() {
        for key in [
            "vol/seg/0000000001-00000000000000a5",
            "a",
            "x.y_z-1/ckpt/42",
        ] {
            assert_eq!(ObjectKey::new(key).unwrap().as_str(), key);
        }
    }

    #[test]
    fn refuses_what_stores_disagree_on() {
        let long = "a".repeat(KEY_BYTES_MAX + 1);
        for key in [
            "", "/a", "a/", "a//b", ".", "..", "a/../b", "a/.tmp", "a b", "a\\b", "é", "a?b",
            "a%2F", &long,
        ] {
            let error = ObjectKey::new(key).unwrap_err();
            assert!(
                matches!(error, Error::InvalidKey { .. }),
                "{key:?}: {error}"
            );
        }
        assert!(ObjectKey::new("a".repeat(KEY_BYTES_MAX)).is_ok());
    }

    #[test]
    fn prefixes_are_whole_segments() {
        let prefix = ObjectKey::new("vol/seg").unwrap();
        assert!(prefix.join("1").unwrap().is_under(&prefix));
        assert!(!ObjectKey::new("vol/segx/1").unwrap().is_under(&prefix));
        assert!(!prefix.is_under(&prefix));
        assert!(prefix.join("../x").is_err());
    }
}
