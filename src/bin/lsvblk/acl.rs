//! `lsvblk acl set`: change who may unwrap the volume's key. lsvkms seals
//! the same key again with the new ACL (a user on the current ACL must ask);
//! the new blob takes effect at the volume's next snapshot.

use std::path::PathBuf;

use base64::Engine;
use lsvblk::volume::{PendingAcl, Superblock, set_pending_acl};
use serde_json::json;

use crate::admin::print;
use crate::exit::{Failure, Outcome};
use crate::keys::{blob_of, read_token};
use crate::kms::{client, failure, parse_kms_address};

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
        /// Users allowed to unwrap the key, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        acl: Vec<String>,
        /// The key-wrapping service: unix:PATH of its socket.
        #[arg(long, value_parser = parse_kms_address)]
        kms: PathBuf,
        /// Token of a user on the current ACL (from `lsvkms token issue`).
        #[arg(long)]
        token_file: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an acl subcommand.
pub fn run(args: AclArgs) -> Outcome {
    let AclCommand::Set {
        volume,
        acl,
        kms,
        token_file,
        json,
    } = args.command;
    let superblock = Superblock::load(&volume)?;
    let entry = superblock
        .keys
        .iter()
        .find(|k| k.key_id == superblock.current_key_id)
        .ok_or_else(|| {
            Failure::BadData(anyhow::anyhow!(
                "the superblock lists no entry for its current key"
            ))
        })?;
    let token = read_token(&token_file)?;
    let rewrapped = client(&kms)
        .rewrap_with_acl(&blob_of(entry)?, &acl, &token)
        .map_err(|e| failure("lsvkms refused the ACL change", e))?;
    let pending = PendingAcl {
        key_id: rewrapped.key_id,
        acl: acl.clone(),
        wrapped_blob: base64::engine::general_purpose::STANDARD.encode(&rewrapped.wrapped_blob.0),
        created_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    set_pending_acl(&volume, &pending)?;
    print(
        &json!({
            "key_id": rewrapped.key_id,
            "acl": acl,
            "takes_effect": "at the next snapshot",
        }),
        json,
    );
    Ok(())
}
