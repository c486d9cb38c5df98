//! Online key rotation under a verified foreground load (issue 6).
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

mod common;

use std::fs::File;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use common::procs::{CONNECT_WAIT, Daemon, Kms, USER, run_tool};
use common::{Options, Report, median};
use serde_json::Value;

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
/// Foreground request size: one block.
const BLOCK: usize = 4096;
/// Preconditioning and whole-disk checks: request size and queue depth.
const BIG_BYTES: usize = 1 << 20;
const BIG_QD: usize = 8;
/// Virtqueue size (lsvblk's and libblkio's default).
const QUEUE_SIZE: i32 = 256;
/// Bytes of the client's shared buffer region.
const REGION_BYTES: usize = BIG_BYTES * BIG_QD;
/// Length of the windows whose IOPS are kept for the spread.
const WINDOW: Duration = Duration::from_millis(500);
/// How often the idle rotation's progress is asked for.
const STATUS_POLL: Duration = Duration::from_millis(100);
/// How often the load looks whether `lsvblk rotate` has exited.
const CHILD_POLL: Duration = Duration::from_millis(2);
/// First word of every block written by this bench.
const MAGIC: u64 = 0x6c73_7662_726f_7421;

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
        let args: Vec<String> = std::env::args().collect();
        let value = |name: &str, zero_ok: bool| -> Option<u64> {
            let at = args.iter().position(|a| a == name)?;
            let text = args.get(at + 1).map(String::as_str).unwrap_or("");
            match text.parse::<u64>() {
                Ok(n) if n > 0 || zero_ok => Some(n),
                _ => panic!("{name} needs a non-negative integer, got {text:?}"),
            }
        };
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
    let lsvblk = PathBuf::from(env!("CARGO_BIN_EXE_lsvblk"));
    let lsvkms = PathBuf::from(env!("CARGO_BIN_EXE_lsvkms"));
    self_test();

    // Drop order (reverse of declaration), also on a panic: client, any
    // `lsvblk rotate`, the daemon, lsvkms, then every file.
    let kms = Kms::start(&lsvkms, dir);
    let volume = dir.join("vol");
    let kms_address = format!("unix:{}", kms.socket.display());
    run_tool(
        Command::new(&lsvblk)
            .arg("create")
            .arg("--volume")
            .arg(&volume)
            .args(["--size", &size.to_string(), "--acl", USER])
            .args(["--kms", &kms_address]),
    );
    let socket = dir.join("vhost.sock");
    let serve = |log: &str| {
        Daemon::spawn(
            "lsvblk",
            Command::new(&lsvblk)
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
            dir.join(log),
            true,
        )
    };
    let mut daemon = serve("lsvblk.log");
    eprintln!("rotation bench: lsvblk is pid {}", daemon.pid());
    let client = Client::connect_retrying(&socket, &mut daemon);
    assert_eq!(client.capacity, size, "capacity");
    let mut load = Load::new(client, extra.qd, extra.read_pct);

    let start = Instant::now();
    load.precondition();
    let fill_mbps = size as f64 / start.elapsed().as_secs_f64() / common::MB_BYTES;
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
        dir,
    };
    let rotate = |rate_mib: u64, load: &mut Load, daemon: &mut Daemon| -> Pair {
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
    daemon.stop();
    daemon = serve("lsvblk-restarted.log");
    load.client = Some(Client::connect_retrying(&socket, &mut daemon));
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

/// The `lsvblk` commands the bench runs on its volume.
struct Cli<'a> {
    lsvblk: &'a Path,
    volume: &'a Path,
    dir: &'a Path,
}

