//! Operations on a volume that need no key: snapshots, compaction, status.
//! The daemon runs them for its control socket; the command line runs the
//! same functions itself when no daemon serves the volume.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use lsvblk::crypto::CryptoPool;
use lsvblk::store::{CompactOptions, StoreError};
use lsvblk::volume::{Volume, VolumeError, VolumeOptions};
use serde_json::{Value, json};

use crate::control::{self, ControlError, ControlRequest};
use crate::exit::Failure;

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
    let live_ratio_max = live_ratio_max.unwrap_or(lsvblk::limits::COMPACT_LIVE_RATIO_DEFAULT);
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
    }))
}

/// The control error for a volume error (its stable kind and message).
pub fn control_error(error: VolumeError) -> ControlError {
    let kind = match &error {
        VolumeError::NoSuchSnapshot { .. } => ControlError::NOT_FOUND,
        VolumeError::SnapshotExists { .. } => ControlError::ALREADY_EXISTS,
        VolumeError::SnapshotInUse { .. }
        | VolumeError::SnapshotNotReady { .. }
        | VolumeError::Busy { .. }
        | VolumeError::Store(StoreError::Interrupted) => ControlError::BUSY,
        VolumeError::BadOption(_) | VolumeError::ReadOnly => ControlError::BAD_REQUEST,
        VolumeError::Io { .. } | VolumeError::Store(StoreError::Io { .. }) => ControlError::IO,
        _ => ControlError::INTERNAL,
    };
    ControlError::new(kind, error.to_string())
}

/// Where to run an operation: the daemon serving the volume, or here.
pub enum Reach {
    /// A daemon holds the volume; talk to its control socket.
    Served,
    /// Nobody holds it; opened here without a key.
    Local(Box<Volume>),
}

/// Opens the volume here if nobody serves it, else says to ask the daemon.
pub fn reach(dir: &Path, read_only: bool) -> Result<Reach, Failure> {
    let pool = CryptoPool::new(1, lsvblk::limits::CRYPTO_CHUNK_BYTES_DEFAULT)
        .map_err(Failure::internal)?;
    let options = VolumeOptions {
        read_only,
        pool: Some(Arc::new(pool)),
        ..VolumeOptions::default()
    };
    match Volume::open_for_maintenance(dir, &options) {
        Ok(volume) => Ok(Reach::Local(Box::new(volume))),
        Err(VolumeError::Busy { .. }) => Ok(Reach::Served),
        Err(error) => Err(error.into()),
    }
}

/// Runs `request` on the daemon serving `dir`, or `local` on the volume
/// opened here; progress values go to `progress` either way.
pub fn run_anywhere(
    dir: &Path,
    request: ControlRequest,
    read_only: bool,
    progress: &mut dyn FnMut(&Value),
    local: impl FnOnce(&Volume, &mut dyn FnMut(Value)) -> Result<Value, VolumeError>,
) -> Result<Value, Failure> {
    match reach(dir, read_only)? {
        Reach::Served => control::call(&control::control_socket_path(dir), &request, progress)
            .map_err(Failure::from),
        Reach::Local(volume) => {
            let result = local(&volume, &mut |value| progress(&value));
            let closed = volume.close();
            let value = result?;
            closed?;
            Ok(value)
        }
    }
}

/// Prints `value` as JSON, or as `key: value` lines.
pub fn print(value: &Value, as_json: bool) {
    if as_json {
        println!("{value}");
        return;
    }
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match value {
                    Value::String(text) => println!("{key:<16} {text}"),
                    other => println!("{key:<16} {other}"),
                }
            }
        }
        other => println!("{other}"),
    }
}
