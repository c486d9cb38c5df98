//! Records: their headers (encoding, decoding and checking; layout in
//! `docs/format.md`, section 4.2) and the block checksum table that
//! follows a data record's header. This module alone knows the table's
//! entry size and builds and checks it.
//!
//! Bytes read from disk are parsed into an [`UncheckedRecordHeader`]; only
//! [`UncheckedRecordHeader::check`] (magic, version, CRC, field sanity) turns
//! one into a [`RecordHeader`] that the rest of the store trusts.

use crate::crypto::KeyId;
use crate::crypto::key::KEY_ID_BYTES;

/// Size of a record header, bytes.
pub const RECORD_HEADER_BYTES: usize = 64;
/// Magic at the start of every record header.
pub const RECORD_MAGIC: [u8; 4] = *b"LSVR";
/// Current record format version.
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
    fn code(self) -> u8 {
        match self {
            RecordKind::Data => 1,
            RecordKind::Discard => 2,
            RecordKind::Zeroes => 3,
            RecordKind::Seal => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(RecordKind::Data),
            2 => Some(RecordKind::Discard),
            3 => Some(RecordKind::Zeroes),
            4 => Some(RecordKind::Seal),
            _ => None,
        }
    }
}

/// A record header we built or checked: every field is trusted.
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
    /// CRC32C of the block checksum table (0 without payload).
    pub table_crc32c: u32,
    /// Data copied unchanged by compaction (not newly encrypted): does not
    /// count toward its key's encrypted bytes.
    pub moved: bool,
}

/// Flag bit: the record's ciphertext was moved, not newly encrypted.
const FLAG_MOVED: u8 = 1;

impl RecordHeader {
    /// Bytes of the per-block checksum table that follows the header.
    pub fn table_bytes(&self) -> u64 {
        if self.kind == RecordKind::Data {
            checksum_table_bytes(u64::from(self.block_count))
        } else {
            0
        }
    }

    /// Bytes of ciphertext after the table.
    pub fn payload_bytes(&self) -> u64 {
        if self.kind == RecordKind::Data {
            u64::from(self.block_count) << self.block_shift
        } else {
            0
        }
    }

    /// Whole record length: header, table, payload.
    pub fn record_bytes(&self) -> u64 {
        RECORD_HEADER_BYTES as u64 + self.table_bytes() + self.payload_bytes()
    }

    /// Encodes the header, computing its CRC.
    pub fn encode(&self) -> [u8; RECORD_HEADER_BYTES] {
        let mut bytes = [0u8; RECORD_HEADER_BYTES];
        bytes[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&RECORD_MAGIC);
        put_u16(&mut bytes, VERSION_OFFSET, RECORD_VERSION);
        bytes[KIND_OFFSET] = self.kind.code();
        bytes[FLAGS_OFFSET] = if self.moved { FLAG_MOVED } else { 0 };
        put_u64(&mut bytes, SEQ_OFFSET, self.seq);
        put_u64(&mut bytes, LBA_OFFSET, self.lba);
        put_u32(&mut bytes, BLOCKS_OFFSET, self.block_count);
        bytes[BLOCK_SHIFT_OFFSET] = self.block_shift;
        bytes[KEY_ID_OFFSET..KEY_ID_OFFSET + KEY_ID_BYTES].copy_from_slice(&self.key_id.0);
        put_u32(&mut bytes, TABLE_CRC_OFFSET, self.table_crc32c);
        let crc = crc32c::crc32c(&bytes[..HEADER_CRC_OFFSET]);
        put_u32(&mut bytes, HEADER_CRC_OFFSET, crc);
        debug_assert_eq!(UncheckedRecordHeader(bytes).check(), Ok(*self));
        bytes
    }
}

/// Header bytes read from disk, not yet trusted.
#[derive(Clone, Copy)]
pub struct UncheckedRecordHeader(pub [u8; RECORD_HEADER_BYTES]);

impl UncheckedRecordHeader {
    /// Checks magic, version, CRC and field sanity.
    pub fn check(&self) -> Result<RecordHeader, &'static str> {
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
        if flags & FLAG_MOVED != 0 && kind != RecordKind::Data {
            return Err("only data records can be moved");
        }
        let mut key_id = [0u8; KEY_ID_BYTES];
        key_id.copy_from_slice(&bytes[KEY_ID_OFFSET..KEY_ID_OFFSET + KEY_ID_BYTES]);
        let header = RecordHeader {
            kind,
            seq: get_u64(bytes, SEQ_OFFSET),
            lba: get_u64(bytes, LBA_OFFSET),
            block_count: get_u32(bytes, BLOCKS_OFFSET),
            block_shift: bytes[BLOCK_SHIFT_OFFSET],
            key_id: KeyId(key_id),
            table_crc32c: get_u32(bytes, TABLE_CRC_OFFSET),
            moved: flags & FLAG_MOVED != 0,
        };
        if !matches!(header.block_shift, 9 | 12) {
            return Err("unsupported block size");
        }
        match header.kind {
            RecordKind::Seal if header.block_count != 0 => Err("seal record covers blocks"),
            RecordKind::Data | RecordKind::Discard | RecordKind::Zeroes
                if header.block_count == 0 =>
            {
                Err("record covers no blocks")
            }
            _ => Ok(header),
        }
    }
}

