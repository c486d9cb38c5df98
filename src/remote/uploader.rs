//! The uploader: background threads that copy each sealed segment, then
//! each checkpoint (once every segment it needs is up) and the metadata, to
//! the object store, retrying until they succeed: with backoff while the
//! store fails, and reporting it while the store refuses them
//! (`failures.rs`).
//!
//! It hears of seals and checkpoints through the log's [`LogEvents`] and
//! reads the files by path; it never changes the local volume, and it keeps
//! compaction from deleting a segment file before its upload
//! ([`LogEvents::may_delete_segment`]). So the store holds every segment
//! the log ever sealed (until garbage collection), and a rebuild from any
//! stored checkpoint replays an unbroken run of segments after it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

mod events;
mod failures;
mod garbage;
#[cfg(test)]
mod hold_tests;

pub use failures::Refusal;

use super::cache::{CacheStatus, SegmentCache};
use super::collect::StoredObjects;
use super::error::{RemoteError, Result};
use super::layout::{ObjectKind, StoredObject};
use super::{lease, meta};
use crate::limits;
use crate::objstore::ObjectStore;
use crate::store::{Log, LogEvents, WrittenCheckpoint};
use crate::sync::LockOrRecover;

/// Checkpoints kept waiting for their segments; older ones are dropped.
const CHECKPOINTS_PENDING_MAX: usize = 16;

/// What the uploader has done and has left, for `lsvblk status`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct UploadStatus {
    /// Our epoch.
    pub epoch: u64,
    /// Sealed segments not uploaded yet (queued or in flight).
    pub backlog_segments: usize,
    /// Their bytes.
    pub backlog_bytes: u64,
    /// Segments uploaded (or adopted from an older epoch).
    pub uploaded_segments: usize,
    /// Bytes uploaded by this process.
    pub uploaded_bytes: u64,
    /// `seq_next` of the newest checkpoint in the store.
    pub checkpoint_seq: Option<u64>,
    /// Its `segment_id_next`: a rebuild replays the stored segments from
    /// there up to the first one missing.
    pub checkpoint_segment_next: Option<u64>,
    /// The last failure, while uploads are failing.
    pub last_error: Option<String>,
    /// While the store refuses uploads (credentials revoked, bucket gone):
    /// what it answers, and since when. FLUSHes that wait for the store
    /// fail meanwhile.
    pub refused: Option<Refusal>,
    /// The epoch that took the volume over from us, if one did.
    pub fenced_by: Option<u64>,
    /// Objects deleted because nothing needs them any more.
    pub collected_objects: u64,
    /// The metadata (snapshots, ACL) changed since its last upload.
    pub metadata_pending: bool,
    /// The local cache of uploaded segments, with `--cache-size`.
    pub cache: Option<CacheStatus>,
}

#[derive(Default)]
struct State {
    queued: BTreeMap<u64, (PathBuf, u64)>,
    in_flight: BTreeMap<u64, u64>,
    uploaded: BTreeSet<u64>,
    /// Every object of the volume in the store (adopted or ours).
    stored: StoredObjects,
    /// Segments compaction deleted locally (their objects are collected
    /// once no stored checkpoint needs them).
    deleted: BTreeSet<u64>,
    /// Stored checkpoint and metadata objects replaced by newer ones of the
    /// same number, to delete before anything else is collected.
    superseded: Vec<StoredObject>,
    /// Segments whose file vanished before their upload (someone deleted
    /// it under us): a flush waiting for one fails.
    vanished: BTreeSet<u64>,
    /// Checkpoints written and not stored yet, oldest first: the order
    /// they were written in (two may share a `seq_next` when nothing was
    /// appended between them: the later one is the newer), and their bytes
    /// (read when written: the log deletes old checkpoint files). The
    /// newest whose segments are all stored goes up; older ones are then
    /// dropped. Keeping more than the newest matters under compaction,
    /// whose checkpoints keep needing its open segment.
    checkpoints: Vec<(u64, WrittenCheckpoint, Bytes)>,
    /// Checkpoints heard of so far (the order of the next one).
    checkpoints_written: u64,
    /// The order of the newest checkpoint stored (with the metadata as it
    /// was when it went up).
    checkpoints_stored: u64,
    checkpoint_busy: bool,
    meta_crc: Option<u32>,
    /// `meta::fingerprint` of the metadata files when they were last
    /// collected for upload.
    meta_fingerprint: Option<u64>,
    status: UploadStatus,
    /// The run of failed uploads going on, if any.
    failing: Option<failures::Failing>,
    /// When older epochs' folders were last swept for objects the
    /// volume does not hold.
    last_orphan_sweep: Option<Instant>,
    /// An upload met `NoSuchBucket`: before the next one, check that the
    /// store still holds the volume (the bucket may be back empty).
    bucket_missing: bool,
    /// The bucket came back without the volume: refused until we stop.
    store_lost: bool,
    /// `finish` was called: upload what is queued, then stop.
    stopping: bool,
    /// `finish` is done waiting: the threads stop now.
    stopped: bool,
    /// Segment uploads wait while fewer sealed bytes than this wait for
    /// upload and a write burst streams (0: never; [`Uploader::hold_during_bursts`]).
    hold_bytes: u64,
    /// When a segment was last sealed.
    last_seal: Option<Instant>,
    /// When the oldest segment queued now was queued.
    queued_since: Option<Instant>,
    /// Callers waiting for uploads (a FLUSH, compaction, a hand-over):
    /// nothing is held back for a burst while one waits.
    waiters: usize,
}

