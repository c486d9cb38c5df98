//! Live migration of a volume kept in an object store between hosts
//! (`lsvblk::remote::handover` has the protocol): the destination's
//! standby follows the volume from the store into its own directory and,
//! when its VM starts, asks the writer through the store, waits for its
//! released lease, catches up and claims the next epoch; the source's
//! daemon watches the store for that request and hands over as it does to
//! a standby on its own host.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lsvblk::remote::handover::{self, Answer};
use lsvblk::remote::{self, Follower, Leases, RemoteStore, StoredObject};
use lsvblk::sync::LockOrRecover;
use lsvblk::vhost::StopHandle;
use lsvblk::volume::handover::Holder;

use crate::control::{ControlRequest, call, control_socket_path};
use crate::exit::Failure;
use crate::remote_serve::RemoteServeArgs;
use crate::store::{StoreArgs, remote_failure};

/// How long a standby waits for the writer's answer: its drain, seal,
/// checkpoint and last uploads.
const ANSWER_WAIT: Duration = Duration::from_secs(60);
/// How often the standby looks for the answer.
const ANSWER_POLL: Duration = Duration::from_millis(5);
/// How often a waiting standby catches up with the store.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);
/// How often the writer looks for a request while its device is stopped
/// (a migration's switch-over is near), for how long after the stop, and
/// how often otherwise.
const WATCH_STOPPED: Duration = Duration::from_millis(10);
const WATCH_STOPPED_FOR: Duration = Duration::from_secs(120);
const WATCH_RUNNING: Duration = Duration::from_secs(1);

/// A standby's side: the store, its copy of the volume, and the epoch it
/// claimed once it took the volume over.
pub struct RemoteStandby {
    remote: RemoteStore,
    args: RemoteServeArgs,
    follower: Mutex<Follower>,
    taken: AtomicBool,
    claimed: Mutex<Option<(u64, Vec<StoredObject>)>>,
    /// The daemon's stop: a standby told to stop does not wait for the
    /// writer's answer.
    stop: std::sync::OnceLock<StopHandle>,
}

/// With `--standby --store`: follows the volume into `dir` (rebuilt now,
/// so that its superblock and keys are there), and keeps following it in
/// the background until it is taken over.
pub fn follow(
    store: &StoreArgs,
    args: &RemoteServeArgs,
    dir: &Path,
) -> Result<Option<Arc<RemoteStandby>>, Failure> {
    let Some(remote) = store.open()? else {
        return Ok(None);
    };
    let started = Instant::now();
    let mut follower = Follower::new(remote.clone(), dir, args.cache_size.is_some());
    let caught_up = follower.catch_up().map_err(remote_failure)?;
    tracing::info!(dir = %dir.display(), epoch = caught_up.epoch, objects = caught_up.downloaded,
        ms = started.elapsed().as_millis(), "standby: rebuilt the volume from the object store; following it");
    let standby = Arc::new(RemoteStandby {
        remote,
        args: args.clone(),
        follower: Mutex::new(follower),
        taken: AtomicBool::new(false),
        claimed: Mutex::new(None),
        stop: std::sync::OnceLock::new(),
    });
    let weak = Arc::downgrade(&standby);
    std::thread::Builder::new()
        .name("standby-follow".to_string())
        .spawn(move || {
            loop {
                std::thread::sleep(FOLLOW_EVERY);
                let Some(standby) = weak.upgrade() else { return };
                if standby.taken.load(Ordering::SeqCst) {
                    return;
                }
                let mut follower = standby.follower.lock_or_recover();
                if standby.taken.load(Ordering::SeqCst) {
                    return;
                }
                match follower.catch_up() {
                    Ok(c) if c.downloaded > 0 => {
                        tracing::debug!(epoch = c.epoch, objects = c.downloaded, "standby: caught up")
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "standby: catching up with the object store failed; trying again"),
                }
            }
        })
        .map_err(Failure::internal)?;
    Ok(Some(standby))
}

impl RemoteStandby {
    /// The epoch claimed and the objects it adopted, once taken over.
    pub fn claimed(&self) -> Option<(u64, Vec<StoredObject>)> {
        self.claimed.lock_or_recover().take()
    }

    /// The store and the serve arguments, to start uploading.
    pub fn remote(&self) -> (&RemoteStore, &RemoteServeArgs) {
        (&self.remote, &self.args)
    }

    /// Stops waiting for the writer's answer once `stop` is asked to stop
    /// the daemon (SIGTERM).
    pub fn stops_with(&self, stop: StopHandle) {
        let _ = self.stop.set(stop);
    }

    fn is_stopping(&self) -> bool {
        self.stop.get().is_some_and(StopHandle::is_stopping)
    }

