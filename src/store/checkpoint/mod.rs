//! Checkpoints: the extent index written out so that opening a volume replays
//! only the log written after it, with what opening must check the log
//! against (sealed segments, the seal chain). Layouts in docs/format.md:
//! version 3 is written (`v3`); versions 1 and 2, from volumes of segment
//! format 1, are still read (`legacy`). Snapshot index files use the same
//! format.
//!
//! A checkpoint is written to a temporary file, synced, renamed into place,
//! and the directory synced: it is either wholly there or not at all. Reading
//! one checks both checksums and every field before anything is trusted.

mod legacy;
mod v3;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::StoreError;
use super::frame::Mac;
use super::index::{DataLocation, Extent, Location};
use super::record::{get_u32, get_u64};
use super::segment::SegmentVersion;
use crate::crypto::KeyId;

pub use v3::{encode, mac_input};

/// Magic at the start of a checkpoint file.
pub const CHECKPOINT_MAGIC: [u8; 4] = *b"LSVC";
/// Segment id that marks a zero extent.
const ZERO_SEGMENT: u64 = u64::MAX;

/// A log head's open segment at checkpoint time: replay continues there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeadPosition {
    /// The segment.
    pub segment_id: u64,
    /// Offset up to which the checkpoint holds its records.
    pub offset: u64,
    /// Records of the segment before that offset.
    pub records: u64,
    /// MAC of the last of them (zero without MACs or records).
    pub last_mac: Mac,
}

/// A sealed segment the checkpoint vouches for: opening checks that it is
/// there and ends with this seal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedSegment {
    /// The segment.
    pub segment_id: u64,
    /// Offset of its seal record (version 1) or seal frame (version 2).
    pub seal_offset: u64,
    /// The seal's MAC (zero for version 1 and without MACs).
    pub seal_mac: Mac,
    /// The segment's format version.
    pub version: SegmentVersion,
}

/// The newest seal the log wrote: the next one continues the chain from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealRef {
    /// The segment it sealed.
    pub segment_id: u64,
    /// Its MAC.
    pub mac: Mac,
}

/// Everything a checkpoint holds.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointData {
    /// No write before the checkpoint used a sequence number this high.
    pub seq_next: u64,
    /// Segments with this id or higher are replayed from their start.
    pub segment_id_next: u64,
    /// Open segments at checkpoint time.
    pub heads: Vec<HeadPosition>,
    /// Key table; extents refer to keys by index into it.
    pub keys: Vec<KeyId>,
    /// Bytes ever encrypted under each key of `keys` (same order; may be
    /// shorter, missing entries are 0).
    pub key_encrypted_bytes: Vec<u64>,
    /// Every sealed segment of the log (none in a snapshot index).
    pub sealed: Vec<SealedSegment>,
    /// The newest seal written, if any.
    pub last_seal: Option<SealRef>,
    /// Segments with this id or higher are version 2 (a version 1 segment
    /// there is forged); `u64::MAX` when read from a version 1 or 2 file.
    pub v2_floor: u64,
    /// The log's records carry MACs.
    pub macs: bool,
    /// With `macs`: segments with this id or higher carry record MACs
    /// (lower ones were written before the log had them).
    pub mac_floor: u64,
    /// The key whose MAC key signs the checkpoint (zero without MACs).
    pub mac_key_id: KeyId,
    /// MAC of the checkpoint this one follows (zero if none).
    pub previous_mac: Mac,
    /// This checkpoint's MAC, as read (zero without MACs).
    pub mac: Mac,
    /// The extent index: (first block, extent), sorted and disjoint.
    pub extents: Vec<(u64, Extent)>,
}

impl Default for CheckpointData {
    /// The checkpoint of an empty log (no segment yet, all version 2).
    fn default() -> Self {
        Self {
            seq_next: 0,
            segment_id_next: 0,
            heads: Vec::new(),
            keys: Vec::new(),
            key_encrypted_bytes: Vec::new(),
            sealed: Vec::new(),
            last_seal: None,
            v2_floor: 0,
            macs: false,
            mac_floor: 0,
            mac_key_id: KeyId::default(),
            previous_mac: [0; 16],
            mac: [0; 16],
            extents: Vec::new(),
        }
    }
}

