//! Online key rotation under a verified foreground load.
//!
//! One `lsvkms` and one `lsvblk serve` (real processes, AES-256-XTS volume,
//! background compaction off: `--compact-rate-mib 0`) and, in this process,
//! one libblkio client running a verified random 4 KiB read/write mix. Each
//! repetition issues a FLUSH, runs the load untimed for 1 s (what the last
//! rotation left in the page cache is written back), measures the client's
//! IOPS for `--rep-ms` ("before"), then starts `lsvblk rotate VOLUME --json
//! --rate-mib R` as a child process and measures the client's IOPS from its
//! start until it exits ("during"): a new key from lsvkms, new writes under
//! it at once, every live block of the old key re-encrypted by compaction's
//! mover, the old key destroyed. The IOPS of 0.5 s windows are printed too,
//! to show the spread.
//!
//! Reported (table and JSON): `fg_iops_ratio_during_rotation` = median of the
//! "during" IOPS / median of the "before" IOPS over the repetitions,
//! `rekey_mbps` (median over the rotations of `lsvblk rotate`'s
//! `outcome.bytes_rekeyed / seconds`, MB/s = 10^6 B/s), `iops_before`,
//! `iops_during`, `live_bytes` (bytes live under the old key when each
//! rotation starts, from `lsvblk status`: the minimum over the rotations),
//! `rate_mib`, `io_errors`, `mismatches`; then, unless
//! `--unthrottled-reps 0`, the same for rotations with `--rate-mib 0` (no
//! limit), keys prefixed `unthrottled_`; last, one rotation without load or
//! limit (`idle_rekey_mbps`: what the mover does alone), during which
//! `lsvblk status` must show its progress (`idle_status_progress_bytes`).
//!
//! Verification: the client keeps a version number per 4 KiB block; a write
//! stores a pattern derived from (seed, block, new version), a read must
//! return exactly the pattern of the block's last acknowledged write (never
//! two requests on one block in flight at once, so the expected data is
//! exact). The volume is preconditioned by writing every block once, so
//! `--live-mb` MiB are live. After the last rotation the whole disk is read
//! back and checked, then the daemon is restarted (the old keys are gone)
//! and the whole disk is checked again. Any I/O error or mismatch makes the
//! bench exit 1 (after printing the report).
//!
//! Run through `ci/bench.sh rotation [--reps N] [--rep-ms N] [--live-mb N]
//! [--rate-mib N] [--qd N] [--read-pct N] [--unthrottled-reps N]`.
//! Defaults: 7 repetitions, 3000 ms before each rotation, 256 MiB, 64 MiB/s
//! (the daemon's default background rate), QD 32, 70 % reads, 1 unthrottled
//! rotation.
//!
//! The daemons are the `lsvblk` and `lsvkms` that cargo built for this
//! target (`CARGO_BIN_EXE_*`): under `ci/bench.sh` the bench profile
//! (release settings). Unlike the device bench, this one does not run a
//! second `cargo build` of them: with the dev-dependencies' features left
//! out, that build replaces the artifacts of this one, and each run would
//! then rebuild the binaries twice. A smoke run under `cargo test` uses the
//! test build, an 8 MiB volume and one short repetition (no JSON).
//! Everything it starts is stopped and every file it made is removed, also on
//! a panic.

#[path = "../common/mod.rs"]
mod common;
#[path = "../../../tests/kit/mod.rs"]
mod kit;

mod cli;
mod report;

use std::time::{Duration, Instant};

use cli::Cli;
use common::args::Args;
use common::build::Binaries;
use common::serve::{QUEUE_SIZE, client_options, lsvblk_at, serve_options};
use common::{MB_BYTES, Options, USER};
use kit::daemon::{Daemon, create_volume_using};
use kit::kms::Kms;
use kit::process::START_WAIT;
use kit::versions::{BIG_BYTES, BIG_QD, BLOCK, VerifiedLoad, self_test};
use report::{Pair, Summary, report};

