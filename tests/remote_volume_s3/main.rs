//! Volumes kept in an object store (`lsvblk create/serve --store`), end to
//! end against the real Ceph cluster of `ci/ceph.sh` (ci/test.sh runs this
//! in its Ceph stage; by hand: `ci/ceph.sh up` first): real lsvkms and
//! lsvblk processes, libblkio as the VMM, and the per-block version model
//! of `kit::versions` to say what every block must hold.
//!
//! - [`lifecycle`]: the host lost after a remote FLUSH (its directory
//!   deleted, the volume rebuilt on another), a second writer refused, a
//!   zombie writer after a takeover whose writes never appear, remote
//!   FLUSHes racing background compaction;
//! - [`faults`]: an OSD killed (kill -9) under writes, radosgw stopped for
//!   30 s (writes go on, a remote FLUSH waits, `status` shows the backlog);
//! - [`cache`]: a volume bigger than its `--cache-size`, read back through
//!   ranged GETs, also after a restart;
//! - [`collect`]: objects of segments compaction dropped deleted from the
//!   store, the rest still the whole volume;
//! - [`handoff`]: alice's snapshot served read-only to bob on another host
//!   from the store, with bob's token (mallory refused);
//! - [`clone`]: a writable clone of a stored volume's snapshot, served
//!   beside it;
//! - [`keys`]: a key rotation while writing, rewrapped blobs and a new ACL:
//!   each in the store before lsvkms forgets what it replaces;
//! - [`dir_store`]: the host-loss story with the volume kept in a
//!   directory (`--store file:///DIR`) instead of the cluster;
//! - [`bad_input`]: wrong credentials, a missing bucket, a truncated or
//!   altered object, another volume's object: each a clear error;
//! - [`migrate`]: a live migration's hand-over to a standby daemon on
//!   another directory (another host) mid-load, through the store; and the
//!   source refusing it while its device runs;
//! - [`refused`]: the daemon's access key revoked while it serves (remote
//!   FLUSHes fail at once, the refusal reported), then restored (uploads
//!   resume, nothing lost);
//! - [`bucket_gone`]: the volume's bucket deleted while it serves, then
//!   created again empty (the store lost the volume: refused for good, the
//!   journal keeps every write).
//!
//! About 2 minutes; the fault tests hold the cluster's fault lock.

#[path = "../kit/mod.rs"]
mod kit;

mod bad_input;
mod bucket_gone;
mod cache;
mod clone;
mod collect;
mod dir_store;
mod faults;
mod handoff;
mod keys;
mod lifecycle;
mod migrate;
mod refused;
#[allow(dead_code)] // the operating tests' scraper; not all of it is used here
#[path = "../operating/scrape.rs"]
mod scrape;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kit::blkio::BlkClient;
use kit::ceph::{cluster, unique_prefix};
use kit::cli::Lsvblk;
use kit::daemon::{Daemon, ServeOptions, create_volume_using};
use kit::kms::Kms;
use lsvblk::objstore::{ObjectKey, ObjectStore, S3Store};

const MIB: u64 = 1 << 20;

/// A KMS, a volume created with `--store` under a prefix of its own, and
/// alice's token and S3 credentials file.
struct Setup {
    kms: Kms,
    token: PathBuf,
    prefix: ObjectKey,
    credentials: PathBuf,
    /// The directory `lsvblk create` made.
    volume: PathBuf,
    /// The volume's size.
    size_bytes: u64,
    /// The bucket it is kept in.
    bucket: String,
}

impl Setup {
    /// A `size_bytes` volume with 1 MiB segments (many objects from little
    /// data), in the store under `tests/NAME-RANDOM`.
    fn new(name: &str, size_bytes: u64) -> Self {
        Self::new_in(name, size_bytes, cluster().bucket())
    }

