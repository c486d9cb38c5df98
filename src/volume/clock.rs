//! Where time comes from: the system clock, or one tests move.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where time comes from, so tests can move it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Seconds since the Unix epoch.
    fn now_unix_s(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_s(&self) -> u64 {
        unix_now_s()
    }
}

/// The system clock moved by the number of seconds written in a file,
/// re-read at every call (`lsvblk serve --clock-skew-file`, for tests that
/// age keys in a running daemon). A missing or unreadable file means 0.
#[derive(Debug)]
pub struct SkewedClock(pub std::path::PathBuf);

impl Clock for SkewedClock {
    fn now_unix_s(&self) -> u64 {
        let skew: i64 = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        unix_now_s().saturating_add_signed(skew)
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock showing `now_unix_s`.
    pub fn new(now_unix_s: u64) -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(now_unix_s)))
    }

    /// Moves the clock forward by `seconds`.
    pub fn advance(&self, seconds: u64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix_s(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Seconds since the Unix epoch, by the system clock (0 before it).
pub(crate) fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
