//! `lsvblk serve`: unwrap the key through lsvkms, open the volume, serve it
//! over vhost-user-blk until SIGTERM/SIGINT, then flush and close.

mod open;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lsvblk::crypto::CryptoPool;
use lsvblk::ops::metrics::{self, DeviceCollector, MetricsAddress, UpkeepCollector};
use lsvblk::store::{CheckDepth, DamageKind};
use lsvblk::sync::LockOrRecover;
use lsvblk::vhost::peer_check::AllowedPeers;
use lsvblk::vhost::socket_access::{SocketAccess, group_id};
use lsvblk::vhost::{DeviceOptions, Server};
use lsvblk::volume::handover::{Holder, Served, Standby};
use lsvblk::volume::{
    SkewedClock, Superblock, Volume, VolumeLock, VolumeOptions, check_files, load_snapshot,
};
use prometheus_client::registry::Registry;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::control::control_socket_path;
use crate::exit::{Failure, Outcome};
use crate::kms::{client, parse_kms_address, parse_kms_timeout};
use crate::lease::{Credential, unwrap_all_with};
use crate::remote_handover::{StoreHolder, Watcher};
use crate::remote_serve::{Claimed, Serving};
use crate::services::{ControlSocketHolder, Services};
use crate::size::parse_size;

/// Arguments of `lsvblk serve`. Each can also come from an environment
/// variable (`LSVBLK_VOLUME`, ...; `--help` names them): what the
/// `lsvblk@.service` unit reads from its instance's environment file.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Volume directory.
    #[arg(long, env = "LSVBLK_VOLUME")]
    volume: PathBuf,
    /// vhost-user socket to listen on (a stale socket file is replaced).
    #[arg(long, env = "LSVBLK_SOCKET")]
    socket: PathBuf,
    /// The key-wrapping service: unix:PATH of its socket (not with
    /// --ephemeral).
    #[arg(long, env = "LSVBLK_KMS", value_parser = parse_kms_address, required_unless_present = "ephemeral")]
    kms: Option<PathBuf>,
    /// Serve a new ephemeral volume of --size in --volume (absent, empty,
    /// or left by a killed ephemeral daemon): its data key is made here in
    /// locked memory and never wrapped or stored; the directory is deleted
    /// when the daemon ends, and nothing else can ever read it.
    #[arg(long, requires = "size", conflicts_with_all = ["kms", "token_file", "snapshot", "read_only", "store"])]
    ephemeral: bool,
    /// Capacity of the --ephemeral volume (K/M/G/T suffixes).
    #[arg(long, value_parser = parse_size, requires = "ephemeral")]
    size: Option<u64>,
    /// File holding the user's token (from `lsvkms token issue`); must not
    /// be readable by group or others (exit 64 otherwise). Without it, the
    /// leases a former `serve --lease` kept in the volume are used.
    #[arg(long, env = "LSVBLK_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// With --token-file: ask lsvkms for a lease this long (e.g. 30d; lsvkms
    /// may shorten it), kept in VOLUME/lease.json (0600), so later `serve`
    /// runs need no token until it ends or is revoked.
    #[arg(long, value_parser = parse_kms_timeout, requires = "token_file")]
    lease: Option<Duration>,
    /// Mode of the vhost-user socket file (octal). Whoever may connect to it
    /// reads and writes the decrypted disk: 0600 lets only our user in; use
    /// 0660 with --socket-group for a VMM running as another user.
    #[arg(long, env = "LSVBLK_SOCKET_MODE", default_value = "0600", value_parser = parse_socket_mode)]
    socket_mode: u32,
    /// Group of the vhost-user socket file (name or gid), e.g. the group
    /// libvirt's QEMU runs as.
    #[arg(long, env = "LSVBLK_SOCKET_GROUP")]
    socket_group: Option<String>,
    /// Serve only connections from this user (uid; repeatable). The peer of
    /// every connection is checked (SO_PEERCRED) before a message is read;
    /// others are closed at once and logged. Default, when neither this nor
    /// --allow-gid is given: the daemon's own user and root. Given, only the
    /// listed users and groups are served.
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uids: Vec<u32>,
    /// Serve connections from processes whose group is this one (name or
    /// gid; repeatable), e.g. libvirt's QEMU group.
    #[arg(long = "allow-gid", value_name = "GROUP")]
    allow_gids: Vec<String>,
    /// How long to keep trying while lsvkms is down, busy or silent when
    /// unwrapping the key (backoff 50 ms doubling to 1 s); then exit 69.
    /// E.g. 90s, 2m; 1s tries about once.
    #[arg(long, env = "LSVBLK_KMS_TIMEOUT", default_value = "30s", value_parser = parse_kms_timeout)]
    kms_timeout: Duration,
    /// Virtqueues offered to the guest (one worker thread each).
    #[arg(long, env = "LSVBLK_NUM_QUEUES", default_value_t = 1)]
    num_queues: u16,
    /// Largest virtqueue size accepted (power of two).
    #[arg(long, env = "LSVBLK_QUEUE_SIZE", default_value_t = 256)]
    queue_size: u16,
    /// Microseconds each queue's worker polls its queue for the next
    /// request after serving one, before it sleeps until the guest kicks
    /// (0: no polling). Cuts latency at low queue depth for up to this much
    /// CPU per request; an idle queue costs nothing.
    #[arg(long, env = "LSVBLK_POLL_US", default_value_t = lsvblk::vhost::POLL_US_DEFAULT)]
    poll_us: u32,
    /// How segment files are written and read: `buffered` (through the
    /// host's page cache) or `direct` (O_DIRECT, past it; a filesystem that
    /// refuses it falls back to buffered, said in the log). `lsvblk status`
    /// shows the mode in use.
    #[arg(long = "io", env = "LSVBLK_IO", default_value_t = lsvblk::store::IoMode::default())]
    io: lsvblk::store::IoMode,
    /// MiB of block tables (each block's checksum and tag) kept in memory
    /// for reads, so a random read costs one device read, not two (0: no
    /// cache). `lsvblk status` shows its hit rate.
    #[arg(long, env = "LSVBLK_META_CACHE_MIB", default_value_t = lsvblk::store::META_CACHE_BYTES_DEFAULT >> 20)]
    meta_cache_mib: u64,
    /// Serve read-only (writes fail with IOERR; the guest sees VIRTIO_BLK_F_RO).
    #[arg(long, env = "LSVBLK_READ_ONLY")]
    read_only: bool,
    /// Serve snapshot NAME of the volume instead of the volume itself
    /// (read-only; works while another daemon serves the volume). The
    /// token's user must be on the snapshot's ACL.
    #[arg(
        long,
        env = "LSVBLK_SNAPSHOT",
        value_name = "NAME",
        requires = "read_only"
    )]
    snapshot: Option<String>,
    /// Live migration destination: wait in standby (key unwrapped, volume
    /// neither opened nor locked) and take the volume over from the daemon
    /// serving it when the VM starts here; that daemon hands it over and
    /// stops. Give the destination QEMU this daemon's socket. With --store
    /// (another host): the volume is rebuilt from the store into --volume
    /// now and followed, and the hand-over goes through the store.
    #[arg(long, conflicts_with_all = ["read_only", "snapshot"])]
    standby: bool,
    /// Device serial returned by GET_ID (up to 20 bytes). Default: volume id.
    #[arg(long, env = "LSVBLK_SERIAL")]
    serial: Option<String>,
    /// Crypto threads (0 = one per CPU).
    #[arg(long, env = "LSVBLK_CRYPTO_THREADS", default_value_t = 0)]
    crypto_threads: usize,
    /// Requests larger than this are encrypted in parallel chunks (K/M suffixes).
    #[arg(long, env = "LSVBLK_CHUNK_SIZE", default_value = "512K", value_parser = parse_size)]
    chunk_size: u64,
    /// Logical block size offered to the guest: 512 or 4096. Default: the
    /// volume's block size.
    #[arg(long, env = "LSVBLK_BLOCK_SIZE")]
    block_size: Option<u32>,
    /// Background compaction moves at most this many MiB/s (0: off). It
    /// starts when the segments hold 1.5× the live data. Key rotations the
    /// daemon starts by itself re-encrypt at this rate too (0: unthrottled;
    /// a compromised key's rotation is never throttled).
    #[arg(long, env = "LSVBLK_COMPACT_RATE_MIB", default_value_t = lsvblk::limits::AUTO_COMPACT_RATE_BYTES_DEFAULT >> 20)]
    compact_rate_mib: u64,
    /// Serve Prometheus metrics over HTTP on ADDR: HOST:PORT (e.g.
    /// 127.0.0.1:9650) or a UNIX socket path. Off by default.
    #[arg(long, env = "LSVBLK_METRICS", value_name = "ADDR")]
    metrics: Option<MetricsAddress>,
    /// Tests only: key ages are measured with the system clock moved by the
    /// seconds written in this file (re-read each time).
    #[arg(long, hide = true)]
    clock_skew_file: Option<PathBuf>,
    /// Tests only: how often (ms) the daemon asks lsvkms about its keys and
    /// looks at space use (default 2000), so a test sees an hour's polls in
    /// seconds.
    #[arg(long, hide = true)]
    background_poll_ms: Option<u64>,
    #[command(flatten)]
    store: crate::store::StoreArgs,
    #[command(flatten)]
    remote: crate::remote_serve::RemoteServeArgs,
}

