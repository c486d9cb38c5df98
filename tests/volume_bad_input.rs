//! Bad input gets a clear, typed error and changes nothing: a directory that
//! is not a volume, the wrong key, a segment from another volume, a damaged
//! checkpoint.

mod kit;

use std::fs;

use kit::data::pattern;
use kit::volume::{create, key, options, segment_files};
use lsvblk::store::StoreError;
use lsvblk::volume::{Volume, VolumeError};

#[test]
fn a_directory_that_is_not_a_volume_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = Volume::open(dir.path(), key(1), &options(4096)).unwrap_err();
    assert!(matches!(err, VolumeError::NotAVolume { .. }), "{err}");
    assert!(err.to_string().contains("volume.json"), "{err}");

    fs::write(dir.path().join("volume.json"), b"{\"hello\": 1}").unwrap();
    let err = Volume::open(dir.path(), key(1), &options(4096)).unwrap_err();
    assert!(matches!(err, VolumeError::NotAVolume { .. }), "{err}");

    let missing = dir.path().join("nope");
    let err = Volume::open(&missing, key(1), &options(4096)).unwrap_err();
    assert!(matches!(err, VolumeError::NotAVolume { .. }), "{err}");
}

#[test]
fn create_refuses_a_non_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("precious"), b"data").unwrap();
    let err = Volume::create(dir.path(), 1 << 20, key(1), &options(4096)).unwrap_err();
    assert!(matches!(err, VolumeError::AlreadyExists { .. }), "{err}");
    assert_eq!(fs::read(dir.path().join("precious")).unwrap(), b"data");
}

#[test]
fn the_wrong_key_is_refused_by_id() {
    let dir = tempfile::tempdir().unwrap();
    create(dir.path(), 1 << 20, 4096).close().unwrap();
    let err = Volume::open(dir.path(), key(2), &options(4096)).unwrap_err();
    match err {
        VolumeError::WrongKey { expected, got } => {
            assert_eq!(expected, key(1).id());
            assert_eq!(got, key(2).id());
        }
        other => panic!("expected WrongKey, got {other}"),
    }
}

#[test]
fn a_segment_from_another_volume_is_refused() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let va = create(a.path(), 1 << 20, 4096);
    va.write(0, &pattern(8192, 1)).unwrap();
    drop(va); // crash, so the segment is replayed on open
    let vb = create(b.path(), 1 << 20, 4096);
    vb.write(0, &pattern(8192, 2)).unwrap();
    drop(vb);
    // Replace a's segment with b's (same file name: both are segment 0).
    let seg_a = segment_files(a.path()).pop().unwrap();
    let seg_b = segment_files(b.path()).pop().unwrap();
    assert_eq!(seg_a.file_name(), seg_b.file_name());
    fs::copy(&seg_b, &seg_a).unwrap();
    let err = Volume::open(a.path(), key(1), &options(4096)).unwrap_err();
    assert!(
        matches!(err, VolumeError::Store(StoreError::ForeignSegment { .. })),
        "{err}"
    );
}

#[test]
fn a_truncated_checkpoint_is_a_typed_error_and_the_volume_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path(), 1 << 20, 4096);
    let data = pattern(64 * 1024, 5);
    volume.write(0, &data).unwrap();
    volume.close().unwrap();
    let checkpoints = lsvblk::store::list_checkpoints(&dir.path().join("checkpoints")).unwrap();
    let newest = &checkpoints[0];
    let bytes = fs::read(newest).unwrap();
    fs::write(newest, &bytes[..bytes.len() - 7]).unwrap();

    let superblock = lsvblk::volume::read_superblock(dir.path()).unwrap();
    let err =
        lsvblk::store::read_checkpoint(newest, &superblock.volume_id_bytes().unwrap()).unwrap_err();
    assert!(
        matches!(err, StoreError::BadCheckpoint { reason, .. } if reason.contains("truncated")),
        "{err}"
    );

    // Opening still works: the older checkpoint plus the log rebuild the
    // index, and the report names the checkpoint that was skipped.
    let volume = kit::volume::open(dir.path(), 4096);
    assert_eq!(volume.recovery_report().skipped_checkpoints.len(), 1);
    assert!(volume.recovery_report().skipped_checkpoints[0].contains("truncated"));
    let mut back = vec![0u8; data.len()];
    volume.read(0, &mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn a_missing_segment_that_recovery_needs_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path(), 1 << 20, 4096);
    for i in 0..40u8 {
        volume
            .write(u64::from(i) * 4096, &pattern(4096 * 8, i))
            .unwrap();
    }
    drop(volume);
    let segments = segment_files(dir.path());
    assert!(segments.len() >= 3, "small segments rolled over");
    fs::remove_file(&segments[1]).unwrap();
    let err = Volume::open(dir.path(), key(1), &options(4096)).unwrap_err();
    assert!(
        matches!(err, VolumeError::Store(StoreError::SegmentMissing { .. })),
        "{err}"
    );
}
