//! Handing a served volume from one daemon to another, for the live
//! migration of its VM: the destination's daemon waits in **standby** (the
//! superblock read and the keys unwrapped, nothing opened, no lock held), and
//! **takes the volume over** when its VM starts there, from the source's
//! daemon, which **hands it over**: it finishes what it has in progress,
//! flushes, seals its log heads, writes a checkpoint and lets go of the lock.
//!
//! [`Served`] is where a daemon's volume is, and the one place these
//! transitions happen:
//!
//! ```text
//!   standby ──volume()──▶ taking over ──▶ active ──hand_over()──▶ handed over
//!      ▲                      │ (the holder would not let go, or the lock stayed held)
//!      └──────────────────────┘
//! ```
//!
//! Taking over asks the current holder to let go (a [`Holder`]: on one host,
//! the holder daemon's control socket), then takes the lock and opens the
//! volume from the checkpoint the holder just wrote. A holder that is gone
//! (crashed) cannot answer; its lock went with it, and the open recovers its
//! log.
//!
//! The source's daemon can do the expensive part of handing over early:
//! [`Served::prepare_hand_over`] (called when a migration stops its device)
//! seals the log heads and writes the checkpoint in the background while QEMU
//! still copies the VM's last state. If nothing was written since, the hand-over
//! itself then only lets go of the lock. For a volume in an object store the same transition applies between
//! hosts, with a lease in the store for the lock and a [`Holder`] that reaches
//! the other host.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{Superblock, Volume, VolumeError, VolumeLock, VolumeOptions};
use crate::crypto::DataKey;
use crate::sync::LockOrRecover;

/// How long taking over waits for the lock after the holder let go (or
/// could not be asked).
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// How long handing over waits for the operations in progress to finish.
pub const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// How often the log is made durable while a live migration copies the
/// VM (see [`Served::migration_started`]).
pub const MIGRATION_FLUSH_EVERY: Duration = Duration::from_millis(50);

/// The daemon that has the volume now, as seen by the one taking it over.
pub trait Holder: Send + Sync {
    /// Asks it to hand the volume over and waits until it has (its lock is
    /// released). An error says why not; the taker then tries the lock anyway
    /// (a holder that crashed cannot answer, and holds no lock either).
    fn release(&self) -> Result<(), String>;

    /// Whether the taker may try the lock when [`Holder::release`] failed:
    /// true for a holder on this host (one that crashed holds no lock
    /// either); false for one whose lock is a lease elsewhere, which only
    /// its answer frees.
    fn lock_without_answer(&self) -> bool {
        true
    }
}

/// Why the volume could not be had.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// This daemon handed the volume over: it serves it no more.
    #[error("the volume was handed over to another daemon")]
    HandedOver,
    /// The other daemon kept the volume.
    #[error("the volume is still held by another daemon ({reason})")]
    StillHeld {
        /// What the holder said when asked to let go.
        reason: String,
    },
    /// Opening or closing the volume failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// Operations in progress did not finish in time.
    #[error("operations on the volume still running after {0:?}")]
    Busy(Duration),
}

/// What a standby daemon needs to open the volume: where it is, its keys
/// (unwrapped ahead of time), the options, and who has it now.
pub struct Standby {
    dir: PathBuf,
    keys: Vec<DataKey>,
    options: VolumeOptions,
    holder: Box<dyn Holder>,
}

impl Standby {
    /// A standby for the volume in `dir`, to be opened with `keys` once
    /// `holder` let go of it.
    pub fn new(
        dir: &Path,
        keys: Vec<DataKey>,
        options: VolumeOptions,
        holder: Box<dyn Holder>,
    ) -> Self {
        Self {
            dir: dir.to_path_buf(),
            keys,
            options,
            holder,
        }
    }

    /// Takes the volume over: the holder lets go, then the lock, then the
    /// open.
    fn take_over(&self) -> Result<Volume, HandoverError> {
        let started = Instant::now();
        let asked = self.holder.release();
        let release_ms = started.elapsed().as_millis();
        if let Err(reason) = &asked {
            if !self.holder.lock_without_answer() {
                return Err(HandoverError::StillHeld {
                    reason: reason.clone(),
                });
            }
            tracing::warn!(%reason, "the volume's holder did not hand it over; trying its lock");
        }
        let deadline = Instant::now() + LOCK_WAIT;
        let lock = loop {
            match VolumeLock::acquire(&self.dir, false) {
                Ok(lock) => break lock,
                Err(VolumeError::Busy { .. }) if Instant::now() < deadline && asked.is_ok() => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(VolumeError::Busy { .. }) => {
                    return Err(HandoverError::StillHeld {
                        reason: asked.err().unwrap_or_else(|| "its lock stayed held".into()),
                    });
                }
                Err(other) => return Err(other.into()),
            }
        };
        let keys = self
            .keys
            .iter()
            .map(DataKey::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| VolumeError::BadOption(format!("copying a key: {e}")))?;
        let volume = Volume::open_locked(&self.dir, lock, keys, &self.options)?;
        tracing::info!(
            release_ms,
            lock_and_open_ms = started.elapsed().as_millis() - release_ms,
            "the holder let go of the volume; opened it"
        );
        Ok(volume)
    }
}

