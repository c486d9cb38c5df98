//! The metrics of `lsvblk serve`: the device's per-queue counters and the
//! volume's log, read at scrape time.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::vhost::metrics::{DeviceMetrics, ErrorKind, HistogramSnapshot, Op};
use crate::volume::handover::Served;

/// Labels of one series: name and value pairs.
type Labels = Vec<(&'static str, String)>;

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
        let mut metric = encoder.encode_descriptor(
            "lsvblk_request_duration_seconds",
            "Time from taking a request off the ring to publishing its completion.",
            None,
            MetricType::Histogram,
        )?;
        for (index, queue) in queues.iter().enumerate() {
            for op in Op::ALL {
                let labels = op_labels(index, op);
                histogram(&mut metric, &labels, &queue.op(op).latency.snapshot())?;
            }
        }
        let in_flight: Vec<(Labels, i64)> = queues
            .iter()
            .enumerate()
            .map(|(index, queue)| (queue_labels(index), saturate(queue.in_flight())))
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
        let none: Labels = Vec::new();
        gauges(
            encoder,
            "lsvblk_volume_size_bytes",
            "Size of the volume the guest sees.",
            &[(none.clone(), saturate(served.superblock().size_bytes))],
        )?;
        // The index walk behind this is the one `lsvblk status` does; a
        // failure leaves the log's series out of this scrape.
        // A standby daemon (an incoming migration) has no volume open yet.
        let Some(volume) = served.if_active() else {
            return Ok(());
        };
        drop(served);
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
            gauges(encoder, name, help, &[(none.clone(), saturate(value))])?;
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

fn saturate(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// One counter family: `NAME_total{labels} value` per series.
fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        metric
            .encode_family(labels)?
            .encode_counter::<NoLabelSet, _, u64>(value, None)?;
    }
    Ok(())
}

/// One gauge family.
fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, i64)],
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        metric.encode_family(labels)?.encode_gauge(value)?;
    }
    Ok(())
}

/// One series of a histogram family.
fn histogram(
    metric: &mut MetricEncoder,
    labels: &Labels,
    snapshot: &HistogramSnapshot,
) -> fmt::Result {
    metric
        .encode_family(labels)?
        .encode_histogram::<NoLabelSet>(
            snapshot.sum_seconds,
            snapshot.count,
            &snapshot.buckets,
            None,
        )
}
