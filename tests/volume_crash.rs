//! Crash tests. A log holds several frames of records; the last ones were
//! never flushed. We cut the last segment at every byte offset of those
//! frames (and, separately, flip a bit at every one of their bytes),
//! reopen, and check the durability contract:
//! - reopen succeeds;
//! - every write flushed before the cut is intact;
//! - each unflushed write is all-old or all-new, never a mix.
//!
//! The log under test is written both direct (`O_DIRECT`) and buffered.
//!
//! And: a corrupted record in a *sealed* segment gives a read error (or, if
//! its framing is gone, an open error), never wrong data.

mod kit;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use kit::data::pattern;
use kit::dirs::{copy_dir, fast_tempdir};
use kit::volume::{open, segment_files};
use lsvblk::store::{ALIGN, IoMode, StoreError, V2_FIRST_FRAME};
use lsvblk::volume::{Volume, VolumeError, VolumeOptions};

const BLOCK: u64 = 4096;
const VOLUME_BYTES: u64 = 1 << 20;
/// Offset of the first frame's payload in a segment whose first frame's
/// meta area is one aligned block (a frame of one small record).
const PAYLOAD: u64 = V2_FIRST_FRAME + ALIGN as u64;

/// One unflushed write: its range and the images before and after it.
struct Change {
    offset: u64,
    old: Vec<u8>,
    new: Vec<u8>,
}

/// Options with segments big enough that the whole test log is one
/// segment, written in mode `io`.
fn one_segment_options(io: IoMode) -> VolumeOptions {
    VolumeOptions {
        segment_bytes: 8 << 20,
        heads: 1,
        io,
        ..kit::volume::options(4096)
    }
}

/// A copy of the volume in `original`, and its segment file `name` open
/// for writing (to damage it).
fn copy_with_segment(
    original: &Path,
    name: &std::ffi::OsStr,
) -> (tempfile::TempDir, std::fs::File) {
    let copy = fast_tempdir();
    copy_dir(original, copy.path());
    let file = OpenOptions::new()
        .write(true)
        .open(copy.path().join("segments").join(name))
        .unwrap();
    (copy, file)
}

/// A new volume under key 1 whose log stays in one segment, written in
/// mode `io`.
fn create(dir: &Path, io: IoMode) -> Volume {
    Volume::create(
        dir,
        VOLUME_BYTES,
        kit::volume::key(1),
        &one_segment_options(io),
    )
    .unwrap()
}

/// Builds the log: flushed base data, then three unflushed changes, then a
/// crash (drop without close). Returns the flushed image, the changes, and the
/// segment length at the last flush.
fn build(dir: &Path, io: IoMode) -> (Vec<u8>, Vec<Change>, u64) {
    let volume = create(dir, io);
    if volume.io_mode() != io {
        eprintln!("{io} refused here: the log is written {}", volume.io_mode());
    }
    let base = pattern(64 * 1024, 1);
    volume.write(0, &base).unwrap();
    volume.flush().unwrap();
    let mut image = vec![0u8; VOLUME_BYTES as usize];
    image[..base.len()].copy_from_slice(&base);
    let flushed_image = image.clone();
    let segment = segment_files(dir).pop().unwrap();
    let flushed_len = log_end(&segment);

    let mut changes = Vec::new();
    let mut change = |offset: u64, new: Vec<u8>, image: &mut Vec<u8>| {
        let range = offset as usize..offset as usize + new.len();
        changes.push(Change {
            offset,
            old: image[range.clone()].to_vec(),
            new: new.clone(),
        });
        image[range].copy_from_slice(&new);
    };
    // Three blocks of new data over the base.
    let first = pattern(3 * BLOCK as usize, 2);
    volume.write(BLOCK, &first).unwrap();
    change(BLOCK, first, &mut image);
    // Zeros over two blocks (a record without payload).
    volume.write_zeroes(6 * BLOCK, 2 * BLOCK, false).unwrap();
    change(6 * BLOCK, vec![0; 2 * BLOCK as usize], &mut image);
    // A partial-block write (read-modify-write of one block).
    let second = pattern(1024, 3);
    volume.write(10 * BLOCK + 512, &second).unwrap();
    change(10 * BLOCK + 512, second, &mut image);
    drop(volume); // crash: no flush, no seal, no checkpoint
    (flushed_image, changes, flushed_len)
}

