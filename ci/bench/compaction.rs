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

mod common;

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use common::procs::{CONNECT_WAIT, Daemon, Kms, USER, run_tool};
use common::{MB_BYTES, Options, Report, SplitMix64, median};
use serde_json::Value;

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
/// Virtqueue size the client asks for (lsvblk's default).
const QUEUE_SIZE: i32 = 256;
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
    let bins = Binaries::find(&options, dir);
    // Drop order: the served volume (client, then daemon), lsvkms, `root`.
    let kms = Kms::start(&bins.lsvkms, dir);
    let mut served = Served::start(&bins.lsvblk, &kms, dir, size);
    eprintln!(
        "compaction bench: lsvblk serve is pid {}",
        served.daemon.pid()
    );
    let mut rng = SplitMix64(0x0c0f_fee0_dead_beef);
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
        let args: Vec<String> = std::env::args().collect();
        let text = |name: &str| -> Option<String> {
            let at = args.iter().position(|a| a == name)?;
            Some(args.get(at + 1).cloned().unwrap_or_default())
        };
        let number = |name: &str, zero_ok: bool| -> Option<u64> {
            let value = text(name)?;
            match value.parse::<u64>() {
                Ok(n) if n > 0 || zero_ok => Some(n),
                _ => panic!("{name} needs a positive integer, got {value:?}"),
            }
        };
        let live_ratio_max =
            text("--live-ratio-max").map_or(lsvblk::limits::COMPACT_LIVE_RATIO_DEFAULT, |value| {
                match value.parse::<f64>() {
                    Ok(f) if (0.0..=1.0).contains(&f) => f,
                    _ => panic!("--live-ratio-max needs a number from 0 to 1, got {value:?}"),
                }
            });
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

/// Everything measured, filled in phase by phase.
#[derive(Default)]
struct Run {
    /// Bytes the client wrote to the volume (completed writes).
    guest_bytes: u64,
    fill_mbps: f64,
    overwrite_iops: f64,
    preconditioned: Space,
    idle: Phase,
    during: Phase,
    /// Wall time of the throttled compaction as seen from here, and the part
    /// of it inside timed repetitions.
    during_wall_s: f64,
    during_timed_s: f64,
    /// Repetitions cut short by the compaction's end and dropped.
    during_dropped: usize,
    compaction: Option<Compaction>,
    unthrottled: Option<Compaction>,
    idle_after: Phase,
    final_space: Space,
    segment_bytes_written: u64,
    snapshots: Vec<SnapshotTiming>,
    snapshots_loaded: Vec<SnapshotTiming>,
    snapshot_index_bytes: Option<u64>,
    /// Most bytes the volume directory held (looked at between steps).
    disk_peak: u64,
}

impl Run {
    fn moved_bytes(&self) -> u64 {
        [&self.compaction, &self.unthrottled]
            .into_iter()
            .flatten()
            .map(|c| c.moved)
            .sum()
    }

    fn freed_bytes(&self) -> u64 {
        [&self.compaction, &self.unthrottled]
            .into_iter()
            .flatten()
            .map(|c| c.freed)
            .sum()
    }
}

/// Foreground repetitions of one phase.
#[derive(Default)]
struct Phase {
    bursts: Vec<Burst>,
    flush_s: Vec<f64>,
}

impl Phase {
    fn iops(&self) -> Option<f64> {
        let values: Vec<f64> = self.bursts.iter().map(Burst::iops).collect();
        (!values.is_empty()).then(|| median(&values))
    }

    /// All writes over all timed seconds: what a guest sees over the whole
    /// phase, where the median shows a typical repetition.
    fn iops_time_weighted(&self) -> Option<f64> {
        let ops: u64 = self.bursts.iter().map(|b| b.ops).sum();
        let seconds: f64 = self.bursts.iter().map(|b| b.seconds).sum();
        (seconds > 0.0).then(|| ops as f64 / seconds)
    }

    fn spread(&self) -> String {
        let values: Vec<f64> = self.bursts.iter().map(Burst::iops).collect();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(0.0, f64::max);
        if values.is_empty() {
            "n=0".to_owned()
        } else {
            format!("min {min:.0} max {max:.0} n={}", values.len())
        }
    }

    /// Median and largest of the repetitions' longest waits, ms.
    fn max_wait_ms(&self) -> Option<(f64, f64)> {
        let values: Vec<f64> = self.bursts.iter().map(|b| b.max_wait_s * 1e3).collect();
        (!values.is_empty()).then(|| (median(&values), values.iter().copied().fold(0.0, f64::max)))
    }

    fn flush_ms(&self) -> Option<f64> {
        (!self.flush_s.is_empty()).then(|| median(&self.flush_s) * 1e3)
    }

    fn rep_s(&self) -> Option<f64> {
        let values: Vec<f64> = self.bursts.iter().map(|b| b.seconds).collect();
        (!values.is_empty()).then(|| median(&values))
    }
}

/// Space use from `lsvblk status --json`.
#[derive(Clone, Copy, Default)]
struct Space {
    log_bytes: u64,
    live_bytes: u64,
    segments: u64,
}

