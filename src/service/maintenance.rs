//! Operations on a volume that need no key: snapshots, compaction, space.
//! The daemon runs them for its control socket; the command line runs the
//! same functions itself when no daemon serves the volume. Each reports
//! what it did as one JSON object (what `lsvblk … --json` prints).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde_json::{Value, json};

use crate::store::CompactOptions;
use crate::volume::{Volume, VolumeError};

/// Takes snapshot `name` and writes its index; reports how long the
/// snapshot itself took (the point in the log, durable) and the index.
pub fn snapshot_create(volume: &Volume, name: &str) -> Result<Value, VolumeError> {
    let started = Instant::now();
    let meta = volume.create_snapshot(name)?;
    let create_ms = started.elapsed().as_secs_f64() * 1e3;
    volume.materialize_snapshots()?;
    let index_ms = started.elapsed().as_secs_f64() * 1e3 - create_ms;
    tracing::info!(snapshot = name, create_ms, "snapshot taken");
    Ok(json!({
        "name": meta.name,
        "snapshot_id": meta.snapshot_id,
        "key_ids": meta.keys.iter().map(|k| k.key_id).collect::<Vec<_>>(),
        "acl": meta.acl,
        "create_ms": create_ms,
        "index_ms": index_ms,
    }))
}

/// Deletes snapshot `name`.
pub fn snapshot_delete(volume: &Volume, name: &str) -> Result<Value, VolumeError> {
    volume.delete_snapshot(name)?;
    tracing::info!(snapshot = name, "snapshot deleted");
    Ok(json!({ "deleted": name }))
}

/// Runs one compaction pass, reporting progress as JSON values.
pub fn compact(
    volume: &Volume,
    rate_mib_s: Option<u64>,
    live_ratio_max: Option<f64>,
    stop: Option<Arc<AtomicBool>>,
    progress: &mut dyn FnMut(Value),
) -> Result<Value, VolumeError> {
    let live_ratio_max = live_ratio_max.unwrap_or(crate::limits::COMPACT_LIVE_RATIO_DEFAULT);
    if !(0.0..=1.0).contains(&live_ratio_max) {
        return Err(VolumeError::BadOption(format!(
            "live ratio {live_ratio_max}: must be between 0 and 1"
        )));
    }
    let options = CompactOptions {
        live_ratio_max,
        rate_bytes_per_s: rate_mib_s.filter(|r| *r > 0).map(|r| r << 20),
        stop,
        crash_after_steps: None,
    };
    let started = Instant::now();
    let before = volume.space()?;
    let report = volume.compact(&options, &mut |p| {
        progress(serde_json::to_value(p).unwrap_or(Value::Null));
    })?;
    let after = volume.space()?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        moved = report.bytes_moved,
        freed = report.bytes_freed,
        seconds,
        "compaction done"
    );
    Ok(json!({
        "report": report,
        "seconds": seconds,
        "mib_per_s": report.bytes_moved as f64 / (1 << 20) as f64 / seconds.max(1e-9),
        "log_bytes_before": before.file_bytes,
        "log_bytes_after": after.file_bytes,
        "live_bytes": after.live_bytes,
    }))
}

/// Space use (live and dead bytes), for `status` and `inspect`.
pub fn space(volume: &Volume) -> Result<Value, VolumeError> {
    let space = volume.space()?;
    let pinned: u64 = space
        .segments
        .iter()
        .filter(|s| s.pinned)
        .map(|s| s.file_bytes)
        .sum();
    Ok(json!({
        "live_bytes": space.live_bytes,
        "log_bytes": space.file_bytes,
        "dead_bytes": space.file_bytes.saturating_sub(space.live_bytes),
        "segments": space.segments.len(),
        "snapshot_pinned_bytes": pinned,
        "spare_segments": space.spare_segments,
        "spare_bytes": space.spare_bytes,
        "base": volume.base_use()?,
    }))
}
