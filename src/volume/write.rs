//! The one write path. Every change to a volume's blocks (a write, a
//! discard, zeros) goes through a batch, in five steps:
//!
//! 1. **check** every change's range before anything happens, so a bad one
//!    fails the batch with nothing written;
//! 2. **lock** the stripes of every block the batch touches: shared for
//!    whole blocks, exclusive where a change covers part of a block (it
//!    reads the old block, see `stripes`);
//! 3. **prepare** the whole-block plaintext of every write: a partial
//!    block is the old block patched with the new bytes, the old block
//!    being read from the volume or, if an earlier change of the same batch
//!    covers it, taken from that change, so the batch's changes take effect
//!    in order;
//! 4. **seal**, in batch order: a fresh sequence number per record, then
//!    encryption with the tweak (sequence number, block) and the block
//!    checksum table, chunk by chunk on the crypto pool while the data is
//!    in cache;
//! 5. **append** every record with one `pwritev` through the caller's log
//!    head, and into the index together.
//!
//! The batch's changes therefore succeed or fail together: either the one
//! append returns and all of them are in the kernel, or it fails and none
//! is acknowledged. Each record is atomic across a crash on its own (all
//! old or all new); a change larger than `WRITE_BYTES_MAX` is several
//! records.

use std::ops::Range;

use super::stripes::BlockRange;
use super::{ActiveKey, Volume, VolumeError};
use crate::crypto::{KeyId, Tweak};
use crate::limits::WRITE_BYTES_MAX;
use crate::store::{AlignedBuf, AppendRecord, HeadId, RecordKind, TableFormat};

/// One change of a batch ([`Volume::write_batch`]). Offsets and lengths are
/// bytes, multiples of 512.
pub enum Change {
    /// `data` at `offset`.
    Write {
        /// Where, bytes.
        offset: u64,
        /// The new bytes (encrypted in place on the way: the caller gives
        /// them up), in an aligned buffer the log writes out as it is.
        data: AlignedBuf,
    },
    /// Discard `len` bytes at `offset`: the whole blocks inside the range
    /// read as zeros afterwards; partial blocks at its edges are left as
    /// they are (a discard is only a hint).
    Discard {
        /// Where, bytes.
        offset: u64,
        /// How much, bytes.
        len: u64,
    },
    /// Zeros over `len` bytes at `offset`, storing no data for the whole
    /// blocks inside the range: they are recorded as zeroed, or with
    /// `unmap` as deallocated (like a discard); both read as zeros. Partial
    /// blocks at the edges are written with zeros.
    WriteZeroes {
        /// Where, bytes.
        offset: u64,
        /// How much, bytes.
        len: u64,
        /// Record the whole blocks as deallocated rather than zeroed.
        unmap: bool,
    },
}

impl std::fmt::Debug for Change {
    /// Ranges only: never the data (it is a guest's plaintext).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Write { offset, data } => write!(f, "Write({offset}+{})", data.len()),
            Change::Discard { offset, len } => write!(f, "Discard({offset}+{len})"),
            Change::WriteZeroes { offset, len, unmap } => {
                write!(f, "WriteZeroes({offset}+{len}, unmap: {unmap})")
            }
        }
    }
}

impl Change {
    /// (offset, length) in bytes.
    fn range(&self) -> (u64, u64) {
        match self {
            Change::Write { offset, data } => (*offset, data.len() as u64),
            Change::Discard { offset, len } | Change::WriteZeroes { offset, len, .. } => {
                (*offset, *len)
            }
        }
    }
}

/// What one step of a batch does to the blocks, planned before any lock.
enum Step {
    /// New contents of blocks `first..end`: `data` at byte `skip` of the
    /// first block; the rest of the edge blocks keeps what they held.
    Blocks {
        first: u64,
        end: u64,
        skip: usize,
        data: AlignedBuf,
    },
    /// Blocks `first..end` read as zeros from now on, recorded as `kind`.
    Zero {
        kind: RecordKind,
        first: u64,
        end: u64,
    },
}

impl Step {
    fn blocks(&self) -> Range<u64> {
        match self {
            Step::Blocks { first, end, .. } | Step::Zero { first, end, .. } => *first..*end,
        }
    }
}

