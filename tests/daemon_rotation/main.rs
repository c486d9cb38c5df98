//! The online key lifecycle of a served volume, end to end, with a real
//! `lsvkms`, real `lsvblk serve` daemons, the `lsvblk` command line and
//! libblkio as the VMM (see `tests/kit`). Every check of data compares the
//! bytes a daemon returns with a model of the disk.
//!
//! - [`under_load`]: `lsvblk rotate` re-encrypts 32 MiB (at 16 MiB/s)
//!   while a client writes and reads random 4–64 KiB ranges, every read
//!   checked: no I/O error, no mismatch. Afterwards `status` shows the new
//!   key, lsvkms has destroyed the old one (its blob unwraps no more), no
//!   record header in any segment file names it, and the daemon's memory
//!   (every readable mapping, read through /proc/PID/mem) holds no 16
//!   bytes of it (not the key, its halves, nor an AES round key made of
//!   it) and not its base64. The new key is found, and only in locked
//!   (mlock) pages.
//! - [`policy`]: with small limits set by `lsvblk policy` (live bytes, then
//!   bytes ever encrypted) and a moved clock (`serve --clock-skew-file`:
//!   +91 days, then the key 121 days old with rotation by age off), the
//!   daemon rotates by itself and `status` names the reason each time; no
//!   key it rotated away from is left in its memory.
//! - [`compromise`]: with lsvkms stopped (the daemon serves on and reports
//!   it), an allowed unwrap by a user not on the ACL is appended to its
//!   audit log; `lsvkms audit check` marks the key compromised; lsvkms
//!   restarts; the same daemon rotates within seconds and lsvkms destroys
//!   the key.
//! - [`crash`]: kill -9 at 20 random points of a rotation (half of them
//!   within 80 ms of a daemon's start), each daemon restarted and resuming
//!   it by itself: it completes, every byte matches, no record under the
//!   old key remains. A rotation that ends while lsvkms is down owes it the
//!   old key's destruction; a daemon killed then still pays after its
//!   restart.
//! - [`snapshot`]: a snapshot keeps the old key (in lsvkms too) until it is
//!   deleted, while the volume's own blocks are all re-encrypted.
//! - [`rewrap`]: wrapping-key rotation in lsvkms: the daemon rewraps its
//!   volume's and snapshot's blobs by itself; `lsvblk rewrap` does it for a
//!   volume no daemon serves; the new blobs open all of them once lsvkms
//!   refuses the old wrapping key.
//!
//! Random choices come from a seed printed at the start of each test; set
//! `LSVBLK_TEST_SEED` to replay one.

#[path = "../kit/mod.rs"]
mod kit;

mod compromise;
mod crash;
mod files;
mod policy;
mod rewrap;
mod snapshot;
mod under_load;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lsvblk::kms::api::KeyContext;
use serde_json::Value;

use files::{blobs, superblock};
use kit::cli::{lsvblk_json, wait_for};
use kit::daemon::{Daemon, create_volume_with};
use kit::data::BLOCK;
use kit::kms::Kms;

const MIB: u64 = 1 << 20;
/// How long the daemon may take to act on its own: it looks at its keys
/// every 2 s, and a rotation of a few MiB takes well under a second.
const ACT_WAIT: Duration = Duration::from_secs(15);

/// A KMS, alice's token, and her volume.
pub struct Setup {
    pub kms: Kms,
    pub alice: PathBuf,
    pub volume: PathBuf,
    pub size: u64,
}

impl Setup {
    /// A `size` volume of 1 MiB segments, ACL alice, made by `lsvblk create`
    /// with `create_args`.
    pub fn new(size: u64, create_args: &[&str]) -> Self {
        let kms = Kms::start();
        let mut args = vec!["--segment-size", "1M"];
        args.extend_from_slice(create_args);
        let volume = create_volume_with(&kms, size, &["alice"], BLOCK as u32, &args);
        Self {
            alice: kms.token("alice"),
            kms,
            volume,
            size,
        }
    }

    pub fn vol(&self) -> &str {
        path(&self.volume)
    }

    pub fn serve(&self, args: &[&str]) -> Daemon {
        Daemon::start(&self.volume, &self.kms, &self.alice, args)
    }

    pub fn status(&self) -> Value {
        lsvblk_json(&["status", self.vol(), "--json"])
    }

    /// alice's token, as lsvkms takes it.
    pub fn alice_token(&self) -> String {
        fs::read_to_string(&self.alice).unwrap().trim().to_owned()
    }

    /// The volume's data key `key_id`, unwrapped from its blob in
    /// volume.json with alice's token as a daemon does: its 64 bytes.
    pub fn data_key(&self, key_id: &str) -> Vec<u8> {
        let superblock = superblock(&self.volume);
        let (_, blob) = blobs(&superblock)
            .into_iter()
            .find(|(id, _)| id == key_id)
            .unwrap_or_else(|| panic!("no key {key_id} in volume.json"));
        let key = self
            .kms
            .client()
            .unwrap(&blob, &self.context(), &self.alice_token())
            .unwrap();
        assert_eq!(key.id().to_string(), key_id);
        key.expose_secret().to_vec()
    }

    /// [`Setup::data_key`], or `None` if lsvkms no longer unwraps the key
    /// (a rotation destroyed it meanwhile).
    pub fn try_data_key(&self, key_id: &str) -> Option<Vec<u8>> {
        let (_, blob) = blobs(&superblock(&self.volume))
            .into_iter()
            .find(|(id, _)| id == key_id)?;
        let key = self
            .kms
            .client()
            .unwrap(&blob, &self.context(), &self.alice_token())
            .ok()?;
        Some(key.expose_secret().to_vec())
    }

    /// The context the volume's keys are sealed for.
    pub fn context(&self) -> KeyContext {
        KeyContext {
            volume_id: superblock(&self.volume)["volume_id"]
                .as_str()
                .unwrap()
                .to_owned(),
            snapshot_id: String::new(),
        }
    }

    /// lsvkms's word on a key: `enabled`, `compromised`, `destroyed`...
    pub fn key_status(&self, key_id: &str) -> String {
        let info = self.kms.client().key_info(key_id.parse().unwrap()).unwrap();
        info.status
    }
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The key ids of `status`'s `keys.keys`.
pub fn status_key_ids(status: &Value) -> Vec<String> {
    status["keys"]["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("no keys in {status}"))
        .iter()
        .map(|k| k["key_id"].as_str().unwrap().to_owned())
        .collect()
}

pub fn current_key(status: &Value) -> String {
    status["keys"]["current_key_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no current key in {status}"))
        .to_owned()
}

/// Checks that `outcome.FIELD` of the answer of `lsvblk rotate --json` is
/// exactly `keys`.
pub fn assert_outcome(rotated: &Value, field: &str, keys: &[&str]) {
    assert_eq!(
        rotated["outcome"][field],
        serde_json::json!(keys),
        "{field}: {rotated}"
    );
}

/// Waits until `status` says the last rotation was for `reason` and none
/// is in progress; returns that status.
pub fn wait_for_rotation(setup: &Setup, reason: &str) -> Value {
    let last = std::cell::RefCell::new(Value::Null);
    wait_for(
        &format!("a rotation for {reason}"),
        ACT_WAIT,
        || {
            let status = setup.status();
            let keys = &status["keys"];
            let done = keys["last_rotation"]["reason"] == reason && keys["rotation"].is_null();
            *last.borrow_mut() = status.clone();
            done.then_some(status)
        },
        || format!("status: {}", last.borrow()),
    )
}
