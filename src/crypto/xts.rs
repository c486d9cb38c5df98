//! AES-256-XTS (IEEE 1619) over whole buffers of data units, batched.
//!
//! Why not the `xts-mode` crate: it encrypts one 16-byte block per call, so the
//! AES pipeline never fills (1-2 GB/s here). We compute a batch of tweak values
//! first, XOR them in, hand the whole batch to `aes`'s `encrypt_blocks` (which
//! runs 8+ blocks in parallel with AES-NI/VAES), and XOR them out again. The
//! results are bit-identical to `xts-mode`, which the tests use as the oracle.
//!
//! Data units are a multiple of 16 bytes (512 and 4096 in practice), so
//! ciphertext stealing is never needed and not implemented.

use aes::Aes256;
use aes::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit, consts::U16};

use super::locked::scrub_stack;

/// Bytes in one AES block.
const AES_BLOCK_BYTES: usize = 16;

/// AES blocks per batch: 2 KiB of data plus 2 KiB of tweaks stay in L1, and
/// the batch is long enough for `encrypt_blocks` to run at full width.
const BATCH_BLOCKS: usize = 128;

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
}

impl XtsCipher {
    /// Expands a 64-byte XTS key: bytes 0..32 are K1 (data), 32..64 are K2
    /// (tweak), as in IEEE 1619.
    pub fn new(key: &[u8; 64]) -> Self {
        let (data_key, tweak_key) = key.split_at(32);
        let cipher = XtsCipher {
            data: Aes256::new_from_slice(data_key).expect("K1 is 32 bytes"),
            tweak: Aes256::new_from_slice(tweak_key).expect("K2 is 32 bytes"),
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
    }

    /// Decrypts `buf` in place; the inverse of [`XtsCipher::encrypt`].
    ///
    /// # Panics
    /// If `buf` is not a whole number of data units (a caller bug).
    pub fn decrypt(&self, buf: &mut [u8], unit: DataUnit, first: Tweak) {
        self.apply(buf, unit, first, Direction::Decrypt);
    }

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
        let mut tweak = first;
        for unit_blocks in blocks.chunks_exact_mut(blocks_per_unit) {
            self.apply_unit(unit_blocks, tweak, direction);
            tweak = tweak.add_units(1);
        }
    }

    fn apply_unit(&self, blocks: &mut [Block], tweak: Tweak, direction: Direction) {
        let mut t = Block::from(tweak.0.to_le_bytes());
        self.tweak.encrypt_block(&mut t);
        let mut t = u128::from_le_bytes(t.into());
        let mut tweaks = [0u128; BATCH_BLOCKS];
        for batch in blocks.chunks_mut(BATCH_BLOCKS) {
            let tweaks = &mut tweaks[..batch.len()];
            for (block, slot) in batch.iter_mut().zip(tweaks.iter_mut()) {
                *slot = t;
                xor_block(block, t);
                t = mul_alpha(t);
            }
            match direction {
                Direction::Encrypt => self.data.encrypt_blocks(batch),
                Direction::Decrypt => self.data.decrypt_blocks(batch),
            }
            for (block, slot) in batch.iter_mut().zip(tweaks.iter()) {
                xor_block(block, *slot);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Encrypt,
    Decrypt,
}

/// Multiplies a tweak by α (x) in GF(2^128) with the XTS polynomial
/// x^128 + x^7 + x^2 + x + 1, in IEEE 1619's little-endian bit order.
#[inline(always)]
fn mul_alpha(t: u128) -> u128 {
    let carry = (t >> 127) as u8;
    (t << 1) ^ u128::from(carry * 0x87)
}

#[inline(always)]
fn xor_block(block: &mut Block, t: u128) {
    let value = u128::from_le_bytes((*block).into()) ^ t;
    *block = Block::from(value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_restores_plaintext() {
        let key: [u8; 64] = std::array::from_fn(|i| i as u8);
        let cipher = XtsCipher::new(&key);
        let plain: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        let mut buf = plain.clone();
        cipher.encrypt(&mut buf, DataUnit::BYTES_4096, Tweak::for_block(3, 9));
        assert_ne!(buf, plain);
        cipher.decrypt(&mut buf, DataUnit::BYTES_4096, Tweak::for_block(3, 9));
        assert_eq!(buf, plain);
    }

    #[test]
    fn mul_alpha_carries_into_the_polynomial() {
        assert_eq!(mul_alpha(1), 2);
        assert_eq!(mul_alpha(1u128 << 127), 0x87);
    }
}
