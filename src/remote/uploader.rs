//! The uploader: background threads that copy each sealed segment, then
//! each checkpoint (once every segment it needs is up) and the metadata, to
//! the object store, retrying with backoff until they succeed.
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

use super::error::{RemoteError, Result};
use super::layout::{ObjectKind, StoredObject};
use super::{lease, meta};
use crate::objstore::ObjectStore;
use crate::store::{LogEvents, WrittenCheckpoint};
use crate::sync::LockOrRecover;

/// First wait after a failed upload; doubles up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// Checkpoints kept waiting for their segments; older ones are dropped.
const CHECKPOINTS_PENDING_MAX: usize = 16;
/// Longest wait between two attempts of one upload.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

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
    /// The epoch that took the volume over from us, if one did.
    pub fenced_by: Option<u64>,
}

#[derive(Default)]
struct State {
    queued: BTreeMap<u64, (PathBuf, u64)>,
    in_flight: BTreeMap<u64, u64>,
    uploaded: BTreeSet<u64>,
    /// Segments whose file vanished before their upload (someone deleted
    /// it under us): a flush waiting for one fails.
    vanished: BTreeSet<u64>,
    /// Checkpoints written and not stored yet, oldest first, with their
    /// bytes (read when written: the log deletes old checkpoint files).
    /// The newest whose segments are all stored goes up; older ones are
    /// then dropped. Keeping more than the newest matters under
    /// compaction, whose checkpoints keep needing its open segment.
    checkpoints: Vec<(WrittenCheckpoint, Bytes)>,
    checkpoint_busy: bool,
    meta_crc: Option<u32>,
    status: UploadStatus,
    /// `finish` was called: upload what is queued, then stop.
    stopping: bool,
    /// `finish` is done waiting: the threads stop now.
    stopped: bool,
}

impl State {
    /// The newest checkpoint whose segments are all stored.
    fn ready_checkpoint(&self) -> Option<&(WrittenCheckpoint, Bytes)> {
        if self.checkpoint_busy {
            return None;
        }
        self.checkpoints
            .iter()
            .rev()
            .find(|(c, _)| c.needs.iter().all(|id| self.uploaded.contains(id)))
    }

    fn checkpoint_ready(&self) -> bool {
        self.ready_checkpoint().is_some()
    }

