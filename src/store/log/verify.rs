//! What opening checks the segments against before it trusts them: every
//! sealed segment the checkpoint lists is there and ends with the listed
//! seal; no version 1 segment where only version 2 ones can be; and the
//! seals replay finds continue the log's seal chain from the checkpoint's
//! newest seal, so a segment dropped, replayed from an older copy or
//! spliced in shows.

use std::collections::BTreeMap;
use std::path::Path;

use super::super::StoreError;
use super::super::checkpoint::{CheckpointData, SealRef, SealedSegment};
use super::super::scan::{SealFound, find_v1_seal, read_seal};
use super::super::segment::SegmentVersion;
use super::super::snapshot::referenced_segments;
use super::Log;
use crate::sync::RwLockOrRecover;

impl Log {
    /// Checks the segments `checkpoint` (read from `path`) names: every
    /// one its extents refer to is there, and each sealed segment it lists
    /// is there, of the listed version, and sealed by the listed seal (a
    /// byte compare of its MAC: no key needed).
    pub(super) fn check_listed_segments(
        &self,
        checkpoint: &CheckpointData,
        path: &Path,
        segment_ids: &[u64],
    ) -> Result<(), StoreError> {
        let missing = |segment_id| StoreError::ListedSegmentMissing {
            segment_id,
            checkpoint: path.to_path_buf(),
        };
        let referenced = referenced_segments(checkpoint);
        let listed = checkpoint.sealed.iter().map(|s| s.segment_id);
        if let Some(id) = referenced
            .into_iter()
            .chain(listed)
            .find(|id| segment_ids.binary_search(id).is_err())
        {
            return Err(missing(id));
        }
        for listed in &checkpoint.sealed {
            let id = listed.segment_id;
            let file = self.segment_file(id)?;
            let mismatch = |reason| StoreError::SealMismatch {
                segment_id: id,
                reason,
            };
            if file.version != listed.version {
                return Err(mismatch("segment version differs from the checkpoint's"));
            }
            let io = |e| StoreError::io(&self.segment_path(id), e);
            let found = match listed.version {
                SegmentVersion::V1 => {
                    let len = file.file.metadata().map_err(io)?.len();
                    find_v1_seal(&file.file, len).map_err(io)?
                }
                SegmentVersion::V2 => read_seal(&file.file, id, listed.seal_offset).map_err(io)?,
            };
            match found {
                None => return Err(mismatch("no seal where the checkpoint lists one")),
                Some(seal) if seal.offset != listed.seal_offset || seal.mac != listed.seal_mac => {
                    return Err(mismatch("seal differs from the checkpoint's"));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Refuses version 1 segments at or past the checkpoint's version 2
    /// floor: the log wrote none there, so one is forged.
    pub(super) fn check_v2_floor(&self, v2_floor: u64) -> Result<(), StoreError> {
        let files: Vec<(u64, SegmentVersion)> = self
            .files
            .read_or_recover()
            .iter()
            .map(|(id, file)| (*id, file.version))
            .collect();
        for (id, version) in files {
            if version == SegmentVersion::V1 && id >= v2_floor {
                return Err(StoreError::UnexpectedVersion1 {
                    segment_id: id,
                    v2_floor,
                });
            }
        }
        Ok(())
    }
}

/// Orders the version 2 seals replay found that the checkpoint does not
/// list (`found`: segment id → seal) into the chain that continues from
/// the checkpoint's newest seal, and returns them in chain order. A seal
/// that does not fit (its predecessor is not the chain's end) means a
/// segment of the chain is missing, older than it was, or foreign.
pub(crate) fn chain_seals(
    last: Option<SealRef>,
    mut found: BTreeMap<u64, SealFound>,
) -> Result<Vec<(u64, SealFound)>, StoreError> {
    let mut chain = Vec::with_capacity(found.len());
    let mut end = last;
    while !found.is_empty() {
        let next = found.iter().find(|(_, seal)| {
            let body = seal.body.expect("version 2 seals have bodies");
            body.previous_sealed_segment == end.map(|s| s.segment_id)
                && body.previous_seal_mac == end.map_or([0; 16], |s| s.mac)
        });
        let Some((&id, &seal)) = next else {
            let (&id, _) = found.iter().next().expect("not empty");
            return Err(StoreError::SealMismatch {
                segment_id: id,
                reason: "its seal does not continue the log's seal chain",
            });
        };
        found.remove(&id);
        chain.push((id, seal));
        end = Some(SealRef {
            segment_id: id,
            mac: seal.mac,
        });
    }
    Ok(chain)
}

/// The sealed-table entry of a seal replay found.
pub(super) fn sealed_entry(id: u64, version: SegmentVersion, seal: &SealFound) -> SealedSegment {
    SealedSegment {
        segment_id: id,
        seal_offset: seal.offset,
        seal_mac: seal.mac,
        version,
    }
}
