//! Taking snapshots, writing out their indexes (built by
//! `snapshot_index`), and pinning their segments (see `store::snapshot`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::super::StoreError;
use super::super::snapshot::{SnapshotPoint, referenced_segments};
use super::Log;
use crate::sync::LockOrRecover;

/// A snapshot taken whose index is not written yet.
pub(super) struct UnmaterializedSnapshot {
    name: String,
    path: PathBuf,
    point: SnapshotPoint,
}

impl Log {
    /// Takes a snapshot named `name` whose index will be written to
    /// `index_path`: records where every log head stands (all heads locked
    /// for an instant), then makes the log durable up to there. O(1): no
    /// index is copied. The caller must record the returned point durably
    /// before telling anyone the snapshot exists; [`Log::materialize_snapshots`]
    /// (called at the latest by the next checkpoint) builds the index from
    /// the newest checkpoint and the records the point covers, writes it
    /// and pins its segments.
    pub fn take_snapshot(
        &self,
        name: &str,
        index_path: PathBuf,
    ) -> Result<SnapshotPoint, StoreError> {
        if self.config.read_only {
            return Err(StoreError::ReadOnly);
        }
        // No checkpoint between the capture and the queueing: the index is
        // built from a checkpoint older than the point.
        let _no_checkpoint = self.checkpoint_lock.lock_or_recover();
        let point = {
            let _heads: Vec<_> = self.heads.iter().map(|h| h.lock_or_recover()).collect();
            let state = self.read_state();
            SnapshotPoint {
                seq_next: self.seq_next.load(Ordering::SeqCst),
                segment_id_next: state.segment_id_next,
                heads: state
                    .head_positions
                    .iter()
                    .flatten()
                    .map(|h| (h.segment_id, h.offset))
                    .collect(),
            }
        };
        self.flush()?;
        self.unmaterialized
            .lock_or_recover()
            .push(UnmaterializedSnapshot {
                name: name.to_string(),
                path: index_path,
                point: point.clone(),
            });
        Ok(point)
    }

    /// Builds, writes and pins the index of every snapshot taken since the
    /// last call. Compaction deletes segments only after a checkpoint, and
    /// a checkpoint calls this first, so no segment a snapshot needs goes
    /// before the snapshot pins it.
    pub fn materialize_snapshots(&self) -> Result<(), StoreError> {
        let mut queue = self.unmaterialized.lock_or_recover();
        while let Some(snapshot) = queue.first() {
            let data = self.snapshot_index_now(&snapshot.point)?;
            self.write_snapshot_index(&snapshot.path, &data)?;
            self.pin(&snapshot.name, referenced_segments(&data));
            queue.remove(0);
        }
        Ok(())
    }

    /// Forgets a snapshot taken but not yet written out (its metadata could
    /// not be recorded), and its pins.
    pub fn abandon_snapshot(&self, name: &str, index_path: &Path) {
        self.unmaterialized
            .lock_or_recover()
            .retain(|s| s.path != index_path);
        self.unpin(name);
    }

    /// Keeps the segments `segments` (a snapshot's) from being compacted away.
    pub fn pin(&self, name: &str, segments: BTreeSet<u64>) {
        self.pins
            .lock_or_recover()
            .insert(name.to_string(), segments);
    }

    /// Drops the pins of snapshot `name` (deleted).
    pub fn unpin(&self, name: &str) {
        self.pins.lock_or_recover().remove(name);
    }

    /// Every pinned segment.
    pub fn pinned_segments(&self) -> BTreeSet<u64> {
        self.pins
            .lock_or_recover()
            .values()
            .flatten()
            .copied()
            .collect()
    }
}
