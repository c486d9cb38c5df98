//! Compaction on a served volume, with real processes: `lsvkms`, `lsvblk
//! serve` (the shipping, encrypted build) and a libblkio client in this
//! process, with compaction and snapshots driven by the `lsvblk compact`,
//! `lsvblk snapshot create` and `lsvblk status` commands, as an operator
//! runs them (they reach the daemon through `<volume>/control.sock`).
//!
//! It reports, as the last line's JSON keys:
//!
//! - `fg_iops_ratio_during_compaction`: foreground 4 KiB random-write IOPS
//!   (QD 32) while `lsvblk compact --rate-mib R` runs, over the same load with
//!   compaction idle, before and after it (target >= 0.8), from the medians
//!   of the repetitions. R defaults to 64 MiB/s, the daemon's own
//!   background compaction rate (`lsvblk::limits`). A compaction that slows
//!   the guest for part of its run only moves the median if that part holds
//!   most repetitions: `fg_iops_ratio_time_weighted` (all writes over all
//!   timed seconds, per phase) shows it either way;
//! - `compaction_mbps` (at R, under that foreground load) and
//!   `compaction_unthrottled_mbps` (`--rate-mib 0`, no foreground load):
//!   `report.bytes_moved / seconds` from the command's JSON, so the time
//!   includes its flush, segment choice, checkpoints and deletions;
//! - `write_amplification` = (guest bytes written + bytes compaction moved)
//!   / guest bytes written, over the whole run (fill, overwrite and every
//!   foreground repetition), payload bytes only. Also
//!   `write_amplification_segments`: bytes appended to segment files
//!   (growth of the log from `lsvblk status`, plus the bytes of every
//!   segment compaction deleted) over guest bytes: that one also counts
//!   record headers, checksum tables and seal records (not checkpoints or
//!   snapshot indexes, which are separate files);
//! - `snapshot_create_ms`: median of `create_ms` as the daemon reports it
//!   for `lsvblk snapshot create` (from the call to the snapshot being
//!   durable: index captured in memory, log flushed, metadata written and
//!   synced; not the index file, which is `index_ms`), on the preconditioned
//!   volume (an index of about one extent per block) with no guest I/O. The
//!   table also shows the command's round trip (process start included) and
//!   the same under foreground load (`snapshot_create_ms_under_load`, with
//!   the longest the guest's writes waited meanwhile).
//!
//! Method, in order (progress goes to stderr):
//! 1. create a volume (`--size-mb`, default 1 GiB) and serve it with
//!    `--compact-rate-mib 0`, so nothing compacts by itself;
//! 2. precondition: write it fully (1 MiB, QD 8), then overwrite
//!    `--overwrite-pct` (default 200 %) of its size with 4 KiB writes at
//!    uniformly random offsets (QD 32), then FLUSH: the segments of the fill
//!    are ~14 % live, those of the overwrite from ~14 % to 100 %;
//! 3. idle: `--reps` repetitions of 4 KiB random writes at `--qd` for
//!    `--rep-ms` or `--write-cap-mb` MiB, whichever comes first, each
//!    followed by a FLUSH outside the timed interval (as in the device
//!    bench: every repetition starts with a clean page cache);
//! 4. during: start `lsvblk compact VOLUME --json --rate-mib R
//!    --live-ratio-max F` as a child process and run the same repetitions
//!    back to back until it exits; a repetition is cut short when it does
//!    (and dropped if that left it shorter than half an idle one), so only
//!    time while it runs is measured. `fg_coverage_during` is the timed share
//!    of the compaction's wall time (the rest is the FLUSHes);
//! 5. one unthrottled compaction with no guest I/O;
//! 6. idle again. The idle baseline (`iops_idle`) is the median of the
//!    repetitions of steps 3 and 6 together, which bracket the compaction
//!    (a neighbour's load drifting over the run tilts neither way); each
//!    half is in the JSON too (`iops_idle_before`, `iops_idle_after`, and
//!    the ratios to each);
//! 7. `--snapshots` snapshots with no guest I/O, then as many again each
//!    taken while the client keeps writing until the command returns.
//!
//! The machine may be shared and noisy, so each repetition also logs (on
//! stderr) its longest wait for a completion and what the host did
//! meanwhile, from `/proc`: CPUs busy, split into this process, the
//! daemon's threads (`vring_worker` serves the queue, `control-conn` runs
//! the compaction) and everything else; free and dirty memory; page
//! reclaim. A repetition slowed by a neighbour shows as "other" CPU.
//!
//! Disk: the log holds several times the volume before compaction catches
//! up (about 6 GB at the peak for the defaults, `disk_peak_bytes`); the run
//! refuses to start with less free space than [`ExtraArgs::disk_need_bytes`]
//! in the temporary directory (`TMPDIR`).
//!
//! Run through `ci/bench.sh compaction [--reps N] [--rep-ms N] [--size-mb N]
//! [--overwrite-pct N] [--write-cap-mb N] [--qd N] [--rate-mib N]
//! [--live-ratio-max F] [--snapshots N]`. A real run builds `lsvblk` and
//! `lsvkms` in the bench profile itself (cached after the first time); a
//! smoke run under `cargo test` uses the test build, a 32 MiB volume and
//! 1 ms repetitions, and writes no JSON. Everything it starts is stopped and
//! every file it made removed, also when it panics. Durability as in the
//! device bench: buffered `pwritev`, guest FLUSH = `fdatasync`.

