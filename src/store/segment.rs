//! Segment files: creating them, appending to them, and scanning them back.
//!
//! A segment is `segments/<id as 16 hex digits>.seg`: a 64-byte segment header
//! (layout in `docs/format.md`, section 4.1), then records back to back. Only one
//! log head appends to a segment, so a segment never has holes: the first
//! invalid record of an unsealed segment is its torn tail.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::StoreError;
use super::record::{
    RECORD_HEADER_BYTES, RecordHeader, RecordKind, UncheckedRecordHeader, checksum_entry_offset,
    first_corrupt_block, get_u16, get_u32, get_u64, put_u16, put_u32, put_u64,
};

/// Size of the segment header, bytes.
pub const SEGMENT_HEADER_BYTES: u64 = 64;
/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 4] = *b"LSVS";
/// Current segment format version.
pub const SEGMENT_VERSION: u16 = 1;

const S_MAGIC_OFFSET: usize = 0; //                    [u8; 4] = b"LSVS"
const S_VERSION_OFFSET: usize = S_MAGIC_OFFSET + 4; // u16, then u16 zero
const S_ID_OFFSET: usize = S_VERSION_OFFSET + 4; //    u64 segment id
const S_VOLUME_OFFSET: usize = S_ID_OFFSET + 8; //     [u8; 16] volume id
const S_HEAD_OFFSET: usize = S_VOLUME_OFFSET + 16; //  u32 log head that wrote it
const S_CRC_OFFSET: usize = 60; //                     u32 over 0..60
const _: () = assert!(S_HEAD_OFFSET + 4 <= S_CRC_OFFSET);

/// The path of segment `id` in `segments_dir`.
pub fn segment_path(segments_dir: &Path, id: u64) -> PathBuf {
    segments_dir.join(format!("{id:016x}.seg"))
}

/// Parses a segment file name back into its id.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The fields of a segment header (layout in `docs/format.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment's id (its file name says the same).
    pub id: u64,
    /// The volume it belongs to.
    pub volume_id: [u8; 16],
    /// The log head that wrote it (informational).
    pub head: u32,
}

impl SegmentHeader {
    /// Encodes the header, computing its CRC.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES as usize] {
        let mut bytes = [0u8; SEGMENT_HEADER_BYTES as usize];
        bytes[..4].copy_from_slice(&SEGMENT_MAGIC);
        put_u16(&mut bytes, S_VERSION_OFFSET, SEGMENT_VERSION);
        put_u64(&mut bytes, S_ID_OFFSET, self.id);
        bytes[S_VOLUME_OFFSET..S_VOLUME_OFFSET + 16].copy_from_slice(&self.volume_id);
        put_u32(&mut bytes, S_HEAD_OFFSET, self.head);
        let crc = crc32c::crc32c(&bytes[..S_CRC_OFFSET]);
        put_u32(&mut bytes, S_CRC_OFFSET, crc);
        bytes
    }

    /// Decodes header bytes read from disk, checking magic, CRC and version.
    pub fn decode(bytes: &[u8; SEGMENT_HEADER_BYTES as usize]) -> Result<Self, &'static str> {
        if bytes[..4] != SEGMENT_MAGIC {
            return Err("not a segment file (bad magic)");
        }
        if crc32c::crc32c(&bytes[..S_CRC_OFFSET]) != get_u32(bytes, S_CRC_OFFSET) {
            return Err("segment header checksum mismatch");
        }
        if get_u16(bytes, S_VERSION_OFFSET) != SEGMENT_VERSION {
            return Err("unsupported segment version");
        }
        let mut volume_id = [0u8; 16];
        volume_id.copy_from_slice(&bytes[S_VOLUME_OFFSET..S_VOLUME_OFFSET + 16]);
        Ok(Self {
            id: get_u64(bytes, S_ID_OFFSET),
            volume_id,
            head: get_u32(bytes, S_HEAD_OFFSET),
        })
    }
}

