//! The XTS loops, generic over the vector width ([`Lanes`]): tweak
//! generation, the XOR before and after, and the AES rounds fused into one
//! pass over the data, so each block is loaded once and stored once.
//!
//! Work goes in batches of `W` vectors (8 × 4 blocks with ZMM): the AES
//! rounds run round by round across the batch, so `W` independent vectors
//! hide each round's latency, and the next batch's tweaks are made while
//! this batch's rounds are in flight (they depend only on earlier tweaks,
//! never on AES results). Data units are a multiple of 16 bytes; a unit
//! that is not a whole number of batches ends with single vectors, then
//! single blocks in XMM registers.
//!
//! Everything here is `#[inline(always)]` and `unsafe`: it compiles into
//! the `#[target_feature]` entry points of `super::x86`, which check the
//! CPU first.

use std::arch::x86_64::{__m128i, _mm_loadu_si128};

use super::Direction;
use super::lanes::{Lanes, Xmm, mul_alpha};

/// Rounds of AES-256 plus one: the round keys in a schedule.
pub(super) const ROUND_KEYS: usize = 15;

/// An AES-256 schedule broadcast to every lane of `L`.
pub(super) struct Broadcast<L>([L; ROUND_KEYS]);

impl<L: Lanes> Broadcast<L> {
    /// Broadcasts `keys` (16 bytes each).
    ///
    /// # Safety
    /// The CPU has the features of `L`.
    #[inline(always)]
    pub(super) unsafe fn new(keys: &[[u8; 16]; ROUND_KEYS]) -> Self {
        Broadcast(std::array::from_fn(|round| {
            // SAFETY: 16 readable bytes; the caller vouches for `L`.
            unsafe { L::broadcast(_mm_loadu_si128(keys[round].as_ptr().cast::<__m128i>())) }
        }))
    }
}

/// AES (all rounds) on each of `state`, in place.
///
/// # Safety
/// The CPU has the features of `L`.
#[inline(always)]
unsafe fn rounds<L: Lanes, const W: usize>(
    keys: &Broadcast<L>,
    direction: Direction,
    state: &mut [L; W],
) {
    let keys = &keys.0;
    // SAFETY: the caller vouches for `L`.
    unsafe {
        for block in state.iter_mut() {
            *block = L::xor(*block, keys[0]);
        }
        for key in &keys[1..ROUND_KEYS - 1] {
            for block in state.iter_mut() {
                *block = match direction {
                    Direction::Encrypt => L::enc(*block, *key),
                    Direction::Decrypt => L::dec(*block, *key),
                };
            }
        }
        for block in state.iter_mut() {
            *block = match direction {
                Direction::Encrypt => L::enc_last(*block, keys[ROUND_KEYS - 1]),
                Direction::Decrypt => L::dec_last(*block, keys[ROUND_KEYS - 1]),
            };
        }
    }
}

/// Blocks one [`Lanes::times_x8`] step advances a tweak by: each vector's
/// tweaks are those of the vector `8 / L::BLOCKS` places before it times
/// x^8, so there are `8 / L::BLOCKS` short independent chains and tweak
/// arithmetic never waits long on itself.
const STEP_BLOCKS: usize = 8;

/// The tweaks of the first `W` vectors of a data unit whose first block's
/// tweak is `t`.
///
/// # Safety
/// The CPU has the features of `L`.
#[inline(always)]
unsafe fn first_lanes<L: Lanes, const W: usize>(t: u128) -> [L; W] {
    // t·x^0 .. t·x^7 (little-endian), the first 8 / BLOCKS vectors.
    let mut first_eight = [0u8; 16 * STEP_BLOCKS];
    let mut x = t;
    for slot in first_eight.chunks_exact_mut(16) {
        slot.copy_from_slice(&x.to_le_bytes());
        x = mul_alpha(x);
    }
    let lag = STEP_BLOCKS / L::BLOCKS;
    // SAFETY: every load reads inside `first_eight` (i < lag vectors of
    // BLOCKS blocks); the caller vouches for `L`.
    unsafe {
        let mut lanes = [L::load(first_eight.as_ptr()); W];
        for i in 1..W {
            lanes[i] = if i < lag {
                L::load(first_eight.as_ptr().add(i * L::BLOCKS * 16))
            } else {
                L::times_x8(lanes[i - lag])
            };
        }
        lanes
    }
}

