//! What this process's calls to lsvkms came to, all clients together:
//! successes, failures by kind and when the last success was. A serving
//! daemon's metrics show it (time since lsvkms last answered, failures).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::client::ClientError;
use crate::sync::LockOrRecover;

/// The process's record of its lsvkms calls.
pub struct CallRecord {
    successes: AtomicU64,
    unreachable: AtomicU64,
    refused: AtomicU64,
    last_success: Mutex<Option<Instant>>,
}

/// A [`CallRecord`] read at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallSnapshot {
    /// Calls answered with success (a 2xx or 3xx).
    pub successes: u64,
    /// Calls that got no usable answer: lsvkms down, a timeout, a garbled
    /// answer (after the client's retries, if it retries).
    pub unreachable: u64,
    /// Calls lsvkms answered with an error (4xx, 5xx).
    pub refused: u64,
    /// Time since the last success (`None`: none yet).
    pub since_last_success: Option<Duration>,
}

static RECORD: CallRecord = CallRecord {
    successes: AtomicU64::new(0),
    unreachable: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    last_success: Mutex::new(None),
};

/// This process's record.
pub fn call_record() -> &'static CallRecord {
    &RECORD
}

impl CallRecord {
    /// Counts one call's outcome (once, however often it was retried).
    pub fn note<T>(&self, outcome: &Result<T, ClientError>) {
        let counter = match outcome {
            Ok(_)
            | Err(ClientError::Api {
                status: 0..=399, ..
            }) => {
                *self.last_success.lock_or_recover() = Some(Instant::now());
                &self.successes
            }
            Err(ClientError::Api { .. }) => &self.refused,
            Err(_) => &self.unreachable,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The record now.
    pub fn snapshot(&self) -> CallSnapshot {
        CallSnapshot {
            successes: self.successes.load(Ordering::Relaxed),
            unreachable: self.unreachable.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            since_last_success: self.last_success.lock_or_recover().map(|at| at.elapsed()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_by_kind_and_success_is_timed() {
        let record = CallRecord {
            successes: AtomicU64::new(0),
            unreachable: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            last_success: Mutex::new(None),
        };
        assert_eq!(record.snapshot().since_last_success, None);
        let api = |status| ClientError::Api {
            status,
            code: "x".into(),
            message: String::new(),
        };
        record.note::<()>(&Err(api(403)));
        record.note::<()>(&Err(ClientError::Timeout { timeout_ms: 1 }));
        assert_eq!(record.snapshot().since_last_success, None);
        record.note(&Ok(()));
        record.note::<()>(&Err(api(304)));
        let snapshot = record.snapshot();
        assert_eq!(
            (snapshot.successes, snapshot.refused, snapshot.unreachable),
            (2, 1, 1)
        );
        assert!(snapshot.since_last_success.unwrap() < Duration::from_secs(60));
    }
}