/// Repetitions (before + rotation pairs) when `--reps` is not given.
const REPS_DEFAULT: usize = 7;
/// Length of one "before" measurement when `--rep-ms` is not given.
const REP_MS_DEFAULT: u64 = 3000;
/// Live data (= disk size, written fully), MiB (`--live-mb`).
const LIVE_MB_DEFAULT: u64 = 256;
/// Live data for a smoke run under `cargo test`, MiB.
const SMOKE_LIVE_MB: u64 = 8;
/// Rotation rate limit, MiB/s (`--rate-mib`): the daemon's default
/// background compaction rate.
const RATE_MIB_DEFAULT: u64 = 64;
/// Foreground queue depth (`--qd`).
const QD_DEFAULT: usize = 32;
/// Share of reads in the foreground mix, percent (`--read-pct`).
const READ_PCT_DEFAULT: u64 = 70;
/// Unthrottled rotations after the main ones (`--unthrottled-reps`).
const UNTHROTTLED_REPS_DEFAULT: usize = 1;
/// Untimed foreground load before the first measurement.
const WARM_UP: Duration = Duration::from_secs(2);
/// Untimed foreground load before each "before" measurement (after a FLUSH).
const SETTLE: Duration = Duration::from_secs(1);
/// Bytes of the client's shared buffer region: what preconditioning and
/// the whole-disk checks keep in flight.
const REGION_BYTES: usize = BIG_BYTES * BIG_QD;
/// How often the idle rotation's progress is asked for.
const STATUS_POLL: Duration = Duration::from_millis(100);
/// How often the load looks whether `lsvblk rotate` has exited.
const CHILD_POLL: Duration = Duration::from_millis(2);

fn main() {
    // Everything is dropped (daemons stopped, files removed) before exiting.
    let clean = run();
    if !clean {
        eprintln!("rotation bench: FAILED: I/O errors or mismatches (see above)");
        std::process::exit(1);
    }
}

/// Arguments beyond the common ones.
struct ExtraArgs {
    live_mb: u64,
    rate_mib: u64,
    qd: usize,
    read_pct: u64,
    unthrottled_reps: usize,
}

impl ExtraArgs {
    fn parse(options: &Options) -> Self {
        let args = Args::from_env();
        let value = |name: &str, zero_ok: bool| args.number(name, zero_ok);
        let live_mb = if options.smoke {
            SMOKE_LIVE_MB
        } else {
            value("--live-mb", false).unwrap_or(LIVE_MB_DEFAULT)
        };
        let qd = value("--qd", false).map_or(QD_DEFAULT, |n| n as usize);
        assert!(
            qd <= QUEUE_SIZE as usize,
            "--qd {qd} is deeper than the queue"
        );
        let read_pct = value("--read-pct", true).unwrap_or(READ_PCT_DEFAULT);
        assert!(read_pct <= 100, "--read-pct is a percentage");
        ExtraArgs {
            live_mb,
            rate_mib: value("--rate-mib", true).unwrap_or(RATE_MIB_DEFAULT),
            qd,
            read_pct,
            unthrottled_reps: value("--unthrottled-reps", true)
                .map_or(UNTHROTTLED_REPS_DEFAULT, |n| n as usize),
        }
    }
}

