//! The device bench's table and JSON: every workload on every target, and
//! lsvblk's ratios to the others.

use super::common::serve::QUEUE_SIZE;
use super::common::{Options, Report, cpu_model};
use super::targets::{CaseResult, Target};
use super::{ExtraArgs, Workload};

const DURABILITY: &str = "buffered host I/O (page cache); guest FLUSH -> fdatasync. \
     QSD: file cache.direct=off,cache.no-flush=off, export writethrough=off, aio=threads \
     (default). lsvblk: buffered pwritev to its log, fdatasync on FLUSH.";

pub fn report(
    options: &Options,
    extra: &ExtraArgs,
    targets: &[Target],
    results: &[CaseResult],
    size: u64,
) {
    let names: Vec<&str> = targets.iter().map(|t| t.name).collect();
    let lookup = |key: &str, target: &str| -> Option<f64> {
        let index = names.iter().position(|n| *n == target)?;
        results
            .iter()
            .find(|r| r.workload.key == key && r.target == index)?
            .value()
            .map(|v| v.0)
    };

    // The matrix: one row per workload, one column per target.
    println!();
    println!(
        "== device: {} MiB disks, 1 queue of {QUEUE_SIZE}, median of {} x up to {} ms \
         (writes: up to {} MiB per repetition; FLUSH after, untimed)",
        size >> 20,
        options.reps,
        options.rep_duration.as_millis(),
        extra.write_cap_mb,
    );
    print!("{:<22} {:>5}", "workload", "unit");
    for name in &names {
        print!(" {name:>12}");
    }
    println!("   lsvblk/raw  lsvblk/luks  lsvblk/null");
    let mut workload_keys: Vec<Workload> = Vec::new();
    for r in results {
        if !workload_keys.iter().any(|w| w.key == r.workload.key) {
            workload_keys.push(r.workload);
        }
    }
    let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    let show = |r: Option<f64>| r.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}x"));
    for workload in &workload_keys {
        let unit = if workload.in_mbps() { "MB/s" } else { "IOPS" };
        print!("{:<22} {unit:>5}", workload.label);
        for name in &names {
            let value = lookup(workload.key, name);
            print!(
                " {:>12}",
                value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}"))
            );
        }
        let ours = lookup(workload.key, "lsvblk");
        println!(
            "   {:>10}  {:>11}  {:>11}",
            show(ratio(ours, lookup(workload.key, "qsd-raw"))),
            show(ratio(ours, lookup(workload.key, "qsd-luks"))),
            show(ratio(ours, lookup(workload.key, "lsvblk-null"))),
        );
    }
    println!("spread (min..max over repetitions) and median FLUSH time after write repetitions:");
    for r in results {
        if let Some((_, min, max)) = r.value() {
            let flush = r
                .flush_ms()
                .map_or_else(String::new, |ms| format!(", flush {ms:.0} ms"));
            println!(
                "  {:<22} {:<12} {min:>9.0} .. {max:<9.0}{flush}",
                r.workload.label, names[r.target]
            );
        }
    }
    println!("preconditioning (1 MiB QD8 over the whole disk + FLUSH, one pass):");
    for target in targets {
        if let Some(mbps) = target.fill_mbps {
            println!("  {:<12} {mbps:>6.0} MB/s", target.name);
        }
    }
    println!("durability: {DURABILITY}");
    for target in targets {
        println!("  {}: {}", target.name, target.setup);
    }

    let mut report = Report::new("device", options);
    for workload in &workload_keys {
        let unit = if workload.in_mbps() { "mbps" } else { "iops" };
        for name in &names {
            let json_name = name.replace('-', "_");
            report.metric(
                &format!("{json_name}_{}_{unit}", workload.key),
                lookup(workload.key, name),
            );
        }
        for r in results.iter().filter(|r| r.workload.key == workload.key) {
            if let Some(ms) = r.flush_ms() {
                let json_name = names[r.target].replace('-', "_");
                report.metric(&format!("{json_name}_{}_flush_ms", workload.key), Some(ms));
            }
        }
    }
    // The ratios that decide whether lsvblk is worth using: table rows too.
    for workload in &workload_keys {
        let ours = lookup(workload.key, "lsvblk");
        for (other, suffix) in [
            ("qsd-raw", "vs_qsd_raw"),
            ("qsd-luks", "vs_qsd_luks"),
            ("lsvblk-null", "vs_null"),
        ] {
            let value = ratio(ours, lookup(workload.key, other));
            let key = format!("{}_{suffix}", workload.key);
            let label = format!("{} lsvblk / {other}", workload.label);
            report.row(&key, &label, value, "x", "");
        }
    }
    for target in targets {
        report.metric(
            &format!("{}_fill_mbps", target.name.replace('-', "_")),
            target.fill_mbps,
        );
    }
    report.metric("size_bytes", Some(size as f64));
    report.metric("reps", Some(options.reps as f64));
    report.metric("rep_ms", Some(options.rep_duration.as_millis() as f64));
    report.metric("write_cap_mib", Some(extra.write_cap_mb as f64));
    report.info("durability", DURABILITY);
    report.info(
        "method",
        "libblkio virtio-blk-vhost-user client in the bench process, 1 queue of 256, \
         contiguous buffers; 4 KiB random at QD1/QD32, 1 MiB sequential at QD8; \
         disks preconditioned (written fully once, flushed); writes capped per repetition, \
         FLUSH after each write repetition untimed; round-robin over targets; medians",
    );
    report.info("targets", &names.join(","));
    if let Some(cpu) = cpu_model() {
        report.info("cpu", &cpu);
    }
    report.finish();
}
