//! What a guest FLUSH means for a volume kept in an object store, and the
//! ticker that keeps the not-yet-uploaded tail of the log short.
//!
//! - `local` (default): a FLUSH returns when the log is durable in the local
//!   journal (as for any volume), and once the sealed segments not yet
//!   uploaded hold at most the lag's bytes. The ticker seals the log heads
//!   every lag interval, so what is not in the store is at most that old
//!   (while the store answers). Survives: the process or host crashing and
//!   coming back (the journal has it); losing the host loses at most the
//!   tail not yet uploaded.
//! - `remote`: a FLUSH also seals the heads and returns only when every
//!   segment sealed before it is in the store, and the store shows no newer
//!   writer. Survives losing the host and its disks: everything flushed is
//!   in the store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::uploader::Uploader;
use crate::store::Log;
use crate::sync::LockOrRecover;
use crate::volume::{FlushHook, Volume, VolumeError};

/// When a guest FLUSH returns (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// Durable in the local journal; the upload follows within the lag.
    Local,
    /// Durable in the object store.
    Remote,
}

/// How far the uploads may trail the journal in `local` mode.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct UploadLag {
    /// A FLUSH waits while more sealed bytes than this wait for upload.
    pub bytes: u64,
    /// The heads are sealed (and so uploaded) at least this often.
    pub interval: Duration,
}

/// The [`FlushHook`] of a volume kept in an object store.
pub struct RemoteFlush {
    uploader: Arc<Uploader>,
    mode: FlushMode,
    lag: UploadLag,
    /// Longest a FLUSH waits for the store before it fails.
    wait_max: Duration,
}

impl RemoteFlush {
    /// A hook for `mode`; a FLUSH fails after waiting `wait_max` for the
    /// store.
    pub fn new(
        uploader: Arc<Uploader>,
        mode: FlushMode,
        lag: UploadLag,
        wait_max: Duration,
    ) -> Self {
        Self {
            uploader,
            mode,
            lag,
            wait_max,
        }
    }
}

impl FlushHook for RemoteFlush {
    fn after_flush(&self, log: &Log) -> Result<(), VolumeError> {
        let result = match self.mode {
            // Every segment sealed so far is uploaded before compaction may
            // delete it, so the store then holds an unbroken run of segments
            // after its checkpoint up to the last write before this FLUSH.
            // The records are of no use without the keys they name: the
            // metadata must be there too (it changes rarely: a rotation, a
            // rewrap, a snapshot).
            FlushMode::Remote => {
                log.roll_heads()?;
                self.uploader
                    .wait_sealed_uploaded(self.wait_max)
                    .and_then(|()| self.uploader.wait_metadata_stored(log, self.wait_max))
            }
            FlushMode::Local => self
                .uploader
                .wait_backlog_below(self.lag.bytes, self.wait_max),
        };
        result.map_err(|e| VolumeError::RemoteFlush {
            reason: e.to_string(),
        })
    }

    /// A rebuild from the store reads the stored metadata: it must not name
    /// (or need records under) a key lsvkms destroyed. So the metadata as
    /// it is now, without the keys about to go, and a checkpoint after it
    /// are stored first.
    fn before_key_destroy(&self, log: &Log) -> Result<(), VolumeError> {
        let wait = self.wait_max.min(KEY_DESTROY_WAIT_MAX);
        self.uploader
            .wait_metadata_stored(log, wait)
            .map_err(|e| VolumeError::RemoteFlush {
                reason: e.to_string(),
            })
    }
}

/// Longest a key's destruction waits for the store before it is put off
/// to the key caretaker's next look.
const KEY_DESTROY_WAIT_MAX: Duration = Duration::from_secs(60);

/// Seals the volume's log heads every lag interval, checks the lease now
/// and then (and then writes a checkpoint if the metadata changed, so that
/// it reaches the store), and keeps the cache within its size, until
/// stopped.
pub struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Least time between two checkpoints written so the cache can evict.
const CACHE_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);

/// How often the ticker asks the store whether a newer writer exists.
const FENCE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

impl Ticker {
    /// Starts the ticker of `volume`.
    pub fn start(
        volume: Arc<Volume>,
        uploader: Arc<Uploader>,
        interval: Duration,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let volume = Arc::downgrade(&volume);
        let thread = std::thread::Builder::new()
            .name("upload-lag".to_string())
            .spawn({
                let stop = Arc::clone(&stop);
                move || {
                    let mut last_roll = Instant::now();
                    let mut last_check = Instant::now();
                    let mut last_cache_checkpoint = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                        // Held only while a tick runs: a hand-over to
                        // another daemon waits for the volume's last user.
                        let Some(volume) = volume.upgrade() else {
                            return;
                        };
                        if let Some(cache) = uploader.cache() {
                            // Only segments a local checkpoint covers may be
                            // evicted: write one when the cache needs it.
                            if cache.wants_checkpoint()
                                && last_cache_checkpoint.elapsed() >= CACHE_CHECKPOINT_INTERVAL
                            {
                                last_cache_checkpoint = Instant::now();
                                if let Err(error) = volume.log().checkpoint() {
                                    tracing::warn!(%error, "a checkpoint for the cache failed");
                                }
                            }
                            cache.trim();
                        }
                        if last_roll.elapsed() >= interval {
                            last_roll = Instant::now();
                            if let Err(error) = volume.log().roll_heads() {
                                tracing::warn!(%error, "sealing the log heads for upload failed");
                            }
                        }
                        if last_check.elapsed() >= FENCE_CHECK_INTERVAL {
                            last_check = Instant::now();
                            // A failure to ask is retried at the next check;
                            // being fenced is logged by the uploader.
                            let _ = uploader.check_fence();
                            // A new snapshot or ACL reaches the store with
                            // the next checkpoint: write one now.
                            if uploader.metadata_pending()
                                && let Err(error) = volume.log().checkpoint()
                            {
                                tracing::warn!(%error, "a checkpoint for new metadata failed");
                            }
                        }
                    }
                }
            })?;
        Ok(Self {
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the ticker.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.lock_or_recover().take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop();
    }
}
