//! The whole device, as a VMM sees it: one libblkio client in this process
//! drives, with the same load generator and settings,
//!
//! - `lsvblk`:      `lsvblk serve`, AES-256-XTS volume (plain release build,
//!   key unwrapped through a real `lsvkms`),
//! - `lsvblk-null`: `lsvblk serve` on a null-cipher volume (release build with
//!   `--features null-cipher`): what the daemon costs without crypto,
//! - `qsd-raw`:     `qemu-storage-daemon` exporting a raw file,
//! - `qsd-luks`:    `qemu-storage-daemon` exporting a LUKS1 image
//!   (aes-256-xts-plain64, QEMU's built-in LUKS driver),
//!
//! and prints IOPS / MB/s per target and workload, and the ratios of
//! `lsvblk` to each other target.
//!
//! A real run builds both lsvblk variants itself (`cargo build --profile
//! bench --bin lsvblk --bin lsvkms`, with and without `--features
//! null-cipher`: release settings, cached after the first run) and copies
//! them into its temporary directory; the plain build is the encrypted
//! target, exactly what ships. A smoke run under `cargo test` uses the test
//! build of the binaries, small disks and 1 ms cases (and no JSON).
//! Everything it starts is stopped (SIGTERM, then SIGKILL) and every file it
//! made is removed, also when it panics.
//!
//! Run through `ci/bench.sh device [--reps N] [--rep-ms N] [--only TEXT]
//! [--size-mb N] [--write-cap-mb N]`. `--only` matches workload or target
//! names (e.g. `--only randwrite_qd32` while profiling the daemon with
//! `perf record -p`).
//!
//! Method (also printed, and in the JSON):
//! - Durability is the same everywhere: buffered host I/O (page cache), and a
//!   guest FLUSH becomes `fdatasync` of the backing files (QSD:
//!   `cache.direct=off,cache.no-flush=off`, export `writethrough=off`, default
//!   `aio=threads`; lsvblk: buffered `pwritev`, `fdatasync` on FLUSH).
//! - One virtqueue of 256 descriptors; each request is one contiguous buffer
//!   (a 1 MiB request is one 1 MiB descriptor). Every target is a 1 GiB disk,
//!   preconditioned by writing it once fully (1 MiB, QD 8) and flushing, so
//!   reads hit data, not holes.
//! - Workloads: 4 KiB random write / read at QD 1 and QD 32 (uniform random
//!   aligned offsets), 1 MiB sequential write / read at QD 8. The client keeps
//!   QD requests in flight (submit, `do_io` for completions, resubmit) for
//!   `--rep-ms`; a write repetition also stops after `--write-cap-mb` MiB (the
//!   disk here is slow and lsvblk's log has no cleaner yet: unbounded writes
//!   would make the flushes dominate the run and fill the disk). After each
//!   write repetition a FLUSH is issued and waited for, *outside* the timed
//!   interval, so every case starts with a clean page cache; its duration is
//!   reported separately (`flush_ms`: the disk's share, log write
//!   amplification included).
//! - Reads are served mostly from the host page cache on every target (the
//!   disks fit in RAM): they measure the backends, not the disk.
//! - Repetitions run round-robin: for each repetition, each workload, every
//!   target in turn (the order of targets rotates per repetition); medians of
//!   the repetitions are reported.

mod common;

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use common::procs::{CONNECT_WAIT, Daemon, Kms, USER, run_tool};
use common::{Options, Report, median};

/// Repetitions per case when `--reps` is not given.
const REPS_DEFAULT: usize = 5;
/// Longest wall time of one repetition of one case when `--rep-ms` is not given.
const REP_MS_DEFAULT: u64 = 1200;
/// Disk size for a real run, MiB (`--size-mb`).
const SIZE_MB_DEFAULT: u64 = 1024;
/// Disk size for a smoke run under `cargo test`, MiB.
const SMOKE_SIZE_MB: u64 = 32;
/// Most bytes one write repetition writes, MiB (`--write-cap-mb`).
const WRITE_CAP_MB_DEFAULT: u64 = 512;
/// Virtqueue size the client asks for (lsvblk's and libblkio's default).
const QUEUE_SIZE: i32 = 256;
/// Preconditioning: request size and queue depth.
const FILL_BYTES: usize = 1 << 20;
const FILL_QD: usize = 8;

