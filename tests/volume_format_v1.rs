//! Volumes of segment format 1 keep working: the fixtures under
//! `tests/fixtures/v1` were written by the last version 1 writer (see their
//! README) with the operations [`expected`] replays here - sealed segments,
//! a snapshot, and a head segment left open by a crash. They open and read
//! back, their snapshot reads back, writes go to version 2 segments from
//! then on, and compaction rewrites the version 1 segments.

mod kit;

use std::path::{Path, PathBuf};

use kit::data::pattern;
use kit::dirs::{copy_dir, fast_tempdir};
use kit::volume::{key, segment_files};
use lsvblk::store::CompactOptions;
use lsvblk::volume::{Volume, VolumeOptions};

const K: u64 = 1024;
const VOLUME_BYTES: usize = 256 * K as usize;

/// The image at the snapshot "before", and the final image.
fn expected() -> (Vec<u8>, Vec<u8>) {
    let mut image = vec![0u8; VOLUME_BYTES];
    let write = |image: &mut [u8], offset: u64, len: u64, tag: u8| {
        let at = offset as usize;
        image[at..at + len as usize].copy_from_slice(&pattern(len as usize, tag));
    };
    write(&mut image, 0, 64 * K, 1);
    write(&mut image, 100 * K, 24 * K, 2);
    write(&mut image, 4096 + 512, 1024, 3);
    image[16 * K as usize..24 * K as usize].fill(0); // discard
    image[32 * K as usize..40 * K as usize].fill(0); // write zeroes
    write(&mut image, 200 * K, 40 * K, 4);
    let before = image.clone();
    write(&mut image, 8 * K, 16 * K, 5);
    write(&mut image, 48 * K, 12 * K, 6);
    write(&mut image, 130 * K + 512, 3 * K, 7);
    (before, image)
}

fn options(block: u32) -> VolumeOptions {
    VolumeOptions {
        heads: 1,
        ..kit::volume::options(block)
    }
}

/// A copy of the fixture of `block`-byte blocks.
fn fixture(block: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = fast_tempdir();
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/v1")
        .join(format!("block-{block}"));
    let volume = dir.path().join("volume");
    copy_dir(&source, &volume);
    (dir, volume)
}

fn read_all(volume: &Volume) -> Vec<u8> {
    let mut all = vec![0u8; VOLUME_BYTES];
    volume.read(0, &mut all).unwrap();
    all
}

/// The format version of a segment file (bytes 4..6 of its header).
fn segment_version(path: &Path) -> u16 {
    let bytes = std::fs::read(path).unwrap();
    u16::from_le_bytes([bytes[4], bytes[5]])
}

#[test]
fn a_version_1_volume_opens_reads_back_and_upgrades_on_write() {
    let (before, after) = expected();
    for block in [4096, 512] {
        let (_tmp, dir) = fixture(block);
        let v1_segments = segment_files(&dir);
        assert!(v1_segments.iter().all(|p| segment_version(p) == 1));
        // Read-only first: replays the crashed head without changing a byte.
        let volume = Volume::open(
            &dir,
            key(1),
            &VolumeOptions {
                read_only: true,
                ..options(block)
            },
        )
        .unwrap();
        assert!(read_all(&volume) == after, "block {block}: read-only open");
        drop(volume);
        let volume = Volume::open(&dir, key(1), &options(block)).unwrap();
        assert_eq!(
            volume.recovery_report().records_replayed,
            2,
            "the crashed head's records"
        );
        assert!(read_all(&volume) == after, "block {block}: after replay");
        let snapshot =
            Volume::open_snapshot(&dir, "before", vec![key(1)], &options(block)).unwrap();
        assert!(read_all(&snapshot) == before, "block {block}: snapshot");
        drop(snapshot);
        volume.write(60 * K, &pattern(8 * K as usize, 9)).unwrap();
        volume.close().unwrap();
        let mut image = after.clone();
        image[60 * K as usize..68 * K as usize].copy_from_slice(&pattern(8 * K as usize, 9));
        let volume = Volume::open(&dir, key(1), &options(block)).unwrap();
        assert!(
            read_all(&volume) == image,
            "block {block}: after the upgrade"
        );
        let new: Vec<PathBuf> = segment_files(&dir)
            .into_iter()
            .filter(|p| !v1_segments.contains(p))
            .collect();
        assert!(!new.is_empty());
        assert!(new.iter().all(|p| segment_version(p) == 2), "block {block}");
    }
}

#[test]
fn compaction_rewrites_version_1_segments() {
    let (_, after) = expected();
    for block in [4096, 512] {
        let (_tmp, dir) = fixture(block);
        let volume = Volume::open(&dir, key(1), &options(block)).unwrap();
        volume.delete_snapshot("before").unwrap();
        let compact = CompactOptions {
            live_ratio_max: 1.0,
            ..CompactOptions::default()
        };
        volume.compact(&compact, &mut |_| {}).unwrap();
        assert!(
            read_all(&volume) == after,
            "block {block}: after compaction"
        );
        volume.close().unwrap();
        let versions: Vec<u16> = segment_files(&dir)
            .iter()
            .map(|p| segment_version(p))
            .collect();
        assert!(
            versions.iter().all(|v| *v == 2),
            "block {block}: {versions:?}"
        );
        let volume = Volume::open(&dir, key(1), &options(block)).unwrap();
        assert!(read_all(&volume) == after, "block {block}: reopened");
    }
}
