//! `lsvblk serve --store`: claim the volume in its object store (rebuilding
//! an empty directory from it), upload the log while serving, and release
//! the volume on a clean stop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lsvblk::limits;
use lsvblk::remote::{
    self, FlushMode, ObjectKind, RemoteError, RemoteFlush, RemoteStore, SegmentCache, StoredObject,
    Ticker, UploadLag, Uploader,
};
use lsvblk::volume::{Volume, VolumeLock};

use crate::exit::Failure;
use crate::kms::parse_kms_timeout;
use crate::size::parse_size;
use crate::store::{StoreArgs, remote_failure};

/// How a served volume uses its object store.
#[derive(clap::Args, Clone, Debug)]
pub struct RemoteServeArgs {
    /// Take the volume over from a writer that still holds its lease (its
    /// host is lost): that writer is fenced, whatever it writes from now on
    /// is ignored.
    #[arg(long, requires = "store")]
    takeover: bool,
    /// When a guest FLUSH returns: `local` (durable in the local journal;
    /// uploads follow within --upload-lag) or `remote` (also in the object
    /// store).
    #[arg(long, value_enum, default_value = "local", requires = "store")]
    flush: FlushArg,
    /// In `local` mode, how far uploads may trail: BYTES,TIME (e.g.
    /// 256M,30s). The log heads are sealed for upload every TIME; a FLUSH
    /// waits while more than BYTES of sealed log are not uploaded.
    #[arg(long, default_value = "256M,30s", value_parser = parse_lag, requires = "store")]
    upload_lag: UploadLagArg,
    /// Longest a FLUSH waits for the object store before it fails (and how
    /// long a clean stop waits for the last uploads).
    #[arg(long, default_value = "5m", value_parser = parse_kms_timeout, requires = "store")]
    store_wait: Duration,
    /// Keep at most SIZE (e.g. 8G) of uploaded segments in the volume
    /// directory, evicting the least recently read; reads of evicted data
    /// fetch it back with ranged GETs. An empty directory is rebuilt with
    /// the segments' headers and seals only (records fetched when read).
    /// Default: keep everything.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "store")]
    pub cache_size: Option<u64>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum FlushArg {
    Local,
    Remote,
}

#[derive(Clone, Copy, Debug)]
struct UploadLagArg(UploadLag);

fn parse_lag(text: &str) -> Result<UploadLagArg, String> {
    let (bytes, time) = text
        .split_once(',')
        .ok_or_else(|| format!("{text:?} is not BYTES,TIME like 256M,30s"))?;
    Ok(UploadLagArg(UploadLag {
        bytes: parse_size(bytes)?,
        interval: parse_kms_timeout(time)?,
    }))
}

/// The store `--store` names for a clone whose parent is kept in it: a
/// volume directory without `remote.json` of its own that is a clone.
/// `None` when the volume is (or is to be) kept in the store itself.
pub fn parent_store(store: &StoreArgs, dir: &Path) -> Result<Option<RemoteStore>, Failure> {
    if store.store.is_none()
        || remote::needs_rebuild(dir)
        || dir.join(remote::LOCAL_STATE_FILE).exists()
    {
        return Ok(None);
    }
    match lsvblk::volume::Superblock::load(dir) {
        Ok(superblock) if superblock.parent.is_some() => store.open(),
        _ => Ok(None),
    }
}

/// A volume claimed in its store, before it is opened.
pub struct Claimed {
    remote: RemoteStore,
    args: RemoteServeArgs,
    epoch: u64,
    stored: Vec<StoredObject>,
    lock: Option<VolumeLock>,
}

/// Claims the volume in `dir` in its store, if `--store` was given. To
/// serve `snapshot` (read-only) nothing is claimed: an empty `dir` gets
/// the snapshot from the store instead.
pub fn claim(
    store: &StoreArgs,
    args: &RemoteServeArgs,
    dir: &Path,
    read_only: bool,
    snapshot: Option<&str>,
) -> Result<Option<Claimed>, Failure> {
    let Some(remote) = store.open()? else {
        return Ok(None);
    };
    if let Some(name) = snapshot {
        if remote::fetch_snapshot(&remote, dir, name).map_err(remote_failure)? {
            tracing::info!(dir = %dir.display(), snapshot = name, "fetched the snapshot from the object store");
        }
        return Ok(None);
    }
    if read_only {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--store serves a volume read-write; --read-only is not supported with it"
        )));
    }
    // A directory that holds a volume is locked before the claim, so that
    // a second daemon here never fences the first; an empty one after its
    // rebuild (the lock file would make it non-empty).
    let mut lock = None;
    if !remote::needs_rebuild(dir) {
        lock = Some(VolumeLock::acquire(dir, false)?);
    }
    // With a cache size, an empty directory gets the records of the
    // checkpointed segments only when they are read.
    let lazy = args.cache_size.is_some();
    let claimed = remote::claim(&remote, dir, args.takeover, lazy).map_err(remote_failure)?;
    if claimed.rebuilt {
        tracing::info!(dir = %dir.display(), epoch = claimed.epoch, "rebuilt the volume from the object store");
    }
    if lock.is_none() {
        lock = Some(VolumeLock::acquire(dir, false)?);
    }
    Ok(Some(Claimed {
        remote,
        args: args.clone(),
        epoch: claimed.epoch,
        stored: claimed.stored,
        lock,
    }))
}

