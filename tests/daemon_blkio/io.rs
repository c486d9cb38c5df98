//! Writes and reads at many offsets and sizes; flush, discard and
//! write-zeroes.

use super::kit::data::assert_same;
use super::kit::disk::Disk;
use super::kit::rng::Rng;
use super::{KIB, MIB, setup};

/// Request sizes from one sector to the largest request, with odd sector
/// counts, sizes just off a block, and sizes that span many blocks.
const SIZES: [u64; 14] = [
    512,
    1024,
    1536,
    4096,
    4608,
    7680,
    8192,
    12800,
    64 * KIB - 512,
    64 * KIB,
    MIB,
    MIB + 512,
    4 * MIB - 512,
    4 * MIB,
];
/// Offsets within a 4 KiB block, in sectors: aligned, just after, middle, last.
const SECTOR_SHIFTS: [u64; 4] = [0, 1, 3, 7];

/// Writes every size at every sector shift (overlapping earlier writes, and
/// touching both ends of the disk), reading each back at once; then reads
/// the whole disk and random unaligned ranges and compares with the model.
fn writes_read_back_like_the_model(block_bytes: u32) {
    const SIZE_BYTES: u64 = 64 * MIB;
    let setup = setup(SIZE_BYTES, block_bytes, &[]);
    // Logical block 512 on either volume: 512-aligned I/O is what the guest
    // is told it may do, and on a 4 KiB volume it means read-modify-write.
    let mut daemon = setup.serve(&["--block-size", "512"]);
    let mut client = daemon.client(1);
    let mut model = Disk::zeros(SIZE_BYTES);
    let mut rng = Rng(u64::from(block_bytes));
    let mut tag = 0u8;
    for size in SIZES {
        for shift in SECTOR_SHIFTS {
            tag = tag.wrapping_add(1);
            let blocks = (SIZE_BYTES - size) / 4096;
            let offset = match tag % 7 {
                0 => SIZE_BYTES - size, // ends at the last sector
                1 => shift * 512,       // starts near the first
                _ => (rng.below(blocks) * 4096 + shift * 512).min(SIZE_BYTES - size),
            };
            let data = rng.bytes(size as usize);
            client.write(0, offset, &data).unwrap_or_else(|e| {
                panic!("write {size} B at {offset}: {e:?}\n{}", daemon.stderr())
            });
            model.put(offset, &data);
            let back = client.read(0, offset, size as usize).unwrap();
            assert_same(
                &back,
                &data,
                offset,
                &format!("read-back of {size} B at {offset}"),
            );
        }
    }
    model.check(&mut client, "whole disk after all writes");
    for _ in 0..40 {
        let len = (rng.below(2048) + 1) * 512;
        let offset = rng.below((SIZE_BYTES - len) / 512 + 1) * 512;
        let got = client.read(0, offset, len as usize).unwrap();
        assert_same(
            &got,
            model.range(offset, len),
            offset,
            &format!("read {len} B at {offset}"),
        );
    }
    drop(client);
    daemon.stop_cleanly();
}

#[test]
fn writes_of_512_b_to_4_mib_at_sector_offsets_read_back_on_a_4k_block_volume() {
    writes_read_back_like_the_model(4096);
}

#[test]
fn writes_of_512_b_to_4_mib_at_sector_offsets_read_back_on_a_512_b_block_volume() {
    writes_read_back_like_the_model(512);
}

#[test]
fn libblkio_sees_the_capacity_and_the_logical_and_physical_block_sizes() {
    let setup = setup(16 * MIB, 4096, &[]);
    // (served logical block, request-alignment, optimal-io-alignment)
    for (args, logical, physical) in [
        (&[][..], 4096, 4096),
        (&["--block-size", "512"][..], 512, 4096),
    ] {
        let mut daemon = setup.serve(args);
        let client = daemon.client(1);
        assert_eq!(client.capacity(), 16 * MIB);
        assert_eq!(client.get_i32("request-alignment"), logical, "{args:?}");
        assert_eq!(client.get_i32("optimal-io-alignment"), physical, "{args:?}");
        drop(client);
        daemon.stop_cleanly();
    }
}

// --- Flush, discard, write-zeroes -----------------------------------------

#[test]
fn flush_succeeds_and_discarded_and_zeroed_ranges_read_back_as_zeros() {
    const SIZE_BYTES: u64 = 4 * MIB;
    let setup = setup(SIZE_BYTES, 4096, &[]);
    let mut daemon = setup.serve(&["--block-size", "512"]);
    let mut client = daemon.client(1);
    let mut model = Disk::zeros(SIZE_BYTES);
    let data = Rng(2).bytes(SIZE_BYTES as usize);
    client.write(0, 0, &data).unwrap();
    model.put(0, &data);
    client.flush(0).unwrap();

    // Discard is only a hint for partial blocks, so it is asked of whole
    // blocks (the device advertises its block as discard alignment).
    client.discard(0, 64 * KIB, 128 * KIB).unwrap();
    model.zero(64 * KIB, 128 * KIB);
    // Write-zeroes must zero exactly, aligned or not, with or without unmap.
    let zeroes = [
        (512 * KIB, 256 * KIB, true),
        (MIB, 256 * KIB, false),
        (1536 * KIB + 512, 70 * KIB + 1024, true), // partial blocks at both ends
        (2 * MIB + 1536, 37 * KIB, false),
        (3 * MIB + 512, 1024, true),              // inside one block
        (3 * MIB + 4096 * 3 + 3584, 1024, false), // across one block boundary
    ];
    for (offset, len, unmap) in zeroes {
        client
            .write_zeroes(0, offset, len, unmap)
            .unwrap_or_else(|e| panic!("write-zeroes {len} B at {offset}, unmap {unmap}: {e:?}"));
        model.zero(offset, len);
    }
    client.flush(0).unwrap();
    model.check(&mut client, "after discard and write-zeroes");
    drop(client);
    daemon.stop_cleanly();
}
