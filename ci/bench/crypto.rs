//! Crypto throughput, one process: our AES-256-XTS against its ceiling (raw
//! AES-256 block encryption of the same buffer), the `xts-mode` crate and
//! `openssl speed`; and the crypto pool on a large buffer.
//!
//! Run through `ci/bench.sh crypto [--reps N] [--rep-ms N]`. Single-thread
//! figures are per second of the measuring thread's CPU time (as `openssl
//! speed` reports by default, user CPU time), so that neighbours on a busy
//! machine do not shift one side more than the other; the pool figures are
//! wall time. Single-thread figures encrypt one buffer per call, as a write of that size would: a
//! 4096-byte call is one 4 KiB data unit, a 512-byte call one sector, like
//! `openssl speed -bytes 4096` / `-bytes 512`.
//!
//! The first rows are the path this CPU runs by default (`xts_path`; set
//! `LSVBLK_XTS_PATH` to run a slower one everywhere, the pool included).
//! Then, for every XTS path the CPU supports, forced one at a time, the
//! same 4 KiB call against raw AES on the same instruction set (our rounds
//! in the same registers; the `aes` crate's own dispatch cannot be
//! steered) and against OpenSSL limited to that instruction set through
//! `OPENSSL_ia32cap`: on an AVX-512 machine the `vaes_avx2` rows are what
//! an AVX2-only server (AMD Zen 3) runs. Last, what the register and stack
//! scrubs after each call cost.

mod common;
#[path = "../../tests/kit/mod.rs"]
mod kit;

use std::hint::black_box;
use std::process::Command;

use aes::Aes256;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit, consts::U16};
use common::{Clock, Options, Report, Suite, Throughput, cpu_features, median};
use lsvblk::crypto::hygiene::scrub_vector_registers;
use lsvblk::crypto::locked::{scrub_callee_frames, scrub_callee_frames_of};
use lsvblk::crypto::xts::KERNEL_FRAMES_BYTES;
use lsvblk::crypto::{CryptoPool, DataUnit, Tweak, XtsCipher, XtsPath};
use lsvblk::limits::CRYPTO_CHUNK_BYTES_DEFAULT;
use xts_mode::{Xts128, get_tweak_default};

/// Repetitions per case when `--reps` is not given.
const REPS_DEFAULT: usize = 7;
/// Wall time of one repetition of one case when `--rep-ms` is not given.
const REP_MS_DEFAULT: u64 = 150;
/// Bytes of the buffer the crypto pool is measured on.
const POOL_BUFFER_BYTES: usize = 4 << 20;
/// `openssl speed -seconds` per run.
const OPENSSL_SECONDS: u32 = 1;

type Block = Array<u8, U16>;

