//! AES-256-XTS on x86-64 AES instructions, our own rounds: AES-256 key
//! expansion with AES-NI, and one `#[target_feature]` entry point per
//! vector width that runs the generic loops of `super::kernel`.
//!
//! Why not the `aes` crate's backend here: its VAES-256 backend encrypts 30
//! blocks per call, so a 64-block chunk ended with four blocks done one at a
//! time; its backend call cannot be fused with tweak generation and the
//! XORs (two extra passes over the data); and its dispatch cannot be
//! steered, so the VAES-256 and AES-NI code could never be tested or
//! measured on a CPU with AVX-512. With our own rounds every width is
//! tested on any CPU that has it, and the schedule is expanded in place,
//! in the caller's locked memory.

use std::arch::x86_64::{
    __m128i, _mm_aesimc_si128, _mm_aeskeygenassist_si128, _mm_loadu_si128, _mm_shuffle_epi32,
    _mm_slli_si128, _mm_storeu_si128, _mm_xor_si128,
};

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::Direction;
use super::kernel::{Broadcast, ROUND_KEYS, ecb, xts_unit};
use super::lanes::{Lanes, Xmm, Ymm, Zmm};

/// Data units whose tweak values E(K2, i) are encrypted in one batch, so
/// small units do not each wait out an AES latency.
const UNIT_TWEAKS_BATCH: usize = 32;

/// Vectors per batch: enough independent AES chains to cover the latency
/// of a round at the throughput of every CPU we measured (see README,
/// Performance → Crypto).
const XMM_BATCH: usize = 8;
/// As [`XMM_BATCH`], for YMM (two blocks per vector).
const YMM_BATCH: usize = 8;
/// As [`XMM_BATCH`], for ZMM (four blocks per vector).
const ZMM_BATCH: usize = 8;

/// The round keys of one AES-256 key, for encryption and for the
/// equivalent inverse cipher (what AESDEC expects). Zeroed on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
#[repr(C, align(64))]
pub(super) struct Schedule {
    enc: [[u8; 16]; ROUND_KEYS],
    dec: [[u8; 16]; ROUND_KEYS],
}

impl Schedule {
    /// An all-zero schedule, to expand a key into in place.
    pub(super) const fn zeroed() -> Self {
        Schedule {
            enc: [[0; 16]; ROUND_KEYS],
            dec: [[0; 16]; ROUND_KEYS],
        }
    }

    /// Expands `key` into `self`, in place.
    ///
    /// # Safety
    /// The CPU has AES-NI.
    #[target_feature(enable = "aes")]
    pub(super) unsafe fn expand(&mut self, key: &[u8; 32]) {
        /// The next even round key from the two before it; `assist` is
        /// AESKEYGENASSIST of the odd one (word 3: RotWord, SubWord, Rcon).
        #[inline(always)]
        fn even(previous: __m128i, assist: __m128i) -> __m128i {
            // SAFETY: SSE2, part of x86-64.
            unsafe { _mm_xor_si128(prefix_xor(previous), _mm_shuffle_epi32::<0xff>(assist)) }
        }
        /// The next odd round key; `assist` is AESKEYGENASSIST (Rcon 0) of
        /// the even one before it (word 2: SubWord only).
        #[inline(always)]
        fn odd(previous: __m128i, assist: __m128i) -> __m128i {
            // SAFETY: SSE2, part of x86-64.
            unsafe { _mm_xor_si128(prefix_xor(previous), _mm_shuffle_epi32::<0xaa>(assist)) }
        }
        /// Word i becomes the XOR of words 0..=i.
        #[inline(always)]
        fn prefix_xor(words: __m128i) -> __m128i {
            // SAFETY: SSE2, part of x86-64.
            unsafe {
                let once = _mm_xor_si128(words, _mm_slli_si128::<4>(words));
                _mm_xor_si128(once, _mm_slli_si128::<8>(once))
            }
        }
        // SAFETY: 16 readable bytes each.
        let (mut a, mut b) = unsafe {
            (
                _mm_loadu_si128(key.as_ptr().cast::<__m128i>()),
                _mm_loadu_si128(key[16..].as_ptr().cast::<__m128i>()),
            )
        };
        let store = |slot: &mut [u8; 16], value: __m128i| {
            // SAFETY: 16 writable bytes.
            unsafe { _mm_storeu_si128(slot.as_mut_ptr().cast::<__m128i>(), value) }
        };
        store(&mut self.enc[0], a);
        store(&mut self.enc[1], b);
        macro_rules! step {
            ($round:expr, $rcon:expr) => {
                a = even(a, _mm_aeskeygenassist_si128::<$rcon>(b));
                store(&mut self.enc[2 * $round], a);
                b = odd(b, _mm_aeskeygenassist_si128::<0>(a));
                store(&mut self.enc[2 * $round + 1], b);
            };
        }
        step!(1, 0x01);
        step!(2, 0x02);
        step!(3, 0x04);
        step!(4, 0x08);
        step!(5, 0x10);
        step!(6, 0x20);
        // Round key 14 is the last: no odd one after it.
        a = even(a, _mm_aeskeygenassist_si128::<0x40>(b));
        store(&mut self.enc[14], a);
        // The equivalent inverse cipher: round keys in reverse order, the
        // inner ones through InvMixColumns.
        for round in 0..ROUND_KEYS {
            // SAFETY: 16 readable bytes.
            let key = unsafe { _mm_loadu_si128(self.enc[ROUND_KEYS - 1 - round].as_ptr().cast()) };
            let key = if round == 0 || round == ROUND_KEYS - 1 {
                key
            } else {
                _mm_aesimc_si128(key)
            };
            store(&mut self.dec[round], key);
        }
    }