/// Serves until a signal; exit 0 after a clean flush and close.
pub fn run(args: ServeArgs) -> Outcome {
    let started = Instant::now();
    raise_open_file_limit();
    // A volume kept in an object store: claim it (an empty directory is
    // rebuilt from the store first), or fetch the snapshot to serve.
    let serving: Arc<Mutex<Option<Serving>>> = Arc::default();
    // A clone of a stored volume's snapshot: --store names its parent's
    // store, which its reads of evicted parent blocks go to.
    let parent_store = crate::remote_serve::parent_store(&args.store, &args.volume)?;
    // A live migration's destination on another host follows the volume
    // from the store instead of claiming it.
    let mut remote_standby = None;
    let mut remote = match parent_store {
        Some(_) => None,
        None if args.standby => {
            remote_standby =
                crate::remote_handover::follow(&args.store, &args.remote, &args.volume)?;
            None
        }
        None => crate::remote_serve::claim(
            &args.store,
            &args.remote,
            &args.volume,
            args.read_only,
            args.snapshot.as_deref(),
        )?,
    };
    let pool =
        CryptoPool::new(args.crypto_threads, args.chunk_size as usize).map_err(Failure::usage)?;
    let options = VolumeOptions {
        heads: usize::from(args.num_queues.max(1)),
        read_only: args.read_only,
        io: args.io,
        meta_cache_bytes: args.meta_cache_mib.saturating_mul(1 << 20),
        pool: Some(Arc::new(pool)),
        clock: args
            .clock_skew_file
            .clone()
            .map(|path| Arc::new(SkewedClock(path)) as Arc<dyn lsvblk::volume::Clock>),
        ..VolumeOptions::default()
    };
    // An ephemeral volume is made here (its key too); any other is opened
    // with keys from lsvkms.
    let (ephemeral_volume, ephemeral_dir) = match args.ephemeral {
        true => {
            let (volume, dir) = args.create_ephemeral(&options)?;
            (Some(volume), Some(dir))
        }
        false => (None, None),
    };
    let superblock = match &ephemeral_volume {
        Some(volume) => volume.superblock().clone(),
        None => {
            let superblock = Superblock::load(&args.volume)?;
            refuse_foreign_files(&args.volume)?;
            superblock
        }
    };
    let device = device_options(&args, &superblock)?;
    let credential = match args.ephemeral {
        true => None,
        false => Some(Credential::from_args(
            args.token_file.as_deref(),
            args.lease.map(|d| d.as_secs()),
            &args.volume,
        )?),
    };
    let kms = args
        .kms
        .as_ref()
        .map(|path| client(path).retrying_for(args.kms_timeout));
    // How long the start takes, for the "serving" line (a restart in place
    // is this long plus the old daemon's exit).
    let (mut unwrap_ms, open_started) = (0, Instant::now());
    let mut unwrap = |keys| {
        let at = Instant::now();
        let (Some(kms), Some(credential)) = (&kms, &credential) else {
            return Err(Failure::Usage(anyhow::anyhow!(
                "--kms is required (or --ephemeral)"
            )));
        };
        let unwrapped = unwrap_all_with(kms, credential, &args.volume, &superblock.volume_id, keys);
        unwrap_ms = at.elapsed().as_millis();
        unwrapped
    };
    let served = Arc::new(match (&args.snapshot, ephemeral_volume) {
        (_, Some(volume)) => Served::open(Arc::new(volume)),
        (Some(name), None) => {
            // The snapshot's own key set and ACL decide, not the volume's.
            let meta = load_snapshot(&args.volume, name)?;
            let keys = unwrap(&meta.keys)?;
            Served::open(Arc::new(Volume::open_snapshot(
                &args.volume,
                name,
                keys,
                &options,
            )?))
        }
        // A live migration's destination: the key now, the volume later.
        (None, None) if args.standby => {
            let keys = unwrap(&superblock.keys)?;
            let holder: Box<dyn Holder> = match &remote_standby {
                Some(standby) => Box::new(StoreHolder(Arc::clone(standby))),
                None => Box::new(ControlSocketHolder {
                    socket: control_socket_path(&args.volume),
                }),
            };
            Served::standby(Standby::new(&args.volume, keys, options, holder))?
        }
        (None, None) => {
            // Lock first: a second daemon on this volume must not get a key.
            let lock = match &mut remote {
                Some(claimed) => claimed.take_lock()?,
                None => VolumeLock::acquire(&args.volume, args.read_only)?,
            };
            let keys = unwrap(&superblock.keys)?;
            let volume = Arc::new(Volume::open_locked(&args.volume, lock, keys, &options)?);
            if let Some(claimed) = remote.take() {
                *serving.lock_or_recover() = Some(claimed.start(&volume)?);
            }
            if let Some(store) = &parent_store {
                lsvblk::remote::attach_parent_reads(store, &volume)
                    .map_err(crate::store::remote_failure)?;
            }
            Served::open(volume)
        }
    });
    let open_ms = open_started.elapsed().as_millis().saturating_sub(unwrap_ms);
    drop(credential);
    drop(kms);
    if let Some(volume) = served.if_active() {
        report_recovery(&volume);
    }
    let server = Server::bind(Arc::clone(&served), &args.socket, device)
        .map_err(Failure::io)?
        .allow_peers(allowed_peers(&args)?);
    socket_access(&args)?
        .apply(&args.socket)
        .map_err(|e| Failure::io(format!("{}: {e}", args.socket.display())))?;
    watch_signals(server.stop_handle())?;
    if let Some(standby) = &remote_standby {
        standby.stops_with(server.stop_handle());
    }
    // The writer of a volume in an object store answers a standby on
    // another host; a standby that takes such a volume over starts
    // uploading it (and answering) first, before its services start.
    let watcher: Arc<Mutex<Option<Watcher>>> = Arc::default();
    if let Some(serving) = &*serving.lock_or_recover() {
        *watcher.lock_or_recover() = Some(serving.watch_handovers(server.stop_handle())?);
    }
    if let Some(standby) = remote_standby {
        let (serving, watcher, stop) = (
            Arc::clone(&serving),
            Arc::clone(&watcher),
            server.stop_handle(),
        );
        served.when_active(Box::new(move |volume| {
            let Some((epoch, stored)) = standby.claimed() else {
                return;
            };
            let (remote, args) = standby.remote();
            let started = Claimed::handed_over(remote.clone(), args, epoch, stored)
                .start(volume)
                .and_then(|s| Ok((s.watch_handovers(stop.clone())?, s)));
            match started {
                Ok((watch, started)) => {
                    *serving.lock_or_recover() = Some(started);
                    *watcher.lock_or_recover() = Some(watch);
                }
                Err(error) => {
                    tracing::error!(%error, "cannot upload the volume taken over; stopping");
                    stop.stop();
                }
            }
        }));
    }
    // A writable volume answers `lsvblk snapshot/compact/status/...` on its
    // control socket and compacts in the background while it is active here.
    let services = (!args.read_only).then(|| {
        Services::start_when_active(
            &served,
            args.compact_rate_mib,
            args.kms.clone(),
            server.stop_handle(),
            args.background_poll_ms.map_or(
                lsvblk::service::BACKGROUND_POLL_DEFAULT,
                Duration::from_millis,
            ),
            {
                let serving = Arc::clone(&serving);
                Box::new(move || serving.lock_or_recover().as_ref().map(|s| s.uploader()))
            },
        )
    });
    if let Some(address) = &args.metrics {
        serve_metrics(address, &server, &served, services.as_ref())?;
    }
    tracing::info!(
        volume = %args.volume.display(),
        socket = %args.socket.display(),
        key_id = %superblock.current_key_id,
        snapshot = args.snapshot.as_deref().unwrap_or("-"),
        read_only = args.read_only,
        standby = served.is_standby(),
        unwrap_ms,
        open_ms,
        ready_ms = started.elapsed().as_millis(),
        "serving"
    );
    // The vhost-user socket listens (a VMM's connect is queued until `run`
    // accepts it) and the control socket is up (or, in standby, comes up
    // when the volume is taken over): the VMM may start now.
    lsvblk::ops::notify::ready(&format!("serving on {}", args.socket.display()));
    let ran = server.run().map_err(Failure::io);
    if let Some(services) = services {
        services.stop();
    }
    drop(watcher.lock_or_recover().take());
    let serving = serving.lock_or_recover().take();
    if let Some(serving) = &serving {
        serving.stop_ticker();
    }
    let handed_over = served.if_active().is_none() && !served.is_standby();
    served.hand_over().map_err(Failure::io)?;
    if let Some(serving) = serving {
        serving.finish();
    }
    drop(ephemeral_dir);
    ran?;
    let _ = std::fs::remove_file(&args.socket);
    if handed_over {
        tracing::info!("volume handed over to another daemon");
    } else if served.is_standby() {
        tracing::info!("stopped in standby: the volume was never taken over");
    } else {
        tracing::info!("volume flushed and closed");
    }
    Ok(())
}

