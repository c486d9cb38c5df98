//! Several batches through one log head at once, as a queue's jobs in
//! flight are in direct mode (each seals its records before it takes the
//! head, so sequence numbers need not follow file order): racing writes to
//! the same blocks leave each block with one whole write, and a reopen
//! (replay) finds exactly what the index held, in both I/O modes.

mod kit;

use std::sync::atomic::{AtomicU64, Ordering};

use kit::volume::{key, options, read_all};
use lsvblk::store::{AlignedBuf, HeadId, IoMode};
use lsvblk::volume::{Change, Volume, VolumeOptions};

const SIZE: u64 = 1 << 20;
const WRITE: usize = 16 << 10;
const THREADS: u64 = 4;
const BATCHES: u64 = 40;

fn volume_options(io: IoMode) -> VolumeOptions {
    VolumeOptions {
        io,
        // Small segments: appends roll over to the next one mid-run.
        segment_bytes: 256 << 10,
        heads: 1,
        ..options(4096)
    }
}

/// 16 KiB whose every 4 KiB block says which write it belongs to.
fn stamped(write: u64) -> AlignedBuf {
    let mut data = AlignedBuf::zeroed(WRITE);
    for block in data.chunks_mut(4096) {
        for word in block.chunks_mut(8) {
            word.copy_from_slice(&write.to_le_bytes());
        }
    }
    data
}

/// The write that block `block` of `all` holds (0: never written), after
/// checking every 8 bytes of it say the same.
fn stamp_of(all: &[u8], block: usize) -> u64 {
    let bytes = &all[block * 4096..(block + 1) * 4096];
    let first = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert!(
        bytes
            .chunks(8)
            .all(|w| u64::from_le_bytes(w.try_into().unwrap()) == first),
        "block {block} mixes writes"
    );
    first
}

fn racing_writes_through_one_head(io: IoMode) {
    let dir = tempfile::tempdir().unwrap();
    let volume = Volume::create(dir.path(), SIZE, key(1), &volume_options(io)).unwrap();
    let next = AtomicU64::new(1);
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (volume, next) = (&volume, &next);
            scope.spawn(move || {
                for batch in 0..BATCHES {
                    // Two writes per batch, over a quarter of the volume
                    // every thread shares: the same blocks race.
                    let changes = (0..2)
                        .map(|i| {
                            let slot = (thread * 7 + batch * 3 + i * 5) % 16;
                            Change::Write {
                                offset: slot * WRITE as u64,
                                data: stamped(next.fetch_add(1, Ordering::Relaxed)),
                            }
                        })
                        .collect();
                    volume.write_batch(HeadId(0), changes).unwrap();
                }
            });
        }
    });
    let before = read_all(&volume, SIZE);
    let written = next.load(Ordering::Relaxed);
    for block in 0..(SIZE / 4096) as usize {
        let stamp = stamp_of(&before, block);
        assert!(stamp < written, "block {block} holds {stamp}");
        assert_eq!(stamp == 0, block >= 64, "block {block}");
    }
    // No flush, no close: the reopen replays the open segments.
    drop(volume);
    let volume = Volume::open(dir.path(), key(1), &volume_options(io)).unwrap();
    assert!(
        read_all(&volume, SIZE) == before,
        "replay differs from the index"
    );
}

#[test]
fn racing_writes_through_one_head_replay_as_indexed_direct() {
    racing_writes_through_one_head(IoMode::Direct);
}

#[test]
fn racing_writes_through_one_head_replay_as_indexed_buffered() {
    racing_writes_through_one_head(IoMode::Buffered);
}
