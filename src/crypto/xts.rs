//! AES-256-XTS (IEEE 1619) over whole buffers of data units, batched.
//!
//! Why not the `xts-mode` crate: it encrypts one 16-byte block per call, so the
//! AES pipeline never fills (about 0.35 GB/s here). We run the `aes` crate's
//! parallel backend (8 blocks at a time with AES-NI, 64 with VAES + AVX-512)
//! over chunks of 64 blocks: compute the chunk's tweaks, XOR them in, encrypt
//! the chunk in place, XOR them out again. The results are bit-identical to
//! `xts-mode`, which the tests use as the oracle, and to the IEEE 1619 vectors.
//!
//! Three things keep the XTS overhead small next to AES itself:
//! * the per-block tweaks T·α^j come from eight independent lanes stepped by
//!   α^8 in SIMD registers (module `tweaks`), not from one serial chain;
//! * the tweak values E(K2, i) of up to `UNIT_TWEAKS_BATCH` data units are
//!   encrypted in one call, so small units do not each wait out an AES
//!   latency;
//! * our loop runs inside `aes`'s backend closure (`encrypt_with_backend`), so
//!   it is compiled with the backend's CPU features and the round keys are
//!   broadcast once per call rather than once per chunk.
//!
//! Data units are a multiple of 16 bytes (512 and 4096 in practice), so
//! ciphertext stealing is never needed and not implemented.

mod tweaks;

use aes::Aes256;
use aes::cipher::{
    Array, BlockCipherDecBackend, BlockCipherDecClosure, BlockCipherDecrypt, BlockCipherEncBackend,
    BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, KeyInit, array::ArraySize,
    consts::U16,
};

use super::locked::{scrub_callee_frames, scrub_stack};
use tweaks::Generator;

/// Bytes in one AES block.
const AES_BLOCK_BYTES: usize = 16;

/// AES blocks per chunk: 1 KiB of data and 1 KiB of tweaks stay in L1, and the
/// chunk is a whole number of every backend's parallel width (8 for AES-NI,
/// 32 or 64 for VAES). Measured: 128 and 256 were slower, not faster.
const CHUNK_BLOCKS: usize = 64;

/// Data units whose tweak values E(K2, i) are encrypted in one AES call.
const UNIT_TWEAKS_BATCH: usize = 32;

type Block = Array<u8, U16>;

/// The size of one XTS data unit (one tweak per unit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataUnit(u32);

impl DataUnit {
    /// 512-byte data units (one sector).
    pub const BYTES_512: DataUnit = DataUnit(512);
    /// 4096-byte data units (one page; the default).
    pub const BYTES_4096: DataUnit = DataUnit(4096);

    /// A data unit of `bytes`, which must be a non-zero multiple of 16 no
    /// larger than 1 MiB.
    pub fn new(bytes: u32) -> Option<Self> {
        let valid = bytes > 0 && bytes.is_multiple_of(AES_BLOCK_BYTES as u32) && bytes <= 1 << 20;
        valid.then_some(DataUnit(bytes))
    }

    /// The unit's size in bytes.
    pub fn bytes(self) -> usize {
        self.0 as usize
    }
}

/// The 128-bit XTS tweak of one data unit, encoded little-endian as IEEE 1619
/// prescribes. Consecutive units of one buffer use consecutive tweaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tweak(pub u128);

impl Tweak {
    /// The tweak lsvblk uses for `block` written under sequence number `seq`:
    /// the block number in the low 64 bits, the sequence number in the high 64.
    /// Sequence numbers never repeat under one key, so neither do tweaks.
    pub fn for_block(seq: u64, block: u64) -> Self {
        Tweak((u128::from(seq) << 64) | u128::from(block))
    }

    /// The tweak `units` data units after this one.
    pub fn add_units(self, units: u64) -> Self {
        Tweak(self.0.wrapping_add(u128::from(units)))
    }
}

/// An AES-256-XTS key schedule: data key (K1) and tweak key (K2).
///
/// Holds expanded key material: keep it in locked memory
/// (`LockedBox<XtsCipher>`); the `aes` crate zeroes schedules on drop.
pub struct XtsCipher {
    data: Aes256,
    tweak: Aes256,
    generator: Generator,
}

impl XtsCipher {
    /// Expands a 64-byte XTS key: bytes 0..32 are K1 (data), 32..64 are K2
    /// (tweak), as in IEEE 1619.
    pub fn new(key: &[u8; 64]) -> Self {
        let (data_key, tweak_key) = key.split_at(32);
        let cipher = XtsCipher {
            data: Aes256::new_from_slice(data_key).expect("K1 is 32 bytes"),
            tweak: Aes256::new_from_slice(tweak_key).expect("K2 is 32 bytes"),
            generator: Generator::detect(),
        };
        // `Aes256::new` built the schedules on our stack before moving them.
        scrub_stack();
        cipher
    }

    /// Encrypts `buf` in place: consecutive data units of `unit` bytes, the
    /// first with tweak `first`, the next with `first + 1`, and so on.
    ///
    /// # Panics
    /// If `buf` is not a whole number of data units (a caller bug).
    pub fn encrypt(&self, buf: &mut [u8], unit: DataUnit, first: Tweak) {
        self.apply(buf, unit, first, Direction::Encrypt);
        // `apply` and the AES backend held round keys in their frames (the
        // backend broadcasts them to vector registers and spills some):
        // wipe them now, not whenever this thread's stack is next used.
        scrub_callee_frames();
    }

