//! Making the log durable: flushes (fdatasync), seals, checkpoints, and
//! closing.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::super::checkpoint::SealedSegment;
use super::super::frame::{FrameRecord, Mac, SealBody, build_meta};
use super::super::io::pwritev_all;
use super::super::macs::{seal_mac, signing_key};
use super::super::record::{RecordHeader, RecordKind, V1RecordHeader};
use super::super::segment::SegmentVersion;
use super::super::{StoreError, checkpoint, sync_dir};
use super::{Log, SegmentFile};
use crate::crypto::KeyId;
use crate::crypto::mac::MacDomain;
use crate::limits::CHECKPOINTS_KEPT;
use crate::sync::LockOrRecover;

/// A segment no head appends to any more, waiting for the next flush to
/// sync and seal it: full, rolled, or abandoned after a failed write (then
/// `end` is where its good log ends; what follows the seal is ignored).
pub(super) struct PendingSeal {
    pub(super) id: u64,
    pub(super) file: Arc<SegmentFile>,
    pub(super) end: u64,
    pub(super) records: u64,
    pub(super) last_mac: Mac,
}

impl Log {
    /// Seals a segment at `end`: syncs its records, then writes the seal
    /// (see [`Log::write_seal`]). A seal promises that every record before
    /// it is durable.
    pub(super) fn seal(&self, segment: &PendingSeal) -> Result<(), StoreError> {
        segment
            .file
            .file
            .sync_data()
            .map_err(|e| StoreError::io(&self.segment_path(segment.id), e))?;
        self.write_seal(segment)
    }

    /// Writes the seal of a synced segment at its `end` (a seal frame that
    /// continues the log's seal chain, or for a version 1 segment a seal
    /// record), syncs it, and records it as the newest seal. The caller
    /// holds the flush lock (or is recovery): seals are written one at a
    /// time, so the chain is a line.
    fn write_seal(&self, segment: &PendingSeal) -> Result<(), StoreError> {
        let path = self.segment_path(segment.id);
        let mut seal = RecordHeader {
            kind: RecordKind::Seal,
            seq: 0,
            lba: 0,
            block_count: 0,
            block_shift: self.config.block_shift,
            key_id: KeyId::default(),
            moved: false,
        };
        let mut mac = [0; 16];
        let written = match segment.file.version {
            SegmentVersion::V1 => {
                let record = V1RecordHeader {
                    header: seal,
                    table_crc32c: 0,
                };
                pwritev_all(&segment.file.file, &[&record.encode()], segment.end)
            }
            SegmentVersion::V2 => {
                let previous = self.read_state().last_seal;
                let body = SealBody {
                    previous_seal_mac: previous.map_or([0; 16], |s| s.mac),
                    previous_sealed_segment: previous.map(|s| s.segment_id),
                    last_record_mac: segment.last_mac,
                    records: segment.records,
                }
                .encode();
                if let Some(keys) = &self.config.macs {
                    seal.key_id = signing_key(keys.as_ref())?;
                    let (volume, id) = (&self.config.volume_id, segment.id);
                    mac = seal_mac(keys.as_ref(), &seal.key_id, volume, id, segment.end, &body)?;
                }
                let record = FrameRecord {
                    header: seal,
                    table: &body,
                    payload: &[],
                    mac,
                };
                let meta = build_meta(segment.id, segment.end, self.config.block_shift, &[record]);
                let end = segment.end + meta.layout.frame_bytes as u64;
                pwritev_all(
                    segment.file.frame_writer(),
                    &[meta.meta.padded()],
                    segment.end,
                )
                .and_then(|()| cut_after(&segment.file.file, end))
            }
        };
        written
            .and_then(|()| segment.file.file.sync_data())
            .map_err(|e| StoreError::io(&path, e))?;
        self.write_state().record_seal(SealedSegment {
            segment_id: segment.id,
            seal_offset: segment.end,
            seal_mac: mac,
            version: segment.file.version,
        });
        self.notify_sealed(segment.id);
        Ok(())
    }

    /// Makes every record appended before this call durable (fdatasync).
    pub fn flush(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.flush_lock.lock_or_recover();
        let mut pending = std::mem::take(&mut *self.pending.lock_or_recover());
        if let Err(error) = self.sync_all(&pending) {
            // Keep them for the next flush to retry.
            self.pending.lock_or_recover().extend(pending);
            return Err(error);
        }
        // Every record before each seal is durable now: seal them.
        while !pending.is_empty() {
            if let Err(error) = self.write_seal(&pending[0]) {
                self.pending.lock_or_recover().extend(pending);
                return Err(error);
            }
            pending.remove(0);
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
        let open: Vec<(u64, Arc<SegmentFile>)> = self
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
            file.file
                .sync_data()
                .map_err(|e| StoreError::io(&self.segment_path(id), e))?;
        }
        Ok(())
    }

    /// Writes a checkpoint of the index, making the log it covers durable
    /// first, and deletes checkpoints beyond the newest few.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let signer = match &self.config.macs {
            Some(keys) => Some((keys, signing_key(keys.as_ref())?)),
            None => None,
        };
        let _one_at_a_time = self.checkpoint_lock.lock_or_recover();
        // A snapshot taken before this checkpoint must be on disk first:
        // recovery can rebuild it only from a checkpoint older than it.
        self.materialize_snapshots()?;
        let mut data = self
            .read_state()
            .checkpoint_data(self.seq_next.load(Ordering::Relaxed));
        self.flush()?;
        // The seals as the flush left them: every segment that had left
        // its head when the index was taken is sealed now.
        self.read_state().update_seals(&mut data);
        let (dir, volume_id) = (&self.checkpoints_dir, &self.config.volume_id);
        let path = match signer {
            Some((keys, key)) => {
                (data.macs, data.mac_key_id) = (true, key);
                let sign = |input: &[u8]| {
                    let mac = keys.mac(&key, MacDomain::Checkpoint, &[input]);
                    mac.ok_or(StoreError::MacKeyMissing { key_id: key })
                };
                let (path, mac) = checkpoint::write_signed(dir, volume_id, &data, sign)?;
                self.write_state().last_checkpoint_mac = mac;
                path
            }
            None => checkpoint::write(dir, volume_id, &data)?,
        };
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
        if !self.writes() {
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
                    records: open.records,
                    last_mac: open.last_mac,
                });
                self.write_state().head_positions[head.id as usize] = None;
            }
        }
    }
}

/// Cuts `file` at `end` if it is longer: a sealed segment ends with its
/// seal, and the space preallocated past it (`io::preallocate`) goes back
/// to the filesystem before the segment is synced and announced.
fn cut_after(file: &fs::File, end: u64) -> std::io::Result<()> {
    if file.metadata()?.len() > end {
        file.set_len(end)?;
    }
    Ok(())
}
