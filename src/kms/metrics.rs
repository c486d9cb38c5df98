//! What lsvkms counts while it serves, for `lsvkms serve --metrics`:
//! requests by endpoint and decision and their latency, refusals by
//! reason, and how long the audit log takes to make a batch durable.
//!
//! Label values come from fixed sets (the API's endpoints, the error
//! codes, the refusal codes): a client cannot make up new series.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ops::metrics::histogram::{HistogramSnapshot, LatencyHistogram};
use crate::sync::LockOrRecover;

/// The endpoints metrics tell apart (`endpoint="..."`), `other` last.
pub const ENDPOINTS: [&str; 13] = [
    "health",
    "datakey",
    "unwrap",
    "rewrap",
    "wrapping_key",
    "wrapping_key_rotate",
    "wrapping_key_min_version",
    "key_info",
    "key_state",
    "keys_mine",
    "lease_revoke",
    "audit",
    "other",
];

/// The endpoint `method path` is (an index into [`ENDPOINTS`]); anything
/// the API does not serve is `other`.
pub fn endpoint(method: &str, target: &str) -> usize {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let name = match (method, segments.as_slice()) {
        ("GET", ["v1", "health"]) => "health",
        ("POST", ["v1", "datakey"]) => "datakey",
        ("POST", ["v1", "unwrap"]) => "unwrap",
        ("POST", ["v1", "rewrap"]) => "rewrap",
        ("GET", ["v1", "wrapping-key"]) => "wrapping_key",
        ("POST", ["v1", "wrapping-key", "rotate"]) => "wrapping_key_rotate",
        ("POST", ["v1", "wrapping-key", "min-version"]) => "wrapping_key_min_version",
        ("GET", ["v1", "keys", _]) => "key_info",
        ("POST", ["v1", "keys", "mine"]) => "keys_mine",
        ("POST", ["v1", "keys", _, _]) => "key_state",
        ("POST", ["v1", "leases", _, "revoke"]) => "lease_revoke",
        ("GET", ["v1", "audit"]) => "audit",
        _ => "other",
    };
    ENDPOINTS
        .iter()
        .position(|e| *e == name)
        .unwrap_or(ENDPOINTS.len() - 1)
}

/// How a request ended (`decision="..."`), as the audit log says it:
/// answered (2xx, 3xx), refused (4xx) or failed (5xx).
pub const DECISIONS: [&str; 3] = ["allow", "deny", "error"];

fn decision(status: u16) -> usize {
    match status {
        0..=399 => 0,
        400..=499 => 1,
        _ => 2,
    }
}

/// Where a refusal happened (`stage="..."`): on the connection, before
/// any API call (its reason a refusal code), or by the API (an error code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// A stranger, no slot, a request too large, malformed or too slow.
    Connection,
    /// A call the API refused or failed.
    Call,
}

impl Stage {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Connection => "connection",
            Stage::Call => "call",
        }
    }
}

/// The service's counters; shared by every connection thread.
pub struct KmsMetrics {
    requests: [[AtomicU64; DECISIONS.len()]; ENDPOINTS.len()],
    latency: [LatencyHistogram; ENDPOINTS.len()],
    refusals: Mutex<BTreeMap<(Stage, &'static str), u64>>,
    audit_sync: Arc<LatencyHistogram>,
}

/// Requests of one endpoint and decision, as read at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestCount {
    /// The endpoint's name.
    pub endpoint: &'static str,
    /// `allow`, `deny` or `error`.
    pub decision: &'static str,
    /// Requests so far.
    pub count: u64,
}

impl KmsMetrics {
    /// Counters at zero; `audit_sync` is the audit log's own histogram of
    /// its batches' write and sync.
    pub fn new(audit_sync: Arc<LatencyHistogram>) -> Self {
        Self {
            requests: Default::default(),
            latency: Default::default(),
            refusals: Mutex::new(BTreeMap::new()),
            audit_sync,
        }
    }