/// One workload, run the same way against every target.
#[derive(Clone, Copy, Debug)]
struct Workload {
    /// JSON / `--only` name, e.g. `randwrite_qd32`.
    key: &'static str,
    label: &'static str,
    write: bool,
    random: bool,
    block: usize,
    qd: usize,
}

impl Workload {
    /// IOPS for 4 KiB workloads, MB/s for large ones.
    fn in_mbps(&self) -> bool {
        self.block >= 65536
    }
}

const WORKLOADS: [Workload; 6] = [
    Workload {
        key: "randwrite_qd1",
        label: "4 KiB randwrite QD1",
        write: true,
        random: true,
        block: 4096,
        qd: 1,
    },
    Workload {
        key: "randwrite_qd32",
        label: "4 KiB randwrite QD32",
        write: true,
        random: true,
        block: 4096,
        qd: 32,
    },
    Workload {
        key: "randread_qd1",
        label: "4 KiB randread QD1",
        write: false,
        random: true,
        block: 4096,
        qd: 1,
    },
    Workload {
        key: "randread_qd32",
        label: "4 KiB randread QD32",
        write: false,
        random: true,
        block: 4096,
        qd: 32,
    },
    Workload {
        key: "seqwrite_1m",
        label: "1 MiB seqwrite QD8",
        write: true,
        random: false,
        block: 1 << 20,
        qd: 8,
    },
    Workload {
        key: "seqread_1m",
        label: "1 MiB seqread QD8",
        write: false,
        random: false,
        block: 1 << 20,
        qd: 8,
    },
];

/// Bytes of the client's shared buffer region: the largest QD × block.
const REGION_BYTES: usize = 16 << 20;

fn main() {
    let options = Options::from_args(REPS_DEFAULT, REP_MS_DEFAULT);
    let extra = ExtraArgs::parse(&options);
    let size = extra.size_mb << 20;
    let root = tempfile::Builder::new()
        .prefix("lsvblk-device-bench-")
        .tempdir()
        .expect("temporary directory");
    let dir = root.path();

    let bins = Binaries::find(&options, dir);
    // Field order = drop order: every client disconnects, then the daemons
    // stop (lsvblk flushes), then lsvkms, then `root` removes every file.
    let kms = Kms::start(&bins.lsvkms, dir);
    let mut targets = Vec::new();
    targets.push(lsvblk_target(
        "lsvblk",
        &bins.lsvblk,
        false,
        &kms,
        dir,
        size,
    ));
    match &bins.lsvblk_null {
        Some(path) => targets.push(lsvblk_target("lsvblk-null", path, true, &kms, dir, size)),
        None => eprintln!("device bench: no null-cipher build of lsvblk: lsvblk-null skipped"),
    }
    match which("qemu-storage-daemon").zip(which("qemu-img")) {
        Some((qsd, qemu_img)) => {
            targets.push(qsd_target("qsd-raw", &qsd, &qemu_img, false, dir, size));
            targets.push(qsd_target("qsd-luks", &qsd, &qemu_img, true, dir, size));
        }
        None => eprintln!("device bench: qemu-storage-daemon or qemu-img not found: QSD skipped"),
    }
    // `--only`: texts naming targets (exactly) keep those targets; texts
    // found in workload names keep those workloads.
    let only: Vec<&str> = options
        .only
        .as_deref()
        .map_or(Vec::new(), |o| o.split(',').collect());
    if only.iter().any(|o| targets.iter().any(|t| t.name == *o)) {
        targets.retain(|t| only.contains(&t.name));
    }
    let mut workloads: Vec<Workload> = WORKLOADS.to_vec();
    if only
        .iter()
        .any(|o| WORKLOADS.iter().any(|w| w.key.contains(o)))
    {
        workloads.retain(|w| only.iter().any(|o| w.key.contains(o)));
    }
    for target in &targets {
        eprintln!(
            "device bench: {} is pid {}",
            target.name,
            target.daemon.pid()
        );
    }

    let mut rng = common::SplitMix64(0xdead_beef_0bad_cafe);
    for target in &mut targets {
        target.connect();
        target.fill_mbps = Some(target.precondition());
        eprintln!(
            "device bench: {} preconditioned ({:.0} MB/s incl. flush)",
            target.name,
            target.fill_mbps.unwrap_or(0.0)
        );
    }
    let limits = Limits {
        duration: options.rep_duration,
        write_cap: extra.write_cap_mb << 20,
    };
    let mut results: Vec<CaseResult> = Vec::new();
    for workload in &workloads {
        for target in 0..targets.len() {
            results.push(CaseResult::new(*workload, target));
        }
    }
    for rep in 0..options.reps {
        for workload in &workloads {
            for turn in 0..targets.len() {
                let index = (turn + rep) % targets.len();
                let target = &mut targets[index];
                target.check_alive();
                let sample = target.run(workload, &limits, &mut rng);
                results
                    .iter_mut()
                    .find(|r| r.workload.key == workload.key && r.target == index)
                    .expect("case")
                    .samples
                    .push(sample);
            }
        }
    }
    report(&options, &extra, &targets, &results, size);
    // Disconnect every client before the daemons stop (drop order).
    for target in &mut targets {
        target.client = None;
    }
    drop(targets);
    drop(kms);
}

