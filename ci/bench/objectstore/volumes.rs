//! The volume cases: `lsvblk serve` (this build) on a volume in the
//! cluster's bucket (`--store s3://...`) and on a local-directory volume,
//! driven by the same libblkio client with the same settings (one queue of
//! 256 descriptors; see `drive`).
//!
//! - writes: 4 KiB randwrite QD32 and 1 MiB seqwrite QD8 on a fresh 1 GiB
//!   volume of each kind (`--flush local`, the default), round-robin,
//!   `--reps` times for `--rep-ms` (or `--write-cap-mb`) each. Each
//!   repetition of either volume starts once the store volume's upload
//!   backlog is empty: the targets are about writes with the upload in the
//!   background, so a burst must not start behind the previous burst's
//!   uploads (they would hold its closing FLUSH at `--upload-lag`, and take
//!   the CPU from either volume's next repetition). The default cap keeps a
//!   burst under the default lag;
//! - upload: the whole of another 1 GiB store volume written once (1 MiB,
//!   QD8); its uploaded bytes over the time from the first write until no
//!   sealed segment waits for upload, and the write itself as a sustained
//!   rate (four times the default lag: bound by the upload, by design);
//! - open: that volume stopped cleanly (everything uploaded, a checkpoint
//!   in the store), then served on an empty directory with `--cache-size`:
//!   the time from the start of `lsvblk serve` until its socket listens,
//!   `--opens` times (each on a new empty directory);
//! - cold reads: on the last of those, 4 KiB randread QD32 and 1 MiB
//!   seqread QD8 (1 GiB volume, a cache of [`COLD_CACHE`]: nearly every
//!   read fetches from the store);
//! - remote FLUSH: the write volume served with `--flush remote`; 32
//!   random 4 KiB writes, then a FLUSH, timed, `--flushes` times.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lsvblk::objstore::{ObjectKey, ObjectStore};

use super::common::build::Binaries;
use super::common::load::{RANDWRITE_QD32, SEQWRITE_1M, Workload};
use super::common::serve::{client_options, lsvblk_at, serve_options};
use super::common::{Options, USER, median};
use super::drive::drive;
use super::kit::blkio::{BlkClient, REGION_BYTES};
use super::kit::ceph::{cluster, unique_prefix};
use super::kit::cli::Lsvblk;
use super::kit::daemon::{Daemon, create_volume_using};
use super::kit::kms::Kms;
use super::kit::rng::Rng;

/// The write workloads, local volume against store volume.
pub const WRITES: [Workload; 2] = [RANDWRITE_QD32, SEQWRITE_1M];

/// The cold-read workloads.
pub const COLD_READS: [Workload; 2] = [
    Workload {
        key: "cold_randread_qd32",
        label: "cold 4 KiB randread QD32",
        write: false,
        random: true,
        block: 4096,
        qd: 32,
        queues: 1,
    },
    Workload {
        key: "cold_seqread_1m",
        label: "cold 1 MiB seqread QD8",
        write: false,
        random: false,
        block: 1 << 20,
        qd: 8,
        queues: 1,
    },
];

/// `--cache-size` of the cold-read daemon.
pub const COLD_CACHE: &str = "32M";

/// How big and how long: from the command line.
pub struct Sizes {
    pub volume_bytes: u64,
    pub write_cap: u64,
    pub opens: usize,
    pub flushes: usize,
    /// `--upload-lag` of the store volume in the write cases (`None`: the
    /// daemon's default).
    pub upload_lag: Option<String>,
}

/// What the volume cases measured: per case, its samples.
#[derive(Default)]
pub struct Figures {
    /// Per write workload: (local samples, store samples).
    pub writes: Vec<(Workload, Vec<f64>, Vec<f64>)>,
    pub upload_mbps: f64,
    pub open_s: Vec<f64>,
    /// Per cold-read workload, its samples.
    pub cold_reads: Vec<(Workload, Vec<f64>)>,
    pub flush_ms: Vec<f64>,
    /// MB/s of the whole-volume write of the upload case (its closing
    /// FLUSH included): a write longer than the lag runs at the upload's
    /// pace.
    pub sustained_write_mbps: f64,
}

/// A key service, a token, S3 credentials in a 0600 file, and the volumes
/// made so far (their store prefixes are deleted on drop).
pub struct Bench {
    kms: Kms,
    token: PathBuf,
    lsvblk: Lsvblk,
    credentials: PathBuf,
    prefixes: Vec<ObjectKey>,
}

