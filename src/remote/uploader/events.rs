//! How the uploader hears of the log: seals and checkpoints queue uploads,
//! compaction asks before it deletes a segment file, and reads of evicted
//! data go through the cache.

use std::path::Path;

use bytes::Bytes;

use super::{CHECKPOINTS_PENDING_MAX, Uploader};
use crate::store::{LogEvents, ReadPin, ReadRange, WrittenCheckpoint};

impl LogEvents for Uploader {
    fn segment_sealed(&self, segment_id: u64, path: &Path) {
        let len = std::fs::metadata(path).map_or(0, |m| m.len());
        let mut state = self.shared.lock();
        let now = std::time::Instant::now();
        state.last_seal = Some(now);
        if !state.uploaded.contains(&segment_id) && !state.in_flight.contains_key(&segment_id) {
            if state.queued.is_empty() {
                state.queued_since = Some(now);
            }
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
        if let Some(cache) = &self.shared.cache {
            cache.checkpoint_written(checkpoint.segment_id_next);
        }
        // The log writes checkpoints one at a time: this one is the newest.
        let mut state = self.shared.lock();
        state.checkpoints_written += 1;
        let order = state.checkpoints_written;
        state.checkpoints.push((order, checkpoint.clone(), bytes));
        if state.checkpoints.len() > CHECKPOINTS_PENDING_MAX {
            state.checkpoints.remove(0);
        }
        self.shared.changed.notify_all();
    }

    fn may_delete_segment(&self, segment_id: u64) -> bool {
        self.shared.lock().uploaded.contains(&segment_id)
    }

    fn segment_deleted(&self, segment_id: u64) {
        self.shared.lock().deleted.insert(segment_id);
        if let Some(cache) = &self.shared.cache {
            cache.forget(segment_id);
        }
    }

    fn before_reads(&self, ranges: &[ReadRange]) -> Vec<std::io::Result<ReadPin>> {
        let Some(cache) = &self.shared.cache else {
            return ranges.iter().map(|_| Ok(None)).collect();
        };
        cache
            .pin_all(ranges)
            .into_iter()
            .map(|outcome| match outcome {
                Ok(pin) => Ok(pin.map(|p| Box::new(p) as Box<dyn Send>)),
                Err(error) => Err(std::io::Error::other(error.to_string())),
            })
            .collect()
    }
}
