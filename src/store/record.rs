//! Records: what a record says (kind, sequence number, blocks, key), in
//! memory whatever the segment version, and the version 1 record header
//! (encoding, decoding and checking; layout in docs/format.md). The version
//! 2 record header lives with its frame (`frame`); block tables in `table`.
//!
//! Bytes read from disk are parsed into an [`UncheckedRecordHeader`]; only
//! [`UncheckedRecordHeader::check`] (magic, version, CRC, field sanity) turns
//! one into a [`V1RecordHeader`] that the rest of the store trusts.

use super::table::TableFormat;
use crate::crypto::KeyId;
use crate::crypto::key::KEY_ID_BYTES;

/// Size of a record header (either version), bytes.
pub const RECORD_HEADER_BYTES: usize = 64;
/// Magic at the start of every version 1 record header.
pub const RECORD_MAGIC: [u8; 4] = *b"LSVR";
/// Version field of a version 1 record header.
pub const RECORD_VERSION: u16 = 1;

const MAGIC_OFFSET: usize = 0; //                      [u8; 4] = b"LSVR"
const VERSION_OFFSET: usize = MAGIC_OFFSET + 4; //     u16
const KIND_OFFSET: usize = VERSION_OFFSET + 2; //      u8
const FLAGS_OFFSET: usize = KIND_OFFSET + 1; //        u8: bit 0 = moved
const SEQ_OFFSET: usize = FLAGS_OFFSET + 1; //         u64
const LBA_OFFSET: usize = SEQ_OFFSET + 8; //           u64
const BLOCKS_OFFSET: usize = LBA_OFFSET + 8; //        u32
const BLOCK_SHIFT_OFFSET: usize = BLOCKS_OFFSET + 4; // u8, then 3 zero bytes
const KEY_ID_OFFSET: usize = BLOCK_SHIFT_OFFSET + 4; // [u8; 16]
const TABLE_CRC_OFFSET: usize = KEY_ID_OFFSET + KEY_ID_BYTES; // u32
const RESERVED_OFFSET: usize = TABLE_CRC_OFFSET + 4; // [u8; 8], zero
const HEADER_CRC_OFFSET: usize = RESERVED_OFFSET + 8; // u32 over 0..HEADER_CRC_OFFSET
const _: () = assert!(HEADER_CRC_OFFSET + 4 == RECORD_HEADER_BYTES);
const _: () = assert!(SEQ_OFFSET == 8 && LBA_OFFSET == 16 && KEY_ID_OFFSET == 32);

/// What a record says about the blocks it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// Ciphertext of `block_count` blocks follows the header.
    Data,
    /// The blocks were discarded; they read as zeros. No payload.
    Discard,
    /// The blocks were written with zeros. No payload.
    Zeroes,
    /// The last record of a sealed segment. No payload, no blocks.
    Seal,
}

impl RecordKind {
    pub(crate) fn code(self) -> u8 {
        match self {
            RecordKind::Data => 1,
            RecordKind::Discard => 2,
            RecordKind::Zeroes => 3,
            RecordKind::Seal => 4,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(RecordKind::Data),
            2 => Some(RecordKind::Discard),
            3 => Some(RecordKind::Zeroes),
            4 => Some(RecordKind::Seal),
            _ => None,
        }
    }
}

/// What a record says, whatever the segment version it is in: built by
/// the log or checked on the way in, so every field is trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Record kind.
    pub kind: RecordKind,
    /// Write sequence number: unique per write, part of the XTS tweak.
    pub seq: u64,
    /// First block covered.
    pub lba: u64,
    /// Blocks covered (0 for a seal).
    pub block_count: u32,
    /// log2 of the block size in bytes (9 or 12).
    pub block_shift: u8,
    /// Key the payload is encrypted under (all zeros without payload).
    pub key_id: KeyId,
    /// Data copied unchanged by compaction (not newly encrypted): does not
    /// count toward its key's encrypted bytes.
    pub moved: bool,
}