fn main() {
    let options = Options::from_args(REPS_DEFAULT, REP_MS_DEFAULT);
    let key: [u8; 64] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    let xts_cipher = XtsCipher::new(&key);
    let xts = &xts_cipher;
    let data_key = Aes256::new_from_slice(&key[..32]).expect("32-byte key");
    let oracle = Xts128::new(
        Aes256::new_from_slice(&key[..32]).expect("32-byte key"),
        Aes256::new_from_slice(&key[32..]).expect("32-byte key"),
    );
    let pool_1t = CryptoPool::new(1, CRYPTO_CHUNK_BYTES_DEFAULT).expect("pool of 1");
    let pool_2t = CryptoPool::new(2, CRYPTO_CHUNK_BYTES_DEFAULT).expect("pool of 2");

    let forced: Vec<XtsCipher> = XtsPath::all_supported()
        .into_iter()
        .map(|path| XtsCipher::with_path(&key, path).expect("a supported path"))
        .collect();
    // Per CPU second of this thread, as `openssl speed` counts by default:
    // other processes on a busy machine shift neither side.
    let mut suite = Suite::new(options.clone()).with_clock(Clock::ThreadCpu);
    for unit in [DataUnit::BYTES_4096, DataUnit::BYTES_512] {
        add_single_thread_cases(&mut suite, xts, &data_key, &oracle, unit);
    }
    let mut sectors = vec![0x5au8; 4096];
    let mut seq = 0u64;
    suite.add(
        "xts_512x8_mbps",
        "XTS enc, 4 KiB call of 8 x 512 B units",
        4096,
        move || {
            seq += 1;
            xts.encrypt(&mut sectors, DataUnit::BYTES_512, Tweak::for_block(seq, 0));
            black_box(&mut sectors);
        },
    );
    for cipher in &forced {
        add_path_cases(&mut suite, cipher);
    }
    add_scrub_cases(&mut suite);
    let mut results = suite.run();

    // The pools get a suite of their own: rayon workers spin for a while
    // after a job, and on a 2-CPU machine that would slow whichever
    // single-thread case ran next.
    let mut pool_suite = Suite::new(options.clone());
    for (pool, threads) in [(&pool_1t, 1), (&pool_2t, 2)] {
        let mut big = vec![0x33u8; POOL_BUFFER_BYTES];
        pool_suite.add(
            &format!("pool_{threads}t_4m_mbps"),
            &format!("CryptoPool enc, 4 MiB, {threads} thread(s)"),
            POOL_BUFFER_BYTES,
            move || {
                pool.encrypt(xts, &mut big, DataUnit::BYTES_4096, Tweak(7));
                black_box(&mut big);
            },
        );
    }
    results.extend(pool_suite.run());
    // `--only` narrows the run to some of our cases (for profiling); a smoke
    // run under `cargo test` skips the seconds openssl takes.
    let openssl_runs = options.only.is_none() && !options.smoke;
    let (openssl_4k, openssl_512) = if openssl_runs {
        (
            openssl_speed_mbps(4096, options.reps, None),
            openssl_speed_mbps(512, options.reps, None),
        )
    } else {
        (None, None)
    };
    let openssl_by_path: Vec<(XtsPath, Option<f64>)> = forced
        .iter()
        .map(|cipher| {
            let path = cipher.path();
            let mask = openssl_mask(path);
            (
                path,
                openssl_runs
                    .then(|| openssl_speed_mbps(4096, options.reps, mask))
                    .flatten(),
            )
        })
        .collect();
    let mut report = report(&options, xts, &results, openssl_4k, openssl_512);
    report_paths(&mut report, &results, &openssl_by_path);
    report_scrubs(&mut report, &results);
    report.finish();
}

/// `openssl_*`/`ratio_*`/`xts_*` keys of one path: its name in snake case.
fn path_key(path: XtsPath) -> String {
    path.name().replace('-', "_")
}

/// XTS and raw AES on one forced path, 4 KiB calls.
fn add_path_cases<'a>(suite: &mut Suite<'a>, cipher: &'a XtsCipher) {
    let name = cipher.path().name();
    let key = path_key(cipher.path());
    let mut buf = vec![0xa5u8; 4096];
    let mut seq = 0u64;
    suite.add(
        &format!("xts_4k_mbps_{key}"),
        &format!("XTS enc 4 KiB, {name} path"),
        4096,
        move || {
            seq += 1;
            cipher.encrypt(&mut buf, DataUnit::BYTES_4096, Tweak::for_block(seq, 0));
            black_box(&mut buf);
        },
    );
    let mut blocks = vec![0xa5u8; 4096];
    suite.add(
        &format!("aes_ecb_mbps_{key}"),
        &format!("raw AES-256 4 KiB, {name} rounds"),
        4096,
        move || {
            cipher.raw_aes_encrypt_for_bench(&mut blocks);
            black_box(&mut blocks);
        },
    );
}

