//! Version 2 frames: the unit of appending to a version 2 segment. One
//! append (a batch of records, a compaction batch, a seal) is one frame:
//!
//! ```text
//! meta area (a multiple of 4 KiB):
//!   frame header, 64 bytes
//!   record headers, 64 bytes each, in append order
//!   block tables of the data records (16 bytes per block), in record order;
//!     a seal record's 64-byte seal body in its place
//!   zeros up to the payload area
//! payload area (4 KiB-aligned within the frame):
//!   each data record's ciphertext, in record order, packed
//!   zeros up to the frame's end (a multiple of 4 KiB)
//! ```
//!
//! Frames are canonical: given the records' kinds and block counts, every
//! offset and size is fixed, and a frame that differs from the layout its
//! own records imply is invalid. Byte layouts in docs/format.md.

use std::ops::Range;

use super::aligned::{ALIGN, AlignedBuf, align_up};
use super::record::{
    FLAG_MOVED, RECORD_HEADER_BYTES, RecordHeader, RecordKind, get_key_id, get_u16, get_u32,
    get_u64, put_u16, put_u32, put_u64,
};
use super::table::TableFormat;
use crate::crypto::key::KEY_ID_BYTES;

/// Magic at the start of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"LSVF";
/// Frame format version.
pub const FRAME_VERSION: u16 = 2;
/// Size of a frame header, bytes.
pub const FRAME_HEADER_BYTES: usize = 64;
/// Size of a seal record's body, bytes.
pub const SEAL_BODY_BYTES: usize = 64;
/// Size of a record MAC, a seal MAC or a checkpoint MAC, bytes.
pub const MAC_BYTES: usize = 16;
/// Most records one frame holds (the count is a u16).
pub const FRAME_RECORDS_MAX: usize = u16::MAX as usize;
/// Most payload bytes one frame carries (sizes are u32s; appends larger
/// than this are several frames).
pub const FRAME_PAYLOAD_BYTES_MAX: u64 = 1 << 30;

/// A MAC: record, seal or checkpoint (all zero without MACs).
pub type Mac = [u8; MAC_BYTES];

const F_VERSION: usize = 4; //      u16
const F_COUNT: usize = 6; //        u16 records
const F_SEGMENT: usize = 8; //      u64 segment id
const F_OFFSET: usize = 16; //      u64 frame offset in the segment
const F_BYTES: usize = 24; //       u32 frame bytes
const F_META: usize = 28; //        u32 meta bytes
const F_PAYLOAD: usize = 32; //     u32 payload area offset
const F_ZERO: Range<usize> = 36..56;
const F_META_CRC: usize = 56; //    u32 CRC32C of meta bytes 64..meta_bytes
const F_CRC: usize = 60; //         u32 CRC32C of 0..60

const R_KIND: usize = 0; //         u8
const R_FLAGS: usize = 1; //        u8
const R_SHIFT: usize = 2; //        u8, then a zero byte
const R_BLOCKS: usize = 4; //       u32
const R_SEQ: usize = 8; //          u64
const R_LBA: usize = 16; //         u64
const R_KEY: usize = 24; //         [u8; 16]
const R_PAYLOAD: usize = 40; //     u32 payload offset in the frame
const R_TABLE: usize = 44; //       u32 table offset in the frame
const R_MAC: usize = 48; //         [u8; 16]
const _: () = assert!(R_MAC + MAC_BYTES == RECORD_HEADER_BYTES);
const _: () = assert!(R_KEY + KEY_ID_BYTES == R_PAYLOAD);

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Records in the frame (at least 1).
    pub record_count: u16,
    /// The segment the frame was written to.
    pub segment_id: u64,
    /// The frame's own offset in that segment.
    pub frame_offset: u64,
    /// Whole frame, bytes (a multiple of 4 KiB).
    pub frame_bytes: u32,
    /// Meta bytes in use: header, record headers, tables.
    pub meta_bytes: u32,
    /// Offset of the payload area from the frame's start.
    pub payload_area: u32,
    /// CRC32C of meta bytes 64..meta_bytes.
    pub meta_crc32c: u32,
}

