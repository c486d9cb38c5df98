//! `lsvblk inspect`: what a volume is, without its key.

use std::path::{Path, PathBuf};

use lsvblk::volume::Superblock;

use crate::exit::{Failure, IO, Outcome};

/// Arguments of `lsvblk inspect`.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// Volume directory.
    #[arg(long)]
    volume: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Prints geometry, key ids with their ACLs, snapshots and log size. Never
/// key material: the volume holds none in the clear, and wrapped blobs are
/// left out too.
pub fn run(args: InspectArgs) -> Outcome {
    let superblock = Superblock::load(&args.volume)?;
    let snapshots = crate::snapshot::snapshot_list(&args.volume)?;
    let (segments, segment_bytes) = dir_stats(&args.volume.join("segments"), "seg")?;
    let (checkpoints, checkpoint_bytes) = dir_stats(&args.volume.join("checkpoints"), "ckpt")?;
    let keys: Vec<_> = superblock
        .keys
        .iter()
        .map(|k| {
            serde_json::json!({
                "key_id": k.key_id,
                "kind": k.kind,
                "current": k.key_id == superblock.current_key_id,
                "wrapped": k.wrapped_blob.is_some(),
                "acl": k.acl,
                "created_unix_s": k.created_unix_s,
            })
        })
        .collect();
    let out = serde_json::json!({
        "volume": args.volume,
        "volume_id": superblock.volume_id,
        "size_bytes": superblock.size_bytes,
        "block_bytes": superblock.block_bytes,
        "segment_bytes": superblock.segment_bytes,
        "cipher": superblock.cipher,
        "current_key_id": superblock.current_key_id,
        "keys": keys,
        "snapshots": snapshots,
        "segments": segments,
        "log_bytes": segment_bytes,
        "checkpoints": checkpoints,
        "checkpoint_bytes": checkpoint_bytes,
    });
    if args.json {
        println!("{out}");
    } else {
        println!("volume      {}", args.volume.display());
        println!("volume id   {}", superblock.volume_id);
        println!(
            "size        {} bytes, {}-byte blocks",
            superblock.size_bytes, superblock.block_bytes
        );
        println!("cipher      {:?}", superblock.cipher);
        for key in &superblock.keys {
            let current = if key.key_id == superblock.current_key_id {
                " (current)"
            } else {
                ""
            };
            println!(
                "key id      {}{current}  acl {}",
                key.key_id,
                key.acl.join(",")
            );
        }
        for s in snapshots.as_array().into_iter().flatten() {
            println!(
                "snapshot    {}  keys {}  acl {}  clones {}",
                s["name"].as_str().unwrap_or(""),
                s["key_ids"],
                s["acl"],
                s["clones"],
            );
        }
        println!("log         {segments} segments, {segment_bytes} bytes");
        println!("checkpoints {checkpoints}, {checkpoint_bytes} bytes");
    }
    Ok(())
}

fn dir_stats(dir: &Path, extension: &str) -> Result<(u64, u64), Failure> {
    let mut count = 0;
    let mut bytes = 0;
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Failure::new(IO, anyhow::anyhow!("{}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        if entry.path().extension().is_some_and(|x| x == extension) {
            count += 1;
            bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    Ok((count, bytes))
}