enum State {
    Active(Arc<Volume>),
    Standby(Standby),
    TakingOver,
    HandedOver,
}

/// Called once the volume is active in this daemon (a daemon starts its
/// control socket and compactor then).
pub type OnActive = Box<dyn Fn(&Arc<Volume>) + Send + Sync>;

/// Called when a migration stopped the device, before the early
/// preparation of the hand-over (a daemon pauses its background upkeep
/// then, so that nothing writes after the preparation's checkpoint).
pub type OnPrepare = Box<dyn Fn() + Send + Sync>;

/// A daemon's volume: active, in standby, or handed over (see the module).
pub struct Served {
    state: Mutex<State>,
    changed: Condvar,
    superblock: Superblock,
    on_active: Mutex<Vec<OnActive>>,
    on_prepare: Mutex<Vec<OnPrepare>>,
    /// The log's `write_mark` right after the last early preparation:
    /// while it still is, that checkpoint covers everything (a compaction
    /// that ran since moved blocks into an unsealed segment: it is not).
    prepared_at: Mutex<Option<(u64, u64)>>,
}

impl Served {
    /// An open volume, served from now on.
    pub fn open(volume: Arc<Volume>) -> Self {
        Self {
            superblock: volume.superblock().clone(),
            state: Mutex::new(State::Active(volume)),
            changed: Condvar::new(),
            on_active: Mutex::new(Vec::new()),
            on_prepare: Mutex::new(Vec::new()),
            prepared_at: Mutex::new(None),
        }
    }

    /// A volume this daemon will take over when it is first needed.
    pub fn standby(standby: Standby) -> Result<Self, VolumeError> {
        let superblock = Superblock::load(&standby.dir)?;
        Ok(Self {
            superblock,
            state: Mutex::new(State::Standby(standby)),
            changed: Condvar::new(),
            on_active: Mutex::new(Vec::new()),
            on_prepare: Mutex::new(Vec::new()),
            prepared_at: Mutex::new(None),
        })
    }

    /// The volume's superblock (as it was when serving started): size and
    /// block size for the device, whatever the state.
    pub fn superblock(&self) -> &Superblock {
        &self.superblock
    }

    /// Calls `on_active` once the volume is active (at once if it is).
    /// Several are called in the order they were given.
    pub fn when_active(&self, on_active: OnActive) {
        if let Some(volume) = self.if_active() {
            on_active(&volume);
        }
        self.on_active.lock_or_recover().push(on_active);
    }

    /// Calls `on_prepare` at each [`Served::prepare_hand_over`], before it
    /// seals and checkpoints.
    pub fn when_preparing(&self, on_prepare: OnPrepare) {
        self.on_prepare.lock_or_recover().push(on_prepare);
    }

    /// The volume if it is active now, without taking it over.
    pub fn if_active(&self) -> Option<Arc<Volume>> {
        match &*self.state.lock_or_recover() {
            State::Active(volume) => Some(Arc::clone(volume)),
            _ => None,
        }
    }

    /// True while this daemon waits to take the volume over.
    pub fn is_standby(&self) -> bool {
        matches!(
            &*self.state.lock_or_recover(),
            State::Standby(_) | State::TakingOver
        )
    }

    /// The volume to serve with: takes it over first if this daemon is in
    /// standby (the first caller does; others wait for it).
    pub fn volume(&self) -> Result<Arc<Volume>, HandoverError> {
        let mut state = self.state.lock_or_recover();
        let standby = loop {
            match std::mem::replace(&mut *state, State::TakingOver) {
                State::Standby(standby) => break standby,
                State::Active(volume) => {
                    *state = State::Active(Arc::clone(&volume));
                    return Ok(volume);
                }
                State::HandedOver => {
                    *state = State::HandedOver;
                    return Err(HandoverError::HandedOver);
                }
                State::TakingOver => {
                    state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                }
            }
        };
        drop(state);
        let started = Instant::now();
        let result = standby.take_over().map(Arc::new);
        // What runs with the volume (its uploads, control socket) starts
        // before any request gets it: the others wait until then.
        if let Ok(volume) = &result {
            for on_active in &*self.on_active.lock_or_recover() {
                on_active(volume);
            }
        }
        let mut state = self.state.lock_or_recover();
        let outcome = match result {
            Ok(volume) => {
                *state = State::Active(Arc::clone(&volume));
                tracing::info!(
                    ms = started.elapsed().as_millis(),
                    "took the volume over: serving it"
                );
                Ok(volume)
            }
            Err(error) => {
                *state = State::Standby(standby);
                Err(error)
            }
        };
        drop(state);
        self.changed.notify_all();
        outcome
    }

