//! Someone who can write a volume's files, but has no key, changes what is
//! stored and recomputes every CRC that covers the change. A volume with
//! integrity `mac` must then answer with an I/O error, never with wrong
//! data; a `crc` volume (created before MACs) is shown to be fooled, which
//! is why MACs exist.

mod kit;

use std::path::Path;

use kit::volume::{create_with, open, segment_files};
use lsvblk::store::{ALIGN, V2_FIRST_FRAME};
use lsvblk::volume::{Integrity, VolumeError};

/// The first frame of a fresh volume's only segment, written by one 4 KiB
/// write at block 0 (docs/format.md, section 11.2): the frame header at
/// `FRAME`, the record header right after it, its one table entry after
/// that, and the block's ciphertext at the next 4 KiB boundary.
const FRAME: usize = V2_FIRST_FRAME as usize;
const TABLE_ENTRY: usize = FRAME + 64 + 64;
const META_BYTES: usize = 64 + 64 + 16;
const PAYLOAD: usize = FRAME + ALIGN;

fn crc(bytes: &[u8]) -> [u8; 4] {
    crc32c::crc32c(bytes).to_le_bytes()
}

/// Flips a bit of the block's ciphertext and recomputes the block's CRC,
/// the frame's meta CRC and the frame header's CRC.
fn flip_ciphertext_and_fix_crcs(segment: &Path) {
    let mut bytes = std::fs::read(segment).unwrap();
    assert_eq!(&bytes[FRAME..FRAME + 4], b"LSVF");
    bytes[PAYLOAD + 100] ^= 0x08;
    let block_crc = crc(&bytes[PAYLOAD..PAYLOAD + 4096]);
    bytes[TABLE_ENTRY..TABLE_ENTRY + 4].copy_from_slice(&block_crc);
    let meta_crc = crc(&bytes[FRAME + 64..FRAME + META_BYTES]);
    bytes[FRAME + 56..FRAME + 60].copy_from_slice(&meta_crc);
    let header_crc = crc(&bytes[FRAME..FRAME + 60]);
    bytes[FRAME + 60..FRAME + 64].copy_from_slice(&header_crc);
    std::fs::write(segment, bytes).unwrap();
}

/// Writes one block to a new volume of `integrity`, tampers with it, and
/// reads it back after a reopen.
fn read_after_flipped_ciphertext(integrity: Integrity) -> (Vec<u8>, Result<Vec<u8>, VolumeError>) {
    let dir = tempfile::tempdir().unwrap();
    let block = kit::data::pattern(4096, 7);
    let volume = create_with(dir.path(), 1 << 20, 4096, integrity);
    volume.write(0, &block).unwrap();
    volume.close().unwrap();
    let segment = segment_files(dir.path()).into_iter().next().unwrap();
    flip_ciphertext_and_fix_crcs(&segment);
    let volume = open(dir.path(), 4096);
    let mut back = vec![0u8; 4096];
    let read = volume.read(0, &mut back).map(|()| back);
    (block, read)
}

#[test]
fn flipped_ciphertext_with_its_crcs_recomputed_is_an_error_with_macs() {
    let (_, read) = read_after_flipped_ciphertext(Integrity::Mac);
    let error = read.expect_err("a forged block must not be returned");
    assert!(
        error.to_string().contains("block tag mismatch"),
        "the error says why: {error}"
    );
}

#[test]
fn flipped_ciphertext_with_its_crcs_recomputed_fools_a_crc_volume() {
    let (block, read) = read_after_flipped_ciphertext(Integrity::Crc);
    let back = read.expect("CRCs alone cannot tell");
    assert_ne!(back, block, "wrong data with status OK: what MACs prevent");
}
