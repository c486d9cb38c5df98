//! TEST-ONLY: hold one request back while later ones complete.
//!
//! The restart tests need a backend killed while its completions are out of
//! order: an earlier request still in flight, later ones already returned to
//! the guest. That is exactly what a frontend without inflight tracking gets
//! wrong, and it is hard to hit by chance. With the environment variable
//! [`HOLD_VARIABLE`] set to N, the N-th request this process takes off any
//! queue is neither executed nor completed; the ones after it run as usual.
//! The held request is finished when its queue stops (`GET_VRING_BASE`), or by
//! the next process, from the inflight area, after a kill.
//!
//! Compiled in, off unless the variable is set, read once per process. Never
//! set it on a production daemon: a held request stalls the guest's I/O.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that turns the hook on (test-only).
pub const HOLD_VARIABLE: &str = "LSVBLK_TEST_HOLD_REQUEST";

/// Completions after the held request at which the hook says so in the log
/// (the test waits for that line, then kills the daemon).
pub const COMPLETIONS_REPORTED: u64 = 8;

/// The hook's state for this process.
pub(crate) struct HoldHook {
    /// Which request to hold (1-based), if any.
    target: Option<u64>,
    seen: AtomicU64,
    completed_after: AtomicU64,
}

impl HoldHook {
    /// The process-wide hook, configured from [`HOLD_VARIABLE`].
    pub(crate) fn get() -> &'static HoldHook {
        static HOOK: OnceLock<HoldHook> = OnceLock::new();
        HOOK.get_or_init(|| {
            let target = std::env::var(HOLD_VARIABLE)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|&n| n > 0);
            if let Some(n) = target {
                tracing::warn!(
                    request = n,
                    "TEST HOOK {HOLD_VARIABLE} is set: request {n} will be held back"
                );
            }
            HoldHook::new(target)
        })
    }

    pub(crate) fn new(target: Option<u64>) -> Self {
        Self {
            target,
            seen: AtomicU64::new(0),
            completed_after: AtomicU64::new(0),
        }
    }

    /// Counts one request taken off a queue; true if it is the one to hold.
    pub(crate) fn take(&self, head: u16) -> bool {
        let Some(target) = self.target else {
            return false;
        };
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if n == target {
            tracing::warn!(head, "test hook: holding request back");
            return true;
        }
        false
    }

    /// Counts `count` completions published (after the held one, if any).
    pub(crate) fn completed(&self, count: u64) {
        let Some(target) = self.target else {
            return;
        };
        if self.seen.load(Ordering::Relaxed) < target {
            return;
        }
        let before = self.completed_after.fetch_add(count, Ordering::Relaxed);
        if before < COMPLETIONS_REPORTED && before + count >= COMPLETIONS_REPORTED {
            tracing::warn!(
                completed = before + count,
                "test hook: later requests completed while the held one waits"
            );
        }
    }
}
