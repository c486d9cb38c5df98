//! Scanning a segment: every record from an offset on, each checked
//! (headers, tables, every block's CRC), up to the seal or the first
//! invalid record or frame. `v1` reads version 1 segments, `v2` frames.

mod v1;
mod v2;

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::StoreError;
use super::frame::{Mac, SealBody};
use super::record::{PlacedRecord, RecordHeader, RecordKind};
use super::segment::SegmentVersion;
use super::table::TableFormat;
use crate::crypto::KeyId;

pub use v1::find_seal as find_v1_seal;
pub use v2::{frame_meta, read_seal};

/// What records in a segment must stay within.
#[derive(Clone, Copy, Debug)]
pub struct RecordLimits {
    /// The volume's block size, log2.
    pub block_shift: u8,
    /// The volume's blocks.
    pub capacity_blocks: u64,
}

/// One valid record found by a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScannedRecord {
    /// The record and where its parts are.
    pub record: PlacedRecord,
    /// Its record MAC (zero in version 1 and without MACs).
    pub mac: Mac,
}

impl ScannedRecord {
    fn unmacced(record: PlacedRecord) -> Self {
        Self {
            record,
            mac: [0; 16],
        }
    }
}

/// A segment's seal, found by a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealFound {
    /// Offset of the seal record (version 1) or seal frame (version 2).
    pub offset: u64,
    /// Where the seal ends: the end of the segment's log.
    pub end: u64,
    /// The seal MAC (zero in version 1 and without MACs).
    pub mac: Mac,
    /// The seal body (version 2 only).
    pub body: Option<SealBody>,
}

/// How a scan of a segment ended.
#[derive(Debug)]
pub struct ScanOutcome {
    /// Valid records, in file order (seal records excluded).
    pub records: Vec<ScannedRecord>,
    /// Where the valid log ends: past the seal if there is one, else where
    /// the next append would go.
    pub end_offset: u64,
    /// Why the scan stopped before the end of the log, if it did.
    pub stopped: Option<(u64, &'static str)>,
    /// The segment's seal, if it has one.
    pub seal: Option<SealFound>,
    /// Where records of a sealed segment were indexed although a block
    /// fails its CRC (reads of that block report it): the record's offset
    /// (version 1) or its frame's (version 2).
    pub damaged: Vec<u64>,
}

/// Scans the records of segment `segment_id` (of `version`) from `start`.
pub fn scan_segment(
    file: &File,
    path: &Path,
    segment_id: u64,
    version: SegmentVersion,
    start: u64,
    limits: &RecordLimits,
) -> Result<ScanOutcome, StoreError> {
    let segment = Scanned {
        file,
        path,
        segment_id,
        limits,
    };
    match version {
        SegmentVersion::V1 => v1::scan(segment, start),
        SegmentVersion::V2 => v2::scan(segment, start),
    }
}

/// The segment a version's scanner reads: its file (and path, for errors),
/// its id and what its records must stay within.
#[derive(Clone, Copy)]
struct Scanned<'a> {
    file: &'a File,
    path: &'a Path,
    segment_id: u64,
    limits: &'a RecordLimits,
}

/// Checks what a record may say in this volume: its block size, its blocks
/// within the volume, and no more payload than the largest write.
fn check_limits(header: &RecordHeader, limits: &RecordLimits) -> Result<(), &'static str> {
    if header.kind == RecordKind::Seal {
        return Ok(());
    }
    if header.block_shift != limits.block_shift {
        return Err("record block size differs from the volume's");
    }
    let end = header.lba.checked_add(u64::from(header.block_count));
    if end.is_none_or(|end| end > limits.capacity_blocks) {
        return Err("record covers blocks past the volume's end");
    }
    if header.payload_bytes() > crate::limits::WRITE_BYTES_MAX {
        return Err("record larger than the largest write");
    }
    Ok(())
}

/// True when every block of the data record `header`, whose ciphertext
/// starts at `payload_offset` and whose table (in `format`) is `table`,
/// matches its CRC. Reads in bounded batches so a large record never
/// needs a large buffer.
fn blocks_intact(
    file: &File,
    payload_offset: u64,
    header: &RecordHeader,
    table: &[u8],
    format: TableFormat,
) -> io::Result<bool> {
    let block_bytes = 1usize << header.block_shift;
    let blocks = header.block_count as usize;
    let blocks_per_batch = (1 << 20) / block_bytes;
    let mut buf = vec![0u8; blocks_per_batch.min(blocks) * block_bytes];
    let entry = format.entry_bytes();
    let mut block = 0usize;
    while block < blocks {
        let count = blocks_per_batch.min(blocks - block);
        let chunk = &mut buf[..count * block_bytes];
        file.read_exact_at(chunk, payload_offset + (block * block_bytes) as u64)?;
        let entries = &table[block * entry..(block + count) * entry];
        if format
            .first_corrupt_block(chunk, block_bytes, entries)
            .is_some()
        {
            return Ok(false);
        }
        block += count;
    }
    Ok(true)
}

/// The key ids of the data records of a segment (live or dead), from
/// their headers alone, up to the seal or the first invalid header.
pub fn data_keys(
    file: &File,
    segment_id: u64,
    version: SegmentVersion,
) -> io::Result<BTreeSet<KeyId>> {
    let headers = match version {
        SegmentVersion::V1 => v1::headers(file)?,
        SegmentVersion::V2 => v2::headers(file, segment_id)?,
    };
    Ok(headers
        .into_iter()
        .filter(|h| h.kind == RecordKind::Data)
        .map(|h| h.key_id)
        .collect())
}
