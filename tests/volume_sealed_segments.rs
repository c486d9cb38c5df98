//! The checkpoint vouches for every sealed segment: one dropped from the
//! middle of the log, or replaced by an older copy of itself, makes the
//! open fail with an error that names it, instead of the volume reading
//! zeros or old data where that segment's blocks were.

mod kit;

use std::fs;

use kit::data::pattern;
use kit::volume::{create, key, options, segment_files};
use lsvblk::store::{CheckDepth, StoreError};
use lsvblk::volume::{Volume, VolumeError};

/// Writes `rounds` 48 KiB pieces (over the first 384 KiB, again and again),
/// each flushed: a log of several sealed 64 KiB segments.
fn write_rounds(volume: &Volume, rounds: u8) {
    for round in 0..rounds {
        volume
            .write(u64::from(round % 8) * 48 * 1024, &pattern(48 * 1024, round))
            .unwrap();
        volume.flush().unwrap();
    }
}

/// A closed volume whose log is several sealed 64 KiB segments.
fn sealed_log(dir: &std::path::Path) {
    let volume = create(dir, 1 << 20, 4096);
    write_rounds(&volume, 6);
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

/// A store volume's cache punches the records out of a segment once it is
/// uploaded, keeping its header and its last pages (the seal). A segment
/// sealed after the newest checkpoint (a head's open segment then) may be
/// evicted too: the keyless check must still find its seal and chain the
/// later seals through it, rather than report that the next segment's seal
/// "does not continue the log's seal chain".
#[test]
fn an_evicted_segment_sealed_after_the_checkpoint_keeps_the_seal_chain() {
    use std::os::unix::fs::FileExt;

    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path(), 1 << 20, 4096);
    write_rounds(&volume, 16);
    drop(volume); // no close: no checkpoint lists these seals
    let segments = segment_files(dir.path());
    assert!(segments.len() >= 4, "{segments:?}");
    let clean = lsvblk::volume::check_files(dir.path(), CheckDepth::Records).unwrap();
    assert!(clean.is_clean(), "{clean:?}");

    // Evict the second segment as the cache does: zeros from the first
    // page up to the last two.
    let victim = &segments[1];
    let id = u64::from_str_radix(victim.file_stem().unwrap().to_str().unwrap(), 16).unwrap();
    let file = fs::OpenOptions::new().write(true).open(victim).unwrap();
    let len = file.metadata().unwrap().len();
    let end = (len - 8192) / 4096 * 4096;
    assert!(end > 4096, "segment {id:016x} has no records to evict");
    file.write_all_at(&vec![0u8; (end - 4096) as usize], 4096)
        .unwrap();
    drop(file);

    let evicted = std::collections::BTreeSet::from([id]);
    let report =
        lsvblk::volume::check_files_evicted(dir.path(), CheckDepth::Records, &evicted).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.segments_evicted, 1);
}
