//! The devices under test (lsvblk, its null-cipher build, QSD raw and
//! LUKS over buffered or O_DIRECT host I/O), each a server process with a
//! libblkio client, and one repetition of a workload on one of them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::common::load::drive;
use super::common::serve::{
    QUEUE_SIZE, client_options_with_queues, lsvblk_at, serve_options_with_queues,
};
use super::common::{MB_BYTES, USER, median};
use super::kit::blkio::{BlkClient, REGION_BYTES};
use super::kit::cli::run_to_success;
use super::kit::daemon::{Daemon, create_volume_using};
use super::kit::kms::Kms;
use super::kit::process::{OnDrop, Process, START_WAIT};
use super::kit::rng::Rng;
use super::{FILL_BYTES, FILL_QD, Workload};

/// One device under test: its server process and, once connected, a client.
pub struct Target {
    pub name: &'static str,
    socket: PathBuf,
    /// Virtqueues the server offers and the client connects.
    pub queues: usize,
    /// Fields drop in order: the client before the server.
    pub client: Option<BlkClient>,
    pub server: Process,
    /// How the target was set up, for the report.
    pub setup: String,
    pub fill_mbps: Option<f64>,
}

impl Target {
    pub fn connect(&mut self) {
        // An idle vhost-user-blk server accepts the connection right away,
        // even a QSD whose LUKS export is still deriving its key: retry the
        // whole handshake for a while.
        let options = client_options_with_queues(REGION_BYTES, self.queues as i32);
        let server = &mut self.server;
        server.check_alive();
        let connected =
            BlkClient::connect_retrying(&self.socket, &options, START_WAIT, &mut || {
                server.check_alive()
            });
        let mut client = connected.unwrap_or_else(|e| panic!("{}: cannot connect: {e}", self.name));
        client.randomize_region(0x1234_5678);
        self.client = Some(client);
    }

    pub fn check_alive(&mut self) {
        self.server.check_alive();
    }

    /// Writes the whole disk once (1 MiB, QD 8) and flushes; MB/s.
    pub fn precondition(&mut self) -> f64 {
        let client = self.client.as_mut().expect("connected");
        let seconds = client.write_whole_disk(0, FILL_BYTES, FILL_QD);
        client.capacity() as f64 / seconds / MB_BYTES
    }

    /// One repetition of `workload`; `None` if it needs more queues than
    /// the target has.
    pub fn run(&mut self, workload: &Workload, limits: &Limits, rng: &mut Rng) -> Option<Sample> {
        if workload.queues > self.queues {
            return None;
        }
        let name = self.name;
        let pid = self.server.pid();
        let client = self.client.as_mut().expect("connected");
        let cpu_before = process_cpu_s(pid);
        let driven = drive(
            client,
            workload,
            limits.duration,
            limits.write_cap,
            rng,
            name,
        );
        let cpu_s = process_cpu_s(pid).zip(cpu_before).map(|(a, b)| a - b);
        let flush_s = workload.write.then(|| {
            let start = Instant::now();
            flush(client, name);
            start.elapsed().as_secs_f64()
        });
        let bytes = driven.done * workload.block as u64;
        Some(Sample::new(
            driven.done,
            bytes,
            driven.elapsed_s,
            flush_s,
            cpu_s.map(|cpu| cpu / driven.elapsed_s),
        ))
    }
}

/// CPU time (user + system) process `pid` used so far, in seconds.
fn process_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// Limits of one repetition.
pub struct Limits {
    pub duration: Duration,
    pub write_cap: u64,
}

/// One repetition's result.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    ops_per_s: f64,
    mbps: f64,
    flush_s: Option<f64>,
    /// The server's CPU time over the repetition's wall time (1.0 = one
    /// core busy), where measured.
    cpu_cores: Option<f64>,
}

impl Sample {
    /// `done` requests of `bytes` in all over `elapsed_s` seconds.
    pub fn new(
        done: u64,
        bytes: u64,
        elapsed_s: f64,
        flush_s: Option<f64>,
        cpu_cores: Option<f64>,
    ) -> Self {
        Sample {
            ops_per_s: done as f64 / elapsed_s,
            mbps: bytes as f64 / elapsed_s / MB_BYTES,
            flush_s,
            cpu_cores,
        }
    }
}

/// All repetitions of one workload on one target.
pub struct CaseResult {
    pub workload: Workload,
    pub target: usize,
    pub samples: Vec<Sample>,
}

impl CaseResult {
    pub fn new(workload: Workload, target: usize) -> Self {
        CaseResult {
            workload,
            target,
            samples: Vec::new(),
        }
    }

