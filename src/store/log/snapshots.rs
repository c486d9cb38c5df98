//! Taking, writing out and pinning snapshots (see `store::snapshot`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::super::StoreError;
use super::super::checkpoint::{self, CheckpointData};
use super::super::snapshot::{SnapshotPoint, referenced_segments};
use super::recovery::build_snapshot_data;
use super::{Log, UnmaterializedSnapshot};

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
        let _no_checkpoint = self
            .checkpoint_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let point = {
            let _heads: Vec<_> = self
                .heads
                .iter()
                .map(|h| h.lock().unwrap_or_else(|p| p.into_inner()))
                .collect();
            let state = self.read_state();
            SnapshotPoint {
                seq_next: self.seq_next.load(Ordering::SeqCst),
                segment_id_next: state.segment_id_next,
                heads: state.head_positions.iter().flatten().copied().collect(),
            }
        };
        self.flush()?;
        self.unmaterialized
            .lock()
            .unwrap_or_else(|p| p.into_inner())
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
        let mut queue = self
            .unmaterialized
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while let Some(snapshot) = queue.first() {
            let data = build_snapshot_data(self, &snapshot.point)?;
            write_snapshot_index(&snapshot.path, &self.config.volume_id, &data)?;
            self.pin(&snapshot.name, referenced_segments(&data));
            queue.remove(0);
        }
        Ok(())
    }

    /// Forgets a snapshot taken but not yet written out (its metadata could
    /// not be recorded), and its pins.
    pub fn abandon_snapshot(&self, name: &str, index_path: &Path) {
        self.unmaterialized
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| s.path != index_path);
        self.unpin(name);
    }

    /// Keeps the segments `segments` (a snapshot's) from being compacted away.
    pub fn pin(&self, name: &str, segments: BTreeSet<u64>) {
        self.pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), segments);
    }

    /// Drops the pins of snapshot `name` (deleted).
    pub fn unpin(&self, name: &str) {
        self.pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Every pinned segment.
    pub fn pinned_segments(&self) -> BTreeSet<u64> {
        self.pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flatten()
            .copied()
            .collect()
    }
}

/// Writes a snapshot index durably at `path` (checkpoint format, no heads).
pub fn write_snapshot_index(
    path: &Path,
    volume_id: &[u8; 16],
    data: &CheckpointData,
) -> Result<(), StoreError> {
    checkpoint::write_to(path, volume_id, data)
}
