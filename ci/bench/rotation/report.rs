//! The rotation bench's table and JSON.

use super::cli::Rotation;
use super::common::{Options, Report, cpu_model, median};
use super::kit::versions::{Check, Phase, VerifiedLoad};
use super::{ExtraArgs, SETTLE};

/// One repetition: foreground before, and during one rotation.
pub struct Pair {
    pub before: Phase,
    pub during: Phase,
    pub rotation: Rotation,
}

/// `min..max (median)` of the IOPS of `phase`'s 0.5 s windows.
fn spread(phase: &Phase) -> String {
    if phase.windows.is_empty() {
        return "n/a".to_owned();
    }
    format!(
        "{:.0}..{:.0} ({:.0})",
        phase.windows.iter().copied().fold(f64::INFINITY, f64::min),
        phase.windows.iter().copied().fold(0.0, f64::max),
        median(&phase.windows)
    )
}

/// What the report is made of.
pub struct Summary<'a> {
    pub main: &'a [Pair],
    pub unthrottled: &'a [Pair],
    pub idle: &'a Rotation,
    /// Most bytes moved `lsvblk status` showed during the idle rotation.
    pub progress_seen: u64,
    pub load: &'a VerifiedLoad,
    pub checks: &'a [(&'static str, Check)],
    pub blocks: u64,
    pub keys_now: usize,
    pub fill_mbps: f64,
    pub size: u64,
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

/// The columns of the table that describe `r`: live, re-keyed and moved
/// MiB, its own seconds and the wall time, MB/s re-keyed.
fn rotation_columns(r: &Rotation) -> String {
    format!(
        "{:>9.1} {:>9.1} {:>9.1} {:>7.2} {:>7.2} {:>10.1}",
        mib(r.live_bytes),
        mib(r.bytes_rekeyed),
        mib(r.bytes_moved),
        r.seconds,
        r.wall_s,
        r.rekey_mbps(),
    )
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
pub fn report(options: &Options, extra: &ExtraArgs, s: &Summary<'_>) -> bool {
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
        let spread = format!("before {}; during {}", spread(&p.before), spread(&p.during));
        println!(
            "{:<4} {:>10} {:>10.0} {:>10.0} {:>5.2}x {}  {spread}",
            index + 1,
            rate_text(r.rate_mib),
            p.before.iops(),
            p.during.iops(),
            p.during.iops() / p.before.iops(),
            rotation_columns(r),
        );
    }
    println!(
        "{:<4} {:>10} {:>10} {:>10} {:>6} {}  no load; `lsvblk status` showed up to {:.1} MiB \
         moved",
        "idle",
        rate_text(s.idle.rate_mib),
        "-",
        "-",
        "-",
        rotation_columns(s.idle),
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
            "median during / median before, {} rotations; the target is >= 0.7",
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
    if let Some(cpu) = cpu_model() {
        report.info("cpu", &cpu);
    }
    report.finish();
    io_errors == 0 && mismatches == 0
}
