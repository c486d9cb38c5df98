//! The devices under test (lsvblk, its null-cipher build, QSD raw and
//! LUKS), each a server process with a libblkio client, and one repetition
//! of a workload on one of them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::common::serve::{QUEUE_SIZE, client_options, lsvblk_at, serve_options};
use super::common::{MB_BYTES, USER, median};
use super::kit::blkio::{BlkClient, REGION_BYTES, completions};
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
        let options = client_options(REGION_BYTES);
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

    /// One repetition of `workload`.
    pub fn run(&mut self, workload: &Workload, limits: &Limits, rng: &mut Rng) -> Sample {
        let name = self.name;
        let client = self.client.as_mut().expect("connected");
        let block = workload.block as u64;
        let blocks = client.capacity() / block;
        let mut cursor = rng.below(blocks);
        let mut next_offset = |rng: &mut Rng| {
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
            client.submit(0, workload.write, slot, next_offset(rng), workload.block);
            submitted_bytes += block;
            in_flight += 1;
        }
        while in_flight > 0 {
            let slots = client.reap_ok(0, &mut completions, name);
            let stop = Instant::now() >= deadline || submitted_bytes >= cap;
            for slot in slots {
                done += 1;
                if stop {
                    in_flight -= 1;
                } else {
                    client.submit(0, workload.write, slot, next_offset(rng), workload.block);
                    submitted_bytes += block;
                }
            }
        }
        let elapsed_s = start.elapsed().as_secs_f64();
        let flush_s = workload.write.then(|| {
            let start = Instant::now();
            flush(client, name);
            start.elapsed().as_secs_f64()
        });
        Sample {
            ops_per_s: done as f64 / elapsed_s,
            mbps: (done * block) as f64 / elapsed_s / MB_BYTES,
            flush_s,
        }
    }
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
}

/// Creates and starts `lsvblk serve` on a fresh volume.
pub fn lsvblk_target(
    name: &'static str,
    lsvblk: &Path,
    null_cipher: bool,
    kms: &Kms,
    token: &Path,
    size: u64,
) -> Target {
    let cli = lsvblk_at(lsvblk);
    let create_args: &[&str] = if null_cipher {
        &["--unencrypted-benchmark-only"]
    } else {
        &[]
    };
    let volume = create_volume_using(&cli, kms, size, &[USER], create_args);
    let serve = serve_options(&cli, name, &[], true);
    let daemon = Daemon::start_with(&volume, kms, token, &serve);
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
        socket: daemon.socket.clone(),
        client: None,
        server: daemon.into_process(),
        setup,
        fill_mbps: None,
    }
}

/// Creates the image and starts qemu-storage-daemon exporting it.
pub fn qsd_target(
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
    let mut server = Process::spawn(name, command, dir.join(format!("{name}.log")));
    server.set_on_drop(OnDrop::Terminate {
        clean_exit_expected: false,
    });
    Target {
        name,
        socket,
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
