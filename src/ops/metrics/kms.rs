//! The metrics of `lsvkms serve`: the service's request, refusal and audit
//! counters ([`crate::kms::metrics`]) and its health, read at scrape time.

use std::fmt;
use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::encode::{Labels, counters, gauges, histograms, no_labels};
use crate::kms::service::Service;

/// Reads a running service's counters on each scrape; does not keep the
/// service alive (it shuts down whatever the metrics thread does).
pub struct KmsCollector {
    service: Weak<Service>,
}

impl KmsCollector {
    /// A collector for `service`.
    pub fn new(service: &Arc<Service>) -> Self {
        Self {
            service: Arc::downgrade(service),
        }
    }
}

impl fmt::Debug for KmsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsCollector").finish_non_exhaustive()
    }
}

impl Collector for KmsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Some(service) = self.service.upgrade() else {
            return Ok(()); // shutting down
        };
        let metrics = service.metrics();
        let requests: Vec<(Labels, u64)> = metrics
            .requests()
            .into_iter()
            .map(|c| {
                let labels = vec![
                    ("endpoint", c.endpoint.to_owned()),
                    ("decision", c.decision.to_owned()),
                ];
                (labels, c.count)
            })
            .collect();
        counters(
            &mut encoder,
            "lsvkms_requests",
            "API requests answered, by endpoint and decision (allow: 2xx/3xx, deny: 4xx, error: 5xx).",
            &requests,
        )?;
        let latencies: Vec<(Labels, _)> = metrics
            .latencies()
            .into_iter()
            .map(|(endpoint, snapshot)| (vec![("endpoint", endpoint.to_owned())], snapshot))
            .collect();
        histograms(
            &mut encoder,
            "lsvkms_request_duration_seconds",
            "Time from a request's last byte read to its answer written (audit sync included).",
            &latencies,
        )?;
        let refusals: Vec<(Labels, u64)> = metrics
            .refusals()
            .into_iter()
            .map(|(stage, reason, count)| {
                let labels = vec![
                    ("stage", stage.name().to_owned()),
                    ("reason", reason.to_owned()),
                ];
                (labels, count)
            })
            .collect();
        counters(
            &mut encoder,
            "lsvkms_refusals",
            "Refusals by stage (connection: before any API call; call: the API's answer) and reason (the refusal or error code).",
            &refusals,
        )?;
        histograms(
            &mut encoder,
            "lsvkms_audit_sync_duration_seconds",
            "Time to write and fdatasync one batch of audit records (answers wait for it).",
            &[(no_labels(), metrics.audit_sync())],
        )?;
        let (healthy, health) = service.health();
        gauges(
            &mut encoder,
            "lsvkms_audit_writable",
            "1 while the audit log takes records; 0 while every call is refused because it does not.",
            &[(no_labels(), i64::from(healthy))],
        )?;
        if let Some(wrapping) = health.wrapping_key {
            gauges(
                &mut encoder,
                "lsvkms_wrapping_key_version",
                "The wrapping-key version new blobs are sealed under.",
                &[(no_labels(), i64::from(wrapping.current_version))],
            )?;
        }
        Ok(())
    }
}