    /// Decrypts `buf` in place; the inverse of [`XtsCipher::encrypt`].
    ///
    /// # Panics
    /// If `buf` is not a whole number of data units (a caller bug).
    pub fn decrypt(&self, buf: &mut [u8], unit: DataUnit, first: Tweak) {
        self.apply(buf, unit, first, Direction::Decrypt);
        // As in `encrypt` (decryption's last round key is the key's first
        // 16 bytes).
        scrub_callee_frames();
    }

    /// Not inlined, so that the scrub after it covers its own frame too.
    #[inline(never)]
    fn apply(&self, buf: &mut [u8], unit: DataUnit, first: Tweak, direction: Direction) {
        assert!(
            buf.len().is_multiple_of(unit.bytes()),
            "buffer of {} bytes is not a whole number of {}-byte data units",
            buf.len(),
            unit.bytes()
        );
        let (blocks, rest) = Block::slice_as_chunks_mut(buf);
        debug_assert!(rest.is_empty());
        let blocks_per_unit = unit.bytes() / AES_BLOCK_BYTES;
        let mut encrypted_tweaks = [Block::default(); UNIT_TWEAKS_BATCH];
        let mut next = first;
        for group in blocks.chunks_mut(blocks_per_unit * UNIT_TWEAKS_BATCH) {
            let unit_tweaks = &mut encrypted_tweaks[..group.len() / blocks_per_unit];
            for slot in unit_tweaks.iter_mut() {
                *slot = Block::from(next.0.to_le_bytes());
                next = next.add_units(1);
            }
            // IEEE 1619: the first block of unit i is masked with E(K2, i).
            self.tweak.encrypt_blocks(unit_tweaks);
            let pass = Pass {
                blocks: group,
                unit_tweaks,
                blocks_per_unit,
                generator: self.generator,
            };
            match direction {
                Direction::Encrypt => self.data.encrypt_with_backend(EncryptPass(pass)),
                Direction::Decrypt => self.data.decrypt_with_backend(DecryptPass(pass)),
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Encrypt,
    Decrypt,
}

/// One pass of XTS over whole data units whose tweak values are already
/// encrypted, run by an AES backend.
struct Pass<'a> {
    blocks: &'a mut [Block],
    /// E(K2, i) for each data unit in `blocks`, in order.
    unit_tweaks: &'a [Block],
    blocks_per_unit: usize,
    generator: Generator,
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
            generator: self.generator,
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
    generator: Generator,
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
            self.next = self
                .generator
                .run(self.next, &mut words[filled..filled + run]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use xts_mode::{Xts128, get_tweak_default};

    fn key() -> [u8; 64] {
        std::array::from_fn(|i| (i as u8).wrapping_mul(29).wrapping_add(5))
    }

    #[test]
    fn round_trip_restores_plaintext() {
        let cipher = XtsCipher::new(&key());
        let plain: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        let mut buf = plain.clone();
        cipher.encrypt(&mut buf, DataUnit::BYTES_4096, Tweak::for_block(3, 9));
        assert_ne!(buf, plain);
        cipher.decrypt(&mut buf, DataUnit::BYTES_4096, Tweak::for_block(3, 9));
        assert_eq!(buf, plain);
    }

    /// Every generator this CPU can run, in a cipher of its own.
    fn ciphers() -> Vec<XtsCipher> {
        let mut portable = XtsCipher::new(&key());
        portable.generator = Generator::Portable;
        let detected = XtsCipher::new(&key());
        vec![portable, detected]
    }

    #[test]
    fn every_tweak_generator_matches_xts_mode() {
        let key = key();
        let oracle = Xts128::new(
            Aes256::new_from_slice(&key[..32]).unwrap(),
            Aes256::new_from_slice(&key[32..]).unwrap(),
        );
        // Units that end mid-chunk, span chunks, and are smaller than a lane
        // group; counts that leave a partial group of encrypted tweaks.
        for unit_bytes in [16usize, 48, 112, 512, 1040, 4096] {
            for units in [1usize, 3, 33, 70] {
                let unit = DataUnit::new(unit_bytes as u32).unwrap();
                let plain: Vec<u8> = (0..unit_bytes * units).map(|i| (i * 31) as u8).collect();
                let mut expected = plain.clone();
                for (index, chunk) in expected.chunks_exact_mut(unit_bytes).enumerate() {
                    oracle.encrypt_sector(
                        chunk,
                        get_tweak_default((u128::MAX - 5).wrapping_add(index as u128)),
                    );
                }
                for cipher in ciphers() {
                    let context = format!("{:?} unit {unit_bytes} x {units}", cipher.generator);
                    let mut buf = plain.clone();
                    cipher.encrypt(&mut buf, unit, Tweak(u128::MAX - 5));
                    assert!(buf == expected, "{context}");
                    cipher.decrypt(&mut buf, unit, Tweak(u128::MAX - 5));
                    assert!(buf == plain, "{context}");
                }
            }
        }
    }
}
