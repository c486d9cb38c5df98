//! The whole device, as a VMM sees it: one libblkio client in this process
//! drives, with the same load generator and settings,
//!
//! - `lsvblk`:      `lsvblk serve`, AES-256-XTS volume (plain release build,
//!   key unwrapped through a real `lsvkms`),
//! - `lsvblk-crc`:  the same build on a volume created with
//!   `--no-macs-benchmark-only` (CRCs, no MACs): what the MACs cost
//!   (`mac_randwrite_qd32_ratio`, `mac_seqwrite_1m_ratio`: lsvblk / this),
//! - `lsvblk-null`: `lsvblk serve` on a null-cipher volume (release build with
//!   `--features null-cipher`): what the daemon costs without crypto,
//! - `qsd-raw`:     `qemu-storage-daemon` exporting a raw file,
//! - `qsd-luks`:    `qemu-storage-daemon` exporting a LUKS1 image
//!   (aes-256-xts-plain64, QEMU's built-in LUKS driver),
//! - `qsd-raw-direct`, `qsd-luks-direct`: the same with
//!   `cache.direct=on,aio=io_uring`, as VM hosts run QEMU in production
//!   (O_DIRECT: the host page cache holds nothing of the disk),
//! - `device`: no daemon, the filesystem itself: 1 MiB O_DIRECT sequential
//!   writes and reads on a file next to the others (`device_file`), the
//!   limit any backend's 1 MiB figures are measured against,
//!
//! and prints IOPS / MB/s per target and workload, the ratios of `lsvblk`
//! to each other target, and the CPU each server used.
//!
//! A real run builds both lsvblk variants itself (`cargo build --profile
//! bench --bin lsvblk --bin lsvkms`, with and without `--features
//! null-cipher`: release settings, cached after the first run) and copies
//! them into its temporary directory; the plain build is the encrypted
//! target, exactly what ships. A smoke run under `cargo test` uses the test
//! build of the binaries, small disks and 1 ms cases (and no JSON).
//! Everything it starts is stopped (SIGTERM, then SIGKILL) and every file it
//! made is removed, also when it panics.
//!
//! Run through `ci/bench.sh device [--reps N] [--rep-ms N] [--only TEXT]
//! [--size-mb N] [--write-cap-mb N]`. `--only` matches workload or target
//! names (e.g. `--only randwrite_qd32` while profiling the daemon with
//! `perf record -p`).
//!
//! Method (also printed, and in the JSON):
//! - Durability is the same everywhere: a guest FLUSH becomes `fdatasync` of
//!   the backing files (QSD: `cache.no-flush=off`, export `writethrough=off`;
//!   `qsd-raw`/`qsd-luks` buffered with the default `aio=threads`, the
//!   `-direct` ones O_DIRECT through io_uring; lsvblk: its log as `--io`
//!   says, `fdatasync` on FLUSH).
//! - One virtqueue of 256 descriptors (lsvblk offers two, the second used by
//!   the two-queue workload only); each request is one contiguous buffer
//!   (a 1 MiB request is one 1 MiB descriptor). Every target is a 1 GiB disk,
//!   preconditioned by writing it once fully (1 MiB, QD 8) and flushing, so
//!   reads hit data, not holes.
//! - Workloads: 4 KiB random write / read at QD 1 and QD 32 (uniform random
//!   aligned offsets), 1 MiB sequential write / read at QD 8, and 4 KiB
//!   random read at QD 32 on each of two queues, each driven by a thread
//!   of its own (lsvblk targets only; against its one-queue figure). The
//!   client keeps
//!   QD requests in flight (submit, `do_io` for completions, resubmit) for
//!   `--rep-ms`; a write repetition also stops after `--write-cap-mb` MiB (the
//!   disk here is slow and lsvblk's log has no cleaner yet: unbounded writes
//!   would make the flushes dominate the run and fill the disk). After each
//!   write repetition a FLUSH is issued and waited for, *outside* the timed
//!   interval, so every case starts with a clean page cache; its duration is
//!   reported separately (`flush_ms`: the disk's share, log write
//!   amplification included).
//! - Reads on buffered targets are served mostly from the host page cache
//!   (the disks fit in RAM): they measure the backends, not the disk; on
//!   O_DIRECT targets every read reaches the disk.
//! - CPU: each server's user + system time over the repetition's wall time
//!   (`/proc/PID/stat`), in cores.
//! - Repetitions run round-robin: for each repetition, each workload, every
//!   target in turn (the order of targets rotates per repetition); medians of
//!   the repetitions are reported.

#[path = "../common/mod.rs"]
mod common;
#[path = "../../../tests/kit/mod.rs"]
mod kit;

