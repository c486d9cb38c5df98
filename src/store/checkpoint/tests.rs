use std::path::Path;

use super::*;
use crate::store::index::{DataLocation, Location};

fn sample() -> CheckpointData {
    CheckpointData {
        seq_next: 77,
        segment_id_next: 3,
        heads: vec![HeadPosition {
            segment_id: 2,
            offset: 8192,
            records: 5,
            last_mac: [0x4d; 16],
        }],
        keys: vec![KeyId([5; 16])],
        key_encrypted_bytes: vec![12288],
        sealed: vec![SealedSegment {
            segment_id: 1,
            seal_offset: 40960,
            seal_mac: [0x53; 16],
            version: SegmentVersion::V2,
        }],
        last_seal: Some(SealRef {
            segment_id: 1,
            mac: [0x53; 16],
        }),
        v2_floor: 1,
        macs: true,
        mac_floor: 2,
        mac_key_id: KeyId([5; 16]),
        previous_mac: [0x50; 16],
        mac: [0x43; 16],
        extents: vec![
            (
                0,
                Extent {
                    blocks: 2,
                    seq: 4,
                    location: Location::Zero,
                },
            ),
            (
                8,
                Extent {
                    blocks: 3,
                    seq: 9,
                    location: Location::Data(DataLocation {
                        segment_id: 1,
                        table_offset: 4096 + 192,
                        payload_offset: 8192,
                        record_lba: 7,
                        record_blocks: 5,
                        key_index: 0,
                    }),
                },
            ),
        ],
    }
}

#[test]
fn round_trips() {
    let id = [1u8; 16];
    let bytes = encode(&id, &sample());
    assert_eq!(bytes.len(), 160 + 40 + 24 + 40 + 2 * 64 + 16);
    assert_eq!(decode(Path::new("x"), &id, &bytes).unwrap(), sample());
}

#[test]
fn v3_header_is_pinned_to_its_documented_bytes() {
    let bytes = encode(&[1u8; 16], &sample());
    let golden = "4c53564303000100010101010101010101010101010101014d00000000000000\
                  0300000000000000010000000100000001000000000000000200000000000000\
                  0100000000000000010000000000000053535353535353535353535353535353\
                  0505050505050505050505050505050550505050505050505050505050505050\
                  020000000000000000000000000000000000000000000000";
    assert_eq!(hex::encode(&bytes[..152]), golden);
    assert_eq!(bytes[152..156], crc32c::crc32c(&bytes[160..]).to_le_bytes());
    assert_eq!(bytes[156..160], crc32c::crc32c(&bytes[..156]).to_le_bytes());
    // The second extent, and the trailer.
    let extent = &bytes[bytes.len() - 16 - 64..bytes.len() - 16];
    let golden_extent = "0800000000000000030000000000000009000000000000000100000000000000\
                         c010000000000000002000000000000007000000000000000500000000000000";
    assert_eq!(hex::encode(extent), golden_extent);
    assert_eq!(bytes[bytes.len() - 16..], [0x43; 16]);
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
