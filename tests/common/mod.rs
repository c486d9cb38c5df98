//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use lsvblk::crypto::{CryptoPool, DataKey, KeyKind};
use lsvblk::volume::{Volume, VolumeOptions};

/// A deterministic test key from a one-byte seed.
pub fn key(seed: u8) -> DataKey {
    let material: Vec<u8> = (0..64u8)
        .map(|i| i.wrapping_mul(31).wrapping_add(seed))
        .collect();
    DataKey::from_bytes(KeyKind::Aes256Xts, &material).unwrap()
}

/// One small crypto pool shared by every test in a binary (threads are not free).
pub fn pool() -> Arc<CryptoPool> {
    static POOL: OnceLock<Arc<CryptoPool>> = OnceLock::new();
    Arc::clone(POOL.get_or_init(|| Arc::new(CryptoPool::new(2, 64 * 1024).unwrap())))
}

/// Options for small test volumes: small segments so that tests roll over.
pub fn options(block_bytes: u32) -> VolumeOptions {
    VolumeOptions {
        block_bytes,
        segment_bytes: 64 * 1024,
        heads: 2,
        pool: Some(pool()),
        ..VolumeOptions::default()
    }
}

/// Creates a volume of `size` bytes in `dir`.
pub fn create(dir: &Path, size: u64, block_bytes: u32) -> Volume {
    Volume::create(dir, size, key(1), &options(block_bytes)).unwrap()
}

/// Opens the volume in `dir`.
pub fn open(dir: &Path, block_bytes: u32) -> Volume {
    Volume::open(dir, key(1), &options(block_bytes)).unwrap()
}

pub mod blkio_client;
pub mod ceph;
pub mod procs;

/// Recognisable data: every byte depends on position and a tag.
pub fn pattern(len: usize, tag: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7) ^ tag ^ ((i >> 9) as u8))
        .collect()
}

/// Copies a directory tree (volumes are flat two levels deep).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A temporary directory on tmpfs when there is one: crash tests reopen a
/// volume thousands of times and each open syncs files, which tmpfs makes free.
pub fn fast_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

/// Segment files of the volume in `dir`, in id order.
pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}