/// The two scrubs every XTS call ends with, alone, timed per call (as if
/// each call were 4 KiB, so the table shows MB/s; the report turns them
/// into nanoseconds).
fn add_scrub_cases(suite: &mut Suite<'_>) {
    suite.add(
        "scrub_registers_per_4k_mbps",
        "scrub_vector_registers, per 4 KiB",
        4096,
        || {
            scrub_vector_registers();
            black_box(());
        },
    );
    suite.add(
        "scrub_stack_per_4k_mbps",
        "stack scrub of our kernels (8 KiB), per 4 KiB",
        4096,
        || {
            scrub_callee_frames_of::<KERNEL_FRAMES_BYTES>();
            black_box(());
        },
    );
    suite.add(
        "scrub_stack_16k_per_4k_mbps",
        "stack scrub of the aes-crate path (16 KiB), per 4 KiB",
        4096,
        || {
            scrub_callee_frames();
            black_box(());
        },
    );
}

/// `OPENSSL_ia32cap` that hides from OpenSSL what a CPU running only
/// `path` lacks (the format is `~WORD0:~WORD1`, CPUID leaf 1 EDX/ECX and
/// leaf 7 EBX/ECX; see OPENSSL_ia32cap(3)). `None`: nothing hidden.
fn openssl_mask(path: XtsPath) -> Option<&'static str> {
    // AVX-512 F, DQ, IFMA, CD, BW, VL (leaf 7 EBX) and VBMI, VBMI2, VNNI,
    // BITALG, VPOPCNTDQ (leaf 7 ECX).
    const NO_AVX512: &str = "~0x0:~0x5842D0230000";
    // Also AVX (leaf 1 ECX), AVX2, VAES and VPCLMULQDQ.
    const NO_AVX: &str = "~0x1000000000000000:~0x5E42D0230020";
    // Also AES-NI and PCLMULQDQ: OpenSSL's software AES.
    const NO_AES: &str = "~0x1200000200000000:~0x5E42D0230020";
    match path {
        XtsPath::VaesAvx512 => None,
        XtsPath::VaesAvx2 => Some(NO_AVX512),
        XtsPath::AesNi => Some(NO_AVX),
        XtsPath::Portable => Some(NO_AES),
    }
}

/// Adds our XTS (encrypt and decrypt), raw AES and `xts-mode` on one call of
/// one `unit`-sized data unit.
fn add_single_thread_cases<'a>(
    suite: &mut Suite<'a>,
    xts: &'a XtsCipher,
    data_key: &'a Aes256,
    oracle: &'a Xts128<Aes256>,
    unit: DataUnit,
) {
    let bytes = unit.bytes();
    let size = if bytes == 4096 { "4k" } else { "512" };
    let label = if bytes == 4096 { "4 KiB" } else { "512 B" };

    let mut buf = vec![0xa5u8; bytes];
    let mut seq = 0u64;
    suite.add(
        &format!("xts_{size}_mbps"),
        &format!("XTS enc (ours), {label} unit"),
        bytes,
        move || {
            seq += 1;
            xts.encrypt(&mut buf, unit, Tweak::for_block(seq, 0));
            black_box(&mut buf);
        },
    );
    let mut buf = vec![0xa5u8; bytes];
    suite.add(
        &format!("xts_dec_{size}_mbps"),
        &format!("XTS dec (ours), {label} unit"),
        bytes,
        move || {
            xts.decrypt(&mut buf, unit, Tweak(9));
            black_box(&mut buf);
        },
    );
    let mut blocks = vec![Block::default(); bytes / 16];
    let key = if bytes == 4096 {
        "aes_ecb_mbps".to_owned()
    } else {
        format!("aes_ecb_{size}_mbps")
    };
    suite.add(
        &key,
        &format!("raw AES-256 encrypt_blocks, {label}"),
        bytes,
        move || {
            data_key.encrypt_blocks(&mut blocks);
            black_box(&mut blocks);
        },
    );
    let mut buf = vec![0xa5u8; bytes];
    suite.add(
        &format!("xts_mode_{size}_mbps"),
        &format!("xts-mode 0.6 enc, {label} unit"),
        bytes,
        move || {
            oracle.encrypt_sector(&mut buf, get_tweak_default(3));
            black_box(&mut buf);
        },
    );
}

