//! Reading the audit log: `lsvkms audit verify` (is the chain intact?),
//! `lsvkms audit check` (did a user not on a key's ACL unwrap it?) and the
//! `GET /v1/audit` query.

use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use serde::Serialize;

use super::file::{Head, PAD, head_path, read_head, read_line, rest_is_padding};
use super::{AuditKey, Decision, StoredRecord, decode_line, parse_line_unverified};
use crate::crypto::KeyId;
use crate::kms::error::KmsError;
use crate::kms::keys::KeyStore;
use crate::kms::limits::{AUDIT_LINE_BYTES_MAX, AUDIT_LOG_BYTES_MAX};

/// An intact log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records in the log.
    pub records: u64,
    /// The head file agreed (false: there was none).
    pub head_checked: bool,
}

/// Why the log is not intact. `line` counts from 1.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The log could not be read.
    #[error("reading the audit log: {0}")]
    Io(#[from] io::Error),
    /// A line is damaged, forged, out of order, or missing before it.
    #[error("line {line}: {reason}")]
    Broken {
        /// The line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// Records were cut off the end.
    #[error(
        "log ends at seq {last_seq} but its head file says {head_seq}: records deleted from the end"
    )]
    Truncated {
        /// The last seq in the log.
        last_seq: u64,
        /// The head's seq.
        head_seq: u64,
    },
}

/// Calls `each(line_number, line_without_newline, complete)` for every
/// record line, up to the first empty line (where padding begins, see
/// [`super::file`]); a last line without `\n` is passed too (callers
/// decide). With `strict`, anything but padding after the end is an error.
fn for_each_line(
    path: &Path,
    strict: bool,
    mut each: impl FnMut(u64, &[u8], bool) -> Result<(), VerifyError>,
) -> Result<(), VerifyError> {
    let file = File::open(path)?;
    let mut reader = BufReader::new(file.take(AUDIT_LOG_BYTES_MAX));
    let mut line = Vec::with_capacity(AUDIT_LINE_BYTES_MAX);
    let mut number = 0u64;
    loop {
        if read_line(&mut reader, &mut line)? == 0 {
            return Ok(());
        }
        number += 1;
        if line == [PAD] {
            if strict && !rest_is_padding(&mut reader)? {
                let reason = "bytes after the end of the log (a torn write? lsvkms sets it aside when it starts)";
                return Err(VerifyError::Broken {
                    line: number,
                    reason: reason.into(),
                });
            }
            return Ok(());
        }
        let complete = line.last() == Some(&b'\n');
        if complete {
            line.pop();
        } else if line.len() > AUDIT_LINE_BYTES_MAX {
            return Err(VerifyError::Broken {
                line: number,
                reason: "line too long".into(),
            });
        }
        each(number, &line, complete)?;
    }
}

/// Verifies every line's hash, the chain (`prev`, `seq`) and the head file.
pub fn verify(log_path: &Path, key: &AuditKey) -> Result<VerifyReport, VerifyError> {
    let head = read_head(&head_path(log_path))?;
    let mut previous = Head::genesis();
    let mut head_seen = head.as_ref().is_none_or(|h| h.seq == 0);
    let mut offset = 0u64;
    for_each_line(log_path, true, |line, bytes, complete| {
        let broken = |reason: String| VerifyError::Broken { line, reason };
        if !complete {
            return Err(broken("torn last line (no newline)".into()));
        }
        let stored = decode_line(key, bytes).map_err(|e| broken(e.to_string()))?;
        check_link(&previous, &stored).map_err(broken)?;
        if let Some(head) = &head
            && head.seq == stored.record.seq
        {
            let ends_elsewhere =
                head.end_offset != 0 && head.end_offset != offset + bytes.len() as u64 + 1;
            if head.hash != stored.hash || ends_elsewhere {
                return Err(broken("differs from the record the head file names".into()));
            }
            head_seen = true;
        }
        offset += bytes.len() as u64 + 1;
        previous = Head {
            seq: stored.record.seq,
            hash: stored.hash,
            end_offset: offset,
        };
        Ok(())
    })?;
    if let Some(head) = &head
        && (!head_seen || head.seq > previous.seq)
    {
        return Err(VerifyError::Truncated {
            last_seq: previous.seq,
            head_seq: head.seq,
        });
    }
    Ok(VerifyReport {
        records: previous.seq,
        head_checked: head.is_some(),
    })
}

