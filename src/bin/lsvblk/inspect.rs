//! `lsvblk inspect`: what a volume is, without its key.

use std::path::{Path, PathBuf};

use lsvblk::remote::SegmentCache;
use lsvblk::store::{CheckDepth, DamageReport};
use lsvblk::volume::{Integrity, Superblock, check_files_evicted, pending_acl};

use crate::admin;
use crate::control::ControlRequest;
use crate::exit::{Failure, Outcome};
use lsvblk::service::maintenance;

/// Arguments of `lsvblk inspect`.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// Volume directory.
    #[arg(long)]
    volume: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Check only checkpoints and segment headers, not every record (the
    /// full check reads the whole log).
    #[arg(long)]
    quick: bool,
}

/// Prints geometry, key ids, ACLs, snapshots, log size and live/dead bytes,
/// and what a keyless check of the files found; damage exits 65 (after the
/// report). Never key material: the volume holds none in the clear.
pub fn run(args: InspectArgs) -> Outcome {
    let superblock = Superblock::load(&args.volume)?;
    let depth = if args.quick {
        CheckDepth::Headers
    } else {
        CheckDepth::Records
    };
    let damage = check_store_volume_files(&args.volume, depth)?;
    let described = describe(&args, &superblock, &damage);
    match (described, damage.is_clean()) {
        (Ok(()), true) => Ok(()),
        (Ok(()), false) => Err(Failure::Damaged(damage)),
        // The open failed on what the check found: the check says more.
        (Err(_), false) => Err(Failure::Damaged(damage)),
        (Err(failure), true) => Err(failure),
    }
}

/// The keyless check of the files. Segments evicted from a store
/// volume's cache hold only their header and seal: not damage, checked as
/// far as they are here. A daemon serving the volume may evict more while
/// the check reads (it lists a segment in `cache.json` before it punches
/// the hole): the check runs again when that list changed under it.
fn check_store_volume_files(dir: &Path, depth: CheckDepth) -> Result<DamageReport, Failure> {
    let evicted_now = || SegmentCache::persisted_evicted(dir).map_err(Failure::Remote);
    let mut evicted = evicted_now()?;
    for _ in 0..3 {
        let damage = check_files_evicted(dir, depth, &evicted)?;
        let after = evicted_now()?;
        if after == evicted || damage.is_clean() {
            return Ok(damage);
        }
        evicted = after;
    }
    Ok(check_files_evicted(dir, depth, &evicted)?)
}

fn describe(args: &InspectArgs, superblock: &Superblock, damage: &DamageReport) -> Outcome {
    let (segments, segment_bytes) = dir_stats(&args.volume.join("segments"), "seg")?;
    let (checkpoints, checkpoint_bytes) = dir_stats(&args.volume.join("checkpoints"), "ckpt")?;
    let snapshots = crate::snapshot::snapshot_list(&args.volume)?;
    let pending = pending_acl(&args.volume)?;
    // Live and dead bytes need the index: from the daemon if one serves the
    // volume, else from a read-only open here (no key needed).
    let status = admin::run_quietly(&args.volume, ControlRequest::Status, true, |v| {
        Ok(serde_json::json!({ "space": maintenance::space(v)? }))
    })?;
    let space = status["space"].clone();
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
                "sealed_for_volume": k.context_volume_id.as_deref().unwrap_or(&superblock.volume_id),
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
        "integrity": superblock.integrity,
        "authenticated": superblock.integrity == Integrity::Mac,
        "current_key_id": superblock.current_key_id,
        "keys": keys,
        "segments": segments,
        "log_bytes": segment_bytes,
        "checkpoints": checkpoints,
        "checkpoint_bytes": checkpoint_bytes,
        "parent": superblock.parent,
        "base": superblock.base,
        "pending_acl": pending.as_ref().map(|p| &p.acl),
        "snapshots": snapshots,
        "space": space,
        "damage": damage,
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
        println!("integrity   {}", integrity_line(superblock.integrity));
        println!("key id      {} (current)", superblock.current_key_id);
        println!("log         {segments} segments, {segment_bytes} bytes");
        println!("checkpoints {checkpoints}, {checkpoint_bytes} bytes");
        println!(
            "space       {} live bytes, {} dead bytes",
            space["live_bytes"], space["dead_bytes"]
        );
        if let Some(base) = space["base"].as_object() {
            let from_base = base["from_base_bytes"].as_u64().unwrap_or(0);
            println!(
                "base        {} ({} bytes, read-only): {from_base} bytes still read from it, {} bytes held by the volume (encrypted) ({:.1}% of the disk)",
                base["image"].as_str().unwrap_or("?"),
                base["image_bytes"],
                base["held_bytes"],
                100.0 * base["held_bytes"].as_u64().unwrap_or(0) as f64
                    / superblock.size_bytes as f64
            );
        }
        for key in &superblock.keys {
            println!("key         {} acl {}", key.key_id, key.acl.join(","));
        }
        if let Some(parent) = &superblock.parent {
            println!(
                "clone of    snapshot {} of {}",
                parent.snapshot,
                parent.volume_dir.display()
            );
        }
        println!(
            "check       {} segments, {} checkpoints, {} bytes read: {} problem(s)",
            damage.segments_checked,
            damage.checkpoints_checked,
            damage.bytes_checked,
            damage.findings.len()
        );
        if damage.segments_evicted > 0 {
            println!(
                "evicted     {} segments: their records are in the object store only (the cache evicted them); header and seal checked",
                damage.segments_evicted
            );
        }
        for finding in &damage.findings {
            println!("damage      {:?}: {}", finding.kind, finding.detail);
        }
        for snapshot in snapshots.as_array().into_iter().flatten() {
            let acl: Vec<&str> = snapshot["acl"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str())
                .collect();
            println!(
                "snapshot    {} keys {} acl {} clones {}",
                snapshot["name"].as_str().unwrap_or(""),
                snapshot["key_ids"],
                acl.join(","),
                snapshot["clones"]
            );
        }
    }
    Ok(())
}

fn dir_stats(dir: &Path, extension: &str) -> Result<(u64, u64), Failure> {
    let mut count = 0;
    let mut bytes = 0;
    let entries =
        std::fs::read_dir(dir).map_err(|e| Failure::io(format!("{}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        if entry.path().extension().is_some_and(|x| x == extension) {
            count += 1;
            bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    Ok((count, bytes))
}

/// What `inspect` says about a volume's integrity.
fn integrity_line(integrity: Integrity) -> &'static str {
    match integrity {
        Integrity::Mac => "mac: every block is authenticated (a tag checked before decryption)",
        Integrity::Crc => {
            "crc: blocks are NOT authenticated (CRCs only: a volume created before MACs)"
        }
    }
}
