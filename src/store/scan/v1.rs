//! Scanning version 1 segments: records back to back after a 64-byte
//! header; a seal record, if any, is the last 64 bytes of the file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::super::StoreError;
use super::super::record::{
    RECORD_HEADER_BYTES, RecordHeader, RecordKind, UncheckedRecordHeader, V1RecordHeader,
};
use super::super::segment::{SEGMENT_HEADER_BYTES, read_exact_or_eof};
use super::super::table::TableFormat;
use super::{RecordLimits, ScanOutcome, Scanned, ScannedRecord, SealFound, check_limits};

/// The seal record at the end of a version 1 segment of `file_bytes`, if
/// there is one: it was closed on purpose and every record before the seal
/// was synced first.
pub fn find_seal(file: &File, file_bytes: u64) -> io::Result<Option<SealFound>> {
    if file_bytes < SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES as u64 {
        return Ok(None);
    }
    let offset = file_bytes - RECORD_HEADER_BYTES as u64;
    let mut bytes = [0u8; RECORD_HEADER_BYTES];
    if !read_exact_or_eof(file, &mut bytes, offset)? {
        return Ok(None);
    }
    let sealed = matches!(
        UncheckedRecordHeader(bytes).check(),
        Ok(V1RecordHeader { header, .. }) if header.kind == RecordKind::Seal
    );
    Ok(sealed.then_some(SealFound {
        offset,
        end: file_bytes,
        mac: [0; 16],
        body: None,
    }))
}

/// Scans records from `start` to the end of the file, checking every header,
/// checksum table and block checksum. Stops at the first invalid record.
pub(super) fn scan(segment: Scanned<'_>, start: u64) -> Result<ScanOutcome, StoreError> {
    let Scanned {
        file,
        path,
        segment_id,
        limits,
    } = segment;
    let file_bytes = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
    let seal = find_seal(file, file_bytes).map_err(|e| StoreError::io(path, e))?;
    let mut records = Vec::new();
    let mut offset = start;
    let mut stopped = None;
    let mut damaged = Vec::new();
    while offset < file_bytes {
        match check_record_at(file, offset, file_bytes, limits) {
            Ok(record) if record.header.kind == RecordKind::Seal => {
                offset += record.record_bytes();
                if offset != file_bytes {
                    stopped = Some((offset, "data after the seal record"));
                }
                break;
            }
            Ok(record) => {
                records.push(ScannedRecord::unmacced(record.placed(segment_id, offset)));
                offset += record.record_bytes();
            }
            Err(CheckError::Io(e)) => return Err(StoreError::io(path, e)),
            // In a sealed segment the framing is intact, so a block that fails
            // its checksum is damage to that block alone: index the record and
            // let reads of the block report it. In an unsealed one it is a
            // torn write, and the tail starts here.
            Err(CheckError::Payload(record)) if seal.is_some() => {
                records.push(ScannedRecord::unmacced(record.placed(segment_id, offset)));
                damaged.push(offset);
                offset += record.record_bytes();
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
        seal,
        damaged,
    })
}

enum CheckError {
    Io(io::Error),
    /// The header and checksum table are valid, a block is not.
    Payload(V1RecordHeader),
    Invalid(&'static str),
}

/// Checks the record at `offset`: header, fit in the file, table and blocks.
fn check_record_at(
    file: &File,
    offset: u64,
    file_bytes: u64,
    limits: &RecordLimits,
) -> Result<V1RecordHeader, CheckError> {
    let mut bytes = [0u8; RECORD_HEADER_BYTES];
    if !read_exact_or_eof(file, &mut bytes, offset).map_err(CheckError::Io)? {
        return Err(CheckError::Invalid("truncated record header"));
    }
    let record = UncheckedRecordHeader(bytes)
        .check()
        .map_err(CheckError::Invalid)?;
    check_limits(&record.header, limits).map_err(CheckError::Invalid)?;
    if offset + record.record_bytes() > file_bytes {
        return Err(CheckError::Invalid(
            "record runs past the end of the segment",
        ));
    }
    if record.header.kind == RecordKind::Data {
        check_payload(file, offset, &record)?;
    }
    Ok(record)
}

/// Verifies the checksum table and every block's checksum of a data record.
fn check_payload(file: &File, offset: u64, record: &V1RecordHeader) -> Result<(), CheckError> {
    let mut table = vec![0u8; record.table_bytes() as usize];
    let table_offset = offset + RECORD_HEADER_BYTES as u64;
    file.read_exact_at(&mut table, table_offset)
        .map_err(CheckError::Io)?;
    if crc32c::crc32c(&table) != record.table_crc32c {
        return Err(CheckError::Invalid("block checksum table mismatch"));
    }
    let intact = super::blocks_intact(
        file,
        table_offset + record.table_bytes(),
        &record.header,
        &table,
        TableFormat::V1,
    )
    .map_err(CheckError::Io)?;
    if intact {
        Ok(())
    } else {
        Err(CheckError::Payload(*record))
    }
}

/// The headers of the records of a segment, up to the first invalid one.
pub(super) fn headers(file: &File) -> io::Result<Vec<RecordHeader>> {
    let end = file.metadata()?.len();
    let mut headers = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset + RECORD_HEADER_BYTES as u64 <= end {
        let mut bytes = [0u8; RECORD_HEADER_BYTES];
        if !read_exact_or_eof(file, &mut bytes, offset)? {
            break;
        }
        let Ok(record) = UncheckedRecordHeader(bytes).check() else {
            break;
        };
        headers.push(record.header);
        offset += record.record_bytes();
    }
    Ok(headers)
}