/// Arguments beyond the common ones.
struct ExtraArgs {
    size_mb: u64,
    write_cap_mb: u64,
}

impl ExtraArgs {
    fn parse(options: &Options) -> Self {
        let args: Vec<String> = std::env::args().collect();
        let value = |name: &str| -> Option<u64> {
            let at = args.iter().position(|a| a == name)?;
            let text = args.get(at + 1).map(String::as_str).unwrap_or("");
            match text.parse::<u64>() {
                Ok(n) if n > 0 => Some(n),
                _ => panic!("{name} needs a positive integer, got {text:?}"),
            }
        };
        let size_mb = if options.smoke {
            SMOKE_SIZE_MB
        } else {
            value("--size-mb").unwrap_or(SIZE_MB_DEFAULT)
        };
        ExtraArgs {
            size_mb,
            write_cap_mb: value("--write-cap-mb").unwrap_or(WRITE_CAP_MB_DEFAULT),
        }
    }
}

/// Where the daemons' executables are.
struct Binaries {
    lsvblk: PathBuf,
    lsvblk_null: Option<PathBuf>,
    lsvkms: PathBuf,
}

impl Binaries {
    /// A real run builds both lsvblk variants in the bench profile (release
    /// settings; cached after the first time) and copies them out of
    /// `target/`, as each build replaces `target/release/lsvblk`. A smoke run
    /// under `cargo test` uses the test build of the binaries as they are.
    fn find(options: &Options, dir: &Path) -> Self {
        if options.smoke {
            let lsvblk = PathBuf::from(env!("CARGO_BIN_EXE_lsvblk"));
            return Binaries {
                lsvblk_null: cfg!(feature = "null-cipher").then(|| lsvblk.clone()),
                lsvblk,
                lsvkms: PathBuf::from(env!("CARGO_BIN_EXE_lsvkms")),
            };
        }
        // The plain build last, so that `target/release/lsvblk` is the one
        // without the null cipher afterwards.
        let null = cargo_build(&["--features", "null-cipher"], &dir.join("bin-null"));
        let plain = cargo_build(&[], &dir.join("bin"));
        Binaries {
            lsvblk: plain.join("lsvblk"),
            lsvblk_null: Some(null.join("lsvblk")),
            lsvkms: plain.join("lsvkms"),
        }
    }
}

/// `cargo build --profile bench --bin lsvblk --bin lsvkms ARGS`, then copies
/// both executables into `into` (returned).
fn cargo_build(args: &[&str], into: &Path) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("device bench: building lsvblk and lsvkms (bench profile) {args:?}");
    let output = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--profile",
            "bench",
            "--bin",
            "lsvblk",
            "--bin",
            "lsvkms",
        ])
        .args(["--message-format", "json-render-diagnostics"])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(output.status.success(), "cargo build {args:?} failed");
    std::fs::create_dir_all(into).expect("bin dir");
    let mut found = 0;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let name = message["target"]["name"].as_str().unwrap_or("");
        if let Some(exe) = message["executable"].as_str()
            && (name == "lsvblk" || name == "lsvkms")
        {
            std::fs::copy(exe, into.join(name)).expect("copy executable");
            found += 1;
        }
    }
    assert_eq!(
        found, 2,
        "cargo build {args:?} reported {found} of 2 executables"
    );
    into.to_path_buf()
}

