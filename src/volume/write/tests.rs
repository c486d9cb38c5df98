//! The batch write path in process: order within a batch, all-or-nothing,
//! and the log head the caller names.

use std::sync::Arc;

use super::Change;
use crate::crypto::{CryptoPool, DataKey, KeyKind};
use crate::store::{HeadId, StoreError};
use crate::volume::{Volume, VolumeError, VolumeOptions};

const BLOCK: u64 = 4096;

fn volume(dir: &std::path::Path, heads: usize) -> Volume {
    let material: Vec<u8> = (0..64u8).collect();
    let key = DataKey::from_bytes(KeyKind::Aes256Xts, &material).unwrap();
    let options = VolumeOptions {
        heads,
        pool: Some(Arc::new(CryptoPool::new(1, 64 * 1024).unwrap())),
        ..VolumeOptions::default()
    };
    Volume::create(dir, 1 << 20, key, &options).unwrap()
}

fn write(offset: u64, byte: u8, len: usize) -> Change {
    Change::Write {
        offset,
        data: crate::store::AlignedBuf::copy_from(&vec![byte; len]),
    }
}

fn read(volume: &Volume, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    volume.read(offset, &mut buf).unwrap();
    buf
}

#[test]
fn a_batch_applies_its_changes_in_order_partial_blocks_included() {
    let dir = tempfile::tempdir().unwrap();
    let volume = volume(dir.path(), 2);
    volume.write(0, &vec![9u8; 4 * BLOCK as usize]).unwrap();
    let batch = vec![
        // A whole block, then a sector of it: the sector lands on the new block.
        write(BLOCK, 1, BLOCK as usize),
        write(BLOCK + 512, 2, 512),
        // A sector, then another sector of the same block: both land.
        write(2 * BLOCK, 3, 512),
        write(2 * BLOCK + 1024, 4, 512),
        // Zeros over a block, then a sector of it: zeros around the sector.
        Change::WriteZeroes {
            offset: 3 * BLOCK,
            len: BLOCK,
            unmap: false,
        },
        write(3 * BLOCK + 512, 5, 512),
    ];
    volume.write_batch(HeadId(1), batch).unwrap();
    let mut want = vec![9u8; 4 * BLOCK as usize];
    let mut put = |offset: u64, byte: u8, len: usize| {
        want[offset as usize..offset as usize + len].fill(byte);
    };
    put(BLOCK, 1, BLOCK as usize);
    put(BLOCK + 512, 2, 512);
    put(2 * BLOCK, 3, 512);
    put(2 * BLOCK + 1024, 4, 512);
    put(3 * BLOCK, 0, BLOCK as usize);
    put(3 * BLOCK + 512, 5, 512);
    assert_eq!(read(&volume, 0, 4 * BLOCK as usize), want);
    // And the same after a reopen (replayed from the log).
    drop(volume);
    let material: Vec<u8> = (0..64u8).collect();
    let key = DataKey::from_bytes(KeyKind::Aes256Xts, &material).unwrap();
    let volume = Volume::open(dir.path(), key, &VolumeOptions::default()).unwrap();
    assert_eq!(read(&volume, 0, 4 * BLOCK as usize), want);
}

#[test]
fn a_batch_with_a_bad_change_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let volume = volume(dir.path(), 1);
    let batch = vec![
        write(512, 7, 512),
        write(BLOCK, 8, BLOCK as usize),
        write(1 << 20, 9, 512),
    ];
    let error = volume.write_batch(HeadId::FIRST, batch).unwrap_err();
    assert!(matches!(error, VolumeError::OutOfRange { .. }), "{error}");
    assert_eq!(
        read(&volume, 0, 2 * BLOCK as usize),
        vec![0u8; 2 * BLOCK as usize]
    );
}

#[test]
fn a_head_the_volume_does_not_have_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let volume = volume(dir.path(), 2);
    let error = volume
        .write_batch(HeadId(2), vec![write(0, 1, 512)])
        .unwrap_err();
    assert!(
        matches!(
            error,
            VolumeError::Store(StoreError::NoSuchHead {
                head: HeadId(2),
                heads: 2
            })
        ),
        "{error}"
    );
    assert_eq!(read(&volume, 0, 512), vec![0u8; 512]);
    volume
        .write_batch(HeadId(1), vec![write(0, 1, 512)])
        .unwrap();
    assert_eq!(read(&volume, 0, 512), vec![1u8; 512]);
}