impl FrameHeader {
    /// Encodes the header, computing its CRC.
    pub fn encode(&self) -> [u8; FRAME_HEADER_BYTES] {
        let mut bytes = [0u8; FRAME_HEADER_BYTES];
        bytes[..4].copy_from_slice(&FRAME_MAGIC);
        put_u16(&mut bytes, F_VERSION, FRAME_VERSION);
        put_u16(&mut bytes, F_COUNT, self.record_count);
        put_u64(&mut bytes, F_SEGMENT, self.segment_id);
        put_u64(&mut bytes, F_OFFSET, self.frame_offset);
        put_u32(&mut bytes, F_BYTES, self.frame_bytes);
        put_u32(&mut bytes, F_META, self.meta_bytes);
        put_u32(&mut bytes, F_PAYLOAD, self.payload_area);
        put_u32(&mut bytes, F_META_CRC, self.meta_crc32c);
        let crc = crc32c::crc32c(&bytes[..F_CRC]);
        put_u32(&mut bytes, F_CRC, crc);
        bytes
    }

    /// Checks the header found at `frame_offset` of segment `segment_id`:
    /// magic, CRC, version, that it is this segment's frame at this offset
    /// (not one of an earlier life of a recycled file), and its sizes.
    pub fn check(bytes: &[u8], segment_id: u64, frame_offset: u64) -> Result<Self, &'static str> {
        let bytes = &bytes[..FRAME_HEADER_BYTES];
        if bytes[..4] != FRAME_MAGIC {
            return Err("no frame here (bad magic)");
        }
        if crc32c::crc32c(&bytes[..F_CRC]) != get_u32(bytes, F_CRC) {
            return Err("frame header checksum mismatch");
        }
        if get_u16(bytes, F_VERSION) != FRAME_VERSION {
            return Err("unsupported frame version");
        }
        if bytes[F_ZERO].iter().any(|b| *b != 0) {
            return Err("reserved frame header bytes are not zero");
        }
        let header = Self {
            record_count: get_u16(bytes, F_COUNT),
            segment_id: get_u64(bytes, F_SEGMENT),
            frame_offset: get_u64(bytes, F_OFFSET),
            frame_bytes: get_u32(bytes, F_BYTES),
            meta_bytes: get_u32(bytes, F_META),
            payload_area: get_u32(bytes, F_PAYLOAD),
            meta_crc32c: get_u32(bytes, F_META_CRC),
        };
        if header.segment_id != segment_id {
            return Err("frame of another segment (an earlier life of the file?)");
        }
        if header.frame_offset != frame_offset {
            return Err("frame written for another offset");
        }
        if header.record_count == 0 {
            return Err("frame without records");
        }
        let records_end =
            FRAME_HEADER_BYTES + RECORD_HEADER_BYTES * usize::from(header.record_count);
        if (header.meta_bytes as usize) < records_end
            || align_up(header.meta_bytes as usize) != header.payload_area as usize
            || header.payload_area > header.frame_bytes
            || !(header.frame_bytes as usize).is_multiple_of(ALIGN)
        {
            return Err("frame sizes are inconsistent");
        }
        Ok(header)
    }
}

/// A version 2 record header: what the record says, where its table and
/// payload are in its frame, and its MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V2RecordHeader {
    /// What the record says.
    pub header: RecordHeader,
    /// Offset of the payload from the frame's start (data only, else 0).
    pub payload_offset: u32,
    /// Offset of the block table (data) or seal body (seal) from the
    /// frame's start; 0 for other kinds.
    pub table_offset: u32,
    /// The record MAC, or the seal MAC for a seal (zero without MACs).
    pub mac: Mac,
}

