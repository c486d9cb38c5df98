//! The metrics of a served volume's upkeep: compaction, keys and rotation,
//! the uploads to an object store (`upload.rs`), and the daemon's calls to
//! lsvkms. Read at scrape time from the same
//! status `lsvblk status` shows ([`crate::service::ServedVolume::status`]),
//! so the two never disagree, and from the client's call record
//! ([`crate::kms::calls`]).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use serde_json::Value;

use super::encode::{Labels, counters, gauges, no_labels};
use crate::kms::calls::call_record;

/// Where the upkeep's status comes from: `None` while the daemon has no
/// writable volume active (standby, read-only, shutting down).
pub type StatusSource = Box<dyn Fn() -> Option<Value> + Send + Sync>;

/// Reads the upkeep's status on each scrape.
pub struct UpkeepCollector {
    status: StatusSource,
}

impl UpkeepCollector {
    /// A collector of what `status` returns.
    pub fn new(status: StatusSource) -> Self {
        Self { status }
    }
}

impl fmt::Debug for UpkeepCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpkeepCollector").finish_non_exhaustive()
    }
}

impl Collector for UpkeepCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        encode_kms_calls(&mut encoder)?;
        let Some(status) = (self.status)() else {
            return Ok(());
        };
        encode_compaction(&mut encoder, &status["compaction"])?;
        super::upload::encode_upload(&mut encoder, &status["upload"])?;
        encode_keys(&mut encoder, &status["keys"])
    }
}

fn number(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

fn flag(present: bool) -> i64 {
    i64::from(present)
}

/// One unlabelled gauge.
fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> fmt::Result {
    gauges(encoder, name, help, &[(no_labels(), value)])
}

/// A pass's progress (`bytes_moved` of `bytes_total`) as a ratio; 0
/// before it knows its total.
fn progress_ratio(progress: &Value) -> f64 {
    let total = number(&progress["bytes_total"]);
    if total == 0 {
        return 0.0;
    }
    number(&progress["bytes_moved"]) as f64 / total as f64
}

fn encode_compaction(encoder: &mut DescriptorEncoder, compaction: &Value) -> fmt::Result {
    let running = &compaction["running"];
    gauge(
        encoder,
        "lsvblk_compaction_running",
        "1 while a compaction pass runs (background or `lsvblk compact`).",
        flag(!running.is_null()),
    )?;
    gauge(
        encoder,
        "lsvblk_compaction_progress_ratio",
        "Share of the running pass's live bytes moved so far (0 when none runs).",
        progress_ratio(running),
    )?;
    counters(
        encoder,
        "lsvblk_compaction_runs",
        "Compaction passes finished (or failed) since the daemon started.",
        &[(no_labels(), number(&compaction["runs"]))],
    )?;
    let last = &compaction["last"];
    if last.is_null() {
        return Ok(());
    }
    let mib_per_s = last["mib_per_s"].as_f64().unwrap_or(0.0);
    gauge(
        encoder,
        "lsvblk_compaction_last_rate_bytes_per_second",
        "Live bytes the last compaction pass moved per second.",
        mib_per_s * (1u64 << 20) as f64,
    )?;
    gauge(
        encoder,
        "lsvblk_compaction_last_moved_bytes",
        "Live bytes the last compaction pass moved.",
        number(&last["report"]["bytes_moved"]),
    )?;
    gauge(
        encoder,
        "lsvblk_compaction_last_failed",
        "1 if the last compaction pass failed.",
        flag(!last["error"].is_null()),
    )
}

fn encode_keys(encoder: &mut DescriptorEncoder, keys: &Value) -> fmt::Result {
    let all = keys["keys"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    gauge(
        encoder,
        "lsvblk_keys",
        "Data keys the volume's log still uses.",
        all.len() as u64,
    )?;
    if let Some(current) = all.iter().find(|k| k["current"] == Value::Bool(true)) {
        gauge(
            encoder,
            "lsvblk_key_age_seconds",
            "Age of the key new writes are encrypted under.",
            number(&current["age_s"]),
        )?;
        gauge(
            encoder,
            "lsvblk_key_live_bytes",
            "Bytes the volume reads that are under the current key.",
            number(&current["usage"]["live_bytes"]),
        )?;
        gauge(
            encoder,
            "lsvblk_key_encrypted_bytes",
            "Bytes ever encrypted under the current key here (what the bytes policy limits).",
            number(&current["usage"]["encrypted_bytes"]),
        )?;
    }
    let rotation = &keys["rotation"];
    gauge(
        encoder,
        "lsvblk_key_rotation_running",
        "1 while a key rotation re-encrypts the old keys' blocks.",
        flag(!rotation.is_null()),
    )?;
    gauge(
        encoder,
        "lsvblk_key_rotation_progress_ratio",
        "Share of the running rotation's pass done (0 when none runs).",
        progress_ratio(&keys["progress"]),
    )?;
    gauge(
        encoder,
        "lsvblk_key_rotation_due",
        "1 when the key policy says the current key is due for rotation.",
        flag(!keys["rotation_due"].is_null()),
    )?;
    counters(
        encoder,
        "lsvblk_key_rotations",
        "Key rotations finished since the daemon started.",
        &[(no_labels(), number(&keys["rotations"]))],
    )?;
    let owed = keys["pending_destroy"].as_array().map_or(0, Vec::len);
    gauge(
        encoder,
        "lsvblk_key_destroy_pending",
        "Old keys lsvkms is to destroy and has not confirmed yet.",
        owed as u64,
    )?;
    gauge(
        encoder,
        "lsvblk_key_care_failing",
        "1 if the last look at the keys (rotation, lsvkms checks, rewrap) failed.",
        flag(!keys["last_error"].is_null()),
    )
}

fn encode_kms_calls(encoder: &mut DescriptorEncoder) -> fmt::Result {
    let record = call_record().snapshot();
    counters(
        encoder,
        "lsvblk_kms_calls",
        "Calls this daemon made to lsvkms that it answered with success.",
        &[(no_labels(), record.successes)],
    )?;
    let failures: Vec<(Labels, u64)> = [
        ("unreachable", record.unreachable),
        ("refused", record.refused),
    ]
    .into_iter()
    .map(|(kind, count)| (vec![("kind", kind.to_owned())], count))
    .collect();
    counters(
        encoder,
        "lsvblk_kms_call_failures",
        "Calls to lsvkms that failed: unreachable (no answer: down, timeout, garbled) or refused (an error answer).",
        &failures,
    )?;
    let Some(since) = record.since_last_success else {
        return Ok(());
    };
    gauge(
        encoder,
        "lsvblk_kms_last_success_age_seconds",
        "Time since lsvkms last answered a call of this daemon with success.",
        since.as_secs_f64(),
    )
}