/// One `lsvblk compact --json` result.
struct Compaction {
    moved: u64,
    freed: u64,
    segments_deleted: u64,
    seconds: f64,
    log_before: u64,
    log_after: u64,
}

impl Compaction {
    fn from_json(value: &Value) -> Self {
        let number = |v: &Value| {
            v.as_u64()
                .unwrap_or_else(|| panic!("lsvblk compact: no number in {value}"))
        };
        Compaction {
            moved: number(&value["report"]["bytes_moved"]),
            freed: number(&value["report"]["bytes_freed"]),
            segments_deleted: number(&value["report"]["segments_deleted"]),
            seconds: value["seconds"]
                .as_f64()
                .unwrap_or_else(|| panic!("lsvblk compact: no seconds in {value}")),
            log_before: number(&value["log_bytes_before"]),
            log_after: number(&value["log_bytes_after"]),
        }
    }

    fn mbps(&self) -> f64 {
        self.moved as f64 / self.seconds.max(1e-9) / MB_BYTES
    }

    fn describe(&self) -> String {
        format!(
            "moved {} MiB in {:.1} s ({:.0} MB/s), freed {} MiB ({} segments), log {} -> {} MiB",
            self.moved >> 20,
            self.seconds,
            self.mbps(),
            self.freed >> 20,
            self.segments_deleted,
            self.log_before >> 20,
            self.log_after >> 20
        )
    }
}

/// One `lsvblk snapshot create --json`.
struct SnapshotTiming {
    /// Reported by the daemon.
    create_ms: f64,
    index_ms: f64,
    /// The command, start to exit, seen from here.
    cli_ms: f64,
    /// Under load: the longest the client waited for a completion while
    /// the command ran (the snapshot holds every log head meanwhile).
    fg_max_wait_ms: Option<f64>,
}

/// Limits of one foreground repetition.
struct Limits {
    qd: usize,
    duration: Duration,
    cap: u64,
}

/// Where the daemons' executables are.
struct Binaries {
    lsvblk: PathBuf,
    lsvkms: PathBuf,
}

impl Binaries {
    /// A real run builds both in the bench profile (release settings) and
    /// copies them out of `target/` (another build may replace them there);
    /// a smoke run under `cargo test` uses the test build as it is.
    fn find(options: &Options, dir: &Path) -> Self {
        if options.smoke {
            return Binaries {
                lsvblk: PathBuf::from(env!("CARGO_BIN_EXE_lsvblk")),
                lsvkms: PathBuf::from(env!("CARGO_BIN_EXE_lsvkms")),
            };
        }
        let into = dir.join("bin");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!("compaction bench: building lsvblk and lsvkms (bench profile)");
        let output = Command::new(cargo)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--profile", "bench"])
            .args(["--bin", "lsvblk", "--bin", "lsvkms"])
            .args(["--message-format", "json-render-diagnostics"])
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo build");
        assert!(output.status.success(), "cargo build failed");
        std::fs::create_dir_all(&into).expect("bin dir");
        let mut found = 0;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Ok(message) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let name = message["target"]["name"].as_str().unwrap_or("");
            if let Some(exe) = message["executable"].as_str()
                && (name == "lsvblk" || name == "lsvkms")
            {
                std::fs::copy(exe, into.join(name)).expect("copy executable");
                found += 1;
            }
        }
        assert_eq!(found, 2, "cargo build reported {found} of 2 executables");
        Binaries {
            lsvblk: into.join("lsvblk"),
            lsvkms: into.join("lsvkms"),
        }
    }
}

/// The volume, its daemon and the client connected to it.
struct Served {
    lsvblk: PathBuf,
    volume: PathBuf,
    /// Fields drop in order: the client before the daemon.
    client: Option<Client>,
    daemon: Daemon,
    /// Most bytes the volume directory held when looked at (after each
    /// repetition and command).
    disk_peak: u64,
}

impl Served {
    /// Creates a volume of `size` bytes, serves it with background
    /// compaction off and connects the client.
    fn start(lsvblk: &Path, kms: &Kms, dir: &Path, size: u64) -> Self {
        let volume = dir.join("volume");
        let kms_address = format!("unix:{}", kms.socket.display());
        run_tool(
            Command::new(lsvblk)
                .arg("create")
                .arg("--volume")
                .arg(&volume)
                .args(["--size", &size.to_string(), "--acl", USER])
                .args(["--kms", &kms_address]),
        );
        let socket = dir.join("vhost.sock");
        let mut daemon = Daemon::spawn(
            "lsvblk serve",
            Command::new(lsvblk)
                .arg("serve")
                .arg("--volume")
                .arg(&volume)
                .arg("--socket")
                .arg(&socket)
                .args(["--kms", &kms_address])
                .arg("--token-file")
                .arg(&kms.token_file)
                .args(["--num-queues", "1", "--queue-size", &QUEUE_SIZE.to_string()])
                .args(["--compact-rate-mib", "0"])
                .env("RUST_LOG", "warn"),
            dir.join("lsvblk.log"),
            false,
        );
        let deadline = Instant::now() + CONNECT_WAIT;
        let client = loop {
            match Client::connect(&socket) {
                Ok(mut client) => {
                    client.daemon_pid = Some(daemon.pid());
                    break client;
                }
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    daemon.check_alive();
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(error) => panic!("lsvblk serve: cannot connect: {error}"),
            }
        };
        Served {
            lsvblk: lsvblk.to_owned(),
            volume,
            client: Some(client),
            daemon,
            disk_peak: 0,
        }
    }

