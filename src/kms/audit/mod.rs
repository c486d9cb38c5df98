//! The audit log: one JSON line per call, hash-chained and authenticated.
//!
//! Each line is a JSON object whose last field is `"hash"`:
//!
//! ```text
//! {"seq":7,"time":"…","service":"…",…,"prev":"<hash of line 6>","hash":"<64 hex>"}
//! ```
//!
//! `hash` = HMAC-SHA256(audit key, the line's bytes up to, not including,
//! `,"hash":`). `prev` is the previous line's `hash` (64 zeros for the
//! first), and `seq` counts from 1 without gaps. So changing a byte breaks
//! that line's hash, deleting or swapping lines breaks `prev`/`seq`, and
//! without the audit key (`DIR/audit-mac.key`, 0600) nobody can forge a
//! line or recompute the chain. Deleting the *last* lines is caught by the
//! head file (`<log>.head`: the newest seq and hash, rewritten after every
//! synced batch), which must never be ahead of the log.
//!
//! [`file`](mod@self::file) keeps the bytes on disk (padded ahead, recovered at open),
//! [`log::AuditLog`] appends (group commit, fail closed); [`verify`] checks a
//! log and finds non-ACL unwraps.

pub mod file;
#[cfg(test)]
mod file_tests;
pub mod log;
pub mod verify;

use std::io;
use std::path::Path;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::crypto::KeyId;

use super::api::KeyContext;
use super::fsutil;

/// Bytes of the audit MAC key.
pub const AUDIT_KEY_BYTES: usize = 32;

/// The `prev` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The fixed tail of a line: `,"hash":"` + 64 hex + `"}`.
const HASH_PREFIX: &str = ",\"hash\":\"";
const HASH_SUFFIX_BYTES: usize = HASH_PREFIX.len() + 64 + 2;

/// What the service decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The call was allowed (and acted upon).
    Allow,
    /// The call was refused.
    Deny,
    /// The call was allowed but then failed.
    Error,
}

/// One call, as the service reports it (before the log numbers and chains it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The calling service's allow-listed name, or how the peer looked.
    pub service: String,
    /// The end user (token subject), if the call carried a valid token.
    pub user: Option<String>,
    /// The operation (`datakey`, `unwrap`, `rewrap`, `reacl`, `rotate`, ...).
    pub action: String,
    /// The key concerned, if any.
    pub key_id: Option<KeyId>,
    /// The context of the key concerned, if any.
    pub context: Option<KeyContext>,
    /// The decision.
    pub decision: Decision,
    /// `ok` or the error code of the refusal.
    pub reason: String,
    /// How many such calls this one record stands for, when refusals
    /// before any API call (a stranger's connection, a malformed or slow
    /// request) are counted per peer and reason rather than written one by
    /// one. Absent for single calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The lease an unwrap was allowed by, or that it granted (`user` is
    /// then the user whose unwrap granted it). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

/// One line of the log as stored (without its `hash`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1, 2, 3, ... without gaps.
    pub seq: u64,
    /// UTC time, RFC 3339 with milliseconds.
    pub time: String,
    /// The call.
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// The previous line's `hash`.
    pub prev: String,
}

/// A parsed line: the record and its hash.
#[derive(Debug, Deserialize)]
pub struct StoredRecord {
    /// The record.
    #[serde(flatten)]
    pub record: AuditRecord,
    /// Its hash.
    pub hash: String,
}

/// The key that authenticates the chain.
pub struct AuditKey(Zeroizing<[u8; AUDIT_KEY_BYTES]>);

impl AuditKey {
    /// Loads the key from a private (0600) file.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        fsutil::check_private(path).map_err(std::io::Error::other)?;
        let bytes = Zeroizing::new(fsutil::read_bounded(path, AUDIT_KEY_BYTES as u64)?);
        let mut key = Zeroizing::new([0u8; AUDIT_KEY_BYTES]);
        if bytes.len() != AUDIT_KEY_BYTES {
            return Err(std::io::Error::other(format!(
                "{} is not 32 bytes",
                path.display()
            )));
        }
        key.copy_from_slice(&bytes);
        Ok(Self(key))
    }

    /// Creates a new random key file (0600).
    pub fn generate_file(path: &Path) -> std::io::Result<()> {
        let mut key = Zeroizing::new([0u8; AUDIT_KEY_BYTES]);
        getrandom::fill(&mut key[..]).map_err(|e| std::io::Error::other(e.to_string()))?;
        fsutil::write_new(path, &key[..], 0o600)
    }

    /// A key from bytes (tests).
    pub fn from_bytes(bytes: [u8; AUDIT_KEY_BYTES]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    fn mac(&self, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0[..]).expect("any key length");
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(<secret>)")
    }
}

