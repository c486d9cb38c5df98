//! `cargo bench --bench kms` (`ci/bench.sh kms`): unwrap round trips
//! against a real `lsvkms` (release build) over its UNIX socket, with one
//! client and with two concurrent clients, each on its own kept-alive
//! connection. Every unwrap is a full call: service identity, EdDSA token
//! verification, blob authentication, key-state read, ACL check, and an
//! audit record written **and fdatasync'ed** before the answer.
//!
//! The state directory (and so the audit log) lives under `target/bench/`
//! on the build's own disk, not on tmpfs, so the syncs are real.
//!
//! Each case runs `--reps` times (default 3) for `--rep-ms` (default 3000),
//! round-robin; req/s is the median of the repetitions, latencies are
//! percentiles over all calls. Prints a table, then one JSON object as the
//! last line, also written to `target/bench/kms.json`. Its own options and
//! report (not `ci/bench/common`'s, but its argument reader); the service is
//! the kit's (`tests/kit`).
//! `unwrap_*` keys are the two-client case; `*_1client` the one-client case.

#[path = "common/args.rs"]
#[allow(dead_code)] // the reader has more than this bench asks for
mod args;
#[path = "../../tests/kit/mod.rs"]
mod kit;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use args::Args;
use kit::kms::{Kms, LSVKMS};
use lsvblk::kms::api::KeyContext;
use lsvblk::kms::client::KmsClient;
/// Unwraps before measuring (connections, page cache, branch predictors).
const WARMUP_CALLS: u32 = 300;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// `--reps N` (default 3) and `--rep-ms N` (default 3000), as the other
/// benchmarks take them. Without cargo's `--bench` (i.e. under `cargo test
/// --all-targets`) this is a smoke run: one short repetition, no JSON file.
struct Options {
    reps: usize,
    rep: Duration,
    smoke: bool,
}

fn options() -> Options {
    let args = Args::from_env();
    let value = |name: &str, default: u64| args.number(name, false).unwrap_or(default);
    let smoke = !args.flag("--bench");
    Options {
        reps: if smoke {
            1
        } else {
            value("--reps", 3).max(1) as usize
        },
        rep: Duration::from_millis(if smoke { 50 } else { value("--rep-ms", 3000) }),
        smoke,
    }
}

/// All repetitions with one client count: calls per second of each, and
/// every call's latency.
struct Runs {
    clients: usize,
    calls: usize,
    rps: Vec<f64>,
    latencies_us: Vec<u64>,
}

impl Runs {
    fn rps_median(&self) -> f64 {
        let mut sorted = self.rps.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    }

    fn percentile_ms(&self, fraction: f64) -> f64 {
        let index = ((self.latencies_us.len() as f64 - 1.0) * fraction).round() as usize;
        self.latencies_us[index] as f64 / 1000.0
    }

    fn mean_ms(&self) -> f64 {
        self.latencies_us.iter().sum::<u64>() as f64 / self.latencies_us.len() as f64 / 1000.0
    }
}

/// One timed repetition: (calls per second, latencies).
fn measure(socket: &Path, clients: usize, length: Duration, call: &Call) -> (f64, Vec<u64>) {
    let started = Instant::now();
    let deadline = started + length;
    let latencies_us: Vec<u64> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(move || {
                    let client = KmsClient::new(socket);
                    let mut latencies = Vec::with_capacity(64 * 1024);
                    while Instant::now() < deadline {
                        let begun = Instant::now();
                        let key = client
                            .unwrap(&call.blob, &call.context, &call.token)
                            .expect("unwrap");
                        latencies.push(begun.elapsed().as_micros() as u64);
                        drop(key);
                    }
                    latencies
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    });
    (
        latencies_us.len() as f64 / started.elapsed().as_secs_f64(),
        latencies_us,
    )
}

/// What every unwrap sends.
struct Call {
    blob: Vec<u8>,
    context: KeyContext,
    token: String,
}

/// Initialises a state directory, starts the service, makes one key.
fn setup(work: &Path, warmup_calls: u32) -> (Kms, Call) {
    let kms = Kms::start_in(Path::new(LSVKMS), work);
    let token = kms.token_text("alice", "1h");
    let context = KeyContext {
        volume_id: "bench-volume".into(),
        snapshot_id: String::new(),
    };
    let client = KmsClient::new(kms.socket());
    let generated = client
        .generate_data_key(&["alice".to_owned()], &context)
        .unwrap();
    for _ in 0..warmup_calls {
        client
            .unwrap(&generated.wrapped_blob, &context, &token)
            .unwrap();
    }
    let call = Call {
        blob: generated.wrapped_blob,
        context,
        token,
    };
    (kms, call)
}

fn main() {
    let options = options();
    let bench_dir = target_dir().join("bench");
    std::fs::create_dir_all(&bench_dir).unwrap();
    let work = tempfile::tempdir_in(&bench_dir).unwrap();
    let warmup_calls = if options.smoke { 10 } else { WARMUP_CALLS };
    let (kms, call) = setup(work.path(), warmup_calls);
    let mut runs: Vec<Runs> = [1, 2]
        .iter()
        .map(|c| Runs {
            clients: *c,
            calls: 0,
            rps: Vec::new(),
            latencies_us: Vec::new(),
        })
        .collect();
    // Round-robin, so a burst of noise from a neighbour hits both cases alike.
    for _ in 0..options.reps {
        for runs in &mut runs {
            let (rps, latencies) = measure(kms.socket(), runs.clients, options.rep, &call);
            runs.calls += latencies.len();
            runs.rps.push(rps);
            runs.latencies_us.extend(latencies);
        }
    }
    for runs in &mut runs {
        runs.latencies_us.sort_unstable();
    }
    report(&options, &runs, &bench_dir);
}

fn report(options: &Options, runs: &[Runs], bench_dir: &Path) {
    println!(
        "lsvkms unwrap over a UNIX socket: {} x {} ms per row, median req/s; each call audited + fdatasync'ed",
        options.reps,
        options.rep.as_millis()
    );
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "clients", "calls", "req/s", "mean ms", "p50 ms", "p99 ms"
    );
    for r in runs {
        let (p50, p99) = (r.percentile_ms(0.50), r.percentile_ms(0.99));
        println!(
            "{:>8} {:>10} {:>10.0} {:>10.3} {:>10.3} {:>10.3}",
            r.clients,
            r.calls,
            r.rps_median(),
            r.mean_ms(),
            p50,
            p99
        );
    }
    let (one, two) = (&runs[0], &runs[1]);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_1m: f64 = loadavg
        .split_whitespace()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(-1.0);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("machine load average (1 min) at the end: {load_1m} on {cpus} CPUs");
    let json = serde_json::json!({
        "bench": "kms",
        "unwrap_rps": two.rps_median().round(),
        "unwrap_p50_ms": two.percentile_ms(0.50),
        "unwrap_p99_ms": two.percentile_ms(0.99),
        "clients": 2,
        "unwrap_rps_1client": one.rps_median().round(),
        "unwrap_p50_ms_1client": one.percentile_ms(0.50),
        "unwrap_p99_ms_1client": one.percentile_ms(0.99),
        "load_avg_1m": load_1m,
    });
    let line = json.to_string();
    if options.smoke {
        println!("(smoke run under cargo test: numbers are meaningless, no JSON written)");
    } else {
        std::fs::write(bench_dir.join("kms.json"), format!("{line}\n")).unwrap();
    }
    println!("{line}");
}
