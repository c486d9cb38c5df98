//! Reading: looking a block range up in the index, and reading a piece's
//! ciphertext and checksum-table entries for the caller to verify.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::super::StoreError;
use super::super::index::{Location, Piece};
use super::super::segment;
use super::super::table::TableFormat;
use super::state::IndexState;
use super::{Log, SegmentFile};
use crate::crypto::KeyId;
use crate::sync::RwLockOrRecover;

/// A looked-up piece of a range, ready to read.
#[derive(Clone, Debug)]
pub enum ReadPiece {
    /// Never written here: reads as zeros, or as the parent's blocks for a
    /// clone.
    Hole {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u64,
    },
    /// Discarded or zeroed: reads as zeros.
    Zeros {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u64,
    },
    /// Ciphertext in a segment.
    Data(DataPiece),
}

/// Ciphertext blocks of one record, located in their segment.
#[derive(Clone, Debug)]
pub struct DataPiece {
    /// First block.
    pub lba: u64,
    /// Blocks.
    pub blocks: u64,
    /// Sequence number they were written under (for the XTS tweak).
    pub seq: u64,
    /// Key they are encrypted under.
    pub key_id: KeyId,
    segment_id: u64,
    file: Arc<SegmentFile>,
    /// Offset of the table entry of block `lba`.
    table_offset: u64,
    /// Offset of the ciphertext of block `lba`.
    payload_offset: u64,
}

impl DataPiece {
    /// The layout of the piece's block table entries.
    pub fn table_format(&self) -> TableFormat {
        self.file.version.table_format()
    }
}

impl Log {
    /// The range `blocks` blocks from `lba` as pieces to read.
    pub fn lookup(&self, lba: u64, blocks: u64) -> Result<Vec<ReadPiece>, StoreError> {
        let state = self.read_state();
        let pieces = state.index.lookup(lba, blocks);
        let files = self.files.read_or_recover();
        pieces
            .into_iter()
            .map(|piece| self.resolve(&state, &files, piece))
            .collect()
    }

    fn resolve(
        &self,
        state: &IndexState,
        files: &BTreeMap<u64, Arc<SegmentFile>>,
        piece: Piece,
    ) -> Result<ReadPiece, StoreError> {
        let (seq, d) = match piece.extent {
            None => {
                return Ok(ReadPiece::Hole {
                    lba: piece.lba,
                    blocks: piece.blocks,
                });
            }
            Some((_, Location::Zero)) => {
                return Ok(ReadPiece::Zeros {
                    lba: piece.lba,
                    blocks: piece.blocks,
                });
            }
            Some((seq, Location::Data(d))) => (seq, d),
        };
        let file = files.get(&d.segment_id).ok_or(StoreError::SegmentMissing {
            segment_id: d.segment_id,
        })?;
        let into_record = piece.lba - d.record_lba;
        Ok(ReadPiece::Data(DataPiece {
            lba: piece.lba,
            blocks: piece.blocks,
            seq,
            key_id: state.keys[d.key_index as usize],
            segment_id: d.segment_id,
            table_offset: d.table_offset + file.version.table_format().table_bytes(into_record),
            payload_offset: d.payload_offset + (into_record << self.config.block_shift),
            file: Arc::clone(file),
        }))
    }

    /// The error for block `index` of `piece` failing a check (`reason`).
    pub fn block_corrupt(&self, piece: &DataPiece, index: u64, reason: &'static str) -> StoreError {
        StoreError::Corrupt {
            path: self.segment_path(piece.segment_id),
            offset_bytes: piece.payload_offset + (index << self.config.block_shift),
            reason,
        }
    }

    /// Reads the ciphertext of `piece` into `buf` and its entries of the
    /// record's block table into `table` (`piece.table_format()`'s
    /// `table_bytes` of the piece's blocks) without checking them: the
    /// caller verifies each block (`TableFormat::first_corrupt_block`, then
    /// [`Log::block_corrupt`]) before using it; the volume does so on the
    /// crypto pool, next to decryption.
    pub fn read_ciphertext_unverified(
        &self,
        piece: &DataPiece,
        buf: &mut [u8],
        table: &mut [u8],
    ) -> Result<(), StoreError> {
        assert_eq!(buf.len() as u64, piece.blocks << self.config.block_shift);
        assert_eq!(
            table.len() as u64,
            piece.table_format().table_bytes(piece.blocks)
        );
        let start = piece.payload_offset.min(piece.table_offset);
        let end =
            (piece.payload_offset + buf.len() as u64).max(piece.table_offset + table.len() as u64);
        let _resident = self.before_read(piece.segment_id, start, end)?;
        let path = || self.segment_path(piece.segment_id);
        let short = |offset| StoreError::Corrupt {
            path: path(),
            offset_bytes: offset,
            reason: "segment ends inside an indexed record",
        };
        for (part, offset) in [(buf, piece.payload_offset), (table, piece.table_offset)] {
            if !segment::read_exact_or_eof(&piece.file.file, part, offset)
                .map_err(|e| StoreError::io(&path(), e))?
            {
                return Err(short(offset));
            }
        }
        Ok(())
    }
}
