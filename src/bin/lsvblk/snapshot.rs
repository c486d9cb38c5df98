//! `lsvblk snapshot create|list|delete`: point-in-time, read-only views of
//! a volume, taken in O(1) whether or not a daemon serves the volume.

use std::path::{Path, PathBuf};

use lsvblk::service::maintenance;
use lsvblk::volume::{SnapshotPaths, list_snapshots, live_clones};
use serde_json::{Value, json};

use crate::admin::{self, print};
use crate::control::ControlRequest;
use crate::exit::{Failure, Outcome};

/// Arguments of `lsvblk snapshot`.
#[derive(clap::Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(clap::Subcommand)]
enum SnapshotCommand {
    /// Take a snapshot: no data is copied. The snapshot carries the
    /// volume's wrapped keys and its ACL (a pending `lsvblk acl set` takes
    /// effect here). Works on a served volume through its daemon.
    Create {
        /// Volume directory.
        volume: PathBuf,
        /// Snapshot name: 1 to 64 of A-Z a-z 0-9 . _ -
        name: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List the volume's snapshots, oldest first.
    List {
        /// Volume directory.
        volume: PathBuf,
        /// Print one JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot (refused while it is served or has clones); its
    /// blocks become garbage for compaction.
    Delete {
        /// Volume directory.
        volume: PathBuf,
        /// Snapshot name.
        name: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a snapshot subcommand.
pub fn run(args: SnapshotArgs) -> Outcome {
    match args.command {
        SnapshotCommand::Create { volume, name, json } => print(&take(&volume, &name)?, json),
        SnapshotCommand::List { volume, json } => {
            let out = snapshot_list(&volume)?;
            if json {
                println!("{out}");
            } else {
                for s in out.as_array().into_iter().flatten() {
                    println!(
                        "{:<20} {}  keys {}  acl {}  clones {}",
                        s["name"].as_str().unwrap_or(""),
                        s["snapshot_id"].as_str().unwrap_or(""),
                        s["key_ids"],
                        s["acl"],
                        s["clones"],
                    );
                }
            }
        }
        SnapshotCommand::Delete { volume, name, json } => print(&delete(&volume, &name)?, json),
    }
    Ok(())
}

/// Takes snapshot `name` of the volume in `dir`, through the daemon if one
/// serves it.
pub fn take(dir: &Path, name: &str) -> Result<Value, Failure> {
    let request = ControlRequest::SnapshotCreate {
        name: name.to_owned(),
    };
    admin::run_quietly(dir, request, false, |v| {
        maintenance::snapshot_create(v, name)
    })
}

/// Deletes snapshot `name` of the volume in `dir`, through the daemon if
/// one serves it.
pub fn delete(dir: &Path, name: &str) -> Result<Value, Failure> {
    let request = ControlRequest::SnapshotDelete {
        name: name.to_owned(),
    };
    admin::run_quietly(dir, request, false, |v| {
        maintenance::snapshot_delete(v, name)
    })
}

/// The snapshots of the volume in `dir` as JSON (read from their metadata
/// blocks: no lock, no daemon needed).
pub fn snapshot_list(dir: &Path) -> Result<Value, Failure> {
    let mut out = Vec::new();
    for meta in list_snapshots(dir)? {
        let paths = SnapshotPaths::new(dir, &meta.name);
        let clones = live_clones(&paths, &meta.snapshot_id)?;
        let index_bytes = std::fs::metadata(&paths.index).map_or(0, |m| m.len());
        out.push(json!({
            "name": meta.name,
            "snapshot_id": meta.snapshot_id,
            "created_unix_s": meta.created_unix_s,
            "size_bytes": meta.size_bytes,
            "current_key_id": meta.current_key_id,
            "key_ids": meta.keys.iter().map(|k| k.key_id).collect::<Vec<_>>(),
            "acl": meta.acl,
            "index_bytes": index_bytes,
            "clones": clones,
        }));
    }
    Ok(serde_json::Value::Array(out))
}
