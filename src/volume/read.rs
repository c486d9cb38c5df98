//! The read path: look the range up in the index (falling through to the
//! parent snapshots of a clone where it has holes), read the ciphertext
//! straight into the caller's buffer (guest memory, for a vhost read), then
//! verify each block's checksum and decrypt it in place, chunk by chunk on
//! the crypto pool while it is in cache. Discarded and zeroed blocks read
//! as zeros, holes too, or from the base image of a volume over one (see
//! `base.rs`); a block whose checksum fails is an error, never data.

use super::{Volume, VolumeError};
use crate::crypto::Tweak;
use crate::store::{DataPiece, Log, ReadPiece};

impl Volume {
    /// Reads `buf.len()` bytes at `offset`. Never-written, discarded and
    /// zeroed blocks read as zeros; a block whose checksum fails is an error.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        self.check_range(offset, buf.len() as u64)?;
        let block_bytes = u64::from(self.superblock.block_bytes);
        let first = offset / block_bytes;
        let end = (offset + buf.len() as u64).div_ceil(block_bytes);
        if offset.is_multiple_of(block_bytes) && (buf.len() as u64).is_multiple_of(block_bytes) {
            return self.read_blocks(first, buf);
        }
        // Part of a block: read whole blocks into a bounce buffer.
        let mut bounce = vec![0u8; ((end - first) * block_bytes) as usize];
        self.read_blocks(first, &mut bounce)?;
        let skip = (offset - first * block_bytes) as usize;
        buf.copy_from_slice(&bounce[skip..skip + buf.len()]);
        Ok(())
    }

    /// Reads `offset..offset + Σ len` into several buffers in order (a
    /// scatter list, such as a guest's descriptors). Buffers that hold whole
    /// blocks are read in place; otherwise one bounce buffer is used.
    pub fn read_vectored(&self, offset: u64, bufs: &mut [&mut [u8]]) -> Result<(), VolumeError> {
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        self.check_range(offset, total)?;
        let block_bytes = u64::from(self.superblock.block_bytes);
        let in_place = offset.is_multiple_of(block_bytes)
            && bufs
                .iter()
                .all(|b| (b.len() as u64).is_multiple_of(block_bytes));
        if in_place {
            let mut at = offset;
            for buf in bufs.iter_mut() {
                self.read_blocks(at / block_bytes, buf)?;
                at += buf.len() as u64;
            }
            return Ok(());
        }
        let mut bounce = vec![0u8; total as usize];
        self.read(offset, &mut bounce)?;
        let mut at = 0;
        for buf in bufs.iter_mut() {
            buf.copy_from_slice(&bounce[at..at + buf.len()]);
            at += buf.len();
        }
        Ok(())
    }

    /// Reads whole blocks from `lba` into `buf`: ciphertext straight into the
    /// buffer, verified, then decrypted in place.
    pub(super) fn read_blocks(&self, lba: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        self.read_blocks_from(0, lba, buf)
    }

    /// Reads whole blocks through layer `layer` (0: the volume's own log,
    /// then its parent snapshots): holes fall through to the next layer.
    fn read_blocks_from(&self, layer: usize, lba: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        let shift = self.shift();
        let blocks = (buf.len() >> shift) as u64;
        let log = if layer == 0 {
            &self.log
        } else {
            &self.parents[layer - 1]
        };
        for piece in log.lookup(lba, blocks)? {
            match piece {
                ReadPiece::Hole { lba: at, blocks } if layer < self.parents.len() => {
                    let start = ((at - lba) << shift) as usize;
                    let part = &mut buf[start..start + ((blocks << shift) as usize)];
                    self.read_blocks_from(layer + 1, at, part)?;
                }
                ReadPiece::Hole { lba: at, blocks } => {
                    let start = ((at - lba) << shift) as usize;
                    let part = &mut buf[start..start + ((blocks << shift) as usize)];
                    self.read_base(at, part)?;
                }
                ReadPiece::Zeros { lba: at, blocks } => {
                    let start = ((at - lba) << shift) as usize;
                    buf[start..start + ((blocks << shift) as usize)].fill(0);
                }
                ReadPiece::Data(data) => {
                    let start = ((data.lba - lba) << shift) as usize;
                    let part = &mut buf[start..start + ((data.blocks << shift) as usize)];
                    self.read_piece(log, &data, part)?;
                }
            }
        }
        Ok(())
    }

    /// Reads blocks no layer holds: from the base image as they are, or
    /// zeros without one.
    pub(super) fn read_base(&self, lba: u64, part: &mut [u8]) -> Result<(), VolumeError> {
        let Some(base) = &self.base else {
            part.fill(0);
            return Ok(());
        };
        let offset = lba << self.shift();
        base.read_at(offset, part)
            .map_err(|source| VolumeError::Io {
                path: base.path().to_path_buf(),
                source,
            })
    }

    /// Reads one piece's ciphertext into `part` (guest memory, for a vhost
    /// read), then on the crypto pool verifies each block's checksum and
    /// decrypts it in place, chunk by chunk while it is in cache.
    fn read_piece(&self, log: &Log, piece: &DataPiece, part: &mut [u8]) -> Result<(), VolumeError> {
        let format = piece.table_format();
        let mut table = vec![0u8; format.table_bytes(piece.blocks) as usize];
        log.read_ciphertext_unverified(piece, part, &mut table)?;
        let key = self.key(&piece.key_id)?;
        let unit = self.unit();
        let first = Tweak::for_block(piece.seq, piece.lba);
        let verified = self.pool.try_run_with_side(
            part,
            &mut table,
            format.entry_bytes(),
            unit,
            first,
            |chunk, entries, tweak| {
                if let Some(index) = format.first_corrupt_block(chunk, unit.bytes(), entries) {
                    // The tweak's low half is the chunk's first block number.
                    return Err(tweak.0 as u64 - piece.lba + index as u64);
                }
                key.decrypt_here(chunk, unit, tweak);
                Ok(())
            },
        );
        verified.map_err(|index| VolumeError::Store(log.block_corrupt(piece, index)))
    }
}