impl V2RecordHeader {
    /// Encodes the header (no CRC of its own: the frame's meta CRC covers it).
    pub fn encode(&self) -> [u8; RECORD_HEADER_BYTES] {
        let h = &self.header;
        let mut bytes = [0u8; RECORD_HEADER_BYTES];
        bytes[R_KIND] = h.kind.code();
        bytes[R_FLAGS] = if h.moved { FLAG_MOVED } else { 0 };
        bytes[R_SHIFT] = h.block_shift;
        put_u32(&mut bytes, R_BLOCKS, h.block_count);
        put_u64(&mut bytes, R_SEQ, h.seq);
        put_u64(&mut bytes, R_LBA, h.lba);
        bytes[R_KEY..R_KEY + KEY_ID_BYTES].copy_from_slice(&h.key_id.0);
        put_u32(&mut bytes, R_PAYLOAD, self.payload_offset);
        put_u32(&mut bytes, R_TABLE, self.table_offset);
        bytes[R_MAC..].copy_from_slice(&self.mac);
        bytes
    }

    /// Decodes and checks the fields of a record header.
    pub fn decode(bytes: &[u8]) -> Result<Self, &'static str> {
        let kind = RecordKind::from_code(bytes[R_KIND]).ok_or("unknown record kind")?;
        let flags = bytes[R_FLAGS];
        if flags & !FLAG_MOVED != 0 {
            return Err("unknown record flags");
        }
        if bytes[R_SHIFT + 1] != 0 {
            return Err("reserved record header byte is not zero");
        }
        let header = RecordHeader {
            kind,
            seq: get_u64(bytes, R_SEQ),
            lba: get_u64(bytes, R_LBA),
            block_count: get_u32(bytes, R_BLOCKS),
            block_shift: bytes[R_SHIFT],
            key_id: get_key_id(bytes, R_KEY),
            moved: flags & FLAG_MOVED != 0,
        };
        header.check_fields()?;
        if kind == RecordKind::Seal && (header.seq != 0 || header.lba != 0) {
            return Err("seal record with a sequence number or block");
        }
        let mut mac = [0u8; MAC_BYTES];
        mac.copy_from_slice(&bytes[R_MAC..R_MAC + MAC_BYTES]);
        Ok(Self {
            header,
            payload_offset: get_u32(bytes, R_PAYLOAD),
            table_offset: get_u32(bytes, R_TABLE),
            mac,
        })
    }
}

/// The body of a seal record: how it continues the log's seal chain and
/// what it closes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SealBody {
    /// MAC of the seal the log wrote before this one (zero for the first).
    pub previous_seal_mac: Mac,
    /// Segment of that seal (`None` for the first).
    pub previous_sealed_segment: Option<u64>,
    /// MAC of the last record of this segment (zero without MACs or records).
    pub last_record_mac: Mac,
    /// Records in the segment before the seal.
    pub records: u64,
}

impl SealBody {
    /// Encodes the body.
    pub fn encode(&self) -> [u8; SEAL_BODY_BYTES] {
        let mut bytes = [0u8; SEAL_BODY_BYTES];
        bytes[..16].copy_from_slice(&self.previous_seal_mac);
        put_u64(
            &mut bytes,
            16,
            self.previous_sealed_segment.unwrap_or(u64::MAX),
        );
        bytes[24..40].copy_from_slice(&self.last_record_mac);
        put_u64(&mut bytes, 40, self.records);
        bytes
    }

    /// Decodes a body; the reserved bytes must be zero.
    pub fn decode(bytes: &[u8]) -> Result<Self, &'static str> {
        if bytes[48..SEAL_BODY_BYTES].iter().any(|b| *b != 0) {
            return Err("reserved seal body bytes are not zero");
        }
        let mut body = Self::default();
        body.previous_seal_mac.copy_from_slice(&bytes[..16]);
        let previous = get_u64(bytes, 16);
        body.previous_sealed_segment = (previous != u64::MAX).then_some(previous);
        body.last_record_mac.copy_from_slice(&bytes[24..40]);
        body.records = get_u64(bytes, 40);
        Ok(body)
    }
}

/// Where one record's parts go in its frame (offsets from the frame's
/// start; empty ranges where it has none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSlots {
    /// Its block table (data) or seal body (seal).
    pub table: Range<usize>,
    /// Its ciphertext (data).
    pub payload: Range<usize>,
}

