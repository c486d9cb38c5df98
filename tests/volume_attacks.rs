//! Someone who can write a volume's files, but has no key, rearranges the
//! log: swaps two records, drops one from the middle, puts an older record
//! back in the place of a newer one, or splices in a segment of another
//! volume under the same key - every time recomputing each CRC that covers
//! the change, so the log stays valid to checksums. A volume with integrity
//! `mac` refuses to open, naming the segment and offset (its record MAC
//! chain breaks); a `crc` volume (created before MACs) opens, and for the
//! last three returns wrong data with status OK.
//!
//! The records attacked are in the unsealed tail of the log (the volume is
//! dropped without closing, as in a crash), the part that opening replays.
//! Sealed segments dropped or replaced are tests/volume_sealed_segments.rs.

mod kit;

use std::path::Path;

use kit::volume::{create_with, open, options, segment_files};
use lsvblk::store::{ALIGN, V2_FIRST_FRAME};
use lsvblk::volume::{Integrity, Volume, VolumeError};

const BLOCK: usize = 4096;

fn crc(bytes: &[u8]) -> [u8; 4] {
    crc32c::crc32c(bytes).to_le_bytes()
}

/// Where the frames of a version 2 segment file are: (offset, bytes).
fn frames(segment: &[u8]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut at = V2_FIRST_FRAME as usize;
    while at + ALIGN <= segment.len() && &segment[at..at + 4] == b"LSVF" {
        let bytes = u32::from_le_bytes(segment[at + 24..at + 28].try_into().unwrap()) as usize;
        found.push((at, bytes));
        at += bytes;
    }
    found
}

/// Makes the frame at `at` a frame of segment `segment_id` at that offset:
/// rewrites the header's segment id and offset, and its CRC.
fn restamp(segment: &mut [u8], at: usize, segment_id: u64) {
    segment[at + 8..at + 16].copy_from_slice(&segment_id.to_le_bytes());
    segment[at + 16..at + 24].copy_from_slice(&(at as u64).to_le_bytes());
    let header_crc = crc(&segment[at..at + 60]);
    segment[at + 60..at + 64].copy_from_slice(&header_crc);
}

/// A volume of `integrity` whose log holds, unsealed, three one-block
/// writes: block 0 = `old`, block 1 = `other`, block 0 = `new` (each its
/// own frame). Returns the three blocks.
fn three_writes(dir: &Path, integrity: Integrity) -> [Vec<u8>; 3] {
    let blocks = [1u8, 2, 3].map(|seed| kit::data::pattern(BLOCK, seed));
    let volume = create_with(dir, 1 << 20, BLOCK as u32, integrity);
    volume.write(0, &blocks[0]).unwrap();
    volume.write(BLOCK as u64, &blocks[1]).unwrap();
    volume.write(0, &blocks[2]).unwrap();
    volume.flush().unwrap();
    drop(volume);
    blocks
}

/// The only segment of the volume in `dir`, changed by `tamper`.
fn tamper_with_segment(dir: &Path, tamper: impl FnOnce(&mut Vec<u8>)) {
    let files = segment_files(dir);
    assert_eq!(files.len(), 1, "one segment");
    let mut bytes = std::fs::read(&files[0]).unwrap();
    assert_eq!(frames(&bytes).len(), 3, "three frames, no seal");
    tamper(&mut bytes);
    std::fs::write(&files[0], bytes).unwrap();
}

fn swap_first_two(segment: &mut [u8]) {
    let found = frames(segment);
    let ((a, a_len), (b, b_len)) = (found[0], found[1]);
    assert_eq!(a_len, b_len);
    let first = segment[a..a + a_len].to_vec();
    segment.copy_within(b..b + b_len, a);
    segment[b..b + b_len].copy_from_slice(&first);
    restamp(segment, a, 0);
    restamp(segment, b, 0);
}

fn drop_the_middle_one(segment: &mut Vec<u8>) {
    let found = frames(segment);
    let ((middle, _), (last, last_len)) = (found[1], found[2]);
    segment.copy_within(last..last + last_len, middle);
    segment.truncate(middle + last_len);
    restamp(segment, middle, 0);
}

fn older_record_over_the_newest(segment: &mut [u8]) {
    let found = frames(segment);
    let ((first, first_len), (last, last_len)) = (found[0], found[2]);
    assert_eq!(first_len, last_len);
    segment.copy_within(first..first + first_len, last);
    restamp(segment, last, 0);
}

/// Flips a bit of the newest write's block (in the last frame) and
/// recomputes every CRC; returns that frame's offset.
fn flip_a_bit_of_the_newest_block(segment: &mut [u8]) -> usize {
    let (last, _) = frames(segment)[2];
    let record = last + 64;
    let payload = u32::from_le_bytes(segment[record + 40..record + 44].try_into().unwrap());
    segment[last + payload as usize + 100] ^= 1;
    kit::forge::fix_segment_crcs(segment).unwrap();
    last
}

fn open_result(dir: &Path) -> Result<Volume, VolumeError> {
    Volume::open(dir, kit::volume::key(1), &options(BLOCK as u32))
}

fn read_block(volume: &Volume, block: u64) -> Vec<u8> {
    let mut back = vec![0u8; BLOCK];
    volume.read(block * BLOCK as u64, &mut back).unwrap();
    back
}