/// Creates segment `id` (which must not exist) with its header written.
pub fn create_segment(
    segments_dir: &Path,
    id: u64,
    volume_id: &[u8; 16],
    head: u32,
) -> Result<File, StoreError> {
    let path = segment_path(segments_dir, id);
    let file = crate::fsmode::private_file_options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| StoreError::io(&path, e))?;
    let header = SegmentHeader {
        id,
        volume_id: *volume_id,
        head,
    };
    file.write_all_at(&header.encode(), 0)
        .map_err(|e| StoreError::io(&path, e))?;
    Ok(file)
}

/// Checks a segment's header: magic, version, CRC, id and volume.
pub fn check_segment_header(
    file: &File,
    path: &Path,
    id: u64,
    volume_id: &[u8; 16],
) -> Result<(), StoreError> {
    let mut bytes = [0u8; SEGMENT_HEADER_BYTES as usize];
    let corrupt = |reason: &'static str| StoreError::Corrupt {
        path: path.to_path_buf(),
        offset_bytes: 0,
        reason,
    };
    read_exact_or_eof(file, &mut bytes, 0)
        .map_err(|e| StoreError::io(path, e))?
        .then_some(())
        .ok_or_else(|| corrupt("segment shorter than its header"))?;
    let header = SegmentHeader::decode(&bytes).map_err(corrupt)?;
    if header.volume_id != *volume_id {
        return Err(StoreError::ForeignSegment {
            path: path.to_path_buf(),
            volume_id: hex::encode(header.volume_id),
        });
    }
    if header.id != id {
        return Err(corrupt("segment id does not match its file name"));
    }
    Ok(())
}