    /// Every round key, encryption then decryption (for tests that look
    /// for them where they must not be).
    #[cfg(test)]
    pub(super) fn round_keys(&self) -> Vec<[u8; 16]> {
        self.enc.iter().chain(self.dec.iter()).copied().collect()
    }

    /// The round keys for `direction`.
    fn keys(&self, direction: Direction) -> &[[u8; 16]; ROUND_KEYS] {
        match direction {
            Direction::Encrypt => &self.enc,
            Direction::Decrypt => &self.dec,
        }
    }
}

/// The x86-64 vector widths our own kernels run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Width {
    /// XMM: AES-NI + PCLMULQDQ.
    Xmm,
    /// YMM: VAES + VPCLMULQDQ + AVX2.
    Ymm,
    /// ZMM: VAES + VPCLMULQDQ + AVX-512F/BW.
    Zmm,
}

impl Width {
    /// Whether this CPU can run the width.
    pub(super) fn supported(self) -> bool {
        let aes = std::arch::is_x86_feature_detected!("aes");
        let vaes = std::arch::is_x86_feature_detected!("vaes");
        let pclmul = std::arch::is_x86_feature_detected!("pclmulqdq");
        let vpclmul = std::arch::is_x86_feature_detected!("vpclmulqdq");
        match self {
            Width::Xmm => aes && pclmul,
            Width::Ymm => aes && vaes && vpclmul && std::arch::is_x86_feature_detected!("avx2"),
            Width::Zmm => {
                aes && vaes
                    && vpclmul
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
            }
        }
    }
}

/// One XTS pass: `buf` in `direction`, whole data units of `unit_bytes`,
/// the first with tweak number `first`, under `data` (K1) and `tweak` (K2).
pub(super) struct XtsJob<'a> {
    /// The data key's schedule (K1).
    pub data: &'a Schedule,
    /// The tweak key's schedule (K2).
    pub tweak: &'a Schedule,
    /// Encrypt or decrypt.
    pub direction: Direction,
    /// The data units, in place.
    pub buf: &'a mut [u8],
    /// Bytes per data unit.
    pub unit_bytes: usize,
    /// The tweak number of the first unit.
    pub first: u128,
}

/// Runs `job` on the `width` path.
///
/// # Safety
/// The CPU supports `width` ([`Width::supported`]).
pub(super) unsafe fn xts(width: Width, job: XtsJob<'_>) {
    // SAFETY: the caller checked the CPU for `width`.
    unsafe {
        match width {
            Width::Xmm => xts_xmm(job),
            Width::Ymm => xts_ymm(job),
            Width::Zmm => xts_zmm(job),
        }
    }
}