mod device_file;
mod report;
mod targets;

use std::path::{Path, PathBuf};

use common::args::Args;
use common::build::Binaries;
use common::load::{RANDWRITE_QD32, SEQWRITE_1M, Workload};
use common::{Options, USER, which};
use device_file::DeviceFile;
use kit::kms::Kms;
use kit::rng::Rng;
use report::report;
use targets::{CaseResult, HostIo, Limits, VolumeKind, lsvblk_target, qsd_target};

/// Repetitions per case when `--reps` is not given.
const REPS_DEFAULT: usize = 5;
/// Longest wall time of one repetition of one case when `--rep-ms` is not given.
const REP_MS_DEFAULT: u64 = 1200;
/// Disk size for a real run, MiB (`--size-mb`).
const SIZE_MB_DEFAULT: u64 = 1024;
/// Disk size for a smoke run under `cargo test`, MiB.
const SMOKE_SIZE_MB: u64 = 32;
/// Most bytes one write repetition writes, MiB (`--write-cap-mb`).
const WRITE_CAP_MB_DEFAULT: u64 = 512;
/// Virtqueues the lsvblk targets offer (the two-queue workload's).
const LSVBLK_QUEUES: u16 = 2;
/// Preconditioning: request size and queue depth.
const FILL_BYTES: usize = 1 << 20;
const FILL_QD: usize = 8;

const WORKLOADS: [Workload; 7] = [
    Workload {
        key: "randwrite_qd1",
        label: "4 KiB randwrite QD1",
        write: true,
        random: true,
        block: 4096,
        qd: 1,
        queues: 1,
    },
    RANDWRITE_QD32,
    Workload {
        key: "randread_qd1",
        label: "4 KiB randread QD1",
        write: false,
        random: true,
        block: 4096,
        qd: 1,
        queues: 1,
    },
    Workload {
        key: "randread_qd32",
        label: "4 KiB randread QD32",
        write: false,
        random: true,
        block: 4096,
        qd: 32,
        queues: 1,
    },
    SEQWRITE_1M,
    Workload {
        key: "seqread_1m",
        label: "1 MiB seqread QD8",
        write: false,
        random: false,
        block: 1 << 20,
        qd: 8,
        queues: 1,
    },
    Workload {
        key: "randread_qd32_2q",
        label: "4 KiB randread 2x QD32",
        write: false,
        random: true,
        block: 4096,
        qd: 32,
        queues: 2,
    },
];