    /// IOPS or MB/s, whichever the workload reports: (median, min, max).
    pub fn value(&self) -> Option<(f64, f64, f64)> {
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

    pub fn flush_ms(&self) -> Option<f64> {
        let values: Vec<f64> = self.samples.iter().filter_map(|s| s.flush_s).collect();
        (!values.is_empty()).then(|| median(&values) * 1000.0)
    }

    /// Median CPU use of the server, in cores, where measured.
    pub fn cpu_cores(&self) -> Option<f64> {
        let values: Vec<f64> = self.samples.iter().filter_map(|s| s.cpu_cores).collect();
        (!values.is_empty()).then(|| median(&values))
    }
}

/// What the volume of an lsvblk target is created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeKind {
    /// As shipped: AES-256-XTS, integrity `mac`.
    Shipped,
    /// `--no-macs-benchmark-only`: integrity `crc` (what the MACs cost).
    NoMacs,
    /// `--unencrypted-benchmark-only` (a null-cipher build).
    NullCipher,
}

/// Creates and starts `lsvblk serve` with `queues` virtqueues on a fresh
/// volume of `kind`.
pub fn lsvblk_target(
    name: &'static str,
    lsvblk: &Path,
    kind: VolumeKind,
    queues: u16,
    kms: &Kms,
    token: &Path,
    size: u64,
) -> Target {
    let cli = lsvblk_at(lsvblk);
    let create_args: &[&str] = match kind {
        VolumeKind::Shipped => &[],
        VolumeKind::NoMacs => &["--no-macs-benchmark-only"],
        VolumeKind::NullCipher => &["--unencrypted-benchmark-only"],
    };
    let volume = create_volume_using(&cli, kms, size, &[USER], create_args);
    let serve = serve_options_with_queues(&cli, name, queues, &[], true);
    let daemon = Daemon::start_with(&volume, kms, token, &serve);
    // The daemon inherits the environment: say which knobs were set.
    let poll: String = ["LSVBLK_POLL_US", "LSVBLK_IO", "LSVBLK_IO_URING"]
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|v| format!(" {name}={v}")))
        .collect();
    let setup = format!(
        "lsvblk serve --num-queues {queues} --queue-size {QUEUE_SIZE} (defaults otherwise){poll}{}; {}",
        match create_args.first() {
            Some(flag) => format!(", volume created with {flag}"),
            None => String::new(),
        },
        lsvblk.display()
    );
    Target {
        name,
        socket: daemon.socket.clone(),
        queues: usize::from(queues),
        client: None,
        server: daemon.into_process(),
        setup,
        fill_mbps: None,
    }
}

/// How QSD reaches its image file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostIo {
    /// `cache.direct=off`, default `aio=threads`: through the page cache.
    Buffered,
    /// `cache.direct=on,aio=io_uring`: O_DIRECT, as VM hosts run it
    /// (libvirt `cache='none' io='io_uring'`).
    Direct,
}

/// Creates the image and starts qemu-storage-daemon exporting it.
pub fn qsd_target(
    name: &'static str,
    qsd: &Path,
    qemu_img: &Path,
    luks: bool,
    io: HostIo,
    dir: &Path,
    size: u64,
) -> Target {
    let image = dir.join(format!("{name}.img"));
    let secret_file = dir.join(format!("{name}-passphrase"));
    let mut secret = Vec::new();
    if luks {
        std::fs::write(&secret_file, "device-bench-passphrase").expect("write passphrase");
        // iter-time only shortens the PBKDF at open; the data path is the same.
        run_to_success(
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
        run_to_success(
            Command::new(qemu_img)
                .args(["create", "-q", "-f", "raw"])
                .arg(&image)
                .arg(size.to_string()),
        );
    }
    let socket = dir.join(format!("{name}.sock"));
    let cache = match io {
        HostIo::Buffered => "cache.direct=off",
        HostIo::Direct => "cache.direct=on,aio=io_uring",
    };
    let file = format!(
        "driver=file,node-name=file0,filename={},{cache},cache.no-flush=off",
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
    let mut server = Process::spawn(name, command, dir.join(format!("{name}.log")));
    server.set_on_drop(OnDrop::Terminate {
        clean_exit_expected: false,
    });
    Target {
        name,
        socket,
        queues: 1,
        client: None,
        server,
        setup,
        fill_mbps: None,
    }
}

/// FLUSH, waited for.
fn flush(client: &mut BlkClient, name: &str) {
    if let Err(error) = client.flush(0) {
        panic!("{name}: FLUSH failed: {error:?}");
    }
}
