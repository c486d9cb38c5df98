//! Key rotation inside a volume: thresholds with a moved clock, exact
//! per-key byte accounting, the re-encryptor, forgetting the old key, and
//! crash safety at every step of a rotation.

mod kit;

use std::path::Path;
use std::sync::Arc;

use lsvblk::crypto::{DataKey, KeyId};
use lsvblk::store::{CompactOptions, StoreError};
use lsvblk::volume::{
    KeyPolicy, ManualClock, RotationReason, Volume, VolumeError, VolumeLock, VolumeOptions,
};

const BLOCK: u32 = 4096;
const BYTES: u64 = 1 << 20;
const DAY: u64 = 24 * 3600;

fn options(clock: &Arc<ManualClock>) -> VolumeOptions {
    VolumeOptions {
        clock: Some(Arc::clone(clock) as Arc<dyn lsvblk::volume::Clock>),
        ..kit::volume::options(BLOCK)
    }
}

fn open_with(dir: &Path, keys: Vec<DataKey>, clock: &Arc<ManualClock>) -> Volume {
    let lock = VolumeLock::acquire(dir, false).unwrap();
    Volume::open_locked(dir, lock, keys, &options(clock)).unwrap()
}

/// Writes tagged 64 KiB pieces over the volume `passes` times.
fn fill(v: &Volume, image: &mut [u8], passes: u8) {
    for pass in 0..passes {
        for i in 0..(BYTES / 65536) {
            let data = kit::data::pattern(65536, pass.wrapping_mul(29).wrapping_add(i as u8));
            let at = ((i * 5 + u64::from(pass)) % (BYTES / 65536)) * 65536;
            v.write(at, &data).unwrap();
            image[at as usize..][..data.len()].copy_from_slice(&data);
        }
    }
}

fn read_all(v: &Volume) -> Vec<u8> {
    let mut all = vec![0u8; BYTES as usize];
    v.read(0, &mut all).unwrap();
    all
}

/// Key ids of every data record in every segment file of the volume.
fn keys_on_disk(v: &Volume, dir: &Path) -> Vec<KeyId> {
    let mut keys = Vec::new();
    for path in kit::volume::segment_files(dir) {
        let name = path.file_stem().unwrap().to_str().unwrap();
        let id = u64::from_str_radix(name, 16).unwrap();
        keys.extend(v.log().segment_keys(id).unwrap());
    }
    keys
}

fn rotate(v: &Volume, new_key: DataKey, reason: RotationReason) -> lsvblk::volume::RotationOutcome {
    let entry = kit::volume::entry_for(&new_key);
    v.start_rotation(new_key, entry, reason).unwrap();
    v.continue_rotation(&CompactOptions::default(), &mut |_| {})
        .unwrap()
        .expect("a rotation was in progress")
}

/// A fresh volume of `BYTES` under key 1, the clock it reads, and the
/// image of what it holds after `passes` passes of [`fill`].
fn filled(passes: u8) -> (tempfile::TempDir, Arc<ManualClock>, Volume, Vec<u8>) {
    let dir = kit::dirs::fast_tempdir();
    let clock = ManualClock::new(1_000_000);
    let v = Volume::create(dir.path(), BYTES, kit::volume::key(1), &options(&clock)).unwrap();
    let mut image = vec![0u8; BYTES as usize];
    fill(&v, &mut image, passes);
    (dir, clock, v, image)
}

/// Takes snapshot `name` and writes its index at once.
fn snapshot(v: &Volume, name: &str) {
    v.create_snapshot(name).unwrap();
    v.materialize_snapshots().unwrap();
}

/// Snapshot `name` of the volume in `dir`, opened with `key` alone.
fn open_view(dir: &Path, name: &str, key: DataKey) -> Volume {
    Volume::open_snapshot(dir, name, vec![key], &kit::volume::options(BLOCK)).unwrap()
}

/// Compacts every segment, however live.
fn compact_all(v: &Volume) -> lsvblk::store::CompactReport {
    let options = CompactOptions {
        live_ratio_max: 1.0,
        ..CompactOptions::default()
    };
    v.compact(&options, &mut |_| {}).unwrap()
}

