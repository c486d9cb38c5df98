//! Refusals before any API call — a stranger's connection, one connection
//! too many, a request too large, malformed, chunked or too slow — and how
//! they are audited without letting a peer flood the audit log.
//!
//! Each is answered (or the connection closed) at once; the audit record
//! comes a little later: refusals are counted per (peer, reason) and a
//! writer thread appends one record per pair every
//! [`REFUSAL_AUDIT_WINDOW_MS`] with the count (`"count": N`). A peer that
//! connects ten thousand times a second costs one line a second per
//! reason. At most [`REFUSAL_AUDIT_PEERS_MAX`] peers are told apart in a
//! window; more are counted together as `others`.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::Duration;

use super::audit::log::AuditLog;
use super::audit::{AuditEntry, Decision};
use super::error::KmsError;
use super::http::HttpError;
use super::limits::{
    CONNECTIONS_MAX, CONNECTIONS_PER_PEER_MAX, REFUSAL_AUDIT_PEERS_MAX, REFUSAL_AUDIT_WINDOW_MS,
};
use crate::sync::LockOrRecover;

/// Why a connection or request was refused before reaching the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The peer is not an allow-listed service: closed before reading.
    Stranger,
    /// No connection slot for the peer (its share, or all, are taken).
    Busy,
    /// The head (request line and headers) is over its limit.
    HeadTooLarge,
    /// More header lines than the codec takes.
    TooManyHeaders,
    /// The body is over its limit.
    BodyTooLarge,
    /// Not an HTTP/1.1 request we accept.
    Malformed,
    /// A chunked body (`Transfer-Encoding`).
    Chunked,
    /// A request not complete within the time for a whole request.
    TooSlow,
    /// A connection that sent nothing within the idle time.
    Idle,
}

impl Refusal {
    /// The `reason` of its audit records.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Stranger => "service_not_allowed",
            Refusal::Busy => "busy",
            Refusal::HeadTooLarge => "head_too_large",
            Refusal::TooManyHeaders => "too_many_headers",
            Refusal::BodyTooLarge => "too_large",
            Refusal::Malformed => "malformed",
            Refusal::Chunked => "chunked",
            Refusal::TooSlow => "request_timeout",
            Refusal::Idle => "idle",
        }
    }

    /// The refusal a codec error stands for; `None` for a transport
    /// failure or a peer that hung up (nothing to answer or audit).
    pub fn of_http(error: &HttpError) -> Option<Self> {
        match error {
            HttpError::Io(_) | HttpError::Closed => None,
            HttpError::Malformed(_) => Some(Refusal::Malformed),
            HttpError::TooLarge { what: "head", .. } => Some(Refusal::HeadTooLarge),
            HttpError::TooLarge { .. } => Some(Refusal::BodyTooLarge),
            HttpError::TooManyHeaders => Some(Refusal::TooManyHeaders),
            HttpError::Chunked => Some(Refusal::Chunked),
            HttpError::Idle { .. } => Some(Refusal::Idle),
            HttpError::TooSlow { .. } => Some(Refusal::TooSlow),
        }
    }

    /// The error answered to the peer (`detail`: what the codec saw).
    pub fn answer(self, peer: &str, detail: &str) -> KmsError {
        match self {
            Refusal::Stranger => KmsError::ServiceNotAllowed(peer.to_owned()),
            Refusal::Busy => KmsError::Busy(format!(
                "{CONNECTIONS_MAX} connections, at most {CONNECTIONS_PER_PEER_MAX} per peer"
            )),
            Refusal::HeadTooLarge | Refusal::TooManyHeaders => {
                KmsError::HeadTooLarge(detail.to_owned())
            }
            Refusal::BodyTooLarge => KmsError::TooLarge(detail.to_owned()),
            Refusal::Malformed | Refusal::Chunked => KmsError::BadRequest(detail.to_owned()),
            Refusal::TooSlow | Refusal::Idle => KmsError::RequestTimeout(detail.to_owned()),
        }
    }
}

/// Counts of refusals not yet audited.
#[derive(Default)]
struct Pending {
    counts: HashMap<(String, Refusal), u64>,
    stopping: bool,
}

/// Counts refusals and audits them in batches (see the module doc).
pub struct RefusalAudit {
    pending: Mutex<Pending>,
    wake: Condvar,
}

