//! Checkpoints: the extent index written out so that opening a volume replays
//! only the log written after it (layout in `docs/format.md`, section 5).
//!
//! A checkpoint is written to a temporary file, synced, renamed into place,
//! and the directory synced: it is either wholly there or not at all. Reading
//! one checks both checksums and every field before anything is trusted.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::StoreError;
use super::index::{DataLocation, Extent, Location};
use super::record::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};
use crate::crypto::KeyId;

/// Magic at the start of a checkpoint file.
pub const CHECKPOINT_MAGIC: [u8; 4] = *b"LSVC";
/// Current checkpoint format version (2: the key table carries each key's
/// encrypted bytes; version 1 files, without them, are still read).
pub const CHECKPOINT_VERSION: u16 = 2;
/// Size of the checkpoint header, bytes.
pub const CHECKPOINT_HEADER_BYTES: usize = 64;
/// Size of one head position in the body, bytes.
const HEAD_BYTES: usize = 16;
/// Size of one key id in the body, bytes.
const KEY_ID_BYTES: usize = 16;
/// Size of one key table entry in a version 2 body: id, encrypted bytes.
const KEY_BYTES: usize = KEY_ID_BYTES + 8;
/// Size of one key table entry in a version 1 body: id only.
const KEY_BYTES_V1: usize = KEY_ID_BYTES;
/// Size of one extent in the body, bytes.
pub const EXTENT_BYTES: usize = 56;
/// Segment id that marks a zero extent.
const ZERO_SEGMENT: u64 = u64::MAX;

const C_VOLUME_OFFSET: usize = 8;
const C_SEQ_NEXT_OFFSET: usize = C_VOLUME_OFFSET + 16; // 24
const C_SEGMENT_NEXT_OFFSET: usize = C_SEQ_NEXT_OFFSET + 8; // 32
const C_HEADS_OFFSET: usize = C_SEGMENT_NEXT_OFFSET + 8; // 40
const C_KEYS_OFFSET: usize = C_HEADS_OFFSET + 4; // 44
const C_EXTENTS_OFFSET: usize = C_KEYS_OFFSET + 4; // 48
const C_BODY_CRC_OFFSET: usize = C_EXTENTS_OFFSET + 8; // 56
const C_HEADER_CRC_OFFSET: usize = C_BODY_CRC_OFFSET + 4; // 60
const _: () = assert!(C_HEADER_CRC_OFFSET + 4 == CHECKPOINT_HEADER_BYTES);

/// Everything a checkpoint holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckpointData {
    /// No write before the checkpoint used a sequence number this high.
    pub seq_next: u64,
    /// Segments with this id or higher are replayed from their start.
    pub segment_id_next: u64,
    /// Open segments at checkpoint time: (segment id, offset to replay from).
    pub heads: Vec<(u64, u64)>,
    /// Key table; extents refer to keys by index into it.
    pub keys: Vec<KeyId>,
    /// Bytes ever encrypted under each key of `keys` (same order; may be
    /// shorter, missing entries are 0).
    pub key_encrypted_bytes: Vec<u64>,
    /// The extent index: (first block, extent), sorted and disjoint.
    pub extents: Vec<(u64, Extent)>,
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

/// Encodes `data` for volume `volume_id`.
pub fn encode(volume_id: &[u8; 16], data: &CheckpointData) -> Vec<u8> {
    let body_bytes = data.heads.len() * HEAD_BYTES
        + data.keys.len() * KEY_BYTES
        + data.extents.len() * EXTENT_BYTES;
    let mut bytes = vec![0u8; CHECKPOINT_HEADER_BYTES + body_bytes];
    let mut at = CHECKPOINT_HEADER_BYTES;
    for (segment_id, offset) in &data.heads {
        put_u64(&mut bytes, at, *segment_id);
        put_u64(&mut bytes, at + 8, *offset);
        at += HEAD_BYTES;
    }
    for (index, key) in data.keys.iter().enumerate() {
        bytes[at..at + KEY_ID_BYTES].copy_from_slice(&key.0);
        let encrypted = data.key_encrypted_bytes.get(index).copied().unwrap_or(0);
        put_u64(&mut bytes, at + KEY_ID_BYTES, encrypted);
        at += KEY_BYTES;
    }
    for (lba, extent) in &data.extents {
        encode_extent(&mut bytes[at..at + EXTENT_BYTES], *lba, extent);
        at += EXTENT_BYTES;
    }
    debug_assert_eq!(at, bytes.len());
    let body_crc = crc32c::crc32c(&bytes[CHECKPOINT_HEADER_BYTES..]);
    let header = &mut bytes[..CHECKPOINT_HEADER_BYTES];
    header[..4].copy_from_slice(&CHECKPOINT_MAGIC);
    put_u16(header, 4, CHECKPOINT_VERSION);
    header[C_VOLUME_OFFSET..C_VOLUME_OFFSET + 16].copy_from_slice(volume_id);
    put_u64(header, C_SEQ_NEXT_OFFSET, data.seq_next);
    put_u64(header, C_SEGMENT_NEXT_OFFSET, data.segment_id_next);
    put_u32(header, C_HEADS_OFFSET, data.heads.len() as u32);
    put_u32(header, C_KEYS_OFFSET, data.keys.len() as u32);
    put_u64(header, C_EXTENTS_OFFSET, data.extents.len() as u64);
    put_u32(header, C_BODY_CRC_OFFSET, body_crc);
    let header_crc = crc32c::crc32c(&header[..C_HEADER_CRC_OFFSET]);
    put_u32(header, C_HEADER_CRC_OFFSET, header_crc);
    bytes
}

