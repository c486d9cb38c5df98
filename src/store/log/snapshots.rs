//! Taking, writing out and pinning snapshots (see `store::snapshot`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::super::StoreError;
use super::super::checkpoint::{self, CheckpointData};
use super::super::snapshot::SnapshotPoint;
use super::{Log, UnmaterializedSnapshot};

impl Log {
    /// Takes a snapshot named `name` whose index will be written to
    /// `index_path`: captures the log position and the index at one instant
    /// (every head and the index locked), then makes the log durable up to
    /// it. O(index) in memory, O(1) on disk. The caller must record the
    /// returned point durably before telling anyone the snapshot exists;
    /// [`Log::materialize_snapshots`] (or the next checkpoint) writes the
    /// index file.
    pub fn take_snapshot(
        &self,
        name: &str,
        index_path: PathBuf,
    ) -> Result<SnapshotPoint, StoreError> {
        if self.config.read_only {
            return Err(StoreError::ReadOnly);
        }
        // No checkpoint between the capture and the queueing of the index:
        // recovery must find either the index file or an older checkpoint.
        let _no_checkpoint = self
            .checkpoint_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Pins first: compaction deletes segments only under this lock, so
        // none the captured index refers to can vanish before it is pinned.
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        let (point, index, keys) = {
            let _heads: Vec<_> = self
                .heads
                .iter()
                .map(|h| h.lock().unwrap_or_else(|p| p.into_inner()))
                .collect();
            let state = self.read_state();
            let seq_next = self.seq_next.load(Ordering::SeqCst);
            let point = SnapshotPoint {
                seq_next,
                segment_id_next: state.segment_id_next,
                heads: state.head_positions.iter().flatten().copied().collect(),
            };
            // A B-tree clone copies nodes, not extent by extent.
            (point, state.index.clone(), state.keys.clone())
        };
        pins.insert(name.to_string(), index.segments());
        drop(pins);
        if let Err(error) = self.flush() {
            self.unpin(name);
            return Err(error);
        }
        self.unmaterialized
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(UnmaterializedSnapshot {
                path: index_path,
                point: point.clone(),
                index,
                keys,
            });
        Ok(point)
    }

    /// Writes the index file of every snapshot taken since the last call.
    pub fn materialize_snapshots(&self) -> Result<(), StoreError> {
        let mut queue = self
            .unmaterialized
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while let Some(snapshot) = queue.first() {
            let data = CheckpointData {
                seq_next: snapshot.point.seq_next,
                segment_id_next: snapshot.point.segment_id_next,
                heads: Vec::new(),
                keys: snapshot.keys.clone(),
                key_encrypted_bytes: Vec::new(),
                extents: snapshot.index.iter().map(|(lba, e)| (lba, *e)).collect(),
            };
            write_snapshot_index(&snapshot.path, &self.config.volume_id, &data)?;
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
