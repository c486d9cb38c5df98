//! The checkpoint vouches for every sealed segment: one dropped from the
//! middle of the log, or replaced by an older copy of itself, makes the
//! open fail with an error that names it, instead of the volume reading
//! zeros or old data where that segment's blocks were.

mod kit;

use std::fs;

use kit::data::pattern;
use kit::volume::{create, key, options, segment_files};
use lsvblk::store::StoreError;
use lsvblk::volume::{Volume, VolumeError};

/// A closed volume whose log is several sealed 64 KiB segments.
fn sealed_log(dir: &std::path::Path) {
    let volume = create(dir, 1 << 20, 4096);
    for round in 0..6u8 {
        volume
            .write(u64::from(round) * 48 * 1024, &pattern(48 * 1024, round))
            .unwrap();
        volume.flush().unwrap();
    }
    volume.close().unwrap();
}

#[test]
fn a_sealed_segment_dropped_from_the_middle_fails_the_open_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    sealed_log(dir.path());
    let segments = segment_files(dir.path());
    assert!(segments.len() >= 3, "{segments:?}");
    let dropped = &segments[1];
    fs::remove_file(dropped).unwrap();
    let err = Volume::open(dir.path(), key(1), &options(4096)).unwrap_err();
    match &err {
        VolumeError::Store(StoreError::ListedSegmentMissing { segment_id, .. }) => {
            assert_eq!(*segment_id, 1);
        }
        other => panic!("expected ListedSegmentMissing, got {other}"),
    }
    assert!(
        err.to_string()
            .contains("0000000000000001 is missing (listed in checkpoint"),
        "{err}"
    );
}

#[test]
fn a_sealed_segment_replaced_by_an_older_copy_of_itself_fails_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path(), 1 << 20, 4096);
    volume.write(0, &pattern(8192, 1)).unwrap();
    volume.flush().unwrap();
    // The head segment as it is now: open, its first write in it.
    let segment = segment_files(dir.path()).pop().unwrap();
    let older = fs::read(&segment).unwrap();
    volume.write(0, &pattern(8192, 2)).unwrap();
    volume.close().unwrap();
    fs::write(&segment, &older).unwrap();
    let err = Volume::open(dir.path(), key(1), &options(4096)).unwrap_err();
    match &err {
        VolumeError::Store(StoreError::SealMismatch { segment_id, .. }) => {
            assert_eq!(*segment_id, 0)
        }
        other => panic!("expected SealMismatch, got {other}"),
    }
}
