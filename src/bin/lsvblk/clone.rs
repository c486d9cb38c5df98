//! `lsvblk clone`: a writable volume on a snapshot. It shares the
//! snapshot's blocks (copy-on-write: its writes go to its own log) and has
//! its own data key, from lsvkms, for new writes; the snapshot's blocks keep
//! their key ids. The user must be on the snapshot's ACL.

use std::path::PathBuf;

use lsvblk::service::{NewClone, clone_snapshot};
use serde_json::json;

use crate::admin::print;
use crate::exit::{Failure, Outcome};
use crate::kms::NewAclArgs;

/// Arguments of `lsvblk clone`.
#[derive(clap::Args)]
pub struct CloneArgs {
    /// Directory of the volume that holds the snapshot.
    volume: PathBuf,
    /// The snapshot to clone.
    snapshot: String,
    /// Directory of the new volume (created; must be empty).
    new_volume: PathBuf,
    /// The ACL of the clone's own key, and a user on the snapshot's ACL.
    #[command(flatten)]
    seal: NewAclArgs,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Creates the clone.
pub fn run(args: CloneArgs) -> Outcome {
    let clone = NewClone {
        parent: &args.volume,
        snapshot: &args.snapshot,
        dir: &args.new_volume,
        acl: &args.seal.acl,
    };
    let kms = &args.seal.kms;
    let cloned = clone_snapshot(&kms.client(), &kms.token()?, clone).map_err(Failure::Service)?;
    print(
        &json!({
            "volume": args.new_volume,
            "volume_id": cloned.created.volume_id,
            "key_id": cloned.created.key_id,
            "acl": args.seal.acl,
            "parent": { "volume": args.volume, "snapshot": args.snapshot, "snapshot_id": cloned.snapshot_id },
        }),
        args.json,
    );
    Ok(())
}