/// Where the log written to the open segment at `path` ends: past its last
/// page that is not all zeros (the file runs on, zeros preallocated for
/// appends that never came; every frame ends with a page that is not).
fn log_end(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let last = bytes.iter().rposition(|&b| b != 0).unwrap();
    (last / ALIGN + 1) as u64 * ALIGN as u64
}

/// Keeps two pages of the zeros preallocated after the log, so that each
/// of the many copies a test damages stays small.
fn trim_preallocation(path: &Path) {
    let keep = log_end(path) + 2 * ALIGN as u64;
    let file = OpenOptions::new().write(true).open(path).unwrap();
    if file.metadata().unwrap().len() > keep {
        file.set_len(keep).unwrap();
    }
}

/// Opens a damaged copy and checks the contract.
fn check_contract(dir: &Path, flushed: &[u8], changes: &[Change], what: &str) {
    let volume = open(dir, 4096);
    let mut all = vec![0u8; VOLUME_BYTES as usize];
    volume
        .read(0, &mut all)
        .unwrap_or_else(|e| panic!("{what}: read failed: {e}"));
    // Outside the changed ranges, the flushed image must be intact.
    let mut expected = flushed.to_vec();
    for change in changes {
        let range = change.offset as usize..change.offset as usize + change.new.len();
        let got = &all[range.clone()];
        assert!(
            got == change.old || got == change.new,
            "{what}: write at {} is a mix",
            change.offset
        );
        expected[range].copy_from_slice(got);
    }
    assert!(all == expected, "{what}: flushed data damaged");
}

#[test]
fn truncating_the_tail_at_every_byte_keeps_the_contract() {
    for io in [IoMode::Direct, IoMode::Buffered] {
        truncating_the_tail_at_every_byte(io);
    }
}

fn truncating_the_tail_at_every_byte(io: IoMode) {
    let original = fast_tempdir();
    let (flushed, changes, flushed_len) = build(original.path(), io);
    let segment = segment_files(original.path()).pop().unwrap();
    let end = log_end(&segment);
    trim_preallocation(&segment);
    assert!(
        end > flushed_len + 3 * BLOCK,
        "the unflushed records are in the last segment"
    );
    let name = segment.file_name().unwrap().to_owned();
    for cut in flushed_len..=end {
        let (copy, file) = copy_with_segment(original.path(), &name);
        file.set_len(cut).unwrap();
        drop(file);
        check_contract(
            copy.path(),
            &flushed,
            &changes,
            &format!("{io}: cut at {cut}"),
        );
    }
}

/// A head's segment is preallocated, so a crash leaves zeros after the
/// log: the reopen takes them for its end (nothing torn, every write that
/// completed is there) and seals the segment, cut at its seal.
#[test]
fn preallocated_space_after_the_log_is_its_end_not_a_torn_tail() {
    for io in [IoMode::Direct, IoMode::Buffered] {
        // On the disk the tests run on, where O_DIRECT works.
        let original = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let (flushed, changes, _) = build(original.path(), io);
        let segment = segment_files(original.path()).pop().unwrap();
        let preallocated = std::fs::metadata(&segment).unwrap().len();
        let end = log_end(&segment);
        assert!(
            preallocated >= 8 << 20 && end < preallocated,
            "{io}: the open segment is preallocated ({preallocated} bytes, log to {end})"
        );
        let volume = open(original.path(), 4096);
        let torn = &volume.recovery_report().torn_tails;
        assert!(
            torn.is_empty(),
            "{io}: zeros taken for a torn tail: {torn:?}"
        );
        let mut image = flushed.clone();
        for change in &changes {
            image[change.offset as usize..][..change.new.len()].copy_from_slice(&change.new);
        }
        let mut all = vec![0u8; VOLUME_BYTES as usize];
        volume.read(0, &mut all).unwrap();
        assert!(all == image, "{io}: a completed write is missing");
        let sealed = std::fs::metadata(&segment).unwrap().len();
        assert_eq!(sealed, end + ALIGN as u64, "{io}: cut after its seal frame");
    }
}