/// Opening the tampered mac volume fails, and says which segment, where,
/// and that a MAC failed.
fn assert_refused(dir: &Path) {
    let error = open_result(dir).expect_err("a rearranged log must not open");
    let text = error.to_string();
    assert!(
        text.contains("segment 0000000000000000 at offset") && text.contains("MAC mismatch"),
        "the refusal names the segment and the failed MAC: {text}"
    );
}

#[test]
fn two_records_swapped_refuse_the_open() {
    let dir = tempfile::tempdir().unwrap();
    three_writes(dir.path(), Integrity::Mac);
    tamper_with_segment(dir.path(), |s| swap_first_two(s));
    assert_refused(dir.path());
}

#[test]
fn two_records_swapped_go_unnoticed_by_a_crc_volume() {
    let dir = tempfile::tempdir().unwrap();
    three_writes(dir.path(), Integrity::Crc);
    tamper_with_segment(dir.path(), |s| swap_first_two(s));
    open_result(dir.path()).expect("CRCs alone cannot tell");
}

#[test]
fn a_record_dropped_from_the_middle_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    three_writes(dir.path(), Integrity::Mac);
    tamper_with_segment(dir.path(), drop_the_middle_one);
    assert_refused(dir.path());
}

#[test]
fn a_record_dropped_from_the_middle_loses_data_silently_on_a_crc_volume() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = three_writes(dir.path(), Integrity::Crc);
    tamper_with_segment(dir.path(), drop_the_middle_one);
    let volume = open_result(dir.path()).expect("CRCs alone cannot tell");
    assert_ne!(
        read_block(&volume, 1),
        blocks[1],
        "wrong data with status OK"
    );
}

#[test]
fn an_older_record_put_back_over_a_newer_one_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    three_writes(dir.path(), Integrity::Mac);
    tamper_with_segment(dir.path(), |s| older_record_over_the_newest(s));
    assert_refused(dir.path());
}

#[test]
fn an_older_record_put_back_fools_a_crc_volume() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = three_writes(dir.path(), Integrity::Crc);
    tamper_with_segment(dir.path(), |s| older_record_over_the_newest(s));
    let volume = open_result(dir.path()).expect("CRCs alone cannot tell");
    assert_eq!(read_block(&volume, 0), blocks[0], "the old data, status OK");
}

/// A volume (key(1)) with one sealed segment, and the unsealed segment of
/// another volume under the same key, which wrote `spliced` at block 5,
/// copied in as its next segment with every id rewritten to fit.
fn spliced_volume(dir: &Path, integrity: Integrity) -> Vec<u8> {
    let spliced = kit::data::pattern(BLOCK, 9);
    let other = tempfile::tempdir().unwrap();
    let foreign = create_with(other.path(), 1 << 20, BLOCK as u32, integrity);
    foreign.write(5 * BLOCK as u64, &spliced).unwrap();
    foreign.flush().unwrap();
    drop(foreign);
    let volume = create_with(dir, 1 << 20, BLOCK as u32, integrity);
    volume.write(0, &kit::data::pattern(BLOCK, 1)).unwrap();
    volume.close().unwrap();
    let ours = std::fs::read(&segment_files(dir)[0]).unwrap();
    let mut segment = std::fs::read(&segment_files(other.path())[0]).unwrap();
    // The segment header: id 1, this volume's id, its CRC.
    segment[8..16].copy_from_slice(&1u64.to_le_bytes());
    segment[16..32].copy_from_slice(&ours[16..32]);
    let header_crc = crc(&segment[..60]);
    segment[60..64].copy_from_slice(&header_crc);
    for (at, _) in frames(&segment) {
        restamp(&mut segment, at, 1);
    }
    std::fs::write(dir.join("segments/0000000000000001.seg"), segment).unwrap();
    spliced
}

#[test]
fn a_segment_spliced_from_another_volume_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    spliced_volume(dir.path(), Integrity::Mac);
    let error = open_result(dir.path()).expect_err("a foreign segment must not open");
    let text = error.to_string();
    assert!(
        text.contains("segment 0000000000000001 at offset 4096: record MAC mismatch"),
        "the refusal names the segment: {text}"
    );
}

#[test]
fn a_segment_spliced_from_another_volume_fools_a_crc_volume() {
    let dir = tempfile::tempdir().unwrap();
    let spliced = spliced_volume(dir.path(), Integrity::Crc);
    let volume = open_result(dir.path()).expect("CRCs alone cannot tell");
    assert_eq!(read_block(&volume, 5), spliced, "another volume's data");
}

#[test]
fn an_untouched_log_reopens_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = three_writes(dir.path(), Integrity::Mac);
    let volume = open(dir.path(), BLOCK as u32);
    assert_eq!(read_block(&volume, 0), blocks[2]);
    assert_eq!(read_block(&volume, 1), blocks[1]);
}

/// The block's CRC is in its table entry, which the record MAC covers: the
/// record MAC fails first; the tag check behind it refuses too.
#[test]
fn a_block_changed_in_the_unsealed_tail_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    three_writes(dir.path(), Integrity::Mac);
    let mut frame = 0;
    tamper_with_segment(dir.path(), |s| frame = flip_a_bit_of_the_newest_block(s));
    let error = open_result(dir.path()).expect_err("a forged block must not be replayed");
    let text = error.to_string();
    assert!(
        text.contains(&format!("segment 0000000000000000 at offset {frame}: "))
            && (text.contains("record MAC mismatch") || text.contains("tag does not match")),
        "the refusal names the segment, the frame and the failed check: {text}"
    );
}