/// An executable on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

/// One device under test: its daemon and, once connected, a client.
struct Target {
    name: &'static str,
    socket: PathBuf,
    /// Fields drop in order: the client before the daemon.
    client: Option<Client>,
    daemon: Daemon,
    /// How the target was set up, for the report.
    setup: String,
    fill_mbps: Option<f64>,
}

impl Target {
    fn connect(&mut self) {
        self.daemon.check_alive();
        // An idle vhost-user-blk server accepts the connection right away,
        // even a QSD whose LUKS export is still deriving its key: wait for
        // the socket, then retry the whole handshake for a while.
        let deadline = Instant::now() + CONNECT_WAIT;
        loop {
            match Client::connect(&self.socket) {
                Ok(client) => {
                    self.client = Some(client);
                    return;
                }
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    self.daemon.check_alive();
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(error) => panic!("{}: cannot connect: {error}", self.name),
            }
        }
    }

    fn check_alive(&mut self) {
        self.daemon.check_alive();
    }

    /// Writes the whole disk once (1 MiB, QD 8) and flushes; MB/s.
    fn precondition(&mut self) -> f64 {
        let client = self.client.as_mut().expect("connected");
        let capacity = client.capacity;
        let start = Instant::now();
        let mut next = 0u64;
        let mut in_flight = 0;
        let mut completions = completions(FILL_QD);
        for slot in 0..FILL_QD {
            if next < capacity {
                let len = FILL_BYTES.min((capacity - next) as usize);
                client.submit(true, slot, next, len);
                next += len as u64;
                in_flight += 1;
            }
        }
        while in_flight > 0 {
            for slot in client.reap(&mut completions, self.name) {
                in_flight -= 1;
                if next < capacity {
                    let len = FILL_BYTES.min((capacity - next) as usize);
                    client.submit(true, slot, next, len);
                    next += len as u64;
                    in_flight += 1;
                }
            }
        }
        client.flush(self.name);
        capacity as f64 / start.elapsed().as_secs_f64() / common::MB_BYTES
    }

    /// One repetition of `workload`.
    fn run(
        &mut self,
        workload: &Workload,
        limits: &Limits,
        rng: &mut common::SplitMix64,
    ) -> Sample {
        let name = self.name;
        let client = self.client.as_mut().expect("connected");
        let block = workload.block as u64;
        let blocks = client.capacity / block;
        let mut cursor = rng.below(blocks);
        let mut next_offset = |rng: &mut common::SplitMix64| {
            if workload.random {
                rng.below(blocks) * block
            } else {
                cursor = (cursor + 1) % blocks;
                cursor * block
            }
        };
        let cap = if workload.write {
            limits.write_cap
        } else {
            u64::MAX
        };
        let mut completions = completions(workload.qd);
        let start = Instant::now();
        let deadline = start + limits.duration;
        let mut submitted_bytes = 0u64;
        let mut in_flight = 0;
        let mut done = 0u64;
        for slot in 0..workload.qd {
            client.submit(workload.write, slot, next_offset(rng), workload.block);
            submitted_bytes += block;
            in_flight += 1;
        }
        while in_flight > 0 {
            let slots = client.reap(&mut completions, name);
            let stop = Instant::now() >= deadline || submitted_bytes >= cap;
            for slot in slots {
                done += 1;
                if stop {
                    in_flight -= 1;
                } else {
                    client.submit(workload.write, slot, next_offset(rng), workload.block);
                    submitted_bytes += block;
                }
            }
        }
        let elapsed_s = start.elapsed().as_secs_f64();
        let flush_s = workload.write.then(|| {
            let start = Instant::now();
            client.flush(name);
            start.elapsed().as_secs_f64()
        });
        Sample {
            ops_per_s: done as f64 / elapsed_s,
            mbps: (done * block) as f64 / elapsed_s / common::MB_BYTES,
            flush_s,
        }
    }
}

/// Limits of one repetition.
struct Limits {
    duration: Duration,
    write_cap: u64,
}

/// One repetition's result.
#[derive(Clone, Copy, Debug)]
struct Sample {
    ops_per_s: f64,
    mbps: f64,
    flush_s: Option<f64>,
}

/// All repetitions of one workload on one target.
struct CaseResult {
    workload: Workload,
    target: usize,
    samples: Vec<Sample>,
}

