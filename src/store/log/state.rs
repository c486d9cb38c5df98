//! What the index lock protects: the extent index and everything a
//! checkpoint must see together with it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::super::checkpoint::{CheckpointData, HeadPosition, SealRef, SealedSegment};
use super::super::frame::Mac;
use super::super::index::{DataLocation, ExtentIndex, Location};
use super::super::record::{PlacedRecord, RecordKind};
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
    /// Per head: its open segment and the position up to which the index
    /// has its records.
    pub(super) head_positions: Vec<Option<HeadPosition>>,
    pub(super) segment_id_next: u64,
    /// Every sealed segment, by id, but those compaction is deleting.
    pub(super) sealed: BTreeMap<u64, SealedSegment>,
    /// Sealed segments compaction is about to delete: no checkpoint lists
    /// them any more, so that one written before they are gone does not
    /// vouch for them afterwards.
    pub(super) retiring: BTreeMap<u64, SealedSegment>,
    /// The newest seal written.
    pub(super) last_seal: Option<SealRef>,
    /// Segments with this id or higher are version 2.
    pub(super) v2_floor: u64,
    /// Segments with this id or higher carry record MACs (with MACs;
    /// `u64::MAX` until recovery knows, see `load`).
    pub(super) mac_floor: u64,
    /// MAC of the newest checkpoint (the next one names it).
    pub(super) last_checkpoint_mac: Mac,
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
            sealed: BTreeMap::new(),
            retiring: BTreeMap::new(),
            last_seal: None,
            v2_floor: 0,
            mac_floor: 0,
            last_checkpoint_mac: [0; 16],
        }
    }

    /// An index holding what `checkpoint` holds (no head positions).
    pub(super) fn loaded(checkpoint: &CheckpointData) -> Self {
        let mut state = Self::empty(0);
        state.load(checkpoint);
        state
    }

    /// Loads a checkpoint's key table, extents and seals into an empty state.
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
        self.sealed = checkpoint
            .sealed
            .iter()
            .map(|s| (s.segment_id, *s))
            .collect();
        self.last_seal = checkpoint.last_seal;
        self.v2_floor = checkpoint.v2_floor;
        // A checkpoint written before the log had MACs sets no floor:
        // recovery sets it past the segments already there.
        self.mac_floor = if checkpoint.macs {
            checkpoint.mac_floor
        } else {
            u64::MAX
        };
        self.last_checkpoint_mac = checkpoint.mac;
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

    /// Puts `record` into the index (newest sequence number wins), and
    /// counts a data record's newly encrypted bytes toward its key.
    pub(super) fn apply(&mut self, record: &PlacedRecord) {
        let header = &record.header;
        let location = match header.kind {
            RecordKind::Data => {
                let key_index = self.key_index(header.key_id);
                if !header.moved {
                    self.key_encrypted_bytes[key_index as usize] += header.payload_bytes();
                }
                Location::Data(DataLocation {
                    segment_id: record.segment_id,
                    table_offset: record.table_offset,
                    payload_offset: record.payload_offset,
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

    /// Records a seal just written (and synced): the segment is sealed and
    /// the seal is the newest.
    pub(super) fn record_seal(&mut self, sealed: SealedSegment) {
        if sealed.version != super::super::segment::SegmentVersion::V1 {
            self.last_seal = Some(SealRef {
                segment_id: sealed.segment_id,
                mac: sealed.seal_mac,
            });
        }
        self.sealed.insert(sealed.segment_id, sealed);
    }

    /// Moves `ids` from the sealed table to the retiring one.
    pub(super) fn retire(&mut self, ids: &BTreeSet<u64>) {
        for id in ids {
            if let Some(sealed) = self.sealed.remove(id) {
                self.retiring.insert(*id, sealed);
            }
        }
    }

    /// Forgets retiring segment `id` (deleted), or puts it back in the
    /// sealed table (`kept`).
    pub(super) fn unretire(&mut self, id: u64, kept: bool) {
        if let Some(sealed) = self.retiring.remove(&id)
            && kept
        {
            self.sealed.insert(id, sealed);
        }
    }

    /// The frozen index of a snapshot at `point` (checkpoint format: no
    /// head positions, no byte counts, no seals).
    pub(super) fn frozen_at(&self, point: &SnapshotPoint) -> CheckpointData {
        CheckpointData {
            seq_next: point.seq_next,
            segment_id_next: point.segment_id_next,
            keys: self.keys.clone(),
            v2_floor: self.v2_floor,
            extents: self.index.iter().map(|(lba, e)| (lba, *e)).collect(),
            ..CheckpointData::default()
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
            sealed: self.sealed.values().copied().collect(),
            last_seal: self.last_seal,
            v2_floor: self.v2_floor,
            mac_floor: self.mac_floor,
            previous_mac: self.last_checkpoint_mac,
            extents: self.index.iter().map(|(lba, e)| (lba, *e)).collect(),
            ..CheckpointData::default()
        }
    }

    /// The seals of `data` as they are now: a checkpoint's index is taken
    /// before the flush that makes it durable, its seals after (the flush
    /// seals what had left the heads).
    pub(super) fn update_seals(&self, data: &mut CheckpointData) {
        data.sealed = self.sealed.values().copied().collect();
        data.last_seal = self.last_seal;
    }
}
