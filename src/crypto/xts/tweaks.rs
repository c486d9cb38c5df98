//! Runs of consecutive XTS tweaks: T, T·α, T·α², … for the blocks of one
//! data unit, written as little-endian 64-bit words (block i's tweak is
//! `words[2i]` low, `words[2i + 1]` high).
//!
//! Multiplying by α one block at a time is a serial chain of dependent
//! shifts, and it was most of the cost of XTS on top of AES. Both generators
//! here keep eight independent lanes instead (T·α⁰ … T·α⁷) and step each lane
//! by α⁸, which vectorises. The AVX-512 one does it in two ZMM registers with
//! intrinsics; the portable one is plain Rust that LLVM vectorises as it can.
//! Both are checked against the one-block-at-a-time definition below.

/// Independent lanes: tweaks of blocks i, i+1, …, i+7 advance together.
const LANES: usize = 8;

/// Which tweak generator this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Generator {
    /// Plain Rust, any CPU.
    Portable,
    /// AVX-512F intrinsics; only built when the CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Generator {
    /// The fastest generator this CPU supports (detected once, then cached
    /// by the standard library).
    pub(super) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Generator::Avx512;
        }
        Generator::Portable
    }

    /// Writes the tweaks `t·α^i` for `i in 0..out.len() / 2` into `out` and
    /// returns the next one, `t·α^(out.len() / 2)`.
    ///
    /// # Panics
    /// If `out` holds an odd number of words.
    #[inline(always)]
    pub(super) fn run(self, t: u128, out: &mut [u64]) -> u128 {
        assert!(out.len().is_multiple_of(2), "tweaks are two words each");
        match self {
            Generator::Portable => portable::run(t, out),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx512` is only made by `detect` after it saw AVX-512F
            // on this CPU (and by tests that check the same first).
            Generator::Avx512 => unsafe { avx512::run(t, out) },
        }
    }
}

/// Multiplies a tweak by α (x) in GF(2^128) with the XTS polynomial
/// x^128 + x^7 + x^2 + x + 1, in IEEE 1619's little-endian bit order. The
/// definition the lane generators are tested against.
#[cfg(test)]
fn mul_alpha(t: u128) -> u128 {
    let carry = (t >> 127) as u8;
    (t << 1) ^ u128::from(carry * 0x87)
}

/// The 128-bit value of words `(lo, hi)`.
#[inline(always)]
fn join(lo: u64, hi: u64) -> u128 {
    (u128::from(hi) << 64) | u128::from(lo)
}

mod portable {
    use super::{LANES, join};

    /// `(lo, hi)` times x^k for `k` in 0..=8. Bits shifted out of the top
    /// (at most 8: a polynomial c of degree < 8) are folded back in as
    /// c·(x^7 + x^2 + x + 1), which also fits in the low word.
    #[inline(always)]
    fn times_x_pow(lo: u64, hi: u64, k: u32) -> (u64, u64) {
        // `>> 1 >> (63 - k)` is `>> (64 - k)`, and 0 rather than an overflow
        // when k is 0.
        let carry_lo = (lo >> 1) >> (63 - k);
        let carry_hi = (hi >> 1) >> (63 - k);
        let folded = carry_hi ^ (carry_hi << 1) ^ (carry_hi << 2) ^ (carry_hi << 7);
        ((lo << k) ^ folded, (hi << k) | carry_lo)
    }

    #[inline(always)]
    pub(super) fn run(t: u128, out: &mut [u64]) -> u128 {
        // Lane k holds the tweak of block 8j + k as (lo[k], hi[k]).
        let (mut lo, mut hi) = ([0u64; LANES], [0u64; LANES]);
        for k in 0..LANES {
            (lo[k], hi[k]) = times_x_pow(t as u64, (t >> 64) as u64, k as u32);
        }
        let (groups, rest) = out.as_chunks_mut::<{ 2 * LANES }>();
        for group in groups {
            for k in 0..LANES {
                group[2 * k] = lo[k];
                group[2 * k + 1] = hi[k];
            }
            for k in 0..LANES {
                (lo[k], hi[k]) = times_x_pow(lo[k], hi[k], LANES as u32);
            }
        }
        let blocks_left = rest.len() / 2;
        for k in 0..blocks_left {
            rest[2 * k] = lo[k];
            rest[2 * k + 1] = hi[k];
        }
        join(lo[blocks_left], hi[blocks_left])
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m512i, _MM_PERM_BADC, _mm512_maskz_mov_epi64, _mm512_set_epi64, _mm512_shuffle_epi32,
        _mm512_slli_epi64, _mm512_sllv_epi64, _mm512_srli_epi64, _mm512_srlv_epi64,
        _mm512_storeu_si512, _mm512_xor_si512,
    };

    use super::{LANES, join};

    /// Words per register: four tweaks, each (lo, hi) in one 128-bit lane.
    const WORDS: usize = 8;

    /// Mask of the low word of each tweak in a register.
    const LOW_WORDS: u8 = 0b0101_0101;

    /// Finishes multiplying four tweaks by x^k: `shifted` holds each word
    /// shifted left by k, `carry` for each word the k bits that move into it
    /// from the tweak's other word (that word's top k bits, shifted down).
    /// Carries into a low word came out of the top of the tweak and are
    /// folded back in as c·(x^7 + x^2 + x + 1); carries into a high word are
    /// just the bits that crossed over from the low word.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn times_x_pow(shifted: __m512i, carry: __m512i) -> __m512i {
        let wrapped = _mm512_maskz_mov_epi64(LOW_WORDS, carry);
        let folded = _mm512_xor_si512(
            _mm512_xor_si512(
                _mm512_slli_epi64::<1>(wrapped),
                _mm512_slli_epi64::<2>(wrapped),
            ),
            _mm512_slli_epi64::<7>(wrapped),
        );
        _mm512_xor_si512(_mm512_xor_si512(shifted, carry), folded)
    }

    /// Each of the four tweaks in `v` times x^8.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn times_x8(v: __m512i) -> __m512i {
        // Swap the two words of each tweak, then keep each word's top byte.
        let swapped = _mm512_shuffle_epi32::<_MM_PERM_BADC>(v);
        times_x_pow(_mm512_slli_epi64::<8>(v), _mm512_srli_epi64::<56>(swapped))
    }

    /// t·x^k, t·x^(k+1), t·x^(k+2), t·x^(k+3) for k = `first_power`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn four_from(t: u128, first_power: i64) -> __m512i {
        let (lo, hi) = (t as u64 as i64, (t >> 64) as u64 as i64);
        let words = _mm512_set_epi64(hi, lo, hi, lo, hi, lo, hi, lo);
        let swapped = _mm512_set_epi64(lo, hi, lo, hi, lo, hi, lo, hi);
        let k = first_power;
        let powers = _mm512_set_epi64(k + 3, k + 3, k + 2, k + 2, k + 1, k + 1, k, k);
        let from_64 = _mm512_set_epi64(
            61 - k,
            61 - k,
            62 - k,
            62 - k,
            63 - k,
            63 - k,
            64 - k,
            64 - k,
        );
        // A variable shift by 64 gives 0, which is the carry for k = 0.
        times_x_pow(
            _mm512_sllv_epi64(words, powers),
            _mm512_srlv_epi64(swapped, from_64),
        )
    }

    /// Stores the eight words of `v` into `out`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn store(out: &mut [u64; WORDS], v: __m512i) {
        // SAFETY: `out` is 64 writable bytes that we borrow exclusively, and
        // this store has no alignment requirement.
        unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast::<__m512i>(), v) }
    }

    /// [`super::Generator::run`] on AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn run(t: u128, out: &mut [u64]) -> u128 {
        // Two registers of four tweaks are the eight lanes.
        const _: () = assert!(2 * (WORDS / 2) == LANES);
        // Blocks 8j..8j+4 in `low`, 8j+4..8j+8 in `high`.
        let mut low = four_from(t, 0);
        let mut high = four_from(t, 4);
        let (groups, rest) = out.as_chunks_mut::<WORDS>();
        let mut pairs = groups.chunks_exact_mut(2);
        for pair in &mut pairs {
            store(&mut pair[0], low);
            store(&mut pair[1], high);
            low = times_x8(low);
            high = times_x8(high);
        }
        // Fewer than 8 tweaks remain; write them and read the next one from
        // a copy of the lanes.
        let mut lanes = [[0u64; WORDS]; 2];
        store(&mut lanes[0], low);
        store(&mut lanes[1], high);
        let lanes = lanes.as_flattened();
        let tail = pairs.into_remainder().as_flattened_mut();
        let rest_len = tail.len() + rest.len();
        tail.copy_from_slice(&lanes[..tail.len()]);
        rest.copy_from_slice(&lanes[tail.len()..rest_len]);
        join(lanes[rest_len], lanes[rest_len + 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tweaks the slow way: one multiplication by α per block.
    fn reference(t: u128, blocks: usize) -> (Vec<u64>, u128) {
        let mut words = Vec::with_capacity(2 * blocks);
        let mut x = t;
        for _ in 0..blocks {
            words.push(x as u64);
            words.push((x >> 64) as u64);
            x = mul_alpha(x);
        }
        (words, x)
    }

    fn generators() -> Vec<Generator> {
        let mut all = vec![Generator::Portable];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            all.push(Generator::Avx512);
        }
        all
    }

    #[test]
    fn mul_alpha_carries_into_the_polynomial() {
        assert_eq!(mul_alpha(1), 2);
        assert_eq!(mul_alpha(1u128 << 127), 0x87);
        assert_eq!(mul_alpha(u128::MAX), (u128::MAX << 1) ^ 0x87);
    }

    #[test]
    fn lane_generators_match_one_block_at_a_time() {
        let starts = [
            0,
            1,
            u128::MAX,
            1u128 << 127,
            (1u128 << 127) | 1,
            0x8000_0000_0000_0000,
            0xff00_0000_0000_0000_ff00_0000_0000_0000,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ];
        for generator in generators() {
            for t in starts {
                for blocks in 0..=40 {
                    let (expected, next_expected) = reference(t, blocks);
                    let mut words = vec![0u64; 2 * blocks];
                    let next = generator.run(t, &mut words);
                    assert_eq!(words, expected, "{generator:?} t={t:#x} blocks={blocks}");
                    assert_eq!(
                        next, next_expected,
                        "{generator:?} t={t:#x} blocks={blocks}"
                    );
                }
            }
        }
    }

    #[test]
    fn lane_generators_match_over_a_long_run() {
        // 300 blocks: many steps of x^8, so every bit crosses both words and
        // wraps through the polynomial.
        let t = 0xdead_beef_0000_0001_8000_0000_0000_00ff;
        let (expected, next_expected) = reference(t, 300);
        for generator in generators() {
            let mut words = vec![0u64; 600];
            assert_eq!(generator.run(t, &mut words), next_expected);
            assert_eq!(words, expected, "{generator:?}");
        }
    }
}
