//! A volume as a serving daemon holds it: its key care, its background
//! compaction and the operations its control socket offers. The daemon's
//! control handler only translates requests and errors; what happens is
//! here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{KeyCare, RotateRequest, ServiceError, maintenance};
use crate::crypto::KeyId;
use crate::kms::client::KmsClient;
use crate::limits::{AUTO_COMPACT_LIVE_RATIO, AUTO_COMPACT_SPACE_RATIO};
use crate::sync::LockOrRecover;
use crate::volume::{KeyPolicy, Volume, VolumeError};

/// How often the background thread looks at the keys (lsvkms' state of
/// each, rotation due) and at the space use, unless told otherwise.
pub const BACKGROUND_POLL_DEFAULT: Duration = Duration::from_secs(2);

/// A served volume's upkeep: keys, compaction, snapshots, status.
pub struct ServedVolume {
    volume: Arc<Volume>,
    /// Background compaction rate, MiB/s (0: no background compaction).
    auto_rate_mib: u64,
    /// How often the background thread looks at keys and space.
    poll: Duration,
    stop: Arc<AtomicBool>,
    /// Stops a compaction in progress: set at [`ServedVolume::stop`] and
    /// while the upkeep is paused.
    interrupt: Arc<AtomicBool>,
    /// While set and returning true, the background upkeep does nothing
    /// (see [`ServedVolume::pause_while`]).
    paused: Mutex<Option<PauseWhile>>,
    /// Wakes a sleeping compactor at [`ServedVolume::stop`] (shutdown and a
    /// live migration's hand-over join it: they must not wait a poll out).
    wake: (Mutex<()>, Condvar),
    /// What `status` shows about compaction. Recovered if poisoned: each
    /// field is replaced whole, never left half written.
    compaction: Mutex<CompactionState>,
    keys: KeyCare,
}

/// How long [`ServedVolume::pause_while`] waits for a compaction in
/// progress to stop (it stops at its next batch).
pub const PAUSE_WAIT: Duration = Duration::from_secs(2);

/// Says whether a pause of the upkeep still holds.
pub type PauseWhile = Box<dyn Fn() -> bool + Send + Sync>;

/// What `status` shows about compaction.
#[derive(Default)]
struct CompactionState {
    running: Option<Value>,
    last: Option<Value>,
    runs: u64,
}

impl ServedVolume {
    /// The upkeep of `volume`; `auto_rate_mib` 0 turns background
    /// compaction off; `kms` is where new keys come from (rotation).
    pub fn new(volume: Arc<Volume>, auto_rate_mib: u64, kms: Option<KmsClient>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let keys = KeyCare::new(Arc::clone(&volume), kms, auto_rate_mib, Arc::clone(&stop));
        Self {
            volume,
            auto_rate_mib,
            poll: BACKGROUND_POLL_DEFAULT,
            stop,
            interrupt: Arc::new(AtomicBool::new(false)),
            paused: Mutex::new(None),
            wake: (Mutex::new(()), Condvar::new()),
            compaction: Mutex::new(CompactionState::default()),
            keys,
        }
    }

