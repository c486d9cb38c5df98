//! The hand-over prepared early (a migration stopped the device): it lets go
//! of the volume without a second checkpoint when nothing was written since,
//! and closes in full when something was.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Served;
use crate::crypto::{CryptoPool, DataKey, KeyKind};
use crate::sync::LockOrRecover;
use crate::volume::{Volume, VolumeOptions};

fn key() -> DataKey {
    let material: Vec<u8> = (0..64u8).collect();
    DataKey::from_bytes(KeyKind::Aes256Xts, &material).unwrap()
}

fn options() -> VolumeOptions {
    VolumeOptions {
        pool: Some(Arc::new(CryptoPool::new(1, 64 * 1024).unwrap())),
        ..VolumeOptions::default()
    }
}

/// The checkpoint files of the volume in `dir`, sorted: name and inode (a
/// checkpoint written again under the same name is a new file).
fn checkpoints(dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, entry.metadata().unwrap().ino())
        })
        .collect();
    files.sort();
    files
}

/// A served volume with 8 blocks written since its last checkpoint.
fn served(dir: &Path) -> Arc<Served> {
    let volume = Volume::create(dir, 1 << 20, key(), &options()).unwrap();
    for block in 0..8u8 {
        volume
            .write(u64::from(block) * 4096, &[block + 1; 4096])
            .unwrap();
    }
    Arc::new(Served::open(Arc::new(volume)))
}

/// Prepares the hand-over of `served` (the volume in `dir`) and waits for
/// it; returns the checkpoint files it left.
fn prepare(served: &Arc<Served>, dir: &Path) -> Vec<(String, u64)> {
    served.prepare_hand_over();
    let deadline = Instant::now() + Duration::from_secs(10);
    while served.prepared_at.lock_or_recover().is_none() {
        assert!(Instant::now() < deadline, "the preparation did not finish");
        std::thread::sleep(Duration::from_millis(1));
    }
    checkpoints(dir)
}

fn reopened_block(dir: &Path, block: u64) -> (Vec<u8>, usize) {
    let volume = Volume::open(dir, key(), &options()).unwrap();
    let mut buf = vec![0u8; 4096];
    volume.read(block * 4096, &mut buf).unwrap();
    (buf, volume.recovery_report().records_replayed)
}

#[test]
fn a_prepared_hand_over_only_lets_go_and_the_next_open_replays_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let served = served(dir.path());
    let after_preparing = prepare(&served, dir.path());

    served.hand_over().unwrap();
    assert_eq!(
        checkpoints(dir.path()),
        after_preparing,
        "the hand-over wrote another checkpoint"
    );
    let (block, replayed) = reopened_block(dir.path(), 7);
    assert_eq!(block, vec![8u8; 4096]);
    assert_eq!(replayed, 0, "the early checkpoint left records to replay");
}

#[test]
fn a_write_after_the_preparation_makes_the_hand_over_close_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let served = served(dir.path());
    let after_preparing = prepare(&served, dir.path());
    served
        .if_active()
        .unwrap()
        .write(9 * 4096, &[0x5a; 4096])
        .unwrap();

    served.hand_over().unwrap();
    assert_ne!(checkpoints(dir.path()), after_preparing);
    let (block, replayed) = reopened_block(dir.path(), 9);
    assert_eq!(
        block,
        vec![0x5a; 4096],
        "the write after the preparation was lost"
    );
    assert_eq!(replayed, 0);
}

#[test]
fn a_compaction_after_the_preparation_makes_the_hand_over_close_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let served = served(dir.path());
    let volume = served.if_active().unwrap();
    // Half of the segment dead: the compaction below moves the other half.
    for block in 0..8u8 {
        volume
            .write(u64::from(block) * 4096, &[block + 0x41; 4096])
            .unwrap();
    }
    drop(volume);
    prepare(&served, dir.path());
    // Compaction moves blocks with their sequence numbers into its own,
    // unsealed, segment and writes a checkpoint naming it.
    let options = crate::store::CompactOptions {
        live_ratio_max: 0.9,
        rate_bytes_per_s: None,
        stop: None,
        crash_after_steps: None,
    };
    let report = served
        .if_active()
        .unwrap()
        .compact(&options, &mut |_| {})
        .unwrap();
    assert!(report.bytes_moved > 0, "{report:?}");
    let after_compaction = checkpoints(dir.path());

    served.hand_over().unwrap();
    assert_ne!(
        checkpoints(dir.path()),
        after_compaction,
        "the hand-over left the compaction's segment unsealed"
    );
    let (block, replayed) = reopened_block(dir.path(), 7);
    assert_eq!(block, vec![7 + 0x41; 4096]);
    assert_eq!(replayed, 0);
}

/// Counts the volume's flushes.
#[derive(Default)]
struct Flushes(std::sync::atomic::AtomicU32);

impl crate::volume::FlushHook for Flushes {
    fn after_flush(&self, _log: &crate::store::Log) -> Result<(), crate::volume::VolumeError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn the_log_is_flushed_while_a_migration_goes_on_and_no_longer_after() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let served = served(dir.path());
    let flushes = Arc::new(Flushes::default());
    assert!(served.if_active().unwrap().set_flush_hook(flushes.clone()));
    let goes_on = Arc::new(AtomicBool::new(true));
    served.migration_started(Box::new({
        let goes_on = Arc::clone(&goes_on);
        move || goes_on.load(Ordering::SeqCst)
    }));
    let deadline = Instant::now() + Duration::from_secs(10);
    while flushes.0.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "no flushes during the migration");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The device stopped for the switch-over: the flushes end.
    goes_on.store(false, Ordering::SeqCst);
    std::thread::sleep(super::MIGRATION_FLUSH_EVERY * 3);
    let ended = flushes.0.load(Ordering::SeqCst);
    std::thread::sleep(super::MIGRATION_FLUSH_EVERY * 4);
    assert_eq!(flushes.0.load(Ordering::SeqCst), ended, "still flushing");
}
