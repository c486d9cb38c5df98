//! The handoff story every test here starts from: lsvkms, alice's volume
//! and everyone's tokens; alice writes, lets bob in and takes a snapshot
//! while her daemon serves the volume.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::kit::blkio::BlkClient;
use super::kit::cli::{lsvblk_json, run_lsvblk};
use super::kit::daemon::{Daemon, create_volume_with};
use super::kit::disk::Disk;
use super::kit::kms::Kms;
use super::{KIB, MIB, SIZE_BYTES, path};

/// Where alice writes before and after the snapshot: several MiB at several
/// offsets, from the first block to the last, one not MiB-aligned.
pub const ALICE_RANGES: [(u64, u64); 4] = [
    (0, 2 * MIB),
    (5 * MIB + 12 * KIB, MIB + 20 * KIB),
    (13 * MIB, 3 * MIB),
    (SIZE_BYTES - MIB, MIB),
];

/// A KMS, alice's volume (ACL alice: she created it) and everyone's tokens.
pub struct Story {
    pub kms: Kms,
    pub volume: PathBuf,
    pub alice: PathBuf,
    pub bob: PathBuf,
    pub mallory: PathBuf,
}

impl Story {
    pub fn new() -> Self {
        let kms = Kms::start();
        let volume = create_volume_with(
            &kms,
            SIZE_BYTES,
            &["alice"],
            4096,
            &["--segment-size", "1M"],
        );
        Self {
            alice: kms.token("alice"),
            bob: kms.token("bob"),
            mallory: kms.token("mallory"),
            kms,
            volume,
        }
    }

    pub fn vol(&self) -> &str {
        path(&self.volume)
    }

    /// `lsvblk serve` of the volume by the owner of `token`.
    pub fn serve(&self, token: &Path, args: &[&str]) -> Daemon {
        Daemon::start(&self.volume, &self.kms, token, args)
    }

    /// `lsvblk serve --snapshot NAME --read-only`, expected to serve.
    pub fn serve_snapshot(&self, token: &Path, name: &str) -> Daemon {
        self.serve(token, &["--snapshot", name, "--read-only"])
    }

    /// `lsvblk acl set` by the owner of `token`.
    pub fn acl_set(&self, acl: &str, token: &Path) -> Output {
        self.run_as(token, &["acl", "set", self.vol(), "--acl", acl])
    }

    /// `lsvblk clone VOLUME SNAPSHOT NEW --acl ACL` by the owner of `token`.
    pub fn clone_snapshot(&self, snapshot: &str, new: &Path, acl: &str, token: &Path) -> Output {
        let args = ["clone", self.vol(), snapshot, path(new), "--acl", acl];
        self.run_as(token, &args)
    }

    /// `lsvblk ARGS --kms KMS --token-file TOKEN --json`: a command that
    /// asks lsvkms as the owner of `token`.
    fn run_as(&self, token: &Path, args: &[&str]) -> Output {
        let kms = self.kms.address();
        let mut all = args.to_vec();
        all.extend(["--kms", &kms, "--token-file", path(token), "--json"]);
        run_lsvblk(&all)
    }

    /// The key the volume writes with now (its id, from volume.json).
    pub fn current_key_id(&self) -> String {
        let text = std::fs::read_to_string(self.volume.join("volume.json")).unwrap();
        let superblock: Value = serde_json::from_str(&text).unwrap();
        superblock["current_key_id"].as_str().unwrap().to_string()
    }

    /// Alice serves her volume, writes `v1` over ALICE_RANGES and flushes,
    /// lets bob in (`acl set alice,bob`), takes snapshot `snap1` while
    /// serving, and writes `v2` over the same ranges.
    pub fn handoff(self) -> Handoff {
        let daemon = self.serve(&self.alice, &[]);
        let mut client = daemon.client(1);
        let mut live = Disk::zeros(SIZE_BYTES);
        for (offset, len) in ALICE_RANGES {
            live.write(&mut client, "alice v1", offset, len);
        }
        client.flush(0).unwrap();
        let at_snapshot = live.clone();

        let output = self.acl_set("alice,bob", &self.alice);
        assert!(
            output.status.success(),
            "acl set: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let changed: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(changed["acl"], serde_json::json!(["alice", "bob"]));
        assert_eq!(changed["key_id"].as_str().unwrap(), self.current_key_id());

        let snapshot = lsvblk_json(&["snapshot", "create", self.vol(), "snap1", "--json"]);
        // The daemon holds the volume's lock: only its control socket could
        // have taken the snapshot.
        let stderr = daemon.stderr();
        assert!(
            stderr.contains("snapshot-create"),
            "not through the daemon:\n{stderr}"
        );

        for (offset, len) in ALICE_RANGES {
            live.write(&mut client, "alice v2", offset, len);
        }
        client.flush(0).unwrap();
        live.check(&mut client, "alice's volume after her new writes");
        Handoff {
            story: self,
            alice_daemon: daemon,
            alice_client: client,
            at_snapshot,
            live,
            snapshot,
        }
    }
}

/// The story after the handoff: alice's daemon still serves.
pub struct Handoff {
    pub story: Story,
    pub alice_daemon: Daemon,
    pub alice_client: BlkClient,
    /// What snap1 must read: alice's v1.
    pub at_snapshot: Disk,
    /// What alice's volume must read: her v2.
    pub live: Disk,
    /// `snapshot create --json`'s answer.
    pub snapshot: Value,
}

/// How long a daemon may take from SIGTERM to exit: flushing and closing a
/// small volume on tmpfs takes milliseconds; the background compactor must
/// not hold it up for its whole poll interval.
const STOP_WAIT_MAX: Duration = Duration::from_secs(1);

impl Handoff {
    /// Stops alice's daemon (background compaction on, as by default).
    pub fn stop_alice(mut self) {
        drop(self.alice_client);
        let started = Instant::now();
        self.alice_daemon.stop_cleanly();
        let took = started.elapsed();
        assert!(took < STOP_WAIT_MAX, "SIGTERM to exit took {took:?}");
    }
}
