//! What the index lock protects: the extent index and everything a
//! checkpoint must see together with it.

use std::collections::HashMap;

use super::super::checkpoint::CheckpointData;
use super::super::index::{DataLocation, ExtentIndex, Location};
use super::super::record::{RecordHeader, RecordKind};
use super::super::snapshot::SnapshotPoint;
use crate::crypto::KeyId;

/// The index and the tables that go with it.
pub(super) struct IndexState {
    pub(super) index: ExtentIndex,
    /// Key table: data locations name keys by index into it.
    pub(super) keys: Vec<KeyId>,
    key_indexes: HashMap<KeyId, u32>,
    /// Bytes ever encrypted under each key (parallel to `keys`).
    pub(super) key_encrypted_bytes: Vec<u64>,
    /// Per head: (open segment, offset up to which the index has its records).
    pub(super) head_positions: Vec<Option<(u64, u64)>>,
    pub(super) segment_id_next: u64,
}

impl IndexState {
    /// An empty index for a log of `heads` heads (compaction's included).
    pub(super) fn empty(heads: usize) -> Self {
        Self {
            index: ExtentIndex::new(),
            keys: Vec::new(),
            key_indexes: HashMap::new(),
            key_encrypted_bytes: Vec::new(),
            head_positions: vec![None; heads],
            segment_id_next: 0,
        }
    }

    /// An index holding what `checkpoint` holds (no head positions).
    pub(super) fn loaded(checkpoint: &CheckpointData) -> Self {
        let mut state = Self::empty(0);
        state.load(checkpoint);
        state
    }

    /// Loads a checkpoint's key table and extents into an empty state.
    pub(super) fn load(&mut self, checkpoint: &CheckpointData) {
        self.keys = checkpoint.keys.clone();
        self.key_encrypted_bytes = checkpoint.key_encrypted_bytes.clone();
        self.key_encrypted_bytes.resize(self.keys.len(), 0);
        self.key_indexes = checkpoint
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (*k, i as u32))
            .collect();
        for (lba, extent) in &checkpoint.extents {
            self.index
                .insert(*lba, extent.blocks, extent.seq, extent.location);
        }
    }

    fn key_index(&mut self, key_id: KeyId) -> u32 {
        if let Some(index) = self.key_indexes.get(&key_id) {
            return *index;
        }
        let index = u32::try_from(self.keys.len()).expect("key table fits u32");
        self.keys.push(key_id);
        self.key_encrypted_bytes.push(0);
        self.key_indexes.insert(key_id, index);
        index
    }

    /// Puts the record with `header` at `offset` of segment `segment_id`
    /// into the index (newest sequence number wins), and counts a data
    /// record's newly encrypted bytes toward its key.
    pub(super) fn apply(&mut self, segment_id: u64, offset: u64, header: &RecordHeader) {
        let location = match header.kind {
            RecordKind::Data => {
                let key_index = self.key_index(header.key_id);
                if !header.moved {
                    self.key_encrypted_bytes[key_index as usize] += header.payload_bytes();
                }
                Location::Data(DataLocation {
                    segment_id,
                    record_offset: offset,
                    record_lba: header.lba,
                    record_blocks: header.block_count,
                    key_index,
                })
            }
            RecordKind::Discard | RecordKind::Zeroes => Location::Zero,
            RecordKind::Seal => return,
        };
        self.index.insert(
            header.lba,
            u64::from(header.block_count),
            header.seq,
            location,
        );
    }

    /// The frozen index of a snapshot at `point` (checkpoint format: no
    /// head positions, no byte counts).
    pub(super) fn frozen_at(&self, point: &SnapshotPoint) -> CheckpointData {
        CheckpointData {
            seq_next: point.seq_next,
            segment_id_next: point.segment_id_next,
            heads: Vec::new(),
            keys: self.keys.clone(),
            key_encrypted_bytes: Vec::new(),
            extents: self.index.iter().map(|(lba, e)| (lba, *e)).collect(),
        }
    }

    /// A checkpoint of this state, with `seq_next` as its sequence floor.
    pub(super) fn checkpoint_data(&self, seq_next: u64) -> CheckpointData {
        CheckpointData {
            seq_next,
            segment_id_next: self.segment_id_next,
            heads: self.head_positions.iter().flatten().copied().collect(),
            keys: self.keys.clone(),
            key_encrypted_bytes: self.key_encrypted_bytes.clone(),
            extents: self.index.iter().map(|(lba, e)| (lba, *e)).collect(),
        }
    }
}