#[test]
fn flipping_a_bit_in_the_tail_keeps_the_contract() {
    for io in [IoMode::Direct, IoMode::Buffered] {
        flipping_a_bit_in_the_tail(io);
    }
}

fn flipping_a_bit_in_the_tail(io: IoMode) {
    let original = fast_tempdir();
    let (flushed, changes, flushed_len) = build(original.path(), io);
    let segment = segment_files(original.path()).pop().unwrap();
    trim_preallocation(&segment);
    let bytes = std::fs::read(&segment).unwrap();
    let name = segment.file_name().unwrap().to_owned();
    for at in flushed_len..log_end(&segment) {
        let (copy, file) = copy_with_segment(original.path(), &name);
        file.write_all_at(&[bytes[at as usize] ^ (1 << (at % 8))], at)
            .unwrap();
        drop(file);
        check_contract(
            copy.path(),
            &flushed,
            &changes,
            &format!("{io}: bit flip at {at}"),
        );
    }
}

/// Writes data, closes (which seals the segment and checkpoints), and
/// returns the segment file. Its one data record is in the first frame:
/// the frame's meta area is one 4 KiB block, its payload follows
/// ([`PAYLOAD`]).
fn sealed_volume(dir: &Path) -> std::path::PathBuf {
    let volume = create(dir, IoMode::Direct);
    volume.write(0, &pattern(4 * BLOCK as usize, 7)).unwrap();
    volume.close().unwrap();
    segment_files(dir).pop().unwrap()
}

#[test]
fn a_corrupted_sealed_block_is_a_read_error_not_wrong_data() {
    let dir = fast_tempdir();
    let segment = sealed_volume(dir.path());
    // Damage one byte of the third block.
    let at = PAYLOAD + 2 * BLOCK + 100;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], at).unwrap();
    drop(file);
    let volume = open(dir.path(), 4096);
    let mut buf = vec![0u8; BLOCK as usize];
    let err = volume.read(2 * BLOCK, &mut buf).unwrap_err();
    assert!(
        matches!(
            err,
            VolumeError::Store(StoreError::Corrupt {
                reason: "block checksum mismatch",
                ..
            })
        ),
        "{err}"
    );
    // The undamaged blocks of the same record still read correctly.
    volume.read(BLOCK, &mut buf).unwrap();
    assert_eq!(
        buf,
        pattern(4 * BLOCK as usize, 7)[BLOCK as usize..2 * BLOCK as usize]
    );
}

#[test]
fn a_corrupted_sealed_header_that_must_be_replayed_fails_the_open() {
    let dir = fast_tempdir();
    let segment = sealed_volume(dir.path());
    remove_checkpoints(dir.path());
    // Inside the first record's LBA field (after the 64-byte frame header).
    overwrite(&segment, V2_FIRST_FRAME + 64 + 20, &[0xee]);
    let err = Volume::open(
        dir.path(),
        kit::volume::key(1),
        &one_segment_options(IoMode::Direct),
    )
    .unwrap_err();
    assert!(
        matches!(err, VolumeError::Store(StoreError::Corrupt { .. })),
        "{err}"
    );
}

#[test]
fn a_damaged_sealed_block_found_in_replay_is_still_a_read_error() {
    let dir = fast_tempdir();
    let segment = sealed_volume(dir.path());
    remove_checkpoints(dir.path());
    overwrite(&segment, PAYLOAD + 5, &[0x00, 0x01, 0x02]); // block 0
    let volume = open(dir.path(), 4096);
    let mut buf = vec![0u8; BLOCK as usize];
    assert!(volume.read(0, &mut buf).is_err());
    volume.read(3 * BLOCK, &mut buf).unwrap();
    assert_eq!(buf, pattern(4 * BLOCK as usize, 7)[3 * BLOCK as usize..]);
}

/// Makes recovery replay every segment: removes every checkpoint.
fn remove_checkpoints(dir: &Path) {
    for entry in std::fs::read_dir(dir.join("checkpoints")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
}

/// Overwrites `bytes` of `file` at `offset`, as media damage would.
fn overwrite(file: &Path, offset: u64, bytes: &[u8]) {
    let file = OpenOptions::new().write(true).open(file).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}
