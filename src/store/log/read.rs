//! Reading: looking a block range up in the index, and reading a piece's
//! ciphertext and checksum-table entries for the caller to verify.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::super::StoreError;
use super::super::aligned::{ALIGN, AlignedBuf, align_up};
use super::super::index::{Location, Piece};
use super::super::io::reads::{ReadOp, read_all};
use super::super::table::TableFormat;
use super::events::ReadRange;
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

    /// The whole pages of its segment that `read` needs: its ciphertext's
    /// and, `with_table`, those of its entries of the block table; apart
    /// unless they touch (a 4 KiB read inside a large record needs nothing
    /// of what lies between the record's table and its data).
    fn pages_of(&self, read: &PieceRead<'_>, with_table: bool) -> Vec<ReadRange> {
        let piece = read.piece;
        let pages = |start: u64, len: u64| ReadRange {
            segment_id: piece.segment_id,
            start: start - start % ALIGN as u64,
            end: align_up((start + len) as usize) as u64,
        };
        let payload = pages(piece.payload_offset, read.buf.len() as u64);
        if !with_table {
            return vec![payload];
        }
        let table = pages(piece.table_offset, read.table.len() as u64);
        if table.end >= payload.start && payload.end >= table.start {
            let start = table.start.min(payload.start);
            let end = table.end.max(payload.end);
            return vec![ReadRange {
                start,
                end,
                ..payload
            }];
        }
        vec![table, payload]
    }

    /// Reads each piece's ciphertext into its `buf` and its entries of the
    /// record's block table into its `table` (`piece.table_format()`'s
    /// `table_bytes` of the piece's blocks) without checking them: the
    /// caller verifies each block (`TableFormat::first_corrupt_block`, then
    /// [`Log::block_corrupt`]) before using it; the volume does so on the
    /// crypto pool, next to decryption. Returns each read's outcome, in
    /// order.
    ///
    /// Table entries come from the frame-meta cache where it has them;
    /// every read the cache does not answer is submitted together
    /// (`io::reads`). In direct mode ciphertext is read `O_DIRECT` straight
    /// into `buf` when `buf` and the range are 4 KiB-aligned, else through
    /// an aligned bounce buffer; table pages read on a miss join the cache.
    pub fn read_pieces_unverified(
        &self,
        reads: &mut [PieceRead<'_>],
    ) -> Vec<Result<(), StoreError>> {
        let mut results: Vec<Result<(), StoreError>> = reads.iter().map(|_| Ok(())).collect();
        let mut bounces: Vec<Bounce> = Vec::new();
        // Per read: its table entries, its ciphertext read in place.
        let mut in_place = vec![(false, false); reads.len()];
        // Table entries from the frame-meta cache where it has them.
        let cached: Vec<bool> = reads
            .iter_mut()
            .map(|read| {
                let piece = read.piece;
                assert_eq!(
                    read.buf.len() as u64,
                    piece.blocks << self.config.block_shift
                );
                assert_eq!(
                    read.table.len() as u64,
                    piece.table_format().table_bytes(piece.blocks)
                );
                self.meta_cache
                    .copy_out(piece.segment_id, piece.table_offset, read.table)
            })
            .collect();
        // The pages to read (what a bounce buffer or the cache may read),
        // held until every read completed (see `LogEvents::before_reads`).
        let (owners, ranges): (Vec<usize>, Vec<ReadRange>) = reads
            .iter()
            .enumerate()
            .flat_map(|(index, read)| {
                let pages = self.pages_of(read, !cached[index]);
                pages.into_iter().map(move |range| (index, range))
            })
            .unzip();
        let mut _pins = Vec::with_capacity(ranges.len());
        for (owner, pin) in owners.into_iter().zip(self.before_reads(&ranges)) {
            match pin {
                Ok(pin) => _pins.push(pin),
                Err(error) => results[owner] = Err(error),
            }
        }
        for (index, read) in reads.iter_mut().enumerate() {
            if results[index].is_err() {
                continue;
            }
            let piece = read.piece;
            let direct = piece.file.direct.is_some();
            match (cached[index], direct) {
                (true, _) => {}
                (false, true) => bounces.push(Bounce::around(
                    index,
                    Part::Table,
                    piece.table_offset,
                    read.table.len(),
                )),
                (false, false) => in_place[index].0 = true,
            }
            in_place[index].1 = !direct
                || (piece.payload_offset.is_multiple_of(ALIGN as u64)
                    && read.buf.len().is_multiple_of(ALIGN)
                    && (read.buf.as_ptr() as usize).is_multiple_of(ALIGN));
            if !in_place[index].1 {
                bounces.push(Bounce::around(
                    index,
                    Part::Payload,
                    piece.payload_offset,
                    read.buf.len(),
                ));
            }
        }
        let pieces: Vec<&DataPiece> = reads.iter().map(|r| r.piece).collect();
        let outcomes = {
            // Ciphertext first, in order: pieces that follow each other in a
            // segment merge into one read.
            let mut payloads: Vec<(usize, ReadOp<'_>)> = Vec::with_capacity(reads.len());
            let mut tables: Vec<(usize, ReadOp<'_>)> = Vec::new();
            for (index, read) in reads.iter_mut().enumerate() {
                if results[index].is_err() {
                    continue;
                }
                let PieceRead { piece, buf, table } = read;
                let file = piece.file.read_fd();
                if in_place[index].0 {
                    let offset = piece.table_offset;
                    tables.push((
                        index,
                        ReadOp {
                            file,
                            offset,
                            buf: table,
                        },
                    ));
                }
                if in_place[index].1 {
                    let offset = piece.payload_offset;
                    payloads.push((index, ReadOp { file, offset, buf }));
                }
            }
            for bounce in bounces.iter_mut() {
                let file = pieces[bounce.read].file.read_fd();
                let (start, pages) = (bounce.start, &mut bounce.pages[..]);
                tables.push((
                    bounce.read,
                    ReadOp {
                        file,
                        offset: start,
                        buf: pages,
                    },
                ));
            }
            let (owners, mut ops): (Vec<usize>, Vec<ReadOp<'_>>) =
                payloads.into_iter().chain(tables).unzip();
            owners
                .into_iter()
                .zip(read_all(&mut ops))
                .collect::<Vec<_>>()
        };
        for (index, outcome) in outcomes {
            let piece = pieces[index];
            let failed = match outcome {
                Ok(true) => continue,
                Ok(false) => StoreError::Corrupt {
                    path: self.segment_path(piece.segment_id),
                    offset_bytes: piece.payload_offset,
                    reason: "segment ends inside an indexed record",
                },
                Err(error) => StoreError::io(&self.segment_path(piece.segment_id), error),
            };
            if results[index].is_ok() {
                results[index] = Err(failed);
            }
        }
        for bounce in &bounces {
            if results[bounce.read].is_err() {
                continue;
            }
            let read = &mut reads[bounce.read];
            let (at, target) = match bounce.part {
                Part::Table => {
                    self.meta_cache
                        .insert(read.piece.segment_id, bounce.start, &bounce.pages);
                    (read.piece.table_offset, &mut *read.table)
                }
                Part::Payload => (read.piece.payload_offset, &mut *read.buf),
            };
            let skip = (at - bounce.start) as usize;
            target.copy_from_slice(&bounce.pages[skip..skip + target.len()]);
        }
        results
    }
}

/// One piece to read, and where its ciphertext and table entries go.
pub struct PieceRead<'a> {
    /// The piece.
    pub piece: &'a DataPiece,
    /// Its ciphertext.
    pub buf: &'a mut [u8],
    /// Its block table entries.
    pub table: &'a mut [u8],
}

/// Which part of a piece a bounce buffer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Table,
    Payload,
}

/// Whole 4 KiB pages around a range that cannot be read in place.
struct Bounce {
    read: usize,
    part: Part,
    start: u64,
    pages: AlignedBuf,
}

impl Bounce {
    fn around(read: usize, part: Part, offset: u64, len: usize) -> Self {
        let start = offset - offset % ALIGN as u64;
        let end = align_up((offset + len as u64) as usize);
        Self {
            read,
            part,
            start,
            pages: AlignedBuf::zeroed(end - start as usize),
        }
    }
}
