//! Re-keying: moving every record under some keys off them, in one pass
//! with compaction's mover, and accounting bytes per key.

use std::collections::{BTreeMap, BTreeSet};

use super::super::StoreError;
use super::super::checkpoint::CheckpointData;
use super::super::index::{DataLocation, Location};
use super::super::record::RecordKind;
use super::super::scan;
use super::super::snapshot::referenced_segments;
use super::compact::{CleanTarget, CompactOptions, CompactProgress, CompactReport, RekeyPlan};
use super::pieces::LivePiece;
use super::{AppendRecord, Log, RecordPosition};
use crate::crypto::KeyId;

/// How much one key protects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyUsage {
    /// The key.
    pub key_id: KeyId,
    /// Bytes ever encrypted under it in this volume (moves not counted),
    /// exact across crashes: checkpoints carry it and replay adds the rest.
    pub encrypted_bytes: u64,
    /// Bytes the volume reads that are under it now.
    pub live_bytes: u64,
}

impl Log {
    /// Per key: bytes ever encrypted and bytes live now.
    pub fn key_usage(&self) -> Vec<KeyUsage> {
        let state = self.read_state();
        let mut usage: Vec<KeyUsage> = state
            .keys
            .iter()
            .zip(&state.key_encrypted_bytes)
            .map(|(key_id, encrypted)| KeyUsage {
                key_id: *key_id,
                encrypted_bytes: *encrypted,
                live_bytes: 0,
            })
            .collect();
        for (_, extent) in state.index.iter() {
            if let Location::Data(d) = extent.location {
                usage[d.key_index as usize].live_bytes += extent.blocks << self.config.block_shift;
            }
        }
        usage
    }

    /// The key ids of every data record in segment `id` (live or dead),
    /// read from the record headers alone.
    pub fn segment_keys(&self, id: u64) -> Result<BTreeSet<KeyId>, StoreError> {
        let file = self.segment_file(id)?;
        scan::data_keys(&file.file, id, file.version)
            .map_err(|e| StoreError::io(&self.segment_path(id), e))
    }

    /// Takes every record under `plan.from` off those keys: closes the open
    /// segments, then cleans every closed segment that holds such a record
    /// (live or dead), re-encrypting the live ones under `plan.to` and
    /// moving the rest as they are, and deletes the cleaned segments.
    /// Segments a snapshot pins are left (they keep the old key needed).
    pub fn rekey(
        &self,
        plan: &RekeyPlan<'_>,
        options: &CompactOptions,
        progress: &mut dyn FnMut(&CompactProgress),
    ) -> Result<CompactReport, StoreError> {
        let _one_at_a_time = self.lock_for_cleaning()?;
        self.roll_heads()?;
        self.materialize_snapshots()?;
        let pinned = self.pinned_segments();
        let live = self.live_bytes_by_segment();
        let mut chosen: BTreeMap<u64, u64> = BTreeMap::new();
        for id in self.closed_segments() {
            let live_bytes = live.get(&id).copied().unwrap_or(0);
            // A pinned segment stays (a snapshot reads it), but the volume's
            // live blocks in it still move to the new key.
            if pinned.contains(&id) && live_bytes == 0 {
                continue;
            }
            if !self.segment_keys(id)?.is_disjoint(&plan.from) {
                chosen.insert(id, live_bytes);
            }
        }
        let chosen: Vec<CleanTarget> = chosen
            .into_iter()
            .map(|(segment_id, live_bytes)| CleanTarget {
                segment_id,
                live_bytes,
            })
            .collect();
        self.clean(&chosen, options, Some(plan), progress)
    }

    /// Re-keys a snapshot's blocks: every extent of `data` (the snapshot
    /// `name`'s index) under `plan.from` is read, verified, re-encrypted
    /// under `plan.to` (same sequence number and block) and appended to the
    /// compaction head; returns the snapshot's new index, which `write`
    /// stores before the snapshot is pinned to the new segments. The
    /// compaction lock is held throughout, so no new segment can be cleaned
    /// before it is pinned. Returns the new index and the bytes re-keyed.
    pub fn rekey_snapshot(
        &self,
        name: &str,
        data: &CheckpointData,
        plan: &RekeyPlan<'_>,
        write: &mut dyn FnMut(&CheckpointData) -> Result<(), StoreError>,
    ) -> Result<(CheckpointData, u64), StoreError> {
        let _one_at_a_time = self.lock_for_cleaning()?;
        let mut new = data.clone();
        let to_index = match new.keys.iter().position(|k| *k == plan.to) {
            Some(index) => index as u32,
            None => {
                new.keys.push(plan.to);
                (new.keys.len() - 1) as u32
            }
        };
        let block_bytes = 1usize << self.config.block_shift;
        let mut rekeyed = 0u64;
        for (lba, extent) in &mut new.extents {
            let Location::Data(d) = extent.location else {
                continue;
            };
            let key_id = data.keys[d.key_index as usize];
            if !plan.from.contains(&key_id) {
                continue;
            }
            let format = self.segment_file(d.segment_id)?.version.table_format();
            let piece = LivePiece::new(*lba, extent, &d, key_id, format, self.config.block_shift);
            let mut moved = self.read_verified(&piece)?.ok_or(StoreError::Corrupt {
                path: self.segment_path(d.segment_id),
                offset_bytes: piece.payload_offset,
                reason: "a snapshot block to re-key fails its checksum",
            })?;
            (plan.transform)(
                &mut moved.payload,
                &mut moved.table,
                key_id,
                piece.seq,
                piece.lba,
            )?;
            let record = AppendRecord {
                kind: RecordKind::Data,
                seq: piece.seq,
                lba: piece.lba,
                block_count: piece.blocks as u32,
                key_id: plan.to,
                payload: &moved.payload,
                table: Some(&moved.table),
                moved: false,
            };
            let at: RecordPosition = self.append_compacted(&[record])?[0];
            extent.location = Location::Data(DataLocation {
                segment_id: at.segment_id,
                table_offset: at.table_offset,
                payload_offset: at.payload_offset,
                record_lba: piece.lba,
                record_blocks: piece.blocks as u32,
                key_index: to_index,
            });
            rekeyed += piece.blocks * block_bytes as u64;
        }
        // The copies durable before the index that names them.
        self.flush()?;
        write(&new)?;
        self.pin(name, referenced_segments(&new));
        Ok((new, rekeyed))
    }
}