/// Serializes `record` into one line (with `\n`) and returns it with its hash.
pub fn encode_line(key: &AuditKey, record: &AuditRecord) -> (Vec<u8>, String) {
    let mut line = serde_json::to_vec(record).expect("records serialize");
    assert_eq!(line.pop(), Some(b'}'), "a JSON object ends with }}");
    let hash = key.mac(&line);
    line.extend_from_slice(HASH_PREFIX.as_bytes());
    line.extend_from_slice(hash.as_bytes());
    line.extend_from_slice(b"\"}\n");
    (line, hash)
}

/// Why one line is not a valid, authentic record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    /// The line does not end in a `hash` field of 64 hex digits.
    #[error("no hash field at the end")]
    NoHash,
    /// The hash does not match the bytes.
    #[error("hash mismatch (line changed, or written without the audit key)")]
    BadHash,
    /// The bytes authenticate but are not a record.
    #[error("not a record: {0}")]
    NotJson(String),
}

/// Checks a line (without `\n`) against its hash and parses it.
pub fn decode_line(key: &AuditKey, line: &[u8]) -> Result<StoredRecord, LineError> {
    let stored = parse_line_unverified(line)?;
    let body = &line[..line.len() - HASH_SUFFIX_BYTES];
    if key.mac(body) != stored.hash {
        return Err(LineError::BadHash);
    }
    Ok(stored)
}

/// Parses a line without checking its hash (for reading and for the
/// compromise check, which must look at forged lines too).
pub fn parse_line_unverified(line: &[u8]) -> Result<StoredRecord, LineError> {
    if line.len() < HASH_SUFFIX_BYTES {
        return Err(LineError::NoHash);
    }
    let (body, tail) = line.split_at(line.len() - HASH_SUFFIX_BYTES);
    let hex_part = &tail[HASH_PREFIX.len()..HASH_PREFIX.len() + 64];
    if !tail.starts_with(HASH_PREFIX.as_bytes())
        || !tail.ends_with(b"\"}")
        || !hex_part
            .iter()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        || body.is_empty()
    {
        return Err(LineError::NoHash);
    }
    serde_json::from_slice(line).map_err(|e| LineError::NotJson(e.to_string()))
}

/// Formats milliseconds since the UNIX epoch as RFC 3339 UTC.
pub fn rfc3339_utc(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000;
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        unix_ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A plain allowed `rotate` call by `service` (for the tests of the log
/// and of its file).
#[cfg(test)]
fn sample_entry(service: &str) -> AuditEntry {
    AuditEntry {
        service: service.into(),
        user: None,
        action: "rotate".into(),
        key_id: None,
        context: None,
        decision: Decision::Allow,
        reason: "ok".into(),
        count: None,
        lease: None,
    }
}

/// Where appended lines go. A trait so tests can make writes and syncs fail.
pub trait AuditSink: Send {
    /// Appends bytes at the end.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes everything appended durable.
    fn sync(&mut self) -> io::Result<()>;
    /// `Err` with a reason if the sink must not be written now (read-only mode).
    fn check_writable(&self) -> Result<(), String>;
    /// Records the newest durable record (best effort, not synced); the
    /// sink adds where it ends.
    fn set_head(&mut self, head: &file::Head);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> AuditRecord {
        AuditRecord {
            seq,
            time: rfc3339_utc(0),
            entry: AuditEntry {
                service: "svc".into(),
                user: Some("alice".into()),
                action: "unwrap".into(),
                key_id: Some(KeyId([1; 16])),
                context: Some(KeyContext {
                    volume_id: "v".into(),
                    snapshot_id: String::new(),
                }),
                decision: Decision::Allow,
                reason: "ok".into(),
                count: None,
                lease: None,
            },
            prev: GENESIS_HASH.into(),
        }
    }

    #[test]
    fn line_round_trips_and_any_changed_byte_is_caught() {
        let key = AuditKey::from_bytes([9; 32]);
        let (line, hash) = encode_line(&key, &record(1));
        let line = &line[..line.len() - 1];
        let stored = decode_line(&key, line).unwrap();
        assert_eq!(stored.record, record(1));
        assert_eq!(stored.hash, hash);
        for index in 0..line.len() {
            let mut changed = line.to_vec();
            changed[index] ^= 0x01;
            assert!(decode_line(&key, &changed).is_err(), "byte {index}");
        }
        assert_eq!(
            decode_line(&AuditKey::from_bytes([8; 32]), line).unwrap_err(),
            LineError::BadHash
        );
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_utc(1_798_675_200_000), "2026-12-31T00:00:00.000Z");
    }
}
