//! What the uploader does when an upload fails.
//!
//! Two kinds of failure, told apart by the store's answer:
//! - **transient** (the store unreachable, timing out, answering 5xx or 429
//!   until the client's own retry deadline passed; a local file that could
//!   not be read): retried with backoff, 200 ms doubling to 5 s, for as long
//!   as it lasts. Waiters (a FLUSH, a clean stop) wait up to their own
//!   deadline (`--store-wait`).
//! - a **refusal** (credentials refused or revoked: 401/403; the bucket
//!   gone: `NoSuchBucket`; credentials or settings we cannot use):
//!   retrying the same request soon will not help, so it is reported at once
//!   (one error line in the log, `upload.refused` in `lsvblk status`,
//!   `lsvblk_upload_store_refusing` in the metrics), every wait for the store
//!   fails at once while it lasts (a FLUSH returns an I/O error to the guest
//!   instead of hanging), and the upload is tried again every
//!   10 s: once an operator restores the key or the bucket,
//!   the next attempt succeeds, the refusal clears and uploads resume.
//!
//! A bucket that was deleted may come back empty: before the next upload
//! after a `NoSuchBucket` the uploader checks that the store still holds the
//! volume (its `volume-id`). If it does not, the store lost the volume's
//! objects, and uploading on would make a remote FLUSH claim what the store
//! no longer has: the refusal stays (`RemoteError::StoreLost`) until the
//! daemon stops; the local directory still holds every write.
//!
//! Other answers retrying may or may not change (a 400 such as S3's
//! `RequestTimeout` under load, a 404 of one object) count as transient: a
//! slow store must never fail a FLUSH early.
//!
//! Either way a failure is logged once when it starts (and once more if it
//! turns from one kind into the other), and once when uploads resume, never
//! per retry.

use std::time::{Duration, Instant};

use super::super::error::RemoteError;
use super::super::layout::{VOLUME_ID_KEY, root_key};
use super::{Shared, State};
use crate::objstore::Error as StoreError;

/// First wait after a transient failure; doubles up to [`BACKOFF_MAX`].
pub(super) const BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// Longest wait between two attempts of one upload after transient failures.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an upload the store refused is tried again.
pub(super) const REFUSED_RETRY: Duration = Duration::from_secs(10);

/// The store refuses the volume's uploads (see the module doc): what
/// `lsvblk status` shows as `upload.refused`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Refusal {
    /// The store's answer to the last attempt.
    pub error: String,
    /// Seconds since the first refused attempt.
    pub for_s: f64,
    /// Attempts refused since then.
    pub attempts: u64,
}

/// An ongoing run of failed uploads.
pub(super) struct Failing {
    refused: bool,
    since: Instant,
    attempts: u64,
    error: String,
}

impl Failing {
    /// The refusal `status` shows, if this is one.
    pub(super) fn refusal(&self) -> Option<Refusal> {
        self.refused.then(|| Refusal {
            error: self.error.clone(),
            for_s: self.since.elapsed().as_secs_f64(),
            attempts: self.attempts,
        })
    }
}

/// Whether `error` is the store refusing the request (see the module
/// doc), as opposed to failing to answer it.
pub(super) fn is_refusal(error: &RemoteError) -> bool {
    match error {
        RemoteError::Store(error) => matches!(
            error,
            StoreError::CredentialsRefused { .. }
                | StoreError::BucketMissing { .. }
                | StoreError::InvalidKey { .. }
                | StoreError::Credentials { .. }
                | StoreError::Config { .. }
        ),
        RemoteError::StoreLost => true,
        _ => false,
    }
}

impl Shared {
    /// After the bucket went missing: whether the store still holds the
    /// volume (see `failures.rs`).
    pub(super) fn still_stored(&self) -> Result<(), RemoteError> {
        if !self.lock().bucket_missing {
            return Ok(());
        }
        // A GET, not a HEAD: a HEAD's answer has no body to tell a missing
        // bucket (`NoSuchBucket`) from a missing object.
        match self.store.get(&root_key(VOLUME_ID_KEY)) {
            Ok(_) => {
                self.lock().bucket_missing = false;
                Ok(())
            }
            Err(StoreError::NotFound { .. }) => Err(RemoteError::StoreLost),
            Err(error) => Err(error.into()),
        }
    }