/// Refuses a volume whose segments or checkpoints carry another id than
/// its superblock (another volume's files, or a `volume_id` changed by
/// hand): a data error (65), found before lsvkms is asked for a key.
fn refuse_foreign_files(dir: &std::path::Path) -> Result<(), Failure> {
    let report = check_files(dir, CheckDepth::Headers)?;
    let foreign = report
        .findings
        .iter()
        .any(|finding| finding.kind == DamageKind::ForeignVolume);
    if foreign {
        return Err(Failure::Damaged(report));
    }
    Ok(())
}

/// The peers `--allow-uid` and `--allow-gid` name, or the default.
fn allowed_peers(args: &ServeArgs) -> Result<AllowedPeers, Failure> {
    if args.allow_uids.is_empty() && args.allow_gids.is_empty() {
        return Ok(AllowedPeers::owner_and_root());
    }
    let gids = args
        .allow_gids
        .iter()
        .map(|name| group_id(name).map_err(|e| Failure::usage(format!("--allow-gid {name}: {e}"))))
        .collect::<Result<_, _>>()?;
    Ok(AllowedPeers::new(args.allow_uids.clone(), gids))
}

fn parse_socket_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| format!("{text:?} is not an octal mode like 0600 or 0660"))
}

fn socket_access(args: &ServeArgs) -> Result<SocketAccess, Failure> {
    let group = match &args.socket_group {
        Some(name) => Some(
            group_id(name).map_err(|e| Failure::usage(format!("--socket-group {name}: {e}")))?,
        ),
        None => None,
    };
    Ok(SocketAccess {
        mode: args.socket_mode,
        group,
    })
}