impl Cli<'_> {
    /// `lsvblk status VOLUME --json`.
    fn status(&self) -> Value {
        let text = run_tool(
            Command::new(self.lsvblk)
                .arg("status")
                .arg(self.volume)
                .arg("--json"),
        );
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("lsvblk status: {e}: {text}"))
    }

    /// Starts `lsvblk rotate VOLUME --json --rate-mib RATE` (after noting
    /// the current key and the bytes live under it).
    fn start_rotation(&self, rate_mib: u64) -> Running {
        let status = self.status();
        let old_key = status["keys"]["current_key_id"].clone();
        let live_bytes = status["keys"]["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|k| k["current"] == Value::Bool(true))
            .filter_map(|k| k["usage"]["live_bytes"].as_u64())
            .sum();
        let out = self.dir.join("rotate.out");
        let err = self.dir.join("rotate.err");
        let started = Instant::now();
        let child = Command::new(self.lsvblk)
            .arg("rotate")
            .arg(self.volume)
            .args(["--json", "--rate-mib", &rate_mib.to_string()])
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("rotate.out"))
            .stderr(File::create(&err).expect("rotate.err"))
            .spawn()
            .expect("start lsvblk rotate");
        Running {
            child,
            exit: None,
            started,
            out,
            err,
            old_key,
            live_bytes,
            rate_mib,
        }
    }
}

/// A running `lsvblk rotate`.
struct Running {
    child: Child,
    exit: Option<std::process::ExitStatus>,
    started: Instant,
    out: PathBuf,
    err: PathBuf,
    old_key: Value,
    live_bytes: u64,
    rate_mib: u64,
}

impl Running {
    /// Whether it has exited (waitpid, no blocking).
    fn exited(&mut self) -> bool {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("wait for lsvblk rotate");
        }
        self.exit.is_some()
    }

    /// Waits for it; its result. Panics if it failed or left the key as it
    /// was.
    fn finish(mut self) -> Rotation {
        let exit = match self.exit {
            Some(exit) => exit,
            None => self.child.wait().expect("wait for lsvblk rotate"),
        };
        self.exit = Some(exit);
        let wall_s = self.started.elapsed().as_secs_f64();
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        assert!(
            exit.success(),
            "lsvblk rotate failed ({exit}):\n{text}{}",
            std::fs::read_to_string(&self.err).unwrap_or_default()
        );
        let output: Value = serde_json::from_str(text.trim()).expect("rotate JSON");
        assert_ne!(
            output["current_key_id"], self.old_key,
            "the rotation left the key as it was: {output}"
        );
        let number = |value: &Value| value.as_u64().expect("a byte count in rotate's output");
        Rotation {
            rate_mib: self.rate_mib,
            live_bytes: self.live_bytes,
            bytes_rekeyed: number(&output["outcome"]["bytes_rekeyed"]),
            bytes_moved: number(&output["outcome"]["bytes_moved"]),
            seconds: output["seconds"].as_f64().expect("seconds"),
            wall_s,
        }
    }
}

impl Drop for Running {
    /// A rotation left running by a panic is killed (the daemon carries on
    /// with it until it stops).
    fn drop(&mut self) {
        if self.exit.is_none() && !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What one rotation did.
struct Rotation {
    rate_mib: u64,
    /// Bytes live under the key rotated away from, at the start.
    live_bytes: u64,
    /// From `lsvblk rotate`'s output.
    bytes_rekeyed: u64,
    bytes_moved: u64,
    seconds: f64,
    /// From starting `lsvblk rotate` to seeing it exit.
    wall_s: f64,
}

impl Rotation {
    /// MB/s re-keyed, as `lsvblk rotate` measured its own time.
    fn rekey_mbps(&self) -> f64 {
        self.bytes_rekeyed as f64 / self.seconds / common::MB_BYTES
    }

    fn describe(&self) -> String {
        format!(
            "{} MiB live, {} MiB re-keyed in {:.2} s ({:.0} MB/s)",
            self.live_bytes >> 20,
            self.bytes_rekeyed >> 20,
            self.seconds,
            self.rekey_mbps()
        )
    }
}

/// One repetition: foreground before, and during one rotation.
struct Pair {
    before: Phase,
    during: Phase,
    rotation: Rotation,
}

/// Completions of one measured phase.
#[derive(Default)]
struct Phase {
    ops: u64,
    elapsed_s: f64,
    /// IOPS of each full [`WINDOW`].
    windows: Vec<f64>,
}

impl Phase {
    fn iops(&self) -> f64 {
        self.ops as f64 / self.elapsed_s
    }

    /// `min..max (median)` of the windows' IOPS.
    fn spread(&self) -> String {
        if self.windows.is_empty() {
            return "n/a".to_owned();
        }
        format!(
            "{:.0}..{:.0} ({:.0})",
            self.windows.iter().copied().fold(f64::INFINITY, f64::min),
            self.windows.iter().copied().fold(0.0, f64::max),
            median(&self.windows)
        )
    }
}

/// What the report is made of.
struct Summary<'a> {
    main: &'a [Pair],
    unthrottled: &'a [Pair],
    idle: &'a Rotation,
    /// Most bytes moved `lsvblk status` showed during the idle rotation.
    progress_seen: u64,
    load: &'a Load,
    checks: &'a [(&'static str, Check)],
    blocks: u64,
    keys_now: usize,
    fill_mbps: f64,
    size: u64,
}