#[path = "../common/mod.rs"]
mod common;
#[path = "../../../tests/kit/mod.rs"]
mod kit;

mod burst;
mod host;
mod report;
mod run;
mod served;

use std::path::Path;
use std::time::Duration;

use common::Options;
use common::args::Args;
use common::build::Binaries;
use common::serve::QUEUE_SIZE;
use kit::kms::Kms;
use kit::rng::Rng;
use report::report;
use run::{Compaction, Limits, Run};
use served::Served;

/// Idle repetitions when `--reps` is not given.
const REPS_DEFAULT: usize = 5;
/// Longest wall time of one foreground repetition (`--rep-ms`).
const REP_MS_DEFAULT: u64 = 1000;
/// Volume size for a real run, MiB (`--size-mb`).
const SIZE_MB_DEFAULT: u64 = 1024;
/// Volume size for a smoke run under `cargo test`, MiB.
const SMOKE_SIZE_MB: u64 = 32;
/// Random 4 KiB overwrite after the fill, percent of the volume size
/// (`--overwrite-pct`).
const OVERWRITE_PCT_DEFAULT: u64 = 200;
/// Most bytes one foreground repetition writes, MiB (`--write-cap-mb`): at
/// ~150k IOPS a repetition would otherwise write 600 MB a second, and the
/// log (and the disk) grows by all of it.
const WRITE_CAP_MB_DEFAULT: u64 = 256;
/// Foreground queue depth (`--qd`).
const QD_DEFAULT: usize = 32;
/// Snapshots taken in each of the two snapshot phases (`--snapshots`).
const SNAPSHOTS_DEFAULT: usize = 7;
/// Foreground request size.
const IO_BYTES: usize = 4096;
/// Fill: request size and queue depth.
const FILL_BYTES: usize = 1 << 20;
const FILL_QD: usize = 8;
/// Bytes of the client's shared buffer region: FILL_QD × FILL_BYTES, and
/// QUEUE_SIZE × IO_BYTES.
const REGION_BYTES: usize = 8 << 20;
/// How often a foreground repetition looks whether the command it runs
/// beside has exited.
const EXIT_POLL: Duration = Duration::from_millis(2);
/// Disk needed beyond the overwrite, in volume sizes (see
/// [`ExtraArgs::disk_need_bytes`]).
const DISK_NEED_VOLUMES: u64 = 4;

fn main() {
    let options = Options::from_args(REPS_DEFAULT, REP_MS_DEFAULT);
    let args = ExtraArgs::parse(&options);
    let size = args.size_mb << 20;
    let root = tempfile::Builder::new()
        .prefix("lsvblk-compaction-bench-")
        .tempdir()
        .expect("temporary directory");
    let dir = root.path();
    if !options.smoke {
        check_free_space(dir, &args);
    }
    // A real run builds both in the bench profile (release settings); a
    // smoke run under `cargo test` uses the test build as it is.
    let bins = if options.smoke {
        Binaries::of_this_target()
    } else {
        Binaries::build(&[], &dir.join("bin"))
    };
    // Drop order: the served volume (client, then daemon), lsvkms, `root`.
    let kms = Kms::start_in(&bins.lsvkms, dir);
    let mut served = Served::start(&bins.lsvblk, &kms, size);
    eprintln!(
        "compaction bench: lsvblk serve is pid {}",
        served.daemon.pid()
    );
    let mut rng = Rng(0x0c0f_fee0_dead_beef);
    let mut run = Run::default();
    let log_start = served.status().log_bytes;

    // 1-2. Precondition.
    run.fill_mbps = served.client().fill();
    run.guest_bytes += size;
    eprintln!(
        "compaction bench: filled ({:.0} MB/s incl. flush)",
        run.fill_mbps
    );
    let overwrite_bytes = size * args.overwrite_pct / 100;
    let burst =
        served
            .client()
            .random_writes(&mut rng, QD_DEFAULT, overwrite_bytes, None, &mut || false);
    served.client().flush();
    run.guest_bytes += burst.bytes();
    run.overwrite_iops = burst.iops();
    run.preconditioned = served.status();
    eprintln!(
        "compaction bench: overwrote {} MiB ({:.0} IOPS); log {} MiB, live {} MiB",
        burst.bytes() >> 20,
        run.overwrite_iops,
        run.preconditioned.log_bytes >> 20,
        run.preconditioned.live_bytes >> 20
    );

    // 3. Idle.
    let limits = Limits {
        qd: args.qd,
        duration: options.rep_duration,
        cap: args.write_cap_mb << 20,
    };
    run.idle = served.repetitions(&mut rng, &limits, options.reps, &mut run.guest_bytes);
    eprintln!(
        "compaction bench: idle {:.0} IOPS",
        run.idle.iops().unwrap_or(0.0)
    );

    // 4. During a compaction at R.
    let (during, compaction) = served.during_compaction(&mut rng, &limits, &args, &mut run);
    run.during = during;
    run.compaction = Some(compaction);
    eprintln!(
        "compaction bench: during compaction {:.0} IOPS over {} repetitions; {}",
        run.during.iops().unwrap_or(0.0),
        run.during.bursts.len(),
        run.compaction.as_ref().expect("set").describe()
    );

    // 5. Unthrottled, alone.
    let unthrottled = Compaction::from_json(&served.tool(&[
        "compact",
        &served.volume_arg(),
        "--json",
        "--rate-mib",
        "0",
        "--live-ratio-max",
        &args.live_ratio_max.to_string(),
    ]));
    eprintln!("compaction bench: unthrottled {}", unthrottled.describe());
    run.unthrottled = Some(unthrottled);

    // 6. Idle again.
    run.idle_after = served.repetitions(&mut rng, &limits, options.reps, &mut run.guest_bytes);

    // 7. Snapshots.
    eprintln!("compaction bench: {} snapshots, idle", args.snapshots);
    run.snapshots = served.snapshots(args.snapshots, "idle", None);
    eprintln!("compaction bench: {} snapshots, under load", args.snapshots);
    run.snapshots_loaded = served.snapshots(
        args.snapshots,
        "load",
        Some((&mut rng, &limits, &mut run.guest_bytes)),
    );
    run.snapshot_index_bytes = served.tool(&["snapshot", "list", &served.volume_arg(), "--json"])
        [0]["index_bytes"]
        .as_u64();
    // Over the same interval as `guest_bytes`: the whole run.
    run.final_space = served.status();
    run.segment_bytes_written =
        (run.final_space.log_bytes + run.freed_bytes()).saturating_sub(log_start);
    served.daemon.check_alive();
    run.disk_peak = served.disk_peak;

    report(&options, &args, &run, size);
    drop(served);
    drop(kms);
}

