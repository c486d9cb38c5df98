//! The Ceph cluster of `ci/ceph.sh` (three OSDs, radosgw on loopback), for
//! the object-store tests and benchmark.
//!
//! The cluster is one per machine and may be shared by several test runs, so
//! two conventions keep them from pulling it out from under each other:
//! - every user holds `$LSVBLK_CEPH_DIR.users` shared for as long as it
//!   runs (`ci/ceph.sh use` takes the cluster down only when it can lock it
//!   exclusively);
//! - a test that stops a daemon (kills an OSD, stops radosgw) holds
//!   `$LSVBLK_CEPH_DIR.faults` exclusively, every other test shared: no test
//!   sees another's fault, and two faults never overlap (two OSDs down would
//!   stop I/O by design: min_size is 2).
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use lsvblk::objstore::{Credentials, ObjectKey, S3Config, S3Store};

/// The running cluster's S3 settings.
pub struct Cluster {
    env: BTreeMap<String, String>,
    state_dir: PathBuf,
    _users: File,
}

/// The cluster `ci/ceph.sh up` started. Panics, saying how to start it, if
/// it is not up: these tests never skip (ci/test.sh starts the cluster).
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let output = ceph_sh(&["env"]);
        assert!(
            output.status.success(),
            "the Ceph cluster is not up (`ci/ceph.sh env`: {}). Start it with `ci/ceph.sh up` \
             (as root; ci/test.sh does this itself)",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let env = parse_exports(&String::from_utf8_lossy(&output.stdout));
        let state_dir = PathBuf::from(&env["LSVBLK_CEPH_DIR"]);
        let users = lock_file(&with_suffix(&state_dir, ".users"), false);
        Cluster {
            env,
            state_dir,
            _users: users,
        }
    })
}

impl Cluster {
    /// A setting from `ci/ceph.sh env` (e.g. `AWS_ENDPOINT_URL`).
    pub fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("ci/ceph.sh env has no {name}"))
    }

    /// The S3 endpoint, e.g. `http://127.0.0.1:7480`.
    pub fn endpoint(&self) -> &str {
        self.var("AWS_ENDPOINT_URL")
    }

    /// The bucket `ci/ceph.sh up` made.
    pub fn bucket(&self) -> &str {
        self.var("LSVBLK_S3_BUCKET")
    }

    /// The S3 user's credentials.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(
            self.var("AWS_ACCESS_KEY_ID"),
            self.var("AWS_SECRET_ACCESS_KEY"),
        )
        .unwrap()
    }

    /// Settings for the cluster's bucket under `prefix`.
    pub fn config(&self, prefix: &ObjectKey) -> S3Config {
        let mut config = S3Config::new(self.endpoint(), self.bucket());
        config.region = self.var("AWS_REGION").to_string();
        config.prefix = Some(prefix.clone());
        config
    }

    /// A store on the cluster's bucket under `prefix`.
    pub fn store(&self, prefix: &ObjectKey) -> S3Store {
        S3Store::new(self.config(prefix), &self.credentials()).unwrap()
    }

    /// radosgw's log (one line per request).
    pub fn rgw_log(&self) -> PathBuf {
        self.state_dir.join("log/client.rgw.s3.log")
    }

    /// Holds the fault lock: exclusive for a test that stops daemons,
    /// shared for every other (see the module doc).
    pub fn fault_lock(&self, exclusive: bool) -> File {
        lock_file(&with_suffix(&self.state_dir, ".faults"), exclusive)
    }
}

/// A key prefix no other test run uses: `tests/NAME-RANDOM`.
pub fn unique_prefix(name: &str) -> ObjectKey {
    let mut random = [0u8; 6];
    getrandom::fill(&mut random).unwrap();
    ObjectKey::new(format!("tests/{name}-{}", hex::encode(random))).unwrap()
}

/// Runs `ci/ceph.sh ARGS`, panicking if it fails.
pub fn ceph_sh_ok(args: &[&str]) {
    let output = ceph_sh(args);
    assert!(
        output.status.success(),
        "ci/ceph.sh {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `ci/ceph.sh ARGS`.
pub fn ceph_sh(args: &[&str]) -> std::process::Output {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/ceph.sh"))
        .args(args)
        .output()
        .expect("ci/ceph.sh runs")
}

/// Stops a daemon for its lifetime: brings it back on drop (also when the
/// test fails), so one failed test never leaves the cluster degraded.
pub struct Fault {
    start: &'static str,
    argument: Option<String>,
}

impl Fault {
    /// kill -9 of OSD `id`.
    pub fn kill_osd(id: u32) -> Fault {
        ceph_sh_ok(&["osd-kill", &id.to_string()]);
        Fault {
            start: "osd-start",
            argument: Some(id.to_string()),
        }
    }

    /// radosgw stopped.
    pub fn stop_rgw() -> Fault {
        ceph_sh_ok(&["rgw-stop"]);
        Fault {
            start: "rgw-start",
            argument: None,
        }
    }

    /// Brings the daemon back now (waits until it serves).
    pub fn end(mut self) {
        self.restart();
    }

    fn restart(&mut self) {
        let start = std::mem::take(&mut self.start);
        if start.is_empty() {
            return;
        }
        let mut args = vec![start];
        args.extend(self.argument.as_deref());
        ceph_sh_ok(&args);
    }
}

impl Drop for Fault {
    fn drop(&mut self) {
        self.restart();
    }
}

fn parse_exports(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn lock_file(path: &Path, exclusive: bool) -> File {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let locked = if exclusive {
        file.lock()
    } else {
        file.lock_shared()
    };
    locked.unwrap_or_else(|error| panic!("lock {}: {error}", path.display()));
    file
}