/// The reason a checkpoint of another volume is refused with.
pub const FOREIGN_VOLUME: &str = "belongs to another volume";

/// The file name of the checkpoint with `seq_next`.
pub fn checkpoint_path(dir: &Path, seq_next: u64) -> PathBuf {
    dir.join(format!("{seq_next:016x}.ckpt"))
}

/// Checkpoint files in `dir`, newest (highest `seq_next`) first.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".ckpt")) else {
            continue;
        };
        if let Ok(seq) = u64::from_str_radix(hex, 16) {
            found.push((seq, entry.path()));
        }
    }
    found.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// Decodes and checks a checkpoint (any version) read from `path`.
pub fn decode(
    path: &Path,
    volume_id: &[u8; 16],
    bytes: &[u8],
) -> Result<CheckpointData, StoreError> {
    let bad = |reason: &'static str| StoreError::BadCheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < 8 {
        return Err(bad("truncated: shorter than its header"));
    }
    if bytes[..4] != CHECKPOINT_MAGIC {
        return Err(bad("bad magic"));
    }
    match u16::from_le_bytes([bytes[4], bytes[5]]) {
        v3::VERSION => v3::decode(volume_id, bytes).map_err(bad),
        version => legacy::decode(version, volume_id, bytes).map_err(bad),
    }
}

/// A checkpoint's first `header_bytes` bytes, once the CRC32C in its last
/// four bytes matches the bytes before it (the same rule in every version).
fn checked_header(bytes: &[u8], header_bytes: usize) -> Result<&[u8], &'static str> {
    let header = bytes
        .get(..header_bytes)
        .ok_or("truncated: shorter than its header")?;
    let crc_at = header_bytes - 4;
    if crc32c::crc32c(&header[..crc_at]) != get_u32(header, crc_at) {
        return Err("header checksum mismatch");
    }
    Ok(header)
}

/// The body after a checkpoint's `header_bytes`-long header, once it is
/// exactly as long as its tables say (`tables`: entry count and entry size
/// of each, then `trailer` bytes) and matches the body CRC32C `stored_crc`.
fn checked_body<'a>(
    bytes: &'a [u8],
    header_bytes: usize,
    tables: &[(u64, usize)],
    trailer: usize,
    stored_crc: u32,
) -> Result<&'a [u8], &'static str> {
    let body_bytes = tables
        .iter()
        .try_fold(trailer as u64, |sum, &(count, size)| {
            count.checked_mul(size as u64)?.checked_add(sum)
        })
        .ok_or("counts overflow")?;
    let body = &bytes[header_bytes..];
    if (body.len() as u64) < body_bytes {
        return Err("truncated: body shorter than its counts");
    }
    if body.len() as u64 != body_bytes {
        return Err("trailing bytes after the body");
    }
    if crc32c::crc32c(body) != stored_crc {
        return Err("body checksum mismatch");
    }
    Ok(body)
}

/// Writes `data` durably as the checkpoint file for its `seq_next`.
pub fn write(
    dir: &Path,
    volume_id: &[u8; 16],
    data: &CheckpointData,
) -> Result<PathBuf, StoreError> {
    let path = checkpoint_path(dir, data.seq_next);
    write_to(&path, volume_id, data)?;
    Ok(path)
}

/// Writes `data` like [`write`], with the checkpoint MAC `sign` makes of
/// its [`mac_input`]; returns the file's path and that MAC.
pub fn write_signed(
    dir: &Path,
    volume_id: &[u8; 16],
    data: &CheckpointData,
    sign: impl FnOnce(&[u8]) -> Result<Mac, StoreError>,
) -> Result<(PathBuf, Mac), StoreError> {
    let path = checkpoint_path(dir, data.seq_next);
    let mac = write_signed_to(&path, volume_id, data, sign)?;
    Ok((path, mac))
}

