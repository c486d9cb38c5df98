//! Golden tests of the version 1 structures, which this build still reads
//! (volumes created before version 2): every header pinned to the bytes
//! `docs/format.md` shows, so that the reader of old volumes cannot drift.
//! The literals are laid out like the tables of `docs/format.md`: one field
//! per group of hex digits. The version 2 headers are pinned next to their
//! encoders (`segment.rs`, `frame/tests.rs`, `checkpoint/tests.rs`).

use std::io::Write;
use std::path::Path;

use super::checkpoint::{self, CheckpointData, HeadPosition};
use super::index::{DataLocation, Extent, Location};
use super::record::{RecordHeader, RecordKind, UncheckedRecordHeader, V1RecordHeader};
use super::segment::{SegmentVersion, check_segment_header};
use super::table::TableFormat;
use crate::crypto::KeyId;

const VOLUME_ID: [u8; 16] = [
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
];

/// Bytes from hex digits; whitespace and `|` (field separators) are ignored.
fn hex(text: &str) -> Vec<u8> {
    let digits: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '|')
        .collect();
    hex::decode(digits).expect("hex digits")
}

fn header_bytes(text: &str) -> [u8; 64] {
    hex(text).try_into().expect("64 bytes")
}

/// Checks that `header` encodes to `golden` and `golden` decodes to `header`.
fn assert_record_pinned(header: V1RecordHeader, golden: &str) {
    let golden = header_bytes(golden);
    assert_eq!(
        hex::encode(header.encode()),
        hex::encode(golden),
        "encode → bytes"
    );
    assert_eq!(
        UncheckedRecordHeader(golden).check(),
        Ok(header),
        "bytes → decode"
    );
}

/// A version 1 data record header with a distinct value in every field.
pub(super) fn sample_data_header() -> V1RecordHeader {
    V1RecordHeader {
        header: RecordHeader {
            kind: RecordKind::Data,
            seq: 0x0102_0304_0506_0708,
            lba: 42,
            block_count: 3,
            block_shift: 12,
            key_id: KeyId([9; 16]),
            moved: false,
        },
        table_crc32c: 0xdead_beef,
    }
}

#[test]
fn crc32c_is_castagnoli() {
    assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
}

#[test]
fn segment_header_is_pinned() {
    let golden = header_bytes(
        "4c535653 | 0100 | 0000 | 1f00000000000000 | 00112233445566778899aabbccddeeff
         02000000 | 000000000000000000000000000000000000000000000000 | aa610c4f",
    );
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&golden).unwrap();
    let version = check_segment_header(&file, Path::new("golden.seg"), 0x1f, &VOLUME_ID, 12);
    assert_eq!(version.unwrap(), SegmentVersion::V1);
}

#[test]
fn data_record_header_is_pinned() {
    let header = sample_data_header();
    assert_record_pinned(
        header,
        "4c535652 | 0100 | 01 | 00 | 0807060504030201 | 2a00000000000000
         03000000 | 0c | 000000 | 09090909090909090909090909090909
         efbeadde | 0000000000000000 | 8ff5f814",
    );
    assert_eq!(header.record_bytes(), 64 + 3 * 4 + 3 * 4096);
    // The moved flag is bit 0 of byte 7; nothing else changes but the CRC.
    let mut moved = header;
    moved.header.moved = true;
    assert_record_pinned(
        moved,
        "4c535652 | 0100 | 01 | 01 | 0807060504030201 | 2a00000000000000
         03000000 | 0c | 000000 | 09090909090909090909090909090909
         efbeadde | 0000000000000000 | e506f5dd",
    );
}

#[test]
fn discard_and_write_zeroes_headers_are_pinned() {
    let discard = V1RecordHeader {
        header: RecordHeader {
            kind: RecordKind::Discard,
            seq: 9,
            lba: 100,
            block_count: 8,
            block_shift: 9,
            key_id: KeyId::default(),
            moved: false,
        },
        table_crc32c: 0,
    };
    assert_record_pinned(
        discard,
        "4c535652 | 0100 | 02 | 00 | 0900000000000000 | 6400000000000000
         08000000 | 09 | 000000 | 00000000000000000000000000000000
         00000000 | 0000000000000000 | adb8c7db",
    );
    let mut zeroes = discard;
    zeroes.header.kind = RecordKind::Zeroes;
    assert_record_pinned(
        zeroes,
        "4c535652 | 0100 | 03 | 00 | 0900000000000000 | 6400000000000000
         08000000 | 09 | 000000 | 00000000000000000000000000000000
         00000000 | 0000000000000000 | 040e2ad1",
    );
    assert_eq!(discard.record_bytes(), 64, "no table, no payload");
}