    /// This upkeep, looking at keys and space every `poll` instead of
    /// [`BACKGROUND_POLL_DEFAULT`] (tests compress hours of polls).
    pub fn polling_every(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// The volume.
    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    /// Asks the compactor (and any compaction or re-keying in progress) to
    /// stop.
    pub fn stop(&self) {
        let _guard = self.wake.0.lock_or_recover();
        self.stop.store(true, Ordering::SeqCst);
        self.interrupt.store(true, Ordering::SeqCst);
        self.wake.1.notify_all();
    }

    /// Pauses the background upkeep (compaction, key care) for as long as
    /// `holds` returns true: a compaction in progress stops at its next
    /// batch (this waits up to [`PAUSE_WAIT`] for it), and none starts. For
    /// a live migration's hand-over, whose early checkpoint covers the log
    /// only if nothing writes to it after; `holds` says whether the
    /// migration still goes on. Returns whether no compaction runs now.
    pub fn pause_while(&self, holds: PauseWhile) -> bool {
        *self.paused.lock_or_recover() = Some(holds);
        self.interrupt.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + PAUSE_WAIT;
        while self.state().running.is_some() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// True while a pause holds; lifts a pause that no longer does.
    pub(crate) fn is_paused(&self) -> bool {
        let mut paused = self.paused.lock_or_recover();
        match paused.as_ref() {
            Some(holds) if holds() => true,
            Some(_) => {
                *paused = None;
                if !self.stop.load(Ordering::SeqCst) {
                    self.interrupt.store(false, Ordering::SeqCst);
                }
                tracing::info!("background upkeep resumed");
                false
            }
            None => false,
        }
    }

    /// Sleeps `duration`, or until [`ServedVolume::stop`]; true if stopped.
    fn sleep_unless_stopped(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        let mut guard = self.wake.0.lock_or_recover();
        while !self.stop.load(Ordering::SeqCst) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = match self.wake.1.wait_timeout(guard, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    fn state(&self) -> MutexGuard<'_, CompactionState> {
        self.compaction.lock_or_recover()
    }

    /// Runs one compaction pass (at `rate_mib_s`, of segments at most
    /// `live_ratio_max` live), recording it for `status`.
    pub fn compact(
        &self,
        rate_mib_s: Option<u64>,
        live_ratio_max: Option<f64>,
        progress: &mut dyn FnMut(Value),
    ) -> Result<Value, VolumeError> {
        self.state().running = Some(json!({ "started": true }));
        let result = maintenance::compact(
            &self.volume,
            rate_mib_s,
            live_ratio_max,
            Some(Arc::clone(&self.interrupt)),
            &mut |value| {
                self.state().running = Some(value.clone());
                progress(value);
            },
        );
        let mut state = self.state();
        state.running = None;
        state.runs += 1;
        match &result {
            Ok(value) => state.last = Some(value.clone()),
            Err(error) => state.last = Some(json!({ "error": error.to_string() })),
        }
        result
    }

    /// True if the segments hold much more than the live data (leaving out
    /// what snapshots keep): background compaction is worth it.
    fn compaction_worth_it(&self) -> bool {
        let Ok(space) = self.volume.space() else {
            return false;
        };
        let segment_bytes = self.volume.superblock().segment_bytes;
        let (files, live) = space
            .segments
            .iter()
            .filter(|s| !s.pinned)
            .fold((0u64, 0u64), |(f, l), s| {
                (f + s.file_bytes, l + s.live_bytes)
            });
        files as f64 > AUTO_COMPACT_SPACE_RATIO * live as f64 && files - live > 2 * segment_bytes
    }

    /// Runs until [`ServedVolume::stop`]: looks after the keys (rotation
    /// due, compromise, an interrupted rotation, blobs to rewrap) and
    /// compacts whenever it is worth it.
    pub fn background(&self) {
        if self.volume.is_read_only() {
            return;
        }
        // An interrupted rotation resumes at once.
        self.keys.tick();
        while !self.sleep_unless_stopped(self.poll) {
            if self.is_paused() {
                continue;
            }
            self.keys.tick();
            if self.auto_rate_mib == 0 || !self.compaction_worth_it() {
                continue;
            }
            let done = self.compact(
                Some(self.auto_rate_mib),
                Some(AUTO_COMPACT_LIVE_RATIO),
                &mut |_| {},
            );
            if let Err(error) = done {
                tracing::warn!(%error, "background compaction stopped");
            }
        }
    }

    /// Takes snapshot `name` (see [`maintenance::snapshot_create`]).
    pub fn snapshot_create(&self, name: &str) -> Result<Value, VolumeError> {
        maintenance::snapshot_create(&self.volume, name)
    }

    /// Deletes snapshot `name` and has lsvkms destroy the keys only it
    /// still needed.
    pub fn snapshot_delete(&self, name: &str) -> Result<Value, VolumeError> {
        let destroyable = self.volume.delete_snapshot(name)?;
        self.keys.owe_destroy(&destroyable);
        Ok(json!({ "deleted": name, "keys_destroyed": destroyable }))
    }

    /// Rotates the key now (or continues a rotation in progress). A key an
    /// operator names `compromised` must go: the blocks snapshots hold are
    /// re-keyed too, and no rate limit applies unless given.
    pub fn rotate(
        &self,
        compromised: Option<KeyId>,
        rate_mib_s: Option<u64>,
        include_snapshots: bool,
        progress: &mut dyn FnMut(Value),
    ) -> Result<Value, ServiceError> {
        let asked = RotateRequest {
            compromised,
            rate_mib_s,
            include_snapshots,
        };
        self.keys.rotate_as_asked(&asked, progress)
    }

    /// Seals every wrapped blob again under lsvkms's newest wrapping key.
    pub fn rewrap(&self) -> Result<Value, ServiceError> {
        self.keys.rewrap(false)
    }

    /// Sets the key-rotation policy.
    pub fn set_policy(&self, policy: &KeyPolicy) -> Result<Value, VolumeError> {
        self.volume.set_key_policy(policy)?;
        Ok(json!({ "policy": policy }))
    }

    /// The daemon's state for `lsvblk status`: space, compaction, keys.
    pub fn status(&self) -> Result<Value, VolumeError> {
        let space = maintenance::space(&self.volume)?;
        let keys = self.keys.status()?;
        let state = self.state();
        Ok(json!({
            "served": true,
            "pid": std::process::id(),
            "read_only": self.volume.is_read_only(),
            "io": self.volume.io_mode().as_str(),
            "meta_cache": meta_cache_status(&self.volume.meta_cache_stats()),
            "space": space,
            "compaction": {
                "running": state.running,
                "last": state.last,
                "runs": state.runs,
                "background_rate_mib_s": self.auto_rate_mib,
            },
            "keys": keys,
        }))
    }
}

/// The frame-meta cache as status shows it: its counters and the share of
/// lookups it answered.
fn meta_cache_status(stats: &crate::store::MetaCacheStats) -> Value {
    let lookups = stats.hits + stats.misses;
    let hit_rate = match lookups {
        0 => 0.0,
        _ => stats.hits as f64 / lookups as f64,
    };
    json!({
        "hits": stats.hits,
        "misses": stats.misses,
        "hit_rate": hit_rate,
        "pages": stats.pages,
        "capacity_pages": stats.capacity_pages,
    })
}
