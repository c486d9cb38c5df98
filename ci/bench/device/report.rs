//! The device bench's tables and JSON: every workload on every target (and
//! the device limit), lsvblk's ratios to the others, and the CPU each
//! server used.

use lsvblk::crypto::XtsPath;

use super::common::serve::QUEUE_SIZE;
use super::common::{Options, Report, cpu_features, cpu_model, load_avg_1m};
use super::device_file::{DEVICE, DeviceFile};
use super::targets::{CaseResult, Target};
use super::{ExtraArgs, Workload};

const DURABILITY: &str = "guest FLUSH -> fdatasync everywhere. \
     qsd-raw/qsd-luks: file cache.direct=off (page cache), aio=threads (default); \
     qsd-raw-direct/qsd-luks-direct: cache.direct=on,aio=io_uring (O_DIRECT); \
     all QSD: cache.no-flush=off, export writethrough=off. \
     lsvblk: its log file I/O as `lsvblk serve --io` says (see setup), fdatasync on FLUSH. \
     device: O_DIRECT pwrite/pread of 1 MiB, QD8 threads, fdatasync after writes.";

/// The one-queue workload the two-queue one is compared with.
const ONE_QUEUE_OF_TWO: (&str, &str) = ("randread_qd32_2q", "randread_qd32");

