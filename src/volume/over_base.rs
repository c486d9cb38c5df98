//! What of a volume over a base image (see `base.rs`) still reads from it:
//! the block ranges no layer holds (the volume's log, then its parent
//! snapshots), and how much that is.

use std::path::PathBuf;

use serde::Serialize;

use super::{Volume, VolumeError};
use crate::store::ReadPiece;

/// How much of a volume reads from its base image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BaseUse {
    /// The image.
    pub image: PathBuf,
    /// Its size, bytes.
    pub image_bytes: u64,
    /// Bytes of the image the volume still reads (never written since).
    pub from_base_bytes: u64,
    /// Bytes the volume holds itself: written (encrypted in its log or a
    /// parent's), discarded or zeroed.
    pub held_bytes: u64,
}

impl Volume {
    /// How much of the volume still reads from its base image; `None` for
    /// a volume without one.
    pub fn base_use(&self) -> Result<Option<BaseUse>, VolumeError> {
        let Some(base) = &self.superblock.base else {
            return Ok(None);
        };
        let shift = self.shift();
        let capacity = self.superblock.size_bytes >> shift;
        let (mut from_base_bytes, mut unheld) = (0, 0);
        for (lba, blocks) in self.unheld(0, 0, capacity)? {
            unheld += blocks;
            let end = ((lba + blocks) << shift).min(base.size_bytes);
            from_base_bytes += end.saturating_sub(lba << shift);
        }
        Ok(Some(BaseUse {
            image: base.path.clone(),
            image_bytes: base.size_bytes,
            from_base_bytes,
            held_bytes: (capacity - unheld) << shift,
        }))
    }

    /// The ranges `(lba, blocks)` of `lba..lba + blocks` that layer `layer`
    /// (0: the volume's own log, then its parent snapshots) and the layers
    /// below it do not hold: what reads from the base image.
    pub(super) fn unheld(
        &self,
        layer: usize,
        lba: u64,
        blocks: u64,
    ) -> Result<Vec<(u64, u64)>, VolumeError> {
        let log = if layer == 0 {
            &self.log
        } else {
            &self.parents[layer - 1]
        };
        let mut ranges = Vec::new();
        for piece in log.lookup(lba, blocks)? {
            if let ReadPiece::Hole { lba, blocks } = piece {
                if layer < self.parents.len() {
                    ranges.extend(self.unheld(layer + 1, lba, blocks)?);
                } else {
                    ranges.push((lba, blocks));
                }
            }
        }
        Ok(ranges)
    }
}
