//! The metrics of `lsvblk serve`: the device's per-queue counters and the
//! volume's log, read at scrape time.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::encode::{Labels, counters, gauges, histograms, no_labels};
use crate::vhost::metrics::{DeviceMetrics, ErrorKind, Op};
use crate::volume::handover::Served;

/// Reads a served volume's device counters and log space on each scrape.
/// It does not keep the volume alive: the daemon closes or hands it over
/// at shutdown whatever the metrics thread is doing.
pub struct DeviceCollector {
    device: Arc<DeviceMetrics>,
    served: Weak<Served>,
}

impl DeviceCollector {
    /// A collector for the volume in `served`, with the counters `device`.
    pub fn new(device: Arc<DeviceMetrics>, served: &Arc<Served>) -> Self {
        DeviceCollector {
            device,
            served: Arc::downgrade(served),
        }
    }

    fn encode_device(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let queues = self.device.queues();
        let per_op = |get: &dyn Fn(usize, Op) -> u64| {
            let mut series = Vec::new();
            for (index, _) in queues.iter().enumerate() {
                for op in Op::ALL {
                    series.push((op_labels(index, op), get(index, op)));
                }
            }
            series
        };
        counters(
            encoder,
            "lsvblk_requests",
            "Requests completed, by queue and type (op).",
            &per_op(&|q, op| queues[q].op(op).requests.load(Ordering::Relaxed)),
        )?;
        counters(
            encoder,
            "lsvblk_request_bytes",
            "Bytes read or written by requests that succeeded (discard and write_zeroes: their ranges).",
            &per_op(&|q, op| queues[q].op(op).bytes.load(Ordering::Relaxed)),
        )?;
        let mut errors = Vec::new();
        for (index, queue) in queues.iter().enumerate() {
            for kind in ErrorKind::ALL {
                let labels = vec![("queue", index.to_string()), ("kind", kind.name().into())];
                errors.push((labels, queue.errors(kind)));
            }
        }
        counters(
            encoder,
            "lsvblk_request_errors",
            "Requests that failed: kind guest (malformed, out of range, read-only, unsupported) or host (the volume failed it).",
            &errors,
        )?;
        let invalid: Vec<(Labels, u64)> = queues
            .iter()
            .enumerate()
            .map(|(index, queue)| (queue_labels(index), queue.invalid()))
            .collect();
        counters(
            encoder,
            "lsvblk_invalid_requests",
            "Requests so malformed that their type is unknown (counted in errors as guest too).",
            &invalid,
        )?;
        let mut latencies = Vec::new();
        for (index, queue) in queues.iter().enumerate() {
            for op in Op::ALL {
                latencies.push((op_labels(index, op), queue.op(op).latency.snapshot()));
            }
        }
        histograms(
            encoder,
            "lsvblk_request_duration_seconds",
            "Time from taking a request off the ring to publishing its completion.",
            &latencies,
        )?;
        let in_flight: Vec<(Labels, u64)> = queues
            .iter()
            .enumerate()
            .map(|(index, queue)| (queue_labels(index), queue.in_flight()))
            .collect();
        gauges(
            encoder,
            "lsvblk_requests_in_flight",
            "Requests taken off the ring and not completed yet.",
            &in_flight,
        )
    }

    fn encode_volume(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let Some(served) = self.served.upgrade() else {
            return Ok(()); // closing
        };
        gauges(
            encoder,
            "lsvblk_volume_size_bytes",
            "Size of the volume the guest sees.",
            &[(no_labels(), served.superblock().size_bytes)],
        )?;
        // A standby daemon (an incoming migration) has no volume open yet.
        let Some(volume) = served.if_active() else {
            return Ok(());
        };
        drop(served);
        let log = volume.log();
        gauges(
            encoder,
            "lsvblk_log_bytes_since_checkpoint",
            "Bytes appended since the last checkpoint (what recovery would replay).",
            &[(no_labels(), log.bytes_since_checkpoint())],
        )?;
        if let Ok(Some(age)) = log.newest_checkpoint_age() {
            gauges(
                encoder,
                "lsvblk_log_checkpoint_age_seconds",
                "Time since the newest checkpoint was written.",
                &[(no_labels(), age.as_secs_f64())],
            )?;
        }
        // The index walk behind this is the one `lsvblk status` does; a
        // failure leaves the log's space series out of this scrape.
        let Ok(space) = volume.space() else {
            return Ok(());
        };
        drop(volume);
        let dead = space.file_bytes.saturating_sub(space.live_bytes);
        for (name, help, value) in [
            (
                "lsvblk_log_live_bytes",
                "Payload bytes of blocks the volume reads from its segments.",
                space.live_bytes,
            ),
            (
                "lsvblk_log_file_bytes",
                "Bytes of all segment files.",
                space.file_bytes,
            ),
            (
                "lsvblk_log_dead_bytes",
                "Segment bytes that are not live data (overwritten blocks, record headers and checksums): what compaction can reclaim.",
                dead,
            ),
            (
                "lsvblk_log_segments",
                "Segment files of the log.",
                space.segments.len() as u64,
            ),
        ] {
            gauges(encoder, name, help, &[(no_labels(), value)])?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCollector").finish_non_exhaustive()
    }
}

impl Collector for DeviceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.encode_device(&mut encoder)?;
        self.encode_volume(&mut encoder)
    }
}

fn queue_labels(queue: usize) -> Labels {
    vec![("queue", queue.to_string())]
}

fn op_labels(queue: usize, op: Op) -> Labels {
    vec![("queue", queue.to_string()), ("op", op.name().to_string())]
}