#[test]
fn rotation_reencrypts_every_block_and_forgets_the_old_key() {
    let (dir, clock, v, image) = filled(3);
    let old = kit::volume::key(1).id();
    assert!(keys_on_disk(&v, dir.path()).contains(&old));
    let outcome = rotate(&v, kit::volume::key(2), RotationReason::Manual);
    assert_eq!(outcome.forgotten, vec![old]);
    assert_eq!(outcome.destroyable, vec![old]);
    assert!(outcome.bytes_rekeyed >= BYTES, "{outcome:?}");
    assert_eq!(v.current_key_id(), Some(kit::volume::key(2).id()));
    assert!(read_all(&v) == image);
    assert!(
        !keys_on_disk(&v, dir.path()).contains(&old),
        "a record under the old key is still on disk"
    );
    let superblock = v.superblock_now().unwrap();
    assert!(superblock.keys.iter().all(|k| k.key_id != old));
    assert!(superblock.rotation.is_none());
    v.close().unwrap();
    // The new key alone opens it now.
    let v = open_with(dir.path(), vec![kit::volume::key(2)], &clock);
    assert!(read_all(&v) == image);
}

#[test]
fn a_snapshot_keeps_the_old_key_until_it_is_deleted() {
    let (dir, _clock, v, mut image) = filled(1);
    snapshot(&v, "kept");
    let held = image.clone();
    fill(&v, &mut image, 1);
    let old = kit::volume::key(1).id();
    let outcome = rotate(&v, kit::volume::key(2), RotationReason::Manual);
    assert_eq!(outcome.kept_for_snapshots, vec![old]);
    assert!(outcome.destroyable.is_empty());
    assert!(read_all(&v) == image);
    let view = open_view(dir.path(), "kept", kit::volume::key(1));
    assert!(read_all(&view) == held, "the snapshot changed");
    drop(view);
    assert_eq!(v.delete_snapshot("kept").unwrap(), vec![old]);
    compact_all(&v);
    assert!(!keys_on_disk(&v, dir.path()).contains(&old));
    assert!(read_all(&v) == image);
}

#[test]
fn blocks_a_snapshot_shares_with_the_volume_are_rekeyed_for_the_volume() {
    let (dir, clock, v, image) = filled(1);
    snapshot(&v, "shares");
    // No overwrite: every live block is in segments the snapshot pins.
    let old = kit::volume::key(1).id();
    let outcome = rotate(&v, kit::volume::key(2), RotationReason::Manual);
    assert_eq!(outcome.kept_for_snapshots, vec![old], "{outcome:?}");
    assert!(outcome.bytes_rekeyed >= BYTES, "{outcome:?}");
    assert!(
        v.rotation().unwrap().is_none(),
        "the rotation did not finish"
    );
    let usage = v.key_status().unwrap();
    assert!(usage.iter().all(|k| k.key_id != old), "{usage:?}");
    assert!(read_all(&v) == image);
    v.close().unwrap();
    let v = open_with(dir.path(), vec![kit::volume::key(2)], &clock);
    assert!(read_all(&v) == image, "the volume needs the old key still");
    let view = open_view(dir.path(), "shares", kit::volume::key(1));
    assert!(read_all(&view) == image, "the snapshot changed");
}