/// A step with its whole blocks ready to seal.
enum Prepared {
    /// The whole-block plaintext of blocks from `lba`.
    Data { lba: u64, image: AlignedBuf },
    /// Blocks that read as zeros from now on.
    Zero {
        kind: RecordKind,
        first: u64,
        end: u64,
    },
}

/// A batch sealed: the ciphertext images and the records over them.
struct Sealed {
    images: Vec<AlignedBuf>,
    records: Vec<SealedRecord>,
}

/// One record of a sealed batch: its sequence number and what it covers.
struct SealedRecord {
    kind: RecordKind,
    seq: u64,
    lba: u64,
    block_count: u32,
    /// For data: where its ciphertext is, and its block checksum table.
    payload: Option<SealedPayload>,
}

/// Where a data record's ciphertext is (bytes of one of the batch's
/// images), and its block table (version 2 layout).
struct SealedPayload {
    image: usize,
    bytes: Range<usize>,
    table: Vec<u8>,
}

impl Volume {
    /// Writes `data` at `offset` through the first log head. Writes of up
    /// to `WRITE_BYTES_MAX` (64 MiB) are one batch and atomic across a crash
    /// (all old or all new); larger ones are split into such batches.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        self.check_writable()?;
        self.check_range(offset, data.len() as u64)?;
        for (index, piece) in data.chunks(WRITE_BYTES_MAX as usize).enumerate() {
            let change = Change::Write {
                offset: offset + index as u64 * WRITE_BYTES_MAX,
                data: AlignedBuf::copy_from(piece),
            };
            self.write_batch(HeadId::FIRST, vec![change])?;
        }
        Ok(())
    }

    /// Discards `len` bytes at `offset` through the first log head (see
    /// [`Change::Discard`]).
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        self.write_batch(HeadId::FIRST, vec![Change::Discard { offset, len }])
    }

    /// Writes zeros over `len` bytes at `offset` through the first log head
    /// (see [`Change::WriteZeroes`]).
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), VolumeError> {
        let change = Change::WriteZeroes { offset, len, unmap };
        self.write_batch(HeadId::FIRST, vec![change])
    }

    /// Applies `changes` in order and appends them to the log through log
    /// head `head` with one `pwritev` (see the module docs): the way to keep
    /// a deep queue of small writes cheap. A queue worker passes its queue
    /// index as `head`. They succeed or fail together.
    pub fn write_batch(&self, head: HeadId, changes: Vec<Change>) -> Result<(), VolumeError> {
        let steps = self.checked_steps(changes)?;
        if steps.is_empty() {
            return Ok(());
        }
        let ranges: Vec<BlockRange> = steps
            .iter()
            .map(|step| BlockRange {
                first: step.blocks().start,
                end: step.blocks().end,
                exclusive: self.reads_old_blocks(step),
            })
            .collect();
        let _held = self.stripes.lock_ranges(&ranges);
        self.apply(head, steps)
    }

    /// [`Volume::write_batch`] for a caller that holds the stripes of every
    /// block `changes` touch exclusively already (a flatten: it looked up
    /// which blocks to copy under the same hold).
    pub(super) fn write_batch_held(
        &self,
        head: HeadId,
        changes: Vec<Change>,
    ) -> Result<(), VolumeError> {
        let steps = self.checked_steps(changes)?;
        if steps.is_empty() {
            return Ok(());
        }
        self.apply(head, steps)
    }

    /// Checks every change (step 1) and plans its steps, in order.
    fn checked_steps(&self, changes: Vec<Change>) -> Result<Vec<Step>, VolumeError> {
        self.check_writable()?;
        for change in &changes {
            let (offset, len) = change.range();
            self.check_range(offset, len)?;
        }
        Ok(changes
            .into_iter()
            .flat_map(|change| self.plan(change))
            .collect())
    }

    /// Prepares, seals and appends `steps` (steps 3 to 5), their stripes
    /// held.
    fn apply(&self, head: HeadId, steps: Vec<Step>) -> Result<(), VolumeError> {
        let mut prepared: Vec<Prepared> = Vec::with_capacity(steps.len());
        for step in steps {
            let next = self.prepare(step, &prepared)?;
            prepared.push(next);
        }
        let key = if prepared.iter().any(|p| matches!(p, Prepared::Data { .. })) {
            Some(self.current_key()?)
        } else {
            None
        };
        let sealed = self.seal(key.as_deref(), prepared)?;
        let key_id = key.map(|k| k.id()).unwrap_or_default();
        self.log.append(head, &sealed.append_records(key_id))?;
        Ok(())
    }

    /// The steps of one change, in the order they take effect.
    fn plan(&self, change: Change) -> Vec<Step> {
        let block_bytes = u64::from(self.superblock.block_bytes);
        match change {
            Change::Write { offset, data } => {
                if data.is_empty() {
                    return Vec::new();
                }
                let first = offset / block_bytes;
                let end = (offset + data.len() as u64).div_ceil(block_bytes);
                let skip = (offset - first * block_bytes) as usize;
                vec![Step::Blocks {
                    first,
                    end,
                    skip,
                    data,
                }]
            }
            Change::Discard { offset, len } => {
                let (first, end) = whole_blocks_inside(offset, len, block_bytes);
                zero_step(RecordKind::Discard, first, end)
            }
            Change::WriteZeroes { offset, len, unmap } => {
                let zeros = |offset: u64, len: u64| Change::Write {
                    offset,
                    data: AlignedBuf::zeroed(len as usize),
                };
                let (first, end) = whole_blocks_inside(offset, len, block_bytes);
                if first >= end {
                    // Inside one block (or two partial ones): write zeros.
                    return self.plan(zeros(offset, len));
                }
                let kind = if unmap {
                    RecordKind::Discard
                } else {
                    RecordKind::Zeroes
                };
                let tail = end * block_bytes;
                let mut steps = self.plan(zeros(offset, first * block_bytes - offset));
                steps.extend(self.plan(zeros(tail, offset + len - tail)));
                steps.extend(zero_step(kind, first, end));
                steps
            }
        }
    }

    /// True when `step` covers part of a block, whose old contents it needs.
    fn reads_old_blocks(&self, step: &Step) -> bool {
        match step {
            Step::Blocks {
                first,
                end,
                skip,
                data,
            } => *skip != 0 || data.len() as u64 != (end - first) << self.shift(),
            Step::Zero { .. } => false,
        }
    }

    /// The whole blocks of `step`. A partial edge block starts from what it
    /// holds after the batch's `earlier` steps (see [`Volume::old_block`]).
    fn prepare(&self, step: Step, earlier: &[Prepared]) -> Result<Prepared, VolumeError> {
        let partial = self.reads_old_blocks(&step);
        match step {
            Step::Zero { kind, first, end } => Ok(Prepared::Zero { kind, first, end }),
            Step::Blocks { first, data, .. } if !partial => Ok(Prepared::Data {
                lba: first,
                image: data,
            }),
            Step::Blocks {
                first,
                end,
                skip,
                data,
            } => {
                let block_bytes = self.unit().bytes();
                let mut image = AlignedBuf::zeroed(((end - first) << self.shift()) as usize);
                let data_end = skip + data.len();
                let mut edges = Vec::with_capacity(2);
                if skip != 0 {
                    edges.push(first);
                }
                if !data_end.is_multiple_of(block_bytes) && (end - 1 > first || skip == 0) {
                    edges.push(end - 1);
                }
                for block in edges {
                    let at = ((block - first) << self.shift()) as usize;
                    self.old_block(block, earlier, &mut image[at..at + block_bytes])?;
                }
                image[skip..data_end].copy_from_slice(&data);
                Ok(Prepared::Data { lba: first, image })
            }
        }
    }

    /// The plaintext block `block` holds after the batch's `earlier` steps:
    /// from the newest of them that covers it, else read from the volume.
    fn old_block(
        &self,
        block: u64,
        earlier: &[Prepared],
        out: &mut [u8],
    ) -> Result<(), VolumeError> {
        for prepared in earlier.iter().rev() {
            match prepared {
                Prepared::Data { lba, image } => {
                    let blocks = (image.len() >> self.shift()) as u64;
                    if (*lba..*lba + blocks).contains(&block) {
                        let at = ((block - lba) << self.shift()) as usize;
                        out.copy_from_slice(&image[at..at + out.len()]);
                        return Ok(());
                    }
                }
                Prepared::Zero { first, end, .. } => {
                    if (*first..*end).contains(&block) {
                        out.fill(0);
                        return Ok(());
                    }
                }
            }
        }
        self.read_blocks(block, out)
    }

    /// Seals the prepared steps in batch order: each record takes a fresh
    /// sequence number, then (data) is encrypted in place and checksummed.
    /// A data step larger than `WRITE_BYTES_MAX` becomes several records,
    /// and a zero step longer than `u32::MAX` blocks too.
    fn seal(
        &self,
        key: Option<&ActiveKey>,
        prepared: Vec<Prepared>,
    ) -> Result<Sealed, VolumeError> {
        let mut sealed = Sealed {
            images: Vec::new(),
            records: Vec::new(),
        };
        for step in prepared {
            match step {
                Prepared::Data { lba, mut image } => {
                    let key = key.ok_or(VolumeError::NoKey)?;
                    let image_index = sealed.images.len();
                    let mut at = 0;
                    for chunk in image.chunks_mut(WRITE_BYTES_MAX as usize) {
                        let chunk_lba = lba + (at >> self.shift()) as u64;
                        // Take the sequence number before encrypting: it is
                        // half of the XTS tweak, and no two writes under one
                        // key may share one.
                        let seq = self.log.next_seq();
                        let table = self.encrypt_and_checksum(key, seq, chunk_lba, chunk);
                        sealed.records.push(SealedRecord {
                            kind: RecordKind::Data,
                            seq,
                            lba: chunk_lba,
                            block_count: (chunk.len() >> self.shift()) as u32,
                            payload: Some(SealedPayload {
                                image: image_index,
                                bytes: at..at + chunk.len(),
                                table,
                            }),
                        });
                        at += chunk.len();
                    }
                    sealed.images.push(image);
                }
                Prepared::Zero { kind, first, end } => {
                    let mut lba = first;
                    while lba < end {
                        let blocks = (end - lba).min(u64::from(u32::MAX)) as u32;
                        sealed.records.push(SealedRecord {
                            kind,
                            seq: self.log.next_seq(),
                            lba,
                            block_count: blocks,
                            payload: None,
                        });
                        lba += u64::from(blocks);
                    }
                }
            }
        }
        Ok(sealed)
    }

    /// Encrypts whole blocks in place with the tweaks of (`seq`, block) and
    /// returns their block table (version 2 layout); each chunk is
    /// encrypted and checksummed on the crypto pool while it is in cache.
    fn encrypt_and_checksum(
        &self,
        key: &ActiveKey,
        seq: u64,
        lba: u64,
        data: &mut [u8],
    ) -> Vec<u8> {
        let unit = self.unit();
        let blocks = (data.len() / unit.bytes()) as u64;
        let format = TableFormat::V2;
        let mut table = vec![0u8; format.table_bytes(blocks) as usize];
        let first = Tweak::for_block(seq, lba);
        let done: Result<(), ()> = self.pool.try_run_with_side(
            data,
            &mut table,
            format.entry_bytes(),
            unit,
            first,
            |chunk, entries, tweak| {
                key.encrypt_here(chunk, unit, tweak);
                format.fill(chunk, unit.bytes(), entries);
                Ok(())
            },
        );
        debug_assert!(done.is_ok());
        table
    }
}

impl Sealed {
    /// The records to append, data under `key_id`.
    fn append_records(&self, key_id: KeyId) -> Vec<AppendRecord<'_>> {
        self.records
            .iter()
            .map(|record| {
                let (payload, table) = match &record.payload {
                    Some(p) => (&self.images[p.image][p.bytes.clone()], Some(&p.table[..])),
                    None => (&[][..], None),
                };
                AppendRecord {
                    kind: record.kind,
                    seq: record.seq,
                    lba: record.lba,
                    block_count: record.block_count,
                    key_id,
                    payload,
                    table,
                    moved: false,
                }
            })
            .collect()
    }
}

/// The whole blocks inside `len` bytes at `offset`: `first..end` (empty
/// when there are none).
fn whole_blocks_inside(offset: u64, len: u64, block_bytes: u64) -> (u64, u64) {
    (offset.div_ceil(block_bytes), (offset + len) / block_bytes)
}

/// The zero step of blocks `first..end`, if there are any.
fn zero_step(kind: RecordKind, first: u64, end: u64) -> Vec<Step> {
    if first < end {
        vec![Step::Zero { kind, first, end }]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests;
