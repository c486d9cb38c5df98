//! The served volume: lsvblk serve with background compaction off, the
//! client connected to it, and the `lsvblk` commands the bench runs on it
//! (status, compact, snapshot create), each beside the foreground load.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

use super::burst::{Burst, Client, End};
use super::common::USER;
use super::common::serve::{client_options, lsvblk_at, serve_options};
use super::kit::cli::{Lsvblk, json_of, run_to_success};
use super::kit::daemon::{Daemon, create_volume_using};
use super::kit::kms::Kms;
use super::kit::process::START_WAIT;
use super::kit::rng::Rng;
use super::run::{Compaction, Limits, Phase, Run, SnapshotTiming, Space};
use super::{ExtraArgs, REGION_BYTES};

/// The volume, its daemon and the client connected to it.
pub struct Served {
    pub cli: Lsvblk,
    pub volume: PathBuf,
    /// Fields drop in order: the client before the daemon.
    pub client: Option<Client>,
    pub daemon: Daemon,
    /// Most bytes the volume directory held when looked at (after each
    /// repetition and command).
    pub disk_peak: u64,
}

impl Served {
    /// Creates a volume of `size` bytes, serves it with background
    /// compaction off and connects the client.
    pub fn start(lsvblk: &Path, kms: &Kms, size: u64) -> Self {
        let cli = lsvblk_at(lsvblk);
        let volume = create_volume_using(&cli, kms, size, &[USER], &[]);
        let serve = serve_options(&cli, "lsvblk serve", &["--compact-rate-mib", "0"], false);
        let token = kms.token(USER);
        let mut daemon = Daemon::start_with(&volume, kms, &token, &serve);
        let mut blk = daemon.client_with(&client_options(REGION_BYTES), START_WAIT);
        blk.randomize_region(0x1234_5678);
        Served {
            cli,
            volume,
            client: Some(Client {
                blk,
                daemon_pid: daemon.pid(),
            }),
            daemon,
            disk_peak: 0,
        }
    }

    /// Notes how many bytes the volume directory holds now.
    pub fn note_disk(&mut self) {
        fn bytes(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => bytes(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        self.disk_peak = self.disk_peak.max(bytes(&self.volume));
    }

    pub fn client(&mut self) -> &mut Client {
        self.daemon.check_alive();
        self.client.as_mut().expect("connected")
    }

    pub fn volume_arg(&self) -> String {
        self.volume.to_str().expect("utf-8 path").to_owned()
    }

    /// Runs `lsvblk ARGS` (a `--json` command) and parses its output.
    pub fn tool(&mut self, args: &[&str]) -> Value {
        self.note_disk();
        let out = run_to_success(&mut self.cli.command(args));
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("lsvblk {args:?}: output is not JSON ({e}): {out}"))
    }

    pub fn status(&mut self) -> Space {
        let value = self.tool(&["status", &self.volume_arg(), "--json"]);
        assert_eq!(value["served"], true, "status: the daemon serves it");
        let number = |key: &str| {
            value["space"][key]
                .as_u64()
                .unwrap_or_else(|| panic!("status: no space.{key} in {value}"))
        };
        Space {
            log_bytes: number("log_bytes"),
            live_bytes: number("live_bytes"),
            segments: number("segments"),
        }
    }

    /// One foreground repetition: a burst of writes within `limits`, or
    /// until `stop()`.
    fn repetition(
        &mut self,
        rng: &mut Rng,
        limits: &Limits,
        stop: &mut dyn FnMut() -> bool,
    ) -> Burst {
        let duration = Some(limits.duration);
        self.client()
            .random_writes(rng, limits.qd, limits.cap, duration, stop)
    }

    /// `reps` foreground repetitions, each followed by an untimed FLUSH.
    pub fn repetitions(
        &mut self,
        rng: &mut Rng,
        limits: &Limits,
        reps: usize,
        guest_bytes: &mut u64,
    ) -> Phase {
        let mut phase = Phase::default();
        for _ in 0..reps {
            let burst = self.repetition(rng, limits, &mut || false);
            *guest_bytes += burst.bytes();
            phase.flush_s.push(self.client().flush());
            self.note_disk();
            burst.log("idle");
            phase.bursts.push(burst);
        }
        phase
    }

    /// Runs `lsvblk compact --rate-mib R` and foreground repetitions back to
    /// back for as long as it does.
    pub fn during_compaction(
        &mut self,
        rng: &mut Rng,
        limits: &Limits,
        args: &ExtraArgs,
        run: &mut Run,
    ) -> (Phase, Compaction) {
        let min_keep_s = run.idle.rep_s().unwrap_or(0.0) / 2.0;
        let mut compact = self.cli.background(&[
            "compact",
            &self.volume_arg(),
            "--json",
            "--rate-mib",
            &args.rate_mib.to_string(),
            "--live-ratio-max",
            &args.live_ratio_max.to_string(),
        ]);
        let started = Instant::now();
        let mut exited = || !compact.running();
        let mut phase = Phase::default();
        let mut cut_short = Vec::new();
        while !exited() {
            let burst = self.repetition(rng, limits, &mut exited);
            run.guest_bytes += burst.bytes();
            run.during_timed_s += burst.seconds;
            phase.flush_s.push(self.client().flush());
            self.note_disk();
            burst.log("during compaction");
            if burst.end == End::Stopped && burst.seconds < min_keep_s {
                cut_short.push(burst);
            } else {
                phase.bursts.push(burst);
            }
        }
        run.during_wall_s = started.elapsed().as_secs_f64();
        if phase.bursts.is_empty() {
            // The compaction was shorter than half a repetition: keep what
            // there is rather than nothing (the table says n=).
            phase.bursts = std::mem::take(&mut cut_short);
        }
        run.during_dropped = cut_short.len();
        let value = json_of(&["compact"], &compact.finish());
        (phase, Compaction::from_json(&value))
    }

    /// Takes `count` snapshots named `bench-PREFIX-N`; with `load`, the
    /// client keeps writing while each is taken (then FLUSHes).
    pub fn snapshots(
        &mut self,
        count: usize,
        prefix: &str,
        mut load: Option<(&mut Rng, &Limits, &mut u64)>,
    ) -> Vec<SnapshotTiming> {
        let mut timings = Vec::new();
        for index in 0..count {
            let name = format!("bench-{prefix}-{index}");
            let args = ["snapshot", "create", &self.volume_arg(), &name, "--json"];
            let started = Instant::now();
            let mut child = self.cli.background(&args);
            let mut fg_max_wait_ms = None;
            if let Some((rng, limits, guest_bytes)) = load.as_mut() {
                let mut exited = || !child.running();
                let client = self.client();
                let burst = client.random_writes(rng, limits.qd, u64::MAX, None, &mut exited);
                **guest_bytes += burst.bytes();
                fg_max_wait_ms = Some(burst.max_wait_s * 1e3);
            }
            let output = child.finish();
            let cli_ms = started.elapsed().as_secs_f64() * 1e3;
            if load.is_some() {
                self.client().flush();
            }
            let value = json_of(&args, &output);
            let ms = |key: &str| {
                value[key]
                    .as_f64()
                    .unwrap_or_else(|| panic!("snapshot create: no {key} in {value}"))
            };
            timings.push(SnapshotTiming {
                create_ms: ms("create_ms"),
                index_ms: ms("index_ms"),
                cli_ms,
                fg_max_wait_ms,
            });
        }
        timings
    }
}
