//! AES-256-XTS on the `aes` crate, for CPUs our own kernels do not cover
//! (no AES-NI, or not x86-64): the crate's backend (bit-sliced software,
//! ARMv8 AES ...) runs over chunks of 64 blocks, and around each backend
//! call we compute the chunk's tweaks in lanes (module `tweaks`), XOR them
//! in, and XOR them out again. Still batched, so a backend that works on
//! several blocks at once gets them.

use aes::Aes256;
use aes::cipher::{
    Array, BlockCipherDecBackend, BlockCipherDecClosure, BlockCipherDecrypt, BlockCipherEncBackend,
    BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, KeyInit, array::ArraySize,
    consts::U16,
};

use super::Direction;
use super::tweaks;

/// Bytes in one AES block.
const AES_BLOCK_BYTES: usize = 16;

/// AES blocks per chunk: 1 KiB of data and 1 KiB of tweaks stay in L1.
const CHUNK_BLOCKS: usize = 64;

/// Data units whose tweak values E(K2, i) are encrypted in one AES call.
const UNIT_TWEAKS_BATCH: usize = 32;

type Block = Array<u8, U16>;

/// The two AES-256 schedules of an XTS key, as the `aes` crate keeps them
/// (it zeroes them on drop).
pub(super) struct Keys {
    data: Aes256,
    tweak: Aes256,
}

impl Keys {
    /// Expands K1 and K2 (32 bytes each).
    pub(super) fn new(data_key: &[u8], tweak_key: &[u8]) -> Self {
        Keys {
            data: Aes256::new_from_slice(data_key).expect("K1 is 32 bytes"),
            tweak: Aes256::new_from_slice(tweak_key).expect("K2 is 32 bytes"),
        }
    }

    /// XTS over `buf`, whole units of `unit_bytes`, the first with tweak
    /// number `first`.
    pub(super) fn xts(&self, buf: &mut [u8], unit_bytes: usize, first: u128, direction: Direction) {
        let (blocks, rest) = Block::slice_as_chunks_mut(buf);
        debug_assert!(rest.is_empty());
        let blocks_per_unit = unit_bytes / AES_BLOCK_BYTES;
        let mut encrypted_tweaks = [Block::default(); UNIT_TWEAKS_BATCH];
        let mut next = first;
        for group in blocks.chunks_mut(blocks_per_unit * UNIT_TWEAKS_BATCH) {
            let unit_tweaks = &mut encrypted_tweaks[..group.len() / blocks_per_unit];
            for slot in unit_tweaks.iter_mut() {
                *slot = Block::from(next.to_le_bytes());
                next = next.wrapping_add(1);
            }
            // IEEE 1619: the first block of unit i is masked with E(K2, i).
            self.tweak.encrypt_blocks(unit_tweaks);
            let pass = Pass {
                blocks: group,
                unit_tweaks,
                blocks_per_unit,
            };
            match direction {
                Direction::Encrypt => self.data.encrypt_with_backend(EncryptPass(pass)),
                Direction::Decrypt => self.data.decrypt_with_backend(DecryptPass(pass)),
            }
        }
    }

    /// AES-256-ECB encryption of `blocks` under K1.
    pub(super) fn ecb_encrypt(&self, blocks: &mut [u8]) {
        let (blocks, rest) = Block::slice_as_chunks_mut(blocks);
        debug_assert!(rest.is_empty());
        self.data.encrypt_blocks(blocks);
    }
}

/// One pass of XTS over whole data units whose tweak values are already
/// encrypted, run by an AES backend.
struct Pass<'a> {
    blocks: &'a mut [Block],
    /// E(K2, i) for each data unit in `blocks`, in order.
    unit_tweaks: &'a [Block],
    blocks_per_unit: usize,
}

/// [`Pass`] as an encryption closure for `encrypt_with_backend`.
struct EncryptPass<'a>(Pass<'a>);

/// [`Pass`] as a decryption closure for `decrypt_with_backend`.
struct DecryptPass<'a>(Pass<'a>);

