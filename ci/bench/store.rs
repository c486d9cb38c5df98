//! The volume library on its own, one thread, in process: 4 KiB random write
//! and random read IOPS on a volume in a temporary directory on disk,
//! AES-256-XTS against the benchmark-only null cipher (what crypto costs on
//! the store's own path, without vhost-user in the way).
//!
//! Run through `ci/bench.sh store [--reps N] [--rep-ms N] [--only TEXT]`
//! (which builds it with `--features null-cipher`, see
//! `[package.metadata.bench-features]` in Cargo.toml). Without that feature
//! only the encrypted cases run and the null figures are `null`.
//!
//! Method: each volume (1 GiB) is first filled with 1 MiB writes and flushed,
//! so every read hits data. A repetition of a case issues 4 KiB requests at
//! uniformly random 4 KiB-aligned offsets for `--rep-ms` (a write repetition
//! stops earlier after 192 MiB), then flushes; the flush is *not* in the
//! timed interval (it is there so that one case's
//! dirty pages are on disk before the next case starts). Reads mostly hit the
//! host page cache (the volume fits in RAM): they measure index lookup,
//! `pread` and decryption, not the disk. Cases run round-robin (the order
//! rotates per repetition); the median of the repetitions is reported.

mod common;
#[path = "../../tests/kit/mod.rs"]
mod kit;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Options, Report, median};
use kit::rng::Rng;
use lsvblk::crypto::{CryptoPool, DataKey, KeyKind};
use lsvblk::volume::{Volume, VolumeOptions};

/// Repetitions per case when `--reps` is not given.
const REPS_DEFAULT: usize = 7;
/// Wall time of one repetition of one case when `--rep-ms` is not given.
const REP_MS_DEFAULT: u64 = 700;
/// Volume size for a real run.
const VOLUME_BYTES: u64 = 1 << 30;
/// Volume size for a smoke run under `cargo test` (debug-ish build).
const SMOKE_VOLUME_BYTES: u64 = 16 << 20;
/// Request size of the random cases.
const IO_BYTES: usize = 4096;
/// Request size used to fill a volume.
const FILL_BYTES: usize = 1 << 20;
/// Most bytes one write repetition writes: the log has no cleaner yet and
/// the flush after each repetition runs at disk speed, so unbounded writes
/// would make the run long and the disk full.
const WRITE_CAP_BYTES: u64 = 192 << 20;
/// Requests between two looks at the clock.
const CLOCK_EVERY: u64 = 64;

/// What a case does per request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    RandWrite,
    RandRead,
}

/// One measured case: an operation on one of the volumes.
struct Case {
    key: &'static str,
    label: &'static str,
    op: Op,
    volume: usize,
    samples: Vec<f64>,
}

/// A volume under test with its temporary directory (removed on drop,
/// after the volume is closed).
struct Target {
    name: &'static str,
    volume: Option<Volume>,
    _dir: tempfile::TempDir,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(volume) = self.volume.take()
            && let Err(error) = volume.close()
        {
            eprintln!("store bench: closing the {} volume: {error}", self.name);
        }
    }
}

fn main() {
    let options = Options::from_args(REPS_DEFAULT, REP_MS_DEFAULT);
    let volume_bytes = if options.smoke {
        SMOKE_VOLUME_BYTES
    } else {
        VOLUME_BYTES
    };
    // The daemon's default pool: one thread per CPU, 512 KiB chunks. A 4 KiB
    // request is below one chunk, so it is encrypted on the calling thread.
    let pool = Arc::new(CryptoPool::with_defaults().expect("crypto pool"));

    let mut targets = vec![make_target("aes-256-xts", false, volume_bytes, &pool)];
    let null_index = if cfg!(feature = "null-cipher") {
        targets.push(make_target("null", true, volume_bytes, &pool));
        Some(1)
    } else {
        eprintln!("store bench: built without --features null-cipher: no null-cipher cases");
        None
    };
    let fill_s: Vec<f64> = targets
        .iter()
        .map(|t| fill(t.volume.as_ref().expect("open"), volume_bytes))
        .collect();

    let mut cases = vec![
        case(
            "randwrite_4k_iops",
            "randwrite 4 KiB, AES-XTS",
            Op::RandWrite,
            0,
        ),
        case(
            "randread_4k_iops",
            "randread 4 KiB, AES-XTS",
            Op::RandRead,
            0,
        ),
    ];
    if let Some(null) = null_index {
        cases.insert(
            1,
            case(
                "randwrite_4k_null_iops",
                "randwrite 4 KiB, null cipher",
                Op::RandWrite,
                null,
            ),
        );
        cases.push(case(
            "randread_4k_null_iops",
            "randread 4 KiB, null cipher",
            Op::RandRead,
            null,
        ));
    }
    if let Some(only) = &options.only {
        cases.retain(|c| only.split(',').any(|text| c.key.contains(text)));
    }

    let blocks = volume_bytes / IO_BYTES as u64;
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut buf = vec![0u8; IO_BYTES];
    // Warm-up: a short untimed pass of every case.
    let warm_up = (options.rep_duration / 8).min(Duration::from_millis(300));
    for case in &cases {
        let volume = targets[case.volume].volume.as_ref().expect("open");
        run_case(volume, case.op, blocks, warm_up, &mut rng, &mut buf);
    }
    for rep in 0..options.reps {
        // Rotate the order, so that no case always follows the same one
        // (a write's flush, say).
        for turn in 0..cases.len() {
            let index = (turn + rep) % cases.len();
            let case = &mut cases[index];
            let volume = targets[case.volume].volume.as_ref().expect("open");
            let iops = run_case(
                volume,
                case.op,
                blocks,
                options.rep_duration,
                &mut rng,
                &mut buf,
            );
            case.samples.push(iops);
        }
    }
    report(&options, &cases, &targets, &fill_s, volume_bytes);
}