impl Bench {
    /// Everything in `dir`, with the daemons of `binaries`.
    pub fn new(binaries: &Binaries, dir: &Path) -> Self {
        let kms = Kms::start_in(&binaries.lsvkms, dir);
        let token = kms.token(USER);
        let lsvblk =
            lsvblk_at(&binaries.lsvblk).with_env("AWS_REGION", cluster().var("AWS_REGION"));
        let credentials = kms.fresh_path("s3", "env");
        let text = format!(
            "AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\n",
            cluster().var("AWS_ACCESS_KEY_ID"),
            cluster().var("AWS_SECRET_ACCESS_KEY")
        );
        std::fs::write(&credentials, text).unwrap();
        set_private(&credentials);
        Bench {
            kms,
            token,
            lsvblk,
            credentials,
            prefixes: Vec::new(),
        }
    }

    /// `--store ... --endpoint ... --credentials-file ...` for `prefix`.
    fn store_args(&self, prefix: &ObjectKey) -> Vec<String> {
        let url = format!("s3://{}/{}", cluster().bucket(), prefix.as_str());
        let credentials = self.credentials.to_str().unwrap();
        ["--store", &url, "--endpoint", cluster().endpoint()]
            .into_iter()
            .chain(["--credentials-file", credentials])
            .map(str::to_string)
            .collect()
    }

    /// A new volume of `bytes`: in the store under a prefix of its own when
    /// `in_store`, else a plain local directory.
    pub fn create(&mut self, bytes: u64, in_store: bool) -> Volume {
        let prefix = in_store.then(|| unique_prefix("bench-volume"));
        let args = prefix
            .as_ref()
            .map(|p| self.store_args(p))
            .unwrap_or_default();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let dir = create_volume_using(&self.lsvblk, &self.kms, bytes, &[USER], &args);
        self.prefixes.extend(prefix.clone());
        Volume { dir, prefix }
    }

    /// `lsvblk serve` of `volume` from `dir` (its own directory or a new
    /// one), with `extra` arguments; returns once it is spawned.
    pub fn spawn(&self, volume: &Volume, dir: &Path, name: &str, extra: &[&str]) -> Daemon {
        let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        args.extend(volume.prefix.iter().flat_map(|p| self.store_args(p)));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let options = serve_options(&self.lsvblk, name, &args, true);
        Daemon::spawn_with(dir, &self.kms, &self.token, &options)
    }

    /// [`Bench::spawn`] in the volume's own directory, connected.
    pub fn serve(&self, volume: &Volume, name: &str, extra: &[&str]) -> (Daemon, BlkClient) {
        let mut daemon = self.spawn(volume, &volume.dir, name, extra);
        daemon.wait_listening();
        let client = connect(&mut daemon);
        (daemon, client)
    }

    /// A directory that does not exist yet (a new host's).
    pub fn fresh_dir(&self) -> PathBuf {
        self.kms.fresh_path("host", "d")
    }

    /// `status.upload` of the daemon serving `dir`.
    fn upload_status(&self, dir: &Path) -> serde_json::Value {
        let status = self
            .lsvblk
            .json(&["status", dir.to_str().unwrap(), "--json"]);
        status["upload"].clone()
    }

