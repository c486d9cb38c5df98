//! What a replay reads: which segments a checkpoint does not cover and from
//! where, and scanning them. Used by recovery (the log's index) and by
//! snapshot index builds (a snapshot's).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::super::StoreError;
use super::super::checkpoint::{CheckpointData, HeadPosition};
use super::super::scan::{self, RecordLimits, ScanOutcome};
use super::super::segment;
use super::Log;

/// Where a replay scans one segment from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SegmentScan {
    /// The segment.
    pub(super) segment_id: u64,
    /// Where to start, with the records before it (a head the checkpoint
    /// names), or `None` for the whole segment.
    pub(super) resume: Option<HeadPosition>,
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
/// checkpointed position), by segment id. A segment in that range that is
/// missing from `segment_ids` is an error.
pub(super) fn replay_plan(
    checkpoint: &CheckpointData,
    segment_ids: &[u64],
) -> Result<Vec<SegmentScan>, StoreError> {
    let mut plan: BTreeMap<u64, Option<HeadPosition>> = BTreeMap::new();
    for head in &checkpoint.heads {
        if segment_ids.binary_search(&head.segment_id).is_err() {
            return Err(StoreError::SegmentMissing {
                segment_id: head.segment_id,
            });
        }
        plan.insert(head.segment_id, Some(*head));
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
        plan.insert(*id, None);
    }
    Ok(plan
        .into_iter()
        .map(|(segment_id, resume)| SegmentScan { segment_id, resume })
        .collect())
}

impl Log {
    /// Scans one segment as `scan` says (see `scan`); the segment's file is
    /// open.
    pub(super) fn scan(&self, scan: SegmentScan) -> Result<ScanOutcome, StoreError> {
        let file = self.segment_file(scan.segment_id)?;
        let start = scan
            .resume
            .map_or(file.version.first_record(), |head| head.offset);
        scan::scan_segment(
            &file.file,
            &self.segment_path(scan.segment_id),
            scan.segment_id,
            file.version,
            start,
            &RecordLimits {
                block_shift: self.config.block_shift,
                capacity_blocks: self.config.capacity_blocks,
            },
        )
    }
}