fn case(key: &'static str, label: &'static str, op: Op, volume: usize) -> Case {
    Case {
        key,
        label,
        op,
        volume,
        samples: Vec::new(),
    }
}

fn make_target(
    name: &'static str,
    null_cipher: bool,
    bytes: u64,
    pool: &Arc<CryptoPool>,
) -> Target {
    // Under the system temporary directory: a real file system on disk here
    // (check with `findmnt -T /tmp`; a tmpfs would make flushes free).
    let dir = tempfile::Builder::new()
        .prefix("lsvblk-store-bench-")
        .tempdir()
        .expect("temporary directory");
    let material: Vec<u8> = (0..64u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(5))
        .collect();
    let key = DataKey::from_bytes(KeyKind::Aes256Xts, &material).expect("key");
    let options = VolumeOptions {
        pool: Some(Arc::clone(pool)),
        null_cipher,
        ..VolumeOptions::default()
    };
    let volume =
        Volume::create(&dir.path().join("vol"), bytes, key, &options).expect("create volume");
    Target {
        name,
        volume: Some(volume),
        _dir: dir,
    }
}

/// Writes the whole volume once with 1 MiB writes and flushes; returns the
/// seconds it took.
fn fill(volume: &Volume, bytes: u64) -> f64 {
    let start = Instant::now();
    let mut data = vec![0u8; FILL_BYTES];
    let mut offset = 0;
    while offset < bytes {
        // Not all zeros: compressible-looking data is not special here, but
        // distinct blocks make an accidental hole visible in a debugger.
        data[..8].copy_from_slice(&offset.to_le_bytes());
        let len = FILL_BYTES.min((bytes - offset) as usize);
        volume.write(offset, &data[..len]).expect("fill write");
        offset += len as u64;
    }
    volume.flush().expect("flush after fill");
    start.elapsed().as_secs_f64()
}

/// Runs `op` at random 4 KiB blocks for `duration` (writes: at most
/// [`WRITE_CAP_BYTES`]), flushes (untimed), and returns requests per second.
fn run_case(
    volume: &Volume,
    op: Op,
    blocks: u64,
    duration: Duration,
    rng: &mut Rng,
    buf: &mut [u8],
) -> f64 {
    let start = Instant::now();
    let mut done: u64 = 0;
    let elapsed = loop {
        for _ in 0..CLOCK_EVERY {
            let offset = rng.below(blocks) * IO_BYTES as u64;
            match op {
                Op::RandWrite => {
                    buf[..8].copy_from_slice(&done.to_le_bytes());
                    volume.write(offset, buf).expect("write");
                }
                Op::RandRead => {
                    volume.read(offset, buf).expect("read");
                    black_box(&mut *buf);
                }
            }
        }
        done += CLOCK_EVERY;
        let elapsed = start.elapsed();
        if elapsed >= duration || (op == Op::RandWrite && done * IO_BYTES as u64 >= WRITE_CAP_BYTES)
        {
            break elapsed;
        }
    };
    if op == Op::RandWrite {
        volume.flush().expect("flush");
    }
    done as f64 / elapsed.as_secs_f64()
}

fn report(options: &Options, cases: &[Case], targets: &[Target], fill_s: &[f64], bytes: u64) {
    let mut report = Report::new("store", options);
    let mut medians = std::collections::HashMap::new();
    for case in cases {
        let value = median(&case.samples);
        medians.insert(case.key, value);
        let min = case.samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = case.samples.iter().copied().fold(0.0, f64::max);
        let note = format!("min {min:.0} max {max:.0} n={}", case.samples.len());
        report.row(case.key, case.label, Some(value), "IOPS", &note);
    }
    for key in ["randwrite_4k_null_iops", "randread_4k_null_iops"] {
        if !medians.contains_key(key) {
            report.row(
                key,
                key,
                None,
                "IOPS",
                "not measured (needs --features null-cipher)",
            );
        }
    }
    let ratio = |enc: &str, null: &str| Some(medians.get(enc)? / medians.get(null)?);
    report.row(
        "ratio_write_enc_vs_null",
        "randwrite AES-XTS / null",
        ratio("randwrite_4k_iops", "randwrite_4k_null_iops"),
        "x",
        "1.0 = crypto costs nothing",
    );
    report.row(
        "ratio_read_enc_vs_null",
        "randread AES-XTS / null",
        ratio("randread_4k_iops", "randread_4k_null_iops"),
        "x",
        "",
    );
    for (target, seconds) in targets.iter().zip(fill_s) {
        let mbps = bytes as f64 / seconds / common::MB_BYTES;
        report.row(
            &format!("fill_1m_{}_mbps", target.name.replace('-', "_")),
            &format!("fill (1 MiB writes + flush), {}", target.name),
            Some(mbps),
            "MB/s",
            "one pass, not a median",
        );
    }
    report.metric("volume_bytes", Some(bytes as f64));
    report.metric("reps", Some(options.reps as f64));
    report.metric("rep_ms", Some(options.rep_duration.as_millis() as f64));
    report.info(
        "method",
        "1 thread, in process; 4 KiB at uniform random aligned offsets of a filled volume; \
         writes capped at 192 MiB per repetition; flush after each write repetition, untimed; default crypto pool",
    );
    if let Some(cpu) = common::cpu_model() {
        report.info("cpu", &cpu);
    }
    report.finish();
}