#[test]
fn include_snapshots_rekeys_a_kept_snapshot_so_the_old_key_can_go() {
    let (dir, clock, v, mut image) = filled(1);
    snapshot(&v, "kept");
    let held = image.clone();
    // Half the blocks change after the snapshot; the rest it shares.
    for i in 0..(BYTES / 65536 / 2) {
        let data = kit::data::pattern(65536, 200 + i as u8);
        v.write(i * 65536, &data).unwrap();
        image[(i * 65536) as usize..][..data.len()].copy_from_slice(&data);
    }
    let old = kit::volume::key(1).id();
    let key = kit::volume::key(2);
    let entry = kit::volume::entry_for(&key);
    v.start_rotation_with(key, entry, RotationReason::Manual, true)
        .unwrap();
    let outcome = v
        .continue_rotation(&CompactOptions::default(), &mut |_| {})
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome.snapshots_rekeyed,
        vec!["kept".to_string()],
        "{outcome:?}"
    );
    assert_eq!(outcome.destroyable, vec![old], "{outcome:?}");
    assert!(outcome.kept_for_snapshots.is_empty(), "{outcome:?}");
    let meta = lsvblk::volume::load_snapshot(dir.path(), "kept").unwrap();
    assert!(meta.keys.iter().all(|k| k.key_id != old), "{meta:?}");
    // The snapshot reads with the new key alone, exactly as it was.
    let view = open_view(dir.path(), "kept", kit::volume::key(2));
    assert!(read_all(&view) == held, "the snapshot changed");
    drop(view);
    compact_all(&v);
    assert!(
        !keys_on_disk(&v, dir.path()).contains(&old),
        "a record under the old key is still on disk"
    );
    assert!(read_all(&v) == image);
    v.close().unwrap();
    let v = open_with(dir.path(), vec![kit::volume::key(2)], &clock);
    assert!(read_all(&v) == image);
    let view = open_view(dir.path(), "kept", kit::volume::key(2));
    assert!(
        read_all(&view) == held,
        "the snapshot changed after a reopen"
    );
}

#[test]
fn encrypted_bytes_are_counted_exactly_across_crashes_and_moves() {
    let (dir, clock, v, mut image) = filled(2);
    let key = kit::volume::key(1).id();
    let encrypted = |v: &Volume| {
        v.key_status()
            .unwrap()
            .into_iter()
            .find(|k| k.key_id == key)
            .unwrap()
            .usage
    };
    assert_eq!(encrypted(&v).encrypted_bytes, 2 * BYTES);
    assert_eq!(encrypted(&v).live_bytes, BYTES);
    v.flush().unwrap();
    v.log().checkpoint().unwrap();
    fill(&v, &mut image, 1);
    drop(v); // crash: the last pass is replayed, not checkpointed
    let v = open_with(dir.path(), vec![kit::volume::key(1)], &clock);
    assert_eq!(encrypted(&v).encrypted_bytes, 3 * BYTES);
    let report = compact_all(&v);
    assert!(report.bytes_moved > 0);
    assert_eq!(
        encrypted(&v).encrypted_bytes,
        3 * BYTES,
        "moves are not encryptions"
    );
    drop(v);
    let v = open_with(dir.path(), vec![kit::volume::key(1)], &clock);
    assert_eq!(encrypted(&v).encrypted_bytes, 3 * BYTES);
    assert!(read_all(&v) == image);
}

#[test]
fn each_threshold_and_retirement_makes_a_rotation_due() {
    let (_dir, clock, v, mut image) = filled(0);
    assert_eq!(v.rotation_due().unwrap(), None);

    // Live bytes: more than 512 KiB under the key now.
    v.set_key_policy(&KeyPolicy {
        rotate_live_bytes: BYTES / 2,
        ..KeyPolicy::default()
    })
    .unwrap();
    fill(&v, &mut image, 1);
    assert_eq!(v.rotation_due().unwrap(), Some(RotationReason::LiveBytes));
    rotate(&v, kit::volume::key(2), RotationReason::LiveBytes);

    // Cumulative: the live data fits, but 2 MiB were ever encrypted.
    v.set_key_policy(&KeyPolicy {
        rotate_live_bytes: 4 * BYTES,
        rotate_encrypted_bytes: 3 * BYTES,
        ..KeyPolicy::default()
    })
    .unwrap();
    // The re-encryption counted 1 MiB under key 2 already.
    fill(&v, &mut image, 2);
    assert_eq!(v.rotation_due().unwrap(), None);
    fill(&v, &mut image, 1);
    assert_eq!(
        v.rotation_due().unwrap(),
        Some(RotationReason::EncryptedBytes)
    );
    rotate(&v, kit::volume::key(3), RotationReason::EncryptedBytes);

    // Age: 90 days by default.
    v.set_key_policy(&KeyPolicy::default()).unwrap();
    clock.advance(89 * DAY);
    assert_eq!(v.rotation_due().unwrap(), None);
    clock.advance(2 * DAY);
    assert_eq!(v.rotation_due().unwrap(), Some(RotationReason::Age));

    // Retirement at 120 days, whatever the rotation age says.
    v.set_key_policy(&KeyPolicy {
        rotate_age_s: 10_000 * DAY,
        ..KeyPolicy::default()
    })
    .unwrap();
    assert_eq!(v.rotation_due().unwrap(), None);
    clock.advance(29 * DAY);
    assert_eq!(v.rotation_due().unwrap(), Some(RotationReason::Retirement));
    rotate(&v, kit::volume::key(4), RotationReason::Retirement);
    assert_eq!(v.rotation_due().unwrap(), None);
    assert!(read_all(&v) == image);
}

