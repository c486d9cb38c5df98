//! Checkpoint version 3: a 160-byte header, then head positions, the key
//! table, the sealed-segment table, 64-byte extents, and a 16-byte
//! checkpoint MAC (layout in docs/format.md).

use super::super::frame::{MAC_BYTES, Mac};
use super::super::index::{DataLocation, Extent, Location};
use super::super::record::{get_key_id, get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};
use super::super::segment::SegmentVersion;
use super::{
    CHECKPOINT_MAGIC, CheckpointData, ExtentStart, HeadPosition, SealRef, SealedSegment,
    ZERO_SEGMENT, check_data_extent, checked_body, checked_header, decode_extents,
};
use crate::crypto::key::KEY_ID_BYTES;

/// The version this module writes.
pub(super) const VERSION: u16 = 3;
/// Size of the header, bytes.
pub const HEADER_BYTES: usize = 160;
const HEAD_BYTES: usize = 40;
const KEY_BYTES: usize = KEY_ID_BYTES + 8;
const SEALED_BYTES: usize = 40;
/// Size of one extent, bytes.
pub const EXTENT_BYTES: usize = 64;
/// Flag bit: the log's records carry MACs.
const FLAG_MACS: u16 = 1;

const C_FLAGS: usize = 6; //          u16
const C_VOLUME: usize = 8; //         [u8; 16]
const C_SEQ_NEXT: usize = 24; //      u64
const C_SEGMENT_NEXT: usize = 32; //  u64
const C_HEADS: usize = 40; //         u32
const C_KEYS: usize = 44; //          u32
const C_SEALED: usize = 48; //        u32, then u32 zero
const C_EXTENTS: usize = 56; //       u64
const C_V2_FLOOR: usize = 64; //      u64
const C_LAST_SEAL: usize = 72; //     u64 segment (u64::MAX: none)
const C_LAST_SEAL_MAC: usize = 80; // [u8; 16]
const C_MAC_KEY: usize = 96; //       [u8; 16]
const C_PREVIOUS: usize = 112; //     [u8; 16]
const C_MAC_FLOOR: usize = 128; //    u64 first segment with record MACs
const C_CRCS: std::ops::Range<usize> = C_BODY_CRC..HEADER_BYTES;
const C_BODY_CRC: usize = 152; //     u32 over everything after the header
const C_HEADER_CRC: usize = 156; //   u32 over 0..156
const _: () = assert!(C_MAC_FLOOR + 8 + 16 == C_BODY_CRC);
const _: () = assert!(C_HEADER_CRC + 4 == HEADER_BYTES);

/// Encodes `data` for volume `volume_id`; the trailer holds `data.mac`.
pub fn encode(volume_id: &[u8; 16], data: &CheckpointData) -> Vec<u8> {
    let body_bytes = data.heads.len() * HEAD_BYTES
        + data.keys.len() * KEY_BYTES
        + data.sealed.len() * SEALED_BYTES
        + data.extents.len() * EXTENT_BYTES
        + MAC_BYTES;
    let mut bytes = vec![0u8; HEADER_BYTES + body_bytes];
    let mut at = HEADER_BYTES;
    for head in &data.heads {
        put_u64(&mut bytes, at, head.segment_id);
        put_u64(&mut bytes, at + 8, head.offset);
        put_u64(&mut bytes, at + 16, head.records);
        bytes[at + 24..at + 40].copy_from_slice(&head.last_mac);
        at += HEAD_BYTES;
    }
    for (index, key) in data.keys.iter().enumerate() {
        bytes[at..at + KEY_ID_BYTES].copy_from_slice(&key.0);
        let encrypted = data.key_encrypted_bytes.get(index).copied().unwrap_or(0);
        put_u64(&mut bytes, at + KEY_ID_BYTES, encrypted);
        at += KEY_BYTES;
    }
    for sealed in &data.sealed {
        put_u64(&mut bytes, at, sealed.segment_id);
        put_u64(&mut bytes, at + 8, sealed.seal_offset);
        bytes[at + 16..at + 32].copy_from_slice(&sealed.seal_mac);
        bytes[at + 32] = sealed.version.number();
        at += SEALED_BYTES;
    }
    for (lba, extent) in &data.extents {
        encode_extent(&mut bytes[at..at + EXTENT_BYTES], *lba, extent);
        at += EXTENT_BYTES;
    }
    bytes[at..at + MAC_BYTES].copy_from_slice(&data.mac);
    debug_assert_eq!(at + MAC_BYTES, bytes.len());
    let body_crc = crc32c::crc32c(&bytes[HEADER_BYTES..]);
    encode_header(&mut bytes[..HEADER_BYTES], volume_id, data, body_crc);
    bytes
}

