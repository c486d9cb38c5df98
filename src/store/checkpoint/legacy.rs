//! Reading checkpoints of versions 1 and 2 (volumes of segment format 1):
//! a 64-byte header, then head positions, the key table and 56-byte
//! extents that name a record by the offset of its header.

use super::super::index::{DataLocation, Location};
use super::super::record::{RECORD_HEADER_BYTES, get_u32, get_u64};
use super::super::table::TableFormat;
use super::{
    CheckpointData, ExtentStart, HeadPosition, check_data_extent, checked_body, checked_header,
    decode_extents,
};
use crate::crypto::KeyId;

const HEADER_BYTES: usize = 64;
const HEAD_BYTES: usize = 16;
const KEY_ID_BYTES: usize = 16;
const EXTENT_BYTES: usize = 56;

const C_VOLUME_OFFSET: usize = 8;
const C_SEQ_NEXT_OFFSET: usize = 24;
const C_SEGMENT_NEXT_OFFSET: usize = 32;
const C_HEADS_OFFSET: usize = 40;
const C_KEYS_OFFSET: usize = 44;
const C_EXTENTS_OFFSET: usize = 48;
const C_BODY_CRC_OFFSET: usize = 56;
const C_HEADER_CRC_OFFSET: usize = 60;
const _: () = assert!(C_HEADER_CRC_OFFSET + 4 == HEADER_BYTES);

/// Decodes a version 1 or 2 checkpoint (magic already checked).
pub(super) fn decode(
    version: u16,
    volume_id: &[u8; 16],
    bytes: &[u8],
) -> Result<CheckpointData, &'static str> {
    let header = checked_header(bytes, HEADER_BYTES)?;
    // Version 2 added each key's encrypted bytes to the key table.
    let key_bytes = match version {
        1 => KEY_ID_BYTES,
        2 => KEY_ID_BYTES + 8,
        _ => return Err("unsupported version"),
    };
    if header[C_VOLUME_OFFSET..C_VOLUME_OFFSET + 16] != volume_id[..] {
        return Err(super::FOREIGN_VOLUME);
    }
    let heads = u64::from(get_u32(header, C_HEADS_OFFSET));
    let keys = u64::from(get_u32(header, C_KEYS_OFFSET));
    let extents = get_u64(header, C_EXTENTS_OFFSET);
    let tables = [
        (heads, HEAD_BYTES),
        (keys, key_bytes),
        (extents, EXTENT_BYTES),
    ];
    let stored_crc = get_u32(header, C_BODY_CRC_OFFSET);
    let body = checked_body(bytes, HEADER_BYTES, &tables, 0, stored_crc)?;
    let mut data = CheckpointData {
        seq_next: get_u64(header, C_SEQ_NEXT_OFFSET),
        segment_id_next: get_u64(header, C_SEGMENT_NEXT_OFFSET),
        // Written by a version 1 log: any segment may be version 1.
        v2_floor: u64::MAX,
        ..CheckpointData::default()
    };
    let mut at = 0;
    for _ in 0..heads {
        data.heads.push(HeadPosition {
            segment_id: get_u64(body, at),
            offset: get_u64(body, at + 8),
            ..HeadPosition::default()
        });
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
    decode_extents(
        body,
        at,
        (extents as usize, EXTENT_BYTES),
        &mut data.extents,
        |bytes, start| locate(bytes, start, keys as usize),
    )?;
    Ok(data)
}

/// Where a 56-byte extent's blocks are: its record is named by the offset
/// of its header, from which the table and payload offsets of version 1
/// follow.
fn locate(bytes: &[u8], start: &ExtentStart, keys: usize) -> Result<Location, &'static str> {
    if start.is_zero() {
        return Ok(Location::Zero);
    }
    let record_offset = get_u64(bytes, 32);
    let record_blocks = get_u32(bytes, 48);
    let table_offset = record_offset
        .checked_add(RECORD_HEADER_BYTES as u64)
        .ok_or("record offset overflows")?;
    let data = DataLocation {
        segment_id: start.segment_id,
        table_offset,
        payload_offset: table_offset
            .checked_add(TableFormat::V1.table_bytes(u64::from(record_blocks)))
            .ok_or("record offset overflows")?,
        record_lba: get_u64(bytes, 40),
        record_blocks,
        key_index: get_u32(bytes, 52),
    };
    check_data_extent(start, &data, keys)?;
    Ok(Location::Data(data))
}
