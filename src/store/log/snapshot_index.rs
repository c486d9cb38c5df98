//! A snapshot's index, and the one place that builds one: the newest
//! checkpoint older than the snapshot's point, plus the records the point
//! covers among those written after that checkpoint (read back from the
//! segments and verified). The running log builds it when it materializes
//! a snapshot ([`Log::snapshot_index_now`]); recovery rebuilds it from the
//! records it replayed when the process died first
//! ([`Log::rebuild_snapshot_index`]). Either way it is written in
//! checkpoint format ([`Log::write_snapshot_index`]), signed when the
//! log's records carry MACs: a snapshot index MAC (`macs::snapshot_index_mac`)
//! under a key of its blocks, checked when the snapshot is opened
//! (`authenticate::authenticate_snapshot_index`).
//!
//! The checkpoint is always older than the point: a checkpoint first
//! materializes every snapshot taken before it (see `Log::checkpoint`).

use std::path::Path;

use super::super::StoreError;
use super::super::checkpoint::{self, CheckpointData};
use super::super::index::Location;
use super::super::macs::{MacKeys, signing_key, snapshot_index_mac};
use super::super::record::PlacedRecord;
use super::super::snapshot::SnapshotPoint;
use super::Log;
use super::replay::{list_segments, replay_plan};
use super::state::IndexState;
use crate::crypto::KeyId;

impl Log {
    /// The index of the snapshot at `point` while the log is open: the
    /// newest valid checkpoint no newer than the point, plus the records the
    /// point covers among those written after it.
    pub(super) fn snapshot_index_now(
        &self,
        point: &SnapshotPoint,
    ) -> Result<CheckpointData, StoreError> {
        let segment_ids = list_segments(&self.segments_dir)?;
        let mut checkpoint = None;
        for path in checkpoint::list_checkpoints(&self.checkpoints_dir)? {
            if let Ok(data) = checkpoint::read(&path, &self.config.volume_id)
                && data.seq_next <= point.seq_next
                && data.segment_id_next <= point.segment_id_next
            {
                checkpoint = Some(data);
                break;
            }
        }
        let checkpoint = checkpoint.unwrap_or_default();
        let mut records = Vec::new();
        for scan in replay_plan(&checkpoint, &segment_ids)? {
            if scan.segment_id >= point.segment_id_next {
                continue;
            }
            // Records past the point may be half written right now: the scan
            // stops there, after every record the point covers (all durable).
            let outcome = self.scan(scan)?;
            records.extend(outcome.records.iter().map(|s| s.record));
        }
        records.sort_by_key(|r: &PlacedRecord| r.header.seq);
        Ok(build(&checkpoint, &records, point))
    }

    /// Rebuilds and writes at `path` the index of a snapshot that was taken
    /// but not written out before a crash, from the checkpoint recovery
    /// loaded and the records it replayed (in sequence order).
    pub(super) fn rebuild_snapshot_index(
        &self,
        checkpoint: &CheckpointData,
        records: &[PlacedRecord],
        path: &Path,
        point: &SnapshotPoint,
    ) -> Result<(), StoreError> {
        if checkpoint.segment_id_next > point.segment_id_next
            || checkpoint.seq_next > point.seq_next
        {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                offset_bytes: 0,
                reason: "snapshot index missing and the newest checkpoint is newer than the snapshot",
            });
        }
        let data = build(checkpoint, records, point);
        tracing::info!(snapshot = %path.display(), "rebuilt a snapshot index from the log");
        self.write_snapshot_index(path, &data)
    }

    /// Writes the snapshot index `data` durably at `path` (checkpoint
    /// format, no heads): signed, when the log's records carry MACs, under
    /// the key of its newest data extent the log holds (a key the snapshot
    /// needs, so any reader of the snapshot holds it), else the current key.
    pub fn write_snapshot_index(
        &self,
        path: &Path,
        data: &CheckpointData,
    ) -> Result<(), StoreError> {
        let volume_id = &self.config.volume_id;
        let Some(keys) = &self.config.macs else {
            return checkpoint::write_to(path, volume_id, data);
        };
        let key = index_signing_key(keys.as_ref(), data)?;
        let name = index_name(path);
        let signed = CheckpointData {
            macs: true,
            mac_key_id: key,
            ..data.clone()
        };
        let sign = |input: &[u8]| {
            snapshot_index_mac(keys.as_ref(), &key, &name, input)
                .ok_or(StoreError::MacKeyMissing { key_id: key })
        };
        checkpoint::write_signed_to(path, volume_id, &signed, sign).map(|_| ())
    }
}

/// The key a snapshot index is signed under (see
/// [`Log::write_snapshot_index`]).
fn index_signing_key(keys: &dyn MacKeys, data: &CheckpointData) -> Result<KeyId, StoreError> {
    let newest = data
        .extents
        .iter()
        .filter_map(|(_, extent)| match extent.location {
            Location::Data(at) => Some((extent.seq, at.key_index)),
            Location::Zero => None,
        })
        .max_by_key(|(seq, _)| *seq)
        .and_then(|(_, index)| data.keys.get(index as usize).copied())
        .filter(|key| {
            keys.mac(key, crate::crypto::mac::MacDomain::SnapshotIndex, &[])
                .is_some()
        });
    newest.map_or_else(|| signing_key(keys), Ok)
}

/// The name a snapshot index's MAC binds it to: its file name without the
/// extension (the snapshot's name).
pub(super) fn index_name(path: &Path) -> String {
    path.file_stem()
        .map_or_else(String::new, |stem| stem.to_string_lossy().into_owned())
}

/// The index of the snapshot at `point`: `checkpoint` (older than the
/// point) plus those of `records` (in sequence order) that the point covers.
fn build(
    checkpoint: &CheckpointData,
    records: &[PlacedRecord],
    point: &SnapshotPoint,
) -> CheckpointData {
    let mut state = IndexState::loaded(checkpoint);
    for record in records
        .iter()
        .filter(|r| point.covers(r.segment_id, r.position))
    {
        state.apply(record);
    }
    state.frozen_at(point)
}
