//! `lsvblk import` and `lsvblk export`: raw disk images in and out of a
//! volume, sparse-aware both ways (holes are not read, all-zero blocks are
//! not written: a hole stays a hole). Other formats (qcow2, vmdk, ...) go
//! through `qemu-img convert` to or from a raw file or a pipe.

mod export;
mod import;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lsvblk::crypto::DataKey;
use lsvblk::volume::{KeyEntry, Superblock};
use serde_json::{Value, json};

use crate::exit::Failure;
use crate::keys::{read_token, unwrap_all};
use crate::kms::{client, parse_kms_address, parse_kms_timeout};

pub use export::{ExportArgs, export};
pub use import::{ImportArgs, import};

/// Bytes read and written at a time.
const CHUNK_BYTES: usize = 4 << 20;

/// How to get the volume's keys: as `lsvblk serve` does.
#[derive(clap::Args)]
pub struct KeyArgs {
    /// The key-wrapping service: unix:PATH of its socket.
    #[arg(long, value_parser = parse_kms_address)]
    kms: PathBuf,
    /// File holding the user's token (from `lsvkms token issue`).
    #[arg(long)]
    token_file: PathBuf,
    /// How long to keep trying while lsvkms is down, busy or silent; then
    /// exit 69.
    #[arg(long, default_value = "30s", value_parser = parse_kms_timeout)]
    kms_timeout: Duration,
}

impl KeyArgs {
    /// Unwraps `entries` (the volume's or a snapshot's key set) of the
    /// volume described by `superblock` with the user's token.
    fn unwrap(
        &self,
        superblock: &Superblock,
        entries: &[KeyEntry],
    ) -> Result<Vec<DataKey>, Failure> {
        let token = read_token(&self.token_file)?;
        let kms = client(&self.kms).retrying_for(self.kms_timeout);
        unwrap_all(&kms, &token, &superblock.volume_id, entries)
    }
}

/// What an import or export moved: for the summary line and `--json`.
#[derive(Default)]
struct Tally {
    /// Bytes of the image (the volume's size for an export).
    image_bytes: u64,
    /// Bytes holding data, written.
    data_bytes: u64,
    /// Bytes that were all-zero blocks, not written.
    zero_bytes: u64,
    /// Bytes in holes of the source, not even read.
    hole_bytes: u64,
}

impl Tally {
    fn summary(&self, what: &str, volume: &Path, file: &Path, started: Instant) -> Value {
        let seconds = started.elapsed().as_secs_f64();
        json!({
            "operation": what,
            "volume": volume.display().to_string(),
            "image": file.display().to_string(),
            "image_bytes": self.image_bytes,
            "data_bytes": self.data_bytes,
            "zero_bytes": self.zero_bytes,
            "hole_bytes": self.hole_bytes,
            "seconds": seconds,
            "mib_per_s": self.image_bytes as f64 / f64::from(1 << 20) / seconds.max(1e-9),
        })
    }
}

/// True for the path `-` (stdin or stdout).
fn is_stdio(path: &Path) -> bool {
    path.as_os_str() == "-"
}