    /// Hands the volume over (or, at shutdown, just closes it): later calls
    /// of [`Served::volume`] fail, operations in progress finish, then the
    /// volume is flushed, sealed, checkpointed and its lock released. A
    /// standby has nothing to hand over.
    pub fn hand_over(&self) -> Result<(), HandoverError> {
        let volume = {
            let mut state = self.state.lock_or_recover();
            match std::mem::replace(&mut *state, State::HandedOver) {
                State::Active(volume) => volume,
                _ => return Ok(()),
            }
        };
        self.changed.notify_all();
        let deadline = Instant::now() + DRAIN_WAIT;
        let mut volume = volume;
        let volume = loop {
            match Arc::try_unwrap(volume) {
                Ok(volume) => break volume,
                Err(_) if Instant::now() >= deadline => {
                    return Err(HandoverError::Busy(DRAIN_WAIT));
                }
                Err(shared) => {
                    volume = shared;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        let prepared_at = self.prepared_at.lock_or_recover().take();
        if prepared_at.is_some() && prepared_at == Some(volume.log().write_mark()) {
            // Sealed and checkpointed early, nothing written since: the
            // next open replays nothing. Dropping the volume lets go of the
            // lock.
            drop(volume);
        } else {
            volume.close()?;
        }
        Ok(())
    }

    /// A live migration started (dirty logging on): until `goes_on` says
    /// it no longer does (the device stopped for the switch-over, or the
    /// migration ended), a background thread makes the log durable every
    /// [`MIGRATION_FLUSH_EVERY`], as a guest's flush would. The switch-over's
    /// seal then syncs only what the last moments wrote: a guest that never
    /// flushes left the whole run since its last flush to sync there.
    pub fn migration_started(self: &Arc<Self>, goes_on: Box<dyn Fn() -> bool + Send>) {
        let served = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("migration-flush".to_owned())
            .spawn(move || {
                let (mut flushes, mut longest) = (0u32, Duration::ZERO);
                loop {
                    std::thread::sleep(MIGRATION_FLUSH_EVERY);
                    let volume = served.upgrade().and_then(|served| served.if_active());
                    let Some(volume) = volume.filter(|_| goes_on()) else {
                        break;
                    };
                    let started = Instant::now();
                    if let Err(error) = volume.flush() {
                        tracing::warn!(%error, "flushing during the migration failed");
                        break;
                    }
                    flushes += 1;
                    longest = longest.max(started.elapsed());
                }
                tracing::info!(
                    flushes,
                    longest_ms = longest.as_millis(),
                    "flushed the log while the migration copied the VM"
                );
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot flush the log during the migration");
        }
    }

    /// The expensive part of a hand-over, done ahead of it in a background
    /// thread: seals the log heads and writes a checkpoint, as closing would.
    /// The volume stays open and writable (a later write just makes the
    /// hand-over close it in full). For when a migration has stopped the
    /// device; nothing happens unless the volume is active.
    pub fn prepare_hand_over(self: &Arc<Self>) {
        let Some(volume) = self.if_active() else {
            return;
        };
        let served = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("prepare-hand-over".to_owned())
            .spawn(move || {
                let started = Instant::now();
                // Held while it runs: a hand-over waits for it (its
                // `Arc::try_unwrap` does).
                let mut prepared_at = served.prepared_at.lock_or_recover();
                for on_prepare in &*served.on_prepare.lock_or_recover() {
                    on_prepare();
                }
                let paused_ms = started.elapsed().as_millis();
                // Sealing the heads, then the checkpoint (what closing
                // does), timed apart.
                let sealed = volume.log().roll_heads();
                let seal_ms = started.elapsed().as_millis() - paused_ms;
                match sealed.and_then(|()| volume.log().close()) {
                    Ok(()) => {
                        *prepared_at = Some(volume.log().write_mark());
                        tracing::info!(
                            ms = started.elapsed().as_millis(),
                            paused_ms,
                            seal_ms,
                            "device stopped for a migration: log sealed and checkpointed ahead of the hand-over"
                        );
                    }
                    Err(error) => {
                        *prepared_at = None;
                        tracing::warn!(%error, "preparing the hand-over failed; it will close the volume in full");
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot prepare the hand-over ahead of it");
        }
    }
}

#[cfg(test)]
#[path = "handover_tests.rs"]
mod tests;