/// The whole bench; returns false if any I/O failed or any read mismatched.
fn run() -> bool {
    let options = Options::from_args(REPS_DEFAULT, REP_MS_DEFAULT);
    let extra = ExtraArgs::parse(&options);
    let size = extra.live_mb << 20;
    let root = tempfile::Builder::new()
        .prefix("lsvblk-rotation-bench-")
        .tempdir()
        .expect("temporary directory");
    let dir = root.path();
    let bins = Binaries::of_this_target();
    self_test();

    // Drop order (reverse of declaration), also on a panic: client, any
    // `lsvblk rotate`, the daemon, lsvkms, then every file.
    let kms = Kms::start_in(&bins.lsvkms, dir);
    let token = kms.token(USER);
    let lsvblk = lsvblk_at(&bins.lsvblk);
    let volume = create_volume_using(&lsvblk, &kms, size, &[USER], &[]);
    let serve_options = serve_options(&lsvblk, "lsvblk", &["--compact-rate-mib", "0"], true);
    let serve = || Daemon::start_with(&volume, &kms, &token, &serve_options);
    let client_options = client_options(REGION_BYTES);
    let mut daemon = serve();
    eprintln!("rotation bench: lsvblk is pid {}", daemon.pid());
    let client = daemon.client_with(&client_options, START_WAIT);
    assert_eq!(client.capacity(), size, "capacity");
    let mut load = VerifiedLoad::new("rotation bench", client, extra.qd, extra.read_pct);

    let start = Instant::now();
    load.precondition();
    let fill_mbps = size as f64 / start.elapsed().as_secs_f64() / MB_BYTES;
    eprintln!(
        "rotation bench: {} MiB written ({fill_mbps:.0} MB/s incl. flush)",
        size >> 20
    );
    if !options.smoke {
        let until = Instant::now() + WARM_UP;
        load.run(&mut || Instant::now() >= until);
    }

    let cli = Cli {
        lsvblk: &lsvblk,
        volume: &volume,
    };
    let rotate = |rate_mib: u64, load: &mut VerifiedLoad, daemon: &mut Daemon| -> Pair {
        daemon.check_alive();
        // What the last rotation left dirty in the page cache is written
        // back before the baseline is measured.
        load.flush();
        if !options.smoke {
            let until = Instant::now() + SETTLE;
            load.run(&mut || Instant::now() >= until);
        }
        let until = Instant::now() + options.rep_duration;
        let before = load.run(&mut || Instant::now() >= until);
        let mut running = cli.start_rotation(rate_mib);
        let mut next_poll = Instant::now();
        let during = load.run(&mut || {
            let now = Instant::now();
            if now < next_poll {
                return false;
            }
            next_poll = now + CHILD_POLL;
            running.exited()
        });
        let rotation = running.finish();
        eprintln!(
            "rotation bench: rate {} MiB/s: before {:.0} IOPS, during {:.0} IOPS \
             ({:.2}x); {}",
            rate_mib,
            before.iops(),
            during.iops(),
            during.iops() / before.iops(),
            rotation.describe(),
        );
        Pair {
            before,
            during,
            rotation,
        }
    };

    let mut main_pairs = Vec::new();
    for _ in 0..options.reps {
        main_pairs.push(rotate(extra.rate_mib, &mut load, &mut daemon));
    }
    let mut unthrottled_pairs = Vec::new();
    for _ in 0..extra.unthrottled_reps {
        unthrottled_pairs.push(rotate(0, &mut load, &mut daemon));
    }

    // One rotation without foreground load and without a limit: what the
    // mover does alone, every live block re-keyed; `lsvblk status` is asked
    // for the rotation's progress meanwhile.
    load.flush();
    let mut running = cli.start_rotation(0);
    let mut progress_seen = 0u64;
    while !running.exited() {
        std::thread::sleep(STATUS_POLL);
        let status = cli.status();
        let moved = &status["keys"]["progress"]["bytes_moved"];
        if let Some(moved) = moved.as_u64() {
            progress_seen = progress_seen.max(moved);
        }
    }
    let idle = running.finish();
    eprintln!(
        "rotation bench: idle, unlimited: {}; status showed up to {} MiB moved",
        idle.describe(),
        progress_seen >> 20
    );

    // Every block, after every rotation; then again from a fresh daemon,
    // which has only the newest key.
    let blocks = size / BLOCK as u64;
    let mut checks = Vec::new();
    checks.push(("after the rotations", load.verify_disk()));
    let client = load.client.take().expect("client");
    drop(client);
    daemon.stop(true);
    daemon = serve();
    load.client = Some(daemon.client_with(&client_options, START_WAIT));
    checks.push(("after a restart", load.verify_disk()));
    let keys_now = cli.status()["keys"]["keys"].as_array().map_or(0, Vec::len);

    let clean = report(
        &options,
        &extra,
        &Summary {
            main: &main_pairs,
            unthrottled: &unthrottled_pairs,
            idle: &idle,
            progress_seen,
            load: &load,
            checks: &checks,
            blocks,
            keys_now,
            fill_mbps,
            size,
        },
    );
    load.client = None;
    drop(daemon);
    drop(kms);
    drop(root);
    clean
}