#[test]
fn a_rotation_interrupted_at_every_step_resumes_and_loses_nothing() {
    let original = kit::dirs::fast_tempdir();
    let clock = ManualClock::new(1_000_000);
    let mut image = vec![0u8; BYTES as usize];
    {
        let v = Volume::create(
            original.path(),
            BYTES,
            kit::volume::key(1),
            &options(&clock),
        )
        .unwrap();
        fill(&v, &mut image, 2);
        v.flush().unwrap();
    }
    let old = kit::volume::key(1).id();
    let mut steps = 0;
    loop {
        let work = kit::dirs::fast_tempdir();
        kit::dirs::copy_dir(original.path(), work.path());
        let v = open_with(work.path(), vec![kit::volume::key(1)], &clock);
        let key = kit::volume::key(2);
        let entry = kit::volume::entry_for(&key);
        v.start_rotation(key, entry, RotationReason::Manual)
            .unwrap();
        let options = CompactOptions {
            crash_after_steps: Some(steps),
            ..CompactOptions::default()
        };
        let result = v.continue_rotation(&options, &mut |_| {});
        drop(v); // crash
        // The superblock names both keys while the rotation runs.
        let v = open_with(
            work.path(),
            vec![kit::volume::key(1), kit::volume::key(2)],
            &clock,
        );
        assert!(
            read_all(&v) == image,
            "data differs after a crash at step {steps}"
        );
        let finished = v
            .continue_rotation(&CompactOptions::default(), &mut |_| {})
            .unwrap();
        assert!(
            read_all(&v) == image,
            "data differs after resuming (step {steps})"
        );
        assert!(!keys_on_disk(&v, work.path()).contains(&old));
        match result {
            Err(VolumeError::Store(StoreError::Interrupted)) => {
                assert!(finished.is_some(), "the rotation was lost at step {steps}");
                steps += 1;
            }
            Ok(_) => {
                assert!(steps > 5, "too few steps: {steps}");
                break;
            }
            Err(e) => panic!("rotation failed at step {steps}: {e}"),
        }
    }
}

/// A snapshot whose index was not written yet when a rotation began (or
/// when the daemon died right after one began) must still open: its index
/// is signed under a key the snapshot holds, not the rotation's new key.
/// Both an empty snapshot (no block to take a key from) and one with data.
#[test]
fn a_snapshot_taken_before_a_rotation_opens_after_it() {
    for passes in [0u8, 1] {
        for crash in [false, true] {
            let (dir, clock, v, image) = filled(passes);
            v.create_snapshot("before").unwrap(); // index not written yet
            let key = kit::volume::key(2);
            let entry = kit::volume::entry_for(&key);
            v.start_rotation(key, entry, RotationReason::Manual)
                .unwrap();
            let v = if crash {
                drop(v);
                open_with(
                    dir.path(),
                    vec![kit::volume::key(1), kit::volume::key(2)],
                    &clock,
                )
            } else {
                v
            };
            v.continue_rotation(&CompactOptions::default(), &mut |_| {})
                .unwrap();
            let view = Volume::open_snapshot(
                dir.path(),
                "before",
                vec![kit::volume::key(1), kit::volume::key(2)],
                &kit::volume::options(BLOCK),
            )
            .unwrap_or_else(|e| panic!("passes {passes}, crash {crash}: {e}"));
            assert!(read_all(&view) == image, "passes {passes}, crash {crash}");
        }
    }
}
