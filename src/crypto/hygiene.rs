//! Register hygiene: no key material left in the CPU's vector registers.
//!
//! AES code keeps round keys in vector registers (the AES-NI/VAES backends
//! broadcast the whole schedule into XMM/YMM/ZMM registers), and a plain
//! `memcpy` of key bytes moves them through vector registers too. Those
//! registers keep their values until something else overwrites them, and
//! a thread that stops doing vector work keeps them indefinitely. The
//! kernel saves them when the thread is switched out and writes them into
//! a core dump (the `NT_PRFPREG` and `NT_X86_XSTATE` notes of each
//! thread): `MADV_DONTDUMP` cannot exclude registers, and `/proc/PID/mem`
//! does not show them. AES-256's last two round keys give the key back.
//!
//! [`scrub_vector_registers`] zeroes every vector register the CPU has:
//! `vzeroall` clears YMM0-15 (and ZMM0-15 entirely), and on AVX-512 CPUs
//! ZMM16-31 and the opmask registers are cleared one by one. Call it at the
//! end of every function that handled key material in registers (key
//! expansion, encryption, key-id HMAC, key copies), or hold a
//! [`RegisterScrub`] guard so that every return path does. It costs a few
//! nanoseconds.
//!
//! [`forbid_core_dumps`] makes the process non-dumpable, so that neither
//! registers nor any mapping it missed can end up in a core file or be
//! read by another process of the same user.

/// Zeroes all vector registers of this thread (XMM/YMM/ZMM 0-31 and the
/// AVX-512 opmask registers, whichever the CPU has). A no-op on
/// architectures other than x86-64.
#[inline]
pub fn scrub_vector_registers() {
    #[cfg(target_arch = "x86_64")]
    x86::scrub();
}

/// Calls [`scrub_vector_registers`] when dropped: declare it first in a
/// function that handles key material, and every way out of the function
/// (including `?` and panics) leaves the registers clean.
#[must_use = "the registers are scrubbed when the guard is dropped"]
pub struct RegisterScrub(());

impl RegisterScrub {
    /// A guard that scrubs the vector registers when it goes out of scope.
    pub fn on_drop() -> Self {
        RegisterScrub(())
    }
}

impl Drop for RegisterScrub {
    fn drop(&mut self) {
        scrub_vector_registers();
    }
}

/// The command-line flag that keeps a process dumpable, for debugging and
/// for the tests that search core dumps for keys. Never for production.
pub const ALLOW_CORE_DUMPS_FLAG: &str = "--allow-core-dumps";

