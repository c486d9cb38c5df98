//! Re-keying: moving every record under some keys off them, in one pass
//! with compaction's mover, and accounting bytes per key.

use std::collections::{BTreeMap, BTreeSet};

use super::super::StoreError;
use super::super::index::Location;
use super::super::record::{RECORD_HEADER_BYTES, RecordKind, UncheckedRecordHeader};
use super::super::segment::{self, SEGMENT_HEADER_BYTES, read_exact_or_eof};
use super::compact::{CompactOptions, CompactProgress, CompactReport, RekeyPlan};
use super::{Log, PendingSeal};
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

    /// Closes every head's open segment (the next append starts a new one)
    /// and seals them: afterwards no open segment holds an older record.
    pub fn roll_heads(&self) -> Result<(), StoreError> {
        if self.config.read_only {
            return Err(StoreError::ReadOnly);
        }
        for head in &self.heads {
            let mut head = head.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(open) = head.open.take() {
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(PendingSeal {
                        id: open.id,
                        file: open.file,
                        end: open.offset,
                        seal: true,
                    });
                self.write_state().head_positions[head.id as usize] = None;
            }
        }
        self.flush()
    }

    /// The key ids of every data record in segment `id` (live or dead),
    /// read from the record headers alone.
    pub fn segment_keys(&self, id: u64) -> Result<BTreeSet<KeyId>, StoreError> {
        let file = self
            .files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .ok_or(StoreError::SegmentMissing { segment_id: id })?;
        let path = segment::segment_path(&self.segments_dir, id);
        let end = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        let mut keys = BTreeSet::new();
        let mut offset = SEGMENT_HEADER_BYTES;
        while offset + RECORD_HEADER_BYTES as u64 <= end {
            let mut bytes = [0u8; RECORD_HEADER_BYTES];
            if !read_exact_or_eof(&file, &mut bytes, offset)
                .map_err(|e| StoreError::io(&path, e))?
            {
                break;
            }
            let Ok(header) = UncheckedRecordHeader(bytes).check() else {
                break;
            };
            if header.kind == RecordKind::Data {
                keys.insert(header.key_id);
            }
            offset += header.record_bytes();
        }
        Ok(keys)
    }

    /// Takes every record under `plan.from` off those keys: closes the open
    /// segments, then cleans every closed segment that holds such a record
    /// (live or dead), re-encrypting the live ones under `plan.to` and
    /// moving the rest as they are, and deletes the cleaned segments.
    /// Segments a snapshot pins stay, with their records under the old keys
    /// (the snapshot needs them), but the volume's live blocks in them move
    /// too, re-encrypted: the volume itself must read nothing under `from`.
    pub fn rekey(
        &self,
        plan: &RekeyPlan<'_>,
        options: &CompactOptions,
        progress: &mut dyn FnMut(&CompactProgress),
    ) -> Result<CompactReport, StoreError> {
        if self.config.read_only {
            return Err(StoreError::ReadOnly);
        }
        let _one_at_a_time = self.compact_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.roll_heads()?;
        self.materialize_snapshots()?;
        let pinned = self.pinned_segments();
        let live = self.live_bytes_by_segment();
        let mut chosen: BTreeMap<u64, u64> = BTreeMap::new();
        for id in self.closed_segments() {
            let live_bytes = live.get(&id).copied().unwrap_or(0);
            // A pinned segment is not deleted: only worth cleaning for the
            // volume's live blocks in it.
            if pinned.contains(&id) && live_bytes == 0 {
                continue;
            }
            if !self.segment_keys(id)?.is_disjoint(&plan.from) {
                chosen.insert(id, live_bytes);
            }
        }
        let chosen: Vec<(u64, u64)> = chosen.into_iter().collect();
        self.clean(&chosen, options, Some(plan), progress)
    }
}
