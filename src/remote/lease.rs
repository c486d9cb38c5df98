//! Fencing: one writer per volume, by epoch-numbered lease objects.
//!
//! A writer claims epoch `E + 1` (the newest lease is `E`) with a
//! conditional create of `lease/<E + 1>`: of two racing writers exactly one
//! gets it. Everything an epoch writes lives under `e<epoch>/`, and a new
//! epoch names what it adopts from older ones in its base manifest, so the
//! objects a fenced writer keeps writing under its old epoch are never read
//! again. A writer checks before a remote flush returns (and now and then)
//! that no newer lease exists, and stops when one does.
//!
//! A lease is free when its writer released it (`lease/<E>.released`, on a
//! clean stop), when it is this host's and directory's and its process is
//! gone (a crash; the directory's own lock keeps two local writers apart),
//! or when the caller takes over (`--takeover`: its host is lost).

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::{RemoteError, Result};
use super::layout::{LEASE_DIR, lease_key, released_key, root_key};
use crate::objstore::{Error as StoreError, ObjectStore, PutOutcome};

/// Who holds a lease (the lease object's body).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The epoch.
    pub epoch: u64,
    /// Host name of the writer.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// Its volume directory.
    pub dir: String,
    /// When it claimed the lease, seconds since the Unix epoch.
    pub claimed_unix_s: u64,
    /// Random, so that every claim's bytes differ (see `put_if_absent`).
    pub nonce: String,
}

impl Holder {
    /// This process, about to claim `epoch` for `dir`.
    pub fn this_process(epoch: u64, dir: &Path) -> Self {
        let mut nonce = [0u8; 8];
        // A failed getrandom leaves zeros: the nonce only tells attempts apart.
        let _ = getrandom::fill(&mut nonce);
        Self {
            epoch,
            host: host_name(),
            pid: std::process::id(),
            dir: dir.display().to_string(),
            claimed_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            nonce: hex::encode(nonce),
        }
    }

    fn describe(&self) -> String {
        format!("host {}, pid {}, {}", self.host, self.pid, self.dir)
    }

    /// True when this is a writer on this host and directory whose process
    /// is gone (it crashed; we may reclaim its volume).
    fn crashed_here(&self, dir: &Path) -> bool {
        self.host == host_name()
            && self.dir == dir.display().to_string()
            && !Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// The leases in the store.
#[derive(Clone, Debug, Default)]
pub struct Leases {
    /// Every epoch with a lease, ascending.
    pub epochs: Vec<u64>,
    /// The epochs whose writer stopped cleanly.
    pub released: BTreeSet<u64>,
}

impl Leases {
    /// Lists the leases.
    pub fn read(store: &dyn ObjectStore) -> Result<Self> {
        let mut leases = Leases::default();
        for object in store.list(&root_key(LEASE_DIR))? {
            let name = object.key.as_str().trim_start_matches("lease/");
            let (number, released) = match name.strip_suffix(".released") {
                Some(number) => (number, true),
                None => (name, false),
            };
            let Ok(epoch) = u64::from_str_radix(number, 16) else {
                continue;
            };
            if released {
                leases.released.insert(epoch);
            } else {
                leases.epochs.push(epoch);
            }
        }
        leases.epochs.sort_unstable();
        Ok(leases)
    }

    /// The newest epoch (0: none yet).
    pub fn newest(&self) -> u64 {
        self.epochs.last().copied().unwrap_or(0)
    }

    /// Refuses unless the newest lease is free for a writer in `dir` (see
    /// the module doc); `takeover` frees it regardless.
    pub fn check_free(&self, store: &dyn ObjectStore, dir: &Path, takeover: bool) -> Result<()> {
        let epoch = self.newest();
        if epoch == 0 || takeover || self.released.contains(&epoch) {
            return Ok(());
        }
        let holder: Holder = match store.get(&lease_key(epoch)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RemoteError::Corrupt {
                key: lease_key(epoch).as_str().to_string(),
                reason: e.to_string(),
            })?,
            Err(StoreError::NotFound { .. }) => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        if holder.crashed_here(dir) {
            tracing::info!(
                epoch,
                "reclaiming the lease of a crashed writer of this directory"
            );
            return Ok(());
        }
        Err(RemoteError::Held {
            epoch,
            holder: holder.describe(),
        })
    }
}

/// Claims `epoch` for `dir`; another writer that claimed it first wins.
pub fn claim(store: &dyn ObjectStore, epoch: u64, dir: &Path) -> Result<()> {
    let holder = Holder::this_process(epoch, dir);
    let body = serde_json::to_vec(&holder).expect("a holder serializes");
    match store.put_if_absent(&lease_key(epoch), Bytes::from(body))? {
        PutOutcome::Created => Ok(()),
        PutOutcome::AlreadyExists => Err(RemoteError::Held {
            epoch,
            holder: "a writer that claimed it a moment before us".to_string(),
        }),
    }
}

/// Fails with [`RemoteError::Fenced`] if a newer epoch than ours exists.
pub fn check_not_fenced(store: &dyn ObjectStore, epoch: u64) -> Result<()> {
    match store.head(&lease_key(epoch + 1)) {
        Ok(_) => Err(RemoteError::Fenced {
            epoch,
            by: epoch + 1,
        }),
        Err(StoreError::NotFound { .. }) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Marks our lease released: the next writer may claim the volume without
/// `--takeover`.
pub fn release(store: &dyn ObjectStore, epoch: u64) -> Result<()> {
    store.put(&released_key(epoch), Bytes::from_static(b"released\n"))?;
    Ok(())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_default()
}
