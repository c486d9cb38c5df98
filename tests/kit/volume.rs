//! Volumes in this process: deterministic keys, a shared crypto pool, small
//! segments; and the files a volume keeps.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use lsvblk::crypto::{CryptoPool, DataKey, KeyKind};
use lsvblk::volume::{Integrity, KeyEntry, Volume, VolumeOptions};

/// A deterministic test key from a one-byte seed.
pub fn key(seed: u8) -> DataKey {
    key_of_kind(KeyKind::Aes256Xts, seed)
}

/// A deterministic test key like [`key`], of the kind lsvkms makes for a
/// volume with integrity `mac`: every MAC of such a volume is required.
pub fn authenticated_key(seed: u8) -> DataKey {
    key_of_kind(KeyKind::Aes256XtsMac, seed)
}

fn key_of_kind(kind: KeyKind, seed: u8) -> DataKey {
    let material: Vec<u8> = (0..64u8)
        .map(|i| i.wrapping_mul(31).wrapping_add(seed))
        .collect();
    DataKey::from_bytes(kind, &material).unwrap()
}

/// The superblock entry of `key` for a volume made in this process (no
/// wrapped blob, no ACL): what a rotation to `key` records.
pub fn entry_for(key: &DataKey) -> KeyEntry {
    KeyEntry {
        key_id: key.id(),
        kind: key.kind(),
        wrapped_blob: None,
        created_unix_s: 0,
        acl: Vec::new(),
        context_volume_id: None,
    }
}

/// One small crypto pool shared by every test in a binary (threads are not free).
pub fn pool() -> Arc<CryptoPool> {
    static POOL: OnceLock<Arc<CryptoPool>> = OnceLock::new();
    Arc::clone(POOL.get_or_init(|| Arc::new(CryptoPool::new(2, 64 * 1024).unwrap())))
}

/// Options for small test volumes: small segments so that tests roll over;
/// written the way `LSVBLK_IO` says (as the daemon's `--io`), the library's
/// default without it.
pub fn options(block_bytes: u32) -> VolumeOptions {
    VolumeOptions {
        block_bytes,
        segment_bytes: 64 * 1024,
        heads: 2,
        pool: Some(pool()),
        io: io_mode(),
        ..VolumeOptions::default()
    }
}

/// The io mode `LSVBLK_IO` names (`direct` or `buffered`), else the
/// library's default; a value that is neither fails the test.
pub fn io_mode() -> lsvblk::store::IoMode {
    match std::env::var("LSVBLK_IO") {
        Ok(mode) => mode.parse().expect("LSVBLK_IO"),
        Err(_) => lsvblk::store::IoMode::default(),
    }
}

/// Creates a volume of `size` bytes in `dir`, with `key(1)`.
pub fn create(dir: &Path, size: u64, block_bytes: u32) -> Volume {
    Volume::create(dir, size, key(1), &options(block_bytes)).unwrap()
}

/// Creates a volume like [`create`] whose integrity is `integrity`.
pub fn create_with(dir: &Path, size: u64, block_bytes: u32, integrity: Integrity) -> Volume {
    let options = VolumeOptions {
        integrity,
        ..options(block_bytes)
    };
    Volume::create(dir, size, key(1), &options).unwrap()
}

/// Opens the volume in `dir` with `key(1)`.
pub fn open(dir: &Path, block_bytes: u32) -> Volume {
    Volume::open(dir, key(1), &options(block_bytes)).unwrap()
}

/// The first `len` bytes of `volume`, read in one call.
pub fn read_all(volume: &Volume, len: u64) -> Vec<u8> {
    let mut all = vec![0u8; len as usize];
    volume.read(0, &mut all).unwrap();
    all
}

/// Segment files of the volume in `dir`, in id order.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}