/// Medians over `pairs`.
struct Medians {
    before: f64,
    during: f64,
    rekey_mbps: f64,
    bytes_rekeyed: f64,
    seconds: f64,
}

impl Medians {
    fn of(pairs: &[Pair]) -> Option<Self> {
        if pairs.is_empty() {
            return None;
        }
        let of = |f: &dyn Fn(&Pair) -> f64| median(&pairs.iter().map(f).collect::<Vec<_>>());
        Some(Medians {
            before: of(&|p| p.before.iops()),
            during: of(&|p| p.during.iops()),
            rekey_mbps: of(&|p| p.rotation.rekey_mbps()),
            bytes_rekeyed: of(&|p| p.rotation.bytes_rekeyed as f64),
            seconds: of(&|p| p.rotation.seconds),
        })
    }

    fn ratio(&self) -> f64 {
        self.during / self.before
    }
}

/// A rate for people: MiB/s, or "unlimited" for 0.
fn rate_text(rate_mib: u64) -> String {
    if rate_mib == 0 {
        "unlimited".to_owned()
    } else {
        format!("{rate_mib} MiB/s")
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Prints the table and the JSON; true if nothing failed.
fn report(options: &Options, extra: &ExtraArgs, s: &Summary<'_>) -> bool {
    let load = s.load;
    let check_mismatches: u64 = s.checks.iter().map(|(_, c)| c.mismatches).sum();
    let check_errors: u64 = s.checks.iter().map(|(_, c)| c.io_errors).sum();
    let io_errors = load.io_errors + check_errors;
    let mismatches = load.mismatches + check_mismatches;

    println!();
    println!(
        "== rotation: {} MiB live, 4 KiB random {}% read / {}% write at QD {}; \
         {} x (FLUSH, {} s untimed, {} ms before, one rotation at {}){}; then one idle \
         rotation, unlimited",
        s.size >> 20,
        extra.read_pct,
        100 - extra.read_pct,
        extra.qd,
        options.reps,
        if options.smoke { 0 } else { SETTLE.as_secs() },
        options.rep_duration.as_millis(),
        rate_text(extra.rate_mib),
        if s.unthrottled.is_empty() {
            String::new()
        } else {
            format!(", then {} x the same unlimited", s.unthrottled.len())
        }
    );
    println!(
        "{:<4} {:>10} {:>10} {:>10} {:>6} {:>9} {:>9} {:>9} {:>7} {:>7} {:>10}  \
         IOPS of 0.5 s windows: min..max (median)",
        "rep",
        "rate",
        "IOPS bef.",
        "IOPS dur.",
        "ratio",
        "live MiB",
        "rekey MiB",
        "moved MiB",
        "rot. s",
        "wall s",
        "rekey MB/s"
    );
    for (index, p) in s.main.iter().chain(s.unthrottled).enumerate() {
        let r = &p.rotation;
        let spread = format!("before {}; during {}", p.before.spread(), p.during.spread());
        println!(
            "{:<4} {:>10} {:>10.0} {:>10.0} {:>5.2}x {:>9.1} {:>9.1} {:>9.1} {:>7.2} {:>7.2} \
             {:>10.1}  {spread}",
            index + 1,
            rate_text(r.rate_mib),
            p.before.iops(),
            p.during.iops(),
            p.during.iops() / p.before.iops(),
            mib(r.live_bytes),
            mib(r.bytes_rekeyed),
            mib(r.bytes_moved),
            r.seconds,
            r.wall_s,
            r.rekey_mbps(),
        );
    }
    let r = s.idle;
    println!(
        "{:<4} {:>10} {:>10} {:>10} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>7.2} {:>7.2} {:>10.1}  \
         no load; `lsvblk status` showed up to {:.1} MiB moved",
        "idle",
        rate_text(r.rate_mib),
        "-",
        "-",
        "-",
        mib(r.live_bytes),
        mib(r.bytes_rekeyed),
        mib(r.bytes_moved),
        r.seconds,
        r.wall_s,
        r.rekey_mbps(),
        mib(s.progress_seen),
    );
    println!(
        "foreground: {} reads verified, {} writes acknowledged, {} I/O errors, {} mismatches",
        load.verified_reads, load.writes_done, load.io_errors, load.mismatches
    );
    for (when, check) in s.checks {
        println!(
            "whole-disk check {when}: {} of {} blocks verified, {} I/O errors, {} mismatches",
            check.verified, s.blocks, check.io_errors, check.mismatches
        );
    }
    for line in &load.mismatch_notes {
        println!("  mismatch: {line}");
    }
    println!(
        "keys in the volume at the end: {} (the old ones forgotten, lsvkms told to destroy them)",
        s.keys_now
    );
    println!(
        "preconditioning: {:.0} MB/s (1 MiB QD8 + FLUSH)",
        s.fill_mbps
    );

    let mut report = Report::new("rotation", options);
    let main = Medians::of(s.main);
    let unthrottled = Medians::of(s.unthrottled);
    report.row(
        "fg_iops_ratio_during_rotation",
        &format!(
            "foreground IOPS during / before, {}",
            rate_text(extra.rate_mib)
        ),
        main.as_ref().map(Medians::ratio),
        "x",
        &format!(
            "median during / median before, {} rotations; issue 6 wants >= 0.7",
            s.main.len()
        ),
    );
    report.row(
        "rekey_mbps",
        &format!("re-key rate under load, {}", rate_text(extra.rate_mib)),
        main.as_ref().map(|m| m.rekey_mbps),
        "MB/s",
        "median of lsvblk rotate's bytes_rekeyed / seconds",
    );
    report.row(
        "iops_before",
        "foreground IOPS before rotation",
        main.as_ref().map(|m| m.before),
        "IOPS",
        &format!(
            "median of {} x {} ms",
            s.main.len(),
            options.rep_duration.as_millis()
        ),
    );
    report.row(
        "iops_during",
        "foreground IOPS during rotation",
        main.as_ref().map(|m| m.during),
        "IOPS",
        "median; each: ops / time from start to exit of lsvblk rotate",
    );
    report.row(
        "live_bytes",
        "live under the old key at rotation start (min)",
        s.main
            .iter()
            .map(|p| p.rotation.live_bytes as f64)
            .reduce(f64::min),
        "B",
        "",
    );
    report.row(
        "bytes_rekeyed",
        "re-keyed per rotation under load (median)",
        main.as_ref().map(|m| m.bytes_rekeyed),
        "B",
        "less than live: blocks the load overwrote first went to the new key anyway",
    );
    report.row(
        "rotation_seconds",
        "rotation time under load (median)",
        main.as_ref().map(|m| m.seconds),
        "s",
        "",
    );
    report.row(
        "unthrottled_fg_iops_ratio_during_rotation",
        "foreground IOPS during / before, unlimited",
        unthrottled.as_ref().map(Medians::ratio),
        "x",
        &format!("{} rotation(s) with --rate-mib 0", s.unthrottled.len()),
    );
    report.row(
        "unthrottled_rekey_mbps",
        "re-key rate under load, unlimited",
        unthrottled.as_ref().map(|m| m.rekey_mbps),
        "MB/s",
        "",
    );
    report.metric(
        "unthrottled_iops_before",
        unthrottled.as_ref().map(|m| m.before),
    );
    report.metric(
        "unthrottled_iops_during",
        unthrottled.as_ref().map(|m| m.during),
    );
    report.row(
        "idle_rekey_mbps",
        "re-key rate without load, unlimited",
        Some(s.idle.rekey_mbps()),
        "MB/s",
        &format!(
            "{:.1} MiB re-keyed of {:.1} MiB live",
            mib(s.idle.bytes_rekeyed),
            mib(s.idle.live_bytes)
        ),
    );
    report.metric("idle_bytes_rekeyed", Some(s.idle.bytes_rekeyed as f64));
    report.metric("idle_live_bytes", Some(s.idle.live_bytes as f64));
    report.metric("idle_status_progress_bytes", Some(s.progress_seen as f64));
    report.row("io_errors", "I/O errors", Some(io_errors as f64), "", "");
    report.row(
        "mismatches",
        "reads that did not return the last write",
        Some(mismatches as f64),
        "",
        "foreground reads and two whole-disk checks (after the rotations, after a restart)",
    );
    report.metric("verified_reads", Some(load.verified_reads as f64));
    report.metric("writes_acknowledged", Some(load.writes_done as f64));
    report.metric("rate_mib", Some(extra.rate_mib as f64));
    report.metric("size_bytes", Some(s.size as f64));
    report.metric("qd", Some(extra.qd as f64));
    report.metric("read_pct", Some(extra.read_pct as f64));
    report.metric("reps", Some(s.main.len() as f64));
    report.metric("rep_ms", Some(options.rep_duration.as_millis() as f64));
    report.metric("fill_mbps", Some(s.fill_mbps));
    report.info(
        "method",
        "lsvkms + lsvblk serve (AES-256-XTS, --compact-rate-mib 0, 1 queue of 256) as \
         processes; libblkio client in the bench process: verified 4 KiB uniform random \
         read/write mix (per-block version model, one request per block in flight); \
         per repetition: FLUSH, 1 s untimed, --rep-ms before, then `lsvblk rotate --json \
         --rate-mib R` as a child, IOPS from its start to its exit; medians over \
         repetitions; one idle unlimited rotation; whole disk checked after the rotations \
         and after a daemon restart",
    );
    if let Some(cpu) = common::cpu_model() {
        report.info("cpu", &cpu);
    }
    report.finish();
    io_errors == 0 && mismatches == 0
}

/// The data of `block` at `version`: magic, block number, version, then
/// words derived from all three and `seed`.
fn fill(buf: &mut [u8], seed: u64, block: u64, version: u32) {
    let mut base = common::SplitMix64(seed ^ block.rotate_left(20) ^ u64::from(version));
    let base = base.next();
    for (index, word) in buf.chunks_exact_mut(8).enumerate() {
        let value = match index {
            0 => MAGIC,
            1 => block,
            2 => u64::from(version),
            i => base.wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        };
        word.copy_from_slice(&value.to_le_bytes());
    }
}

/// [`fill`] and [`check`] tell versions, blocks and single bytes apart.
fn self_test() {
    let mut buf = [0u8; BLOCK];
    fill(&mut buf, 7, 42, 3);
    assert!(check(&buf, 7, 42, 3).is_ok());
    assert!(check(&buf, 7, 42, 4).is_err());
    assert!(check(&buf, 7, 43, 3).is_err());
    assert!(check(&buf, 8, 42, 3).is_err());
    buf[BLOCK - 1] ^= 1;
    assert!(check(&buf, 7, 42, 3).is_err());
}

/// Whether `buf` holds `block` at `version`; if not, what it holds.
fn check(buf: &[u8], seed: u64, block: u64, version: u32) -> Result<(), String> {
    let mut want = [0u8; BLOCK];
    fill(&mut want, seed, block, version);
    if buf == want {
        return Ok(());
    }
    let word = |i: usize| u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let found = if word(0) == MAGIC {
        format!("block {} version {}", word(1), word(2))
    } else if buf.iter().all(|b| *b == 0) {
        "zeros".to_owned()
    } else {
        "no pattern of this bench".to_owned()
    };
    Err(format!(
        "block {block}: want version {version}, found {found}"
    ))
}

/// One request in flight.
#[derive(Clone, Copy)]
struct Request {
    block: u64,
    write: bool,
    /// The version a write stores.
    version: u32,
}

/// The verified foreground load: the client and the model of the disk.
struct Load {
    client: Option<Client>,
    qd: usize,
    read_pct: u64,
    seed: u64,
    rng: common::SplitMix64,
    /// Version of each block's last acknowledged write.
    versions: Vec<u32>,
    /// Blocks with a request in flight.
    busy: Vec<bool>,
    /// Blocks whose content is unknown after a failed write.
    unknown: Vec<bool>,
    /// Per slot, the request in flight there.
    slots: Vec<Option<Request>>,
    io_errors: u64,
    mismatches: u64,
    mismatch_notes: Vec<String>,
    verified_reads: u64,
    writes_done: u64,
}

/// Mismatches described in the output (the count is always exact).
const MISMATCH_NOTES_MAX: usize = 10;

/// A whole-disk check.
struct Check {
    verified: u64,
    io_errors: u64,
    mismatches: u64,
}

impl Load {
    fn new(client: Client, qd: usize, read_pct: u64) -> Self {
        let blocks = (client.capacity / BLOCK as u64) as usize;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Load {
            client: Some(client),
            qd,
            read_pct,
            seed,
            rng: common::SplitMix64(seed.rotate_left(32)),
            versions: vec![0; blocks],
            busy: vec![false; blocks],
            unknown: vec![false; blocks],
            slots: vec![None; qd],
            io_errors: 0,
            mismatches: 0,
            mismatch_notes: Vec::new(),
            verified_reads: 0,
            writes_done: 0,
        }
    }

    fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("connected")
    }

    fn note_mismatch(&mut self, note: String) {
        self.mismatches += 1;
        if self.mismatch_notes.len() < MISMATCH_NOTES_MAX {
            eprintln!("rotation bench: MISMATCH: {note}");
            self.mismatch_notes.push(note);
        }
    }

    /// Writes every block once (version 0: 1 MiB requests at QD 8), then
    /// FLUSH.
    fn precondition(&mut self) {
        let seed = self.seed;
        let capacity = self.client().capacity;
        let mut next = 0u64;
        let mut in_flight = 0;
        let mut completions = completions(BIG_QD);
        let submit = |client: &mut Client, slot: usize, offset: u64| {
            let buf = client.slot(slot, BIG_BYTES);
            for (i, block) in buf.chunks_exact_mut(BLOCK).enumerate() {
                fill(block, seed, offset / BLOCK as u64 + i as u64, 0);
            }
            client.submit(true, slot, BIG_BYTES, offset, BIG_BYTES);
        };
        assert_eq!(capacity % BIG_BYTES as u64, 0, "size is whole MiB");
        let client = self.client.as_mut().expect("connected");
        for slot in 0..BIG_QD {
            if next < capacity {
                submit(client, slot, next);
                next += BIG_BYTES as u64;
                in_flight += 1;
            }
        }
        while in_flight > 0 {
            for (slot, ret) in client.reap(&mut completions) {
                assert!(ret >= 0, "preconditioning write failed: {ret}");
                in_flight -= 1;
                if next < capacity {
                    submit(client, slot, next);
                    next += BIG_BYTES as u64;
                    in_flight += 1;
                }
            }
        }
        self.flush();
    }

    /// FLUSH, waited for.
    fn flush(&mut self) {
        let client = self.client();
        client.queue.flush(usize::MAX, ReqFlags::empty());
        let mut one = completions(1);
        let done = client.reap(&mut one);
        assert_eq!(done.len(), 1, "one completion");
        assert!(done[0].1 >= 0, "FLUSH failed: {}", done[0].1);
    }

    /// Submits a random request in `slot`.
    fn submit(&mut self, slot: usize) {
        let blocks = self.versions.len() as u64;
        let block = loop {
            let block = self.rng.below(blocks);
            if !self.busy[block as usize] {
                break block;
            }
        };
        let write = self.rng.below(100) >= self.read_pct;
        let version = self.versions[block as usize].wrapping_add(u32::from(write));
        self.busy[block as usize] = true;
        self.slots[slot] = Some(Request {
            block,
            write,
            version,
        });
        let seed = self.seed;
        let client = self.client.as_mut().expect("connected");
        if write {
            fill(client.slot(slot, BLOCK), seed, block, version);
        }
        client.submit(write, slot, BLOCK, block * BLOCK as u64, BLOCK);
    }

    /// Accounts for the completion of the request in `slot`.
    fn complete(&mut self, slot: usize, ret: i32) {
        let request = self.slots[slot].take().expect("a request in the slot");
        let index = request.block as usize;
        self.busy[index] = false;
        if ret < 0 {
            self.io_errors += 1;
            eprintln!(
                "rotation bench: I/O ERROR {ret} ({} block {})",
                if request.write { "write" } else { "read" },
                request.block
            );
            if request.write {
                self.unknown[index] = true;
            }
            return;
        }
        if request.write {
            self.versions[index] = request.version;
            self.unknown[index] = false;
            self.writes_done += 1;
        } else if !self.unknown[index] {
            let seed = self.seed;
            let client = self.client.as_mut().expect("connected");
            let result = check(
                client.slot(slot, BLOCK),
                seed,
                request.block,
                request.version,
            );
            self.verified_reads += 1;
            if let Err(note) = result {
                self.note_mismatch(format!("foreground read: {note}"));
            }
        }
    }

    /// Keeps `qd` requests in flight until `done()` (asked after each batch
    /// of completions), then lets the queue drain; counts every completion.
    fn run(&mut self, done: &mut dyn FnMut() -> bool) -> Phase {
        let mut completions = completions(self.qd);
        let start = Instant::now();
        let mut window_start = start;
        let mut window_ops = 0u64;
        let mut phase = Phase::default();
        for slot in 0..self.qd {
            self.submit(slot);
        }
        let mut in_flight = self.qd;
        let mut stopping = false;
        while in_flight > 0 {
            let reaped = self.client().reap(&mut completions);
            stopping = stopping || done();
            for (slot, ret) in reaped {
                self.complete(slot, ret);
                phase.ops += 1;
                window_ops += 1;
                if stopping {
                    in_flight -= 1;
                } else {
                    self.submit(slot);
                }
            }
            let now = Instant::now();
            if now - window_start >= WINDOW {
                phase
                    .windows
                    .push(window_ops as f64 / (now - window_start).as_secs_f64());
                window_start = now;
                window_ops = 0;
            }
        }
        phase.elapsed_s = start.elapsed().as_secs_f64();
        phase
    }

    /// Reads the whole disk (1 MiB, QD 8) and checks every block.
    fn verify_disk(&mut self) -> Check {
        let seed = self.seed;
        let mut result = Check {
            verified: 0,
            io_errors: 0,
            mismatches: 0,
        };
        let mut notes = Vec::new();
        let client = self.client.as_mut().expect("connected");
        let capacity = client.capacity;
        let mut offsets = [0u64; BIG_QD];
        let mut next = 0u64;
        let mut in_flight = 0;
        let mut completions = completions(BIG_QD);
        for (slot, offset) in offsets.iter_mut().enumerate() {
            if next < capacity {
                *offset = next;
                client.submit(false, slot, BIG_BYTES, next, BIG_BYTES);
                next += BIG_BYTES as u64;
                in_flight += 1;
            }
        }
        while in_flight > 0 {
            for (slot, ret) in client.reap(&mut completions) {
                in_flight -= 1;
                if ret < 0 {
                    result.io_errors += 1;
                    eprintln!(
                        "rotation bench: I/O ERROR {ret} (check read at {})",
                        offsets[slot]
                    );
                } else {
                    let first = offsets[slot] / BLOCK as u64;
                    let buf = client.slot(slot, BIG_BYTES);
                    for (i, data) in buf.chunks_exact(BLOCK).enumerate() {
                        let block = first + i as u64;
                        if self.unknown[block as usize] {
                            continue;
                        }
                        result.verified += 1;
                        if let Err(note) = check(data, seed, block, self.versions[block as usize]) {
                            result.mismatches += 1;
                            notes.push(format!("whole-disk check: {note}"));
                        }
                    }
                }
                if next < capacity {
                    offsets[slot] = next;
                    client.submit(false, slot, BIG_BYTES, next, BIG_BYTES);
                    next += BIG_BYTES as u64;
                    in_flight += 1;
                }
            }
        }
        for note in notes.into_iter().take(MISMATCH_NOTES_MAX) {
            eprintln!("rotation bench: MISMATCH: {note}");
            if self.mismatch_notes.len() < MISMATCH_NOTES_MAX {
                self.mismatch_notes.push(note);
            }
        }
        result
    }
}

/// A connected libblkio instance with one queue and one shared region; slot
/// `i` of a request size `len` owns bytes `i * len ..` of the region.
struct Client {
    // Field order matters: the queue and the region go before the instance.
    queue: Blkioq,
    region: MemoryRegion,
    _blkio: Blkio,
    capacity: u64,
}

impl Client {
    /// Connects, retrying while the daemon starts (up to [`CONNECT_WAIT`]).
    fn connect_retrying(socket: &Path, daemon: &mut Daemon) -> Self {
        let deadline = Instant::now() + CONNECT_WAIT;
        loop {
            daemon.check_alive();
            match Client::connect(socket) {
                Ok(client) => return client,
                Err(error) if Instant::now() >= deadline => {
                    panic!("cannot connect to {}: {error}", socket.display())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

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
        let capacity = blkio.get_u64("capacity").map_err(text)?;
        Ok(Client {
            queue: outcome.queues.pop().expect("one queue"),
            region,
            _blkio: blkio,
            capacity,
        })
    }

    /// The buffer of `slot` for requests of `len` bytes.
    fn slot(&mut self, slot: usize, len: usize) -> &mut [u8] {
        assert!((slot + 1) * len <= self.region.len, "region too small");
        // SAFETY: inside the mapped region owned by this client; the
        // device touches a slot only while its request is in flight, and
        // callers use a slot's buffer only when none is.
        unsafe { std::slice::from_raw_parts_mut((self.region.addr + slot * len) as *mut u8, len) }
    }

    /// Queues a read or write of `len` bytes at `offset` from/into the
    /// buffer of `slot` (slots of `slot_len` bytes); user data = slot.
    fn submit(&mut self, write: bool, slot: usize, slot_len: usize, offset: u64, len: usize) {
        assert!(len <= slot_len && (slot + 1) * slot_len <= self.region.len);
        let buf = (self.region.addr + slot * slot_len) as *mut u8;
        if write {
            self.queue.write(offset, buf, len, slot, ReqFlags::empty());
        } else {
            self.queue.read(offset, buf, len, slot, ReqFlags::empty());
        }
    }

    /// Waits for at least one completion: (slot, ret) of each.
    fn reap(&mut self, completions: &mut [MaybeUninit<Completion>]) -> Vec<(usize, i32)> {
        let done = self
            .queue
            .do_io(completions, 1, None, None)
            .unwrap_or_else(|e| panic!("do_io: {}", e.message()));
        completions[..done]
            .iter()
            .map(|c| {
                // SAFETY: do_io initialised the first `done` completions.
                let c = unsafe { c.assume_init_ref() };
                (c.user_data, c.ret)
            })
            .collect()
    }
}

fn completions(count: usize) -> Vec<MaybeUninit<Completion>> {
    (0..count).map(|_| MaybeUninit::uninit()).collect()
}
