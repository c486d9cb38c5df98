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
//! 5. **append** through the caller's log head as a stream: each record
//!    goes to the device as soon as it is sealed, while the next is
//!    sealed (steps 4 and 5 overlap), the frame's meta last; then into the
//!    index together. Writing direct, every record is sealed before the
//!    append instead, outside the log head's lock: a queue's other batches
//!    in flight write through the same head meanwhile.
//!
//! The batch's changes therefore succeed or fail together: either the
//! append returns and all of them are in the kernel, or it fails and none
//! is acknowledged. Each record is atomic across a crash on its own (all
//! old or all new); a change larger than `WRITE_BYTES_MAX` is several
//! records.

use std::ops::Range;

use super::Integrity;
use super::stripes::BlockRange;
use super::tags::tag_blocks;
use super::{ActiveKey, Volume, VolumeError};
use crate::crypto::Tweak;
use crate::limits::WRITE_BYTES_MAX;
use crate::store::{
    AlignedBuf, AppendRecord, HeadId, IoMode, RecordKind, RecordShape, TableFormat,
};

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

/// One record of a batch, planned before it is sealed: what it covers (a
/// data record's payload is the next chunk of its step's image).
struct PlannedRecord {
    kind: RecordKind,
    lba: u64,
    block_count: u32,
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
    /// head `head` as one append (see the module docs): the way to keep
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
        self.seal_and_append(head, key.as_deref(), prepared)
    }

    /// Seals the prepared steps in batch order and appends them through
    /// `head` as they are sealed: each record takes a fresh sequence
    /// number, then (data) is encrypted in place and checksummed, and goes
    /// to the device while the next is encrypted (buffered; direct, all are
    /// sealed before the append takes the head, see the module docs). A data step larger than
    /// `WRITE_BYTES_MAX` becomes several records, and a zero step longer
    /// than `u32::MAX` blocks too.
    fn seal_and_append(
        &self,
        head: HeadId,
        key: Option<&ActiveKey>,
        prepared: Vec<Prepared>,
    ) -> Result<(), VolumeError> {
        let plan = self.plan_records(&prepared);
        let shapes: Vec<RecordShape> = plan
            .iter()
            .map(|r| RecordShape {
                kind: r.kind,
                block_count: r.block_count,
            })
            .collect();
        let mut images: Vec<AlignedBuf> = prepared
            .into_iter()
            .filter_map(|p| match p {
                Prepared::Data { image, .. } => Some(image),
                Prepared::Zero { .. } => None,
            })
            .collect();
        let mut tables: Vec<Vec<u8>> = plan
            .iter()
            .map(|r| match r.kind {
                RecordKind::Data => {
                    vec![0; TableFormat::V2.table_bytes(u64::from(r.block_count)) as usize]
                }
                _ => Vec::new(),
            })
            .collect();
        // Each data record's payload, mutable (encrypted in place), in
        // record order: the records of one image are its consecutive chunks.
        let payloads: Vec<&mut [u8]> = images
            .iter_mut()
            .flat_map(|image| image.chunks_mut(WRITE_BYTES_MAX as usize))
            .collect();
        let tables: Vec<&mut Vec<u8>> = tables.iter_mut().collect();
        let key_id = key.map(|k| k.id()).unwrap_or_default();
        let mut records = plan.iter().zip(tables);
        let mut payloads = payloads.into_iter();
        // Takes the record's sequence number and (data) encrypts its
        // payload and fills its table. The sequence number comes before
        // the encryption: it is half of the XTS tweak, and no two writes
        // under one key may share one.
        let mut seal = || {
            let (record, table) = records.next().expect("a record per shape");
            let seq = self.log.next_seq();
            let (payload, table): (&[u8], Option<&[u8]>) = match record.kind {
                RecordKind::Data => {
                    let key = key.ok_or(VolumeError::NoKey)?;
                    let chunk = payloads.next().expect("a payload per data record");
                    self.encrypt_and_checksum(key, seq, record.lba, chunk, table);
                    (chunk, Some(table))
                }
                _ => (&[], None),
            };
            Ok::<_, VolumeError>(AppendRecord {
                kind: record.kind,
                seq,
                lba: record.lba,
                block_count: record.block_count,
                key_id,
                payload,
                table,
                moved: false,
            })
        };
        match self.log.io_mode() {
            // Writing direct, a queue has several batches in flight and
            // they share its log head, whose lock an append holds until
            // its writes are done: seal every record first, outside it, so
            // one batch is encrypted while another's writes are in flight.
            // Sequence numbers then need not follow file order: the index
            // and replay both take the newest sequence number.
            IoMode::Direct => {
                let sealed = (0..shapes.len())
                    .map(|_| seal())
                    .collect::<Result<Vec<_>, _>>()?;
                self.log.append_streamed(head, &shapes, |stream| {
                    sealed.into_iter().for_each(|r| stream.push(r));
                    Ok::<_, VolumeError>(())
                })
            }
            // Buffered, one batch at a time per queue: each record goes to
            // the page cache while the next is sealed, in cache.
            IoMode::Buffered => self.log.append_streamed(head, &shapes, |stream| {
                for _ in 0..shapes.len() {
                    stream.push(seal()?);
                }
                Ok::<_, VolumeError>(())
            }),
        }
    }

    /// The records of the prepared steps, in order (see
    /// [`Volume::seal_and_append`]).
    fn plan_records(&self, prepared: &[Prepared]) -> Vec<PlannedRecord> {
        let mut records = Vec::new();
        for step in prepared {
            match step {
                Prepared::Data { lba, image } => {
                    let mut at = 0;
                    while at < image.len() {
                        let len = (image.len() - at).min(WRITE_BYTES_MAX as usize);
                        records.push(PlannedRecord {
                            kind: RecordKind::Data,
                            lba: lba + (at >> self.shift()) as u64,
                            block_count: (len >> self.shift()) as u32,
                        });
                        at += len;
                    }
                }
                Prepared::Zero { kind, first, end } => {
                    let mut lba = *first;
                    while lba < *end {
                        let blocks = (end - lba).min(u64::from(u32::MAX)) as u32;
                        records.push(PlannedRecord {
                            kind: *kind,
                            lba,
                            block_count: blocks,
                        });
                        lba += u64::from(blocks);
                    }
                }
            }
        }
        records
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

    /// Encrypts whole blocks in place with the tweaks of (`seq`, block) and
    /// fills `table`, their block table (version 2 layout: CRC32C, and in a
    /// volume with MACs each block's tag); each chunk is encrypted,
    /// checksummed and tagged on the crypto pool while it is in cache.
    fn encrypt_and_checksum(
        &self,
        key: &ActiveKey,
        seq: u64,
        lba: u64,
        data: &mut [u8],
        table: &mut [u8],
    ) {
        let unit = self.unit();
        let format = TableFormat::V2;
        let first = Tweak::for_block(seq, lba);
        let macs = self.superblock.integrity == Integrity::Mac;
        let done: Result<(), ()> = self.pool.try_run_with_side(
            data,
            table,
            format.entry_bytes(),
            unit,
            first,
            |chunk, entries, tweak| {
                key.encrypt_here(chunk, unit, tweak);
                format.fill(chunk, unit.bytes(), entries);
                if macs {
                    tag_blocks(key.mac_key(), tweak, chunk, unit.bytes(), entries);
                }
                Ok(())
            },
        );
        debug_assert!(done.is_ok());
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