/// The canonical layout of a frame of records of the given kinds and block
/// counts: record headers, then tables (a seal's body in its place), then
/// the payload area at the next 4 KiB boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameLayout {
    /// Per record, where its parts go.
    pub slots: Vec<RecordSlots>,
    /// Meta bytes in use.
    pub meta_bytes: usize,
    /// Offset of the payload area.
    pub payload_area: usize,
    /// Whole frame, bytes.
    pub frame_bytes: usize,
}

impl FrameLayout {
    /// The layout for `records` (kind, block count) of `block_shift`-sized blocks.
    pub fn plan(
        records: impl ExactSizeIterator<Item = (RecordKind, u32)> + Clone,
        block_shift: u8,
    ) -> Self {
        let count = records.len();
        let mut table_at = FRAME_HEADER_BYTES + RECORD_HEADER_BYTES * count;
        let mut tables = Vec::with_capacity(count);
        for (kind, blocks) in records.clone() {
            let bytes = match kind {
                RecordKind::Data => TableFormat::V2.table_bytes(u64::from(blocks)) as usize,
                RecordKind::Seal => SEAL_BODY_BYTES,
                RecordKind::Discard | RecordKind::Zeroes => 0,
            };
            tables.push(if bytes == 0 {
                0..0
            } else {
                table_at..table_at + bytes
            });
            table_at += bytes;
        }
        let payload_area = align_up(table_at);
        let mut payload_at = payload_area;
        let slots = records
            .zip(tables)
            .map(|((kind, blocks), table)| {
                let bytes = match kind {
                    RecordKind::Data => (blocks as usize) << block_shift,
                    _ => 0,
                };
                let payload = if bytes == 0 {
                    0..0
                } else {
                    payload_at..payload_at + bytes
                };
                payload_at += bytes;
                RecordSlots { table, payload }
            })
            .collect();
        Self {
            slots,
            meta_bytes: table_at,
            payload_area,
            frame_bytes: align_up(payload_at),
        }
    }
}

/// One record to put in a frame: what it says, its table (data: version 2
/// entries; seal: the encoded seal body), its payload (data) and its MAC.
#[derive(Clone, Copy, Debug)]
pub struct FrameRecord<'a> {
    /// What it says.
    pub header: RecordHeader,
    /// Table or seal body bytes.
    pub table: &'a [u8],
    /// Ciphertext (data only).
    pub payload: &'a [u8],
    /// Record or seal MAC.
    pub mac: Mac,
}

/// A frame's meta area, built: write it, then the payloads in record order,
/// then zeros up to `layout.frame_bytes`.
pub struct BuiltMeta {
    /// Header, record headers and tables, padded with zeros to the payload
    /// area (its `padded()` length).
    pub meta: AlignedBuf,
    /// The layout it follows.
    pub layout: FrameLayout,
}