fn check_link(previous: &Head, stored: &StoredRecord) -> Result<(), String> {
    if stored.record.seq != previous.seq + 1 {
        return Err(format!(
            "seq {} follows seq {}: lines deleted or reordered",
            stored.record.seq, previous.seq
        ));
    }
    if stored.record.prev != previous.hash {
        return Err(
            "prev does not match the previous line's hash: lines deleted or reordered".into(),
        );
    }
    Ok(())
}

/// An unwrap by a user who is not on the key's ACL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The line number.
    pub line: u64,
    /// The record's seq.
    pub seq: u64,
    /// The key.
    pub key_id: KeyId,
    /// The user (none: an unwrap without a user).
    pub user: Option<String>,
    /// The calling service.
    pub service: String,
    /// Why it is a finding.
    pub reason: String,
}

/// What `audit check` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// Allowed unwraps by users not on the ACL.
    pub findings: Vec<Finding>,
    /// Keys newly or already marked compromised because of them.
    pub compromised: Vec<KeyId>,
    /// Lines that are not records at all (skipped).
    pub unreadable_lines: u64,
}

/// Finds every allowed unwrap whose user is not on the key's ACL (nor was
/// before an ACL change: older blobs still carry those users), or that has
/// no user, or names a key we do not know, and marks those keys
/// compromised. Reads lines without requiring their hash: a forged line is
/// exactly what this must see (run `audit verify` for authenticity).
pub fn check(log_path: &Path, keys: &KeyStore) -> Result<CheckReport, VerifyError> {
    let mut report = CheckReport::default();
    for_each_line(log_path, false, |line, bytes, _complete| {
        let Ok(stored) = parse_line_unverified(bytes) else {
            report.unreadable_lines += 1;
            return Ok(());
        };
        let entry = &stored.record.entry;
        if entry.action != "unwrap" || entry.decision != Decision::Allow {
            return Ok(());
        }
        let Some(key_id) = entry.key_id else {
            report.unreadable_lines += 1;
            return Ok(());
        };
        let record = keys.get(key_id).map_err(to_io)?;
        let reason = match (&entry.user, &record) {
            (_, None) => Some("key unknown to this service".to_owned()),
            (None, Some(_)) => Some("unwrap without a user".to_owned()),
            (Some(user), Some(record)) if !record.acl_ever_listed(user) => {
                Some(format!("{user:?} is not on the ACL"))
            }
            _ => None,
        };
        if let Some(reason) = reason {
            let service = entry.service.clone();
            report.findings.push(Finding {
                line,
                seq: stored.record.seq,
                key_id,
                user: entry.user.clone(),
                service,
                reason,
            });
        }
        Ok(())
    })?;
    mark_compromised(keys, &mut report)?;
    Ok(report)
}

fn mark_compromised(keys: &KeyStore, report: &mut CheckReport) -> Result<(), VerifyError> {
    let ids: BTreeSet<KeyId> = report.findings.iter().map(|f| f.key_id).collect();
    for key_id in ids {
        let first = report
            .findings
            .iter()
            .find(|f| f.key_id == key_id)
            .expect("from findings");
        let reason = format!("audit seq {}: {}", first.seq, first.reason);
        let result = keys.update(key_id, |record| {
            if !record.compromised {
                record.compromised = true;
                record.compromised_reason = Some(reason);
            }
            Ok(())
        });
        match result {
            Ok(_) => report.compromised.push(key_id),
            Err(KmsError::KeyNotFound(_)) => {}
            Err(e) => return Err(to_io(e)),
        }
    }
    Ok(())
}

fn to_io(error: KmsError) -> VerifyError {
    VerifyError::Io(io::Error::other(error.to_string()))
}

/// The last `limit` records that concern `key_id` (all records if `None`),
/// oldest first. Lines are returned as stored (JSON values).
pub fn query(
    log_path: &Path,
    key_id: Option<KeyId>,
    limit: usize,
) -> Result<Vec<serde_json::Value>, VerifyError> {
    let mut kept = VecDeque::with_capacity(limit.min(1024));
    for_each_line(log_path, false, |_line, bytes, complete| {
        if !complete || limit == 0 {
            return Ok(());
        }
        let Ok(stored) = parse_line_unverified(bytes) else {
            return Ok(());
        };
        if key_id.is_some() && stored.record.entry.key_id != key_id {
            return Ok(());
        }
        if kept.len() == limit {
            kept.pop_front();
        }
        kept.push_back(serde_json::from_slice(bytes).map_err(io::Error::other)?);
        Ok(())
    })?;
    Ok(kept.into())
}
