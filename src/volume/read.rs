//! The read path: look the range up in the index (falling through to the
//! parent snapshots of a clone where it has holes), read the ciphertext
//! straight into the caller's buffer (guest memory, for a vhost read), then
//! verify each block's checksum (and in a volume with MACs its tag) and
//! decrypt it in place, chunk by chunk on the crypto pool while it is in
//! cache. Discarded and zeroed blocks read as zeros, holes too, or from the
//! base image of a volume over one (see `base.rs`); a block whose checksum
//! or tag fails is an error, never data.
//!
//! A batch of requests (a queue's reads of one wake-up) is planned first,
//! then the ciphertext of all of them is read together
//! ([`Log::read_pieces_unverified`]), then each piece is verified and
//! decrypted: the device sees the batch's reads in parallel.

use super::tags::first_forged_block;
use super::{Integrity, Volume, VolumeError};
use crate::crypto::Tweak;
use crate::store::{DataPiece, Log, PieceRead, ReadPiece, TableFormat};

/// One request of a batch: `offset..offset + Σ len` into `bufs`, in order
/// (a scatter list, such as a guest's descriptors).
pub struct ReadRequest<'a, 'b> {
    /// Byte offset in the volume.
    pub offset: u64,
    /// Where the bytes go.
    pub bufs: &'a mut [&'b mut [u8]],
}

/// A batch's ciphertext pieces to read, each with the buffer it goes to
/// and the request it belongs to.
#[derive(Default)]
struct ReadPlan<'p> {
    jobs: Vec<PieceJob<'p>>,
}

struct PieceJob<'p> {
    request: usize,
    /// 0: the volume's own log; else its parent snapshot `layer - 1`.
    layer: usize,
    piece: DataPiece,
    part: &'p mut [u8],
}