impl Claimed {
    /// The epoch a standby claimed in `remote` after the hand-over (its
    /// volume is opened and locked already).
    pub fn handed_over(
        remote: RemoteStore,
        args: &RemoteServeArgs,
        epoch: u64,
        stored: Vec<StoredObject>,
    ) -> Self {
        Self {
            remote,
            args: args.clone(),
            epoch,
            stored,
            lock: None,
        }
    }

    /// The volume's lock, which `claim` took (`serve` takes it over once).
    pub fn take_lock(&mut self) -> Result<VolumeLock, Failure> {
        self.lock
            .take()
            .ok_or_else(|| Failure::Internal(anyhow::anyhow!("the volume lock was taken twice")))
    }
}

/// A served volume's uploads.
pub struct Serving {
    remote: RemoteStore,
    uploader: Arc<Uploader>,
    ticker: Ticker,
    store_wait: Duration,
    dir: PathBuf,
}

impl Claimed {
    /// Starts uploading `volume` (opened from the claimed directory).
    pub fn start(self, volume: &Arc<Volume>) -> Result<Serving, Failure> {
        let dir = volume.dir().to_path_buf();
        let cache = self.open_cache(&dir).map_err(remote_failure)?;
        let uploader = Uploader::start(
            Arc::clone(&self.remote.store),
            &dir,
            self.epoch,
            &self.stored,
            self.remote.threads,
            cache,
        )
        .map_err(remote_failure)?;
        volume.log().set_events(Arc::clone(&uploader) as _);
        let checkpoint = remote::newest_checkpoint(&dir, &volume.superblock().volume_id)
            .map_err(remote_failure)?;
        uploader
            .queue_existing(checkpoint)
            .map_err(remote_failure)?;
        let mode = match self.args.flush {
            FlushArg::Local => FlushMode::Local,
            FlushArg::Remote => FlushMode::Remote,
        };
        let lag = self.args.upload_lag.0;
        if mode == FlushMode::Local {
            uploader.hold_during_bursts((lag.bytes as f64 * limits::UPLOAD_HOLD_LAG_SHARE) as u64);
        }
        volume.set_flush_hook(Arc::new(RemoteFlush::new(
            Arc::clone(&uploader),
            mode,
            lag,
            self.args.store_wait,
        )));
        let ticker = Ticker::start(Arc::clone(volume), Arc::clone(&uploader), lag.interval)
            .map_err(|e| Failure::Internal(e.into()))?;
        tracing::info!(store = %self.remote.location, epoch = self.epoch, flush = ?mode, "keeping the volume in the object store");
        Ok(Serving {
            remote: self.remote,
            uploader,
            ticker,
            store_wait: self.args.store_wait,
            dir,
        })
    }
}

impl Claimed {
    /// The cache of uploaded segments, with `--cache-size` or when segments
    /// were evicted before (then nothing more is evicted without it).
    fn open_cache(&self, dir: &Path) -> Result<Option<Arc<SegmentCache>>, RemoteError> {
        let evicted = SegmentCache::persisted_evicted(dir)?;
        let Some(capacity) = self
            .args
            .cache_size
            .or_else(|| (!evicted.is_empty()).then_some(u64::MAX))
        else {
            return Ok(None);
        };
        let cache = SegmentCache::open(Arc::clone(&self.remote.store), dir, capacity);
        let segments = dir.join("segments");
        let stored_segments = self.stored.iter().filter(|o| o.kind == ObjectKind::Segment);
        for object in stored_segments {
            if segments
                .join(format!("{:016x}.seg", object.number))
                .exists()
            {
                cache.admit(object.clone(), evicted.contains(&object.number));
            }
        }
        Ok(Some(cache))
    }
}

impl Serving {
    /// The uploader (for `status`).
    pub fn uploader(&self) -> Arc<Uploader> {
        Arc::clone(&self.uploader)
    }

    /// Answers a standby on another host that asks for the volume (see
    /// `remote_handover`), until the watcher is dropped.
    pub fn watch_handovers(
        &self,
        stop: lsvblk::vhost::StopHandle,
    ) -> Result<crate::remote_handover::Watcher, Failure> {
        crate::remote_handover::watch(
            Arc::clone(&self.remote.store),
            self.uploader.epoch(),
            &self.dir,
            stop,
        )
    }

    /// Stops sealing heads on a timer (it holds the volume).
    pub fn stop_ticker(&self) {
        self.ticker.stop();
    }

    /// After the volume is closed: uploads the rest and releases the lease
    /// when everything got up (else the next writer elsewhere needs
    /// --takeover, and this directory still has it all).
    pub fn finish(self) {
        if self.uploader.finish(self.store_wait) {
            match remote::release(self.remote.store.as_ref(), self.uploader.epoch()) {
                Ok(()) => tracing::info!("everything is in the object store; lease released"),
                Err(error) => tracing::warn!(%error, "could not release the lease"),
            }
        } else {
            let status = self.uploader.status();
            tracing::warn!(
                dir = %self.dir.display(),
                backlog_bytes = status.backlog_bytes,
                last_error = status.last_error.as_deref().unwrap_or("-"),
                "not everything reached the object store; the directory still has it, the lease stays held"
            );
        }
    }
}
