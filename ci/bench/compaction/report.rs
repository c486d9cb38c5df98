//! The compaction bench's table and JSON.

use super::common::{MB_BYTES, Options, Report, cpu_model, load_avg_1m, median};
use super::run::{Phase, Run, SnapshotTiming};
use super::{ExtraArgs, QD_DEFAULT};

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

pub fn ms_spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    format!("min {min:.2} max {max:.2} n={}", values.len())
}

pub fn report(options: &Options, args: &ExtraArgs, run: &Run, size: u64) {
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
    let rate_note = format!(
        "R = {} MiB/s = {:.1} MB/s; ",
        args.rate_mib,
        args.rate_mib as f64 * f64::from(1u32 << 20) / MB_BYTES
    );
    for (key, label, compaction, note) in [
        (
            "compaction",
            "compaction at R under load",
            &run.compaction,
            rate_note.as_str(),
        ),
        (
            "compaction_unthrottled",
            "compaction unthrottled, no guest I/O",
            &run.unthrottled,
            "",
        ),
    ] {
        let Some(c) = compaction else { continue };
        let moved = format!("{note}{:.0} MiB moved in {:.1} s", mib(c.moved), c.seconds);
        report.row(
            &format!("{key}_mbps"),
            label,
            Some(c.mbps()),
            "MB/s",
            &moved,
        );
        report.metric(&format!("{key}_bytes_moved"), Some(c.moved as f64));
        report.metric(&format!("{key}_bytes_freed"), Some(c.freed as f64));
        report.metric(&format!("{key}_seconds"), Some(c.seconds));
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
    report.metric("load_avg_1m", load_avg_1m());
    report.info("method", METHOD);
    report.info("write_amplification_note", WA_NOTE);
    if let Some(cpu) = cpu_model() {
        report.info("cpu", &cpu);
    }
    report.finish();
}
