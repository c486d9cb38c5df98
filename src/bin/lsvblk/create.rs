//! `lsvblk create`.

use std::path::PathBuf;

use lsvblk::service::{NewVolume, create_volume};
use lsvblk::volume::{BaseRef, Integrity, KeyPolicy, VolumeOptions};

use crate::exit::{Failure, Outcome};
use crate::kms::{client, parse_kms_address};
use crate::size::parse_size;

/// Default segment size of a volume kept in an object store: one object
/// each, big enough that a PUT costs little per byte, small enough that
/// an upload is seconds.
const SEGMENT_BYTES_IN_STORE: u64 = 16 << 20;

/// Arguments of `lsvblk create`.
#[derive(clap::Args)]
pub struct CreateArgs {
    /// Volume directory to create (must be absent or empty).
    #[arg(long)]
    volume: PathBuf,
    /// Capacity, bytes, with optional K/M/G/T suffix (e.g. 10G). With
    /// --base, defaults to the image's size (rounded up to a block).
    #[arg(long, value_parser = parse_size, required_unless_present = "base")]
    size: Option<u64>,
    /// A raw disk image (e.g. an OS image many VMs share; convert a qcow2
    /// with `qemu-img convert -O raw`) the volume starts as: blocks never
    /// written read from it, as they are; writes go encrypted into the
    /// volume. The image is only read, never changed, and must stay as it
    /// is: a volume whose base changed (size, mtime, content) is refused.
    #[arg(long, value_name = "IMAGE", conflicts_with = "store")]
    base: Option<PathBuf>,
    /// Users who may unwrap the data key, comma-separated (e.g. alice,bob).
    #[arg(long, value_delimiter = ',', required = true)]
    acl: Vec<String>,
    /// The key-wrapping service: unix:PATH of its socket.
    #[arg(long, value_parser = parse_kms_address)]
    kms: PathBuf,
    /// Block size and XTS data unit, bytes: 4096 (default) or 512.
    #[arg(long, default_value_t = 4096)]
    block_size: u32,
    /// Target size of one segment file (K/M/G suffixes). Default 64M, or
    /// 16M with --store (each sealed segment becomes one object).
    #[arg(long, value_parser = parse_size)]
    segment_size: Option<u64>,
    #[command(flatten)]
    store: crate::store::StoreArgs,
    /// When the data key is rotated and retired (defaults: 512G live, 1T
    /// ever encrypted, 90 days; retirement at 120 days).
    #[command(flatten)]
    policy: crate::rotate::PolicyArgs,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Benchmark only: store blocks UNENCRYPTED (null cipher), to measure
    /// what crypto costs. Hidden, and only in builds with the `null-cipher`
    /// feature; only such builds can open the volume afterwards.
    #[cfg(feature = "null-cipher")]
    #[arg(long, hide = true)]
    unencrypted_benchmark_only: bool,
    /// Benchmark only: blocks carry CRCs but no MACs (integrity `crc`), to
    /// measure what the MACs cost against the same build. Hidden.
    #[arg(long, hide = true)]
    no_macs_benchmark_only: bool,
}

/// Creates the volume with a fresh data key from the service (and its
/// object-store copy, with `--store`).
pub fn run(args: CreateArgs) -> Outcome {
    if args.acl.iter().any(|user| user.trim().is_empty()) {
        return Err(Failure::usage("--acl has an empty user name"));
    }
    // Refuse a store we cannot use before a key is generated.
    let remote = args.store.open()?;
    let options = VolumeOptions {
        block_bytes: args.block_size,
        segment_bytes: args.segment_size.unwrap_or(if remote.is_some() {
            SEGMENT_BYTES_IN_STORE
        } else {
            lsvblk::limits::SEGMENT_BYTES_DEFAULT
        }),
        #[cfg(feature = "null-cipher")]
        null_cipher: args.unencrypted_benchmark_only,
        integrity: if args.no_macs_benchmark_only {
            Integrity::Crc
        } else {
            Integrity::Mac
        },
        ..VolumeOptions::default()
    };
    let base = args
        .base
        .as_ref()
        .map(|path| {
            path.canonicalize()
                .map_err(|e| Failure::usage(format!("--base {}: {e}", path.display())))
        })
        .transpose()?;
    let size_bytes = match (args.size, &base) {
        (Some(size), _) => size,
        (None, Some(base)) => BaseRef::volume_bytes(base, args.block_size)?,
        (None, None) => return Err(Failure::usage("--size is required without --base")),
    };
    let new = NewVolume {
        dir: &args.volume,
        size_bytes,
        base: base.as_deref(),
        acl: &args.acl,
        options,
        policy: args
            .policy
            .any()
            .then(|| args.policy.apply(&KeyPolicy::default())),
        store: remote.as_ref(),
    };
    let created = create_volume(&client(&args.kms), new).map_err(Failure::Service)?;
    #[cfg(feature = "null-cipher")]
    if args.unencrypted_benchmark_only {
        tracing::warn!("the volume is UNENCRYPTED (null cipher): for benchmarks only");
    }
    if args.json {
        let out = serde_json::json!({
            "volume": args.volume,
            "volume_id": created.volume_id,
            "size_bytes": size_bytes,
            "base": base,
            "block_bytes": args.block_size,
            "store": args.store.store,
            "key_id": created.key_id,
            "acl": args.acl,
        });
        println!("{out}");
    } else {
        println!(
            "created volume {} ({} bytes)",
            args.volume.display(),
            size_bytes
        );
        if let Some(base) = &base {
            println!("base:      {} (read-only)", base.display());
        }
        println!("volume id: {}", created.volume_id);
        println!("key id:    {}", created.key_id);
        println!("acl:       {}", args.acl.join(","));
    }
    Ok(())
}