/// Moves `lanes` on to the next batch of `W` vectors.
///
/// # Safety
/// The CPU has the features of `L`.
#[inline(always)]
unsafe fn advance<L: Lanes, const W: usize>(lanes: &mut [L; W]) {
    let lag = STEP_BLOCKS / L::BLOCKS;
    for i in 0..W {
        // Vectors before `i` already hold the new batch's tweaks; from
        // `i` on, the old batch's.
        let before = if i < lag {
            lanes[W - lag + i]
        } else {
            lanes[i - lag]
        };
        // SAFETY: the caller vouches for `L`.
        lanes[i] = unsafe { L::times_x8(before) };
    }
}

/// XTS over `W` vectors at `data` with their `tweaks`.
///
/// # Safety
/// The CPU has the features of `L`; `data` is valid for reads and writes
/// of `W * L::BLOCKS * 16` bytes.
#[inline(always)]
unsafe fn xts_vectors<L: Lanes, const W: usize>(
    keys: &Broadcast<L>,
    direction: Direction,
    data: *mut u8,
    tweaks: &[L; W],
) {
    let vector_bytes = L::BLOCKS * 16;
    // SAFETY: the caller vouches for `L` and for `W` vectors at `data`.
    unsafe {
        let mut state: [L; W] =
            std::array::from_fn(|i| L::xor(L::load(data.add(i * vector_bytes)), tweaks[i]));
        rounds(keys, direction, &mut state);
        for i in 0..W {
            L::store(data.add(i * vector_bytes), L::xor(state[i], tweaks[i]));
        }
    }
}

/// XTS over one data unit, `unit` (a multiple of 16 bytes), whose first
/// block's tweak is `tweak` (already encrypted with the tweak key).
///
/// # Safety
/// The CPU has the features of `L` (and AES-NI, which every `L` implies).
#[inline(always)]
pub(super) unsafe fn xts_unit<L: Lanes, const W: usize>(
    keys: &Broadcast<L>,
    narrow_keys: &Broadcast<Xmm>,
    direction: Direction,
    unit: &mut [u8],
    tweak: u128,
) {
    debug_assert!(unit.len().is_multiple_of(16));
    let blocks = unit.len() / 16;
    let batch_blocks = W * L::BLOCKS;
    let data = unit.as_mut_ptr();
    // SAFETY: every call covers blocks inside `unit`; the caller vouches
    // for the CPU.
    unsafe {
        let mut lanes = first_lanes::<L, W>(tweak);
        let mut done = 0;
        while blocks - done >= batch_blocks {
            xts_vectors::<L, W>(keys, direction, data.add(done * 16), &lanes);
            advance(&mut lanes);
            done += batch_blocks;
        }
        // A unit that is not a whole number of batches: single vectors,
        // then single blocks.
        let vectors = (blocks - done) / L::BLOCKS;
        for lane in &lanes[..vectors] {
            xts_vectors::<L, 1>(keys, direction, data.add(done * 16), &[*lane]);
            done += L::BLOCKS;
        }
        if done < blocks {
            let mut t = L::first_tweak(lanes[vectors]);
            while done < blocks {
                let tweak = [Xmm::from_u128(t)];
                xts_vectors::<Xmm, 1>(narrow_keys, direction, data.add(done * 16), &tweak);
                t = mul_alpha(t);
                done += 1;
            }
        }
    }
}

/// AES (no chaining: ECB) over `blocks`, a multiple of 16 bytes, in place.
///
/// # Safety
/// The CPU has the features of `L` (and AES-NI).
#[inline(always)]
pub(super) unsafe fn ecb<L: Lanes, const W: usize>(
    keys: &Broadcast<L>,
    narrow_keys: &Broadcast<Xmm>,
    direction: Direction,
    blocks: &mut [u8],
) {
    debug_assert!(blocks.len().is_multiple_of(16));
    let vector_bytes = L::BLOCKS * 16;
    let mut batches = blocks.chunks_exact_mut(W * vector_bytes);
    // SAFETY: every load and store stays inside the chunk it is made for;
    // the caller vouches for the CPU.
    unsafe {
        for batch in &mut batches {
            let data = batch.as_mut_ptr();
            let mut state: [L; W] = std::array::from_fn(|i| L::load(data.add(i * vector_bytes)));
            rounds(keys, direction, &mut state);
            for (i, block) in state.iter().enumerate() {
                L::store(data.add(i * vector_bytes), *block);
            }
        }
        for block in batches.into_remainder().chunks_exact_mut(16) {
            let mut state = [Xmm::load(block.as_ptr())];
            rounds(narrow_keys, direction, &mut state);
            Xmm::store(block.as_mut_ptr(), state[0]);
        }
    }
}