    /// Notes how many bytes the volume directory holds now.
    fn note_disk(&mut self) {
        fn bytes(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => bytes(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        self.disk_peak = self.disk_peak.max(bytes(&self.volume));
    }

    fn client(&mut self) -> &mut Client {
        self.daemon.check_alive();
        self.client.as_mut().expect("connected")
    }

    fn volume_arg(&self) -> String {
        self.volume.to_str().expect("utf-8 path").to_owned()
    }

    /// `lsvblk ARGS` (with `RUST_LOG=warn`), to completion.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.lsvblk);
        command.args(args).env("RUST_LOG", "warn");
        command
    }

    /// Runs `lsvblk ARGS` (a `--json` command) and parses its output.
    fn tool(&mut self, args: &[&str]) -> Value {
        self.note_disk();
        let out = run_tool(&mut self.command(args));
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("lsvblk {args:?}: output is not JSON ({e}): {out}"))
    }

    fn status(&mut self) -> Space {
        let value = self.tool(&["status", &self.volume_arg(), "--json"]);
        assert_eq!(value["served"], true, "status: the daemon serves it");
        let number = |key: &str| {
            value["space"][key]
                .as_u64()
                .unwrap_or_else(|| panic!("status: no space.{key} in {value}"))
        };
        Space {
            log_bytes: number("log_bytes"),
            live_bytes: number("live_bytes"),
            segments: number("segments"),
        }
    }

    /// `reps` foreground repetitions, each followed by an untimed FLUSH.
    fn repetitions(
        &mut self,
        rng: &mut SplitMix64,
        limits: &Limits,
        reps: usize,
        guest_bytes: &mut u64,
    ) -> Phase {
        let mut phase = Phase::default();
        for _ in 0..reps {
            let client = self.client();
            let burst = client.random_writes(
                rng,
                limits.qd,
                limits.cap,
                Some(limits.duration),
                &mut || false,
            );
            *guest_bytes += burst.bytes();
            phase.flush_s.push(client.flush());
            self.note_disk();
            burst.log("idle");
            phase.bursts.push(burst);
        }
        phase
    }