impl State {
    /// The newest checkpoint whose segments are all stored.
    fn ready_checkpoint(&self) -> Option<&(u64, WrittenCheckpoint, Bytes)> {
        if self.checkpoint_busy {
            return None;
        }
        self.checkpoints
            .iter()
            .rev()
            .find(|(_, c, _)| c.needs.iter().all(|id| self.uploaded.contains(id)))
    }

    fn checkpoint_ready(&self) -> bool {
        self.ready_checkpoint().is_some()
    }

    fn backlog_bytes(&self) -> u64 {
        self.queued.values().map(|(_, len)| len).sum::<u64>() + self.in_flight.values().sum::<u64>()
    }

    /// How much longer the next segment upload waits for the write burst
    /// going on to pass; `None`: it goes now. Nothing waits while someone
    /// waits for uploads, while stopping, once the backlog reaches
    /// `hold_bytes`, once the burst paused for
    /// [`limits::UPLOAD_HOLD_BURST_GAP`], or once the oldest queued segment
    /// waited [`limits::UPLOAD_HOLD_MAX`].
    fn burst_hold(&self, now: Instant) -> Option<Duration> {
        if self.hold_bytes == 0
            || self.stopping
            || self.waiters > 0
            || self.backlog_bytes() >= self.hold_bytes
        {
            return None;
        }
        let since_seal = now.saturating_duration_since(self.last_seal?);
        let queued_for = now.saturating_duration_since(self.queued_since?);
        let gap_left = limits::UPLOAD_HOLD_BURST_GAP.checked_sub(since_seal)?;
        let max_left = limits::UPLOAD_HOLD_MAX.checked_sub(queued_for)?;
        Some(gap_left.min(max_left)).filter(|left| !left.is_zero())
    }

    fn unsettled(&self) -> BTreeSet<u64> {
        self.queued
            .keys()
            .chain(self.in_flight.keys())
            .copied()
            .collect()
    }
}

struct Shared {
    store: Arc<dyn ObjectStore>,
    /// Where uploaded segments go, if their local copies are a cache.
    cache: Option<Arc<SegmentCache>>,
    dir: PathBuf,
    epoch: u64,
    state: Mutex<State>,
    changed: Condvar,
}

/// A caller counted in `State::waiters` (see [`Shared::waiting`]).
struct Waiting<'a>(&'a Shared);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().waiters -= 1;
    }
}

enum Job {
    Segment { id: u64, path: PathBuf, len: u64 },
    Checkpoint(u64, WrittenCheckpoint, Bytes),
}

/// Uploads a volume's log to its object store in the background.
pub struct Uploader {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Uploader {
    /// Starts `threads` upload threads for the volume in `dir`, writing as
    /// `epoch`; `adopted` are the objects already in the store. Segments
    /// go into `cache` once uploaded.
    pub fn start(
        store: Arc<dyn ObjectStore>,
        dir: &Path,
        epoch: u64,
        adopted: &[StoredObject],
        threads: usize,
        cache: Option<Arc<SegmentCache>>,
    ) -> Result<Arc<Self>> {
        let state = State {
            uploaded: adopted
                .iter()
                .filter(|o| o.kind == ObjectKind::Segment)
                .map(|o| o.number)
                .collect(),
            stored: adopted
                .iter()
                .map(|o| ((o.kind, o.number), o.clone()))
                .collect(),
            status: UploadStatus {
                epoch,
                ..UploadStatus::default()
            },
            ..State::default()
        };
        let shared = Arc::new(Shared {
            store,
            cache,
            dir: dir.to_path_buf(),
            epoch,
            state: Mutex::new(state),
            changed: Condvar::new(),
        });
        let mut workers = Vec::new();
        for n in 0..threads.max(1) {
            let shared = Arc::clone(&shared);
            let worker = std::thread::Builder::new()
                .name(format!("uploader-{n}"))
                .spawn(move || shared.work())
                .map_err(|e| RemoteError::io(dir, e))?;
            workers.push(worker);
        }
        Ok(Arc::new(Self {
            shared,
            workers: Mutex::new(workers),
        }))
    }

