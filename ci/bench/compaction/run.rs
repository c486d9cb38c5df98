//! What the bench measures, phase by phase: foreground repetitions, space
//! use, each compaction and each snapshot.

use std::time::Duration;

use serde_json::Value;

use super::burst::Burst;
use super::common::{MB_BYTES, median};

/// Everything measured, filled in phase by phase.
#[derive(Default)]
pub struct Run {
    /// Bytes the client wrote to the volume (completed writes).
    pub guest_bytes: u64,
    pub fill_mbps: f64,
    pub overwrite_iops: f64,
    pub preconditioned: Space,
    pub idle: Phase,
    pub during: Phase,
    /// Wall time of the throttled compaction as seen from here, and the part
    /// of it inside timed repetitions.
    pub during_wall_s: f64,
    pub during_timed_s: f64,
    /// Repetitions cut short by the compaction's end and dropped.
    pub during_dropped: usize,
    pub compaction: Option<Compaction>,
    pub unthrottled: Option<Compaction>,
    pub idle_after: Phase,
    pub final_space: Space,
    pub segment_bytes_written: u64,
    pub snapshots: Vec<SnapshotTiming>,
    pub snapshots_loaded: Vec<SnapshotTiming>,
    pub snapshot_index_bytes: Option<u64>,
    /// Most bytes the volume directory held (looked at between steps).
    pub disk_peak: u64,
}

impl Run {
    /// Both compactions that ran.
    fn compactions(&self) -> impl Iterator<Item = &Compaction> {
        [&self.compaction, &self.unthrottled].into_iter().flatten()
    }

    pub fn moved_bytes(&self) -> u64 {
        self.compactions().map(|c| c.moved).sum()
    }

    pub fn freed_bytes(&self) -> u64 {
        self.compactions().map(|c| c.freed).sum()
    }
}

/// Foreground repetitions of one phase.
#[derive(Default)]
pub struct Phase {
    pub bursts: Vec<Burst>,
    pub flush_s: Vec<f64>,
}

impl Phase {
    pub fn iops(&self) -> Option<f64> {
        let values: Vec<f64> = self.bursts.iter().map(Burst::iops).collect();
        (!values.is_empty()).then(|| median(&values))
    }

    /// All writes over all timed seconds: what a guest sees over the whole
    /// phase, where the median shows a typical repetition.
    pub fn iops_time_weighted(&self) -> Option<f64> {
        let ops: u64 = self.bursts.iter().map(|b| b.ops).sum();
        let seconds: f64 = self.bursts.iter().map(|b| b.seconds).sum();
        (seconds > 0.0).then(|| ops as f64 / seconds)
    }

    pub fn spread(&self) -> String {
        let values: Vec<f64> = self.bursts.iter().map(Burst::iops).collect();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(0.0, f64::max);
        if values.is_empty() {
            "n=0".to_owned()
        } else {
            format!("min {min:.0} max {max:.0} n={}", values.len())
        }
    }

    /// Median and largest of the repetitions' longest waits, ms.
    pub fn max_wait_ms(&self) -> Option<(f64, f64)> {
        let values: Vec<f64> = self.bursts.iter().map(|b| b.max_wait_s * 1e3).collect();
        (!values.is_empty()).then(|| (median(&values), values.iter().copied().fold(0.0, f64::max)))
    }

    pub fn flush_ms(&self) -> Option<f64> {
        (!self.flush_s.is_empty()).then(|| median(&self.flush_s) * 1e3)
    }

    pub fn rep_s(&self) -> Option<f64> {
        let values: Vec<f64> = self.bursts.iter().map(|b| b.seconds).collect();
        (!values.is_empty()).then(|| median(&values))
    }
}

/// Space use from `lsvblk status --json`.
#[derive(Clone, Copy, Default)]
pub struct Space {
    pub log_bytes: u64,
    pub live_bytes: u64,
    pub segments: u64,
}

/// One `lsvblk compact --json` result.
pub struct Compaction {
    pub moved: u64,
    pub freed: u64,
    pub segments_deleted: u64,
    pub seconds: f64,
    pub log_before: u64,
    pub log_after: u64,
}

impl Compaction {
    pub fn from_json(value: &Value) -> Self {
        let number = |v: &Value| {
            v.as_u64()
                .unwrap_or_else(|| panic!("lsvblk compact: no number in {value}"))
        };
        Compaction {
            moved: number(&value["report"]["bytes_moved"]),
            freed: number(&value["report"]["bytes_freed"]),
            segments_deleted: number(&value["report"]["segments_deleted"]),
            seconds: value["seconds"]
                .as_f64()
                .unwrap_or_else(|| panic!("lsvblk compact: no seconds in {value}")),
            log_before: number(&value["log_bytes_before"]),
            log_after: number(&value["log_bytes_after"]),
        }
    }

    pub fn mbps(&self) -> f64 {
        self.moved as f64 / self.seconds.max(1e-9) / MB_BYTES
    }

    pub fn describe(&self) -> String {
        format!(
            "moved {} MiB in {:.1} s ({:.0} MB/s), freed {} MiB ({} segments), log {} -> {} MiB",
            self.moved >> 20,
            self.seconds,
            self.mbps(),
            self.freed >> 20,
            self.segments_deleted,
            self.log_before >> 20,
            self.log_after >> 20
        )
    }
}

/// One `lsvblk snapshot create --json`.
pub struct SnapshotTiming {
    /// Reported by the daemon.
    pub create_ms: f64,
    pub index_ms: f64,
    /// The command, start to exit, seen from here.
    pub cli_ms: f64,
    /// Under load: the longest the client waited for a completion while
    /// the command ran (the snapshot holds every log head meanwhile).
    pub fg_max_wait_ms: Option<f64>,
}

/// Limits of one foreground repetition.
pub struct Limits {
    pub qd: usize,
    pub duration: Duration,
    pub cap: u64,
}
