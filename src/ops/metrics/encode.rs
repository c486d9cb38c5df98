//! Writing metric families through `prometheus-client`'s encoder: the
//! collectors read their sources at scrape time and hand the values here.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::histogram::HistogramSnapshot;

/// Labels of one series: name and value pairs.
pub type Labels = Vec<(&'static str, String)>;

/// No labels.
pub fn no_labels() -> Labels {
    Vec::new()
}

/// One counter family: `NAME_total{labels} value` per series.
pub fn counters(
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

/// One gauge family (integers or fractions: seconds, rates).
pub fn gauges<V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, V)],
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        metric.encode_family(labels)?.encode_gauge(value)?;
    }
    Ok(())
}

/// One histogram family, a series per labelled snapshot.
pub fn histograms(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, HistogramSnapshot)],
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, snapshot) in series {
        histogram(&mut metric, labels, snapshot)?;
    }
    Ok(())
}

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
