//! `ci/bench.sh objectstore`: the raw figures of the Ceph cluster of
//! `ci/ceph.sh` (three BlueStore OSDs, radosgw on loopback) through our S3
//! client, `lsvblk::objstore::S3Store`: the reference a volume on the object
//! store is measured against in the same run (segment uploads against the
//! raw PUT rate, cold reads against the raw ranged-GET rate).
//!
//! Cases, round-robin, `--reps` times (default 5) for `--rep-ms` each
//! (default 2000); the median is reported:
//! - PUT of 8 MiB objects (a sealed segment's size), one stream and four
//!   streams at once (8 MiB is below the multipart threshold: one PUT each);
//! - GET of whole 8 MiB objects, one stream;
//! - ranged GET of 1 MiB at a random 1 MiB-aligned offset, one stream;
//! - ranged GET of 4 KiB at a random 4 KiB-aligned offset, one stream and
//!   eight streams (as a deep guest queue of cold reads would issue them).
//!
//! The reads go to 16 objects of 8 MiB written first. PUTs overwrite 16 keys
//! per stream (radosgw reclaims what they replace). Everything is under a
//! fresh prefix in the cluster's bucket and deleted at the end.
//!
//! The cluster is started when none is running: the benchmark runs itself
//! again under `ci/ceph.sh use`, which stops the cluster afterwards unless
//! someone else uses it. Prints a table, then one JSON object as the last
//! line, also written to `target/bench/objectstore.json`.

mod common;
#[path = "../../tests/kit/mod.rs"]
mod kit;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use common::{Options, Report, Suite};
use kit::ceph::{cluster, unique_prefix};
use kit::rng::Rng;
use lsvblk::objstore::contract::pattern;
use lsvblk::objstore::{ByteRange, ObjectKey, ObjectStore, S3Store};

const OBJECT_BYTES: usize = 8 << 20;
const READ_OBJECTS: u64 = 16;
const PUT_KEYS_PER_STREAM: u64 = 16;
const PUT_STREAMS: usize = 4;
const SMALL_READ_STREAMS: usize = 8;
/// Ranged 4 KiB GETs one stream issues per call of the eight-stream case.
const SMALL_READS_PER_STREAM: usize = 16;