/// Median single-thread AES-256-XTS encryption speed that `openssl speed`
/// reports for `bytes`-byte calls over `reps` runs, with `OPENSSL_ia32cap`
/// set to `mask` if given; `None` if openssl is missing or its output
/// cannot be parsed.
fn openssl_speed_mbps(bytes: usize, reps: usize, mask: Option<&str>) -> Option<f64> {
    let mut samples = Vec::new();
    for _ in 0..reps {
        let mut command = Command::new("openssl");
        command
            .args(["speed", "-mr", "-evp", "aes-256-xts", "-bytes"])
            .arg(bytes.to_string())
            .args(["-seconds", &OPENSSL_SECONDS.to_string()]);
        if let Some(mask) = mask {
            command.env("OPENSSL_ia32cap", mask);
        }
        let output = command.output().ok()?;
        if !output.status.success() {
            return None;
        }
        samples.push(parse_openssl_mr(&String::from_utf8_lossy(&output.stdout))?);
    }
    Some(median(&samples))
}

/// Bytes per second from `openssl speed -mr` output, in MB/s. The line looks
/// like `+F:25:AES-256-XTS:6421277184.00` (the last field is bytes/s).
fn parse_openssl_mr(stdout: &str) -> Option<f64> {
    let line = stdout.lines().find(|line| line.starts_with("+F:"))?;
    let bytes_per_s: f64 = line.rsplit(':').next()?.trim().parse().ok()?;
    Some(bytes_per_s / common::MB_BYTES)
}

/// The default path's rows: our XTS, raw AES (the `aes` crate), xts-mode,
/// OpenSSL, the pools, and their ratios.
fn report(
    options: &Options,
    xts: &XtsCipher,
    results: &[Throughput],
    openssl_4k: Option<f64>,
    openssl_512: Option<f64>,
) -> Report {
    let median = |key: &str| find(results, key);
    let mut report = Report::new("crypto", options);
    if let Some(cpu) = common::cpu_model() {
        report.info("cpu", &cpu);
    }
    report.info("cpu_features", &cpu_features());
    report.info("xts_path", xts.path().name());
    let per_path = ["xts_4k_mbps_", "aes_ecb_mbps_", "scrub_"];
    for result in results {
        if !per_path.iter().any(|prefix| result.key.starts_with(prefix)) {
            report.throughput(result, "");
        }
    }
    let note = "openssl speed -evp aes-256-xts, median of runs";
    report.row(
        "openssl_xts_4k_mbps",
        "OpenSSL XTS enc, 4 KiB unit",
        openssl_4k,
        "MB/s",
        note,
    );
    report.row(
        "openssl_xts_512_mbps",
        "OpenSSL XTS enc, 512 B unit",
        openssl_512,
        "MB/s",
        note,
    );
    let xts_4k = median("xts_4k_mbps");
    let xts_512 = median("xts_512_mbps");
    let rows = [
        (
            "ratio_xts_vs_ecb",
            "ratio XTS/raw AES, 4 KiB",
            ratio(xts_4k, median("aes_ecb_mbps")),
        ),
        (
            "ratio_xts_512_vs_ecb",
            "ratio XTS/raw AES, 512 B",
            ratio(xts_512, median("aes_ecb_512_mbps")),
        ),
        (
            "ratio_xts_vs_openssl",
            "ratio XTS/OpenSSL, 4 KiB",
            ratio(xts_4k, openssl_4k),
        ),
        (
            "ratio_xts_512_vs_openssl",
            "ratio XTS/OpenSSL, 512 B",
            ratio(xts_512, openssl_512),
        ),
        (
            "ratio_xts_vs_xts_mode",
            "ratio XTS/xts-mode, 4 KiB",
            ratio(xts_4k, median("xts_mode_4k_mbps")),
        ),
        (
            "ratio_pool_2t_vs_1t",
            "ratio pool 2 threads/1 thread",
            ratio(median("pool_2t_4m_mbps"), median("pool_1t_4m_mbps")),
        ),
    ];
    for (key, label, value) in rows {
        report.row(key, label, value, "x", "of medians");
    }
    report
}