    fn backlog_bytes(&self) -> u64 {
        self.queued.values().map(|(_, len)| len).sum::<u64>() + self.in_flight.values().sum::<u64>()
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
    dir: PathBuf,
    epoch: u64,
    state: Mutex<State>,
    changed: Condvar,
}

enum Job {
    Segment { id: u64, path: PathBuf, len: u64 },
    Checkpoint(WrittenCheckpoint, Bytes),
}

/// Uploads a volume's log to its object store in the background.
pub struct Uploader {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Uploader {
    /// Starts `threads` upload threads for the volume in `dir`, writing as
    /// `epoch`; `adopted` are the segments already in the store.
    pub fn start(
        store: Arc<dyn ObjectStore>,
        dir: &Path,
        epoch: u64,
        adopted: impl IntoIterator<Item = u64>,
        threads: usize,
    ) -> Result<Arc<Self>> {
        let state = State {
            uploaded: adopted.into_iter().collect(),
            status: UploadStatus {
                epoch,
                ..UploadStatus::default()
            },
            ..State::default()
        };
        let shared = Arc::new(Shared {
            store,
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

    /// The uploader's figures.
    pub fn status(&self) -> UploadStatus {
        let state = self.shared.lock();
        let mut status = state.status.clone();
        status.backlog_segments = state.queued.len() + state.in_flight.len();
        status.backlog_bytes = state.backlog_bytes();
        status.uploaded_segments = state.uploaded.len();
        status
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

    /// Waits until the sealed segments not in the store hold at most
    /// `bytes`, or `timeout` passes.
    pub fn wait_backlog_below(&self, bytes: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
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

impl LogEvents for Uploader {
    fn segment_sealed(&self, segment_id: u64, path: &Path) {
        let len = std::fs::metadata(path).map_or(0, |m| m.len());
        let mut state = self.shared.lock();
        if !state.uploaded.contains(&segment_id) && !state.in_flight.contains_key(&segment_id) {
            state.queued.insert(segment_id, (path.to_path_buf(), len));
            self.shared.changed.notify_all();
        }
    }

    fn checkpoint_written(&self, checkpoint: &WrittenCheckpoint) {
        // The file was just written and synced: this read is from the page
        // cache. A failure only skips this checkpoint; a later one follows.
        let bytes = match std::fs::read(&checkpoint.path) {
            Ok(bytes) => Bytes::from(bytes),
            Err(error) => {
                tracing::warn!(%error, path = %checkpoint.path.display(), "cannot read a checkpoint to upload");
                return;
            }
        };
        let mut state = self.shared.lock();
        let newer = state
            .checkpoints
            .last()
            .is_none_or(|(c, _)| c.seq_next < checkpoint.seq_next);
        if newer {
            state.checkpoints.push((checkpoint.clone(), bytes));
            if state.checkpoints.len() > CHECKPOINTS_PENDING_MAX {
                state.checkpoints.remove(0);
            }
            self.shared.changed.notify_all();
        }
    }

    fn may_delete_segment(&self, segment_id: u64) -> bool {
        self.shared.lock().uploaded.contains(&segment_id)
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

    fn wait_until<'a>(
        &self,
        state: MutexGuard<'a, State>,
        deadline: Instant,
        what: &str,
    ) -> Result<MutexGuard<'a, State>> {
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
            let mut backoff = BACKOFF_FIRST;
            loop {
                match self.run(&job) {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(%error, "upload failed; retrying");
                        let mut state = self.lock();
                        state.status.last_error = Some(error.to_string());
                        if state.status.fenced_by.is_some() || state.stopped {
                            return;
                        }
                        drop(state);
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
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
            if let Some((id, (path, len))) = state.queued.pop_first() {
                state.in_flight.insert(id, len);
                return Some(Job::Segment { id, path, len });
            }
            if let Some((checkpoint, bytes)) = state.ready_checkpoint().cloned() {
                state.checkpoint_busy = true;
                return Some(Job::Checkpoint(checkpoint, bytes));
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
            Job::Checkpoint(checkpoint, _) => {
                state.checkpoint_busy = false;
                state
                    .checkpoints
                    .retain(|(c, _)| c.seq_next > checkpoint.seq_next);
            }
        }
        state.status.last_error = None;
        self.changed.notify_all();
    }

    fn run(&self, job: &Job) -> Result<()> {
        match job {
            Job::Segment { id, path, len } => self.upload_segment(*id, path, *len),
            Job::Checkpoint(checkpoint, bytes) => self.upload_checkpoint(checkpoint, bytes.clone()),
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
        state.status.uploaded_bytes += len;
        Ok(())
    }

    fn upload_checkpoint(&self, checkpoint: &WrittenCheckpoint, bytes: Bytes) -> Result<()> {
        lease::check_not_fenced(self.store.as_ref(), self.epoch).inspect_err(|error| {
            if let RemoteError::Fenced { by, .. } = error {
                self.lock().status.fenced_by = Some(*by);
            }
        })?;
        let seq = checkpoint.seq_next;
        let bundle = meta::collect(&self.dir)?;
        let bundle_crc = crc32c::crc32c(&bundle);
        if self.lock().meta_crc != Some(bundle_crc) {
            let object = StoredObject::describe(ObjectKind::Meta, seq, self.epoch, &bundle);
            self.store.put(&object.key(), bundle)?;
            self.lock().meta_crc = Some(bundle_crc);
        }
        let object = StoredObject::describe(ObjectKind::Checkpoint, seq, self.epoch, &bytes);
        self.store.put(&object.key(), bytes)?;
        let mut state = self.lock();
        state.status.checkpoint_seq = Some(seq);
        state.status.checkpoint_segment_next = Some(checkpoint.segment_id_next);
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
