//! Helpers shared by every benchmark under `ci/bench/` (`mod common;`):
//! measuring and reporting. What benchmarks share with the tests (processes,
//! the libblkio client, load generators, random data) is in `tests/kit/`,
//! which every benchmark includes as `crate::kit` ([`serve`] uses it).
//!
//! A benchmark registers throughput cases with a [`Suite`], runs them
//! round-robin (so a burst of noise from a neighbour's compile hits every case
//! alike rather than one of them), and hands the medians to a [`Report`]. The
//! report prints a table for people and, as the very last line, one JSON
//! object for scripts, which it also writes to `target/bench/NAME.json`.
//!
//! Units: MB/s means 10^6 bytes per second.

// Each benchmark uses a different subset of these helpers.
#![allow(dead_code)]

pub mod args;
pub mod build;
pub mod load;
pub mod serve;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The user the benchmarks' lsvkms issues tokens for and their volumes'
/// ACLs name.
pub const USER: &str = "bench";

/// Bytes in one MB, as used for every MB/s figure.
pub const MB_BYTES: f64 = 1e6;

/// The median of `samples` (the mean of the middle two for an even count).
///
/// # Panics
/// If `samples` is empty or holds a NaN.
pub fn median(samples: &[f64]) -> f64 {
    assert!(!samples.is_empty(), "median of no samples");
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).expect("samples are not NaN"));
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

/// Nearest-rank percentile `p` (0-100) of `values`.
///
/// # Panics
/// If `values` is empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Options every benchmark accepts after `--` (`ci/bench.sh NAME [args]`).
#[derive(Clone, Debug)]
pub struct Options {
    /// Repetitions per case; the median is reported (`--reps N`, at least 1).
    pub reps: usize,
    /// Wall time of one repetition of one case (`--rep-ms N`).
    pub rep_duration: Duration,
    /// Only cases whose key contains one of these comma-separated texts run
    /// (`--only TEXT[,TEXT..]`), for profiling.
    pub only: Option<String>,
    /// Run each case briefly, once, and write no JSON: set when the binary
    /// is started by `cargo test` (which, unlike `cargo bench`, does not pass
    /// `--bench`), so the test suite only checks that the benchmark runs.
    pub smoke: bool,
}

impl Options {
    /// Parses `--reps N`, `--rep-ms N` and `--only TEXT` from the command
    /// line; `--bench` (added by `cargo bench`) selects a real measurement.
    ///
    /// # Panics
    /// On a value that is not a positive integer (a usage error).
    pub fn from_args(reps_default: usize, rep_ms_default: u64) -> Self {
        let args = args::Args::from_env();
        let smoke = !args.flag("--bench");
        let (reps, rep_ms) = if smoke {
            (1, 1)
        } else {
            (reps_default, rep_ms_default)
        };
        Options {
            reps: args.count("--reps", false).unwrap_or(reps),
            rep_duration: Duration::from_millis(args.number("--rep-ms", false).unwrap_or(rep_ms)),
            only: args.text("--only"),
            smoke,
        }
    }
}

/// One throughput case: a closure that processes `bytes_per_call` bytes.
struct Case<'a> {
    key: String,
    label: String,
    bytes_per_call: usize,
    calls_per_rep: u64,
    run: Box<dyn FnMut() + 'a>,
    samples_mbps: Vec<f64>,
}

/// A set of throughput cases measured round-robin, `reps` times each.
pub struct Suite<'a> {
    options: Options,
    cases: Vec<Case<'a>>,
    /// What a repetition's time is measured on.
    clock: Clock,
}

/// Wall time, or the CPU time of the measuring thread: what `openssl
/// speed` reports by default (user CPU time), and what a busy machine does
/// not shift, for cases that run on the calling thread alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// `Instant::now`.
    Wall,
    /// `CLOCK_THREAD_CPUTIME_ID`.
    ThreadCpu,
}

