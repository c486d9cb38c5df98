//! Block tags: the MAC of each block of ciphertext, kept in the last 12
//! bytes of its version 2 block table entry (docs/format.md, section 11.2).
//! A tag binds the key, the sequence number, the block number and the
//! ciphertext (`crypto::mac::MacKey::block_tag`), so a block whose bits
//! were flipped (with its CRC recomputed), or that was moved to another
//! block or given another sequence number, fails its check and is never
//! decrypted. Volumes with integrity `mac` tag every block they write and
//! check every block they read.

use crate::crypto::Tweak;
use crate::crypto::mac::{MacKey, TAG_BYTES};
use crate::store::V2_ENTRY_BYTES;

/// Where the tag sits in a version 2 table entry.
const TAG_AT: usize = V2_ENTRY_BYTES - TAG_BYTES;

/// The (sequence number, block number) a tweak stands for.
fn seq_and_block(tweak: Tweak) -> (u64, u64) {
    ((tweak.0 >> 64) as u64, tweak.0 as u64)
}

/// Writes the tag of each whole block of `blocks` (`block_bytes` each; the
/// first has tweak `first`) into its entry of `entries` (version 2 layout).
pub(super) fn tag_blocks(
    key: &MacKey,
    first: Tweak,
    blocks: &[u8],
    block_bytes: usize,
    entries: &mut [u8],
) {
    let (seq, lba) = seq_and_block(first);
    for (index, (block, entry)) in blocks
        .chunks_exact(block_bytes)
        .zip(entries.chunks_exact_mut(V2_ENTRY_BYTES))
        .enumerate()
    {
        entry[TAG_AT..].copy_from_slice(&key.block_tag(seq, lba + index as u64, block));
    }
}

/// The index of the first whole block of `blocks` whose tag differs from
/// its entry in `entries` (version 2 layout), or `None`.
pub(super) fn first_forged_block(
    key: &MacKey,
    first: Tweak,
    blocks: &[u8],
    block_bytes: usize,
    entries: &[u8],
) -> Option<usize> {
    let (seq, lba) = seq_and_block(first);
    blocks
        .chunks_exact(block_bytes)
        .zip(entries.chunks_exact(V2_ENTRY_BYTES))
        .enumerate()
        .position(|(index, (block, entry))| {
            let tag = key.block_tag(seq, lba + index as u64, block);
            // Compared without an early exit, as MACs are.
            let differences = tag
                .iter()
                .zip(&entry[TAG_AT..])
                .fold(0, |acc, (a, b)| acc | (a ^ b));
            differences != 0
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_block_or_position_fails_its_tag() {
        let key = MacKey::derive_locked(&[1; 64]).unwrap();
        let key = key.get();
        let blocks = vec![0x42u8; 3 * 512];
        let mut entries = vec![0u8; 3 * V2_ENTRY_BYTES];
        let first = Tweak::for_block(9, 100);
        tag_blocks(key, first, &blocks, 512, &mut entries);
        assert_eq!(first_forged_block(key, first, &blocks, 512, &entries), None);
        let mut flipped = blocks.clone();
        flipped[700] ^= 4;
        assert_eq!(
            first_forged_block(key, first, &flipped, 512, &entries),
            Some(1)
        );
        // The same blocks claimed for other block numbers or another seq.
        let moved = Tweak::for_block(9, 101);
        assert_eq!(
            first_forged_block(key, moved, &blocks, 512, &entries),
            Some(0)
        );
        let replayed = Tweak::for_block(10, 100);
        assert_eq!(
            first_forged_block(key, replayed, &blocks, 512, &entries),
            Some(0)
        );
    }
}
