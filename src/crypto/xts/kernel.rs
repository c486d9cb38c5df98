//! The XTS loops, generic over the vector width ([`Lanes`]): tweak
//! generation, the XOR before and after, and the AES rounds fused into one
//! pass over the data, so each block is loaded once and stored once.
//!
//! Work goes in batches of `W` vectors (8 × 4 blocks with ZMM): the AES
//! rounds run round by round across the batch, so `W` independent blocks
//! hide each round's latency, and the batch's tweaks are made while the
//! previous batch's rounds are still in flight (they depend only on the
//! tweak chain, never on AES results). Data units are a multiple of 16
//! bytes; a unit that is not a multiple of the batch ends with single
//! vectors, then single blocks in XMM registers.
//!
//! Everything here is `#[inline(always)]` and `unsafe`: it compiles into
//! the `#[target_feature]` entry points of `super::x86`, which check the
//! CPU first.

use std::arch::x86_64::{__m128i, _mm_loadu_si128};

use super::Direction;
use super::lanes::{Lanes, Xmm};

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

/// XTS over `batches` batches of `W` vectors at `data`, the first block's
/// tweak in lane 0 of `tweaks`; returns the tweaks of the block after.
///
/// # Safety
/// The CPU has the features of `L`; `data` is valid for reads and writes
/// of `batches * W * L::BLOCKS * 16` bytes.
#[inline(always)]
unsafe fn xts_batches<L: Lanes, const W: usize>(
    keys: &Broadcast<L>,
    direction: Direction,
    mut data: *mut u8,
    batches: usize,
    mut tweaks: L,
) -> L {
    let vector_bytes = L::BLOCKS * 16;
    for _ in 0..batches {
        // SAFETY: the caller vouches for `L` and for `W` vectors at `data`.
        unsafe {
            let mut batch_tweaks = [tweaks; W];
            for i in 1..W {
                batch_tweaks[i] = L::next_tweaks(batch_tweaks[i - 1]);
            }
            tweaks = L::next_tweaks(batch_tweaks[W - 1]);
            let mut state: [L; W] = std::array::from_fn(|i| {
                L::xor(L::load(data.add(i * vector_bytes)), batch_tweaks[i])
            });
            rounds(keys, direction, &mut state);
            for i in 0..W {
                L::store(
                    data.add(i * vector_bytes),
                    L::xor(state[i], batch_tweaks[i]),
                );
            }
            data = data.add(W * vector_bytes);
        }
    }
    tweaks
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
    // SAFETY: each call covers blocks inside `unit`; the caller vouches for
    // the CPU.
    unsafe {
        let mut done = 0;
        let mut tweaks = L::tweaks_from(tweak);
        let batches = blocks / batch_blocks;
        tweaks = xts_batches::<L, W>(keys, direction, data, batches, tweaks);
        done += batches * batch_blocks;
        let vectors = (blocks - done) / L::BLOCKS;
        tweaks = xts_batches::<L, 1>(keys, direction, data.add(done * 16), vectors, tweaks);
        done += vectors * L::BLOCKS;
        if done < blocks {
            let next = Xmm::tweaks_from(L::first_tweak(tweaks));
            xts_batches::<Xmm, 1>(
                narrow_keys,
                direction,
                data.add(done * 16),
                blocks - done,
                next,
            );
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