/// Makes this process write no core dump and refuse same-user ptrace and
/// `/proc/PID/mem` readers: `RLIMIT_CORE` 0 (soft and hard, so a child
/// cannot raise it either) and `PR_SET_DUMPABLE` 0 (which also covers a
/// `core_pattern` pipe, for which the kernel ignores `RLIMIT_CORE`).
/// Call it first thing in `main`, before any key exists.
pub fn forbid_core_dumps() -> std::io::Result<()> {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct we pass; no other preconditions.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: PR_SET_DUMPABLE takes an integer argument and touches no
    // memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What a binary's `main` calls before anything else: [`forbid_core_dumps`]
/// unless the (hidden, test-only) [`ALLOW_CORE_DUMPS_FLAG`] is among the
/// arguments. The arguments are scanned before they are parsed, so that no
/// key can exist before the process is protected.
pub fn protect_process_unless_flagged() -> std::io::Result<()> {
    let allowed = std::env::args_os()
        .skip(1)
        .any(|arg| arg == ALLOW_CORE_DUMPS_FLAG);
    if allowed {
        return Ok(());
    }
    forbid_core_dumps()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;

    /// `asm!` of `instructions` that only clear registers the "C" ABI lets
    /// any call clobber (all vector and opmask registers are caller-saved),
    /// declared as clobbered: register to register, so no memory, no
    /// stack, no flags. The caller's `unsafe` block rests on exactly that.
    macro_rules! clear_registers {
        ($($instruction:literal),+ $(,)?) => {
            asm!(
                $($instruction),+,
                clobber_abi("C"),
                options(nomem, nostack, preserves_flags),
            )
        };
    }

    /// Dispatches on the register file this CPU has (detected once, then
    /// cached by the standard library).
    #[inline]
    pub(super) fn scrub() {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            unsafe { avx512() }
        } else if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU has AVX (checked just above).
            unsafe { avx() }
        } else {
            sse()
        }
    }

    /// ZMM0-31 and k0-7.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[inline(never)]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512() {
        // SAFETY: see `clear_registers`. An EVEX write to XMMn zeroes
        // ZMMn's upper bits, so `vpxord xmmN` clears all 512 bits of
        // register N.
        unsafe {
            clear_registers!(
                "vzeroall",
                ".irp n, 16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
                "vpxord xmm\\n, xmm\\n, xmm\\n",
                ".endr",
                ".irp n, 0,1,2,3,4,5,6,7",
                "kxorw k\\n, k\\n, k\\n",
                ".endr",
            )
        }
    }

    /// YMM0-15 (XMM0-15 included).
    ///
    /// # Safety
    /// The CPU must support AVX.
    #[inline(never)]
    #[target_feature(enable = "avx")]
    unsafe fn avx() {
        // SAFETY: see `clear_registers`.
        unsafe { clear_registers!("vzeroall") }
    }

    /// XMM0-15 (SSE2 is part of x86-64).
    #[inline(never)]
    fn sse() {
        // SAFETY: see `clear_registers`.
        unsafe {
            clear_registers!(
                ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
                "pxor xmm\\n, xmm\\n",
                ".endr",
            )
        }
    }

    #[cfg(test)]
    mod tests {
        use std::arch::asm;

        /// `asm!` that runs `fill` (sets the registers), calls `scrub`, then
        /// runs `store` (writes them to the buffer at r12, which the call
        /// preserves).
        macro_rules! fill_scrub_store {
            ($scrub:expr, $out:expr, [$($fill:literal),+ $(,)?], [$($store:literal),+ $(,)?]) => {
                asm!(
                    $($fill),+,
                    "call {scrub}",
                    $($store),+,
                    scrub = in(reg) $scrub,
                    in("r12") $out,
                    clobber_abi("C"),
                )
            };
        }

        /// Fills every vector register this CPU has with ones, runs `scrub`
        /// and returns what the registers hold afterwards: 32 ZMM registers
        /// (64 bytes each; only the low 32 or 16 bytes of the first 16 where
        /// the CPU has no AVX-512 or AVX) and the eight opmask registers.
        fn registers_after(scrub: extern "C" fn()) -> (Vec<u8>, [u64; 8]) {
            let mut vectors = vec![0xeeu8; 32 * 64];
            let mut masks = [0xeeu64; 8];
            let out = vectors.as_mut_ptr();
            let out_masks = masks.as_mut_ptr();
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F is present; the asm writes only the two
                // buffers above (64 * 32 and 8 * 8 bytes, through r12/r13,
                // which the call preserves), calls `scrub` with the stack
                // aligned as the ABI requires (guaranteed on entry to an
                // asm block without `nostack`) and declares every register
                // the call may clobber.
                unsafe {
                    asm!(
                        ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
                        "vpternlogd zmm\\n, zmm\\n, zmm\\n, 0xff",
                        ".endr",
                        ".irp n, 0,1,2,3,4,5,6,7",
                        "kxnorw k\\n, k\\n, k\\n",
                        ".endr",
                        "call {scrub}",
                        ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
                        "vmovdqu64 [r12 + 64*\\n], zmm\\n",
                        ".endr",
                        ".irp n, 0,1,2,3,4,5,6,7",
                        "kmovw eax, k\\n",
                        "mov [r13 + 8*\\n], rax",
                        ".endr",
                        scrub = in(reg) scrub,
                        in("r12") out,
                        in("r13") out_masks,
                        clobber_abi("C"),
                    );
                }
            } else {
                // Bytes of each register the CPU has: YMM or XMM.
                let width = if std::arch::is_x86_feature_detected!("avx") {
                    // SAFETY: as above, for YMM0-15 on an AVX CPU.
                    unsafe {
                        fill_scrub_store!(
                            scrub,
                            out,
                            [
                                "vpcmpeqd ymm0, ymm0, ymm0",
                                ".irp n, 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
                                "vmovdqa ymm\\n, ymm0",
                                ".endr",
                            ],
                            [
                                ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
                                "vmovdqu [r12 + 64*\\n], ymm\\n",
                                ".endr",
                            ]
                        )
                    };
                    32
                } else {
                    // SAFETY: as above, for XMM0-15 (SSE2).
                    unsafe {
                        fill_scrub_store!(
                            scrub,
                            out,
                            [
                                ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
                                "pcmpeqd xmm\\n, xmm\\n",
                                ".endr",
                            ],
                            [
                                ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
                                "movdqu [r12 + 64*\\n], xmm\\n",
                                ".endr",
                            ]
                        )
                    };
                    16
                };
                masks = [0; 8];
                for register in vectors.chunks_exact_mut(64) {
                    register[width..].fill(0);
                }
            }
            (vectors, masks)
        }

        extern "C" fn scrub_all() {
            super::super::scrub_vector_registers();
        }

        extern "C" fn scrub_nothing() {}

        #[test]
        fn every_vector_and_mask_register_is_zero_after_a_scrub() {
            let (vectors, masks) = registers_after(scrub_all);
            for (index, register) in vectors.chunks_exact(64).enumerate() {
                assert!(
                    register.iter().all(|b| *b == 0),
                    "vector register {index} not cleared: {register:02x?}"
                );
            }
            assert_eq!(masks, [0; 8], "opmask registers not cleared");
        }

        #[test]
        fn without_a_scrub_the_registers_keep_their_values() {
            // The harness itself must be able to see a register that was
            // left alone, or the test above proves nothing.
            let (vectors, _) = registers_after(scrub_nothing);
            let first = &vectors[..16];
            assert!(first.iter().all(|b| *b == 0xff), "{first:02x?}");
            let last_used = if std::arch::is_x86_feature_detected!("avx512f") {
                &vectors[31 * 64..32 * 64]
            } else {
                &vectors[15 * 64..15 * 64 + 16]
            };
            assert!(last_used.iter().all(|b| *b == 0xff), "{last_used:02x?}");
        }
    }
}
