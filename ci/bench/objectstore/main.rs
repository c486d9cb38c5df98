//! `ci/bench.sh objectstore`: volumes kept in an object store against the
//! local-directory volume and against the raw figures of the same Ceph
//! cluster (`ci/ceph.sh`: three BlueStore OSDs, radosgw on loopback), in
//! one run, with one libblkio client and the same settings throughout:
//!
//! - [`raw`]: PUT and (ranged) GET throughput of the cluster through our S3
//!   client, `lsvblk::objstore::S3Store`;
//! - [`volumes`]: 4 KiB randwrite QD32 and 1 MiB seqwrite of a `--store s3`
//!   volume against a local one, the upload rate of a volume written once,
//!   the time to open a volume from the bucket on an empty directory, cold
//!   4 KiB randread and 1 MiB seqread (`--cache-size` small), and the
//!   latency of a `--flush remote` FLUSH.
//!
//! Ratios in the JSON: `randwrite_qd32_vs_local`, `seqwrite_1m_vs_local`
//! (store / local), `upload_vs_raw_put` (upload rate / raw 8 MiB PUT with as
//! many streams as the daemon uploads in flight), `cold_seqread_vs_raw_get`
//! (against one stream of 1 MiB ranged GETs), `cold_randread_vs_raw_get`
//! (IOPS against eight streams of 4 KiB ranged GETs); and
//! `open_from_bucket_s`, `remote_flush_p50_ms`, `remote_flush_p99_ms`.
//!
//! Options after `--`: `--reps N` (default 5; medians are reported),
//! `--rep-ms N` (default 2000), `--size-mb N` (volume size, default 1024),
//! `--write-cap-mb N` (most one write repetition writes, default 192: a
//! burst the default 256 MiB `--upload-lag` holds, with its open segment),
//! `--opens N` (default 3), `--flushes N` (default 50), `--upload-lag
//! BYTES,TIME` (the store volume's `serve --upload-lag` in the write cases;
//! default: the daemon's own). The daemons are
//! this bench target's build of `lsvblk` and `lsvkms` (release settings
//! under `ci/bench.sh`). Everything is under fresh prefixes in the
//! cluster's bucket and deleted at the end.
//!
//! The cluster is started when none is running: the benchmark runs itself
//! again under `ci/ceph.sh use`, which stops the cluster afterwards unless
//! someone else uses it. Prints a table, then one JSON object as the last
//! line, also written to `target/bench/objectstore.json`.

#[path = "../common/mod.rs"]
mod common;
#[path = "../../../tests/kit/mod.rs"]
mod kit;

mod drive;
mod raw;
mod volumes;

use std::path::Path;
use std::process::Command;

use common::args::Args;
use common::build::Binaries;
use common::{Options, Report, Throughput, percentile};
use kit::ceph::{cluster, unique_prefix};
use volumes::{Bench, Figures, Sizes, median_of};

fn main() {
    if std::env::var_os("LSVBLK_CEPH_IN_USE").is_none() {
        run_under_ceph_use();
    }
    let options = Options::from_args(5, 2000);
    let sizes = sizes(&options);
    let cluster = cluster();
    let _shared = cluster.fault_lock(false);
    let store = cluster.store(&unique_prefix("bench"));
    let raw = raw::measure(&store, &options);
    raw::cleanup(&store);

    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut bench = Bench::new(&Binaries::of_this_target(), dir.path());
    let figures = volumes::measure(&mut bench, &options, &sizes);
    drop(bench);

    let mut report = Report::new("objectstore", &options);
    report_raw(&mut report, &raw);
    report_volumes(&mut report, &figures, &raw);
    report.metric("reps", Some(options.reps as f64));
    report.metric("rep_ms", Some(options.rep_duration.as_millis() as f64));
    report.metric("volume_mib", Some((sizes.volume_bytes >> 20) as f64));
    report.metric("load_avg_1m", common::load_avg_1m());
    report.info(
        "store",
        "Ceph (ci/ceph.sh): 3 BlueStore OSDs on sparse files, radosgw, loopback",
    );
    if let Some(cpu) = common::cpu_model() {
        report.info("cpu", &cpu);
    }
    report.finish();
}

/// The volume size and case counts from the command line (small ones for
/// a smoke run).
fn sizes(options: &Options) -> Sizes {
    let args = Args::from_env();
    let value = |name: &str, real: u64, smoke: u64| {
        args.number(name, false)
            .unwrap_or(if options.smoke { smoke } else { real })
    };
    Sizes {
        volume_bytes: value("--size-mb", 1024, 64) << 20,
        write_cap: value("--write-cap-mb", 192, 8) << 20,
        opens: value("--opens", 3, 1) as usize,
        flushes: value("--flushes", 50, 3) as usize,
        upload_lag: args.text("--upload-lag"),
    }
}

