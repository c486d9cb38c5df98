//! What of a volume over a base image (see `base.rs`) still reads from it
//! (the block ranges no layer holds: the volume's log, then its parent
//! snapshots), and flattening: copying those blocks into the volume's
//! log, encrypted, while it is served, after which the image is no longer
//! needed.

use std::path::PathBuf;

use serde::Serialize;

use super::stripes::BlockRange;
use super::{Change, Volume, VolumeError};
use crate::store::{AlignedBuf, HeadId, ReadPiece};

/// Bytes a flatten copies under one hold of their stripes.
const FLATTEN_STEP_BYTES: u64 = 1 << 20;

/// How far a flatten is: bytes of the image copied, of those it started
/// with to copy (the guest's own writes may leave fewer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FlattenProgress {
    /// Copied so far.
    pub bytes_moved: u64,
    /// To copy in all, as counted at the start.
    pub bytes_total: u64,
}

/// What a flatten did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlattenReport {
    /// Bytes of the image copied into the volume.
    pub bytes_copied: u64,
    /// Whether the volume forgot the image (it no longer needs it). Not
    /// while a snapshot of the volume exists: a snapshot taken before the
    /// flatten still reads from the image.
    pub base_dropped: bool,
}

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

    /// Copies every block that still reads from the base image into the
    /// volume's log, encrypted with its current key, a step at a time while
    /// the volume is read and written: each step holds the stripes of its
    /// blocks exclusively from the lookup of what is still unheld to the
    /// append, so a guest write is never overwritten by the image's older
    /// block. Then the volume flushes and, unless a snapshot exists, its
    /// superblock forgets the image.
    pub fn flatten(
        &self,
        progress: &mut dyn FnMut(&FlattenProgress),
    ) -> Result<FlattenReport, VolumeError> {
        self.check_writable()?;
        let Some(start) = self.base_use()? else {
            return Err(VolumeError::BadOption(
                "the volume has no base image to flatten".into(),
            ));
        };
        let shift = self.shift();
        let image_blocks = start.image_bytes.div_ceil(1 << shift);
        let step_blocks = (FLATTEN_STEP_BYTES >> shift).max(1);
        let mut done = FlattenProgress {
            bytes_moved: 0,
            bytes_total: start.from_base_bytes,
        };
        for first in (0..image_blocks).step_by(step_blocks as usize) {
            let end = (first + step_blocks).min(image_blocks);
            done.bytes_moved += self.flatten_step(first, end)?;
            progress(&done);
        }
        self.flush()?;
        let _one = self.lifecycle_lock();
        let mut superblock = self.superblock_now()?;
        let base_dropped = self.snapshots()?.is_empty();
        if base_dropped {
            superblock.base = None;
            superblock.store(&self.dir)?;
        }
        Ok(FlattenReport {
            bytes_copied: done.bytes_moved,
            base_dropped,
        })
    }

    /// Copies the unheld blocks of `first..end` from the image; returns the
    /// bytes copied.
    fn flatten_step(&self, first: u64, end: u64) -> Result<u64, VolumeError> {
        let shift = self.shift();
        let hold = BlockRange {
            first,
            end,
            exclusive: true,
        };
        let _held = self.stripes.lock_ranges(&[hold]);
        let mut changes = Vec::new();
        let mut bytes = 0;
        for (lba, blocks) in self.unheld(0, first, end - first)? {
            let mut data = AlignedBuf::zeroed((blocks << shift) as usize);
            self.read_base(lba, &mut data)?;
            bytes += data.len() as u64;
            changes.push(Change::Write {
                offset: lba << shift,
                data,
            });
        }
        self.write_batch_held(HeadId::FIRST, changes)?;
        Ok(bytes)
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
