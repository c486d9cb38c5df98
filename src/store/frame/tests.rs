use super::*;
use crate::crypto::KeyId;

fn data_header(lba: u64, blocks: u32) -> RecordHeader {
    RecordHeader {
        kind: RecordKind::Data,
        seq: 0x0102_0304_0506_0708,
        lba,
        block_count: blocks,
        block_shift: 12,
        key_id: KeyId([9; 16]),
        moved: true,
    }
}

#[test]
fn frame_header_is_pinned_to_its_documented_bytes() {
    let header = FrameHeader {
        record_count: 2,
        segment_id: 0x0a0b,
        frame_offset: 8192,
        frame_bytes: 12288,
        meta_bytes: 208,
        payload_area: 4096,
        meta_crc32c: 0x1122_3344,
    };
    let bytes = header.encode();
    let golden = "4c535646020002000b0a000000000000002000000000000000300000d0000000\
                  0010000000000000000000000000000000000000000000004433221100000000";
    assert_eq!(hex::encode(&bytes[..60]), &golden[..120]);
    assert_eq!(bytes[60..], crc32c::crc32c(&bytes[..60]).to_le_bytes());
    assert_eq!(FrameHeader::check(&bytes, 0x0a0b, 8192), Ok(header));
    assert!(
        FrameHeader::check(&bytes, 0x0a0c, 8192).is_err(),
        "other segment"
    );
    assert!(
        FrameHeader::check(&bytes, 0x0a0b, 4096).is_err(),
        "other offset"
    );
}

#[test]
fn record_header_and_seal_body_are_pinned_to_their_documented_bytes() {
    let record = V2RecordHeader {
        header: data_header(42, 1),
        payload_offset: 4096,
        table_offset: 192,
        mac: [0x4d; 16],
    };
    let golden = "01010c000100000008070605040302012a000000000000000909090909090909\
                  090909090909090900100000c00000004d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d";
    assert_eq!(hex::encode(record.encode()), golden);
    assert_eq!(V2RecordHeader::decode(&record.encode()), Ok(record));
    let body = SealBody {
        previous_seal_mac: [0x50; 16],
        previous_sealed_segment: Some(7),
        last_record_mac: [0x4c; 16],
        records: 3,
    };
    let golden = "5050505050505050505050505050505007000000000000004c4c4c4c4c4c4c4c\
                  4c4c4c4c4c4c4c4c030000000000000000000000000000000000000000000000";
    assert_eq!(hex::encode(body.encode()), golden);
    assert_eq!(SealBody::decode(&body.encode()), Ok(body));
    let first = SealBody {
        previous_sealed_segment: None,
        ..body
    };
    assert_eq!(&first.encode()[16..24], &[0xff; 8]);
    assert_eq!(SealBody::decode(&first.encode()), Ok(first));
}

#[test]
fn a_frame_is_laid_out_canonically_and_parses_back() {
    let payload_a = vec![0xa5u8; 2 * 4096];
    let payload_b = vec![0x5au8; 4096];
    let table_a = TableFormat::V2.build(&payload_a, 4096);
    let table_b = TableFormat::V2.build(&payload_b, 4096);
    let zeroes = RecordHeader {
        kind: RecordKind::Zeroes,
        moved: false,
        key_id: KeyId::default(),
        ..data_header(100, 8)
    };
    let records = [
        FrameRecord {
            header: data_header(0, 2),
            table: &table_a,
            payload: &payload_a,
            mac: [1; 16],
        },
        FrameRecord {
            header: zeroes,
            table: &[],
            payload: &[],
            mac: [2; 16],
        },
        FrameRecord {
            header: data_header(9, 1),
            table: &table_b,
            payload: &payload_b,
            mac: [3; 16],
        },
    ];
    let built = build_meta(5, 4096, 12, &records);
    let layout = &built.layout;
    assert_eq!(layout.meta_bytes, 64 + 3 * 64 + 3 * 16);
    assert_eq!(layout.payload_area, 4096);
    assert_eq!(layout.frame_bytes, 4096 + 3 * 4096);
    assert_eq!(layout.slots[0].table, 256..288);
    assert_eq!(layout.slots[0].payload, 4096..12288);
    assert_eq!(layout.slots[1].table, 0..0);
    assert_eq!(layout.slots[1].payload, 0..0);
    assert_eq!(layout.slots[2].table, 288..304);
    assert_eq!(layout.slots[2].payload, 12288..16384);
    assert_eq!(built.meta.padded().len(), 4096);
    let header = FrameHeader::check(&built.meta, 5, 4096).unwrap();
    let parsed = parse_meta(header, built.meta[..layout.meta_bytes].to_vec()).unwrap();
    assert_eq!(parsed.records.len(), 3);
    assert_eq!(parsed.records[1].header, zeroes);
    assert_eq!(parsed.records[2].mac, [3; 16]);
    assert_eq!(parsed.table(2), &table_b[..]);
    // Any flipped bit of the meta bytes is caught by a CRC.
    for bit in 0..layout.meta_bytes * 8 {
        let mut damaged = built.meta[..layout.meta_bytes].to_vec();
        damaged[bit / 8] ^= 1 << (bit % 8);
        let parsed = FrameHeader::check(&damaged, 5, 4096).and_then(|h| parse_meta(h, damaged));
        assert!(parsed.is_err(), "bit {bit}");
    }
}
