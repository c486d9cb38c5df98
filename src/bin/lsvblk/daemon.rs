//! What `lsvblk serve` does besides serving I/O: answer its control socket
//! (snapshots, compaction, status) and compact the log in the background.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lsvblk::kms::client::KmsClient;
use lsvblk::limits::{AUTO_COMPACT_LIVE_RATIO, AUTO_COMPACT_SPACE_RATIO};
use lsvblk::sync::LockOrRecover;
use lsvblk::volume::{RotationReason, Volume};
use serde_json::{Value, json};

use crate::admin::{self, control_error};
use crate::control::{ControlError, ControlHandler, ControlRequest};
use crate::keycare::KeyCare;

/// How often the background thread looks at the keys (lsvkms' state of
/// each, rotation due) and at the space use, unless told otherwise.
pub const BACKGROUND_POLL_DEFAULT: Duration = Duration::from_secs(2);
/// How often a sleeping compactor looks at the stop flag: shutdown joins
/// it, so this bounds how long SIGTERM waits for it.
const STOP_POLL: Duration = Duration::from_millis(50);

/// The daemon's side of the control socket, and its compactor.
pub struct Daemon {
    volume: Arc<Volume>,
    /// Background compaction rate, MiB/s (0: no background compaction).
    auto_rate_mib: u64,
    /// How often the background thread looks at keys and space.
    poll: Duration,
    stop: Arc<AtomicBool>,
    compaction: Mutex<CompactionState>,
    keys: KeyCare,
}

/// What `status` shows about compaction.
#[derive(Default)]
struct CompactionState {
    running: Option<Value>,
    last: Option<Value>,
    runs: u64,
}

impl Daemon {
    /// A daemon for `volume`; `auto_rate_mib` 0 turns background compaction
    /// off; `kms` is where new keys come from (rotation); `poll` is how
    /// often the background thread looks at keys and space.
    pub fn new(
        volume: Arc<Volume>,
        auto_rate_mib: u64,
        kms: Option<KmsClient>,
        poll: Duration,
    ) -> Arc<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let keys = KeyCare::new(Arc::clone(&volume), kms, auto_rate_mib, Arc::clone(&stop));
        Arc::new(Self {
            volume,
            auto_rate_mib,
            poll,
            stop,
            compaction: Mutex::new(CompactionState::default()),
            keys,
        })
    }

    fn is_ephemeral(&self) -> bool {
        self.volume.superblock().ephemeral_owner.is_some()
    }

    /// Asks the compactor (and any compaction in progress) to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Sleeps `duration`, or until [`Daemon::stop`]; true if stopped.
    fn sleep_unless_stopped(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        while !self.stop.load(Ordering::SeqCst) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(left.min(STOP_POLL));
        }
        true
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CompactionState> {
        self.compaction.lock_or_recover()
    }

    fn run_compaction(
        &self,
        rate_mib_s: Option<u64>,
        live_ratio_max: Option<f64>,
        progress: &mut dyn FnMut(Value),
    ) -> Result<Value, ControlError> {
        self.state().running = Some(json!({ "started": true }));
        let result = admin::compact(
            &self.volume,
            rate_mib_s,
            live_ratio_max,
            Some(Arc::clone(&self.stop)),
            &mut |value| {
                self.state().running = Some(value.clone());
                progress(value);
            },
        );
        let mut state = self.state();
        state.running = None;
        state.runs += 1;
        match result {
            Ok(value) => {
                state.last = Some(value.clone());
                Ok(value)
            }
            Err(error) => {
                state.last = Some(json!({ "error": error.to_string() }));
                Err(control_error(error))
            }
        }
    }

    /// Runs until [`Daemon::stop`]: looks after the keys (rotation due,
    /// compromise, an interrupted rotation, blobs to rewrap) and compacts
    /// whenever the segments hold much more than the live data (leaving out
    /// what snapshots keep).
    pub fn background(self: Arc<Self>) {
        if self.volume.is_read_only() {
            return;
        }
        // An interrupted rotation resumes at once.
        self.keys.tick();
        while !self.sleep_unless_stopped(self.poll) {
            self.keys.tick();
            if self.auto_rate_mib == 0 {
                continue;
            }
            let Ok(space) = self.volume.space() else {
                continue;
            };
            let segment_bytes = self.volume.superblock().segment_bytes;
            let (files, live) = space
                .segments
                .iter()
                .filter(|s| !s.pinned)
                .fold((0u64, 0u64), |(f, l), s| {
                    (f + s.file_bytes, l + s.live_bytes)
                });
            let worth_it = files as f64 > AUTO_COMPACT_SPACE_RATIO * live as f64
                && files - live > 2 * segment_bytes;
            if worth_it {
                let done = self.run_compaction(
                    Some(self.auto_rate_mib),
                    Some(AUTO_COMPACT_LIVE_RATIO),
                    &mut |_| {},
                );
                if let Err(error) = done {
                    tracing::warn!(%error, "background compaction stopped");
                }
            }
        }
    }
}

