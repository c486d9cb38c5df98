//! What the library creates is private whatever the umask of the process
//! that embeds it: a volume created, written, snapshotted, cloned,
//! compacted and rotated, and a local object store written, all under
//! `umask 000`, hold only 0600 files and 0700 directories.
//!
//! This binary runs under umask 000 for its whole life (one test: nothing
//! else here creates files).

mod kit;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bytes::Bytes;
use lsvblk::objstore::{LocalDirStore, ObjectKey, ObjectStore};
use lsvblk::store::CompactOptions;
use lsvblk::volume::{RotationReason, Volume};

const MIB: u64 = 1 << 20;

/// Every file and directory under `dir` whose mode is not 0600 (files) or
/// 0700 (directories), with its mode.
fn wrong_modes(dir: &Path) -> Vec<String> {
    let mut wrong = Vec::new();
    for entry in walk(dir) {
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if meta.mode() & 0o7777 != want {
            wrong.push(format!("{} {:o}", entry.display(), meta.mode() & 0o7777));
        }
    }
    wrong
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            }
            found.push(entry.path());
        }
    }
    found
}

#[test]
fn under_umask_000_every_file_is_0600_and_every_directory_0700() {
    // SAFETY: umask(2) only sets the process's file-creation mask.
    unsafe { libc::umask(0) };
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("volumes/v");
    let options = kit::volume::options(4096);
    let volume = Volume::create(&dir, 2 * MIB, kit::volume::key(1), &options).unwrap();
    for pass in 0..3u8 {
        for chunk in 0..8u64 {
            volume.write(chunk * 64 * 1024, &[pass; 64 * 1024]).unwrap();
        }
        volume.flush().unwrap();
        if pass == 0 {
            volume.create_snapshot("first").unwrap();
            volume.materialize_snapshots().unwrap();
        }
    }
    let compact = CompactOptions {
        live_ratio_max: 0.9,
        ..CompactOptions::default()
    };
    volume.compact(&compact, &mut |_| {}).unwrap();
    let new_key = kit::volume::key(2);
    let entry = kit::volume::entry_for(&new_key);
    volume
        .start_rotation(new_key, entry, RotationReason::Manual)
        .unwrap();
    volume
        .continue_rotation(&CompactOptions::default(), &mut |_| {})
        .unwrap()
        .expect("a rotation was in progress");
    volume.close().unwrap();
    let clone = Volume::create_clone(
        &dir,
        "first",
        &top.path().join("volumes/clone"),
        kit::volume::key(3),
        None,
        vec![kit::volume::key(1)],
        &options,
    )
    .unwrap();
    clone.write(0, &[9; 4096]).unwrap();
    clone.close().unwrap();

    let store = LocalDirStore::create(&top.path().join("objects/root")).unwrap();
    let key = ObjectKey::new("vol/seg/0001").unwrap();
    store.put(&key, Bytes::from_static(b"object")).unwrap();

    let created = walk(top.path());
    assert!(created.len() > 10, "the test created little: {created:?}");
    let wrong = wrong_modes(top.path());
    assert!(wrong.is_empty(), "not private under umask 000: {wrong:#?}");
}