/// Panics unless the file system of `dir` has room for the run: the log
/// holds several times the volume before compaction catches up, and the
/// machine may be shared (filling its disk would break everyone's work).
fn check_free_space(dir: &Path, args: &ExtraArgs) {
    let need = args.disk_need_bytes();
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: statvfs writes only into `stat`; `path` is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return;
    }
    let free = stat.f_bavail as u64 * stat.f_frsize as u64;
    assert!(
        free >= need,
        "compaction bench: {} has {} MiB free, the run needs about {} MiB \
         (use a smaller --size-mb, --overwrite-pct or --write-cap-mb, or TMPDIR)",
        dir.display(),
        free >> 20,
        need >> 20
    );
}

/// Arguments beyond the common ones.
struct ExtraArgs {
    size_mb: u64,
    overwrite_pct: u64,
    write_cap_mb: u64,
    qd: usize,
    rate_mib: u64,
    live_ratio_max: f64,
    snapshots: usize,
}

impl ExtraArgs {
    /// Peak disk use of a run, with margin: the volume, the overwrite, the
    /// idle repetitions, and what the foreground writes during the
    /// compaction before its first segments are deleted.
    fn disk_need_bytes(&self) -> u64 {
        let size = self.size_mb << 20;
        size * (DISK_NEED_VOLUMES + self.overwrite_pct / 100) + 8 * (self.write_cap_mb << 20)
    }

    /// # Panics
    /// On a malformed value (a usage error).
    fn parse(options: &Options) -> Self {
        let args = Args::from_env();
        let number = |name: &str, zero_ok: bool| args.number(name, zero_ok);
        let live_ratio_max = args
            .fraction("--live-ratio-max")
            .unwrap_or(lsvblk::limits::COMPACT_LIVE_RATIO_DEFAULT);
        let qd = number("--qd", false).unwrap_or(QD_DEFAULT as u64);
        assert!(
            qd <= QUEUE_SIZE as u64,
            "--qd {qd}: at most the queue size {QUEUE_SIZE}"
        );
        ExtraArgs {
            size_mb: if options.smoke {
                SMOKE_SIZE_MB
            } else {
                number("--size-mb", false).unwrap_or(SIZE_MB_DEFAULT)
            },
            overwrite_pct: number("--overwrite-pct", true).unwrap_or(OVERWRITE_PCT_DEFAULT),
            write_cap_mb: number("--write-cap-mb", false).unwrap_or(WRITE_CAP_MB_DEFAULT),
            qd: qd as usize,
            rate_mib: number("--rate-mib", true)
                .unwrap_or(lsvblk::limits::AUTO_COMPACT_RATE_BYTES_DEFAULT >> 20),
            live_ratio_max,
            snapshots: if options.smoke {
                1
            } else {
                number("--snapshots", false).unwrap_or(SNAPSHOTS_DEFAULT as u64) as usize
            },
        }
    }
}