fn device_options(args: &ServeArgs, superblock: &Superblock) -> Result<DeviceOptions, Failure> {
    let serial = args
        .serial
        .clone()
        .unwrap_or_else(|| superblock.volume_id.clone());
    let device = DeviceOptions {
        num_queues: args.num_queues,
        queue_size: args.queue_size,
        read_only: args.read_only,
        serial: DeviceOptions::serial_from(&serial),
        logical_block_bytes: args.block_size.unwrap_or(superblock.block_bytes),
        poll_us: args.poll_us,
    };
    device.validate().map_err(Failure::usage)?;
    Ok(device)
}

fn report_recovery(volume: &Volume) {
    let report = volume.recovery_report();
    for skipped in &report.skipped_checkpoints {
        tracing::warn!(%skipped, "a checkpoint was unusable; recovered from an older one");
    }
    if report.records_replayed > 0 || !report.torn_tails.is_empty() {
        tracing::info!(
            records = report.records_replayed,
            segments = report.segments_replayed,
            torn_tails = report.torn_tails.len(),
            "recovered the log after an unclean stop"
        );
    }
}

/// SIGTERM or SIGINT stops the server; `run` then flushes and closes.
/// Serves `--metrics`: the device's counters and the log, and (for a
/// writable volume) the upkeep's status and the lsvkms calls.
fn serve_metrics(
    address: &MetricsAddress,
    server: &Server,
    served: &Arc<Served>,
    services: Option<&Arc<Services>>,
) -> Result<(), Failure> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(DeviceCollector::new(server.metrics(), served)));
    let services = services.map(Arc::downgrade);
    registry.register_collector(Box::new(UpkeepCollector::new(Box::new(move || {
        services.as_ref()?.upgrade()?.upkeep_status()
    }))));
    metrics::serve(address, registry)
        .map_err(|e| Failure::io(format!("--metrics {address:?}: {e}")))
}

fn watch_signals(stop: lsvblk::vhost::StopHandle) -> Result<(), Failure> {
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(Failure::internal)?;
    std::thread::Builder::new()
        .name("lsvblk-signals".to_string())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                lsvblk::ops::notify::stopping();
                tracing::info!(signal, "stopping: flushing and closing the volume");
                stop.stop();
            }
        })
        .map_err(Failure::internal)?;
    Ok(())
}

/// The log keeps one descriptor open per segment (a 1 TiB volume of 64 MiB
/// segments has 16 384), more than the usual soft limit of 1024: raise the
/// soft limit to the hard one, as qemu-storage-daemon does.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let wanted = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                tracing::warn!(soft = limit.rlim_cur, "could not raise the open-file limit");
            }
        }
    }
}
