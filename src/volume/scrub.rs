//! Scrubbing: every block of the volume read through the checked read path
//! (each block's CRC, then its tag, before decryption), to find damage
//! before a guest does. A chunk that fails is read again block by block,
//! so the report names exactly the blocks that fail.

use serde::Serialize;

use super::{Volume, VolumeError};
use crate::store::StoreError;

/// Bytes a scrub reads at a time.
const SCRUB_CHUNK_BYTES: u64 = 1 << 20;

/// A run of blocks that fail their checks, and why the first of them does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScrubDamage {
    /// First block of the run.
    pub first_block: u64,
    /// Blocks in the run.
    pub blocks: u64,
    /// What the read said.
    pub error: String,
}

/// What a scrub checked and found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScrubReport {
    /// Bytes read and checked (the volume's size).
    pub bytes_checked: u64,
    /// Blocks read and checked.
    pub blocks_checked: u64,
    /// Damaged blocks, in block order; empty when all is well.
    pub damaged: Vec<ScrubDamage>,
}

impl Volume {
    /// Reads and checks every block of the volume (needs its key: blocks
    /// are decrypted after their checks). `progress` hears (bytes done,
    /// bytes in all) after each chunk. Damage is reported, not returned
    /// as an error; any other failure ends the scrub.
    pub fn scrub(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<ScrubReport, VolumeError> {
        let size = self.size_bytes();
        let block_bytes = u64::from(self.superblock.block_bytes);
        let mut report = ScrubReport::default();
        let mut buf = vec![0u8; SCRUB_CHUNK_BYTES.min(size) as usize];
        let mut offset = 0;
        while offset < size {
            let bytes = SCRUB_CHUNK_BYTES.min(size - offset);
            let chunk = &mut buf[..bytes as usize];
            match self.read(offset, chunk) {
                Ok(()) => {}
                Err(error) if is_damage(&error) => {
                    self.scrub_blocks(offset / block_bytes, bytes / block_bytes, &mut report)?;
                }
                Err(error) => return Err(error),
            }
            offset += bytes;
            progress(offset, size);
        }
        report.bytes_checked = size;
        report.blocks_checked = size / block_bytes;
        Ok(report)
    }

    /// Reads `count` blocks from `first` one at a time, adding those that
    /// fail to `report` (runs of neighbours with the same error merged).
    fn scrub_blocks(
        &self,
        first: u64,
        count: u64,
        report: &mut ScrubReport,
    ) -> Result<(), VolumeError> {
        let block_bytes = u64::from(self.superblock.block_bytes);
        let mut block = vec![0u8; block_bytes as usize];
        for lba in first..first + count {
            let error = match self.read(lba * block_bytes, &mut block) {
                Ok(()) => continue,
                Err(error) if is_damage(&error) => error.to_string(),
                Err(error) => return Err(error),
            };
            match report.damaged.last_mut() {
                Some(run) if run.first_block + run.blocks == lba && run.error == error => {
                    run.blocks += 1;
                }
                _ => report.damaged.push(ScrubDamage {
                    first_block: lba,
                    blocks: 1,
                    error,
                }),
            }
        }
        Ok(())
    }
}

/// Whether a read failed because what is stored is damaged (rather than
/// for want of a key, or an I/O error).
fn is_damage(error: &VolumeError) -> bool {
    matches!(error, VolumeError::Store(StoreError::Corrupt { .. }))
}