    fn take_over(&self) -> Result<(), String> {
        let store = self.remote.store.as_ref();
        let started = Instant::now();
        let leases = Leases::read(store).map_err(|e| e.to_string())?;
        let epoch = leases.newest();
        if !leases.released.contains(&epoch) {
            handover::ask(store, epoch).map_err(|e| e.to_string())?;
            let stopping = || self.is_stopping();
            match handover::wait_answer(store, epoch, ANSWER_WAIT, ANSWER_POLL, &stopping) {
                Ok(Answer::Released) => {}
                Ok(Answer::Pending) if self.is_stopping() => {
                    if let Err(error) = handover::withdraw(store, epoch) {
                        tracing::warn!(%error, "could not take the hand-over request back");
                    }
                    return Err(format!(
                        "this daemon is stopping: it no longer waits for the writer (epoch {epoch}) \
                         and took its request back (a writer already handing over leaves the \
                         volume served nowhere; serve it again to claim it)"
                    ));
                }
                Ok(Answer::Refused(reason)) => {
                    return Err(format!("the writer (epoch {epoch}) refused: {reason}"));
                }
                Ok(Answer::Pending) => {
                    return Err(format!(
                        "the writer (epoch {epoch}) did not hand the volume over within {ANSWER_WAIT:?}; \
                         if its host is lost, serve the volume here with --takeover instead"
                    ));
                }
                Err(error) => return Err(error.to_string()),
            }
        }
        let released_ms = started.elapsed().as_millis();
        let mut follower = self.follower.lock_or_recover();
        self.taken.store(true, Ordering::SeqCst);
        let caught_up = follower.catch_up().map_err(|e| e.to_string())?;
        let caught_up_ms = started.elapsed().as_millis() - released_ms;
        let lazy = self.args.cache_size.is_some();
        let claimed = remote::claim(&self.remote, follower.dir(), false, lazy)
            .map_err(|e| format!("claiming the volume after the hand-over: {e}"))?;
        tracing::info!(
            from_epoch = epoch,
            epoch = claimed.epoch,
            released_ms,
            caught_up_ms,
            tail_objects = caught_up.downloaded,
            claim_ms = started.elapsed().as_millis() - released_ms - caught_up_ms,
            "the writer on the other host released the volume; claimed it"
        );
        *self.claimed.lock_or_recover() = Some((claimed.epoch, claimed.stored));
        Ok(())
    }
}

/// The holder as a standby on another host sees it: the writer of the
/// newest epoch, reached through the store.
pub struct StoreHolder(pub Arc<RemoteStandby>);

impl Holder for StoreHolder {
    fn release(&self) -> Result<(), String> {
        self.0.take_over()
    }

    fn lock_without_answer(&self) -> bool {
        false
    }
}

/// The writer's side: answers hand-over requests in the store until
/// dropped.
pub struct Watcher {
    stopped: Arc<AtomicBool>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// Watches the store for a standby's request to hand over epoch `epoch` of
/// the volume in `dir`: refused while the device runs, else handed over
/// through this daemon's own control socket (the same hand-over as to a
/// standby on this host; the lease is released once the rest is uploaded).
pub fn watch(
    store: Arc<dyn lsvblk::objstore::ObjectStore>,
    epoch: u64,
    dir: &Path,
    stop: StopHandle,
) -> Result<Watcher, Failure> {
    let stopped = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stopped);
    let socket = control_socket_path(dir);
    std::thread::Builder::new()
        .name("handover-watch".to_string())
        .spawn(move || {
            let mut device_stopped_at: Option<Instant> = None;
            let mut asked_at: Option<Instant> = None;
            while !flag.load(Ordering::SeqCst) {
                // The device's state is looked at every 10 ms, so that a
                // stop is seen at once; the store is asked that often only
                // for a while after a stop.
                std::thread::sleep(WATCH_STOPPED);
                let running = stop.is_device_running();
                device_stopped_at = match (running, device_stopped_at) {
                    (true, _) => None,
                    (false, None) => Some(Instant::now()),
                    (false, at) => at,
                };
                let soon = device_stopped_at.is_some_and(|at| at.elapsed() < WATCH_STOPPED_FOR);
                let every = if soon { WATCH_STOPPED } else { WATCH_RUNNING };
                if asked_at.is_some_and(|at| at.elapsed() < every) {
                    continue;
                }
                asked_at = Some(Instant::now());
                match handover::requested(store.as_ref(), epoch) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(error) => {
                        tracing::debug!(%error, "looking for a hand-over request failed");
                        continue;
                    }
                }
                tracing::info!(epoch, "a standby on another host asks for the volume");
                match call(&socket, &ControlRequest::HandOver, &mut |_| {}) {
                    Ok(_) => return,
                    Err(error) => {
                        let reason = error.to_string();
                        tracing::warn!(%reason, "refusing the hand-over");
                        if let Err(error) = handover::refuse(store.as_ref(), epoch, &reason) {
                            tracing::warn!(%error, "could not store the refusal");
                        }
                    }
                }
            }
        })
        .map_err(Failure::internal)?;
    Ok(Watcher { stopped })
}
