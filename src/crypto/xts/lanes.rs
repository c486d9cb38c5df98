//! One vector register of AES blocks, for each x86-64 instruction set the
//! XTS kernels run on: XMM (AES-NI, one block), YMM (VAES + AVX2, two
//! blocks) and ZMM (VAES + AVX-512F, four blocks).
//!
//! Besides the AES rounds, each type knows the XTS tweak arithmetic on its
//! lanes: every 128-bit lane holds one tweak as a little-endian 128-bit
//! value (IEEE 1619 order), and [`Lanes::times_x8`] multiplies each lane by
//! x^8 in GF(2^128): a one-byte shift of the lane, and the byte shifted out
//! of the top, c, folded back in as c·(x^7 + x^2 + x + 1) with one
//! carry-less multiplication (PCLMULQDQ / VPCLMULQDQ). Four instructions,
//! three of them on the shuffle/multiply port, so tweaks barely compete with
//! the AES rounds for the vector ALUs (the shift-and-mask version they
//! replaced took nine, all on the AES ports, and cost a third of the speed).

use std::arch::x86_64::{
    __m128i, __m256i, __m512i, _mm_aesdec_si128, _mm_aesdeclast_si128, _mm_aesenc_si128,
    _mm_aesenclast_si128, _mm_bslli_si128, _mm_bsrli_si128, _mm_clmulepi64_si128, _mm_loadu_si128,
    _mm_set_epi64x, _mm_storeu_si128, _mm_xor_si128, _mm256_aesdec_epi128,
    _mm256_aesdeclast_epi128, _mm256_aesenc_epi128, _mm256_aesenclast_epi128,
    _mm256_broadcastsi128_si256, _mm256_bslli_epi128, _mm256_bsrli_epi128,
    _mm256_clmulepi64_epi128, _mm256_loadu_si256, _mm256_set_epi64x, _mm256_storeu_si256,
    _mm256_xor_si256, _mm512_aesdec_epi128, _mm512_aesdeclast_epi128, _mm512_aesenc_epi128,
    _mm512_aesenclast_epi128, _mm512_broadcast_i32x4, _mm512_bslli_epi128, _mm512_bsrli_epi128,
    _mm512_clmulepi64_epi128, _mm512_loadu_si512, _mm512_set_epi64, _mm512_storeu_si512,
    _mm512_xor_si512,
};

/// `t` times x in GF(2^128) with the XTS polynomial (IEEE 1619 bit order).
#[inline(always)]
pub(super) fn mul_alpha(t: u128) -> u128 {
    (t << 1) ^ ((t >> 127) * 0x87)
}

/// The XTS reduction polynomial's low terms, x^7 + x^2 + x + 1: what
/// x^128 is congruent to.
const POLY: i64 = 0x87;

/// A vector of [`Lanes::BLOCKS`] AES blocks.
///
/// # Safety
/// Implementations use CPU instructions that not every x86-64 CPU has:
/// calling any method is undefined behaviour unless the CPU has the
/// features named in the implementation's doc comment. Methods are
/// `#[inline(always)]` so that they compile into the kernel function that
/// enables those features.
pub(super) unsafe trait Lanes: Copy {
    /// AES blocks (and tweaks) per vector.
    const BLOCKS: usize;
    /// Loads `BLOCKS` blocks from `src` (no alignment needed).
    unsafe fn load(src: *const u8) -> Self;
    /// Stores `BLOCKS` blocks to `dst` (no alignment needed).
    unsafe fn store(dst: *mut u8, value: Self);
    /// Bitwise XOR.
    unsafe fn xor(a: Self, b: Self) -> Self;
    /// The same round key in every lane.
    unsafe fn broadcast(key: __m128i) -> Self;
    /// One AES encryption round on every lane.
    unsafe fn enc(state: Self, key: Self) -> Self;
    /// The last AES encryption round.
    unsafe fn enc_last(state: Self, key: Self) -> Self;
    /// One AES decryption round (equivalent inverse cipher).
    unsafe fn dec(state: Self, key: Self) -> Self;
    /// The last AES decryption round.
    unsafe fn dec_last(state: Self, key: Self) -> Self;
    /// Every lane times x^8.
    unsafe fn times_x8(tweaks: Self) -> Self;
    /// The tweak in lane 0.
    unsafe fn first_tweak(tweaks: Self) -> u128;
}

impl Xmm {
    /// The register holding `t` (little-endian).
    #[inline(always)]
    pub(super) fn from_u128(t: u128) -> Self {
        // SAFETY: SSE2, part of x86-64.
        Xmm(unsafe { _mm_set_epi64x((t >> 64) as u64 as i64, t as u64 as i64) })
    }
}