impl CaseResult {
    fn new(workload: Workload, target: usize) -> Self {
        CaseResult {
            workload,
            target,
            samples: Vec::new(),
        }
    }

    /// IOPS or MB/s, whichever the workload reports: (median, min, max).
    fn value(&self) -> Option<(f64, f64, f64)> {
        if self.samples.is_empty() {
            return None;
        }
        let values: Vec<f64> = self
            .samples
            .iter()
            .map(|s| {
                if self.workload.in_mbps() {
                    s.mbps
                } else {
                    s.ops_per_s
                }
            })
            .collect();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(0.0, f64::max);
        Some((median(&values), min, max))
    }

    fn flush_ms(&self) -> Option<f64> {
        let values: Vec<f64> = self.samples.iter().filter_map(|s| s.flush_s).collect();
        (!values.is_empty()).then(|| median(&values) * 1000.0)
    }
}

/// Creates and starts `lsvblk serve` on a fresh volume.
fn lsvblk_target(
    name: &'static str,
    lsvblk: &Path,
    null_cipher: bool,
    kms: &Kms,
    dir: &Path,
    size: u64,
) -> Target {
    let volume = dir.join(format!("{name}.vol"));
    let kms_address = format!("unix:{}", kms.socket.display());
    let mut create = Command::new(lsvblk);
    create
        .arg("create")
        .arg("--volume")
        .arg(&volume)
        .args(["--size", &size.to_string(), "--acl", USER])
        .args(["--kms", &kms_address]);
    if null_cipher {
        create.arg("--unencrypted-benchmark-only");
    }
    run_tool(&mut create);
    let socket = dir.join(format!("{name}.sock"));
    let daemon = Daemon::spawn(
        name,
        Command::new(lsvblk)
            .arg("serve")
            .arg("--volume")
            .arg(&volume)
            .arg("--socket")
            .arg(&socket)
            .args(["--kms", &kms_address])
            .arg("--token-file")
            .arg(&kms.token_file)
            .args(["--num-queues", "1", "--queue-size", &QUEUE_SIZE.to_string()])
            .env("RUST_LOG", "warn"),
        dir.join(format!("{name}.log")),
        true,
    );
    let setup = format!(
        "lsvblk serve --num-queues 1 --queue-size {QUEUE_SIZE} (defaults otherwise){}; {}",
        if null_cipher {
            ", volume created with --unencrypted-benchmark-only"
        } else {
            ""
        },
        lsvblk.display()
    );
    Target {
        name,
        socket,
        client: None,
        daemon,
        setup,
        fill_mbps: None,
    }
}

/// Creates the image and starts qemu-storage-daemon exporting it.
fn qsd_target(
    name: &'static str,
    qsd: &Path,
    qemu_img: &Path,
    luks: bool,
    dir: &Path,
    size: u64,
) -> Target {
    let image = dir.join(format!("{name}.img"));
    let secret_file = dir.join("luks-passphrase");
    let mut secret = Vec::new();
    if luks {
        std::fs::write(&secret_file, "device-bench-passphrase").expect("write passphrase");
        // iter-time only shortens the PBKDF at open; the data path is the same.
        run_tool(
            Command::new(qemu_img)
                .args(["create", "-q", "-f", "luks", "--object"])
                .arg(format!("secret,id=sec0,file={}", secret_file.display()))
                .args([
                    "-o",
                    "key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,\
                     hash-alg=sha256,iter-time=100",
                ])
                .arg(&image)
                .arg(size.to_string()),
        );
        secret = vec![
            "--object".to_owned(),
            format!("secret,id=sec0,file={}", secret_file.display()),
        ];
    } else {
        run_tool(
            Command::new(qemu_img)
                .args(["create", "-q", "-f", "raw"])
                .arg(&image)
                .arg(size.to_string()),
        );
    }
    let socket = dir.join(format!("{name}.sock"));
    let file = format!(
        "driver=file,node-name=file0,filename={},cache.direct=off,cache.no-flush=off",
        image.display()
    );
    let format = if luks {
        "driver=luks,node-name=disk0,file=file0,key-secret=sec0"
    } else {
        "driver=raw,node-name=disk0,file=file0"
    };
    let export = format!(
        "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},\
         writable=on,writethrough=off,num-queues=1",
        socket.display()
    );
    let mut command = Command::new(qsd);
    command.args(&secret).args([
        "--blockdev",
        &file,
        "--blockdev",
        format,
        "--export",
        &export,
    ]);
    let setup = format!("{command:?}").replace('"', "");
    let daemon = Daemon::spawn(name, &mut command, dir.join(format!("{name}.log")), false);
    Target {
        name,
        socket,
        client: None,
        daemon,
        setup,
        fill_mbps: None,
    }
}