fn main() {
    if std::env::var_os("LSVBLK_CEPH_IN_USE").is_none() {
        run_under_ceph_use();
    }
    let options = Options::from_args(5, 2000);
    let cluster = cluster();
    let _shared = cluster.fault_lock(false);
    let prefix = unique_prefix("bench");
    let store = cluster.store(&prefix);
    let reads: Vec<ObjectKey> = (0..READ_OBJECTS)
        .map(|i| key(&format!("read/{i}")))
        .collect();
    for (i, object) in reads.iter().enumerate() {
        store.put(object, pattern(OBJECT_BYTES, i as u8)).unwrap();
    }
    let payload = pattern(OBJECT_BYTES, 0xA5);

    let mut suite = Suite::new(options.clone());
    let put_1 = AtomicU64::new(0);
    suite.add(
        "raw_put_8m_mbps",
        "PUT 8 MiB, 1 stream",
        OBJECT_BYTES,
        || {
            put_next(&store, 0, &put_1, &payload);
        },
    );
    let put_4 = AtomicU64::new(0);
    let label = format!("PUT 8 MiB, {PUT_STREAMS} streams");
    suite.add(
        "raw_put_8m_4streams_mbps",
        &label,
        OBJECT_BYTES * PUT_STREAMS,
        || {
            std::thread::scope(|scope| {
                for stream in 1..=PUT_STREAMS as u64 {
                    let (store, put_4, payload) = (&store, &put_4, &payload);
                    scope.spawn(move || put_next(store, stream, put_4, payload));
                }
            });
        },
    );
    let mut random = Rng(1);
    suite.add(
        "raw_get_8m_mbps",
        "GET 8 MiB, 1 stream",
        OBJECT_BYTES,
        || {
            let object = &reads[random.below(READ_OBJECTS) as usize];
            assert_eq!(store.get(object).unwrap().len(), OBJECT_BYTES);
        },
    );
    let mut random = Rng(2);
    suite.add(
        "raw_get_range_1m_mbps",
        "ranged GET 1 MiB, 1 stream",
        1 << 20,
        || {
            read_random(&store, &reads, &mut random, 1 << 20);
        },
    );
    let mut random = Rng(3);
    suite.add(
        "raw_get_range_4k_1stream_mbps",
        "ranged GET 4 KiB, 1 stream",
        4096,
        || {
            read_random(&store, &reads, &mut random, 4096);
        },
    );
    let label = format!("ranged GET 4 KiB, {SMALL_READ_STREAMS} streams");
    let per_call = 4096 * SMALL_READ_STREAMS * SMALL_READS_PER_STREAM;
    let seed = AtomicU64::new(4);
    suite.add("raw_get_range_4k_mbps", &label, per_call, || {
        std::thread::scope(|scope| {
            for _ in 0..SMALL_READ_STREAMS {
                let mut random = Rng(seed.fetch_add(1, Ordering::Relaxed));
                let (store, reads) = (&store, &reads);
                scope.spawn(move || {
                    for _ in 0..SMALL_READS_PER_STREAM {
                        read_random(store, reads, &mut random, 4096);
                    }
                });
            }
        });
    });
    let results = suite.run();

    let mut report = Report::new("objectstore", &options);
    for result in &results {
        match result
            .key
            .strip_suffix("_mbps")
            .filter(|k| k.contains("_4k"))
        {
            // Small reads count in requests per second.
            Some(stem) => {
                let iops = |mbps: f64| mbps * 1e6 / 4096.0;
                let note = format!(
                    "min {:.0} max {:.0} n={}",
                    iops(result.min_mbps),
                    iops(result.max_mbps),
                    result.reps
                );
                let key = format!("{stem}_iops");
                report.row(
                    &key,
                    &result.label,
                    Some(iops(result.median_mbps)),
                    "IOPS",
                    &note,
                );
            }
            None => report.throughput(result, ""),
        }
    }
    report.metric("reps", Some(options.reps as f64));
    report.metric("rep_ms", Some(options.rep_duration.as_millis() as f64));
    report.metric("load_avg_1m", common::load_avg_1m());
    report.info(
        "store",
        "Ceph 16 (ci/ceph.sh): 3 BlueStore OSDs on sparse files, radosgw, loopback",
    );
    if let Some(cpu) = common::cpu_model() {
        report.info("cpu", &cpu);
    }
    cleanup(&store);
    report.finish();
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

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(name).unwrap()
}

/// PUTs `payload` to the next of stream `stream`'s keys.
fn put_next(store: &S3Store, stream: u64, counter: &AtomicU64, payload: &Bytes) {
    let n = counter.fetch_add(1, Ordering::Relaxed) % PUT_KEYS_PER_STREAM;
    store
        .put(&key(&format!("put/{stream}/{n}")), payload.clone())
        .unwrap();
}

/// A ranged GET of `bytes` at a random `bytes`-aligned offset of a random
/// read object.
fn read_random(store: &S3Store, reads: &[ObjectKey], random: &mut Rng, bytes: usize) {
    let object = &reads[random.below(READ_OBJECTS) as usize];
    let start = random.below((OBJECT_BYTES / bytes) as u64) * bytes as u64;
    let range = ByteRange::Span {
        start,
        end: start + bytes as u64,
    };
    assert_eq!(store.get_range(object, range).unwrap().len(), bytes);
}

fn cleanup(store: &S3Store) {
    for prefix in ["read", "put"] {
        let objects = store.list(&key(prefix)).unwrap();
        let keys: Vec<ObjectKey> = objects.into_iter().map(|object| object.key).collect();
        store.delete(&keys).unwrap();
    }
}