/// Writes `data` durably at `path` (see [`write_to`]) with the MAC `sign`
/// makes of its [`mac_input`]; returns that MAC.
pub fn write_signed_to(
    path: &Path,
    volume_id: &[u8; 16],
    data: &CheckpointData,
    sign: impl FnOnce(&[u8]) -> Result<Mac, StoreError>,
) -> Result<Mac, StoreError> {
    let mut bytes = encode(volume_id, data);
    let mac = sign(&mac_input(&bytes))?;
    v3::put_mac(&mut bytes, &mac);
    write_bytes(path, &bytes)?;
    Ok(mac)
}

/// Writes `data` durably at `path`: temporary file, sync, rename, directory
/// sync. The file is either wholly there or not at all.
pub fn write_to(
    path: &Path,
    volume_id: &[u8; 16],
    data: &CheckpointData,
) -> Result<(), StoreError> {
    write_bytes(path, &encode(volume_id, data))
}

/// Writes the encoded checkpoint `bytes` durably at `path` (see [`write_to`]).
fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = crate::fsmode::create_private_file(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| StoreError::io(&tmp, e))?;
    file.sync_data().map_err(|e| StoreError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| StoreError::io(path, e))?;
    super::sync_dir(dir)
}

/// Reads and checks the checkpoint at `path`.
pub fn read(path: &Path, volume_id: &[u8; 16]) -> Result<CheckpointData, StoreError> {
    let bytes = fs::read(path).map_err(|e| StoreError::io(path, e))?;
    decode(path, volume_id, &bytes)
}

/// The fields every extent layout starts with (bytes 0..32): LBA, block
/// count, sequence number and segment id.
struct ExtentStart {
    lba: u64,
    blocks: u64,
    seq: u64,
    segment_id: u64,
}

impl ExtentStart {
    /// True for an extent of zeros (no record behind it).
    fn is_zero(&self) -> bool {
        self.segment_id == ZERO_SEGMENT
    }
}

/// Decodes `count` extents of `size` bytes each from `body[at..]`: the
/// common start here, the location by the version's `locate`. Checks that
/// no extent is empty and that they are sorted and do not overlap. Returns
/// the offset after the last one.
fn decode_extents(
    body: &[u8],
    mut at: usize,
    (count, size): (usize, usize),
    extents: &mut Vec<(u64, Extent)>,
    locate: impl Fn(&[u8], &ExtentStart) -> Result<Location, &'static str>,
) -> Result<usize, &'static str> {
    let mut previous_end = 0;
    for _ in 0..count {
        let bytes = &body[at..at + size];
        let start = ExtentStart {
            lba: get_u64(bytes, 0),
            blocks: get_u64(bytes, 8),
            seq: get_u64(bytes, 16),
            segment_id: get_u64(bytes, 24),
        };
        if start.blocks == 0 {
            return Err("empty extent");
        }
        if start.lba < previous_end {
            return Err("extents overlap or are out of order");
        }
        previous_end = start
            .lba
            .checked_add(start.blocks)
            .ok_or("extent end overflows")?;
        let location = locate(bytes, &start)?;
        extents.push((
            start.lba,
            Extent {
                blocks: start.blocks,
                seq: start.seq,
                location,
            },
        ));
        at += size;
    }
    Ok(at)
}

/// Checks that the data extent `start` lies inside its record `data` and
/// that the record's key is in the key table of `keys` entries.
fn check_data_extent(
    start: &ExtentStart,
    data: &DataLocation,
    keys: usize,
) -> Result<(), &'static str> {
    let record_end = data.record_lba.checked_add(u64::from(data.record_blocks));
    let extent_end = start.lba.checked_add(start.blocks);
    if data.key_index as usize >= keys {
        return Err("extent refers to a key not in the key table");
    }
    if start.lba < data.record_lba || extent_end.is_none() || record_end < extent_end {
        return Err("extent lies outside its record");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
