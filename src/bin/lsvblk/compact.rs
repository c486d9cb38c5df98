//! `lsvblk compact` and `lsvblk status`: clean the log by hand (with a
//! progress bar), and see space use and what the daemon is doing.

use std::path::PathBuf;

use lsvblk::service::maintenance;

use crate::admin::{self, print};
use crate::control::ControlRequest;
use crate::exit::Outcome;
use crate::progress::BytesProgress;

/// Arguments of `lsvblk compact`.
#[derive(clap::Args)]
pub struct CompactArgs {
    /// Volume directory.
    volume: PathBuf,
    /// Move at most this many MiB per second (0: no limit).
    #[arg(long, default_value_t = 0)]
    rate_mib: u64,
    /// Clean segments whose live data is at most this fraction of them.
    #[arg(long, default_value_t = lsvblk::limits::COMPACT_LIVE_RATIO_DEFAULT)]
    live_ratio_max: f64,
    /// Print one JSON object at the end (no progress bar).
    #[arg(long)]
    json: bool,
}

/// Compacts the volume, through its daemon if one serves it.
pub fn run(args: CompactArgs) -> Outcome {
    let request = ControlRequest::Compact {
        rate_mib_s: Some(args.rate_mib),
        live_ratio_max: Some(args.live_ratio_max),
    };
    let mut bar = BytesProgress::new("compacting", args.json);
    let (rate, ratio) = (args.rate_mib, args.live_ratio_max);
    let out = admin::run_anywhere(
        &args.volume,
        request,
        false,
        &mut |value| bar.update(value),
        |v, p| maintenance::compact(v, Some(rate), Some(ratio), None, p),
    )?;
    bar.finish("compacted");
    print(&out, args.json);
    Ok(())
}

/// Arguments of `lsvblk status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// Volume directory.
    volume: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Shows whether the volume is served, its space use and any running
/// compaction.
pub fn status(args: StatusArgs) -> Outcome {
    let out = admin::run_quietly(&args.volume, ControlRequest::Status, true, |v| {
        let superblock = v.superblock_now()?;
        Ok(serde_json::json!({
            "served": false,
            "space": maintenance::space(v)?,
            "keys": {
                "current_key_id": superblock.current_key_id,
                "keys": v.key_status()?,
                "policy": superblock.key_policy,
                "rotation_due": v.rotation_due()?,
                "rotation": superblock.rotation,
            },
        }))
    })?;
    print(&out, args.json);
    Ok(())
}