impl BlockSizeUser for EncryptPass<'_> {
    type BlockSize = U16;
}

impl BlockSizeUser for DecryptPass<'_> {
    type BlockSize = U16;
}

impl BlockCipherEncClosure for EncryptPass<'_> {
    // Inlined into the backend's `#[target_feature]` function, so our tweak
    // and XOR loops are compiled for the same CPU features as the AES code.
    #[inline(always)]
    fn call<B: BlockCipherEncBackend<BlockSize = U16>>(self, backend: &B) {
        self.0.run::<B::ParBlocksSize>(
            |blocks| backend.encrypt_par_blocks_inplace(blocks),
            |blocks| backend.encrypt_tail_blocks_inplace(blocks),
        );
    }
}

impl BlockCipherDecClosure for DecryptPass<'_> {
    #[inline(always)]
    fn call<B: BlockCipherDecBackend<BlockSize = U16>>(self, backend: &B) {
        self.0.run::<B::ParBlocksSize>(
            |blocks| backend.decrypt_par_blocks_inplace(blocks),
            |blocks| backend.decrypt_tail_blocks_inplace(blocks),
        );
    }
}

impl Pass<'_> {
    /// Runs XTS over the blocks, chunk by chunk: `parallel` transforms
    /// `P` blocks at once, `tail` fewer than `P`.
    #[inline(always)]
    fn run<P: ArraySize>(
        self,
        mut parallel: impl FnMut(&mut Array<Block, P>),
        mut tail: impl FnMut(&mut [Block]),
    ) {
        let mut stream = TweakStream {
            unit_tweaks: self.unit_tweaks.iter(),
            blocks_per_unit: self.blocks_per_unit,
            blocks_left_in_unit: 0,
            next: 0,
        };
        let mut words = [0u64; 2 * CHUNK_BLOCKS];
        for chunk in self.blocks.chunks_mut(CHUNK_BLOCKS) {
            let words = &mut words[..2 * chunk.len()];
            stream.fill(words);
            xor_words(chunk, words);
            let (batches, rest) = Array::<Block, P>::slice_as_chunks_mut(chunk);
            for batch in batches {
                parallel(batch);
            }
            if !rest.is_empty() {
                tail(rest);
            }
            xor_words(chunk, words);
        }
        debug_assert!(stream.unit_tweaks.next().is_none());
    }
}

/// The per-block tweaks of consecutive data units, produced a chunk at a time.
struct TweakStream<'a> {
    unit_tweaks: std::slice::Iter<'a, Block>,
    blocks_per_unit: usize,
    blocks_left_in_unit: usize,
    /// The tweak of the next block, if `blocks_left_in_unit > 0`.
    next: u128,
}

impl TweakStream<'_> {
    /// Writes the tweaks of the next `words.len() / 2` blocks as
    /// little-endian (low, high) word pairs.
    #[inline(always)]
    fn fill(&mut self, words: &mut [u64]) {
        let mut filled = 0;
        while filled < words.len() {
            if self.blocks_left_in_unit == 0 {
                let encrypted = self.unit_tweaks.next().expect("one tweak per data unit");
                self.next = u128::from_le_bytes((*encrypted).into());
                self.blocks_left_in_unit = self.blocks_per_unit;
            }
            let run = (words.len() - filled).min(2 * self.blocks_left_in_unit);
            self.next = tweaks::run(self.next, &mut words[filled..filled + run]);
            filled += run;
            self.blocks_left_in_unit -= run / 2;
        }
    }
}

/// XORs each block with its tweak, given as little-endian word pairs.
#[inline(always)]
fn xor_words(blocks: &mut [Block], words: &[u64]) {
    let bytes = Array::slice_as_flattened_mut(blocks);
    debug_assert_eq!(bytes.len(), 8 * words.len());
    for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
        let value = u64::from_le_bytes((&*chunk).try_into().expect("8 bytes")) ^ word;
        chunk.copy_from_slice(&value.to_le_bytes());
    }
}
