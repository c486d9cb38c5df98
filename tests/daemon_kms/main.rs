//! What a serving daemon asks lsvkms, and what lsvkms tells users, end to
//! end with a real `lsvkms`, real `lsvblk serve` daemons and the command
//! lines of both (see `tests/kit`).
//!
//! - [`polling`]: an hour of a daemon's key polls (1 800 at 2 s, made
//!   seconds by `serve --background-poll-ms`) adds audit records only for
//!   what changed, and a disabled key still shows in the daemon's status
//!   within a poll.
//! - [`key_list`]: `lsvkms keys list --token-file` shows a user the keys
//!   whose ACL lists them (contexts, ACL, states, times, rotation links),
//!   never key material; a rotation shows a new key and a destroyed one; a
//!   user taken off the ACL stops seeing the key; every listing is audited.
//! - [`leases`]: a daemon served with a token that expires in 5 s and
//!   `--lease` outlives it: restarted with SIGTERM it comes back without a
//!   token; after `lsvkms lease revoke`, a disabled key or its user taken
//!   off the ACL, a restart is refused (77).

#[path = "../kit/mod.rs"]
mod kit;

mod key_list;
mod leases;
mod polling;

use std::path::{Path, PathBuf};

use lsvblk::kms::api::KeyContext;
use serde_json::Value;

use kit::cli::lsvblk_json;
use kit::daemon::create_volume;
use kit::data::BLOCK;
use kit::kms::Kms;

const MIB: u64 = 1 << 20;

/// A KMS, alice's token, and her 8 MiB volume.
pub struct Setup {
    pub kms: Kms,
    pub alice: PathBuf,
    pub volume: PathBuf,
}

impl Setup {
    pub fn start() -> Self {
        let kms = Kms::start();
        let volume = create_volume(&kms, 8 * MIB, &["alice"], BLOCK as u32);
        Self {
            alice: kms.token("alice"),
            kms,
            volume,
        }
    }

    pub fn vol(&self) -> &str {
        path(&self.volume)
    }

    /// The volume's id, from its volume.json.
    pub fn volume_id(&self) -> String {
        let text = std::fs::read_to_string(self.volume.join("volume.json")).unwrap();
        let superblock: Value = serde_json::from_str(&text).unwrap();
        superblock["volume_id"].as_str().unwrap().to_owned()
    }

    /// `lsvblk status VOLUME --json` (through the serving daemon).
    pub fn status(&self) -> Value {
        lsvblk_json(&["status", self.vol(), "--json"])
    }

    /// The records of lsvkms's audit log, oldest first.
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.kms.audit_path())
            .unwrap()
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// How many audit records have `action`.
    pub fn audited(&self, action: &str) -> usize {
        self.audit()
            .iter()
            .filter(|r| r["action"] == action)
            .count()
    }
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The wrapped blob of key `key_id` in `volume`'s volume.json.
pub fn blob_of(volume: &Path, key_id: &str) -> Vec<u8> {
    use base64::Engine;
    let text = std::fs::read_to_string(volume.join("volume.json")).unwrap();
    let superblock: Value = serde_json::from_str(&text).unwrap();
    let entry = superblock["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == key_id)
        .unwrap_or_else(|| panic!("no key {key_id} in {superblock}"));
    base64::engine::general_purpose::STANDARD
        .decode(entry["wrapped_blob"].as_str().unwrap())
        .unwrap()
}

/// The key context of volume `volume_id`.
pub fn context(volume_id: &str) -> KeyContext {
    KeyContext {
        volume_id: volume_id.to_owned(),
        snapshot_id: String::new(),
    }
}