impl Volume {
    /// Reads `buf.len()` bytes at `offset`. Never-written, discarded and
    /// zeroed blocks read as zeros; a block whose checksum fails is an error.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        self.read_vectored(offset, &mut [buf])
    }

    /// Reads `offset..offset + Σ len` into several buffers in order (a
    /// scatter list, such as a guest's descriptors). Buffers that hold whole
    /// blocks are read in place; otherwise one bounce buffer is used.
    pub fn read_vectored(&self, offset: u64, bufs: &mut [&mut [u8]]) -> Result<(), VolumeError> {
        let mut request = [ReadRequest { offset, bufs }];
        self.read_batch(&mut request)
            .pop()
            .expect("one outcome per request")
    }

    /// Reads every request of `requests`, their ciphertext in flight
    /// together; returns each one's outcome, in order.
    pub fn read_batch(&self, requests: &mut [ReadRequest<'_, '_>]) -> Vec<Result<(), VolumeError>> {
        let block_bytes = u64::from(self.superblock.block_bytes);
        let mut results: Vec<Result<(), VolumeError>> = requests
            .iter()
            .map(|r| self.check_range(r.offset, total_len(r.bufs)))
            .collect();
        // A request that is not whole blocks in whole-block buffers is read
        // into a bounce buffer of whole blocks.
        let mut bounces: Vec<Option<Vec<u8>>> = requests
            .iter()
            .zip(&results)
            .map(|(r, checked)| {
                let whole = r.offset.is_multiple_of(block_bytes)
                    && r.bufs
                        .iter()
                        .all(|b| (b.len() as u64).is_multiple_of(block_bytes));
                // Only for a range checked to lie inside the volume.
                (checked.is_ok() && !whole).then(|| {
                    let first = r.offset / block_bytes;
                    let end = (r.offset + total_len(r.bufs)).div_ceil(block_bytes);
                    vec![0u8; ((end - first) * block_bytes) as usize]
                })
            })
            .collect();
        {
            let mut plan = ReadPlan::default();
            for (index, (request, bounce)) in
                requests.iter_mut().zip(bounces.iter_mut()).enumerate()
            {
                if results[index].is_err() {
                    continue;
                }
                let planned = match bounce {
                    Some(bounce) => {
                        self.plan_blocks(&mut plan, index, 0, request.offset / block_bytes, bounce)
                    }
                    None => {
                        let mut at = request.offset;
                        request.bufs.iter_mut().try_for_each(|buf| {
                            let lba = at / block_bytes;
                            at += buf.len() as u64;
                            self.plan_blocks(&mut plan, index, 0, lba, buf)
                        })
                    }
                };
                results[index] = planned;
            }
            self.run_plan(plan, &mut results);
        }
        for ((request, bounce), result) in requests.iter_mut().zip(&bounces).zip(&results) {
            let (Some(bounce), Ok(())) = (bounce, result) else {
                continue;
            };
            let mut at = (request.offset % block_bytes) as usize;
            for buf in request.bufs.iter_mut() {
                buf.copy_from_slice(&bounce[at..at + buf.len()]);
                at += buf.len();
            }
        }
        results
    }

    /// Reads whole blocks from `lba` into `buf`: ciphertext straight into the
    /// buffer, verified, then decrypted in place.
    pub(super) fn read_blocks(&self, lba: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        self.read(lba << self.shift(), buf)
    }

    /// Plans the read of whole blocks from `lba` into `buf` through layer
    /// `layer` (0: the volume's own log, then its parent snapshots): holes
    /// fall through to the next layer; zeros and the base image are filled
    /// in now, ciphertext pieces join `plan`.
    fn plan_blocks<'p>(
        &self,
        plan: &mut ReadPlan<'p>,
        request: usize,
        layer: usize,
        lba: u64,
        buf: &'p mut [u8],
    ) -> Result<(), VolumeError> {
        let shift = self.shift();
        let blocks = (buf.len() >> shift) as u64;
        let mut rest = buf;
        let mut at_lba = lba;
        for piece in self.layer(layer).lookup(lba, blocks)? {
            let (piece_lba, piece_blocks) = match &piece {
                ReadPiece::Hole { lba, blocks } | ReadPiece::Zeros { lba, blocks } => {
                    (*lba, *blocks)
                }
                ReadPiece::Data(data) => (data.lba, data.blocks),
            };
            assert_eq!(piece_lba, at_lba, "lookup pieces cover the range in order");
            let (part, tail) =
                std::mem::take(&mut rest).split_at_mut((piece_blocks << shift) as usize);
            rest = tail;
            at_lba += piece_blocks;
            match piece {
                ReadPiece::Hole { lba: at, .. } if layer < self.parents.len() => {
                    self.plan_blocks(plan, request, layer + 1, at, part)?;
                }
                ReadPiece::Hole { lba: at, .. } => self.read_base(at, part)?,
                ReadPiece::Zeros { .. } => part.fill(0),
                ReadPiece::Data(piece) => plan.jobs.push(PieceJob {
                    request,
                    layer,
                    piece,
                    part,
                }),
            }
        }
        Ok(())
    }

    /// The log of layer `layer` (see [`Volume::plan_blocks`]).
    fn layer(&self, layer: usize) -> &Log {
        match layer {
            0 => &self.log,
            _ => &self.parents[layer - 1],
        }
    }

    /// Reads the ciphertext of every job of `plan` (each layer's together),
    /// then verifies and decrypts each; the first failure of a request is
    /// its outcome.
    fn run_plan(&self, plan: ReadPlan<'_>, results: &mut [Result<(), VolumeError>]) {
        let mut jobs = plan.jobs;
        jobs.sort_by_key(|j| j.layer);
        for layer_jobs in jobs.chunk_by_mut(|a, b| a.layer == b.layer) {
            let log = self.layer(layer_jobs[0].layer);
            let mut tables: Vec<Vec<u8>> = layer_jobs
                .iter()
                .map(|j| vec![0u8; j.piece.table_format().table_bytes(j.piece.blocks) as usize])
                .collect();
            let mut reads: Vec<PieceRead<'_>> = layer_jobs
                .iter_mut()
                .zip(tables.iter_mut())
                .map(|(job, table)| PieceRead {
                    piece: &job.piece,
                    buf: &mut *job.part,
                    table,
                })
                .collect();
            let outcomes = log.read_pieces_unverified(&mut reads);
            drop(reads);
            for ((job, table), outcome) in layer_jobs.iter_mut().zip(&mut tables).zip(outcomes) {
                if results[job.request].is_err() {
                    continue;
                }
                results[job.request] = outcome
                    .map_err(VolumeError::from)
                    .and_then(|()| self.verify_and_decrypt(log, &job.piece, job.part, table));
            }
        }
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

    /// Verifies each block of one piece's ciphertext (read into `part`,
    /// its table entries into `table`) on the crypto pool and decrypts it
    /// in place, chunk by chunk while it is in cache.
    fn verify_and_decrypt(
        &self,
        log: &Log,
        piece: &DataPiece,
        part: &mut [u8],
        table: &mut [u8],
    ) -> Result<(), VolumeError> {
        let format = piece.table_format();
        let key = self.key(&piece.key_id)?;
        let unit = self.unit();
        let first = Tweak::for_block(piece.seq, piece.lba);
        // Version 1 segments have no tags (a volume with them is `crc`).
        let tagged = self.superblock.integrity == Integrity::Mac && format == TableFormat::V2;
        let verified = self.pool.try_run_with_side(
            part,
            table,
            format.entry_bytes(),
            unit,
            first,
            |chunk, entries, tweak| {
                // The tweak's low half is the chunk's first block number.
                let at = |index: usize| tweak.0 as u64 - piece.lba + index as u64;
                if let Some(index) = format.first_corrupt_block(chunk, unit.bytes(), entries) {
                    return Err((at(index), "block checksum mismatch"));
                }
                if tagged
                    && let Some(index) =
                        first_forged_block(key.mac_key(), tweak, chunk, unit.bytes(), entries)
                {
                    return Err((
                        at(index),
                        "block tag mismatch (not written by this volume's key)",
                    ));
                }
                key.decrypt_here(chunk, unit, tweak);
                Ok(())
            },
        );
        verified
            .map_err(|(index, reason)| VolumeError::Store(log.block_corrupt(piece, index, reason)))
    }
}

/// Bytes a scatter list holds.
fn total_len(bufs: &[&mut [u8]]) -> u64 {
    bufs.iter().map(|b| b.len() as u64).sum()
}