impl Clock {
    /// Seconds on this clock since some fixed point.
    fn now_s(self) -> f64 {
        match self {
            Clock::Wall => {
                static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
                EPOCH.get_or_init(Instant::now).elapsed().as_secs_f64()
            }
            Clock::ThreadCpu => {
                let mut now = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: clock_gettime writes the timespec we pass.
                unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
                now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
            }
        }
    }
}

/// The result of one case: median and spread of its repetitions.
#[derive(Clone, Debug)]
pub struct Throughput {
    /// JSON key, e.g. `xts_4k_mbps`.
    pub key: String,
    /// Human label for the table.
    pub label: String,
    /// Median over repetitions, MB/s.
    pub median_mbps: f64,
    /// Slowest repetition, MB/s.
    pub min_mbps: f64,
    /// Fastest repetition, MB/s.
    pub max_mbps: f64,
    /// Repetitions measured.
    pub reps: usize,
}

impl<'a> Suite<'a> {
    /// An empty suite.
    pub fn new(options: Options) -> Self {
        Suite {
            options,
            cases: Vec::new(),
            clock: Clock::Wall,
        }
    }

    /// Measures repetitions on `clock` (wall time unless told otherwise).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Adds a case whose `run` processes `bytes_per_call` bytes per call.
    /// `key` is its JSON key (ending in `_mbps`), `label` its table row.
    pub fn add(
        &mut self,
        key: &str,
        label: &str,
        bytes_per_call: usize,
        run: impl FnMut() + 'a,
    ) -> &mut Self {
        assert!(bytes_per_call > 0);
        if let Some(only) = &self.options.only
            && !only.split(',').any(|text| key.contains(text))
        {
            return self;
        }
        self.cases.push(Case {
            key: key.to_owned(),
            label: label.to_owned(),
            bytes_per_call,
            calls_per_rep: 0,
            run: Box::new(run),
            samples_mbps: Vec::new(),
        });
        self
    }

    /// Warms every case up, sizes its repetitions to about `rep_duration`,
    /// then measures all cases round-robin `reps` times.
    pub fn run(mut self) -> Vec<Throughput> {
        let rep_duration = self.options.rep_duration;
        for case in &mut self.cases {
            case.calls_per_rep = calibrate(&mut case.run, rep_duration);
        }
        for _ in 0..self.options.reps {
            for case in &mut self.cases {
                let start_s = self.clock.now_s();
                for _ in 0..case.calls_per_rep {
                    (case.run)();
                }
                let elapsed_s = self.clock.now_s() - start_s;
                let bytes = case.bytes_per_call as f64 * case.calls_per_rep as f64;
                case.samples_mbps.push(bytes / elapsed_s / MB_BYTES);
            }
        }
        self.cases
            .into_iter()
            .map(|case| Throughput {
                median_mbps: median(&case.samples_mbps),
                min_mbps: case
                    .samples_mbps
                    .iter()
                    .copied()
                    .fold(f64::INFINITY, f64::min),
                max_mbps: case.samples_mbps.iter().copied().fold(0.0, f64::max),
                reps: case.samples_mbps.len(),
                key: case.key,
                label: case.label,
            })
            .collect()
    }
}

/// Calls `run` until it has run for a while (warm-up), and returns how many
/// calls take about `rep_duration`.
fn calibrate(run: &mut dyn FnMut(), rep_duration: Duration) -> u64 {
    let warm_up = rep_duration / 4;
    let mut calls: u64 = 0;
    let start = Instant::now();
    while start.elapsed() < warm_up || calls < 2 {
        run();
        calls += 1;
    }
    let per_call_s = start.elapsed().as_secs_f64() / calls as f64;
    ((rep_duration.as_secs_f64() / per_call_s) as u64).max(1)
}

/// A table row: label, value, unit and a free-form note.
struct Row {
    label: String,
    value: Option<f64>,
    unit: String,
    note: String,
}

/// The output of one benchmark: a table and a flat JSON object.
pub struct Report {
    name: String,
    rows: Vec<Row>,
    json: serde_json::Map<String, serde_json::Value>,
    write_json: bool,
}