/// Reads `buf.len()` bytes at `offset`; `Ok(false)` if the file ends first.
pub fn read_exact_or_eof(file: &File, buf: &mut [u8], offset: u64) -> io::Result<bool> {
    match file.read_exact_at(buf, offset) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// True when the segment ends with a valid seal record, i.e. it was closed
/// on purpose and every record before the seal was synced first.
pub fn is_sealed(file: &File, file_bytes: u64) -> io::Result<bool> {
    if file_bytes < SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES as u64 {
        return Ok(false);
    }
    let mut bytes = [0u8; RECORD_HEADER_BYTES];
    if !read_exact_or_eof(file, &mut bytes, file_bytes - RECORD_HEADER_BYTES as u64)? {
        return Ok(false);
    }
    Ok(matches!(
        UncheckedRecordHeader(bytes).check(),
        Ok(RecordHeader {
            kind: RecordKind::Seal,
            ..
        })
    ))
}

/// One valid record found by a scan.
#[derive(Clone, Copy, Debug)]
pub struct ScannedRecord {
    /// Offset of its header in the segment.
    pub offset: u64,
    /// Its checked header.
    pub header: RecordHeader,
}

/// How a scan of a segment ended.
#[derive(Debug)]
pub struct ScanOutcome {
    /// Valid records, in file order (seal records excluded).
    pub records: Vec<ScannedRecord>,
    /// Offset just past the last valid record (where appends would go).
    pub end_offset: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub stopped: Option<(u64, &'static str)>,
    /// True when the segment ends with a seal record.
    pub sealed: bool,
    /// Records of a sealed segment indexed although a block fails its
    /// checksum (reads of that block report it), by offset.
    pub damaged_records: Vec<u64>,
}

/// Scans records from `start` to the end of the file, checking every header,
/// checksum table and block checksum. Stops at the first invalid record.
pub fn scan_segment(
    file: &File,
    path: &Path,
    start: u64,
    block_shift: u8,
    capacity_blocks: u64,
) -> Result<ScanOutcome, StoreError> {
    let file_bytes = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
    let sealed = is_sealed(file, file_bytes).map_err(|e| StoreError::io(path, e))?;
    let mut records = Vec::new();
    let mut offset = start;
    let mut stopped = None;
    let mut damaged_records = Vec::new();
    while offset < file_bytes {
        match check_record_at(file, offset, file_bytes, block_shift, capacity_blocks) {
            Ok(header) if header.kind == RecordKind::Seal => {
                offset += header.record_bytes();
                if offset != file_bytes {
                    stopped = Some((offset, "data after the seal record"));
                }
                break;
            }
            Ok(header) => {
                records.push(ScannedRecord { offset, header });
                offset += header.record_bytes();
            }
            Err(CheckError::Io(e)) => return Err(StoreError::io(path, e)),
            // In a sealed segment the framing is intact, so a block that fails
            // its checksum is damage to that block alone: index the record and
            // let reads of the block report it. In an unsealed one it is a
            // torn write, and the tail starts here.
            Err(CheckError::Payload(header)) if sealed => {
                records.push(ScannedRecord { offset, header });
                damaged_records.push(offset);
                offset += header.record_bytes();
            }
            Err(CheckError::Payload(_)) => {
                stopped = Some((offset, "block checksum mismatch"));
                break;
            }
            Err(CheckError::Invalid(reason)) => {
                stopped = Some((offset, reason));
                break;
            }
        }
    }
    Ok(ScanOutcome {
        records,
        end_offset: offset,
        stopped,
        sealed,
        damaged_records,
    })
}

enum CheckError {
    Io(io::Error),
    /// The header and checksum table are valid, a block is not.
    Payload(RecordHeader),
    Invalid(&'static str),
}

/// Checks the record at `offset`: header, fit in the file, table and blocks.
fn check_record_at(
    file: &File,
    offset: u64,
    file_bytes: u64,
    block_shift: u8,
    capacity_blocks: u64,
) -> Result<RecordHeader, CheckError> {
    let mut bytes = [0u8; RECORD_HEADER_BYTES];
    if !read_exact_or_eof(file, &mut bytes, offset).map_err(CheckError::Io)? {
        return Err(CheckError::Invalid("truncated record header"));
    }
    let header = UncheckedRecordHeader(bytes)
        .check()
        .map_err(CheckError::Invalid)?;
    if header.kind != RecordKind::Seal {
        if header.block_shift != block_shift {
            return Err(CheckError::Invalid(
                "record block size differs from the volume's",
            ));
        }
        let end = header.lba.checked_add(u64::from(header.block_count));
        if end.is_none_or(|end| end > capacity_blocks) {
            return Err(CheckError::Invalid(
                "record covers blocks past the volume's end",
            ));
        }
        if header.payload_bytes() > crate::limits::WRITE_BYTES_MAX {
            return Err(CheckError::Invalid("record larger than the largest write"));
        }
    }
    if offset + header.record_bytes() > file_bytes {
        return Err(CheckError::Invalid(
            "record runs past the end of the segment",
        ));
    }
    if header.kind == RecordKind::Data {
        check_payload(file, offset, &header)?;
    }
    Ok(header)
}

/// Verifies the checksum table and every block's checksum of a data record.
fn check_payload(file: &File, offset: u64, header: &RecordHeader) -> Result<(), CheckError> {
    let mut table = vec![0u8; header.table_bytes() as usize];
    let table_offset = offset + RECORD_HEADER_BYTES as u64;
    file.read_exact_at(&mut table, table_offset)
        .map_err(CheckError::Io)?;
    if crc32c::crc32c(&table) != header.table_crc32c {
        return Err(CheckError::Invalid("block checksum table mismatch"));
    }
    let block_bytes = 1usize << header.block_shift;
    // Read in bounded batches so a large record never needs a large buffer.
    let blocks_per_batch = (1 << 20) / block_bytes;
    let mut buf = vec![0u8; blocks_per_batch.min(header.block_count as usize) * block_bytes];
    let payload_offset = table_offset + header.table_bytes();
    let mut block = 0usize;
    while block < header.block_count as usize {
        let count = blocks_per_batch.min(header.block_count as usize - block);
        let chunk = &mut buf[..count * block_bytes];
        file.read_exact_at(chunk, payload_offset + (block * block_bytes) as u64)
            .map_err(CheckError::Io)?;
        let entries = checksum_entry_offset(block as u64) as usize
            ..checksum_entry_offset((block + count) as u64) as usize;
        if first_corrupt_block(chunk, block_bytes, &table[entries]).is_some() {
            return Err(CheckError::Payload(*header));
        }
        block += count;
    }
    Ok(())
}