/// AES-256-ECB encryption of `blocks` (a multiple of 16 bytes) under
/// `keys`: the ceiling XTS on `width` is measured against.
///
/// # Safety
/// The CPU supports `width`.
pub(super) unsafe fn ecb_encrypt(width: Width, keys: &Schedule, blocks: &mut [u8]) {
    // SAFETY: the caller checked the CPU for `width`.
    unsafe {
        match width {
            Width::Xmm => ecb_xmm(keys, blocks),
            Width::Ymm => ecb_ymm(keys, blocks),
            Width::Zmm => ecb_zmm(keys, blocks),
        }
    }
}

/// Declares one entry point per width: the generic loops compiled with
/// that width's CPU features.
macro_rules! entry_points {
    ($($xts:ident, $ecb:ident, $lanes:ty, $batch:expr, $features:literal;)*) => {$(
        #[target_feature(enable = $features)]
        fn $xts(job: XtsJob<'_>) {
            // SAFETY: the features `run_xts` needs are enabled here.
            unsafe { run_xts::<$lanes, { $batch }>(job) }
        }

        #[target_feature(enable = $features)]
        fn $ecb(keys: &Schedule, blocks: &mut [u8]) {
            // SAFETY: the features `ecb` needs are enabled here.
            unsafe {
                let wide = Broadcast::<$lanes>::new(keys.keys(Direction::Encrypt));
                let narrow = Broadcast::<Xmm>::new(keys.keys(Direction::Encrypt));
                ecb::<$lanes, { $batch }>(&wide, &narrow, Direction::Encrypt, blocks);
            }
        }
    )*};
}

entry_points! {
    xts_xmm, ecb_xmm, Xmm, XMM_BATCH, "aes,pclmulqdq";
    xts_ymm, ecb_ymm, Ymm, YMM_BATCH, "aes,avx2,vaes,vpclmulqdq";
    xts_zmm, ecb_zmm, Zmm, ZMM_BATCH, "aes,avx512f,avx512bw,vaes,vpclmulqdq";
}

/// The body of every XTS entry point: the tweak values of up to
/// [`UNIT_TWEAKS_BATCH`] units encrypted in one ECB call, then each unit.
///
/// # Safety
/// The CPU has the features of `L`.
#[inline(always)]
unsafe fn run_xts<L: Lanes, const W: usize>(job: XtsJob<'_>) {
    let XtsJob {
        data,
        tweak,
        direction,
        buf,
        unit_bytes,
        first,
    } = job;
    // SAFETY: the caller vouches for the CPU.
    unsafe {
        let data_keys = Broadcast::<L>::new(data.keys(direction));
        let data_narrow = Broadcast::<Xmm>::new(data.keys(direction));
        let tweak_keys = Broadcast::<L>::new(tweak.keys(Direction::Encrypt));
        let tweak_narrow = Broadcast::<Xmm>::new(tweak.keys(Direction::Encrypt));
        let mut next = first;
        let mut unit_tweaks = [0u8; 16 * UNIT_TWEAKS_BATCH];
        for group in buf.chunks_mut(unit_bytes * UNIT_TWEAKS_BATCH) {
            let units = group.len() / unit_bytes;
            let unit_tweaks = &mut unit_tweaks[..16 * units];
            for slot in unit_tweaks.chunks_exact_mut(16) {
                slot.copy_from_slice(&next.to_le_bytes());
                next = next.wrapping_add(1);
            }
            // IEEE 1619: the first block of unit i is masked with E(K2, i).
            ecb::<L, W>(&tweak_keys, &tweak_narrow, Direction::Encrypt, unit_tweaks);
            for (unit, encrypted) in group
                .chunks_exact_mut(unit_bytes)
                .zip(unit_tweaks.chunks_exact(16))
            {
                let encrypted = u128::from_le_bytes(encrypted.try_into().expect("16 bytes"));
                xts_unit::<L, W>(&data_keys, &data_narrow, direction, unit, encrypted);
            }
        }
    }
}