fn encode_header(header: &mut [u8], volume_id: &[u8; 16], data: &CheckpointData, body_crc: u32) {
    header[..4].copy_from_slice(&CHECKPOINT_MAGIC);
    put_u16(header, 4, VERSION);
    put_u16(header, C_FLAGS, if data.macs { FLAG_MACS } else { 0 });
    header[C_VOLUME..C_VOLUME + 16].copy_from_slice(volume_id);
    put_u64(header, C_SEQ_NEXT, data.seq_next);
    put_u64(header, C_SEGMENT_NEXT, data.segment_id_next);
    put_u32(header, C_HEADS, data.heads.len() as u32);
    put_u32(header, C_KEYS, data.keys.len() as u32);
    put_u32(header, C_SEALED, data.sealed.len() as u32);
    put_u64(header, C_EXTENTS, data.extents.len() as u64);
    put_u64(header, C_V2_FLOOR, data.v2_floor);
    let (last_id, last_mac) = data
        .last_seal
        .map_or((u64::MAX, [0; MAC_BYTES]), |s| (s.segment_id, s.mac));
    put_u64(header, C_LAST_SEAL, last_id);
    header[C_LAST_SEAL_MAC..C_LAST_SEAL_MAC + MAC_BYTES].copy_from_slice(&last_mac);
    header[C_MAC_KEY..C_MAC_KEY + KEY_ID_BYTES].copy_from_slice(&data.mac_key_id.0);
    header[C_PREVIOUS..C_PREVIOUS + MAC_BYTES].copy_from_slice(&data.previous_mac);
    put_u64(header, C_MAC_FLOOR, data.mac_floor);
    put_u32(header, C_BODY_CRC, body_crc);
    let header_crc = crc32c::crc32c(&header[..C_HEADER_CRC]);
    put_u32(header, C_HEADER_CRC, header_crc);
}

fn encode_extent(out: &mut [u8], lba: u64, extent: &Extent) {
    put_u64(out, 0, lba);
    put_u64(out, 8, extent.blocks);
    put_u64(out, 16, extent.seq);
    match extent.location {
        Location::Zero => put_u64(out, 24, ZERO_SEGMENT),
        Location::Data(d) => {
            put_u64(out, 24, d.segment_id);
            put_u64(out, 32, d.table_offset);
            put_u64(out, 40, d.payload_offset);
            put_u64(out, 48, d.record_lba);
            put_u32(out, 56, d.record_blocks);
            put_u32(out, 60, d.key_index);
        }
    }
}

/// What the checkpoint MAC of the encoded checkpoint `bytes` is computed
/// over: every byte before the trailer, with the two CRC fields (which
/// cover the trailer) taken as zero.
pub fn mac_input(bytes: &[u8]) -> Vec<u8> {
    let mut input = bytes[..bytes.len() - MAC_BYTES].to_vec();
    input[C_CRCS].fill(0);
    input
}

/// Puts `mac` in the trailer of the encoded checkpoint `bytes` and
/// recomputes its CRCs.
pub fn put_mac(bytes: &mut [u8], mac: &Mac) {
    let trailer = bytes.len() - MAC_BYTES;
    bytes[trailer..].copy_from_slice(mac);
    let body_crc = crc32c::crc32c(&bytes[HEADER_BYTES..]);
    put_u32(bytes, C_BODY_CRC, body_crc);
    let header_crc = crc32c::crc32c(&bytes[..C_HEADER_CRC]);
    put_u32(bytes, C_HEADER_CRC, header_crc);
}

/// The counts a header announces.
struct Counts {
    heads: usize,
    keys: usize,
    sealed: usize,
    extents: usize,
}