/// Flag bit: the record's ciphertext was moved, not newly encrypted.
pub(crate) const FLAG_MOVED: u8 = 1;

impl RecordHeader {
    /// Bytes of ciphertext the record carries.
    pub fn payload_bytes(&self) -> u64 {
        if self.kind == RecordKind::Data {
            u64::from(self.block_count) << self.block_shift
        } else {
            0
        }
    }

    /// Checks what every version asks of the fields: a known block size,
    /// blocks for every kind but a seal, none for a seal, and the moved
    /// flag on data records only.
    pub(crate) fn check_fields(&self) -> Result<(), &'static str> {
        if !matches!(self.block_shift, 9 | 12) {
            return Err("unsupported block size");
        }
        if self.moved && self.kind != RecordKind::Data {
            return Err("only data records can be moved");
        }
        match self.kind {
            RecordKind::Seal if self.block_count != 0 => Err("seal record covers blocks"),
            RecordKind::Data | RecordKind::Discard | RecordKind::Zeroes
                if self.block_count == 0 =>
            {
                Err("record covers no blocks")
            }
            _ => Ok(()),
        }
    }
}

/// A record found in (or appended to) a segment: what it says and where
/// its parts are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlacedRecord {
    /// What the record says.
    pub header: RecordHeader,
    /// The segment it is in.
    pub segment_id: u64,
    /// Its position in the log: the offset of its frame (version 2) or of
    /// its header (version 1). Log heads and snapshot points are positions.
    pub position: u64,
    /// Offset of its block table's first entry in the segment (data only).
    pub table_offset: u64,
    /// Offset of its first block's ciphertext in the segment (data only).
    pub payload_offset: u64,
}

/// A version 1 record header: the fields, and the CRC of the block table
/// that follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V1RecordHeader {
    /// What the record says.
    pub header: RecordHeader,
    /// CRC32C of the block checksum table (0 without payload).
    pub table_crc32c: u32,
}

impl V1RecordHeader {
    /// Bytes of the per-block checksum table that follows the header.
    pub fn table_bytes(&self) -> u64 {
        if self.header.kind == RecordKind::Data {
            TableFormat::V1.table_bytes(u64::from(self.header.block_count))
        } else {
            0
        }
    }

    /// Whole record length: header, table, payload.
    pub fn record_bytes(&self) -> u64 {
        RECORD_HEADER_BYTES as u64 + self.table_bytes() + self.header.payload_bytes()
    }

    /// The record at `offset` of segment `segment_id`, placed.
    pub fn placed(&self, segment_id: u64, offset: u64) -> PlacedRecord {
        let table_offset = offset + RECORD_HEADER_BYTES as u64;
        PlacedRecord {
            header: self.header,
            segment_id,
            position: offset,
            table_offset,
            payload_offset: table_offset + self.table_bytes(),
        }
    }

    /// Encodes the header, computing its CRC.
    pub fn encode(&self) -> [u8; RECORD_HEADER_BYTES] {
        let h = &self.header;
        let mut bytes = [0u8; RECORD_HEADER_BYTES];
        bytes[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&RECORD_MAGIC);
        put_u16(&mut bytes, VERSION_OFFSET, RECORD_VERSION);
        bytes[KIND_OFFSET] = h.kind.code();
        bytes[FLAGS_OFFSET] = if h.moved { FLAG_MOVED } else { 0 };
        put_u64(&mut bytes, SEQ_OFFSET, h.seq);
        put_u64(&mut bytes, LBA_OFFSET, h.lba);
        put_u32(&mut bytes, BLOCKS_OFFSET, h.block_count);
        bytes[BLOCK_SHIFT_OFFSET] = h.block_shift;
        bytes[KEY_ID_OFFSET..KEY_ID_OFFSET + KEY_ID_BYTES].copy_from_slice(&h.key_id.0);
        put_u32(&mut bytes, TABLE_CRC_OFFSET, self.table_crc32c);
        let crc = crc32c::crc32c(&bytes[..HEADER_CRC_OFFSET]);
        put_u32(&mut bytes, HEADER_CRC_OFFSET, crc);
        debug_assert_eq!(UncheckedRecordHeader(bytes).check(), Ok(*self));
        bytes
    }
}