/// Bytes of one entry of a data record's block checksum table: the CRC32C
/// of one block's ciphertext, u32 little-endian.
pub const BLOCK_CHECKSUM_BYTES: usize = 4;

/// Bytes of the block checksum table of a data record of `blocks` blocks.
pub fn checksum_table_bytes(blocks: u64) -> u64 {
    blocks * BLOCK_CHECKSUM_BYTES as u64
}

/// Offset, within a record's checksum table, of the entry of its block
/// `index` (counted from the record's first block).
pub fn checksum_entry_offset(index: u64) -> u64 {
    checksum_table_bytes(index)
}

/// Fills `table` with the checksum-table entries of the whole blocks in
/// `blocks` (`block_bytes` each), one entry per block, in order.
pub fn fill_block_checksums(blocks: &[u8], block_bytes: usize, table: &mut [u8]) {
    debug_assert_eq!(blocks.len() % block_bytes, 0);
    assert_eq!(
        table.len(),
        blocks.len() / block_bytes * BLOCK_CHECKSUM_BYTES,
        "checksum table size"
    );
    for (block, entry) in blocks
        .chunks_exact(block_bytes)
        .zip(table.chunks_exact_mut(BLOCK_CHECKSUM_BYTES))
    {
        entry.copy_from_slice(&crc32c::crc32c(block).to_le_bytes());
    }
}

/// Builds the block checksum table of `payload` (whole blocks of
/// `block_bytes`).
pub fn block_checksums(payload: &[u8], block_bytes: usize) -> Vec<u8> {
    let mut table = vec![0u8; payload.len() / block_bytes * BLOCK_CHECKSUM_BYTES];
    fill_block_checksums(payload, block_bytes, &mut table);
    table
}

/// The index of the first of the whole blocks in `blocks` whose checksum
/// differs from its entry in `table` (same order), or `None` if all match.
pub fn first_corrupt_block(blocks: &[u8], block_bytes: usize, table: &[u8]) -> Option<usize> {
    debug_assert_eq!(
        table.len(),
        blocks.len() / block_bytes * BLOCK_CHECKSUM_BYTES
    );
    blocks
        .chunks_exact(block_bytes)
        .zip(table.chunks_exact(BLOCK_CHECKSUM_BYTES))
        .position(|(block, entry)| crc32c::crc32c(block).to_le_bytes() != entry)
}

/// Where the parts of a data record are, for reading blocks from its
/// `first`th block on: the record header at `record_offset`, then the
/// checksum table of `record_blocks` entries, then the blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataRecordOffsets {
    /// Offset of the checksum-table entry of block `first`.
    pub table: u64,
    /// Offset of the ciphertext of block `first`.
    pub payload: u64,
}

impl DataRecordOffsets {
    /// The offsets of block `first` of the record at `record_offset` that
    /// covers `record_blocks` blocks of `1 << block_shift` bytes.
    pub fn of_block(record_offset: u64, record_blocks: u32, block_shift: u8, first: u64) -> Self {
        let table_start = record_offset + RECORD_HEADER_BYTES as u64;
        let payload_start = table_start + checksum_table_bytes(u64::from(record_blocks));
        Self {
            table: table_start + checksum_entry_offset(first),
            payload: payload_start + (first << block_shift),
        }
    }
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

/// The data record header of `docs/format.md`, section 4.2 (pinned byte
/// for byte in `format_tests`; the tests below reuse it).
#[cfg(test)]
pub(crate) fn sample_data_header() -> RecordHeader {
    RecordHeader {
        kind: RecordKind::Data,
        seq: 0x0102_0304_0506_0708,
        lba: 42,
        block_count: 3,
        block_shift: 12,
        key_id: KeyId([9; 16]),
        table_crc32c: 0xdead_beef,
        moved: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The data record `docs/format.md` shows, pinned byte for byte (layout
    // and round trip) in `format_tests`.
    use super::sample_data_header as sample;

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
