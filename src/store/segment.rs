//! Segment files: naming, creating, and checking their headers.
//!
//! A segment is `segments/<id as 16 hex digits>.seg`. Version 1 (read
//! only): a 64-byte segment header, then records back to back. Version 2:
//! a 4 KiB header block (a 64-byte header, then zeros), then frames (see
//! `frame`). Only one log head appends to a segment, so a segment never has
//! holes: the first invalid record or frame of an unsealed segment is its
//! torn tail. Layouts in docs/format.md; scanning in `scan`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::StoreError;
use super::aligned::{ALIGN, AlignedBuf};
use super::record::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};
use super::table::TableFormat;

/// Size of the segment header, bytes (both versions).
pub const SEGMENT_HEADER_BYTES: u64 = 64;
/// Where a version 2 segment's first frame starts: after its header block.
pub const V2_FIRST_FRAME: u64 = ALIGN as u64;
/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 4] = *b"LSVS";
/// Flag bit of a version 2 segment header: its records carry MACs.
pub const SEGMENT_FLAG_MACS: u16 = 1;

const S_MAGIC_OFFSET: usize = 0; //                    [u8; 4] = b"LSVS"
const S_VERSION_OFFSET: usize = S_MAGIC_OFFSET + 4; // u16
const S_FLAGS_OFFSET: usize = S_VERSION_OFFSET + 2; // u16 (version 1: zero)
const S_ID_OFFSET: usize = S_FLAGS_OFFSET + 2; //      u64 segment id
const S_VOLUME_OFFSET: usize = S_ID_OFFSET + 8; //     [u8; 16] volume id
const S_HEAD_OFFSET: usize = S_VOLUME_OFFSET + 16; //  u32 log head that wrote it
const S_SHIFT_OFFSET: usize = S_HEAD_OFFSET + 4; //    u8 block shift (v2), 3 zero
const S_EPOCH_OFFSET: usize = S_SHIFT_OFFSET + 4; //   u64 writer epoch (v2)
const S_CRC_OFFSET: usize = 60; //                     u32 over 0..60
const _: () = assert!(S_EPOCH_OFFSET + 8 + 12 == S_CRC_OFFSET);

/// A segment's format version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SegmentVersion {
    /// Records back to back after a 64-byte header (read only).
    V1,
    /// Frames after a 4 KiB header block.
    V2,
}

impl SegmentVersion {
    /// The version number on disk.
    pub fn number(self) -> u8 {
        match self {
            SegmentVersion::V1 => 1,
            SegmentVersion::V2 => 2,
        }
    }

    /// The version with number `number`, if known.
    pub fn from_number(number: u8) -> Option<Self> {
        match number {
            1 => Some(SegmentVersion::V1),
            2 => Some(SegmentVersion::V2),
            _ => None,
        }
    }

    /// The layout of its block tables.
    pub fn table_format(self) -> TableFormat {
        match self {
            SegmentVersion::V1 => TableFormat::V1,
            SegmentVersion::V2 => TableFormat::V2,
        }
    }

    /// Where its first record or frame starts.
    pub fn first_record(self) -> u64 {
        match self {
            SegmentVersion::V1 => SEGMENT_HEADER_BYTES,
            SegmentVersion::V2 => V2_FIRST_FRAME,
        }
    }
}

/// What a version 2 segment header says besides its id and volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentHeaderFields {
    /// The log head that wrote it (informational).
    pub head: u32,
    /// log2 of the volume's block size.
    pub block_shift: u8,
    /// Its records carry MACs.
    pub macs: bool,
    /// The writer's epoch (0 for local volumes).
    pub writer_epoch: u64,
}

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

/// Encodes a version 2 segment header.
pub fn encode_segment_header(
    id: u64,
    volume_id: &[u8; 16],
    fields: &SegmentHeaderFields,
) -> [u8; 64] {
    let mut bytes = [0u8; 64];
    bytes[..4].copy_from_slice(&SEGMENT_MAGIC);
    put_u16(&mut bytes, S_VERSION_OFFSET, 2);
    let flags = if fields.macs { SEGMENT_FLAG_MACS } else { 0 };
    put_u16(&mut bytes, S_FLAGS_OFFSET, flags);
    put_u64(&mut bytes, S_ID_OFFSET, id);
    bytes[S_VOLUME_OFFSET..S_VOLUME_OFFSET + 16].copy_from_slice(volume_id);
    put_u32(&mut bytes, S_HEAD_OFFSET, fields.head);
    bytes[S_SHIFT_OFFSET] = fields.block_shift;
    put_u64(&mut bytes, S_EPOCH_OFFSET, fields.writer_epoch);
    let crc = crc32c::crc32c(&bytes[..S_CRC_OFFSET]);
    put_u32(&mut bytes, S_CRC_OFFSET, crc);
    bytes
}

/// Creates version 2 segment `id` (which must not exist) with its header
/// block written.
pub fn create_segment(
    segments_dir: &Path,
    id: u64,
    volume_id: &[u8; 16],
    fields: &SegmentHeaderFields,
) -> Result<File, StoreError> {
    refuse_existing(segments_dir, id)?;
    // Made under another name and renamed once it has its header (as a
    // reused spare is): a crash in between must not leave a segment file
    // without one (recovery refuses such a file). A leftover of an earlier
    // crash is replaced.
    let new = creation_path(segments_dir, id);
    let file = crate::fsmode::private_file_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&new)
        .map_err(|e| StoreError::io(&new, e))?;
    reuse_segment(segments_dir, &new, file, id, volume_id, fields)
}