fn main() {
    let options = Options::from_args(REPS_DEFAULT, REP_MS_DEFAULT);
    let extra = ExtraArgs::parse(&options);
    let size = extra.size_mb << 20;
    let root = tempfile::Builder::new()
        .prefix("lsvblk-device-bench-")
        .tempdir()
        .expect("temporary directory");
    let dir = root.path();

    // `--only` naming targets without lsvblk-null: no null-cipher build
    // (it rebuilds the crate, minutes on a small machine).
    let names_targets = options.only.as_deref().is_some_and(|only| {
        only.split(',')
            .any(|o| o == device_file::DEVICE || o.starts_with("lsvblk") || o.starts_with("qsd"))
    });
    let null_wanted = !names_targets
        || options
            .only
            .as_deref()
            .is_some_and(|only| only.split(',').any(|o| o == "lsvblk-null"));
    let (bins, lsvblk_null) = find_binaries(&options, dir, null_wanted);
    // Field order = drop order: every client disconnects, then the daemons
    // stop (lsvblk flushes), then lsvkms, then `root` removes every file.
    let kms = Kms::start_in(&bins.lsvkms, dir);
    let token = kms.token(USER);
    let mut targets = Vec::new();
    let queues = LSVBLK_QUEUES;
    for (name, kind) in [
        ("lsvblk", VolumeKind::Shipped),
        ("lsvblk-crc", VolumeKind::NoMacs),
    ] {
        targets.push(lsvblk_target(
            name,
            &bins.lsvblk,
            kind,
            queues,
            &kms,
            &token,
            size,
        ));
    }
    match &lsvblk_null {
        Some(path) => targets.push(lsvblk_target(
            "lsvblk-null",
            path,
            VolumeKind::NullCipher,
            queues,
            &kms,
            &token,
            size,
        )),
        None => eprintln!("device bench: no null-cipher build of lsvblk: lsvblk-null skipped"),
    }
    match which("qemu-storage-daemon").zip(which("qemu-img")) {
        Some((qsd, qemu_img)) => {
            for (name, luks, io) in [
                ("qsd-raw", false, HostIo::Buffered),
                ("qsd-luks", true, HostIo::Buffered),
                ("qsd-raw-direct", false, HostIo::Direct),
                ("qsd-luks-direct", true, HostIo::Direct),
            ] {
                targets.push(qsd_target(name, &qsd, &qemu_img, luks, io, dir, size));
            }
        }
        None => eprintln!("device bench: qemu-storage-daemon or qemu-img not found: QSD skipped"),
    }
    let mut device = DeviceFile::create(&dir.join("device.img"), size);
    // `--only`: texts naming targets (exactly) keep those targets; texts
    // found in workload names keep those workloads.
    let only: Vec<&str> = options
        .only
        .as_deref()
        .map_or(Vec::new(), |o| o.split(',').collect());
    if only
        .iter()
        .any(|o| targets.iter().any(|t| t.name == *o) || *o == device_file::DEVICE)
    {
        targets.retain(|t| only.contains(&t.name));
        if !only.contains(&device_file::DEVICE) {
            device = None;
        }
    }
    let mut workloads: Vec<Workload> = WORKLOADS.to_vec();
    if only
        .iter()
        .any(|o| WORKLOADS.iter().any(|w| w.key.contains(o)))
    {
        workloads.retain(|w| only.iter().any(|o| w.key.contains(o)));
    }
    for target in &targets {
        eprintln!(
            "device bench: {} is pid {}",
            target.name,
            target.server.pid()
        );
    }

    let mut rng = Rng(0xdead_beef_0bad_cafe);
    for target in &mut targets {
        target.connect();
        target.fill_mbps = Some(target.precondition());
        eprintln!(
            "device bench: {} preconditioned ({:.0} MB/s incl. flush)",
            target.name,
            target.fill_mbps.unwrap_or(0.0)
        );
    }
    if let Some(device) = &mut device {
        device.precondition();
    }
    let limits = Limits {
        duration: options.rep_duration,
        write_cap: extra.write_cap_mb << 20,
    };
    // Results by (workload, index): the targets, then the device limit
    // at index `targets.len()`.
    let columns = targets.len() + usize::from(device.is_some());
    let mut results: Vec<CaseResult> = Vec::new();
    for workload in &workloads {
        for target in 0..columns {
            results.push(CaseResult::new(*workload, target));
        }
    }
    for rep in 0..options.reps {
        for workload in &workloads {
            for turn in 0..columns {
                let index = (turn + rep) % columns;
                let sample = match targets.get_mut(index) {
                    Some(target) => {
                        target.check_alive();
                        target.run(workload, &limits, &mut rng)
                    }
                    None => device
                        .as_ref()
                        .and_then(|d| d.run(workload, &limits, &mut rng)),
                };
                results
                    .iter_mut()
                    .find(|r| r.workload.key == workload.key && r.target == index)
                    .expect("case")
                    .samples
                    .extend(sample);
            }
        }
    }
    report(&options, &extra, &targets, device.as_ref(), &results, size);
    // Disconnect every client before the daemons stop (drop order).
    for target in &mut targets {
        target.client = None;
    }
    drop(targets);
    drop(kms);
}

/// Arguments beyond the common ones.
struct ExtraArgs {
    size_mb: u64,
    write_cap_mb: u64,
}

impl ExtraArgs {
    fn parse(options: &Options) -> Self {
        let args = Args::from_env();
        let value = |name: &str| args.number(name, false);
        let size_mb = if options.smoke {
            SMOKE_SIZE_MB
        } else {
            value("--size-mb").unwrap_or(SIZE_MB_DEFAULT)
        };
        ExtraArgs {
            size_mb,
            write_cap_mb: value("--write-cap-mb").unwrap_or(WRITE_CAP_MB_DEFAULT),
        }
    }
}

/// Where the daemons are: a real run builds both lsvblk variants in the
/// bench profile (release settings; cached after the first time) and
/// copies them out of `target/`, as each build replaces
/// `target/release/lsvblk`. A smoke run under `cargo test` uses the test
/// build of the binaries as they are. Returns the plain build and, if
/// there is one (and `null_wanted`), the null-cipher `lsvblk`.
fn find_binaries(options: &Options, dir: &Path, null_wanted: bool) -> (Binaries, Option<PathBuf>) {
    if options.smoke {
        let bins = Binaries::of_this_target();
        let null = cfg!(feature = "null-cipher").then(|| bins.lsvblk.clone());
        return (bins, null);
    }
    // The plain build last, so that `target/release/lsvblk` is the one
    // without the null cipher afterwards.
    let null = null_wanted
        .then(|| Binaries::build(&["--features", "null-cipher"], &dir.join("bin-null")).lsvblk);
    let plain = Binaries::build(&[], &dir.join("bin"));
    (plain, null)
}
