//! Scanning version 2 segments: frames from 4 KiB on, up to the seal frame
//! (bytes after it are ignored) or the first invalid frame. If a frame is
//! invalid, the rest of the file is searched for a seal frame of this
//! segment: one there means the segment was sealed and is damaged; none
//! means the invalid frame is the torn tail of a segment that was open.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::super::StoreError;
use super::super::aligned::ALIGN;
use super::super::frame::{FRAME_HEADER_BYTES, FrameHeader, ParsedMeta, SealBody, parse_meta};
use super::super::record::{PlacedRecord, RecordHeader, RecordKind};
use super::super::segment::{V2_FIRST_FRAME, read_exact_or_eof};
use super::super::table::TableFormat;
use super::{
    RecordLimits, ScanOutcome, Scanned, ScannedRecord, SealFound, blocks_intact, check_limits,
};

/// Largest meta area a frame may claim: the headers of the most records a
/// frame holds and the tables of the largest writes, with room to spare.
const META_BYTES_MAX: u32 = 64 << 20;

/// A frame read and checked.
enum Frame {
    /// A frame of records; `intact` is false when a block fails its CRC.
    Records {
        records: Vec<ScannedRecord>,
        frame_bytes: u64,
        intact: bool,
    },
    /// The seal frame.
    Seal(SealFound),
}

enum FrameError {
    Io(io::Error),
    Invalid(&'static str),
}

impl From<io::Error> for FrameError {
    fn from(error: io::Error) -> Self {
        FrameError::Io(error)
    }
}

/// Scans frames from `start` (see the module docs).
pub(super) fn scan(segment: Scanned<'_>, start: u64) -> Result<ScanOutcome, StoreError> {
    let (file, path, segment_id) = (segment.file, segment.path, segment.segment_id);
    let limits = segment.limits;
    let io_error = |e| StoreError::io(path, e);
    let file_bytes = file.metadata().map_err(io_error)?.len();
    let mut records = Vec::new();
    let mut offset = start;
    let (mut stopped, mut seal) = (None, None);
    // Frames with a block that fails its CRC: (index of the frame's first
    // record, frame offset).
    let mut damaged: Vec<(usize, u64)> = Vec::new();
    while offset < file_bytes {
        match read_frame(file, segment_id, offset, file_bytes, limits) {
            Ok(Frame::Seal(found)) => {
                seal = Some(found);
                break;
            }
            Ok(Frame::Records {
                records: found,
                frame_bytes,
                intact,
            }) => {
                if !intact {
                    damaged.push((records.len(), offset));
                }
                records.extend(found);
                offset += frame_bytes;
            }
            Err(FrameError::Io(e)) => return Err(io_error(e)),
            Err(FrameError::Invalid(reason)) => {
                let after = seal_after(file, segment_id, offset, file_bytes).map_err(io_error)?;
                seal = after.seal;
                // Nothing but zeros from here on is space preallocated for
                // appends that never came (`io::preallocate`): the log ends
                // here, nothing was torn.
                if seal.is_some() || !after.unwritten {
                    stopped = Some((offset, reason));
                }
                break;
            }
        }
    }
    // Blocks that fail their CRC in a sealed segment are damage to those
    // blocks alone (reads of them fail); in an open one, a torn write.
    if let Some(&(index, at)) = damaged.first()
        && seal.is_none()
    {
        records.truncate(index);
        stopped = Some((at, "block checksum mismatch"));
        offset = at;
        damaged.clear();
    }
    Ok(ScanOutcome {
        records,
        end_offset: seal.map_or(offset, |s| s.end),
        stopped,
        seal,
        damaged: damaged.into_iter().map(|(_, at)| at).collect(),
    })
}

/// Reads and checks the frame at `offset`: header, meta, records, and
/// (for a frame of records) every block's CRC.
fn read_frame(
    file: &File,
    segment_id: u64,
    offset: u64,
    file_bytes: u64,
    limits: &RecordLimits,
) -> Result<Frame, FrameError> {
    let meta = read_meta(file, segment_id, offset, file_bytes)?;
    for record in &meta.records {
        check_limits(&record.header, limits).map_err(FrameError::Invalid)?;
    }
    if let Some(found) = as_seal(&meta, offset)? {
        return Ok(Frame::Seal(found));
    }
    let mut records = Vec::with_capacity(meta.records.len());
    let mut intact = true;
    for (index, (record, slots)) in meta.records.iter().zip(&meta.layout.slots).enumerate() {
        let placed = PlacedRecord {
            header: record.header,
            segment_id,
            position: offset,
            table_offset: offset + slots.table.start as u64,
            payload_offset: offset + slots.payload.start as u64,
        };
        if record.header.kind == RecordKind::Data && intact {
            intact = blocks_intact(
                file,
                placed.payload_offset,
                &record.header,
                meta.table(index),
                TableFormat::V2,
            )?;
        }
        records.push(ScannedRecord {
            record: placed,
            mac: record.mac,
        });
    }
    Ok(Frame::Records {
        records,
        frame_bytes: u64::from(meta.header.frame_bytes),
        intact,
    })
}

/// Reads and parses the meta area of the frame at `offset`.
fn read_meta(
    file: &File,
    segment_id: u64,
    offset: u64,
    file_bytes: u64,
) -> Result<ParsedMeta, FrameError> {
    let mut first = [0u8; FRAME_HEADER_BYTES];
    if file_bytes - offset < ALIGN as u64 || !read_exact_or_eof(file, &mut first, offset)? {
        return Err(FrameError::Invalid("truncated frame"));
    }
    let header = FrameHeader::check(&first, segment_id, offset).map_err(FrameError::Invalid)?;
    if offset + u64::from(header.frame_bytes) > file_bytes {
        return Err(FrameError::Invalid(
            "frame runs past the end of the segment",
        ));
    }
    if header.meta_bytes > META_BYTES_MAX {
        return Err(FrameError::Invalid("frame meta area too large"));
    }
    let mut meta = vec![0u8; header.meta_bytes as usize];
    file.read_exact_at(&mut meta, offset)?;
    if meta[..FRAME_HEADER_BYTES] != first {
        return Err(FrameError::Invalid("frame changed while read"));
    }
    parse_meta(header, meta).map_err(FrameError::Invalid)
}

/// The seal of a frame at `offset` that is a seal frame.
fn as_seal(meta: &ParsedMeta, offset: u64) -> Result<Option<SealFound>, FrameError> {
    let record = &meta.records[0];
    if record.header.kind != RecordKind::Seal {
        return Ok(None);
    }
    let body = SealBody::decode(meta.table(0)).map_err(FrameError::Invalid)?;
    Ok(Some(SealFound {
        offset,
        end: offset + u64::from(meta.header.frame_bytes),
        mac: record.mac,
        body: Some(body),
    }))
}

/// The checked meta area of the frame at `offset` of segment `segment_id`,
/// or why it is not a valid frame.
pub fn frame_meta(
    file: &File,
    segment_id: u64,
    offset: u64,
) -> io::Result<Result<ParsedMeta, &'static str>> {
    let file_bytes = file.metadata()?.len();
    match read_meta(file, segment_id, offset, file_bytes) {
        Ok(meta) => Ok(Ok(meta)),
        Err(FrameError::Io(e)) => Err(e),
        Err(FrameError::Invalid(reason)) => Ok(Err(reason)),
    }
}

