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
//! Prints a table, then one JSON object as the last line, also written to
//! `target/bench/kms.json`. Self-contained (no `benches/common`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lsvblk::kms::api::KeyContext;
use lsvblk::kms::client::KmsClient;

const LSVKMS: &str = env!("CARGO_BIN_EXE_lsvkms");
/// How long each measured run lasts.
const RUN_S: u64 = 4;
/// Unwraps before measuring (connections, page cache, branch predictors).
const WARMUP_CALLS: u32 = 300;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn lsvkms(args: &[&str]) -> String {
    let out = Command::new(LSVKMS)
        .args(args)
        .output()
        .expect("lsvkms runs");
    assert!(
        out.status.success(),
        "lsvkms {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn start(dir: &Path, socket: &Path) -> Server {
    let child = Command::new(LSVKMS)
        .args([
            "serve",
            "--dir",
            dir.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.with_file_name("lsvkms.log")).expect("log file"))
        .spawn()
        .expect("lsvkms serve starts");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while KmsClient::new(socket).health().is_err() {
        assert!(Instant::now() < deadline, "lsvkms did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

struct Run {
    clients: usize,
    calls: usize,
    seconds: f64,
    latencies_us: Vec<u64>,
}

impl Run {
    fn rps(&self) -> f64 {
        self.calls as f64 / self.seconds
    }

    fn percentile_ms(&self, fraction: f64) -> f64 {
        let index = ((self.latencies_us.len() as f64 - 1.0) * fraction).round() as usize;
        self.latencies_us[index] as f64 / 1000.0
    }

    fn mean_ms(&self) -> f64 {
        self.latencies_us.iter().sum::<u64>() as f64 / self.latencies_us.len() as f64 / 1000.0
    }
}

fn measure(socket: &Path, clients: usize, blob: &[u8], context: &KeyContext, token: &str) -> Run {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(RUN_S);
    let mut latencies_us: Vec<u64> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(move || {
                    let client = KmsClient::new(socket);
                    let mut latencies = Vec::with_capacity(64 * 1024);
                    while Instant::now() < deadline {
                        let call = Instant::now();
                        let key = client.unwrap(blob, context, token).expect("unwrap");
                        latencies.push(call.elapsed().as_micros() as u64);
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
    let seconds = started.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    Run {
        clients,
        calls: latencies_us.len(),
        seconds,
        latencies_us,
    }
}

fn main() {
    let bench_dir = target_dir().join("bench");
    std::fs::create_dir_all(&bench_dir).unwrap();
    let work = tempfile::tempdir_in(&bench_dir).unwrap();
    let dir = work.path().join("state");
    let socket = work.path().join("kms.sock");
    lsvkms(&["init", "--dir", dir.to_str().unwrap(), "--issuer", "bench"]);
    let token = lsvkms(&[
        "token",
        "issue",
        "--dir",
        dir.to_str().unwrap(),
        "--user",
        "alice",
        "--ttl",
        "1h",
    ]);
    let _server = start(&dir, &socket);
    let context = KeyContext {
        volume_id: "bench-volume".into(),
        snapshot_id: String::new(),
    };
    let client = KmsClient::new(&socket);
    let generated = client
        .generate_data_key(&["alice".to_owned()], &context)
        .unwrap();
    for _ in 0..WARMUP_CALLS {
        client
            .unwrap(&generated.wrapped_blob, &context, &token)
            .unwrap();
    }
    let runs: Vec<Run> = [1, 2]
        .iter()
        .map(|c| measure(&socket, *c, &generated.wrapped_blob, &context, &token))
        .collect();

    println!(
        "lsvkms unwrap over a UNIX socket ({RUN_S} s per row; each call audited + fdatasync'ed)"
    );
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "clients", "calls", "req/s", "mean ms", "p50 ms", "p99 ms"
    );
    for run in &runs {
        println!(
            "{:>8} {:>10} {:>10.0} {:>10.3} {:>10.3} {:>10.3}",
            run.clients,
            run.calls,
            run.rps(),
            run.mean_ms(),
            run.percentile_ms(0.50),
            run.percentile_ms(0.99)
        );
    }
    let (one, two) = (&runs[0], &runs[1]);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_1m: f64 = loadavg
        .split_whitespace()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(-1.0);
    println!(
        "machine load average (1 min) at the end: {load_1m} on {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let json = serde_json::json!({
        "bench": "kms",
        "unwrap_rps": (two.rps()).round(),
        "unwrap_p50_ms": two.percentile_ms(0.50),
        "unwrap_p99_ms": two.percentile_ms(0.99),
        "clients": 2,
        "unwrap_rps_1client": (one.rps()).round(),
        "unwrap_p50_ms_1client": one.percentile_ms(0.50),
        "unwrap_p99_ms_1client": one.percentile_ms(0.99),
        "load_avg_1m": load_1m,
    });
    let line = json.to_string();
    std::fs::write(bench_dir.join("kms.json"), format!("{line}\n")).unwrap();
    println!("{line}");
}