    /// Waits until no sealed segment of the volume served from `dir` waits
    /// for upload.
    fn wait_uploaded(&self, dir: &Path) {
        let start = Instant::now();
        loop {
            let status = self.upload_status(dir);
            if status["backlog_segments"].as_u64() == Some(0) {
                return;
            }
            assert!(
                start.elapsed() < UPLOAD_WAIT_MAX,
                "the uploads did not catch up in {UPLOAD_WAIT_MAX:?}: {status}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How long the upload of a backlog may take before the bench gives up.
const UPLOAD_WAIT_MAX: Duration = Duration::from_secs(600);

impl Drop for Bench {
    /// Deletes every object of the volumes made (left behind they would
    /// fill the cluster).
    fn drop(&mut self) {
        for prefix in &self.prefixes {
            let Some((parent, name)) = prefix.as_str().rsplit_once('/') else {
                continue;
            };
            let store = cluster().store(&ObjectKey::new(parent).unwrap());
            if let Ok(objects) = store.list(&ObjectKey::new(name).unwrap()) {
                let keys: Vec<ObjectKey> = objects.into_iter().map(|o| o.key).collect();
                let _ = store.delete(&keys);
            }
        }
    }
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A volume made by [`Bench::create`].
pub struct Volume {
    pub dir: PathBuf,
    /// Its prefix in the bucket, for a store volume.
    pub prefix: Option<ObjectKey>,
}

/// A client of `daemon` with one queue of 256 and the kit's region.
fn connect(daemon: &mut Daemon) -> BlkClient {
    let mut client = daemon.client_with(&client_options(REGION_BYTES), Duration::from_secs(30));
    client.randomize_region(0x0b5e_c715);
    client
}

/// Runs every volume case (see the module doc).
pub fn measure(bench: &mut Bench, options: &Options, sizes: &Sizes) -> Figures {
    let mut figures = Figures::default();
    let duration = options.rep_duration;
    let mut rng = Rng(15);

    // Writes: local against store, round-robin.
    let local = bench.create(sizes.volume_bytes, false);
    let remote = bench.create(sizes.volume_bytes, true);
    let lag: Vec<&str> = sizes
        .upload_lag
        .iter()
        .flat_map(|lag| ["--upload-lag", lag.as_str()])
        .collect();
    let mut targets = [
        bench.serve(&local, "lsvblk-local", &[]),
        bench.serve(&remote, "lsvblk-s3", &lag),
    ];
    for workload in WRITES {
        figures.writes.push((workload, Vec::new(), Vec::new()));
    }
    for _ in 0..options.reps {
        for (w, workload) in WRITES.iter().enumerate() {
            for (t, (_, client)) in targets.iter_mut().enumerate() {
                bench.wait_uploaded(&remote.dir);
                let rate = drive(
                    client,
                    workload,
                    duration,
                    sizes.write_cap,
                    &mut rng,
                    workload.key,
                );
                let (_, local_samples, store_samples) = &mut figures.writes[w];
                match t {
                    0 => local_samples.push(rate),
                    _ => store_samples.push(rate),
                }
            }
        }
    }
    for (mut daemon, client) in targets {
        drop(client);
        daemon.stop_cleanly();
    }

    // The remote FLUSH on the written store volume.
    let (mut daemon, mut client) = bench.serve(&remote, "lsvblk-s3-remote", &["--flush", "remote"]);
    figures.flush_ms = remote_flushes(&mut client, sizes.flushes, &mut rng);
    drop(client);
    daemon.stop_cleanly();

    // Upload: a whole store volume written once.
    let whole = bench.create(sizes.volume_bytes, true);
    let (mut daemon, mut client) = bench.serve(&whole, "lsvblk-s3-upload", &[]);
    (figures.upload_mbps, figures.sustained_write_mbps) = upload(bench, &whole.dir, &mut client);
    drop(client);
    daemon.stop_cleanly();

    // Open on empty directories, then cold reads on the last.
    let cache = ["--cache-size", COLD_CACHE];
    let mut last = None;
    for _ in 0..sizes.opens {
        if let Some((mut daemon, client)) = last.take() {
            drop(client);
            Daemon::stop_cleanly(&mut daemon);
        }
        let dir = bench.fresh_dir();
        let start = Instant::now();
        let mut daemon = bench.spawn(&whole, &dir, "lsvblk-s3-open", &cache);
        daemon.wait_listening();
        figures.open_s.push(start.elapsed().as_secs_f64());
        let client = connect(&mut daemon);
        last = Some((daemon, client));
    }
    let (mut daemon, mut client) = last.expect("at least one open");
    for workload in COLD_READS {
        figures.cold_reads.push((workload, Vec::new()));
    }
    for _ in 0..options.reps {
        for (r, workload) in COLD_READS.iter().enumerate() {
            let rate = drive(&mut client, workload, duration, 0, &mut rng, workload.key);
            figures.cold_reads[r].1.push(rate);
        }
    }
    drop(client);
    daemon.stop_cleanly();
    figures
}

/// Writes the whole disk once (1 MiB, QD8) and waits until nothing sealed
/// waits for upload: MB/s uploaded from the first write until then, and
/// MB/s of the write (its FLUSH included).
fn upload(bench: &Bench, dir: &Path, client: &mut BlkClient) -> (f64, f64) {
    let uploaded = |status: &serde_json::Value| status["uploaded_bytes"].as_u64().unwrap_or(0);
    let before = uploaded(&bench.upload_status(dir));
    let start = Instant::now();
    let write_s = client.write_whole_disk(0, 1 << 20, 8);
    let written_mbps = client.capacity() as f64 / write_s / super::common::MB_BYTES;
    bench.wait_uploaded(dir);
    let seconds = start.elapsed().as_secs_f64();
    let status = bench.upload_status(dir);
    let upload_mbps = (uploaded(&status) - before) as f64 / seconds / super::common::MB_BYTES;
    (upload_mbps, written_mbps)
}

/// `count` times: 32 random 4 KiB writes, then a FLUSH, timed (ms).
fn remote_flushes(client: &mut BlkClient, count: usize, rng: &mut Rng) -> Vec<f64> {
    let blocks = client.capacity() / 4096;
    let mut reaped = super::kit::blkio::completions(32);
    (0..count)
        .map(|_| {
            for slot in 0..32 {
                client.submit(0, true, slot, rng.below(blocks) * 4096, 4096);
            }
            let mut done = 0;
            while done < 32 {
                done += client
                    .reap_ok(0, &mut reaped, "writes before a FLUSH")
                    .len();
            }
            let start = Instant::now();
            client.flush(0).expect("remote FLUSH");
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

/// The median of `samples`, `None` if there are none.
pub fn median_of(samples: &[f64]) -> Option<f64> {
    (!samples.is_empty()).then(|| median(samples))
}
