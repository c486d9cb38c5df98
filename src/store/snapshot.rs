//! Snapshots at the store level: a point in the log, and the frozen index
//! of everything before it.
//!
//! Taking a snapshot is O(1): the log is flushed and the caller records
//! the [`SnapshotPoint`] (where every log head stood) in its own metadata.
//! The snapshot's index is built afterwards (*materialized*) from the newest
//! checkpoint, which is older than the point because a checkpoint first
//! materializes every pending snapshot, plus the records the point covers;
//! after a crash recovery does the same (see `log::recovery`).
//!
//! A snapshot pins the segments its index refers to: compaction never
//! deletes them while the snapshot exists.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::checkpoint::CheckpointData;
use super::index::Location;

/// Where the log stood when a snapshot was taken: a record is in the
/// snapshot if and only if [`SnapshotPoint::covers`] its position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPoint {
    /// Every write in the snapshot had a smaller sequence number.
    pub seq_next: u64,
    /// Segments with this id or higher were created after the snapshot.
    pub segment_id_next: u64,
    /// Segments open on a log head at the snapshot: (segment id, end offset);
    /// their records from that offset on came later.
    pub heads: Vec<(u64, u64)>,
}

impl SnapshotPoint {
    /// True when the record at `offset` in segment `segment_id` was in the
    /// log (and in the index) when the snapshot was taken.
    pub fn covers(&self, segment_id: u64, offset: u64) -> bool {
        if segment_id >= self.segment_id_next {
            return false;
        }
        match self.heads.iter().find(|(id, _)| *id == segment_id) {
            Some((_, end)) => offset < *end,
            None => true,
        }
    }
}

/// The segments an index (a snapshot's or a checkpoint's) refers to.
pub fn referenced_segments(data: &CheckpointData) -> BTreeSet<u64> {
    data.extents
        .iter()
        .filter_map(|(_, extent)| match extent.location {
            Location::Data(d) => Some(d.segment_id),
            Location::Zero => None,
        })
        .collect()
}

/// Every segment an open from checkpoint `data` reads or checks: those its
/// extents refer to, the sealed segments it lists (opening checks each one
/// is there with its seal) and the heads' open segments it replays from.
pub fn segments_needed(data: &CheckpointData) -> BTreeSet<u64> {
    let mut needs = referenced_segments(data);
    needs.extend(data.sealed.iter().map(|s| s.segment_id));
    needs.extend(data.heads.iter().map(|h| h.segment_id));
    needs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_closed_segments_and_head_prefixes_only() {
        let point = SnapshotPoint {
            seq_next: 100,
            segment_id_next: 5,
            heads: vec![(3, 4096)],
        };
        assert!(point.covers(0, 64));
        assert!(point.covers(4, 1 << 20));
        assert!(point.covers(3, 64));
        assert!(
            !point.covers(3, 4096),
            "head records from its end came later"
        );
        assert!(!point.covers(5, 64), "segments created later");
    }
}
