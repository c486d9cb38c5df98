//! `lsvblk acl set`: change who may unwrap the volume's key. lsvkms seals
//! the same key again with the new ACL (a user on the current ACL must ask);
//! the new blob takes effect at the volume's next snapshot.

use std::path::PathBuf;

use serde_json::json;

use crate::admin::print;
use crate::exit::{Failure, Outcome};
use crate::kms::NewAclArgs;

/// Arguments of `lsvblk acl`.
#[derive(clap::Args)]
pub struct AclArgs {
    #[command(subcommand)]
    command: AclCommand,
}

#[derive(clap::Subcommand)]
enum AclCommand {
    /// Set the ACL of the volume's current key; the next snapshot (and the
    /// volume from then on) carries it.
    Set {
        /// Volume directory.
        volume: PathBuf,
        /// The new ACL, and a user on the current one.
        #[command(flatten)]
        seal: NewAclArgs,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an acl subcommand.
pub fn run(args: AclArgs) -> Outcome {
    let AclCommand::Set { volume, seal, json } = args.command;
    let kms = &seal.kms;
    let pending = lsvblk::service::set_acl(&volume, &kms.client(), &kms.token()?, &seal.acl)
        .map_err(Failure::Service)?;
    print(
        &json!({
            "key_id": pending.key_id,
            "acl": pending.acl,
            "takes_effect": "at the next snapshot",
        }),
        json,
    );
    Ok(())
}
