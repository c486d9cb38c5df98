//! `cargo bench --bench restart` (`ci/bench.sh restart`): how long a served
//! disk is away while its daemon restarts in place, as in an upgrade: SIGTERM
//! to the running daemon (it flushes, seals the log, writes a checkpoint,
//! releases the volume lock), a new daemon started at once (unwraps the key
//! through lsvkms, opens the volume from the checkpoint, creates its socket),
//! and a client's first 4 KiB read answered by it.
//!
//! - `lsvblk`: a 1 GiB encrypted volume, written once fully (1 MiB, QD 8) and
//!   then with `--random-writes` 4 KiB writes at random offsets (a fragmented
//!   index: a checkpoint of tens of thousands of extents); a connected client
//!   at every SIGTERM, as QEMU would be;
//! - `qsd-raw`: qemu-storage-daemon exporting a 1 GiB raw file (written the
//!   same way), stopped and started the same way: the reference.
//!
//! Per target `--reps` restarts (default 20); the phases are measured from
//! the SIGTERM: the old process reaped (`exit`), the new socket listening
//! (`listen`), the first read answered (`serving`); p50 and p99 of each, the
//! daemon's own account of its start (key unwrap, volume open) from its log.
//! Prints a table, then one JSON object as the last line, also written to
//! `target/bench/restart.json`. A smoke run under `cargo test` uses the test
//! build, a 64 MiB volume and 2 restarts. `LSVBLK_BIN_DIR=DIR` takes prebuilt
//! `lsvblk` and `lsvkms` from DIR instead of building them.

#[path = "common/mod.rs"]
mod common;
#[path = "../../tests/kit/mod.rs"]
mod kit;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::build::Binaries;
use common::{Options, Report, USER, load_avg_1m, percentile};
use kit::blkio::{BlkClient, ClientOptions};
use kit::daemon::{Daemon, ServeOptions, create_volume_using, is_listening};
use kit::kms::Kms;
use kit::process::{OnDrop, Process};
use kit::rng::Rng;

const MIB: u64 = 1 << 20;
/// How long a new daemon may take before the bench gives up on it.
const START_LIMIT: Duration = Duration::from_secs(30);

/// One restart's phases, milliseconds from the SIGTERM.
#[derive(Clone, Copy, Debug)]
struct Restart {
    exit_ms: f64,
    listen_ms: f64,
    serving_ms: f64,
}

/// A server the bench restarts: `stop` stops the running one and returns
/// once it is reaped, `start` starts the next and returns its socket.
trait Restartable {
    fn stop(&mut self);
    fn start(&mut self) -> PathBuf;
}

/// Restarts `server` `reps` times; `client` is connected to the running one.
fn measure(reps: usize, server: &mut dyn Restartable, mut client: BlkClient) -> Vec<Restart> {
    let mut restarts = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        server.stop();
        let exit_ms = ms(t0);
        drop(client); // the frontend sees the hang-up (QEMU would reconnect)
        let socket = server.start();
        wait_listening(&socket);
        let listen_ms = ms(t0);
        client = BlkClient::connect(&socket, 1, START_LIMIT).expect("connect to the new server");
        client
            .read(0, 0, 4096)
            .expect("first read after the restart");
        restarts.push(Restart {
            exit_ms,
            listen_ms,
            serving_ms: ms(t0),
        });
    }
    restarts
}