pub fn report(
    options: &Options,
    extra: &ExtraArgs,
    targets: &[Target],
    device: Option<&DeviceFile>,
    results: &[CaseResult],
    size: u64,
) {
    let mut names: Vec<&str> = targets.iter().map(|t| t.name).collect();
    if device.is_some() {
        names.push(DEVICE);
    }
    let case = |key: &str, target: &str| -> Option<&CaseResult> {
        let index = names.iter().position(|n| *n == target)?;
        results
            .iter()
            .find(|r| r.workload.key == key && r.target == index)
    };
    let lookup = |key: &str, target: &str| case(key, target)?.value().map(|v| v.0);
    let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    let show = |r: Option<f64>| r.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}x"));
    let others: Vec<&str> = names.iter().copied().filter(|n| *n != "lsvblk").collect();
    let mut workloads: Vec<Workload> = Vec::new();
    for r in results {
        if !workloads.iter().any(|w| w.key == r.workload.key) {
            workloads.push(r.workload);
        }
    }

    // The matrix: one row per workload, one column per target.
    println!();
    println!(
        "== device: {} MiB disks, queues of {QUEUE_SIZE}, median of {} x up to {} ms \
         (writes: up to {} MiB per repetition; FLUSH after, untimed)",
        size >> 20,
        options.reps,
        options.rep_duration.as_millis(),
        extra.write_cap_mb,
    );
    print!("{:<22} {:>5}", "workload", "unit");
    for name in &names {
        print!(" {name:>15}");
    }
    println!();
    for workload in &workloads {
        let unit = if workload.in_mbps() { "MB/s" } else { "IOPS" };
        print!("{:<22} {unit:>5}", workload.label);
        for name in &names {
            let value = lookup(workload.key, name);
            print!(
                " {:>15}",
                value.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
            );
        }
        println!();
    }
    println!();
    print!("{:<22} {:>5}", "lsvblk / ...", "");
    for other in &others {
        print!(" {other:>15}");
    }
    println!();
    for workload in &workloads {
        print!("{:<22} {:>5}", workload.label, "");
        let ours = lookup(workload.key, "lsvblk");
        for other in &others {
            print!(" {:>15}", show(ratio(ours, lookup(workload.key, other))));
        }
        println!();
    }
    let (two, one) = ONE_QUEUE_OF_TWO;
    println!(
        "lsvblk two queues / one queue (randread QD32 each): {}",
        show(ratio(lookup(two, "lsvblk"), lookup(one, "lsvblk")))
    );
    println!(
        "spread (min..max over repetitions), median FLUSH time after write repetitions, \
         server CPU (cores busy):"
    );
    for r in results {
        if let Some((_, min, max)) = r.value() {
            let flush = r
                .flush_ms()
                .map_or_else(String::new, |ms| format!(", flush {ms:.0} ms"));
            let cpu = r
                .cpu_cores()
                .map_or_else(String::new, |c| format!(", cpu {c:.2}"));
            println!(
                "  {:<22} {:<15} {min:>9.0} .. {max:<9.0}{flush}{cpu}",
                r.workload.label, names[r.target]
            );
        }
    }
    let fills = targets
        .iter()
        .map(|t| (t.name, t.fill_mbps))
        .chain(device.map(|d| (DEVICE, d.fill_mbps)));
    println!("preconditioning (1 MiB QD8 over the whole disk + FLUSH, one pass):");
    for (name, fill) in fills.clone() {
        if let Some(mbps) = fill {
            println!("  {name:<15} {mbps:>6.0} MB/s");
        }
    }
    println!("durability: {DURABILITY}");
    for target in targets {
        println!("  {}: {}", target.name, target.setup);
    }

    let mut report = Report::new("device", options);
    for workload in &workloads {
        let unit = if workload.in_mbps() { "mbps" } else { "iops" };
        for name in &names {
            let Some(case) = case(workload.key, name).filter(|c| c.value().is_some()) else {
                continue;
            };
            let json_name = name.replace('-', "_");
            let key = workload.key;
            report.metric(
                &format!("{json_name}_{key}_{unit}"),
                case.value().map(|v| v.0),
            );
            if let Some(ms) = case.flush_ms() {
                report.metric(&format!("{json_name}_{key}_flush_ms"), Some(ms));
            }
            if let Some(cores) = case.cpu_cores() {
                report.metric(&format!("{json_name}_{key}_cpu_cores"), Some(cores));
            }
        }
    }
    // The ratios that decide whether lsvblk is worth using: table rows too.
    for workload in &workloads {
        let ours = lookup(workload.key, "lsvblk");
        for other in &others {
            let theirs = lookup(workload.key, other);
            if theirs.is_none() {
                continue; // a workload the other target does not run
            }
            let suffix = other.trim_start_matches("lsvblk-").replace('-', "_");
            let key = format!("{}_vs_{suffix}", workload.key);
            let label = format!("{} lsvblk / {other}", workload.label);
            report.row(&key, &label, ratio(ours, theirs), "x", "");
        }
    }
    // What the MACs cost: the shipped volume over the same build's
    // CRC-only one (1.0 = free; the targets are 0.85 and 0.80).
    for (key, label) in [
        ("randwrite_qd32", "4 KiB randwrite QD32: mac / crc volume"),
        ("seqwrite_1m", "1 MiB seqwrite QD8: mac / crc volume"),
    ] {
        let mac_ratio = ratio(lookup(key, "lsvblk"), lookup(key, "lsvblk-crc"));
        report.row(&format!("mac_{key}_ratio"), label, mac_ratio, "x", "");
    }
    report.row(
        &format!("{two}_vs_1q"),
        "4 KiB randread QD32: lsvblk 2 queues / 1 queue",
        ratio(lookup(two, "lsvblk"), lookup(one, "lsvblk")),
        "x",
        "",
    );
    for (name, fill) in fills {
        report.metric(&format!("{}_fill_mbps", name.replace('-', "_")), fill);
    }
    report.metric("size_bytes", Some(size as f64));
    report.metric("reps", Some(options.reps as f64));
    report.metric("rep_ms", Some(options.rep_duration.as_millis() as f64));
    report.metric("write_cap_mib", Some(extra.write_cap_mb as f64));
    report.metric("load_avg_1m", load_avg_1m());
    report.info("durability", DURABILITY);
    report.info(
        "method",
        "libblkio virtio-blk-vhost-user client in the bench process, queues of 256, \
         contiguous buffers; 4 KiB random at QD1/QD32, 1 MiB sequential at QD8, \
         4 KiB random read at QD32 on each of 2 queues (one thread each, lsvblk only); \
         disks preconditioned (written fully once, flushed); writes capped per repetition, \
         FLUSH after each write repetition untimed; round-robin over targets; medians; \
         device: O_DIRECT 1 MiB pread/pwrite from QD threads on a file beside the disks",
    );
    report.info("targets", &names.join(","));
    if let Some(cpu) = cpu_model() {
        report.info("cpu", &cpu);
    }
    report.info("cpu_features", &cpu_features());
    // The daemons inherit this process's environment: the path they run.
    report.info("xts_path", XtsPath::detect().name());
    report.finish();
}
