//! AES-256-XTS (IEEE 1619) over whole buffers of data units, batched.
//!
//! Why not the `xts-mode` crate: it encrypts one 16-byte block per call, so
//! the AES pipeline never fills (about 0.35 GB/s here). Ours has four
//! paths ([`XtsPath`]), chosen once at run time for the CPU:
//! * `vaes-avx512`, `vaes-avx2`, `aes-ni`: our own AES rounds in ZMM, YMM
//!   or XMM registers (modules `x86`, `kernel`, `lanes`). Tweak generation,
//!   the XOR before and after, and the rounds are one fused pass over the
//!   data, eight vectors of blocks in flight;
//! * `portable`: the `aes` crate's backend (software, or ARMv8 AES) over
//!   chunks of 64 blocks, with tweaks made in lanes around each call
//!   (modules `portable`, `tweaks`).
//!
//! The tweak values E(K2, i) of up to 32 data units are encrypted in one
//! batch, so small units do not each wait out an AES latency. Results are
//! bit-identical on every path to `xts-mode` (the tests' oracle) and to the
//! IEEE 1619 vectors. Data units are a multiple of 16 bytes (512 and 4096 in
//! practice), so ciphertext stealing is never needed and not implemented.
//!
//! Every call ends by overwriting the stack its callees used and clearing
//! the vector registers (round keys live in both while AES runs), so no
//! thread keeps a copy of a key after the key is dropped.

#[cfg(target_arch = "x86_64")]
mod kernel;
#[cfg(target_arch = "x86_64")]
mod lanes;
mod portable;
#[cfg(test)]
mod stack_tests;
mod tweaks;
#[cfg(target_arch = "x86_64")]
mod x86;

use super::hygiene::scrub_vector_registers;
use super::locked::{CALLEE_FRAMES_BYTES, LockedBox, scrub_callee_frames_of, scrub_stack};

/// Bytes in one AES block.
const AES_BLOCK_BYTES: usize = 16;

/// Bytes of stack our own kernels' frames may use below `encrypt` and
/// `decrypt` (at most about 4.6 KiB measured, debug or release; the test
/// in `stack_tests` checks every path against its scrub), which is all the
/// scrub after each call needs to cover: half what the `aes` crate's
/// backends need, so half the cost.
pub const KERNEL_FRAMES_BYTES: usize = 8 * 1024;

/// The environment variable that picks a slower path than the CPU's best
/// (`portable`, `aes-ni`, `vaes-avx2`), to measure or test a machine as one
/// without AVX-512 or VAES would run. Unknown or unsupported values are
/// ignored with a warning.
pub const XTS_PATH_ENV: &str = "LSVBLK_XTS_PATH";

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

/// Whether a pass encrypts or decrypts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Encrypt,
    Decrypt,
}

/// The code that runs XTS, fastest first. [`XtsPath::detect`] picks one
/// for the CPU; tests and benchmarks force each path the CPU supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum XtsPath {
    /// Our rounds in ZMM registers: VAES + VPCLMULQDQ + AVX-512F/BW (Intel
    /// Ice Lake and later, AMD Zen 4 and later).
    VaesAvx512,
    /// Our rounds in YMM registers: VAES + VPCLMULQDQ + AVX2 (AMD Zen 3,
    /// Intel Alder Lake, any AVX-512 CPU with VAES).
    VaesAvx2,
    /// Our rounds in XMM registers: AES-NI + PCLMULQDQ (every x86-64
    /// server since 2010).
    AesNi,
    /// The `aes` crate's backend with batched tweaks: any CPU.
    Portable,
}

impl XtsPath {
    /// Every path, fastest first.
    pub const ALL: [XtsPath; 4] = [
        XtsPath::VaesAvx512,
        XtsPath::VaesAvx2,
        XtsPath::AesNi,
        XtsPath::Portable,
    ];

