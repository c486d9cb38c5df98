//! Basic volume behaviour: read back what was written, zeros for holes,
//! discard and write-zeroes, reopen, partial blocks, errors for bad ranges.

mod kit;

use kit::data::pattern;
use kit::volume::{create, open};
use lsvblk::volume::VolumeError;

#[test]
fn never_written_blocks_read_as_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path(), 1 << 20, 4096);
    let mut buf = vec![0xffu8; 8192];
    volume.read(4096, &mut buf).unwrap();
    assert!(buf.iter().all(|b| *b == 0));
}

#[test]
fn writes_read_back_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path(), 4 << 20, 4096);
    let data = pattern(300 * 1024, 3);
    volume.write(8192, &data).unwrap();
    volume.write(512, &pattern(1024, 9)).unwrap();
    volume.close().unwrap();
    let volume = open(dir.path(), 4096);
    let mut buf = vec![0u8; data.len()];
    volume.read(8192, &mut buf).unwrap();
    assert_eq!(buf, data);
    let mut small = vec![0u8; 1024];
    volume.read(512, &mut small).unwrap();
    assert_eq!(small, pattern(1024, 9));
    let mut head = vec![1u8; 512];
    volume.read(0, &mut head).unwrap();
    assert!(
        head.iter().all(|b| *b == 0),
        "RMW kept the untouched sector"
    );
}

#[test]
fn discard_and_write_zeroes_read_back_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path(), 1 << 20, 4096);
    volume.write(0, &pattern(64 * 1024, 1)).unwrap();
    volume.discard(4096, 8192).unwrap();
    volume.write_zeroes(16384 + 512, 8192, false).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    volume.read(0, &mut buf).unwrap();
    let mut expected = pattern(64 * 1024, 1);
    expected[4096..12288].fill(0);
    expected[16384 + 512..16384 + 512 + 8192].fill(0);
    assert_eq!(buf, expected);
}

#[test]
fn bad_ranges_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path(), 1 << 20, 4096);
    let mut buf = vec![0u8; 4096];
    assert!(matches!(
        volume.read(1 << 20, &mut buf),
        Err(VolumeError::OutOfRange { .. })
    ));
    assert!(matches!(
        volume.write((1 << 20) - 512, &buf),
        Err(VolumeError::OutOfRange { .. })
    ));
    assert!(matches!(
        volume.write(100, &buf),
        Err(VolumeError::Misaligned { .. })
    ));
    assert!(matches!(
        volume.read(u64::MAX - 511, &mut buf),
        Err(VolumeError::OutOfRange { .. })
    ));
}

#[test]
fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _volume = create(dir.path(), 1 << 20, 4096);
    let err =
        lsvblk::volume::Volume::open(dir.path(), kit::volume::key(1), &kit::volume::options(4096))
            .unwrap_err();
    assert!(matches!(err, VolumeError::Busy { .. }), "{err}");
}

#[test]
fn sector_sized_blocks_work() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path(), 1 << 20, 512);
    let data = pattern(5 * 512, 5);
    volume.write(512 * 3, &data).unwrap();
    volume.close().unwrap();
    let volume = open(dir.path(), 512);
    let mut buf = vec![0u8; data.len()];
    volume.read(512 * 3, &mut buf).unwrap();
    assert_eq!(buf, data);
}