    /// Queues every segment file of the volume not in the store yet (all
    /// are sealed: an opened log has no open segment before its first
    /// write) and `checkpoint`, the newest.
    pub fn queue_existing(&self, checkpoint: Option<WrittenCheckpoint>) -> Result<()> {
        let segments = self.shared.dir.join("segments");
        for entry in std::fs::read_dir(&segments).map_err(|e| RemoteError::io(&segments, e))? {
            let entry = entry.map_err(|e| RemoteError::io(&segments, e))?;
            if let Some(id) = entry.file_name().to_str().and_then(segment_id_of) {
                self.segment_sealed(id, &entry.path());
            }
        }
        if let Some(checkpoint) = checkpoint {
            self.checkpoint_written(&checkpoint);
        }
        Ok(())
    }

    /// Holds segment uploads back while a write burst streams and fewer
    /// than `bytes` wait for upload (see [`limits::UPLOAD_HOLD_BURST_GAP`]):
    /// on a host that also runs the store, or a network shared with the
    /// guest's I/O, the burst's writes then do not compete with its
    /// uploads. For `--flush local` only, where a FLUSH does not wait for
    /// the store below the lag; a FLUSH, compaction or hand-over waiting
    /// for uploads ends the hold at once.
    pub fn hold_during_bursts(&self, bytes: u64) {
        self.shared.lock().hold_bytes = bytes;
    }

    /// The uploader's figures.
    pub fn status(&self) -> UploadStatus {
        let fingerprint = meta::fingerprint(&self.shared.dir).ok();
        let state = self.shared.lock();
        let mut status = state.status.clone();
        status.backlog_segments = state.queued.len() + state.in_flight.len();
        status.backlog_bytes = state.backlog_bytes();
        status.uploaded_segments = state.uploaded.len();
        status.metadata_pending = state.meta_fingerprint != fingerprint;
        status.refused = state.failing.as_ref().and_then(failures::Failing::refusal);
        drop(state);
        status.cache = self.shared.cache.as_ref().map(|c| c.status());
        status
    }

    /// The cache of uploaded segments, if their local copies are one.
    pub fn cache(&self) -> Option<&Arc<SegmentCache>> {
        self.shared.cache.as_ref()
    }

    /// Our epoch.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.shared.store
    }

    /// Waits until every segment sealed before this call is in the store,
    /// then checks that no newer writer took the volume over. Gives up
    /// after `timeout`.
    pub fn wait_sealed_uploaded(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let _waiting = self.shared.waiting();
        let mut state = self.shared.lock();
        let waiting_for = state.unsettled();
        loop {
            fenced(&state, self.shared.epoch)?;
            if let Some(id) = waiting_for.intersection(&state.vanished).next() {
                return Err(RemoteError::Incomplete {
                    reason: format!(
                        "segment {id:016x} vanished from the volume directory before its upload"
                    ),
                });
            }
            let pending = state.unsettled();
            if waiting_for.intersection(&pending).next().is_none() {
                break;
            }
            state = self
                .shared
                .wait_until(state, deadline, "the segments before a flush")?;
        }
        drop(state);
        self.check_fence()
    }

    /// Waits until the store holds the volume's metadata as it is now: the
    /// wrapped keys its records need (a rotation's new key, rewrapped
    /// blobs, a new ACL). When it does not, writes a checkpoint (the
    /// metadata goes up with each) and waits for its upload. Gives up
    /// after `timeout`.
    pub fn wait_metadata_stored(&self, log: &Log, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let now = meta::fingerprint(&self.shared.dir)?;
        if self.shared.lock().meta_fingerprint == Some(now) {
            return Ok(());
        }
        // Its upload collects the metadata files after this point; with the
        // heads sealed it needs no segment that is still being written.
        log.roll_heads()?;
        log.checkpoint()?;
        let _waiting = self.shared.waiting();
        let mut state = self.shared.lock();
        let written = state.checkpoints_written;
        while state.checkpoints_stored < written {
            fenced(&state, self.shared.epoch)?;
            state = self
                .shared
                .wait_until(state, deadline, "the volume's metadata")?;
        }
        Ok(())
    }

