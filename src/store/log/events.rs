//! What the log tells an observer that mirrors it elsewhere (the object-store
//! uploader): a segment was sealed, a checkpoint was written. Additive: the
//! log works the same with no observer; an observer mostly learns. It may
//! hold back compaction deleting a segment file it still has to copy, and it
//! is asked before the log reads a sealed segment's data (a cache that
//! evicted it brings it back).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::super::StoreError;
use super::super::checkpoint::CheckpointData;
use super::super::snapshot::segments_needed;
use super::Log;

/// A checkpoint the log just wrote durably.
#[derive(Clone, Debug)]
pub struct WrittenCheckpoint {
    /// Its file.
    pub path: PathBuf,
    /// Its `seq_next` (also its file name).
    pub seq_next: u64,
    /// Segments with this id or higher are replayed from their start.
    pub segment_id_next: u64,
    /// Every segment an open from this checkpoint reads or checks
    /// (`store::segments_needed`).
    pub needs: BTreeSet<u64>,
}

impl WrittenCheckpoint {
    fn new(path: PathBuf, data: &CheckpointData) -> Self {
        let needs = segments_needed(data);
        Self {
            path,
            seq_next: data.seq_next,
            segment_id_next: data.segment_id_next,
            needs,
        }
    }
}

/// An observer of the log. Called on the thread that sealed or
/// checkpointed, with log locks held: it must only note the event and
/// return (do the work on its own threads).
pub trait LogEvents: Send + Sync {
    /// Segment `segment_id` (file `path`) got its seal record: it is
    /// immutable from now on. Its records were synced before the seal; the
    /// seal itself is synced by whoever reads the file first.
    fn segment_sealed(&self, segment_id: u64, path: &Path);
    /// A checkpoint was written durably.
    fn checkpoint_written(&self, checkpoint: &WrittenCheckpoint);
    /// Whether compaction may delete the file of segment `segment_id`, whose
    /// data it moved elsewhere. An observer that has not copied it yet says
    /// no: the segment then stays (it holds no live data, so a later
    /// compaction deletes it first). Called with log locks held.
    fn may_delete_segment(&self, segment_id: u64) -> bool {
        let _ = segment_id;
        true
    }
    /// Compaction deleted the file of segment `segment_id`: nothing in the
    /// log refers to it any more. Called with log locks held.
    fn segment_deleted(&self, segment_id: u64) {
        let _ = segment_id;
    }
    /// Called before the log reads bytes `start..end` of sealed segment
    /// `segment_id` for their data: an observer that evicted them from the
    /// file (a cache of an object store) writes them back first, and keeps
    /// them there while the returned pin lives (the log drops it after the
    /// read). Called without log locks. A batch of one
    /// ([`LogEvents::before_reads`]): observers implement that one.
    fn before_read(&self, segment_id: u64, start: u64, end: u64) -> std::io::Result<ReadPin> {
        let range = ReadRange {
            segment_id,
            start,
            end,
        };
        self.before_reads(&[range])
            .pop()
            .expect("one outcome per read")
    }
    /// [`LogEvents::before_read`] for the reads of one batch at once: an
    /// observer may fetch what they all need in parallel. One outcome per
    /// range, in order. Called without log locks.
    fn before_reads(&self, ranges: &[ReadRange]) -> Vec<std::io::Result<ReadPin>> {
        ranges.iter().map(|_| Ok(None)).collect()
    }
}

/// What [`LogEvents::before_read`] returns: held for the length of a read.
pub type ReadPin = Option<Box<dyn Send>>;

/// Bytes `start..end` of sealed segment `segment_id` that a read is about
/// to read (see [`LogEvents::before_reads`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRange {
    /// The segment.
    pub segment_id: u64,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Log {
    /// Sets the observer of this log's seals and checkpoints (once; later
    /// calls are ignored and return false).
    pub fn set_events(&self, events: Arc<dyn LogEvents>) -> bool {
        self.events.set(events).is_ok()
    }

    pub(super) fn notify_sealed(&self, segment_id: u64) {
        if let Some(events) = self.events.get() {
            events.segment_sealed(segment_id, &self.segment_path(segment_id));
        }
    }

    /// Whether the observer, if any, lets segment `segment_id` be deleted.
    pub(super) fn may_delete_segment(&self, segment_id: u64) -> bool {
        self.events
            .get()
            .is_none_or(|events| events.may_delete_segment(segment_id))
    }

    pub(super) fn notify_deleted(&self, segment_id: u64) {
        if let Some(events) = self.events.get() {
            events.segment_deleted(segment_id);
        }
    }

    /// Asks the observer, if any, to make bytes `start..end` of segment
    /// `segment_id` readable (see [`LogEvents::before_read`]).
    pub(super) fn before_read(
        &self,
        segment_id: u64,
        start: u64,
        end: u64,
    ) -> Result<ReadPin, StoreError> {
        match self.events.get() {
            Some(events) => events
                .before_read(segment_id, start, end)
                .map_err(|e| StoreError::io(&self.segment_path(segment_id), e)),
            None => Ok(None),
        }
    }

    /// [`Log::before_read`] for a batch of reads (see
    /// [`LogEvents::before_reads`]).
    pub(super) fn before_reads(&self, ranges: &[ReadRange]) -> Vec<Result<ReadPin, StoreError>> {
        match self.events.get() {
            Some(events) => events
                .before_reads(ranges)
                .into_iter()
                .zip(ranges)
                .map(|(pin, range)| {
                    pin.map_err(|e| StoreError::io(&self.segment_path(range.segment_id), e))
                })
                .collect(),
            None => ranges.iter().map(|_| Ok(None)).collect(),
        }
    }

    pub(super) fn notify_checkpoint(&self, path: PathBuf, data: &CheckpointData) {
        if let Some(events) = self.events.get() {
            events.checkpoint_written(&WrittenCheckpoint::new(path, data));
        }
    }

    /// The directory of the segment files.
    pub fn segments_dir(&self) -> &Path {
        &self.segments_dir
    }
}