    /// Counts a request to `endpoint` (see [`endpoint`]) answered with
    /// `status` after `latency`.
    pub fn answered(&self, endpoint: usize, status: u16, latency: Duration) {
        let endpoint = endpoint.min(ENDPOINTS.len() - 1);
        self.requests[endpoint][decision(status)].fetch_add(1, Ordering::Relaxed);
        self.latency[endpoint].observe(latency);
    }

    /// Counts a refusal at `stage` for `reason` (a code from a fixed set).
    pub fn refused(&self, stage: Stage, reason: &'static str) {
        *self
            .refusals
            .lock_or_recover()
            .entry((stage, reason))
            .or_default() += 1;
    }

    /// Every endpoint's requests by decision.
    pub fn requests(&self) -> Vec<RequestCount> {
        let mut counts = Vec::with_capacity(ENDPOINTS.len() * DECISIONS.len());
        for (endpoint, by_decision) in ENDPOINTS.iter().zip(&self.requests) {
            for (decision, count) in DECISIONS.iter().zip(by_decision) {
                counts.push(RequestCount {
                    endpoint,
                    decision,
                    count: count.load(Ordering::Relaxed),
                });
            }
        }
        counts
    }

    /// Every endpoint's latency histogram.
    pub fn latencies(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        ENDPOINTS
            .iter()
            .zip(&self.latency)
            .map(|(endpoint, histogram)| (*endpoint, histogram.snapshot()))
            .collect()
    }

    /// Refusals so far by stage and reason (only those seen).
    pub fn refusals(&self) -> Vec<(Stage, &'static str, u64)> {
        self.refusals
            .lock_or_recover()
            .iter()
            .map(|((stage, reason), count)| (*stage, *reason, *count))
            .collect()
    }

    /// The audit log's batch write-and-sync times.
    pub fn audit_sync(&self) -> HistogramSnapshot {
        self.audit_sync.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(method: &str, target: &str) -> &'static str {
        ENDPOINTS[endpoint(method, target)]
    }

    #[test]
    fn endpoints_are_a_fixed_set() {
        assert_eq!(name("POST", "/v1/unwrap"), "unwrap");
        assert_eq!(name("GET", "/v1/keys/abc"), "key_info");
        assert_eq!(name("POST", "/v1/keys/abc/disable"), "key_state");
        assert_eq!(name("POST", "/v1/keys/mine"), "keys_mine");
        assert_eq!(name("GET", "/v1/audit?limit=3"), "audit");
        assert_eq!(name("GET", "/v1/unwrap"), "other");
        assert_eq!(name("POST", "/made/up/path"), "other");
    }

    #[test]
    fn decisions_follow_the_status() {
        let metrics = KmsMetrics::new(Arc::default());
        let ms = Duration::from_millis(1);
        metrics.answered(endpoint("POST", "/v1/unwrap"), 200, ms);
        metrics.answered(endpoint("POST", "/v1/unwrap"), 403, ms);
        metrics.answered(endpoint("POST", "/v1/unwrap"), 503, ms);
        metrics.answered(endpoint("GET", "/v1/keys/x"), 304, ms);
        let count = |endpoint: &str, decision: &str| {
            metrics
                .requests()
                .into_iter()
                .find(|c| c.endpoint == endpoint && c.decision == decision)
                .unwrap()
                .count
        };
        assert_eq!(count("unwrap", "allow"), 1);
        assert_eq!(count("unwrap", "deny"), 1);
        assert_eq!(count("unwrap", "error"), 1);
        assert_eq!(count("key_info", "allow"), 1);
        let unwrap = metrics.latencies()[endpoint("POST", "/v1/unwrap")].1.count;
        assert_eq!(unwrap, 3);
        metrics.refused(Stage::Call, "not_on_acl");
        metrics.refused(Stage::Call, "not_on_acl");
        assert_eq!(metrics.refusals(), vec![(Stage::Call, "not_on_acl", 2)]);
    }
}