#[test]
fn seal_record_header_is_pinned() {
    let seal = V1RecordHeader {
        header: RecordHeader {
            kind: RecordKind::Seal,
            seq: 0,
            lba: 0,
            block_count: 0,
            block_shift: 12,
            key_id: KeyId::default(),
            moved: false,
        },
        table_crc32c: 0,
    };
    assert_record_pinned(
        seal,
        "4c535652 | 0100 | 04 | 00 | 0000000000000000 | 0000000000000000
         00000000 | 0c | 000000 | 00000000000000000000000000000000
         00000000 | 0000000000000000 | 9b11e9f3",
    );
}

#[test]
fn checksum_table_is_pinned() {
    // Two 512-byte blocks: all zeros, all ones.
    let blocks = [[0u8; 512], [0xff; 512]].concat();
    let table = hex("c0edfc30 | 9792d95b");
    assert_eq!(TableFormat::V1.build(&blocks, 512), table);
    assert_eq!(
        TableFormat::V1.first_corrupt_block(&blocks, 512, &table),
        None
    );
    let mut damaged = blocks.clone();
    damaged[600] ^= 1;
    assert_eq!(
        TableFormat::V1.first_corrupt_block(&damaged, 512, &table),
        Some(1)
    );
}

/// The two extents of the sample, as the body holds them.
const SAMPLE_EXTENTS: &str = "
    0000000000000000 | 0200000000000000 | 0700000000000000
    0300000000000000 | 4000000000000000 | 0000000000000000 | 04000000 | 00000000
    0a00000000000000 | 0300000000000000 | 0800000000000000
    ffffffffffffffff | 0000000000000000 | 0000000000000000 | 00000000 | 00000000";

/// What the version 1 and 2 samples decode to (a head, a key, a data and a
/// zero extent): the data extent's record header at 64 gives its table at
/// 128 and its payload after 4 entries of 4 bytes.
fn sample_checkpoint(encrypted: u64) -> CheckpointData {
    let data = Extent {
        blocks: 2,
        seq: 7,
        location: Location::Data(DataLocation {
            segment_id: 3,
            table_offset: 128,
            payload_offset: 128 + 4 * 4,
            record_lba: 0,
            record_blocks: 4,
            key_index: 0,
        }),
    };
    let zeros = Extent {
        blocks: 3,
        seq: 8,
        location: Location::Zero,
    };
    CheckpointData {
        seq_next: 100,
        segment_id_next: 5,
        heads: vec![HeadPosition {
            segment_id: 4,
            offset: 4096,
            ..HeadPosition::default()
        }],
        keys: vec![KeyId([9; 16])],
        key_encrypted_bytes: vec![encrypted],
        v2_floor: u64::MAX,
        extents: vec![(0, data), (10, zeros)],
        ..CheckpointData::default()
    }
}

#[test]
fn checkpoint_version_2_is_pinned() {
    let golden = hex(&format!(
        "4c535643 | 0200 | 0000 | 00112233445566778899aabbccddeeff
         6400000000000000 | 0500000000000000 | 01000000 | 01000000
         0200000000000000 | 3bb1d041 | 1c752e75
         0400000000000000 | 0010000000000000
         09090909090909090909090909090909 | 0020000000000000
         {SAMPLE_EXTENTS}"
    ));
    let decoded = checkpoint::decode(Path::new("golden.ckpt"), &VOLUME_ID, &golden).unwrap();
    assert_eq!(decoded, sample_checkpoint(8192));
}

#[test]
fn checkpoint_version_1_is_pinned() {
    // Version 1: key table entries are the 16-byte id alone.
    let golden = hex(&format!(
        "4c535643 | 0100 | 0000 | 00112233445566778899aabbccddeeff
         6400000000000000 | 0500000000000000 | 01000000 | 01000000
         0200000000000000 | 122737f0 | 9ea34145
         0400000000000000 | 0010000000000000
         09090909090909090909090909090909
         {SAMPLE_EXTENTS}"
    ));
    let decoded = checkpoint::decode(Path::new("golden.ckpt"), &VOLUME_ID, &golden).unwrap();
    assert_eq!(decoded, sample_checkpoint(0));
}