/// A connected libblkio instance with one queue and one shared region; slot
/// `i` of a queue depth owns bytes `i * block ..` of the region.
struct Client {
    // Field order matters: the queue and the region go before the instance.
    queue: Blkioq,
    region: MemoryRegion,
    _blkio: Blkio,
    capacity: u64,
}

impl Client {
    fn connect(socket: &Path) -> Result<Self, String> {
        let text = |e: blkio::Error| format!("{}: {}", e.errno(), e.message());
        let mut blkio = Blkio::new("virtio-blk-vhost-user").map_err(text)?;
        blkio
            .set_str("path", socket.to_str().expect("utf-8 path"))
            .map_err(text)?;
        blkio.connect().map_err(text)?;
        blkio.set_i32("num-queues", 1).map_err(text)?;
        blkio.set_i32("queue-size", QUEUE_SIZE).map_err(text)?;
        let mut outcome = blkio.start().map_err(text)?;
        let region = blkio.alloc_mem_region(REGION_BYTES).map_err(text)?;
        blkio.map_mem_region(&region).map_err(text)?;
        // Incompressible-looking data for every write, so that no backend
        // can take a shortcut for zeros.
        // SAFETY: the region is REGION_BYTES of mapped memory owned by
        // `blkio`; nothing is in flight yet.
        let bytes = unsafe { std::slice::from_raw_parts_mut(region.addr as *mut u8, region.len) };
        let mut rng = common::SplitMix64(0x1234_5678);
        for chunk in bytes.chunks_exact_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes());
        }
        let capacity = blkio.get_u64("capacity").map_err(text)?;
        Ok(Client {
            queue: outcome.queues.pop().expect("one queue"),
            region,
            _blkio: blkio,
            capacity,
        })
    }

    /// Queues a read or write of `len` bytes at `offset` into slot `slot`.
    fn submit(&mut self, write: bool, slot: usize, offset: u64, len: usize) {
        assert!((slot + 1) * len <= self.region.len, "region too small");
        let buf = (self.region.addr + slot * len) as *mut u8;
        if write {
            self.queue.write(offset, buf, len, slot, ReqFlags::empty());
        } else {
            self.queue.read(offset, buf, len, slot, ReqFlags::empty());
        }
    }

    /// Waits for at least one completion; returns the slots that completed.
    /// Panics on a failed request.
    fn reap(&mut self, completions: &mut [MaybeUninit<Completion>], name: &str) -> Vec<usize> {
        let done = self
            .queue
            .do_io(completions, 1, None, None)
            .unwrap_or_else(|e| panic!("{name}: do_io: {}", e.message()));
        completions[..done]
            .iter()
            .map(|c| {
                // SAFETY: do_io initialised the first `done` completions.
                let c = unsafe { c.assume_init_ref() };
                assert!(c.ret >= 0, "{name}: request failed: {}", c.ret);
                c.user_data
            })
            .collect()
    }

    /// FLUSH, waited for.
    fn flush(&mut self, name: &str) {
        self.queue.flush(usize::MAX, ReqFlags::empty());
        let mut one = completions(1);
        let slots = self.reap(&mut one, name);
        assert_eq!(slots, [usize::MAX], "{name}: unexpected completion");
    }
}

fn completions(count: usize) -> Vec<MaybeUninit<Completion>> {
    (0..count).map(|_| MaybeUninit::uninit()).collect()
}

const DURABILITY: &str = "buffered host I/O (page cache); guest FLUSH -> fdatasync. \
     QSD: file cache.direct=off,cache.no-flush=off, export writethrough=off, aio=threads \
     (default). lsvblk: buffered pwritev to its log, fdatasync on FLUSH.";

fn report(
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
    if let Some(cpu) = common::cpu_model() {
        report.info("cpu", &cpu);
    }
    report.finish();
}