    /// True when the metadata files (a new snapshot, a new ACL, ...) changed
    /// since their last upload and no checkpoint waits to take them up:
    /// then a checkpoint is due (it writes out snapshot indexes, and the
    /// metadata goes up with it).
    pub fn metadata_pending(&self) -> bool {
        let dir = &self.shared.dir;
        let (Ok(now), Ok(unindexed)) = (meta::fingerprint(dir), meta::snapshot_unindexed(dir))
        else {
            return false;
        };
        let state = self.shared.lock();
        (state.meta_fingerprint != Some(now) || unindexed)
            && state.checkpoints.is_empty()
            && !state.checkpoint_busy
    }

    /// Waits until the sealed segments not in the store hold at most
    /// `bytes`, or `timeout` passes.
    pub fn wait_backlog_below(&self, bytes: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let _waiting = self.shared.waiting();
        let mut state = self.shared.lock();
        while state.backlog_bytes() > bytes {
            fenced(&state, self.shared.epoch)?;
            state = self
                .shared
                .wait_until(state, deadline, "the upload backlog")?;
        }
        fenced(&state, self.shared.epoch)
    }

    /// Asks the store whether a newer epoch exists; if so we are fenced:
    /// uploads stop and every later call fails.
    pub fn check_fence(&self) -> Result<()> {
        let result = lease::check_not_fenced(self.shared.store.as_ref(), self.shared.epoch);
        if let Err(RemoteError::Fenced { by, .. }) = &result {
            let mut state = self.shared.lock();
            if state.status.fenced_by.is_none() {
                tracing::error!(
                    epoch = self.shared.epoch,
                    by,
                    "fenced: another writer took the volume over; uploads stop"
                );
            }
            state.status.fenced_by = Some(*by);
            self.shared.changed.notify_all();
        }
        result
    }

    /// Uploads what is queued (waiting at most `timeout`), stops the
    /// threads, and says whether everything got up.
    pub fn finish(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        state.stopping = true;
        self.shared.changed.notify_all();
        let drained = loop {
            let idle = state.queued.is_empty() && state.in_flight.is_empty();
            if (idle && !state.checkpoint_ready() && !state.checkpoint_busy)
                || state.status.fenced_by.is_some()
            {
                break idle && state.checkpoints.is_empty();
            }
            match self.shared.wait_until(state, deadline, "the last uploads") {
                Ok(next) => state = next,
                Err(_) => {
                    state = self.shared.lock();
                    break false;
                }
            }
        };
        drop(state);
        self.shared.lock().stopped = true;
        self.shared.changed.notify_all();
        for worker in std::mem::take(&mut *self.workers.lock_or_recover()) {
            let _ = worker.join();
        }
        drained
    }
}

