//! What the disk must never show: plaintext, repeated ciphertext for repeated
//! data, or the key.

mod kit;

use kit::dirs::files_with_contents;
use kit::volume::{create, segment_files};
use lsvblk::store::{ALIGN, V2_FIRST_FRAME};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_file_of_the_volume_holds_the_plaintext_pattern_or_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path(), 4 << 20, 4096);
    let marker = b"LSVBLK-PLAINTEXT-MARKER-0123456789abcdef";
    let data: Vec<u8> = marker.iter().copied().cycle().take(1 << 20).collect();
    volume.write(0, &data).unwrap();
    volume.write(2 << 20, &data[..8192]).unwrap();
    volume.write(3 << 20, &data[..1024]).unwrap(); // read-modify-write path
    volume.flush().unwrap();
    volume.close().unwrap();
    let key = kit::volume::key(1);
    let files = files_with_contents(dir.path());
    assert!(
        files.len() >= 3,
        "segments, checkpoint and superblock were scanned"
    );
    for (path, bytes) in files {
        assert!(
            !contains(&bytes, &marker[..16]),
            "{} holds plaintext",
            path.display()
        );
        assert!(
            !contains(&bytes, &key.expose_secret()[..16]),
            "{} holds key bytes",
            path.display()
        );
        assert!(
            !contains(&bytes, &key.expose_secret()[32..48]),
            "{} holds key bytes",
            path.display()
        );
    }
}

#[test]
fn rewriting_a_block_with_the_same_data_gives_different_ciphertext() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path(), 1 << 20, 4096);
    let block = kit::data::pattern(4096, 42);
    volume.write(8192, &block).unwrap();
    volume.write(8192, &block).unwrap();
    volume.flush().unwrap();
    let segment = std::fs::read(segment_files(dir.path()).pop().unwrap()).unwrap();
    // Layout (docs/format.md): a 4 KiB segment header block, then one frame
    // per write: a 4 KiB meta area (frame header, record header, table),
    // then the block's ciphertext.
    let frame_bytes = 2 * ALIGN;
    let first = V2_FIRST_FRAME as usize + ALIGN;
    let second = first + frame_bytes;
    assert_eq!(&segment[first - ALIGN..first - ALIGN + 4], b"LSVF");
    assert_eq!(&segment[second - ALIGN..second - ALIGN + 4], b"LSVF");
    let (a, b) = (
        &segment[first..first + 4096],
        &segment[second..second + 4096],
    );
    assert_ne!(a, b, "same data, same block: ciphertexts must differ");
    // Not just different somewhere: no 16-byte AES block in common.
    for (x, y) in a.chunks(16).zip(b.chunks(16)) {
        assert_ne!(x, y);
    }
    let mut back = vec![0u8; 4096];
    volume.read(8192, &mut back).unwrap();
    assert_eq!(back, block);
}