    /// [`Setup::new`] in `bucket` instead of the cluster's.
    fn new_in(name: &str, size_bytes: u64, bucket: &str) -> Self {
        let kms = Kms::start();
        let token = kms.token("alice");
        let prefix = unique_prefix(name);
        let credentials = kms.fresh_path("s3", "env");
        let text = format!(
            "AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\n",
            cluster().var("AWS_ACCESS_KEY_ID"),
            cluster().var("AWS_SECRET_ACCESS_KEY")
        );
        write_private(&credentials, &text);
        let mut setup = Setup {
            kms,
            token,
            prefix,
            credentials,
            volume: PathBuf::new(),
            size_bytes,
            bucket: bucket.to_string(),
        };
        let mut args = setup.store_args();
        args.extend(["--segment-size".to_string(), "1M".to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        setup.volume = create_volume_using(&lsvblk(), &setup.kms, size_bytes, &["alice"], &args);
        setup
    }

    /// `--store s3://BUCKET/PREFIX --endpoint URL --credentials-file F`.
    fn store_args(&self) -> Vec<String> {
        self.store_args_for(&format!("s3://{}/{}", self.bucket, self.prefix.as_str()))
    }

    fn store_args_for(&self, url: &str) -> Vec<String> {
        [
            "--store",
            url,
            "--endpoint",
            cluster().endpoint(),
            "--credentials-file",
            self.credentials.to_str().unwrap(),
        ]
        .map(str::to_string)
        .to_vec()
    }

    /// The volume's objects, through our own client.
    fn store(&self) -> S3Store {
        cluster().store(&self.prefix)
    }

    /// Every object under the volume's prefix in its bucket.
    fn objects(&self) -> Vec<lsvblk::objstore::ObjectInfo> {
        let (parent, name) = self.prefix.as_str().rsplit_once('/').unwrap();
        let mut config = cluster().config(&ObjectKey::new(parent).unwrap());
        config.bucket = self.bucket.clone();
        let store = S3Store::new(config, &cluster().credentials()).unwrap();
        store.list(&ObjectKey::new(name).unwrap()).unwrap()
    }

    /// A directory that does not exist yet (as on a new host).
    fn fresh_dir(&self) -> PathBuf {
        self.kms.fresh_path("host", "d")
    }

    fn options(&self, extra: &[&str]) -> ServeOptions {
        let mut options = ServeOptions::args(extra);
        options.lsvblk = lsvblk();
        options.args.extend(self.store_args());
        options
    }

    /// `lsvblk serve --volume DIR --store ... EXTRA`, listening.
    fn serve(&self, dir: &Path, extra: &[&str]) -> Daemon {
        Daemon::start_with(dir, &self.kms, &self.token, &self.options(extra))
    }

    /// The same, returning at once (for a daemon that must refuse).
    fn spawn(&self, dir: &Path, extra: &[&str]) -> Daemon {
        Daemon::spawn_with(dir, &self.kms, &self.token, &self.options(extra))
    }

    /// Alice serves the volume (`--flush remote`) and writes `data` at 0
    /// (flushed); bob joins the ACL and snapshot `snap1` is taken (the new
    /// ACL takes effect there). Her daemon and client.
    fn share_a_snapshot(&self, data: &[u8]) -> (Daemon, BlkClient) {
        let alice = self.serve(&self.volume, &["--flush", "remote"]);
        let mut client = alice.client(1);
        client.write(0, 0, data).unwrap();
        client.flush(0).unwrap();
        self.set_acl("alice,bob");
        let volume = self.volume.to_str().unwrap();
        lsvblk().json(&["snapshot", "create", volume, "snap1", "--json"]);
        (alice, client)
    }

    /// `lsvblk acl set VOLUME --acl ACL` with alice's token.
    fn set_acl(&self, acl: &str) {
        let (volume, kms) = (self.volume.to_str().unwrap(), self.kms.address());
        let token = self.token.to_str().unwrap();
        let args = ["acl", "set", volume, "--acl", acl, "--kms", &kms];
        let mut args = args.to_vec();
        args.extend(["--token-file", token, "--json"]);
        lsvblk().json(&args);
    }

    /// `lsvblk status --json` of the daemon serving `dir`.
    fn status(&self, dir: &Path) -> serde_json::Value {
        lsvblk().json(&["status", dir.to_str().unwrap(), "--json"])
    }
}

impl Drop for Setup {
    /// A passing test's objects go: left behind, every run's objects would
    /// fill the cluster, and a full cluster stalls every PUT (a remote FLUSH
    /// then fails after --store-wait). A failing test's stay for a look.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let Some((parent, name)) = self.prefix.as_str().rsplit_once('/') else {
            return;
        };
        let store = cluster().store(&ObjectKey::new(parent).unwrap());
        if let Ok(objects) = store.list(&ObjectKey::new(name).unwrap()) {
            let keys: Vec<ObjectKey> = objects.into_iter().map(|o| o.key).collect();
            let _ = store.delete(&keys);
        }
    }
}

/// This build's lsvblk, signing for the cluster's region.
fn lsvblk() -> Lsvblk {
    Lsvblk::this_build().with_env("AWS_REGION", cluster().var("AWS_REGION"))
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A `done` for `VerifiedLoad::run`: true once `time` has passed.
fn for_time(time: Duration) -> impl FnMut() -> bool {
    let start = Instant::now();
    move || start.elapsed() >= time
}

/// A daemon that must refuse to serve: its exit code and stderr.
fn refused(mut daemon: Daemon) -> (Option<i32>, String) {
    let status = daemon.wait_exit(Duration::from_secs(120));
    (status.code(), daemon.stderr())
}