/// One block in an XMM register. Needs AES-NI and PCLMULQDQ (and SSE2,
/// part of x86-64).
#[derive(Clone, Copy)]
pub(super) struct Xmm(__m128i);

// SAFETY: every method uses only SSE2, AES-NI and PCLMULQDQ instructions,
// as the type's contract says.
unsafe impl Lanes for Xmm {
    const BLOCKS: usize = 1;

    #[inline(always)]
    unsafe fn load(src: *const u8) -> Self {
        // SAFETY: the caller passes 16 readable bytes; unaligned load.
        Xmm(unsafe { _mm_loadu_si128(src.cast()) })
    }
    #[inline(always)]
    unsafe fn store(dst: *mut u8, value: Self) {
        // SAFETY: the caller passes 16 writable bytes; unaligned store.
        unsafe { _mm_storeu_si128(dst.cast(), value.0) }
    }
    #[inline(always)]
    unsafe fn xor(a: Self, b: Self) -> Self {
        // SAFETY: SSE2, part of x86-64.
        Xmm(unsafe { _mm_xor_si128(a.0, b.0) })
    }
    #[inline(always)]
    unsafe fn broadcast(key: __m128i) -> Self {
        Xmm(key)
    }
    #[inline(always)]
    unsafe fn enc(state: Self, key: Self) -> Self {
        // SAFETY: AES-NI, per the trait's contract.
        Xmm(unsafe { _mm_aesenc_si128(state.0, key.0) })
    }
    #[inline(always)]
    unsafe fn enc_last(state: Self, key: Self) -> Self {
        // SAFETY: as in `enc`.
        Xmm(unsafe { _mm_aesenclast_si128(state.0, key.0) })
    }
    #[inline(always)]
    unsafe fn dec(state: Self, key: Self) -> Self {
        // SAFETY: as in `enc`.
        Xmm(unsafe { _mm_aesdec_si128(state.0, key.0) })
    }
    #[inline(always)]
    unsafe fn dec_last(state: Self, key: Self) -> Self {
        // SAFETY: as in `enc`.
        Xmm(unsafe { _mm_aesdeclast_si128(state.0, key.0) })
    }
    #[inline(always)]
    unsafe fn times_x8(tweaks: Self) -> Self {
        // SAFETY: SSE2 and PCLMULQDQ, per the trait's contract.
        unsafe {
            let v = tweaks.0;
            let top = _mm_bsrli_si128::<15>(v);
            let folded = _mm_clmulepi64_si128::<0x00>(top, _mm_set_epi64x(0, POLY));
            Xmm(_mm_xor_si128(_mm_bslli_si128::<1>(v), folded))
        }
    }
    #[inline(always)]
    unsafe fn first_tweak(tweaks: Self) -> u128 {
        let mut bytes = [0u8; 16];
        // SAFETY: 16 writable bytes.
        unsafe { Self::store(bytes.as_mut_ptr(), tweaks) };
        u128::from_le_bytes(bytes)
    }
}

/// Two blocks in a YMM register. Needs VAES, VPCLMULQDQ and AVX2.
#[derive(Clone, Copy)]
pub(super) struct Ymm(__m256i);

// SAFETY: every method uses only AVX, AVX2, VAES and VPCLMULQDQ
// instructions, as the type's contract says.
unsafe impl Lanes for Ymm {
    const BLOCKS: usize = 2;

    #[inline(always)]
    unsafe fn load(src: *const u8) -> Self {
        // SAFETY: the caller passes 32 readable bytes; unaligned load.
        Ymm(unsafe { _mm256_loadu_si256(src.cast()) })
    }
    #[inline(always)]
    unsafe fn store(dst: *mut u8, value: Self) {
        // SAFETY: the caller passes 32 writable bytes; unaligned store.
        unsafe { _mm256_storeu_si256(dst.cast(), value.0) }
    }
    #[inline(always)]
    unsafe fn xor(a: Self, b: Self) -> Self {
        // SAFETY: AVX2, per the trait's contract.
        Ymm(unsafe { _mm256_xor_si256(a.0, b.0) })
    }
    #[inline(always)]
    unsafe fn broadcast(key: __m128i) -> Self {
        // SAFETY: AVX2, per the trait's contract.
        Ymm(unsafe { _mm256_broadcastsi128_si256(key) })
    }
    #[inline(always)]
    unsafe fn enc(state: Self, key: Self) -> Self {
        // SAFETY: VAES, per the trait's contract.
        Ymm(unsafe { _mm256_aesenc_epi128(state.0, key.0) })
    }
    #[inline(always)]
    unsafe fn enc_last(state: Self, key: Self) -> Self {
        // SAFETY: as in `enc`.
        Ymm(unsafe { _mm256_aesenclast_epi128(state.0, key.0) })
    }
    #[inline(always)]
    unsafe fn dec(state: Self, key: Self) -> Self {
        // SAFETY: as in `enc`.
        Ymm(unsafe { _mm256_aesdec_epi128(state.0, key.0) })
    }
    #[inline(always)]
    unsafe fn dec_last(state: Self, key: Self) -> Self {
        // SAFETY: as in `enc`.
        Ymm(unsafe { _mm256_aesdeclast_epi128(state.0, key.0) })
    }
    #[inline(always)]
    unsafe fn times_x8(tweaks: Self) -> Self {
        // SAFETY: AVX2 and VPCLMULQDQ, per the trait's contract.
        unsafe {
            let v = tweaks.0;
            let top = _mm256_bsrli_epi128::<15>(v);
            let poly = _mm256_set_epi64x(0, POLY, 0, POLY);
            let folded = _mm256_clmulepi64_epi128::<0x00>(top, poly);
            Ymm(_mm256_xor_si256(_mm256_bslli_epi128::<1>(v), folded))
        }
    }
    #[inline(always)]
    unsafe fn first_tweak(tweaks: Self) -> u128 {
        let mut bytes = [0u8; 32];
        // SAFETY: 32 writable bytes.
        unsafe { Self::store(bytes.as_mut_ptr(), tweaks) };
        u128::from_le_bytes(bytes[..16].try_into().expect("16 bytes"))
    }
}

