//! `lsvblk scrub VOLUME`: read every block of the volume through the
//! checked read path (CRC, then the block's tag, before decryption) and
//! report the blocks that fail; exit 65 when any does. Through the daemon
//! serving the volume, else here with the volume's key (`--kms`,
//! `--token-file`).

use std::path::PathBuf;
use std::time::Duration;

use lsvblk::volume::{ScrubReport, Superblock, Volume, VolumeError, VolumeLock, VolumeOptions};
use serde_json::{Value, json};

use crate::admin::print;
use crate::control::{self, ControlRequest};
use crate::exit::{Failure, Outcome};
use crate::keys::{read_token, unwrap_all};
use crate::kms::{client, parse_kms_address, parse_kms_timeout};
use crate::progress::BytesProgress;

/// Arguments of `lsvblk scrub`.
#[derive(clap::Args)]
pub struct ScrubArgs {
    /// Volume directory (served or not).
    volume: PathBuf,
    /// The key-wrapping service (unix:PATH of its socket), for the
    /// volume's key when no daemon serves it.
    #[arg(long, value_parser = parse_kms_address)]
    kms: Option<PathBuf>,
    /// File holding the user's token (from `lsvkms token issue`), with --kms.
    #[arg(long, requires = "kms")]
    token_file: Option<PathBuf>,
    /// How long to keep trying while lsvkms is down, busy or silent.
    #[arg(long, default_value = "30s", value_parser = parse_kms_timeout)]
    kms_timeout: Duration,
    /// Print one JSON object at the end (no progress bar).
    #[arg(long)]
    json: bool,
}

/// Scrubs the volume; damage exits 65.
pub fn run(args: ScrubArgs) -> Outcome {
    let mut bar = BytesProgress::new("scrubbing", args.json);
    let out = match VolumeLock::acquire(&args.volume, true) {
        Ok(lock) => scrub_here(&args, lock, &mut |value| bar.update(&value))?,
        Err(VolumeError::Busy { .. }) => control::call(
            &control::control_socket_path(&args.volume),
            &ControlRequest::Scrub,
            &mut |value| bar.update(value),
        )?,
        Err(error) => return Err(error.into()),
    };
    bar.finish("scrubbed");
    print(&out, args.json);
    let damaged = out["damaged"].as_array().map_or(0, Vec::len);
    if damaged > 0 {
        let first = out["damaged"][0]["error"]
            .as_str()
            .unwrap_or("")
            .to_string();
        return Err(Failure::Unreadable {
            runs: damaged,
            first,
        });
    }
    Ok(())
}

/// Opens the volume here (read-only, with its key) and scrubs it.
fn scrub_here(
    args: &ScrubArgs,
    lock: VolumeLock,
    progress: &mut dyn FnMut(Value),
) -> Result<Value, Failure> {
    let (Some(kms), Some(token_file)) = (&args.kms, &args.token_file) else {
        return Err(Failure::Usage(anyhow::anyhow!(
            "no daemon serves {}: scrubbing reads every block, so it needs the volume's key (--kms and --token-file)",
            args.volume.display()
        )));
    };
    let superblock = Superblock::load(&args.volume)?;
    let token = read_token(token_file)?;
    let kms = client(kms).retrying_for(args.kms_timeout);
    let keys = unwrap_all(&kms, &token, &superblock.volume_id, &superblock.keys)?;
    let options = VolumeOptions {
        read_only: true,
        ..VolumeOptions::default()
    };
    let volume = Volume::open_locked(&args.volume, lock, keys, &options)?;
    let report = volume.scrub(&mut |done, total| progress(scrub_progress(done, total)))?;
    Ok(report_json(&report))
}

/// A scrub's progress value, as compaction's (bytes done of bytes in all).
pub fn scrub_progress(done: u64, total: u64) -> Value {
    json!({ "bytes_moved": done, "bytes_total": total })
}

/// A scrub's report as printed (and answered by a daemon).
pub fn report_json(report: &ScrubReport) -> Value {
    json!(report)
}