impl RefusalAudit {
    /// Starts the thread that writes the counts to `audit` every window,
    /// until `audit` is gone or [`RefusalAudit::stop`] is called.
    pub fn start(audit: Weak<AuditLog>) -> std::io::Result<Arc<Self>> {
        let this = Arc::new(Self {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        });
        let writer = Arc::clone(&this);
        std::thread::Builder::new()
            .name("kms-refusals".into())
            .spawn(move || writer.run(&audit))?;
        Ok(this)
    }

    /// Counts one refusal of `peer` (an allow-listed name or how the peer
    /// looked, e.g. `uid:65534`).
    pub fn note(&self, peer: &str, refusal: Refusal) {
        let mut pending = self.pending.lock_or_recover();
        let known = pending.counts.contains_key(&(peer.to_owned(), refusal));
        let peer = if known || pending.counts.len() < REFUSAL_AUDIT_PEERS_MAX {
            peer
        } else {
            "others"
        };
        *pending
            .counts
            .entry((peer.to_owned(), refusal))
            .or_insert(0) += 1;
    }

    /// Audits what is counted so far, one record per peer and reason.
    pub fn flush(&self, audit: &AuditLog) {
        let counts = std::mem::take(&mut self.pending.lock_or_recover().counts);
        write_counts(audit, counts);
    }

    /// Ends the writer thread (what it has not written yet stays for
    /// [`RefusalAudit::flush`]).
    pub fn stop(&self) {
        self.pending.lock_or_recover().stopping = true;
        self.wake.notify_all();
    }

    fn run(&self, audit: &Weak<AuditLog>) {
        let window = Duration::from_millis(REFUSAL_AUDIT_WINDOW_MS);
        loop {
            let pending = self.pending.lock_or_recover();
            let (pending, _) = self
                .wake
                .wait_timeout_while(pending, window, |p| !p.stopping)
                .unwrap_or_else(PoisonError::into_inner);
            if pending.stopping {
                return;
            }
            drop(pending);
            let Some(audit) = audit.upgrade() else {
                return;
            };
            self.flush(&audit);
        }
    }
}

fn write_counts(audit: &AuditLog, counts: HashMap<(String, Refusal), u64>) {
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|a, b| a.0.0.cmp(&b.0.0).then(a.0.1.code().cmp(b.0.1.code())));
    for ((peer, refusal), count) in counts {
        let entry = AuditEntry {
            service: peer,
            user: None,
            action: "connection".to_owned(),
            key_id: None,
            context: None,
            decision: Decision::Deny,
            reason: refusal.code().to_owned(),
            count: Some(count),
            lease: None,
        };
        if let Err(reason) = audit.append(entry) {
            tracing::error!(%reason, refusal = refusal.code(), count, "could not audit refusals");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_beyond_the_bound_are_counted_together() {
        let audit = RefusalAudit {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        };
        for uid in 0..REFUSAL_AUDIT_PEERS_MAX + 10 {
            audit.note(&format!("uid:{uid}"), Refusal::Stranger);
        }
        audit.note("uid:0", Refusal::Stranger);
        let pending = audit.pending.lock().unwrap();
        assert_eq!(pending.counts.len(), REFUSAL_AUDIT_PEERS_MAX + 1);
        assert_eq!(pending.counts[&("others".into(), Refusal::Stranger)], 10);
        assert_eq!(pending.counts[&("uid:0".into(), Refusal::Stranger)], 2);
    }

    #[test]
    fn every_codec_error_that_is_the_peers_fault_is_a_refusal() {
        let head = HttpError::TooLarge {
            what: "head",
            bytes: 9000,
            bytes_max: 8192,
        };
        assert_eq!(Refusal::of_http(&head), Some(Refusal::HeadTooLarge));
        assert_eq!(
            Refusal::HeadTooLarge.answer("p", "x").http_status(),
            431,
            "a large head is not a large body"
        );
        assert_eq!(
            Refusal::of_http(&HttpError::TooSlow { ms: 1 }),
            Some(Refusal::TooSlow)
        );
        assert_eq!(Refusal::of_http(&HttpError::Closed), None);
        assert_eq!(Refusal::Busy.answer("p", "").http_status(), 503);
        assert_eq!(Refusal::Stranger.answer("uid:7", "").http_status(), 403);
    }
}
