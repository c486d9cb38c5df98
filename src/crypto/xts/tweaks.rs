//! Runs of consecutive XTS tweaks: T, T·α, T·α², … for the blocks of one
//! data unit, written as little-endian 64-bit words (block i's tweak is
//! `words[2i]` low, `words[2i + 1]` high).
//!
//! Multiplying by α one block at a time is a serial chain of dependent
//! shifts. This generator keeps eight independent lanes instead (T·α⁰ …
//! T·α⁷) and steps each lane by α⁸: plain Rust that LLVM vectorises as it
//! can, for the portable XTS path (the x86-64 kernels make their tweaks in
//! their own vector registers, module `lanes`). Checked against the
//! one-block-at-a-time definition below.

/// Independent lanes: tweaks of blocks i, i+1, …, i+7 advance together.
const LANES: usize = 8;

/// Writes the tweaks `t·α^i` for `i in 0..out.len() / 2` into `out` and
/// returns the next one, `t·α^(out.len() / 2)`.
///
/// # Panics
/// If `out` holds an odd number of words.
#[inline(always)]
pub(super) fn run(t: u128, out: &mut [u64]) -> u128 {
    assert!(out.len().is_multiple_of(2), "tweaks are two words each");
    portable::run(t, out)
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

    #[test]
    fn mul_alpha_carries_into_the_polynomial() {
        assert_eq!(mul_alpha(1), 2);
        assert_eq!(mul_alpha(1u128 << 127), 0x87);
        assert_eq!(mul_alpha(u128::MAX), (u128::MAX << 1) ^ 0x87);
    }

    #[test]
    fn lanes_match_one_block_at_a_time() {
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
        for t in starts {
            for blocks in 0..=40 {
                let (expected, next_expected) = reference(t, blocks);
                let mut words = vec![0u64; 2 * blocks];
                let next = run(t, &mut words);
                assert_eq!(words, expected, "t={t:#x} blocks={blocks}");
                assert_eq!(next, next_expected, "t={t:#x} blocks={blocks}");
            }
        }
    }

    #[test]
    fn lanes_match_over_a_long_run() {
        // 300 blocks: many steps of x^8, so every bit crosses both words and
        // wraps through the polynomial.
        let t = 0xdead_beef_0000_0001_8000_0000_0000_00ff;
        let (expected, next_expected) = reference(t, 300);
        let mut words = vec![0u64; 600];
        assert_eq!(run(t, &mut words), next_expected);
        assert_eq!(words, expected);
    }
}