/// Rows of the raw cases: MB/s, small reads in requests per second.
fn report_raw(report: &mut Report, results: &[Throughput]) {
    for result in results {
        match result
            .key
            .strip_suffix("_mbps")
            .filter(|k| k.contains("_4k"))
        {
            Some(stem) => {
                let iops = |mbps: f64| mbps * 1e6 / 4096.0;
                let note = format!(
                    "min {:.0} max {:.0} n={}",
                    iops(result.min_mbps),
                    iops(result.max_mbps),
                    result.reps
                );
                let key = format!("{stem}_iops");
                let value = Some(iops(result.median_mbps));
                report.row(&key, &result.label, value, "IOPS", &note);
            }
            None => report.throughput(result, ""),
        }
    }
}

/// Rows of the volume cases and their ratios to the local volume and the
/// raw figures.
fn report_volumes(report: &mut Report, figures: &Figures, raw: &[Throughput]) {
    let raw_of = |key: &str| raw.iter().find(|r| r.key == key).map(|r| r.median_mbps);
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    for (workload, local, store) in &figures.writes {
        let unit = workload.unit();
        let (local_m, store_m) = (median_of(local), median_of(store));
        let key = workload.key;
        let label = |what: &str| format!("{} ({what})", workload.label);
        report.row(
            &format!("local_{key}"),
            &label("local volume"),
            local_m,
            unit,
            &spread(local),
        );
        report.row(
            &format!("s3_{key}"),
            &label("--store s3"),
            store_m,
            unit,
            &spread(store),
        );
        let vs = format!("{key}_vs_local");
        report.row(
            &vs,
            &label("s3 / local"),
            ratio(store_m, local_m),
            "x",
            "target >= 0.9",
        );
    }
    let put = raw_of("raw_put_8m_4streams_mbps");
    let upload = Some(figures.upload_mbps);
    report.row(
        "upload_mbps",
        "upload of a volume written once",
        upload,
        "MB/s",
        "",
    );
    report.row(
        "seqwrite_1m_sustained_mbps",
        "sustained 1 MiB write, 4x the lag (--store s3)",
        Some(figures.sustained_write_mbps),
        "MB/s",
        "the whole volume once: bound by the upload",
    );
    let note = format!(
        "against PUT 8 MiB, {} streams; target >= 0.8",
        raw::PUT_STREAMS
    );
    report.row(
        "upload_vs_raw_put",
        "upload / raw PUT",
        ratio(upload, put),
        "x",
        &note,
    );
    let open = median_of(&figures.open_s);
    let note = format!("{}; target < 2", spread(&figures.open_s));
    report.row(
        "open_from_bucket_s",
        "open from the bucket, empty dir",
        open,
        "s",
        &note,
    );
    for (workload, samples) in &figures.cold_reads {
        let value = median_of(samples);
        let unit = workload.unit();
        let key = format!(
            "{}_{}",
            workload.key,
            if workload.in_mbps() { "mbps" } else { "iops" }
        );
        report.row(&key, workload.label, value, unit, &spread(samples));
        let (raw_key, against, note) = if workload.in_mbps() {
            (
                "raw_get_range_1m_mbps",
                1.0,
                "against ranged GET 1 MiB, 1 stream; target >= 0.7",
            )
        } else {
            (
                "raw_get_range_4k_mbps",
                1e6 / 4096.0,
                "against ranged GET 4 KiB, 8 streams",
            )
        };
        let vs = workload.key.replace("_qd32", "").replace("_1m", "") + "_vs_raw_get";
        let raw_value = raw_of(raw_key).map(|v| v * against);
        report.row(
            &vs,
            &format!("{} / raw", workload.label),
            ratio(value, raw_value),
            "x",
            note,
        );
    }
    let flush = &figures.flush_ms;
    let p = |q| (!flush.is_empty()).then(|| percentile(flush, q));
    let note = format!("n={}", flush.len());
    report.row(
        "remote_flush_p50_ms",
        "remote FLUSH p50",
        p(50.0),
        "ms",
        &note,
    );
    report.row(
        "remote_flush_p99_ms",
        "remote FLUSH p99",
        p(99.0),
        "ms",
        &note,
    );
}

/// "min X max Y n=N" of `samples`.
fn spread(samples: &[f64]) -> String {
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("min {min:.3} max {max:.3} n={}", samples.len())
}

/// Runs this benchmark again under `ci/ceph.sh use` (which starts the
/// cluster if needed and stops it afterwards if it started it), and exits
/// with its status.
fn run_under_ceph_use() -> ! {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/ceph.sh");
    let status = Command::new(script)
        .arg("use")
        .arg(std::env::current_exe().expect("our own path"))
        .args(std::env::args_os().skip(1))
        .status()
        .expect("ci/ceph.sh runs");
    std::process::exit(status.code().unwrap_or(1));
}