/// Each forced path: XTS, raw AES on the same instruction set, OpenSSL
/// limited to it, and the two ratios.
fn report_paths(report: &mut Report, results: &[Throughput], openssl: &[(XtsPath, Option<f64>)]) {
    for &(path, openssl_4k) in openssl {
        let key = path_key(path);
        let name = path.name();
        let xts = find(results, &format!("xts_4k_mbps_{key}"));
        let ecb = find(results, &format!("aes_ecb_mbps_{key}"));
        report.row(
            &format!("xts_4k_mbps_{key}"),
            &format!("{name}: XTS enc 4 KiB"),
            xts,
            "MB/s",
            "median",
        );
        report.row(
            &format!("aes_ecb_mbps_{key}"),
            &format!("{name}: raw AES 4 KiB"),
            ecb,
            "MB/s",
            "same instructions",
        );
        let note = openssl_mask(path).map_or("OpenSSL as is".to_owned(), |m| {
            format!("OPENSSL_ia32cap={m}")
        });
        report.row(
            &format!("openssl_xts_4k_mbps_{key}"),
            &format!("{name}: OpenSSL XTS 4 KiB"),
            openssl_4k,
            "MB/s",
            &note,
        );
        report.row(
            &format!("ratio_xts_vs_ecb_{key}"),
            &format!("{name}: ratio XTS/raw AES"),
            ratio(xts, ecb),
            "x",
            "of medians",
        );
        report.row(
            &format!("ratio_xts_vs_openssl_{key}"),
            &format!("{name}: ratio XTS/OpenSSL"),
            ratio(xts, openssl_4k),
            "x",
            "of medians",
        );
    }
}

/// The cost of the scrubs after each call: nanoseconds per call, and the
/// share of a 4 KiB call and of a 512 KiB pool chunk on the default path.
fn report_scrubs(report: &mut Report, results: &[Throughput]) {
    let ns_per_call = |key: &str| find(results, key).map(|mbps| 4096.0 * 1e3 / mbps);
    let xts_4k_ns = ns_per_call("xts_4k_mbps");
    let chunk_ns = xts_4k_ns.map(|ns| ns * (CRYPTO_CHUNK_BYTES_DEFAULT / 4096) as f64);
    for (key, label) in [
        ("scrub_registers", "scrub_vector_registers"),
        ("scrub_stack", "stack scrub (8 KiB, our kernels)"),
        ("scrub_stack_16k", "stack scrub (16 KiB, aes-crate path)"),
    ] {
        let ns = ns_per_call(&format!("{key}_per_4k_mbps"));
        report.row(
            &format!("{key}_ns"),
            &format!("{label}, one call"),
            ns,
            "ns",
            "median",
        );
        let share = |call_ns: Option<f64>| ratio(ns, call_ns).map(|r| 100.0 * r);
        report.row(
            &format!("{key}_share_4k_pct"),
            &format!("{label}, share of a 4 KiB call"),
            share(xts_4k_ns),
            "%",
            "",
        );
        report.row(
            &format!("{key}_share_512k_pct"),
            &format!("{label}, share of a 512 KiB chunk"),
            share(chunk_ns),
            "%",
            "",
        );
    }
}

/// The median of case `key`, if it ran.
fn find(results: &[Throughput], key: &str) -> Option<f64> {
    results.iter().find(|r| r.key == key).map(|r| r.median_mbps)
}

/// `a / b` when both are known and `b` is not 0.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}