fn fenced(state: &State, epoch: u64) -> Result<()> {
    if let Some(by) = state.status.fenced_by {
        return Err(RemoteError::Fenced { epoch, by });
    }
    if state.stopped {
        return Err(RemoteError::Incomplete {
            reason: "the uploader has stopped".to_string(),
        });
    }
    Ok(())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock_or_recover()
    }

    /// Counts a caller waiting for uploads until the guard drops (take it
    /// before the state's lock: it locks when it drops).
    fn waiting(&self) -> Waiting<'_> {
        self.lock().waiters += 1;
        self.changed.notify_all();
        Waiting(self)
    }

    fn wait_until<'a>(
        &self,
        state: MutexGuard<'a, State>,
        deadline: Instant,
        what: &str,
    ) -> Result<MutexGuard<'a, State>> {
        failures::check_refused(&state)?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let reason = state.status.last_error.clone().unwrap_or_default();
            return Err(RemoteError::Incomplete {
                reason: format!("timed out waiting for {what} to reach the store ({reason})"),
            });
        }
        let (state, _) = self
            .changed
            .wait_timeout(state, left.min(Duration::from_millis(500)))
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(state)
    }

    fn work(&self) {
        while let Some(job) = self.next_job() {
            let mut backoff = failures::BACKOFF_FIRST;
            while let Err(error) = self.still_stored().and_then(|()| self.run(&job)) {
                if !self.failed(&error, &mut backoff) {
                    return;
                }
            }
            self.done(&job);
        }
    }

    fn next_job(&self) -> Option<Job> {
        let mut state = self.lock();
        loop {
            if state.status.fenced_by.is_some() || state.stopped {
                return None;
            }
            if !state.queued.is_empty()
                && let Some(left) = state.burst_hold(Instant::now())
            {
                state = self
                    .changed
                    .wait_timeout(state, left)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
                continue;
            }
            if let Some((id, (path, len))) = state.queued.pop_first() {
                if state.queued.is_empty() {
                    state.queued_since = None;
                }
                state.in_flight.insert(id, len);
                return Some(Job::Segment { id, path, len });
            }
            if let Some((order, checkpoint, bytes)) = state.ready_checkpoint().cloned() {
                state.checkpoint_busy = true;
                return Some(Job::Checkpoint(order, checkpoint, bytes));
            }
            if state.stopping && state.in_flight.is_empty() && !state.checkpoint_busy {
                return None;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn done(&self, job: &Job) {
        let mut state = self.lock();
        match job {
            Job::Segment { id, .. } => {
                state.in_flight.remove(id);
            }
            Job::Checkpoint(order, ..) => {
                state.checkpoint_busy = false;
                state.checkpoints_stored = state.checkpoints_stored.max(*order);
                state.checkpoints.retain(|(o, ..)| o > order);
            }
        }
        failures::succeeded(&mut state);
        self.changed.notify_all();
    }

    fn run(&self, job: &Job) -> Result<()> {
        match job {
            Job::Segment { id, path, len } => self.upload_segment(*id, path, *len),
            Job::Checkpoint(_, checkpoint, bytes) => {
                self.upload_checkpoint(checkpoint, bytes.clone())
            }
        }
    }

    fn upload_segment(&self, id: u64, path: &Path, _len: u64) -> Result<()> {
        let bytes = match read_synced(path) {
            Ok(bytes) => bytes,
            Err(RemoteError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                tracing::error!(
                    segment = format!("{id:016x}"),
                    "a segment file vanished before its upload; a rebuild from the store will stop before it"
                );
                self.lock().vanished.insert(id);
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        let object = StoredObject::describe(ObjectKind::Segment, id, self.epoch, &bytes);
        let len = bytes.len() as u64;
        self.store.put(&object.key(), bytes)?;
        let mut state = self.lock();
        state.uploaded.insert(id);
        state.stored.insert((object.kind, id), object.clone());
        state.status.uploaded_bytes += len;
        drop(state);
        if let Some(cache) = &self.cache {
            cache.admit(object, false);
        }
        Ok(())
    }

    fn upload_checkpoint(&self, checkpoint: &WrittenCheckpoint, bytes: Bytes) -> Result<()> {
        lease::check_not_fenced(self.store.as_ref(), self.epoch).inspect_err(|error| {
            if let RemoteError::Fenced { by, .. } = error {
                self.lock().status.fenced_by = Some(*by);
            }
        })?;
        let seq = checkpoint.seq_next;
        // Taken before the files are read: a change while they are read
        // shows as pending again.
        let fingerprint = meta::fingerprint(&self.dir)?;
        let bundle = meta::collect(&self.dir)?;
        let bundle_crc = crc32c::crc32c(&bundle);
        // An object of the same kind and number that these replace (a
        // checkpoint written again with nothing appended in between) goes
        // first when garbage is collected: a rebuild must never pick it.
        if self.lock().meta_crc != Some(bundle_crc) {
            let object = StoredObject::describe(ObjectKind::Meta, seq, self.epoch, &bundle);
            self.store.put(&object.key(), bundle)?;
            let mut state = self.lock();
            state.meta_crc = Some(bundle_crc);
            if let Some(old) = state.stored.insert((object.kind, seq), object.clone())
                && old != object
            {
                state.superseded.push(old);
            }
        }
        self.lock().meta_fingerprint = Some(fingerprint);
        let object = StoredObject::describe(ObjectKind::Checkpoint, seq, self.epoch, &bytes);
        self.store.put(&object.key(), bytes)?;
        let mut state = self.lock();
        state.status.checkpoint_seq = Some(seq);
        state.status.checkpoint_segment_next = Some(checkpoint.segment_id_next);
        if let Some(old) = state.stored.insert((object.kind, seq), object.clone())
            && old != object
        {
            state.superseded.push(old);
        }
        drop(state);
        self.collect_garbage(checkpoint);
        Ok(())
    }
}

/// Syncs a file (its seal record may not be yet) and reads it whole.
fn read_synced(path: &Path) -> Result<Bytes> {
    let mut file = File::open(path).map_err(|e| RemoteError::io(path, e))?;
    file.sync_data().map_err(|e| RemoteError::io(path, e))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| RemoteError::io(path, e))?;
    Ok(Bytes::from(bytes))
}

/// The id in a segment file name (`<16 hex digits>.seg`).
pub fn segment_id_of(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
}