impl Report {
    /// An empty report for benchmark `name` (also the JSON file's name).
    /// A smoke run (see [`Options::smoke`]) prints but writes no file.
    pub fn new(name: &str, options: &Options) -> Self {
        let mut json = serde_json::Map::new();
        json.insert("bench".into(), name.into());
        Report {
            name: name.to_owned(),
            rows: Vec::new(),
            json,
            write_json: !options.smoke,
        }
    }

    /// Adds a measured throughput as a row and as `key: median` in the JSON,
    /// with the spread noted in the row.
    pub fn throughput(&mut self, result: &Throughput, note: &str) {
        let spread = format!(
            "min {:.0} max {:.0} n={}",
            result.min_mbps, result.max_mbps, result.reps
        );
        let note = if note.is_empty() {
            spread
        } else {
            format!("{note}; {spread}")
        };
        self.row(
            &result.key,
            &result.label,
            Some(result.median_mbps),
            "MB/s",
            &note,
        );
    }

    /// Adds a row and `key: value` (or `key: null` when `value` is `None`).
    pub fn row(&mut self, key: &str, label: &str, value: Option<f64>, unit: &str, note: &str) {
        self.rows.push(Row {
            label: label.to_owned(),
            value,
            unit: unit.to_owned(),
            note: note.to_owned(),
        });
        self.metric(key, value);
    }

    /// Adds `key: value` to the JSON only (rounded to 3 decimals; `None` is
    /// `null`).
    pub fn metric(&mut self, key: &str, value: Option<f64>) {
        let value = value
            .map(|v| (v * 1000.0).round() / 1000.0)
            .and_then(serde_json::Number::from_f64)
            .map_or(serde_json::Value::Null, serde_json::Value::Number);
        self.json.insert(key.to_owned(), value);
    }

    /// Adds `key: text` to the JSON only (context such as the CPU model).
    pub fn info(&mut self, key: &str, text: &str) {
        self.json.insert(key.to_owned(), text.into());
    }

    /// Prints the table, writes the JSON to `target/bench/NAME.json`, and
    /// prints the JSON as the last line of output.
    ///
    /// # Panics
    /// If the JSON file cannot be written.
    pub fn finish(self) {
        let label_width = self.rows.iter().map(|r| r.label.len()).max().unwrap_or(0);
        println!();
        println!("== {}", self.name);
        for row in &self.rows {
            let value = row.value.map_or_else(|| "n/a".to_owned(), format_value);
            println!(
                "{:<label_width$}  {:>10} {:<5}  {}",
                row.label, value, row.unit, row.note
            );
        }
        let json = serde_json::Value::Object(self.json).to_string();
        if self.write_json {
            let dir = bench_output_dir();
            std::fs::create_dir_all(&dir).expect("create target/bench");
            let path = dir.join(format!("{}.json", self.name));
            std::fs::write(&path, format!("{json}\n")).expect("write bench JSON");
            println!("(JSON written to {})", path.display());
        } else {
            println!("(smoke run under cargo test: numbers are meaningless, no JSON written)");
        }
        println!("{json}");
    }
}

fn format_value(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

/// `$CARGO_TARGET_DIR/bench`, or `target/bench` at the package root.
fn bench_output_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench")
}

/// The 1-minute load average from `/proc/loadavg`, if there is one: how
/// busy the machine was (noise in the figures).
pub fn load_avg_1m() -> Option<f64> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
    loadavg.split_whitespace().next()?.parse().ok()
}

/// The CPU model from `/proc/cpuinfo`, if there is one.
pub fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
}

/// The AES-relevant CPU features present, e.g. `aes,avx2,avx512f,vaes,vpclmulqdq`.
pub fn cpu_features() -> String {
    let mut features = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("aes") {
            features.push("aes");
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            features.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            features.push("avx512f");
        }
        if std::arch::is_x86_feature_detected!("vaes") {
            features.push("vaes");
        }
        if std::arch::is_x86_feature_detected!("vpclmulqdq") {
            features.push("vpclmulqdq");
        }
    }
    features.join(",")
}

/// An executable on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}