/// The seal frame at `offset` of segment `segment_id`, if a valid one is
/// there (`None` for anything else, including a frame of records).
pub fn read_seal(file: &File, segment_id: u64, offset: u64) -> io::Result<Option<SealFound>> {
    let file_bytes = file.metadata()?.len();
    if offset >= file_bytes {
        return Ok(None);
    }
    match read_meta(file, segment_id, offset, file_bytes) {
        Ok(meta) => match as_seal(&meta, offset) {
            Ok(found) => Ok(found),
            Err(FrameError::Io(e)) => Err(e),
            Err(FrameError::Invalid(_)) => Ok(None),
        },
        Err(FrameError::Io(e)) => Err(e),
        Err(FrameError::Invalid(_)) => Ok(None),
    }
}

/// What follows an invalid frame ([`seal_after`]).
struct AfterInvalid {
    /// A valid seal frame of this segment, if there is one.
    seal: Option<SealFound>,
    /// True when every 4 KiB page from the invalid frame on starts with a
    /// frame header's worth of zeros: preallocated space nothing was
    /// written to (a frame always starts with a non-zero header, a payload
    /// page with ciphertext).
    unwritten: bool,
}

/// A valid seal frame of this segment somewhere after the invalid frame at
/// `invalid`, if there is one, and whether the pages there are unwritten.
fn seal_after(
    file: &File,
    segment_id: u64,
    invalid: u64,
    file_bytes: u64,
) -> io::Result<AfterInvalid> {
    let mut unwritten = page_starts_zero(file, invalid)?;
    let mut offset = invalid + ALIGN as u64;
    while offset + ALIGN as u64 <= file_bytes {
        if !page_starts_zero(file, offset)? {
            unwritten = false;
            if let Some(found) = read_seal(file, segment_id, offset)? {
                return Ok(AfterInvalid {
                    seal: Some(found),
                    unwritten,
                });
            }
        }
        offset += ALIGN as u64;
    }
    Ok(AfterInvalid {
        seal: None,
        unwritten,
    })
}

/// True when the frame header's bytes at `offset` are all zero (or the
/// file ends first).
fn page_starts_zero(file: &File, offset: u64) -> io::Result<bool> {
    let mut first = [0u8; FRAME_HEADER_BYTES];
    Ok(!read_exact_or_eof(file, &mut first, offset)? || first.iter().all(|&b| b == 0))
}

/// The headers of the records of a segment, up to its seal or the first
/// invalid frame.
pub(super) fn headers(file: &File, segment_id: u64) -> io::Result<Vec<RecordHeader>> {
    let file_bytes = file.metadata()?.len();
    let mut headers = Vec::new();
    let mut offset = V2_FIRST_FRAME;
    while offset < file_bytes {
        let meta = match read_meta(file, segment_id, offset, file_bytes) {
            Ok(meta) => meta,
            Err(FrameError::Io(e)) => return Err(e),
            Err(FrameError::Invalid(_)) => break,
        };
        headers.extend(meta.records.iter().map(|r| r.header));
        offset += u64::from(meta.header.frame_bytes);
    }
    Ok(headers)
}