    /// The path's name, as [`XTS_PATH_ENV`] and the benchmarks spell it.
    pub fn name(self) -> &'static str {
        match self {
            XtsPath::VaesAvx512 => "vaes-avx512",
            XtsPath::VaesAvx2 => "vaes-avx2",
            XtsPath::AesNi => "aes-ni",
            XtsPath::Portable => "portable",
        }
    }

    /// The path named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|path| path.name() == name)
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        match self.width() {
            #[cfg(target_arch = "x86_64")]
            Some(width) => width.supported(),
            _ => self == XtsPath::Portable,
        }
    }

    /// The paths this CPU can run, fastest first.
    pub fn all_supported() -> Vec<XtsPath> {
        Self::ALL.into_iter().filter(|p| p.supported()).collect()
    }

    /// The path new ciphers use: the fastest this CPU supports, or the one
    /// [`XTS_PATH_ENV`] names if the CPU supports it. Decided once per
    /// process.
    pub fn detect() -> XtsPath {
        static CHOSEN: std::sync::OnceLock<XtsPath> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let best = Self::all_supported()[0];
            let Ok(asked) = std::env::var(XTS_PATH_ENV) else {
                return best;
            };
            match Self::from_name(&asked) {
                Some(path) if path.supported() => path,
                _ => {
                    tracing::warn!(
                        "{XTS_PATH_ENV}={asked:?} is not a path this CPU runs; using {}",
                        best.name()
                    );
                    best
                }
            }
        })
    }

    #[cfg(target_arch = "x86_64")]
    fn width(self) -> Option<x86::Width> {
        match self {
            XtsPath::VaesAvx512 => Some(x86::Width::Zmm),
            XtsPath::VaesAvx2 => Some(x86::Width::Ymm),
            XtsPath::AesNi => Some(x86::Width::Xmm),
            XtsPath::Portable => None,
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn width(self) -> Option<()> {
        None
    }
}

/// A path this CPU cannot run was asked for.
#[derive(Debug, thiserror::Error)]
#[error("this CPU cannot run the {} XTS path", .0.name())]
pub struct UnsupportedPath(pub XtsPath);

/// The expanded keys of one path.
enum Engine {
    #[cfg(target_arch = "x86_64")]
    X86 {
        width: x86::Width,
        data: x86::Schedule,
        tweak: x86::Schedule,
    },
    Portable(portable::Keys),
}

/// An AES-256-XTS key schedule: data key (K1) and tweak key (K2).
///
/// Holds expanded key material: keep it in locked memory
/// ([`XtsCipher::new_locked`]); schedules are zeroed on drop.
pub struct XtsCipher {
    path: XtsPath,
    engine: Engine,
}

impl XtsCipher {
    /// Expands a 64-byte XTS key: bytes 0..32 are K1 (data), 32..64 are K2
    /// (tweak), as in IEEE 1619. Runs on [`XtsPath::detect`]'s path.
    pub fn new(key: &[u8; 64]) -> Self {
        Self::with_path(key, XtsPath::detect()).expect("the detected path is supported")
    }

    /// As [`XtsCipher::new`] on `path` (for tests and benchmarks: every
    /// path gives the same results).
    pub fn with_path(key: &[u8; 64], path: XtsPath) -> Result<Self, UnsupportedPath> {
        let mut cipher = Self::blank(path)?;
        cipher.expand(key);
        // Expansion left key bytes in our callees' frames and in registers.
        scrub_stack();
        scrub_vector_registers();
        Ok(cipher)
    }

    /// Expands `key` straight into new locked, non-dumpable pages (on the
    /// fast paths no copy of the schedule is ever made elsewhere).
    pub fn new_locked(key: &[u8; 64]) -> std::io::Result<LockedBox<XtsCipher>> {
        let path = XtsPath::detect();
        let blank = Self::blank(path).expect("the detected path is supported");
        let mut locked = LockedBox::new(blank)?;
        locked.get_mut().expand(key);
        scrub_stack();
        scrub_vector_registers();
        Ok(locked)
    }

    /// A cipher on `path` with an all-zero schedule.
    fn blank(path: XtsPath) -> Result<Self, UnsupportedPath> {
        if !path.supported() {
            return Err(UnsupportedPath(path));
        }
        let engine = match path.width() {
            #[cfg(target_arch = "x86_64")]
            Some(width) => Engine::X86 {
                width,
                data: x86::Schedule::zeroed(),
                tweak: x86::Schedule::zeroed(),
            },
            _ => Engine::Portable(portable::Keys::new(&[0; 32], &[0; 32])),
        };
        Ok(XtsCipher { path, engine })
    }

    /// Expands `key` into this cipher's schedules, in place where the path
    /// allows.
    #[inline(never)]
    fn expand(&mut self, key: &[u8; 64]) {
        let (data_key, tweak_key) = key.split_at(32);
        match &mut self.engine {
            #[cfg(target_arch = "x86_64")]
            Engine::X86 { data, tweak, .. } => {
                // SAFETY: every x86 width needs AES-NI, and `blank` checked
                // that this CPU supports the path.
                unsafe {
                    data.expand(data_key.try_into().expect("K1 is 32 bytes"));
                    tweak.expand(tweak_key.try_into().expect("K2 is 32 bytes"));
                }
            }
            Engine::Portable(keys) => *keys = portable::Keys::new(data_key, tweak_key),
        }
    }

    /// The path this cipher runs on.
    pub fn path(&self) -> XtsPath {
        self.path
    }

    /// Encrypts `buf` in place: consecutive data units of `unit` bytes, the
    /// first with tweak `first`, the next with `first + 1`, and so on.
    ///
    /// # Panics
    /// If `buf` is not a whole number of data units (a caller bug).
    pub fn encrypt(&self, buf: &mut [u8], unit: DataUnit, first: Tweak) {
        self.apply(buf, unit, first, Direction::Encrypt);
        // `apply` and the AES code held round keys in their frames and in
        // vector registers: wipe both now, not whenever this thread's stack
        // and registers are next used.
        self.scrub_callee_frames();
        scrub_vector_registers();
    }

    /// Decrypts `buf` in place; the inverse of [`XtsCipher::encrypt`].
    ///
    /// # Panics
    /// If `buf` is not a whole number of data units (a caller bug).
    pub fn decrypt(&self, buf: &mut [u8], unit: DataUnit, first: Tweak) {
        self.apply(buf, unit, first, Direction::Decrypt);
        // As in `encrypt` (decryption's last round key is the key's first
        // 16 bytes).
        self.scrub_callee_frames();
        scrub_vector_registers();
    }

    /// AES-256-ECB encryption of `blocks` (a multiple of 16 bytes) under
    /// K1 on this cipher's path: the ceiling XTS is measured against in
    /// the benchmarks. Not for data.
    #[doc(hidden)]
    pub fn raw_aes_encrypt_for_bench(&self, blocks: &mut [u8]) {
        assert!(blocks.len().is_multiple_of(AES_BLOCK_BYTES));
        self.ecb_encrypt(blocks);
        self.scrub_callee_frames();
        scrub_vector_registers();
    }

    /// Bytes of stack the frames below `encrypt`/`decrypt` may use on this
    /// cipher's path.
    #[cfg(test)]
    fn callee_frames_bytes(&self) -> usize {
        match self.engine {
            #[cfg(target_arch = "x86_64")]
            Engine::X86 { .. } => KERNEL_FRAMES_BYTES,
            Engine::Portable(_) => CALLEE_FRAMES_BYTES,
        }
    }

    /// Zeroes the stack below the caller that this path's frames used.
    #[inline(always)]
    fn scrub_callee_frames(&self) {
        match self.engine {
            #[cfg(target_arch = "x86_64")]
            Engine::X86 { .. } => scrub_callee_frames_of::<KERNEL_FRAMES_BYTES>(),
            Engine::Portable(_) => scrub_callee_frames_of::<CALLEE_FRAMES_BYTES>(),
        }
    }

    #[inline(never)]
    fn ecb_encrypt(&self, blocks: &mut [u8]) {
        match &self.engine {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `blank` checked that this CPU supports the width.
            Engine::X86 { width, data, .. } => unsafe { x86::ecb_encrypt(*width, data, blocks) },
            Engine::Portable(keys) => keys.ecb_encrypt(blocks),
        }
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
        match &self.engine {
            #[cfg(target_arch = "x86_64")]
            Engine::X86 { width, data, tweak } => {
                let job = x86::XtsJob {
                    data,
                    tweak,
                    direction,
                    buf,
                    unit_bytes: unit.bytes(),
                    first: first.0,
                };
                // SAFETY: `blank` checked that this CPU supports the width.
                unsafe { x86::xts(*width, job) }
            }
            Engine::Portable(keys) => keys.xts(buf, unit.bytes(), first.0, direction),
        }
    }
}

impl std::fmt::Debug for XtsCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XtsCipher")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::Aes256;
    use aes::cipher::KeyInit;
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

    #[test]
    fn the_best_path_is_detected_and_every_x86_64_cpu_has_one_beyond_portable() {
        assert!(XtsPath::detect().supported());
        assert!(XtsPath::Portable.supported());
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("aes") {
            assert!(XtsPath::AesNi.supported());
        }
        for path in XtsPath::ALL {
            assert_eq!(XtsPath::from_name(path.name()), Some(path));
        }
    }

    /// One cipher per path this CPU can run.
    fn ciphers(key: &[u8; 64]) -> Vec<XtsCipher> {
        XtsPath::all_supported()
            .into_iter()
            .map(|path| XtsCipher::with_path(key, path).expect("supported"))
            .collect()
    }

    #[test]
    fn every_path_matches_xts_mode() {
        let key = key();
        let oracle = Xts128::new(
            Aes256::new_from_slice(&key[..32]).unwrap(),
            Aes256::new_from_slice(&key[32..]).unwrap(),
        );
        // Units that end mid-batch, span batches, and are smaller than a
        // vector; counts that leave a partial group of encrypted tweaks.
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
                for cipher in ciphers(&key) {
                    let context = format!("{:?} unit {unit_bytes} x {units}", cipher.path());
                    let mut buf = plain.clone();
                    cipher.encrypt(&mut buf, unit, Tweak(u128::MAX - 5));
                    assert!(buf == expected, "{context}");
                    cipher.decrypt(&mut buf, unit, Tweak(u128::MAX - 5));
                    assert!(buf == plain, "{context}");
                }
            }
        }
    }

    #[test]
    fn raw_aes_on_every_path_matches_the_aes_crate() {
        let key = key();
        let reference = Aes256::new_from_slice(&key[..32]).unwrap();
        let plain: Vec<u8> = (0..16 * 77).map(|i| (i * 13) as u8).collect();
        let mut expected = plain.clone();
        for block in expected.chunks_exact_mut(16) {
            let mut array = aes::Block::try_from(&*block).unwrap();
            aes::cipher::BlockCipherEncrypt::encrypt_block(&reference, &mut array);
            block.copy_from_slice(&array);
        }
        for cipher in ciphers(&key) {
            let mut buf = plain.clone();
            cipher.raw_aes_encrypt_for_bench(&mut buf);
            assert!(buf == expected, "{:?}", cipher.path());
        }
    }

    #[test]
    fn a_locked_cipher_encrypts_like_a_plain_one() {
        let key = key();
        let locked = XtsCipher::new_locked(&key).unwrap();
        let plain = XtsCipher::new(&key);
        let mut a = vec![7u8; 4096];
        let mut b = a.clone();
        locked.get().encrypt(&mut a, DataUnit::BYTES_4096, Tweak(5));
        plain.encrypt(&mut b, DataUnit::BYTES_4096, Tweak(5));
        assert!(a == b);
    }
}