fn encode_extent(out: &mut [u8], lba: u64, extent: &Extent) {
    put_u64(out, 0, lba);
    put_u64(out, 8, extent.blocks);
    put_u64(out, 16, extent.seq);
    match extent.location {
        Location::Zero => put_u64(out, 24, ZERO_SEGMENT),
        Location::Data(d) => {
            put_u64(out, 24, d.segment_id);
            put_u64(out, 32, d.record_offset);
            put_u64(out, 40, d.record_lba);
            put_u32(out, 48, d.record_blocks);
            put_u32(out, 52, d.key_index);
        }
    }
}

/// Decodes and checks a checkpoint read from `path`.
pub fn decode(
    path: &Path,
    volume_id: &[u8; 16],
    bytes: &[u8],
) -> Result<CheckpointData, StoreError> {
    let bad = |reason: &'static str| StoreError::BadCheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < CHECKPOINT_HEADER_BYTES {
        return Err(bad("truncated: shorter than its header"));
    }
    let header = &bytes[..CHECKPOINT_HEADER_BYTES];
    if header[..4] != CHECKPOINT_MAGIC {
        return Err(bad("bad magic"));
    }
    if crc32c::crc32c(&header[..C_HEADER_CRC_OFFSET]) != get_u32(header, C_HEADER_CRC_OFFSET) {
        return Err(bad("header checksum mismatch"));
    }
    let version = get_u16(header, 4);
    let key_bytes = match version {
        1 => KEY_BYTES_V1,
        CHECKPOINT_VERSION => KEY_BYTES,
        _ => return Err(bad("unsupported version")),
    };
    if header[C_VOLUME_OFFSET..C_VOLUME_OFFSET + 16] != volume_id[..] {
        return Err(bad(FOREIGN_VOLUME));
    }
    let heads = get_u32(header, C_HEADS_OFFSET) as u64;
    let keys = get_u32(header, C_KEYS_OFFSET) as u64;
    let extents = get_u64(header, C_EXTENTS_OFFSET);
    let body_bytes = heads
        .checked_mul(HEAD_BYTES as u64)
        .zip(keys.checked_mul(key_bytes as u64))
        .zip(extents.checked_mul(EXTENT_BYTES as u64))
        .and_then(|((h, k), e)| h.checked_add(k)?.checked_add(e))
        .ok_or_else(|| bad("counts overflow"))?;
    let body = &bytes[CHECKPOINT_HEADER_BYTES..];
    if (body.len() as u64) < body_bytes {
        return Err(bad("truncated: body shorter than its counts"));
    }
    if body.len() as u64 != body_bytes {
        return Err(bad("trailing bytes after the body"));
    }
    if crc32c::crc32c(body) != get_u32(header, C_BODY_CRC_OFFSET) {
        return Err(bad("body checksum mismatch"));
    }
    let counts = BodyCounts {
        heads: heads as usize,
        keys: keys as usize,
        key_bytes,
        extents: extents as usize,
    };
    decode_body(body, &counts, header).map_err(bad)
}

/// How many of each item a body holds, and the key entry size.
struct BodyCounts {
    heads: usize,
    keys: usize,
    key_bytes: usize,
    extents: usize,
}