/// Decodes a version 3 checkpoint (magic and version already read).
pub(super) fn decode(volume_id: &[u8; 16], bytes: &[u8]) -> Result<CheckpointData, &'static str> {
    let header = checked_header(bytes, HEADER_BYTES)?;
    if header[C_VOLUME..C_VOLUME + 16] != volume_id[..] {
        return Err(super::FOREIGN_VOLUME);
    }
    let flags = get_u16(header, C_FLAGS);
    if flags & !FLAG_MACS != 0 || get_u32(header, C_SEALED + 4) != 0 {
        return Err("unknown flags or reserved bytes set");
    }
    if header[C_MAC_FLOOR + 8..C_BODY_CRC].iter().any(|b| *b != 0) {
        return Err("unknown flags or reserved bytes set");
    }
    let counts = (
        u64::from(get_u32(header, C_HEADS)),
        u64::from(get_u32(header, C_KEYS)),
        u64::from(get_u32(header, C_SEALED)),
        get_u64(header, C_EXTENTS),
    );
    let tables = [
        (counts.0, HEAD_BYTES),
        (counts.1, KEY_BYTES),
        (counts.2, SEALED_BYTES),
        (counts.3, EXTENT_BYTES),
    ];
    let stored_crc = get_u32(header, C_BODY_CRC);
    let body = checked_body(bytes, HEADER_BYTES, &tables, MAC_BYTES, stored_crc)?;
    let counts = Counts {
        heads: counts.0 as usize,
        keys: counts.1 as usize,
        sealed: counts.2 as usize,
        extents: counts.3 as usize,
    };
    let mut data = decode_header_fields(header, flags);
    decode_body(body, &counts, &mut data)?;
    Ok(data)
}

fn decode_header_fields(header: &[u8], flags: u16) -> CheckpointData {
    let last_seal = get_u64(header, C_LAST_SEAL);
    let mut data = CheckpointData {
        seq_next: get_u64(header, C_SEQ_NEXT),
        segment_id_next: get_u64(header, C_SEGMENT_NEXT),
        v2_floor: get_u64(header, C_V2_FLOOR),
        macs: flags & FLAG_MACS != 0,
        mac_floor: get_u64(header, C_MAC_FLOOR),
        mac_key_id: get_key_id(header, C_MAC_KEY),
        last_seal: (last_seal != u64::MAX).then(|| SealRef {
            segment_id: last_seal,
            mac: mac_at(header, C_LAST_SEAL_MAC),
        }),
        ..CheckpointData::default()
    };
    data.previous_mac = mac_at(header, C_PREVIOUS);
    data
}

fn mac_at(bytes: &[u8], offset: usize) -> Mac {
    let mut mac = [0u8; MAC_BYTES];
    mac.copy_from_slice(&bytes[offset..offset + MAC_BYTES]);
    mac
}

fn decode_body(
    body: &[u8],
    counts: &Counts,
    data: &mut CheckpointData,
) -> Result<(), &'static str> {
    let mut at = 0;
    for _ in 0..counts.heads {
        data.heads.push(HeadPosition {
            segment_id: get_u64(body, at),
            offset: get_u64(body, at + 8),
            records: get_u64(body, at + 16),
            last_mac: mac_at(body, at + 24),
        });
        at += HEAD_BYTES;
    }
    for _ in 0..counts.keys {
        data.keys.push(get_key_id(body, at));
        data.key_encrypted_bytes
            .push(get_u64(body, at + KEY_ID_BYTES));
        at += KEY_BYTES;
    }
    for _ in 0..counts.sealed {
        let version =
            SegmentVersion::from_number(body[at + 32]).ok_or("unknown segment version")?;
        if body[at + 33..at + SEALED_BYTES].iter().any(|b| *b != 0) {
            return Err("reserved sealed-segment bytes are not zero");
        }
        data.sealed.push(SealedSegment {
            segment_id: get_u64(body, at),
            seal_offset: get_u64(body, at + 8),
            seal_mac: mac_at(body, at + 16),
            version,
        });
        at += SEALED_BYTES;
    }
    let at = decode_extents(
        body,
        at,
        (counts.extents, EXTENT_BYTES),
        &mut data.extents,
        |bytes, start| locate(bytes, start, counts.keys),
    )?;
    data.mac = mac_at(body, at);
    Ok(())
}

/// Where a 64-byte extent's blocks are: its record's table and payload
/// offsets are stored as they are.
fn locate(bytes: &[u8], start: &ExtentStart, keys: usize) -> Result<Location, &'static str> {
    if start.is_zero() {
        if bytes[32..].iter().any(|b| *b != 0) {
            return Err("zero extent with a location");
        }
        return Ok(Location::Zero);
    }
    let data = DataLocation {
        segment_id: start.segment_id,
        table_offset: get_u64(bytes, 32),
        payload_offset: get_u64(bytes, 40),
        record_lba: get_u64(bytes, 48),
        record_blocks: get_u32(bytes, 56),
        key_index: get_u32(bytes, 60),
    };
    check_data_extent(start, &data, keys)?;
    Ok(Location::Data(data))
}