/// Four blocks in a ZMM register. Needs VAES, VPCLMULQDQ, AVX-512F and
/// AVX-512BW.
#[derive(Clone, Copy)]
pub(super) struct Zmm(__m512i);

// SAFETY: every method uses only AVX-512F/BW, VAES and VPCLMULQDQ
// instructions, as the type's contract says.
unsafe impl Lanes for Zmm {
    const BLOCKS: usize = 4;

    #[inline(always)]
    unsafe fn load(src: *const u8) -> Self {
        // SAFETY: the caller passes 64 readable bytes; unaligned load.
        Zmm(unsafe { _mm512_loadu_si512(src.cast()) })
    }
    #[inline(always)]
    unsafe fn store(dst: *mut u8, value: Self) {
        // SAFETY: the caller passes 64 writable bytes; unaligned store.
        unsafe { _mm512_storeu_si512(dst.cast(), value.0) }
    }
    #[inline(always)]
    unsafe fn xor(a: Self, b: Self) -> Self {
        // SAFETY: AVX-512F, per the trait's contract.
        Zmm(unsafe { _mm512_xor_si512(a.0, b.0) })
    }
    #[inline(always)]
    unsafe fn broadcast(key: __m128i) -> Self {
        // SAFETY: AVX-512F, per the trait's contract.
        Zmm(unsafe { _mm512_broadcast_i32x4(key) })
    }
    #[inline(always)]
    unsafe fn enc(state: Self, key: Self) -> Self {
        // SAFETY: VAES with AVX-512F, per the trait's contract.
        Zmm(unsafe { _mm512_aesenc_epi128(state.0, key.0) })
    }
    #[inline(always)]
    unsafe fn enc_last(state: Self, key: Self) -> Self {
        // SAFETY: as in `enc`.
        Zmm(unsafe { _mm512_aesenclast_epi128(state.0, key.0) })
    }
    #[inline(always)]
    unsafe fn dec(state: Self, key: Self) -> Self {
        // SAFETY: as in `enc`.
        Zmm(unsafe { _mm512_aesdec_epi128(state.0, key.0) })
    }
    #[inline(always)]
    unsafe fn dec_last(state: Self, key: Self) -> Self {
        // SAFETY: as in `enc`.
        Zmm(unsafe { _mm512_aesdeclast_epi128(state.0, key.0) })
    }
    #[inline(always)]
    unsafe fn times_x8(tweaks: Self) -> Self {
        // SAFETY: AVX-512F, AVX-512BW and VPCLMULQDQ, per the trait's
        // contract.
        unsafe {
            let v = tweaks.0;
            let top = _mm512_bsrli_epi128::<15>(v);
            let poly = _mm512_set_epi64(0, POLY, 0, POLY, 0, POLY, 0, POLY);
            let folded = _mm512_clmulepi64_epi128::<0x00>(top, poly);
            Zmm(_mm512_xor_si512(_mm512_bslli_epi128::<1>(v), folded))
        }
    }
    #[inline(always)]
    unsafe fn first_tweak(tweaks: Self) -> u128 {
        let mut bytes = [0u8; 64];
        // SAFETY: 64 writable bytes.
        unsafe { Self::store(bytes.as_mut_ptr(), tweaks) };
        u128::from_le_bytes(bytes[..16].try_into().expect("16 bytes"))
    }
}