/// Fails if segment `id` exists already.
fn refuse_existing(segments_dir: &Path, id: u64) -> Result<(), StoreError> {
    let path = segment_path(segments_dir, id);
    match path.symlink_metadata() {
        Ok(_) => Err(StoreError::io(
            &path,
            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        )),
        Err(_) => Ok(()),
    }
}

/// The suffix of a segment file being created (see [`create_segment`]).
pub const CREATION_SUFFIX: &str = ".seg.new";

/// Where segment `id` is made before it is renamed to its name.
fn creation_path(segments_dir: &Path, id: u64) -> PathBuf {
    segments_dir.join(format!("{id:016x}{CREATION_SUFFIX}"))
}

/// Makes segment `id` out of a spare segment file (`spare`, open as
/// `file`, already zeroed by the caller; or a file just created, see
/// [`create_segment`]): writes the header, then renames
/// it to the segment's name, so that name never shows the spare's old
/// contents. Fails, changing nothing under the segment's name, if a file
/// of that name exists.
pub fn reuse_segment(
    segments_dir: &Path,
    spare: &Path,
    file: File,
    id: u64,
    volume_id: &[u8; 16],
    fields: &SegmentHeaderFields,
) -> Result<File, StoreError> {
    refuse_existing(segments_dir, id)?;
    let mut block = AlignedBuf::zeroed(ALIGN);
    block[..64].copy_from_slice(&encode_segment_header(id, volume_id, fields));
    super::io::pwritev_all(&file, &[&block], 0).map_err(|e| StoreError::io(spare, e))?;
    let path = segment_path(segments_dir, id);
    std::fs::rename(spare, &path).map_err(|e| StoreError::io(&path, e))?;
    Ok(file)
}

/// Checks a segment's header: magic, CRC, version, id and volume (and for
/// version 2, the block size); returns its version.
pub fn check_segment_header(
    file: &File,
    path: &Path,
    id: u64,
    volume_id: &[u8; 16],
    block_shift: u8,
) -> Result<SegmentVersion, StoreError> {
    let mut bytes = [0u8; 64];
    let corrupt = |reason: &'static str| StoreError::Corrupt {
        path: path.to_path_buf(),
        offset_bytes: 0,
        reason,
    };
    read_exact_or_eof(file, &mut bytes, 0)
        .map_err(|e| StoreError::io(path, e))?
        .then_some(())
        .ok_or_else(|| corrupt("segment shorter than its header"))?;
    if bytes[..4] != SEGMENT_MAGIC {
        return Err(corrupt("not a segment file (bad magic)"));
    }
    if crc32c::crc32c(&bytes[..S_CRC_OFFSET]) != get_u32(&bytes, S_CRC_OFFSET) {
        return Err(corrupt("segment header checksum mismatch"));
    }
    let version = match get_u16(&bytes, S_VERSION_OFFSET) {
        1 => SegmentVersion::V1,
        2 => SegmentVersion::V2,
        _ => return Err(corrupt("unsupported segment version")),
    };
    if bytes[S_VOLUME_OFFSET..S_VOLUME_OFFSET + 16] != volume_id[..] {
        return Err(StoreError::ForeignSegment {
            path: path.to_path_buf(),
            volume_id: hex::encode(&bytes[S_VOLUME_OFFSET..S_VOLUME_OFFSET + 16]),
        });
    }
    if get_u64(&bytes, S_ID_OFFSET) != id {
        return Err(corrupt("segment id does not match its file name"));
    }
    if version == SegmentVersion::V2 && bytes[S_SHIFT_OFFSET] != block_shift {
        return Err(corrupt("segment block size differs from the volume's"));
    }
    Ok(version)
}

/// Whether the header of a segment (checked by [`check_segment_header`])
/// says its records carry MACs.
pub fn header_says_macs(file: &File) -> io::Result<bool> {
    let mut flags = [0u8; 2];
    file.read_exact_at(&mut flags, S_FLAGS_OFFSET as u64)?;
    Ok(u16::from_le_bytes(flags) & SEGMENT_FLAG_MACS != 0)
}

/// Reads `buf.len()` bytes at `offset`; `Ok(false)` if the file ends first.
pub fn read_exact_or_eof(file: &File, buf: &mut [u8], offset: u64) -> io::Result<bool> {
    match file.read_exact_at(buf, offset) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_header_is_pinned_to_its_documented_bytes() {
        let fields = SegmentHeaderFields {
            head: 3,
            block_shift: 12,
            macs: true,
            writer_epoch: 0x1122_3344_5566_7788,
        };
        let bytes = encode_segment_header(0x0a0b, &[0xee; 16], &fields);
        let golden = "4c535653020001000b0a000000000000eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee\
                      030000000c0000008877665544332211000000000000000000000000";
        let crc = crc32c::crc32c(&bytes[..60]).to_le_bytes();
        assert_eq!(hex::encode(&bytes[..60]), golden);
        assert_eq!(bytes[60..], crc);
    }
}
