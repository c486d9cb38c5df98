//! What the mover (compaction, re-key) moves: live pieces of records,
//! read back and verified, with their block tables in the version 2 layout
//! whatever segment they come from.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;

use super::super::StoreError;
use super::super::aligned::AlignedBuf;
use super::super::index::{DataLocation, Extent, Location};
use super::super::table::TableFormat;
use super::Log;
use crate::crypto::KeyId;

/// One live piece to move: blocks of one record the index still maps.
#[derive(Clone, Copy)]
pub(super) struct LivePiece {
    pub(super) lba: u64,
    pub(super) blocks: u64,
    pub(super) seq: u64,
    pub(super) key_id: KeyId,
    pub(super) segment_id: u64,
    /// Offset of the table entry of block `lba`.
    pub(super) table_offset: u64,
    /// Offset of the ciphertext of block `lba`.
    pub(super) payload_offset: u64,
    /// The layout of the record's table.
    pub(super) format: TableFormat,
}

impl LivePiece {
    /// The piece an index holds as `extent` from block `lba`, in the data
    /// record at `location` (whose table is in `format`), under `key_id`.
    pub(super) fn new(
        lba: u64,
        extent: &Extent,
        location: &DataLocation,
        key_id: KeyId,
        format: TableFormat,
        block_shift: u8,
    ) -> Self {
        let into_record = lba - location.record_lba;
        Self {
            lba,
            blocks: extent.blocks,
            seq: extent.seq,
            key_id,
            segment_id: location.segment_id,
            table_offset: location.table_offset + format.table_bytes(into_record),
            payload_offset: location.payload_offset + (into_record << block_shift),
            format,
        }
    }
}

/// A piece's ciphertext and its block table (version 2 layout), read and
/// verified.
pub(super) struct MovedPiece {
    pub(super) payload: AlignedBuf,
    pub(super) table: Vec<u8>,
    /// The key the payload is under (changed by a re-key).
    pub(super) key_id: KeyId,
    /// Re-encrypted under a new key on the way.
    pub(super) rekeyed: bool,
}

impl Log {
    /// The pieces of the index that live in `segments`, in file order.
    pub(super) fn live_pieces(&self, segments: &BTreeSet<u64>) -> Vec<LivePiece> {
        let state = self.read_state();
        let mut pieces: Vec<LivePiece> = state
            .index
            .iter()
            .filter_map(|(lba, extent)| match extent.location {
                Location::Data(d) if segments.contains(&d.segment_id) => {
                    let file = self.segment_file(d.segment_id).ok()?;
                    Some(LivePiece::new(
                        lba,
                        extent,
                        &d,
                        state.keys[d.key_index as usize],
                        file.version.table_format(),
                        self.config.block_shift,
                    ))
                }
                _ => None,
            })
            .collect();
        pieces.sort_by_key(|p| (p.segment_id, p.payload_offset));
        pieces
    }

    /// The ciphertext and block table of `piece`, or `None` when a block
    /// fails its CRC (the piece stays where it is).
    pub(super) fn read_verified(
        &self,
        piece: &LivePiece,
    ) -> Result<Option<MovedPiece>, StoreError> {
        let file = self.segment_file(piece.segment_id)?;
        let block_bytes = 1usize << self.config.block_shift;
        let mut table = vec![0u8; piece.format.table_bytes(piece.blocks) as usize];
        let payload_bytes = piece.blocks << self.config.block_shift;
        let _resident = self.before_read(
            piece.segment_id,
            piece.payload_offset.min(piece.table_offset),
            (piece.payload_offset + payload_bytes).max(piece.table_offset + table.len() as u64),
        )?;
        let payload = AlignedBuf::overwritten_by(piece.blocks as usize * block_bytes, |buf| {
            file.file.read_exact_at(buf, piece.payload_offset)
        })
        .and_then(|payload| {
            file.file.read_exact_at(&mut table, piece.table_offset)?;
            Ok(payload)
        })
        .map_err(|e| StoreError::io(&self.segment_path(piece.segment_id), e))?;
        let intact = piece
            .format
            .first_corrupt_block(&payload, block_bytes, &table)
            .is_none();
        Ok(intact.then(|| MovedPiece {
            payload,
            table: piece.format.to_v2(&table),
            key_id: piece.key_id,
            rekeyed: false,
        }))
    }
}