/// Builds the meta area of the frame of `records` at `frame_offset` of
/// segment `segment_id`.
pub fn build_meta(
    segment_id: u64,
    frame_offset: u64,
    block_shift: u8,
    records: &[FrameRecord<'_>],
) -> BuiltMeta {
    assert!(!records.is_empty() && records.len() <= FRAME_RECORDS_MAX);
    let layout = FrameLayout::plan(
        records
            .iter()
            .map(|r| (r.header.kind, r.header.block_count)),
        block_shift,
    );
    let mut meta = AlignedBuf::zeroed(layout.payload_area);
    for (index, (record, slots)) in records.iter().zip(&layout.slots).enumerate() {
        assert_eq!(record.table.len(), slots.table.len(), "table size");
        assert_eq!(record.payload.len(), slots.payload.len(), "payload size");
        let header = V2RecordHeader {
            header: record.header,
            payload_offset: slots.payload.start as u32,
            table_offset: slots.table.start as u32,
            mac: record.mac,
        };
        let at = FRAME_HEADER_BYTES + index * RECORD_HEADER_BYTES;
        meta[at..at + RECORD_HEADER_BYTES].copy_from_slice(&header.encode());
        meta[slots.table.clone()].copy_from_slice(record.table);
    }
    let header = FrameHeader {
        record_count: records.len() as u16,
        segment_id,
        frame_offset,
        frame_bytes: u32::try_from(layout.frame_bytes).expect("frame fits u32"),
        meta_bytes: layout.meta_bytes as u32,
        payload_area: layout.payload_area as u32,
        meta_crc32c: crc32c::crc32c(&meta[FRAME_HEADER_BYTES..layout.meta_bytes]),
    };
    meta[..FRAME_HEADER_BYTES].copy_from_slice(&header.encode());
    BuiltMeta { meta, layout }
}

impl BuiltMeta {
    /// Puts a MAC in every record header, in record order: `mac_of(index,
    /// header bytes, table bytes)` (the header with its MAC field still
    /// zero), then recomputes the frame's CRCs over the result.
    pub fn sign<E>(
        &mut self,
        mut mac_of: impl FnMut(usize, &[u8], &[u8]) -> Result<Mac, E>,
    ) -> Result<(), E> {
        for (index, slots) in self.layout.slots.iter().enumerate() {
            let at = FRAME_HEADER_BYTES + index * RECORD_HEADER_BYTES;
            let mac = mac_of(
                index,
                &self.meta[at..at + RECORD_HEADER_BYTES],
                &self.meta[slots.table.clone()],
            )?;
            self.meta[at + R_MAC..at + RECORD_HEADER_BYTES].copy_from_slice(&mac);
        }
        let meta_crc = crc32c::crc32c(&self.meta[FRAME_HEADER_BYTES..self.layout.meta_bytes]);
        put_u32(&mut self.meta[..], F_META_CRC, meta_crc);
        let header_crc = crc32c::crc32c(&self.meta[..F_CRC]);
        put_u32(&mut self.meta[..], F_CRC, header_crc);
        Ok(())
    }
}

/// A frame's meta area read back and checked: its header, its records,
/// and the meta bytes their tables are in.
pub struct ParsedMeta {
    /// The frame header.
    pub header: FrameHeader,
    /// The records, in order.
    pub records: Vec<V2RecordHeader>,
    /// The layout they imply (checked to be the one the frame has).
    pub layout: FrameLayout,
    /// Meta bytes 0..meta_bytes.
    pub meta: Vec<u8>,
}

impl ParsedMeta {
    /// The table (or seal body) bytes of record `index`.
    pub fn table(&self, index: usize) -> &[u8] {
        &self.meta[self.layout.slots[index].table.clone()]
    }
}

/// Parses `meta` (bytes 0..meta_bytes of a frame whose header `header`
/// checked): meta CRC, record headers, and that the frame has the
/// canonical layout of its records. A seal must be its frame's only record.
pub fn parse_meta(header: FrameHeader, meta: Vec<u8>) -> Result<ParsedMeta, &'static str> {
    if crc32c::crc32c(&meta[FRAME_HEADER_BYTES..header.meta_bytes as usize]) != header.meta_crc32c {
        return Err("frame meta checksum mismatch");
    }
    let count = usize::from(header.record_count);
    let records = (0..count)
        .map(|i| {
            let at = FRAME_HEADER_BYTES + i * RECORD_HEADER_BYTES;
            V2RecordHeader::decode(&meta[at..at + RECORD_HEADER_BYTES])
        })
        .collect::<Result<Vec<_>, _>>()?;
    if count > 1 && records.iter().any(|r| r.header.kind == RecordKind::Seal) {
        return Err("a seal record shares its frame");
    }
    let shift = records[0].header.block_shift;
    if records.iter().any(|r| r.header.block_shift != shift) {
        return Err("records of one frame differ in block size");
    }
    let layout = FrameLayout::plan(
        records
            .iter()
            .map(|r| (r.header.kind, r.header.block_count)),
        shift,
    );
    let offsets_match = records.iter().zip(&layout.slots).all(|(r, s)| {
        r.table_offset as usize == s.table.start && r.payload_offset as usize == s.payload.start
    });
    if !offsets_match
        || layout.meta_bytes != header.meta_bytes as usize
        || layout.payload_area != header.payload_area as usize
        || layout.frame_bytes != header.frame_bytes as usize
    {
        return Err("frame layout differs from its records'");
    }
    Ok(ParsedMeta {
        header,
        records,
        layout,
        meta,
    })
}

#[cfg(test)]
mod tests;