/// Polls (every millisecond) until a server listens on `socket`.
fn wait_listening(socket: &Path) {
    let started = Instant::now();
    while !is_listening(socket) {
        assert!(
            started.elapsed() < START_LIMIT,
            "nothing listens on {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Writes the disk once fully, then `random_writes` 4 KiB writes at random
/// aligned offsets, and flushes.
fn precondition(client: &mut BlkClient, size: u64, random_writes: usize) {
    client.write_whole_disk(0, MIB as usize, 8);
    let mut rng = Rng(16);
    let blocks = size / 4096;
    for i in 0..random_writes {
        let offset = rng.below(blocks) * 4096;
        let data = [(i % 251) as u8; 4096];
        client.write(0, offset, &data).expect("random write");
    }
    client.flush(0).expect("flush");
}

struct Args {
    options: Options,
    size: u64,
    random_writes: usize,
}

fn args() -> Args {
    let options = Options::from_args(20, 1);
    let argv = common::args::Args::from_env();
    let value = |name: &str| argv.number(name, false);
    let smoke = options.smoke;
    Args {
        size: value("--size-mb").map_or(if smoke { 64 } else { 1024 }, |mb| mb) * MIB,
        random_writes: value("--random-writes").map_or(if smoke { 100 } else { 20_000 }, |n| n)
            as usize,
        options: Options {
            reps: if smoke { 2 } else { options.reps },
            ..options
        },
    }
}

/// `lsvblk serve` on one volume, restarted with the same key service,
/// token and options.
struct Lsvblk {
    kms: Kms,
    token: PathBuf,
    volume: PathBuf,
    serve: ServeOptions,
    running: Option<Daemon>,
}

impl Restartable for Lsvblk {
    fn stop(&mut self) {
        let mut old = self.running.take().expect("a daemon runs");
        let status = old.sigterm_and_wait();
        assert!(status.success(), "lsvblk exit {status}:\n{}", old.stderr());
    }

    fn start(&mut self) -> PathBuf {
        let next = Daemon::spawn_with(&self.volume, &self.kms, &self.token, &self.serve);
        let socket = next.socket.clone();
        self.running = Some(next);
        socket
    }
}

/// The lsvblk target: its restarts, and the last daemon's account of its
/// start (key unwrap, volume open) from its log.
fn lsvblk_restarts(binaries: &Binaries, dir: &Path, args: &Args) -> (Vec<Restart>, String) {
    let kms = Kms::start_in(&binaries.lsvkms, dir);
    let token = kms.token(USER);
    let lsvblk = kit::cli::Lsvblk::at(&binaries.lsvblk)
        .with_env("RUST_LOG", "info")
        .with_env("NO_COLOR", "1");
    let volume = create_volume_using(&lsvblk, &kms, args.size, &[USER], &[]);
    let serve = ServeOptions {
        lsvblk,
        name: "lsvblk".to_owned(),
        on_drop: OnDrop::Terminate {
            clean_exit_expected: true,
        },
        ..ServeOptions::args(&[])
    };
    let mut server = Lsvblk {
        kms,
        token,
        volume,
        serve,
        running: None,
    };
    let socket = server.start();
    wait_listening(&socket);
    let mut client =
        BlkClient::connect_with(&socket, &ClientOptions::queues(1)).expect("connect to lsvblk");
    precondition(&mut client, args.size, args.random_writes);
    let restarts = measure(args.options.reps, &mut server, client);
    let account = server
        .running
        .as_ref()
        .and_then(|d| {
            d.stderr()
                .lines()
                .find(|line| line.contains(" serving "))
                .map(start_account)
        })
        .unwrap_or_default();
    (restarts, account)
}

/// `unwrap_ms=.. open_ms=..` from the daemon's "serving" log line.
fn start_account(line: &str) -> String {
    line.split_whitespace()
        .filter(|word| word.starts_with("unwrap_ms=") || word.starts_with("open_ms="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// qemu-storage-daemon exporting one raw image, a new socket each start.
struct Qsd {
    program: PathBuf,
    dir: PathBuf,
    image: PathBuf,
    starts: u32,
    running: Option<Process>,
}

impl Restartable for Qsd {
    fn stop(&mut self) {
        let mut old = self.running.take().expect("QSD runs");
        old.signal_and_wait(libc::SIGTERM);
    }

    fn start(&mut self) -> PathBuf {
        self.starts += 1;
        let socket = self.dir.join(format!("qsd-{}.sock", self.starts));
        let mut command = Command::new(&self.program);
        command.args([
            "--blockdev",
            &format!(
                "driver=file,node-name=file0,filename={}",
                self.image.display()
            ),
            "--export",
            &format!(
                "type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={},\
                 writable=on,num-queues=1",
                socket.display()
            ),
        ]);
        let log = self.dir.join(format!("qsd-{}.log", self.starts));
        let mut process = Process::spawn("qsd", command, log);
        process.set_on_drop(OnDrop::Terminate {
            clean_exit_expected: false,
        });
        self.running = Some(process);
        socket
    }
}

fn qsd_restarts(program: PathBuf, dir: &Path, args: &Args) -> Vec<Restart> {
    let image = dir.join("qsd.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(args.size))
        .expect("create the raw image");
    let mut server = Qsd {
        program,
        dir: dir.to_path_buf(),
        image,
        starts: 0,
        running: None,
    };
    let socket = server.start();
    wait_listening(&socket);
    let mut client =
        BlkClient::connect_with(&socket, &ClientOptions::queues(1)).expect("connect to QSD");
    precondition(&mut client, args.size, args.random_writes);
    measure(args.options.reps, &mut server, client)
}

fn report_target(report: &mut Report, name: &str, restarts: &[Restart], note: &str) {
    type Phase = fn(&Restart) -> f64;
    let phases: [(&str, &str, Phase); 3] = [
        ("exit", "old daemon reaped", |r| r.exit_ms),
        ("listen", "new socket listening", |r| r.listen_ms),
        ("serving", "first 4 KiB read answered", |r| r.serving_ms),
    ];
    for (key, label, phase) in phases {
        let values: Vec<f64> = restarts.iter().map(phase).collect();
        for p in [50.0, 99.0] {
            report.row(
                &format!("{name}_{key}_p{p}_ms"),
                &format!("{name}: SIGTERM -> {label}, p{p}"),
                Some(percentile(&values, p)),
                "ms",
                if key == "serving" { note } else { "" },
            );
        }
    }
}

fn main() {
    let args = args();
    let dir = tempfile::tempdir().expect("temp dir");
    // LSVBLK_BIN_DIR: prebuilt lsvblk and lsvkms (as the QEMU tests take).
    let binaries = match std::env::var_os("LSVBLK_BIN_DIR") {
        Some(bin_dir) => Binaries {
            lsvblk: Path::new(&bin_dir).join("lsvblk"),
            lsvkms: Path::new(&bin_dir).join("lsvkms"),
        },
        None if args.options.smoke => Binaries::of_this_target(),
        None => Binaries::build(&[], dir.path()),
    };
    let (lsvblk, account) = lsvblk_restarts(&binaries, dir.path(), &args);
    let mut report = Report::new("restart", &args.options);
    let note = format!(
        "{} restarts, {} MiB volume + {} random 4 KiB writes; last start: {account}",
        lsvblk.len(),
        args.size / MIB,
        args.random_writes
    );
    report_target(&mut report, "lsvblk", &lsvblk, &note);
    match common::which("qemu-storage-daemon") {
        Some(qsd) => {
            let qsd_runs = qsd_restarts(qsd, dir.path(), &args);
            report_target(
                &mut report,
                "qsd_raw",
                &qsd_runs,
                "raw file, same disk and writes",
            );
        }
        None => report.info("qsd_raw", "qemu-storage-daemon not found: no reference"),
    }
    if let Some(load) = load_avg_1m() {
        report.metric("load_avg_1m", Some(load));
    }
    report.finish();
}
