//! Making the log durable: flushes (fdatasync), seal records, checkpoints,
//! and closing.

use std::fs::{self, File};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::super::record::{RecordHeader, RecordKind};
use super::super::{StoreError, checkpoint, sync_dir};
use super::Log;
use crate::crypto::KeyId;
use crate::limits::CHECKPOINTS_KEPT;
use crate::sync::LockOrRecover;

/// A segment no head appends to any more, waiting for the next flush.
pub(super) struct PendingSeal {
    pub(super) id: u64,
    pub(super) file: Arc<File>,
    pub(super) end: u64,
    /// Full segments get a seal record after the sync; an abandoned one (its
    /// tail may hold a failed write) does not, so replay cuts the tail.
    pub(super) seal: bool,
}

impl Log {
    /// Seals a segment: sync its records, then append the seal record. A seal
    /// promises that every record before it is durable.
    pub(super) fn seal(&self, id: u64, file: &File, offset: u64) -> Result<(), StoreError> {
        file.sync_data()
            .map_err(|e| StoreError::io(&self.segment_path(id), e))?;
        self.write_seal_record(id, file, offset)
    }

    /// Appends the seal record at `offset`; the caller synced the segment.
    fn write_seal_record(&self, id: u64, file: &File, offset: u64) -> Result<(), StoreError> {
        let seal = RecordHeader {
            kind: RecordKind::Seal,
            seq: 0,
            lba: 0,
            block_count: 0,
            block_shift: self.config.block_shift,
            key_id: KeyId::default(),
            table_crc32c: 0,
            moved: false,
        };
        super::super::io::pwritev_all(file, &[&seal.encode()], offset)
            .map_err(|e| StoreError::io(&self.segment_path(id), e))?;
        self.notify_sealed(id);
        Ok(())
    }

    /// Makes every record appended before this call durable (fdatasync).
    pub fn flush(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.flush_lock.lock_or_recover();
        let pending = std::mem::take(&mut *self.pending.lock_or_recover());
        let result = self.sync_all(&pending);
        if result.is_err() {
            // Keep them for the next flush to retry.
            self.pending.lock_or_recover().extend(pending);
            return result;
        }
        // Every record before each seal is durable now: seal the full ones.
        for segment in pending.iter().filter(|p| p.seal) {
            self.write_seal_record(segment.id, &segment.file, segment.end)?;
        }
        Ok(())
    }

    /// Syncs the segment directory (if a segment was created), the segments
    /// that left their heads, and every head's open segment.
    fn sync_all(&self, pending: &[PendingSeal]) -> Result<(), StoreError> {
        if self.dir_dirty.swap(false, Ordering::SeqCst)
            && let Err(error) = sync_dir(&self.segments_dir)
        {
            self.dir_dirty.store(true, Ordering::SeqCst);
            return Err(error);
        }
        let open: Vec<(u64, Arc<File>)> = self
            .heads
            .iter()
            .filter_map(|head| {
                let head = head.lock_or_recover();
                head.open.as_ref().map(|o| (o.id, Arc::clone(&o.file)))
            })
            .collect();
        let segments = pending
            .iter()
            .map(|p| (p.id, &p.file))
            .chain(open.iter().map(|(id, f)| (*id, f)));
        for (id, file) in segments {
            file.sync_data()
                .map_err(|e| StoreError::io(&self.segment_path(id), e))?;
        }
        Ok(())
    }

    /// Writes a checkpoint of the index, making the log it covers durable
    /// first, and deletes checkpoints beyond the newest few.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.checkpoint_lock.lock_or_recover();
        // A snapshot taken before this checkpoint must be on disk first:
        // recovery can rebuild it only from a checkpoint older than it.
        self.materialize_snapshots()?;
        let data = self
            .read_state()
            .checkpoint_data(self.seq_next.load(Ordering::Relaxed));
        self.flush()?;
        let path = checkpoint::write(&self.checkpoints_dir, &self.config.volume_id, &data)?;
        self.bytes_since_checkpoint.store(0, Ordering::Relaxed);
        self.notify_checkpoint(path, &data);
        self.remove_checkpoints_beyond(CHECKPOINTS_KEPT)
    }

    /// Deletes every checkpoint but the newest `kept`; the caller holds the
    /// checkpoint lock.
    pub(super) fn remove_checkpoints_beyond(&self, kept: usize) -> Result<(), StoreError> {
        for old in checkpoint::list_checkpoints(&self.checkpoints_dir)?
            .into_iter()
            .skip(kept)
        {
            fs::remove_file(&old).map_err(|e| StoreError::io(&old, e))?;
        }
        Ok(())
    }

    /// Seals every open segment and writes a final checkpoint, so the next
    /// open replays nothing.
    pub fn close(&self) -> Result<(), StoreError> {
        if self.config.read_only {
            return Ok(());
        }
        self.close_heads();
        // The checkpoint's flush syncs and seals every segment.
        self.checkpoint()
    }

    /// Closes every head's open segment (the next append starts a new one)
    /// and seals them: afterwards no open segment holds an older record.
    pub fn roll_heads(&self) -> Result<(), StoreError> {
        if self.config.read_only {
            return Err(StoreError::ReadOnly);
        }
        self.close_heads();
        self.flush()
    }

    /// Takes every head's open segment off it (the next append starts a new
    /// one) and queues it for the next flush to seal.
    fn close_heads(&self) {
        for head in &self.heads {
            let mut head = head.lock_or_recover();
            if let Some(open) = head.open.take() {
                self.pending.lock_or_recover().push(PendingSeal {
                    id: open.id,
                    file: open.file,
                    end: open.offset,
                    seal: true,
                });
                self.write_state().head_positions[head.id as usize] = None;
            }
        }
    }
}