    /// Notes a failed upload attempt and waits before the next one (less if
    /// the uploader stops meanwhile). False when the worker is to stop
    /// (fenced or stopped) instead of trying again.
    pub(super) fn failed(&self, error: &RemoteError, backoff: &mut Duration) -> bool {
        if matches!(error, RemoteError::Fenced { .. }) {
            // Logged where it was found; the worker stops.
            return false;
        }
        let refused = is_refusal(error);
        let text = error.to_string();
        let mut state = self.lock();
        match error {
            RemoteError::Store(StoreError::BucketMissing { .. }) => state.bucket_missing = true,
            RemoteError::StoreLost => state.store_lost = true,
            _ => {}
        }
        state.status.last_error = Some(text.clone());
        let starts = state.failing.as_ref().is_none_or(|f| f.refused != refused);
        if starts {
            if refused {
                tracing::error!(
                    error = %text,
                    retry_s = REFUSED_RETRY.as_secs(),
                    "the object store refuses the volume's uploads: FLUSHes that wait for the \
                     store fail until it accepts them again"
                );
            } else {
                tracing::warn!(error = %text, "uploads are failing; retrying with backoff");
            }
            state.failing = Some(Failing {
                refused,
                since: Instant::now(),
                attempts: 0,
                error: String::new(),
            });
        }
        if let Some(failing) = state.failing.as_mut() {
            failing.attempts += 1;
            failing.error = text;
        }
        // Waiters fail at once on a refusal.
        self.changed.notify_all();
        let wait = if refused {
            REFUSED_RETRY
        } else {
            let wait = *backoff;
            *backoff = (*backoff * 2).min(BACKOFF_MAX);
            wait
        };
        let until = Instant::now() + wait;
        loop {
            if state.status.fenced_by.is_some() || state.stopped {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// Notes an upload that succeeded: a run of failures, if any, is over.
pub(super) fn succeeded(state: &mut State) {
    state.status.last_error = None;
    if let Some(failing) = state.failing.take() {
        tracing::info!(
            failed_attempts = failing.attempts,
            after_s = failing.since.elapsed().as_secs(),
            "uploads resumed"
        );
    }
}

/// Fails a wait for the store at once while the store refuses uploads.
pub(super) fn check_refused(state: &State) -> Result<(), RemoteError> {
    if state.store_lost {
        return Err(RemoteError::StoreLost);
    }
    match state.failing.as_ref().and_then(Failing::refusal) {
        Some(refusal) => Err(RemoteError::Refused {
            error: refusal.error,
            for_s: refusal.for_s,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(error: StoreError) -> RemoteError {
        RemoteError::Store(error)
    }

    #[test]
    fn refusals_are_the_answers_retrying_does_not_change() {
        let refused = [
            store(StoreError::CredentialsRefused {
                detail: "InvalidAccessKeyId".into(),
            }),
            store(StoreError::BucketMissing { bucket: "b".into() }),
            store(StoreError::Credentials {
                reason: "no AWS_ACCESS_KEY_ID".into(),
            }),
        ];
        for error in &refused {
            assert!(is_refusal(error), "{error}");
        }
        let transient = [
            store(StoreError::Transient {
                op: "PUT",
                key: "k".into(),
                elapsed_s: 60.0,
                detail: "connection refused".into(),
            }),
            store(StoreError::Local {
                op: "write",
                path: "/x".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            }),
            RemoteError::io("/x", std::io::Error::from_raw_os_error(libc::EIO)),
            RemoteError::Fenced { epoch: 1, by: 2 },
            // S3 answers 400 RequestTimeout to a client too slow to send.
            store(StoreError::Permanent {
                op: "PUT",
                key: "k".into(),
                detail: "400 <Code>RequestTimeout</Code>".into(),
            }),
            store(StoreError::NotFound { key: "k".into() }),
        ];
        for error in &transient {
            assert!(!is_refusal(error), "{error}");
        }
    }
}
