//! `lsvblk clone`: a writable volume on a snapshot. It shares the
//! snapshot's blocks (copy-on-write: its writes go to its own log) and has
//! its own data key, from lsvkms, for new writes; the snapshot's blocks keep
//! their key ids. The user must be on the snapshot's ACL.

use std::path::PathBuf;

use base64::Engine;
use lsvblk::crypto::CryptoPool;
use lsvblk::kms::api::KeyContext;
use lsvblk::volume::{Superblock, Volume, VolumeOptions, WrappedKey, load_snapshot, new_volume_id};
use serde_json::json;

use crate::admin::print;
use crate::exit::{Failure, Outcome};
use crate::keys::{read_token, unwrap_all};
use crate::kms::{client, failure, parse_kms_address};

/// Arguments of `lsvblk clone`.
#[derive(clap::Args)]
pub struct CloneArgs {
    /// Directory of the volume that holds the snapshot.
    volume: PathBuf,
    /// The snapshot to clone.
    snapshot: String,
    /// Directory of the new volume (created; must be empty).
    new_volume: PathBuf,
    /// Users allowed to unwrap the clone's own key, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    acl: Vec<String>,
    /// The key-wrapping service: unix:PATH of its socket.
    #[arg(long, value_parser = parse_kms_address)]
    kms: PathBuf,
    /// Token of a user on the snapshot's ACL.
    #[arg(long)]
    token_file: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Creates the clone.
pub fn run(args: CloneArgs) -> Outcome {
    let parent = Superblock::load(&args.volume)?;
    let meta = load_snapshot(&args.volume, &args.snapshot)?;
    let token = read_token(&args.token_file)?;
    // The snapshot's ACL decides who may build on it: unwrap first.
    let parent_keys = unwrap_all(&client(&args.kms), &token, &parent.volume_id, &meta.keys)?;
    let volume_id = new_volume_id()?;
    let generated = client(&args.kms)
        .generate_data_key(
            &args.acl,
            &KeyContext {
                volume_id: hex::encode(volume_id),
                snapshot_id: String::new(),
            },
        )
        .map_err(|e| failure("asking lsvkms for the clone's data key", e))?;
    let key_id = generated.key.id();
    let wrapped = WrappedKey {
        blob: base64::engine::general_purpose::STANDARD.encode(&generated.wrapped_blob),
        acl: args.acl.clone(),
    };
    let pool = CryptoPool::new(1, lsvblk::limits::CRYPTO_CHUNK_BYTES_DEFAULT)
        .map_err(Failure::internal)?;
    let options = VolumeOptions {
        pool: Some(std::sync::Arc::new(pool)),
        ..VolumeOptions::default()
    };
    let clone = Volume::create_clone_with_id(
        &args.volume,
        &args.snapshot,
        &args.new_volume,
        volume_id,
        generated.key,
        Some(wrapped),
        parent_keys,
        &options,
    )?;
    clone.close()?;
    print(
        &json!({
            "volume": args.new_volume,
            "volume_id": hex::encode(volume_id),
            "key_id": key_id,
            "acl": args.acl,
            "parent": { "volume": args.volume, "snapshot": args.snapshot, "snapshot_id": meta.snapshot_id },
        }),
        args.json,
    );
    Ok(())
}
