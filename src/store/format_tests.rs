//! Golden tests: every on-disk header pinned to the bytes `docs/format.md`
//! shows, both ways (encoding gives exactly these bytes; these bytes decode
//! to exactly these fields), so that an accidental change of the layout
//! fails here before it reaches a disk. The literals are laid out like the
//! tables of `docs/format.md`: one field per group of hex digits.

use std::path::Path;

use super::checkpoint::{self, CheckpointData, sample_checkpoint};
use super::record::{
    RecordHeader, RecordKind, UncheckedRecordHeader, block_checksums, first_corrupt_block,
    sample_data_header,
};
use super::segment::SegmentHeader;
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
fn assert_record_pinned(header: RecordHeader, golden: &str) {
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

#[test]
fn crc32c_is_castagnoli() {
    assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
}

#[test]
fn segment_header_is_pinned() {
    let header = SegmentHeader {
        id: 0x1f,
        volume_id: VOLUME_ID,
        head: 2,
    };
    let golden = header_bytes(
        "4c535653 | 0100 | 0000 | 1f00000000000000 | 00112233445566778899aabbccddeeff
         02000000 | 000000000000000000000000000000000000000000000000 | aa610c4f",
    );
    assert_eq!(hex::encode(header.encode()), hex::encode(golden));
    assert_eq!(SegmentHeader::decode(&golden), Ok(header));
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
    assert_record_pinned(
        RecordHeader {
            moved: true,
            ..header
        },
        "4c535652 | 0100 | 01 | 01 | 0807060504030201 | 2a00000000000000
         03000000 | 0c | 000000 | 09090909090909090909090909090909
         efbeadde | 0000000000000000 | e506f5dd",
    );
}

#[test]
fn discard_and_write_zeroes_headers_are_pinned() {
    let discard = RecordHeader {
        kind: RecordKind::Discard,
        seq: 9,
        lba: 100,
        block_count: 8,
        block_shift: 9,
        key_id: KeyId::default(),
        table_crc32c: 0,
        moved: false,
    };
    assert_record_pinned(
        discard,
        "4c535652 | 0100 | 02 | 00 | 0900000000000000 | 6400000000000000
         08000000 | 09 | 000000 | 00000000000000000000000000000000
         00000000 | 0000000000000000 | adb8c7db",
    );
    assert_record_pinned(
        RecordHeader {
            kind: RecordKind::Zeroes,
            ..discard
        },
        "4c535652 | 0100 | 03 | 00 | 0900000000000000 | 6400000000000000
         08000000 | 09 | 000000 | 00000000000000000000000000000000
         00000000 | 0000000000000000 | 040e2ad1",
    );
    assert_eq!(discard.record_bytes(), 64, "no table, no payload");
}

#[test]
fn seal_record_header_is_pinned() {
    let seal = RecordHeader {
        kind: RecordKind::Seal,
        seq: 0,
        lba: 0,
        block_count: 0,
        block_shift: 12,
        key_id: KeyId::default(),
        table_crc32c: 0,
        moved: false,
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
    assert_eq!(block_checksums(&blocks, 512), table);
    assert_eq!(first_corrupt_block(&blocks, 512, &table), None);
    let mut damaged = blocks.clone();
    damaged[600] ^= 1;
    assert_eq!(first_corrupt_block(&damaged, 512, &table), Some(1));
}

/// The two extents of the sample, as the body holds them.
const SAMPLE_EXTENTS: &str = "
    0000000000000000 | 0200000000000000 | 0700000000000000
    0300000000000000 | 4000000000000000 | 0000000000000000 | 04000000 | 00000000
    0a00000000000000 | 0300000000000000 | 0800000000000000
    ffffffffffffffff | 0000000000000000 | 0000000000000000 | 00000000 | 00000000";

#[test]
fn checkpoint_is_pinned() {
    let data = sample_checkpoint();
    let golden = hex(&format!(
        "4c535643 | 0200 | 0000 | 00112233445566778899aabbccddeeff
         6400000000000000 | 0500000000000000 | 01000000 | 01000000
         0200000000000000 | 3bb1d041 | 1c752e75
         0400000000000000 | 0010000000000000
         09090909090909090909090909090909 | 0020000000000000
         {SAMPLE_EXTENTS}"
    ));
    assert_eq!(
        hex::encode(checkpoint::encode(&VOLUME_ID, &data)),
        hex::encode(&golden)
    );
    let decoded = checkpoint::decode(Path::new("golden.ckpt"), &VOLUME_ID, &golden).unwrap();
    assert_eq!(decoded, data);
}

#[test]
fn checkpoint_version_1_is_still_read() {
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
    assert_eq!(
        decoded,
        CheckpointData {
            key_encrypted_bytes: vec![0],
            ..sample_checkpoint()
        }
    );
}