fn decode_body(
    body: &[u8],
    counts: &BodyCounts,
    header: &[u8],
) -> Result<CheckpointData, &'static str> {
    let BodyCounts {
        heads,
        keys,
        key_bytes,
        extents,
    } = *counts;
    let mut data = CheckpointData {
        seq_next: get_u64(header, C_SEQ_NEXT_OFFSET),
        segment_id_next: get_u64(header, C_SEGMENT_NEXT_OFFSET),
        ..CheckpointData::default()
    };
    let mut at = 0;
    for _ in 0..heads {
        data.heads.push((get_u64(body, at), get_u64(body, at + 8)));
        at += HEAD_BYTES;
    }
    for _ in 0..keys {
        let mut id = [0u8; KEY_ID_BYTES];
        id.copy_from_slice(&body[at..at + KEY_ID_BYTES]);
        data.keys.push(KeyId(id));
        let encrypted = if key_bytes > KEY_ID_BYTES {
            get_u64(body, at + KEY_ID_BYTES)
        } else {
            0
        };
        data.key_encrypted_bytes.push(encrypted);
        at += key_bytes;
    }
    let mut previous_end = 0u64;
    for _ in 0..extents {
        let (lba, extent) = decode_extent(&body[at..at + EXTENT_BYTES], keys)?;
        if lba < previous_end {
            return Err("extents overlap or are out of order");
        }
        previous_end = lba
            .checked_add(extent.blocks)
            .ok_or("extent end overflows")?;
        data.extents.push((lba, extent));
        at += EXTENT_BYTES;
    }
    Ok(data)
}

fn decode_extent(bytes: &[u8], keys: usize) -> Result<(u64, Extent), &'static str> {
    let lba = get_u64(bytes, 0);
    let blocks = get_u64(bytes, 8);
    if blocks == 0 {
        return Err("empty extent");
    }
    let segment_id = get_u64(bytes, 24);
    let location = if segment_id == ZERO_SEGMENT {
        Location::Zero
    } else {
        let d = DataLocation {
            segment_id,
            record_offset: get_u64(bytes, 32),
            record_lba: get_u64(bytes, 40),
            record_blocks: get_u32(bytes, 48),
            key_index: get_u32(bytes, 52),
        };
        let record_end = d.record_lba.checked_add(u64::from(d.record_blocks));
        let extent_end = lba.checked_add(blocks);
        if d.key_index as usize >= keys {
            return Err("extent refers to a key not in the key table");
        }
        if lba < d.record_lba || extent_end.is_none() || record_end < extent_end {
            return Err("extent lies outside its record");
        }
        Location::Data(d)
    };
    Ok((
        lba,
        Extent {
            blocks,
            seq: get_u64(bytes, 16),
            location,
        },
    ))
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

/// Writes `data` durably at `path`: temporary file, sync, rename, directory
/// sync. The file is either wholly there or not at all.
pub fn write_to(
    path: &Path,
    volume_id: &[u8; 16],
    data: &CheckpointData,
) -> Result<(), StoreError> {
    let bytes = encode(volume_id, data);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = crate::fsmode::create_private_file(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    file.write_all(&bytes)
        .map_err(|e| StoreError::io(&tmp, e))?;
    file.sync_data().map_err(|e| StoreError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| StoreError::io(path, e))?;
    super::sync_dir(dir)
}

/// Reads and checks the checkpoint at `path`.
pub fn read(path: &Path, volume_id: &[u8; 16]) -> Result<CheckpointData, StoreError> {
    let bytes = fs::read(path).map_err(|e| StoreError::io(path, e))?;
    decode(path, volume_id, &bytes)
}

/// The checkpoint of `docs/format.md`, section 5 (pinned byte for byte in
/// `format_tests`; the tests below reuse it).
#[cfg(test)]
pub(crate) fn sample_checkpoint() -> CheckpointData {
    CheckpointData {
        seq_next: 100,
        segment_id_next: 5,
        heads: vec![(4, 4096)],
        keys: vec![KeyId([9; 16])],
        key_encrypted_bytes: vec![8192],
        extents: vec![
            (
                0,
                Extent {
                    blocks: 2,
                    seq: 7,
                    location: Location::Data(DataLocation {
                        segment_id: 3,
                        record_offset: 64,
                        record_lba: 0,
                        record_blocks: 4,
                        key_index: 0,
                    }),
                },
            ),
            (
                10,
                Extent {
                    blocks: 3,
                    seq: 8,
                    location: Location::Zero,
                },
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The checkpoint `docs/format.md` shows (a head, a key, a data and a
    // zero extent), pinned byte for byte in `format_tests`.
    use super::sample_checkpoint as sample;

    #[test]
    fn round_trips() {
        let id = [1u8; 16];
        let bytes = encode(&id, &sample());
        assert_eq!(decode(Path::new("x"), &id, &bytes).unwrap(), sample());
    }

    #[test]
    fn every_truncation_is_a_typed_error() {
        let id = [1u8; 16];
        let bytes = encode(&id, &sample());
        for len in 0..bytes.len() {
            let err = decode(Path::new("x"), &id, &bytes[..len]).unwrap_err();
            assert!(
                matches!(err, StoreError::BadCheckpoint { .. }),
                "len {len}: {err}"
            );
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let id = [1u8; 16];
        let bytes = encode(&id, &sample());
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(Path::new("x"), &id, &damaged).is_err(), "bit {bit}");
        }
    }
}
