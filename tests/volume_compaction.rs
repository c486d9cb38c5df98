//! Compaction: crash safety at every step, space given back, snapshots kept.

mod kit;

use std::path::Path;

use lsvblk::store::{CompactOptions, StoreError};
use lsvblk::volume::{Volume, VolumeError, VolumeOptions};

const BLOCK: u32 = 4096;

/// Writes `passes` rounds of tagged data over the first `bytes` of `v`, in
/// `chunk`-sized writes in a scrambled order (so every segment ends up
/// holding a mix of old and new), and returns the final image.
fn overwrite(v: &Volume, bytes: u64, chunk: u64, passes: u8, image: &mut [u8]) {
    let chunks = bytes / chunk;
    for pass in 0..passes {
        for i in 0..chunks {
            // A fixed odd stride visits every chunk once per pass.
            let at = (i * 7 + u64::from(pass) * 3) % chunks * chunk;
            let data =
                kit::data::pattern(chunk as usize, pass.wrapping_mul(37).wrapping_add(i as u8));
            v.write(at, &data).unwrap();
            image[at as usize..][..data.len()].copy_from_slice(&data);
        }
    }
}

fn snapshot_image(dir: &Path, name: &str, bytes: u64) -> Vec<u8> {
    let view = Volume::open_snapshot(
        dir,
        name,
        vec![kit::volume::key(1)],
        &kit::volume::options(BLOCK),
    )
    .unwrap();
    kit::volume::read_all(&view, bytes)
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

fn compact_all(
    v: &Volume,
    crash_after_steps: Option<u64>,
) -> Result<lsvblk::store::CompactReport, VolumeError> {
    let options = CompactOptions {
        live_ratio_max: 0.9,
        rate_bytes_per_s: None,
        stop: None,
        crash_after_steps,
    };
    v.compact(&options, &mut |_| {})
}

#[test]
fn compaction_interrupted_at_every_step_loses_nothing() {
    const BYTES: u64 = 512 * 1024;
    let original = kit::dirs::fast_tempdir();
    let mut image = vec![0u8; BYTES as usize];
    let snapshot_held;
    {
        let v = kit::volume::create(original.path(), BYTES, BLOCK);
        overwrite(&v, BYTES, 16 * 1024, 1, &mut image);
        v.create_snapshot("before").unwrap();
        snapshot_held = image.clone();
        overwrite(&v, BYTES, 8 * 1024, 2, &mut image);
        v.discard(0, 64 * 1024).unwrap();
        image[..64 * 1024].fill(0);
        v.flush().unwrap();
        // Dropped without close: the log is as a crash left it.
    }
    let mut steps = 0;
    loop {
        let work = kit::dirs::fast_tempdir();
        kit::dirs::copy_dir(original.path(), work.path());
        let v = kit::volume::open(work.path(), BLOCK);
        let result = compact_all(&v, Some(steps));
        drop(v); // crash
        let v = kit::volume::open(work.path(), BLOCK);
        assert!(
            kit::volume::read_all(&v, BYTES) == image,
            "image differs after a crash at step {steps}"
        );
        assert!(
            snapshot_image(work.path(), "before", BYTES) == snapshot_held,
            "snapshot differs after a crash at step {steps}"
        );
        // The next compaction finishes the job.
        compact_all(&v, None).unwrap();
        v.close().unwrap();
        let v = kit::volume::open(work.path(), BLOCK);
        assert!(
            kit::volume::read_all(&v, BYTES) == image,
            "image differs after finishing (step {steps})"
        );
        match result {
            Err(VolumeError::Store(StoreError::Interrupted)) => steps += 1,
            Ok(report) => {
                assert!(report.segments_deleted > 0, "nothing was compacted");
                assert!(steps > 5, "too few steps exercised: {steps}");
                break;
            }
            Err(e) => panic!("compaction failed at step {steps}: {e}"),
        }
    }
}

#[test]
fn deleting_a_snapshot_lets_compaction_free_its_blocks() {
    const BYTES: u64 = 1 << 20;
    let dir = kit::dirs::fast_tempdir();
    let v = kit::volume::create(dir.path(), BYTES, BLOCK);
    let mut image = vec![0u8; BYTES as usize];
    overwrite(&v, BYTES, 64 * 1024, 1, &mut image);
    v.create_snapshot("old").unwrap();
    overwrite(&v, BYTES, 64 * 1024, 1, &mut image);
    compact_all(&v, None).unwrap();
    let kept = v.space().unwrap();
    assert!(
        kept.file_bytes > 2 * BYTES,
        "the snapshot's blocks must be kept: {} B",
        kept.file_bytes
    );
    v.delete_snapshot("old").unwrap();
    compact_all(&v, None).unwrap();
    let freed = v.space().unwrap();
    assert!(
        freed.file_bytes < kept.file_bytes - BYTES / 2,
        "deleting the snapshot freed nothing: {} B -> {} B",
        kept.file_bytes,
        freed.file_bytes
    );
    assert!(kit::volume::read_all(&v, BYTES) == image);
}

/// The space target: a 1 GiB volume overwritten 3 times and
/// compacted uses ≤ 1.3× its live data; with one snapshot kept, ≤ 2.3×.
#[test]
fn compacted_volume_space_stays_within_bounds() {
    const GIB: u64 = 1 << 30;
    for keep_snapshot in [false, true] {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let options = VolumeOptions {
            segment_bytes: 64 << 20,
            ..kit::volume::options(BLOCK)
        };
        let v = Volume::create(dir.path(), GIB, kit::volume::key(1), &options).unwrap();
        let mut image = vec![0u8; GIB as usize];
        overwrite(&v, GIB, 4 << 20, 1, &mut image);
        if keep_snapshot {
            v.create_snapshot("kept").unwrap();
        }
        overwrite(&v, GIB, 4 << 20, 3, &mut image);
        compact_all(&v, None).unwrap();
        v.close().unwrap();
        let used = dir_bytes(dir.path());
        let ratio = used as f64 / GIB as f64;
        let bound = if keep_snapshot { 2.3 } else { 1.3 };
        eprintln!("snapshot kept: {keep_snapshot}: {used} B = {ratio:.3} x live (bound {bound})");
        assert!(ratio <= bound, "{ratio:.3} x live > {bound}");
        let v = Volume::open(dir.path(), kit::volume::key(1), &options).unwrap();
        assert!(
            kit::volume::read_all(&v, GIB) == image,
            "data differs after compaction"
        );
    }
}
