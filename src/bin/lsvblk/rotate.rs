//! `lsvblk rotate`, `lsvblk rewrap` and `lsvblk policy`: the key lifecycle
//! by hand. A served volume is handled by its daemon (control socket);
//! otherwise the volume is opened here (rotate needs its keys: --token-file).

use std::path::PathBuf;

use lsvblk::crypto::KeyId;
use lsvblk::service::{RotateRequest, rewrap_blobs, rotate_unserved};
use lsvblk::volume::{KeyPolicy, Superblock};
use serde_json::Value;

use crate::admin::{self, Reach, print};
use crate::control::{self, ControlRequest};
use crate::exit::{Failure, Outcome};
use crate::keys::read_token;
use crate::kms::{client, parse_kms_address};
use crate::progress::BytesProgress;
use crate::size::parse_size;

/// Arguments of `lsvblk rotate`.
#[derive(clap::Args)]
pub struct RotateArgs {
    /// Volume directory.
    volume: PathBuf,
    /// This key is compromised: rotate away from it without a rate limit
    /// and have lsvkms destroy it afterwards.
    #[arg(long, value_name = "KEY_ID")]
    compromised: Option<KeyId>,
    /// Re-encrypt at most this many MiB/s (0: no limit; default: the
    /// daemon's background rate, or no limit here).
    #[arg(long)]
    rate_mib: Option<u64>,
    /// Re-key the blocks kept snapshots hold too, so the old key can be
    /// destroyed now (snapshots whose ACL differs from the key's are left).
    #[arg(long)]
    include_snapshots: bool,
    /// The key-wrapping service (needed when no daemon serves the volume).
    #[arg(long, value_parser = parse_kms_address)]
    kms: Option<PathBuf>,
    /// Token of a user on the volume's ACL (when no daemon serves it).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Print one JSON object at the end (no progress bar).
    #[arg(long)]
    json: bool,
}

/// Rotates the volume's key now.
pub fn rotate(args: RotateArgs) -> Outcome {
    let request = ControlRequest::Rotate {
        compromised: args.compromised.map(|k| k.to_string()),
        rate_mib_s: args.rate_mib,
        include_snapshots: args.include_snapshots,
    };
    let mut bar = BytesProgress::new("re-encrypting", args.json);
    let mut on_progress = |value: &Value| bar.update(value);
    let out = match admin::reach(&args.volume, true)? {
        Reach::Served => control::call(
            &control::control_socket_path(&args.volume),
            &request,
            &mut on_progress,
        )
        .map_err(Failure::from)?,
        Reach::Local(maintenance) => {
            drop(maintenance);
            rotate_here(&args, &mut on_progress)?
        }
    };
    bar.finish("rotated");
    print(&out, args.json);
    Ok(())
}

/// Rotates here: the volume is opened with its keys, unwrapped with the
/// user's token.
fn rotate_here(args: &RotateArgs, progress: &mut dyn FnMut(&Value)) -> Result<Value, Failure> {
    let (Some(kms), Some(token_file)) = (&args.kms, &args.token_file) else {
        return Err(Failure::usage(
            "no daemon serves the volume: give --kms and --token-file to rotate it here",
        ));
    };
    let asked = RotateRequest {
        compromised: args.compromised,
        rate_mib_s: args.rate_mib,
        include_snapshots: args.include_snapshots,
    };
    let token = read_token(token_file)?;
    rotate_unserved(&args.volume, client(kms), &token, &asked, &mut |v| {
        progress(&v)
    })
    .map_err(Failure::Service)
}

/// Arguments of `lsvblk rewrap`.
#[derive(clap::Args)]
pub struct RewrapArgs {
    /// Volume directory.
    volume: PathBuf,
    /// The key-wrapping service (used when no daemon serves the volume).
    #[arg(long, value_parser = parse_kms_address)]
    kms: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Seals every wrapped blob of the volume and its snapshots again under
/// lsvkms's newest wrapping key (no data key is unwrapped).
pub fn rewrap(args: RewrapArgs) -> Outcome {
    let kms = args.kms.clone();
    let out = admin::run_quietly(&args.volume, ControlRequest::Rewrap, false, |v| {
        // A keyless open: rewrapping needs only the volume's metadata.
        rewrap_blobs(v, &client(&kms), false)
            .map_err(|e| lsvblk::volume::VolumeError::BadOption(e.to_string()))
    })?;
    print(&out, args.json);
    Ok(())
}

/// Arguments of `lsvblk policy` (and of `lsvblk create`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct PolicyArgs {
    /// Rotate when the key protects more than this now (K/M/G/T suffixes).
    #[arg(long, value_parser = parse_size)]
    pub rotate_live: Option<u64>,
    /// Rotate when the key has ever encrypted more than this (default 1T:
    /// the IEEE P1619 scope of one XTS key).
    #[arg(long, value_parser = parse_size)]
    pub rotate_encrypted: Option<u64>,
    /// Rotate when the key is older than this many days (default 90).
    #[arg(long)]
    pub rotate_age_days: Option<u64>,
    /// Retire keys older than this many days (default 120).
    #[arg(long)]
    pub retire_age_days: Option<u64>,
}

impl PolicyArgs {
    /// `base` with the options given applied.
    pub fn apply(&self, base: &KeyPolicy) -> KeyPolicy {
        const DAY: u64 = 24 * 3600;
        KeyPolicy {
            rotate_live_bytes: self.rotate_live.unwrap_or(base.rotate_live_bytes),
            rotate_encrypted_bytes: self.rotate_encrypted.unwrap_or(base.rotate_encrypted_bytes),
            rotate_age_s: self.rotate_age_days.map_or(base.rotate_age_s, |d| d * DAY),
            retire_age_s: self.retire_age_days.map_or(base.retire_age_s, |d| d * DAY),
        }
    }

    /// True when any option was given.
    pub fn any(&self) -> bool {
        self.rotate_live.is_some()
            || self.rotate_encrypted.is_some()
            || self.rotate_age_days.is_some()
            || self.retire_age_days.is_some()
    }
}

/// Arguments of `lsvblk policy`.
#[derive(clap::Args)]
pub struct PolicyCommand {
    /// Volume directory.
    volume: PathBuf,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Shows the key policy, or changes the parts given.
pub fn policy(args: PolicyCommand) -> Outcome {
    let current = Superblock::load(&args.volume)?.key_policy;
    if !args.policy.any() {
        print(
            &serde_json::to_value(&current).unwrap_or(Value::Null),
            args.json,
        );
        return Ok(());
    }
    let policy = args.policy.apply(&current);
    let request = ControlRequest::SetPolicy {
        policy: policy.clone(),
    };
    let out = admin::run_quietly(&args.volume, request, false, |v| {
        v.set_key_policy(&policy)?;
        Ok(serde_json::json!({ "policy": policy }))
    })?;
    print(&out, args.json);
    Ok(())
}
