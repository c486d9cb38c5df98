//! Read-only looks at how far the log is from its last checkpoint, for
//! metrics: the bytes recovery would replay and the newest checkpoint's age.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::super::{StoreError, checkpoint};
use super::Log;

impl Log {
    /// Bytes appended since the last checkpoint (0 right after one).
    pub fn bytes_since_checkpoint(&self) -> u64 {
        self.bytes_since_checkpoint.load(Ordering::Relaxed)
    }

    /// How long ago the newest checkpoint file was written (`None`: the
    /// log has none yet).
    pub fn newest_checkpoint_age(&self) -> Result<Option<Duration>, StoreError> {
        let Some(newest) = checkpoint::list_checkpoints(&self.checkpoints_dir)?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let written = std::fs::metadata(&newest)
            .and_then(|m| m.modified())
            .map_err(|e| StoreError::io(&newest, e))?;
        Ok(Some(written.elapsed().unwrap_or_default()))
    }
}