/// Version 1 header bytes read from disk, not yet trusted.
#[derive(Clone, Copy)]
pub struct UncheckedRecordHeader(pub [u8; RECORD_HEADER_BYTES]);

impl UncheckedRecordHeader {
    /// Checks magic, version, CRC and field sanity.
    pub fn check(&self) -> Result<V1RecordHeader, &'static str> {
        let bytes = &self.0;
        if bytes[MAGIC_OFFSET..MAGIC_OFFSET + 4] != RECORD_MAGIC {
            return Err("bad record magic");
        }
        let crc = get_u32(bytes, HEADER_CRC_OFFSET);
        if crc32c::crc32c(&bytes[..HEADER_CRC_OFFSET]) != crc {
            return Err("record header checksum mismatch");
        }
        if get_u16(bytes, VERSION_OFFSET) != RECORD_VERSION {
            return Err("unsupported record version");
        }
        let kind = RecordKind::from_code(bytes[KIND_OFFSET]).ok_or("unknown record kind")?;
        let flags = bytes[FLAGS_OFFSET];
        if flags & !FLAG_MOVED != 0 {
            return Err("unknown record flags");
        }
        let header = RecordHeader {
            kind,
            seq: get_u64(bytes, SEQ_OFFSET),
            lba: get_u64(bytes, LBA_OFFSET),
            block_count: get_u32(bytes, BLOCKS_OFFSET),
            block_shift: bytes[BLOCK_SHIFT_OFFSET],
            key_id: get_key_id(bytes, KEY_ID_OFFSET),
            moved: flags & FLAG_MOVED != 0,
        };
        header.check_fields()?;
        Ok(V1RecordHeader {
            header,
            table_crc32c: get_u32(bytes, TABLE_CRC_OFFSET),
        })
    }
}

/// The key id at `offset` of `bytes`.
pub(crate) fn get_key_id(bytes: &[u8], offset: usize) -> KeyId {
    let mut key_id = [0u8; KEY_ID_BYTES];
    key_id.copy_from_slice(&bytes[offset..offset + KEY_ID_BYTES]);
    KeyId(key_id)
}

pub(crate) fn put_u16(bytes: &mut [u8], offset: usize, value: u16) {
    bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
}
pub(crate) fn put_u32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}
pub(crate) fn put_u64(bytes: &mut [u8], offset: usize, value: u64) {
    bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}
pub(crate) fn get_u16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}
pub(crate) fn get_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(b)
}
pub(crate) fn get_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The same header `format_tests.rs` pins field by field.
    use super::super::format_tests::sample_data_header as sample;

    #[test]
    fn v1_header_is_pinned_to_its_documented_bytes() {
        let golden = "4c5356520100010008070605040302012a00000000000000030000000c000000\
                      09090909090909090909090909090909efbeadde00000000000000008ff5f814";
        let bytes = sample().encode();
        assert_eq!(hex::encode(bytes), golden);
        assert_eq!(UncheckedRecordHeader(bytes).check(), Ok(sample()));
        assert_eq!(sample().record_bytes(), 64 + 12 + 3 * 4096);
        let placed = sample().placed(7, 4096);
        assert_eq!((placed.table_offset, placed.payload_offset), (4160, 4172));
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let bytes = sample().encode();
        for bit in 0..RECORD_HEADER_BYTES * 8 {
            let mut damaged = bytes;
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(UncheckedRecordHeader(damaged).check().is_err(), "bit {bit}");
        }
    }

    #[test]
    fn zeroed_bytes_are_not_a_record() {
        assert!(
            UncheckedRecordHeader([0; RECORD_HEADER_BYTES])
                .check()
                .is_err()
        );
    }
}