    /// Runs `lsvblk compact --rate-mib R` and foreground repetitions back to
    /// back for as long as it does.
    fn during_compaction(
        &mut self,
        rng: &mut SplitMix64,
        limits: &Limits,
        args: &ExtraArgs,
        run: &mut Run,
    ) -> (Phase, Compaction) {
        let min_keep_s = run.idle.rep_s().unwrap_or(0.0) / 2.0;
        let mut compact = self
            .command(&[
                "compact",
                &self.volume_arg(),
                "--json",
                "--rate-mib",
                &args.rate_mib.to_string(),
                "--live-ratio-max",
                &args.live_ratio_max.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lsvblk compact");
        let started = Instant::now();
        let mut exited = || !matches!(compact.try_wait(), Ok(None));
        let mut phase = Phase::default();
        let mut cut_short = Vec::new();
        while !exited() {
            let client = self.client();
            let burst = client.random_writes(
                rng,
                limits.qd,
                limits.cap,
                Some(limits.duration),
                &mut exited,
            );
            run.guest_bytes += burst.bytes();
            run.during_timed_s += burst.seconds;
            phase.flush_s.push(client.flush());
            self.note_disk();
            burst.log("during compaction");
            if burst.end == End::Stopped && burst.seconds < min_keep_s {
                cut_short.push(burst);
            } else {
                phase.bursts.push(burst);
            }
        }
        run.during_wall_s = started.elapsed().as_secs_f64();
        if phase.bursts.is_empty() {
            // The compaction was shorter than half a repetition: keep what
            // there is rather than nothing (the table says n=).
            phase.bursts = std::mem::take(&mut cut_short);
        }
        run.during_dropped = cut_short.len();
        let output = compact.wait_with_output().expect("wait for lsvblk compact");
        assert!(
            output.status.success(),
            "lsvblk compact failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let value: Value = serde_json::from_slice(&output.stdout).expect("compact JSON");
        (phase, Compaction::from_json(&value))
    }

    /// Takes `count` snapshots named `bench-PREFIX-N`; with `load`, the
    /// client keeps writing while each is taken (then FLUSHes).
    fn snapshots(
        &mut self,
        count: usize,
        prefix: &str,
        mut load: Option<(&mut SplitMix64, &Limits, &mut u64)>,
    ) -> Vec<SnapshotTiming> {
        let mut timings = Vec::new();
        for index in 0..count {
            let name = format!("bench-{prefix}-{index}");
            let mut command =
                self.command(&["snapshot", "create", &self.volume_arg(), &name, "--json"]);
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
            let started = Instant::now();
            let mut child = command.spawn().expect("start lsvblk snapshot create");
            let mut fg_max_wait_ms = None;
            if let Some((rng, limits, guest_bytes)) = load.as_mut() {
                let mut exited = || !matches!(child.try_wait(), Ok(None));
                let client = self.client();
                let burst = client.random_writes(rng, limits.qd, u64::MAX, None, &mut exited);
                **guest_bytes += burst.bytes();
                fg_max_wait_ms = Some(burst.max_wait_s * 1e3);
            }
            let output = child.wait_with_output().expect("wait for lsvblk snapshot");
            let cli_ms = started.elapsed().as_secs_f64() * 1e3;
            if load.is_some() {
                self.client().flush();
            }
            assert!(
                output.status.success(),
                "lsvblk snapshot create failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            let value: Value = serde_json::from_slice(&output.stdout).expect("snapshot JSON");
            let ms = |key: &str| {
                value[key]
                    .as_f64()
                    .unwrap_or_else(|| panic!("snapshot create: no {key} in {value}"))
            };
            timings.push(SnapshotTiming {
                create_ms: ms("create_ms"),
                index_ms: ms("index_ms"),
                cli_ms,
                fg_max_wait_ms,
            });
        }
        timings
    }
}

/// How a burst of writes ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Time,
    Cap,
    /// The command it ran beside exited.
    Stopped,
}

/// One burst of 4 KiB random writes.
#[derive(Clone, Debug)]
struct Burst {
    ops: u64,
    seconds: f64,
    end: End,
    /// Longest wait for a completion, seconds: a stall of the daemon (a
    /// lock held long, a synchronous flush) shows here.
    max_wait_s: f64,
    /// What else ran on the host meanwhile.
    host: HostSample,
}

impl Burst {
    fn iops(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }

    fn bytes(&self) -> u64 {
        self.ops * IO_BYTES as u64
    }

    /// One progress line on stderr.
    fn log(&self, phase: &str) {
        eprintln!(
            "compaction bench:   {phase}: {:.0} IOPS ({:.3} s, {:?}, longest wait {:.1} ms); \
             host: {}",
            self.iops(),
            self.seconds,
            self.end,
            self.max_wait_s * 1e3,
            self.host.describe()
        );
    }
}

/// A connected libblkio instance with one queue and one shared region; slot
/// `i` owns bytes `i * len ..` of the region.
struct Client {
    // Field order matters: the queue and the region go before the instance.
    queue: Blkioq,
    region: MemoryRegion,
    _blkio: Blkio,
    capacity: u64,
    /// The daemon serving it, for [`HostProbe`].
    daemon_pid: Option<u32>,
}

impl Client {
    fn connect(socket: &Path) -> Result<Self, String> {
        let text = |e: blkio::Error| format!("{}: {}", e.errno(), e.message());
        let mut blkio = Blkio::new("virtio-blk-vhost-user").map_err(text)?;
        blkio
            .set_str("path", socket.to_str().expect("utf-8 path"))
            .map_err(text)?;
        blkio.connect().map_err(text)?;
        blkio.set_i32("num-queues", 1).map_err(text)?;
        blkio.set_i32("queue-size", QUEUE_SIZE).map_err(text)?;
        let mut outcome = blkio.start().map_err(text)?;
        let region = blkio.alloc_mem_region(REGION_BYTES).map_err(text)?;
        blkio.map_mem_region(&region).map_err(text)?;
        // SAFETY: the region is REGION_BYTES of mapped memory owned by
        // `blkio`; nothing is in flight yet.
        let bytes = unsafe { std::slice::from_raw_parts_mut(region.addr as *mut u8, region.len) };
        let mut rng = SplitMix64(0x1234_5678);
        for chunk in bytes.chunks_exact_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes());
        }
        let capacity = blkio.get_u64("capacity").map_err(text)?;
        Ok(Client {
            queue: outcome.queues.pop().expect("one queue"),
            region,
            _blkio: blkio,
            capacity,
            daemon_pid: None,
        })
    }

    fn submit_write(&mut self, slot: usize, offset: u64, len: usize) {
        assert!((slot + 1) * len <= self.region.len, "region too small");
        let buf = (self.region.addr + slot * len) as *mut u8;
        self.queue.write(offset, buf, len, slot, ReqFlags::empty());
    }

    /// Waits for at least one completion; returns the slots that completed.
    fn reap(&mut self, completions: &mut [MaybeUninit<Completion>]) -> Vec<usize> {
        let done = self
            .queue
            .do_io(completions, 1, None, None)
            .unwrap_or_else(|e| panic!("do_io: {}", e.message()));
        completions[..done]
            .iter()
            .map(|c| {
                // SAFETY: do_io initialised the first `done` completions.
                let c = unsafe { c.assume_init_ref() };
                assert!(c.ret >= 0, "request failed: {}", c.ret);
                c.user_data
            })
            .collect()
    }

    /// FLUSH, waited for; seconds.
    fn flush(&mut self) -> f64 {
        let start = Instant::now();
        self.queue.flush(usize::MAX, ReqFlags::empty());
        let mut one = completions(1);
        assert_eq!(self.reap(&mut one), [usize::MAX], "unexpected completion");
        start.elapsed().as_secs_f64()
    }

    /// Writes the whole disk once (1 MiB, QD 8) and flushes; MB/s.
    fn fill(&mut self) -> f64 {
        let capacity = self.capacity;
        let start = Instant::now();
        let mut next = 0u64;
        let mut in_flight = 0;
        let mut completions = completions(FILL_QD);
        let mut slots: Vec<usize> = (0..FILL_QD).collect();
        while in_flight > 0 || next < capacity {
            for slot in slots.drain(..) {
                if next < capacity {
                    let len = FILL_BYTES.min((capacity - next) as usize);
                    self.submit_write(slot, next, len);
                    next += len as u64;
                    in_flight += 1;
                }
            }
            if in_flight > 0 {
                slots = self.reap(&mut completions);
                in_flight -= slots.len();
            }
        }
        self.flush();
        capacity as f64 / start.elapsed().as_secs_f64() / MB_BYTES
    }

    /// 4 KiB writes at uniformly random aligned offsets, `qd` in flight,
    /// until `cap` bytes were submitted, `duration` passed or `stop()` says
    /// so (asked every [`EXIT_POLL`]); the requests in flight then complete
    /// and count.
    fn random_writes(
        &mut self,
        rng: &mut SplitMix64,
        qd: usize,
        cap: u64,
        duration: Option<Duration>,
        stop: &mut dyn FnMut() -> bool,
    ) -> Burst {
        let blocks = self.capacity / IO_BYTES as u64;
        let mut completions = completions(qd);
        let probe = HostProbe::start(self.daemon_pid);
        let start = Instant::now();
        let deadline = duration.map(|d| start + d);
        let mut next_poll = start;
        let mut submitted = 0u64;
        let mut in_flight = 0;
        let mut done = 0u64;
        let mut end = None;
        for slot in 0..qd {
            if submitted < cap {
                self.submit_write(slot, rng.below(blocks) * IO_BYTES as u64, IO_BYTES);
                submitted += IO_BYTES as u64;
                in_flight += 1;
            }
        }
        let mut max_wait_s: f64 = 0.0;
        while in_flight > 0 {
            let waited = Instant::now();
            let slots = self.reap(&mut completions);
            max_wait_s = max_wait_s.max(waited.elapsed().as_secs_f64());
            if end.is_none() {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    end = Some(End::Time);
                } else if submitted >= cap {
                    end = Some(End::Cap);
                } else if now >= next_poll {
                    next_poll = now + EXIT_POLL;
                    if stop() {
                        end = Some(End::Stopped);
                    }
                }
            }
            for slot in slots {
                done += 1;
                if end.is_some() {
                    in_flight -= 1;
                } else {
                    self.submit_write(slot, rng.below(blocks) * IO_BYTES as u64, IO_BYTES);
                    submitted += IO_BYTES as u64;
                }
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        Burst {
            ops: done,
            seconds,
            end: end.unwrap_or(End::Cap),
            max_wait_s,
            host: probe.finish(),
        }
    }
}

/// What else happened on the host while a burst ran, from `/proc`
/// (zeros where unreadable). The machine may be shared: this tells a slow
/// repetition caused by a neighbour (CPU taken by other processes, page
/// reclaim, dirty-page throttling) from one caused by the daemon.
#[derive(Clone, Debug, Default)]
struct HostSample {
    /// Free and dirty memory at the start, MiB.
    free_mib: u64,
    dirty_mib: u64,
    /// Pages scanned for reclaim during the burst, by allocating tasks
    /// (direct) and by kswapd.
    scan_direct: u64,
    scan_kswapd: u64,
    /// CPUs busy (all processes, user + system + irq), this process, the
    /// daemon (by thread name, busiest first), everything else, and steal
    /// time: in CPUs, i.e. CPU-seconds per second of the burst.
    cpus_busy: f64,
    cpus_bench: f64,
    cpus_daemon: Vec<(String, f64)>,
    cpus_other: f64,
    cpus_steal: f64,
}

impl HostSample {
    fn describe(&self) -> String {
        let daemon: f64 = self.cpus_daemon.iter().map(|(_, c)| c).sum();
        let threads: Vec<String> = self
            .cpus_daemon
            .iter()
            .filter(|(_, c)| *c >= 0.05)
            .map(|(name, c)| format!("{name} {c:.2}"))
            .collect();
        format!(
            "cpus busy {:.2} (bench {:.2}, daemon {daemon:.2} [{}], other {:.2}), steal {:.2}; \
             free {} MiB, dirty {} MiB; reclaim scan {} direct, {} kswapd",
            self.cpus_busy,
            self.cpus_bench,
            threads.join(", "),
            self.cpus_other,
            self.cpus_steal,
            self.free_mib,
            self.dirty_mib,
            self.scan_direct,
            self.scan_kswapd
        )
    }
}

/// Counters read at the start of a burst; [`HostProbe::finish`] turns them
/// into a [`HostSample`].
struct HostProbe {
    at: Instant,
    daemon_pid: Option<u32>,
    free_mib: u64,
    dirty_mib: u64,
    scan_direct: u64,
    scan_kswapd: u64,
    /// (busy, steal) clock ticks of all CPUs.
    cpu: (u64, u64),
    bench_ticks: u64,
    daemon_ticks: Vec<(u32, String, u64)>,
}

impl HostProbe {
    fn start(daemon_pid: Option<u32>) -> Self {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let vmstat = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
        let field = |text: &str, key: &str| -> u64 {
            text.lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        HostProbe {
            free_mib: field(&meminfo, "MemFree:") >> 10,
            dirty_mib: field(&meminfo, "Dirty:") >> 10,
            scan_direct: field(&vmstat, "pgscan_direct "),
            scan_kswapd: field(&vmstat, "pgscan_kswapd "),
            cpu: cpu_ticks(),
            bench_ticks: task_ticks(Path::new("/proc/self/stat")).map_or(0, |(_, t)| t),
            daemon_ticks: daemon_pid.map_or_else(Vec::new, thread_ticks),
            daemon_pid,
            at: Instant::now(),
        }
    }

    fn finish(self) -> HostSample {
        let seconds = self.at.elapsed().as_secs_f64().max(1e-9);
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let cpus = |ticks: u64| ticks as f64 / hz / seconds;
        let end = HostProbe::start(self.daemon_pid);
        let mut daemon: Vec<(String, f64)> = Vec::new();
        for (tid, name, ticks) in &end.daemon_ticks {
            let before = self
                .daemon_ticks
                .iter()
                .find(|(t, _, _)| t == tid)
                .map_or(0, |(_, _, b)| *b);
            let used = cpus(ticks.saturating_sub(before));
            match daemon.iter_mut().find(|(n, _)| n == name) {
                Some((_, total)) => *total += used,
                None => daemon.push((name.clone(), used)),
            }
        }
        daemon.sort_by(|a, b| b.1.total_cmp(&a.1));
        let busy = cpus(end.cpu.0.saturating_sub(self.cpu.0));
        let bench = cpus(end.bench_ticks.saturating_sub(self.bench_ticks));
        let daemon_total: f64 = daemon.iter().map(|(_, c)| c).sum();
        HostSample {
            free_mib: self.free_mib,
            dirty_mib: self.dirty_mib,
            scan_direct: end.scan_direct.saturating_sub(self.scan_direct),
            scan_kswapd: end.scan_kswapd.saturating_sub(self.scan_kswapd),
            cpus_busy: busy,
            cpus_bench: bench,
            cpus_other: (busy - bench - daemon_total).max(0.0),
            cpus_daemon: daemon,
            cpus_steal: cpus(end.cpu.1.saturating_sub(self.cpu.1)),
        }
    }
}

/// (busy, steal) ticks of all CPUs from the first line of `/proc/stat`.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let values: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let at = |i: usize| values.get(i).copied().unwrap_or(0);
    (at(0) + at(1) + at(2) + at(5) + at(6), at(7))
}

/// (name, user + system ticks) of the task whose `stat` file is `path`.
fn task_ticks(path: &Path) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // pid (comm) state ...: comm may hold spaces, so split at the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the comm: state is field 0, utime field 11, stime field 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// (tid, name, ticks) of every thread of process `pid`.
fn thread_ticks(pid: u32) -> Vec<(u32, String, u64)> {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let tid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let (name, ticks) = task_ticks(&entry.path().join("stat"))?;
            Some((tid, name, ticks))
        })
        .collect()
}