impl ControlHandler for Daemon {
    fn handle(
        &self,
        request: ControlRequest,
        progress: &mut dyn FnMut(Value),
    ) -> Result<Value, ControlError> {
        match request {
            ControlRequest::SnapshotCreate { .. } if self.is_ephemeral() => Err(ControlError::new(
                ControlError::BAD_REQUEST,
                "snapshots of an ephemeral volume are refused: its key lives only in this daemon and dies with it, so a snapshot could never be read",
            )),
            ControlRequest::SnapshotCreate { name } => {
                admin::snapshot_create(&self.volume, &name).map_err(control_error)
            }
            ControlRequest::SnapshotDelete { name } => {
                let destroyable = self.volume.delete_snapshot(&name).map_err(control_error)?;
                self.keys.owe_destroy(&destroyable);
                Ok(json!({ "deleted": name, "keys_destroyed": destroyable }))
            }
            ControlRequest::Rotate {
                compromised,
                rate_mib_s,
                include_snapshots,
            } => {
                let compromised = compromised
                    .map(|text| {
                        text.parse::<lsvblk::crypto::KeyId>().map_err(|e| {
                            ControlError::new(ControlError::BAD_REQUEST, format!("key id: {e}"))
                        })
                    })
                    .transpose()?;
                let reason = if compromised.is_some() {
                    RotationReason::Compromised
                } else {
                    RotationReason::Manual
                };
                // A compromised key must go: its snapshots are re-keyed too.
                let include_snapshots = include_snapshots || compromised.is_some();
                self.keys
                    .rotate(reason, compromised, rate_mib_s, include_snapshots, progress)
            }
            ControlRequest::Rewrap => self.keys.rewrap(false),
            ControlRequest::SetPolicy { policy } => {
                self.volume.set_key_policy(&policy).map_err(control_error)?;
                Ok(json!({ "policy": policy }))
            }
            ControlRequest::SnapshotList => crate::snapshot::snapshot_list(self.volume.dir())
                .map_err(|f| ControlError::new(ControlError::IO, format!("{:#}", f.error))),
            ControlRequest::Compact {
                rate_mib_s,
                live_ratio_max,
            } => self.run_compaction(rate_mib_s, live_ratio_max, progress),
            ControlRequest::Status => {
                let space = admin::space(&self.volume).map_err(control_error)?;
                let state = self.state();
                Ok(json!({
                    "served": true,
                    "pid": std::process::id(),
                    "read_only": self.volume.is_read_only(),
                    "space": space,
                    "compaction": {
                        "running": state.running,
                        "last": state.last,
                        "runs": state.runs,
                        "background_rate_mib_s": self.auto_rate_mib,
                    },
                    "keys": self.keys.status().map_err(control_error)?,
                }))
            }
        }
    }
}
