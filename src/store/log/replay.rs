//! What a replay reads: which segments a checkpoint does not cover and from
//! where, and the records found there. Used by recovery (the log's index)
//! and by snapshot index builds (a snapshot's).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::super::StoreError;
use super::super::checkpoint::CheckpointData;
use super::super::record::RecordHeader;
use super::super::segment::{self, SEGMENT_HEADER_BYTES, ScannedRecord};

/// Where a replay scans one segment from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SegmentScan {
    /// The segment.
    pub(super) segment_id: u64,
    /// Offset of the first record to read.
    pub(super) from: u64,
}

/// A valid record a replay found.
#[derive(Clone, Copy, Debug)]
pub(super) struct ReplayedRecord {
    /// The segment it is in.
    pub(super) segment_id: u64,
    /// Offset of its header in the segment.
    pub(super) offset: u64,
    /// Its checked header.
    pub(super) header: RecordHeader,
}

impl ReplayedRecord {
    /// The records of one segment's scan.
    pub(super) fn of_segment(
        segment_id: u64,
        records: impl IntoIterator<Item = ScannedRecord>,
    ) -> impl Iterator<Item = ReplayedRecord> {
        records.into_iter().map(move |r| ReplayedRecord {
            segment_id,
            offset: r.offset,
            header: r.header,
        })
    }
}

/// The ids of the segment files in `segments_dir`, ascending.
pub(crate) fn list_segments(segments_dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(segments_dir).map_err(|e| StoreError::io(segments_dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(segments_dir, e))?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(segment::parse_segment_name)
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Which segments to scan and from where: every segment the checkpoint does
/// not cover (from its start) and each head's open segment (from the
/// checkpointed offset), by segment id. A segment in that range that is
/// missing from `segment_ids` is an error.
pub(super) fn replay_plan(
    checkpoint: &CheckpointData,
    segment_ids: &[u64],
) -> Result<Vec<SegmentScan>, StoreError> {
    let mut plan: BTreeMap<u64, u64> = BTreeMap::new();
    for (segment_id, offset) in &checkpoint.heads {
        if segment_ids.binary_search(segment_id).is_err() {
            return Err(StoreError::SegmentMissing {
                segment_id: *segment_id,
            });
        }
        plan.insert(*segment_id, *offset);
    }
    let uncovered = segment_ids
        .iter()
        .filter(|id| **id >= checkpoint.segment_id_next);
    for (expected, id) in (checkpoint.segment_id_next..).zip(uncovered) {
        if *id != expected {
            return Err(StoreError::SegmentMissing {
                segment_id: expected,
            });
        }
        plan.insert(*id, SEGMENT_HEADER_BYTES);
    }
    Ok(plan
        .into_iter()
        .map(|(segment_id, from)| SegmentScan { segment_id, from })
        .collect())
}