fn completions(count: usize) -> Vec<MaybeUninit<Completion>> {
    (0..count).map(|_| MaybeUninit::uninit()).collect()
}

const METHOD: &str = "lsvkms + lsvblk serve (encrypted, --compact-rate-mib 0, 1 queue of 256); \
     libblkio client here; precondition: fill (1 MiB QD8) + random 4 KiB overwrite + FLUSH; \
     foreground: 4 KiB random writes, repetitions of rep_ms or write_cap_mib, untimed FLUSH \
     after each; idle reps, then reps back to back while `lsvblk compact --rate-mib R` runs \
     (cut at its exit), then one unthrottled compaction alone, then idle reps again; \
     snapshots via `lsvblk snapshot create` idle, then under foreground load; medians";

const WA_NOTE: &str = "write_amplification: (guest payload bytes + compaction bytes_moved) / \
     guest payload bytes over the whole run; write_amplification_segments: (log growth from \
     `lsvblk status` + bytes_freed of deleted segments) / guest payload bytes, so record \
     headers, checksum tables and seals count too (checkpoints and snapshot indexes do not)";

fn ms_spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    format!("min {min:.2} max {max:.2} n={}", values.len())
}

fn report(options: &Options, args: &ExtraArgs, run: &Run, size: u64) {
    let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    println!();
    println!(
        "== compaction: {} MiB volume, overwrite {} %, 4 KiB random writes QD{}, \
         repetitions of up to {} ms / {} MiB (FLUSH after, untimed); compaction at {} MiB/s, \
         live ratio <= {}",
        size >> 20,
        args.overwrite_pct,
        args.qd,
        options.rep_duration.as_millis(),
        args.write_cap_mb,
        args.rate_mib,
        args.live_ratio_max,
    );
    let pre = run.preconditioned;
    println!(
        "after preconditioning: log {:.0} MiB in {} segments, live {:.0} MiB ({:.0} % live)",
        mib(pre.log_bytes),
        pre.segments,
        mib(pre.live_bytes),
        100.0 * pre.live_bytes as f64 / pre.log_bytes.max(1) as f64
    );
    for (label, compaction) in [
        ("compaction at R, under load", &run.compaction),
        ("compaction unthrottled, alone", &run.unthrottled),
    ] {
        if let Some(c) = compaction {
            println!("{label}: {}", c.describe());
        }
    }
    let fin = run.final_space;
    println!(
        "at the end: log {:.0} MiB in {} segments, live {:.0} MiB; the volume directory \
         held up to {:.0} MiB",
        mib(fin.log_bytes),
        fin.segments,
        mib(fin.live_bytes),
        mib(run.disk_peak)
    );
    println!("{WA_NOTE}");

    let mut report = Report::new("compaction", options);
    // The baseline brackets the compaction: idle repetitions before it and
    // after it, so that a neighbour's load drifting up or down over the run
    // does not tilt the ratio either way.
    let both = Phase {
        bursts: [&run.idle.bursts, &run.idle_after.bursts]
            .into_iter()
            .flatten()
            .cloned()
            .collect(),
        flush_s: Vec::new(),
    };
    let idle = both.iops();
    let before = run.idle.iops();
    let during = run.during.iops();
    let after = run.idle_after.iops();
    let ratio = |baseline: Option<f64>| baseline.zip(during).map(|(i, d)| d / i);
    report.row(
        "fg_iops_ratio_during_compaction",
        "fg IOPS during compaction / idle",
        ratio(idle),
        "x",
        "target >= 0.8; medians of repetitions",
    );
    let weighted = both
        .iops_time_weighted()
        .zip(run.during.iops_time_weighted());
    report.row(
        "fg_iops_ratio_time_weighted",
        "fg IOPS during compaction / idle, all writes",
        weighted.map(|(i, d)| d / i),
        "x",
        &weighted.map_or_else(String::new, |(i, d)| {
            format!("total writes / total timed seconds: {d:.0} / {i:.0} IOPS")
        }),
    );
    report.row(
        "iops_idle",
        "fg 4 KiB randwrite IOPS, idle (before+after)",
        idle,
        "IOPS",
        &both.spread(),
    );
    report.row(
        "iops_idle_before",
        "fg 4 KiB randwrite IOPS, idle before",
        before,
        "IOPS",
        &run.idle.spread(),
    );
    report.row(
        "iops_during",
        "fg 4 KiB randwrite IOPS, during compaction",
        during,
        "IOPS",
        &format!(
            "{}; {} cut short and dropped; {:.0} % of {:.1} s timed",
            run.during.spread(),
            run.during_dropped,
            100.0 * run.during_timed_s / run.during_wall_s.max(1e-9),
            run.during_wall_s
        ),
    );
    report.row(
        "iops_idle_after",
        "fg 4 KiB randwrite IOPS, idle after",
        after,
        "IOPS",
        &run.idle_after.spread(),
    );
    report.metric("fg_iops_ratio_vs_idle_before", ratio(before));
    report.metric("fg_iops_ratio_vs_idle_after", ratio(after));
    for (key, label, phase) in [
        (
            "max_wait_ms_idle",
            "longest completion wait, idle",
            &run.idle,
        ),
        (
            "max_wait_ms_during",
            "longest completion wait, during compaction",
            &run.during,
        ),
    ] {
        let wait = phase.max_wait_ms();
        report.row(
            key,
            label,
            wait.map(|w| w.1),
            "ms",
            &wait.map_or_else(String::new, |w| {
                format!("largest of the repetitions; median {:.1}", w.0)
            }),
        );
    }
    report.row(
        "flush_ms_idle",
        "FLUSH after a repetition, idle",
        run.idle.flush_ms(),
        "ms",
        "median, untimed",
    );
    report.row(
        "flush_ms_during",
        "FLUSH after a repetition, during compaction",
        run.during.flush_ms(),
        "ms",
        "median, untimed",
    );
    if let Some(c) = &run.compaction {
        report.row(
            "compaction_mbps",
            "compaction at R under load",
            Some(c.mbps()),
            "MB/s",
            &format!(
                "R = {} MiB/s = {:.1} MB/s; {:.0} MiB moved in {:.1} s",
                args.rate_mib,
                args.rate_mib as f64 * f64::from(1u32 << 20) / MB_BYTES,
                mib(c.moved),
                c.seconds
            ),
        );
        report.metric("compaction_bytes_moved", Some(c.moved as f64));
        report.metric("compaction_bytes_freed", Some(c.freed as f64));
        report.metric("compaction_seconds", Some(c.seconds));
    }
    if let Some(c) = &run.unthrottled {
        report.row(
            "compaction_unthrottled_mbps",
            "compaction unthrottled, no guest I/O",
            Some(c.mbps()),
            "MB/s",
            &format!("{:.0} MiB moved in {:.1} s", mib(c.moved), c.seconds),
        );
        report.metric("compaction_unthrottled_bytes_moved", Some(c.moved as f64));
        report.metric("compaction_unthrottled_bytes_freed", Some(c.freed as f64));
        report.metric("compaction_unthrottled_seconds", Some(c.seconds));
    }
    let guest = run.guest_bytes as f64;
    report.row(
        "write_amplification",
        "write amplification (payload)",
        Some((guest + run.moved_bytes() as f64) / guest),
        "x",
        &format!(
            "guest {:.0} MiB, moved {:.0} MiB",
            mib(run.guest_bytes),
            mib(run.moved_bytes())
        ),
    );
    report.row(
        "write_amplification_segments",
        "write amplification (segment bytes)",
        Some(run.segment_bytes_written as f64 / guest),
        "x",
        &format!(
            "{:.0} MiB appended to segments",
            mib(run.segment_bytes_written)
        ),
    );
    report.metric("guest_bytes_written", Some(guest));
    report.metric(
        "compaction_bytes_moved_total",
        Some(run.moved_bytes() as f64),
    );
    report.metric(
        "segment_bytes_written",
        Some(run.segment_bytes_written as f64),
    );
    let field = |timings: &[SnapshotTiming], f: fn(&SnapshotTiming) -> f64| -> Vec<f64> {
        timings.iter().map(f).collect()
    };
    let create = field(&run.snapshots, |t| t.create_ms);
    let index = field(&run.snapshots, |t| t.index_ms);
    let cli = field(&run.snapshots, |t| t.cli_ms);
    let loaded = field(&run.snapshots_loaded, |t| t.create_ms);
    let loaded_cli = field(&run.snapshots_loaded, |t| t.cli_ms);
    let loaded_wait: Vec<f64> = run
        .snapshots_loaded
        .iter()
        .filter_map(|t| t.fg_max_wait_ms)
        .collect();
    let med = |values: &[f64]| (!values.is_empty()).then(|| median(values));
    report.row(
        "snapshot_create_ms",
        "snapshot create (daemon: durable), idle",
        med(&create),
        "ms",
        &format!("target <= 10; {}", ms_spread(&create)),
    );
    report.row(
        "snapshot_index_ms",
        "snapshot index file written, idle",
        med(&index),
        "ms",
        &format!(
            "{}; index {:.1} MiB",
            ms_spread(&index),
            mib(run.snapshot_index_bytes.unwrap_or(0))
        ),
    );
    report.row(
        "snapshot_cli_ms",
        "lsvblk snapshot create round trip, idle",
        med(&cli),
        "ms",
        &format!("process start to exit; {}", ms_spread(&cli)),
    );
    report.row(
        "snapshot_create_ms_under_load",
        "snapshot create (daemon), under fg load",
        med(&loaded),
        "ms",
        &ms_spread(&loaded),
    );
    report.row(
        "snapshot_cli_ms_under_load",
        "lsvblk snapshot create round trip, under load",
        med(&loaded_cli),
        "ms",
        &ms_spread(&loaded_cli),
    );
    report.row(
        "snapshot_fg_max_wait_ms",
        "longest completion wait during a snapshot",
        med(&loaded_wait),
        "ms",
        &format!("guest writes stall meanwhile; {}", ms_spread(&loaded_wait)),
    );
    report.metric(
        "snapshot_index_bytes",
        run.snapshot_index_bytes.map(|b| b as f64),
    );
    report.row(
        "fill_mbps",
        "precondition: fill (1 MiB QD8 + FLUSH)",
        Some(run.fill_mbps),
        "MB/s",
        "",
    );
    report.row(
        "overwrite_iops",
        "precondition: random 4 KiB overwrite",
        Some(run.overwrite_iops),
        "IOPS",
        &format!("QD{QD_DEFAULT}"),
    );
    report.metric("log_bytes_preconditioned", Some(pre.log_bytes as f64));
    report.metric("live_bytes_preconditioned", Some(pre.live_bytes as f64));
    report.metric("log_bytes_end", Some(fin.log_bytes as f64));
    report.metric("disk_peak_bytes", Some(run.disk_peak as f64));
    report.metric("volume_bytes", Some(size as f64));
    report.metric("overwrite_pct", Some(args.overwrite_pct as f64));
    report.metric("qd", Some(args.qd as f64));
    report.metric("rep_ms", Some(options.rep_duration.as_millis() as f64));
    report.metric("reps", Some(options.reps as f64));
    report.metric("write_cap_mib", Some(args.write_cap_mb as f64));
    report.metric("compaction_rate_mib", Some(args.rate_mib as f64));
    report.metric("live_ratio_max", Some(args.live_ratio_max));
    report.metric("fg_reps_during", Some(run.during.bursts.len() as f64));
    report.metric(
        "fg_coverage_during",
        Some(run.during_timed_s / run.during_wall_s.max(1e-9)),
    );
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_1m = loadavg
        .split_whitespace()
        .next()
        .and_then(|l| l.parse::<f64>().ok());
    report.metric("load_avg_1m", load_1m);
    report.info("method", METHOD);
    report.info("write_amplification_note", WA_NOTE);
    if let Some(cpu) = common::cpu_model() {
        report.info("cpu", &cpu);
    }
    report.finish();
}
