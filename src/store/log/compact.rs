//! Compaction: moving the live records out of mostly-dead segments to the
//! compaction head, then deleting those segments.
//!
//! Ciphertext moves as it is: a moved record keeps its sequence number, LBA
//! and key id, so its XTS tweak (sequence number, block) stays valid and no
//! key is needed. In the index a moved record replaces its original only
//! where the original still holds (same sequence number); a block the guest
//! overwrote meanwhile keeps its newer write.
//!
//! Crash safety, step by step:
//! 1. moved records are appended (the originals still exist): replay finds
//!    both copies with one sequence number, and either is right;
//! 2. a checkpoint is written, which no longer refers to the old segments;
//! 3. the old segments are deleted, then older checkpoints (which may still
//!    refer to them).
//!
//! A crash between 2 and 3 leaves segments nothing refers to; the next
//! compaction deletes them first (they have no live bytes). A segment a
//! snapshot refers to (pinned) is never deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::super::index::Location;
use super::super::record::RecordKind;
use super::super::{StoreError, sync_dir};
use super::pieces::{LivePiece, MovedPiece};
use super::{AppendRecord, Log, SegmentFile};
use crate::crypto::KeyId;
use crate::sync::{LockOrRecover, RwLockOrRecover};

/// Payload bytes moved per append (one `pwritev`).
const MOVE_BATCH_BYTES: u64 = 1 << 20;
/// Live bytes moved before a checkpoint lets the cleaned segments go.
const CLEAN_BATCH_BYTES: u64 = 256 << 20;

/// How to compact.
#[derive(Clone, Debug)]
pub struct CompactOptions {
    /// Clean segments whose live bytes are at most this fraction of their
    /// record bytes (0.0 ..= 1.0).
    pub live_ratio_max: f64,
    /// Move at most this many bytes per second; `None`: no limit.
    pub rate_bytes_per_s: Option<u64>,
    /// Set to stop early (a daemon shutting down): the compaction returns
    /// `StoreError::Interrupted` at its next step, consistent on disk.
    pub stop: Option<Arc<AtomicBool>>,
    /// Test hook: stop (as if the process died) after this many steps.
    #[doc(hidden)]
    pub crash_after_steps: Option<u64>,
}

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            live_ratio_max: crate::limits::COMPACT_LIVE_RATIO_DEFAULT,
            rate_bytes_per_s: None,
            stop: None,
            crash_after_steps: None,
        }
    }
}

/// Where a running compaction is.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct CompactProgress {
    /// Segments chosen to be cleaned.
    pub segments_total: u64,
    /// Of those, deleted so far.
    pub segments_done: u64,
    /// Live bytes to move out of them.
    pub bytes_total: u64,
    /// Of those, moved so far.
    pub bytes_moved: u64,
}

/// What a compaction did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CompactReport {
    /// Segments taken out of the log (deleted, or kept as spares).
    pub segments_deleted: u64,
    /// Of those, segment files kept as spares for new segments to reuse
    /// (their space stays allocated; see `SPARE_SEGMENTS_PER_HEAD`).
    pub segments_recycled: u64,
    /// Live payload bytes copied to the compaction head.
    pub bytes_moved: u64,
    /// Of those, bytes re-encrypted under a new key.
    pub bytes_rekeyed: u64,
    /// Segment file bytes given back to the file system (not those of
    /// recycled segments).
    pub bytes_freed: u64,
    /// Segments kept because a live block in them fails its checksum.
    pub corrupt_segments: Vec<u64>,
}

/// Space use of one segment.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct SegmentSpace {
    /// Segment id.
    pub id: u64,
    /// File size, bytes.
    pub file_bytes: u64,
    /// Payload bytes of blocks the volume still reads from it.
    pub live_bytes: u64,
    /// A snapshot refers to it.
    pub pinned: bool,
}

/// Space use of the whole log.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SpaceReport {
    /// Per segment, by id.
    pub segments: Vec<SegmentSpace>,
    /// Payload bytes the volume reads (sum of `live_bytes`).
    pub live_bytes: u64,
    /// Bytes of all segment files.
    pub file_bytes: u64,
    /// Spare segment files kept for reuse (see `SPARE_SEGMENTS_PER_HEAD`).
    pub spare_segments: usize,
    /// Their bytes (allocated, not part of the log).
    pub spare_bytes: u64,
}

/// A segment chosen for cleaning, and the live bytes to move out of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CleanTarget {
    pub(super) segment_id: u64,
    pub(super) live_bytes: u64,
}

/// How to re-key while cleaning: the pieces under `from` keys are passed
/// through `transform` (decrypt, encrypt under `to`) before they move.
pub struct RekeyPlan<'a> {
    /// Keys to take data off.
    pub from: BTreeSet<KeyId>,
    /// The key re-encrypted data is under.
    pub to: KeyId,
    /// Re-encrypts the whole blocks in place and rewrites their block
    /// table: see [`RekeyTransform`]. The sequence number stays, so the
    /// tweak is (seq, block) under the new key, unused by it before (its own
    /// writes take sequence numbers past every older one).
    pub transform: &'a RekeyTransform<'a>,
}

/// Re-encrypts whole blocks in place: (ciphertext, its block table in the
/// version 2 layout, its key, its sequence number, its first block). The
/// table holds the blocks' entries on the way in (CRCs checked; tags, if
/// the volume has them, for the transform to check) and must hold the new
/// ciphertext's entries on the way out.
pub type RekeyTransform<'a> =
    dyn Fn(&mut [u8], &mut [u8], KeyId, u64, u64) -> Result<(), StoreError> + Sync + 'a;

/// The state one cleaning pass threads through its batches.
struct Mover<'a, 'p> {
    options: &'a CompactOptions,
    rekey: Option<&'a RekeyPlan<'a>>,
    started: Instant,
    status: &'a mut CompactProgress,
    report: &'a mut CompactReport,
    steps: &'a mut Steps,
    progress: &'a mut (dyn FnMut(&CompactProgress) + 'p),
}

/// Counts steps for the crash-test hook and watches the stop flag.
struct Steps {
    left: Option<u64>,
    stop: Option<Arc<AtomicBool>>,
}

impl Steps {
    fn step(&mut self) -> Result<(), StoreError> {
        if self
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
        {
            return Err(StoreError::Interrupted);
        }
        match &mut self.left {
            Some(0) => Err(StoreError::Interrupted),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl Log {
    /// Live bytes per segment (from the index), file sizes and pins.
    pub fn space(&self) -> Result<SpaceReport, StoreError> {
        let ends = self.unsealed_ends();
        let live = self.live_bytes_by_segment();
        let pinned = self.pinned_segments();
        let files: Vec<(u64, Arc<SegmentFile>)> = self
            .files
            .read_or_recover()
            .iter()
            .map(|(id, f)| (*id, Arc::clone(f)))
            .collect();
        let mut report = SpaceReport::default();
        (report.spare_segments, report.spare_bytes) = self.spares.usage();
        for (id, file) in files {
            let path = self.segment_path(id);
            let file_bytes = file
                .file
                .metadata()
                .map_err(|e| StoreError::io(&path, e))?
                .len();
            // An unsealed segment's file runs past its log by what was
            // preallocated for it (`io::preallocate`): count the log.
            let file_bytes = ends.get(&id).map_or(file_bytes, |end| file_bytes.min(*end));
            let live_bytes = live.get(&id).copied().unwrap_or(0);
            report.live_bytes += live_bytes;
            report.file_bytes += file_bytes;
            report.segments.push(SegmentSpace {
                id,
                file_bytes,
                live_bytes,
                pinned: pinned.contains(&id),
            });
        }
        Ok(report)
    }

    /// Where the log of each segment not yet sealed ends: the heads'
    /// open segments and those waiting for a flush to seal them.
    fn unsealed_ends(&self) -> BTreeMap<u64, u64> {
        let mut ends: BTreeMap<u64, u64> = self
            .pending
            .lock_or_recover()
            .iter()
            .map(|p| (p.id, p.end))
            .collect();
        let state = self.read_state();
        for head in state.head_positions.iter().flatten() {
            ends.insert(head.segment_id, head.offset);
        }
        ends
    }

    pub(super) fn live_bytes_by_segment(&self) -> BTreeMap<u64, u64> {
        let state = self.read_state();
        let mut live: BTreeMap<u64, u64> = BTreeMap::new();
        for (_, extent) in state.index.iter() {
            if let Location::Data(d) = extent.location {
                *live.entry(d.segment_id).or_default() += extent.blocks << self.config.block_shift;
            }
        }
        live
    }

    /// Segments no head appends to and no flush has yet to seal.
    ///
    /// The order of the three reads matters: a new segment enters the head
    /// positions before `files`, and a full one enters `pending` before it
    /// leaves the head positions, so a segment in the `files` read that is
    /// open is seen in one of the two later reads.
    pub(super) fn closed_segments(&self) -> BTreeSet<u64> {
        let files: Vec<u64> = self.files.read_or_recover().keys().copied().collect();
        let mut busy: BTreeSet<u64> = self
            .read_state()
            .head_positions
            .iter()
            .flatten()
            .map(|head| head.segment_id)
            .collect();
        busy.extend(self.pending.lock_or_recover().iter().map(|p| p.id));
        files.into_iter().filter(|id| !busy.contains(id)).collect()
    }

    /// Takes the compaction lock (one compaction or re-key at a time), once
    /// the log is known to be writable.
    pub(super) fn lock_for_cleaning(&self) -> Result<MutexGuard<'_, ()>, StoreError> {
        if self.config.read_only {
            return Err(StoreError::ReadOnly);
        }
        Ok(self.compact_lock.lock_or_recover())
    }

    /// Cleans every closed, unpinned segment whose live ratio is at most
    /// `options.live_ratio_max`, best cost-benefit first, calling `progress` as it
    /// goes. Safe to run while the volume is read and written.
    pub fn compact(
        &self,
        options: &CompactOptions,
        progress: &mut dyn FnMut(&CompactProgress),
    ) -> Result<CompactReport, StoreError> {
        let _one_at_a_time = self.lock_for_cleaning()?;
        // Seal what left the heads, and write out snapshots taken so far so
        // that their pins are all known and none depends on replay.
        self.flush()?;
        self.materialize_snapshots()?;
        let chosen = self.choose_segments(options.live_ratio_max)?;
        self.clean(&chosen, options, None, progress)
    }

    /// Moves the live pieces out of the `chosen` segments in batches,
    /// re-encrypting those under `rekey.from` on the way, and deletes the
    /// segments after each batch's checkpoint.
    pub(super) fn clean(
        &self,
        chosen: &[CleanTarget],
        options: &CompactOptions,
        rekey: Option<&RekeyPlan<'_>>,
        progress: &mut dyn FnMut(&CompactProgress),
    ) -> Result<CompactReport, StoreError> {
        let mut steps = Steps {
            left: options.crash_after_steps,
            stop: options.stop.clone(),
        };
        let mut status = CompactProgress {
            segments_total: chosen.len() as u64,
            bytes_total: chosen.iter().map(|c| c.live_bytes).sum(),
            ..CompactProgress::default()
        };
        progress(&status);
        let mut report = CompactReport::default();
        let started = Instant::now();
        let mut batch: Vec<u64> = Vec::new();
        let mut batch_bytes = 0;
        for (index, target) in chosen.iter().enumerate() {
            batch.push(target.segment_id);
            batch_bytes += target.live_bytes;
            let last = index + 1 == chosen.len();
            if batch_bytes < CLEAN_BATCH_BYTES && !last {
                continue;
            }
            let segments: BTreeSet<u64> = batch.drain(..).collect();
            batch_bytes = 0;
            let mut mover = Mover {
                options,
                rekey,
                started,
                status: &mut status,
                report: &mut report,
                steps: &mut steps,
                progress: &mut *progress,
            };
            self.move_live_pieces(&segments, &mut mover)?;
            steps.step()?;
            // The checkpoint no longer lists the segments about to go (it
            // must not vouch for them once they are gone); those that stay
            // after all are listed again.
            self.retire_unreferenced(&segments);
            let deleted = self
                .checkpoint()
                .and_then(|()| steps.step())
                .and_then(|()| {
                    self.delete_unreferenced(
                        &segments,
                        &mut status,
                        &mut report,
                        &mut steps,
                        progress,
                    )
                });
            for id in &segments {
                self.write_state().unretire(*id, true);
            }
            deleted?;
        }
        progress(&status);
        Ok(report)
    }

    /// The segments to clean, best first: every
    /// closed, unpinned segment at most `live_ratio_max` live, ranked by the
    /// cost-benefit score of LFS (Rosenblum & Ousterhout): space freed ×
    /// age / cost of moving, `(1 - u) × age / (1 + u)` for live ratio `u`,
    /// so cold segments are cleaned before hot ones of equal liveness (their
    /// remaining blocks are less likely to die soon on their own).
    fn choose_segments(&self, live_ratio_max: f64) -> Result<Vec<CleanTarget>, StoreError> {
        let closed = self.closed_segments();
        let pinned = self.pinned_segments();
        let live = self.live_bytes_by_segment();
        let now = std::time::SystemTime::now();
        let mut chosen = Vec::new();
        for id in closed.difference(&pinned) {
            let Ok(file) = self.segment_file(*id) else {
                continue;
            };
            let path = self.segment_path(*id);
            let metadata = file.file.metadata().map_err(|e| StoreError::io(&path, e))?;
            let first_record = file.version.first_record();
            let record_bytes = metadata.len().saturating_sub(first_record).max(1);
            let live_bytes = live.get(id).copied().unwrap_or(0);
            let ratio = live_bytes as f64 / record_bytes as f64;
            if ratio <= live_ratio_max {
                let age_s = metadata
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .map_or(0.0, |d| d.as_secs_f64());
                let score = (1.0 - ratio) * (1.0 + age_s) / (1.0 + ratio);
                let target = CleanTarget {
                    segment_id: *id,
                    live_bytes,
                };
                chosen.push((target, score));
            }
        }
        chosen.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(chosen.into_iter().map(|(target, _)| target).collect())
    }

    fn move_live_pieces(
        &self,
        segments: &BTreeSet<u64>,
        mover: &mut Mover<'_, '_>,
    ) -> Result<(), StoreError> {
        let pinned = self.pinned_segments();
        let mut pieces = self.live_pieces(segments);
        // Out of a pinned segment (only a re-key chooses one) move just what
        // changes key: the segment stays for its snapshot anyway.
        pieces.retain(|p| {
            !pinned.contains(&p.segment_id)
                || mover
                    .rekey
                    .is_some_and(|plan| plan.from.contains(&p.key_id))
        });
        let block_bytes = 1u64 << self.config.block_shift;
        let mut corrupt: BTreeSet<u64> = BTreeSet::new();
        let mut start = 0;
        while start < pieces.len() {
            // Gather pieces up to one move batch (at least one piece).
            let mut end = start;
            let mut bytes = 0;
            while end < pieces.len()
                && (end == start || bytes + pieces[end].blocks * block_bytes <= MOVE_BATCH_BYTES)
            {
                bytes += pieces[end].blocks * block_bytes;
                end += 1;
            }
            let mut buffers: Vec<(LivePiece, MovedPiece)> = Vec::with_capacity(end - start);
            for piece in &pieces[start..end] {
                match self.read_verified(piece)? {
                    Some(mut moved) => {
                        if let Some(plan) = mover.rekey.filter(|p| p.from.contains(&piece.key_id)) {
                            (plan.transform)(
                                &mut moved.payload,
                                &mut moved.table,
                                piece.key_id,
                                piece.seq,
                                piece.lba,
                            )?;
                            moved.key_id = plan.to;
                            moved.rekeyed = true;
                        }
                        buffers.push((*piece, moved));
                    }
                    None => {
                        corrupt.insert(piece.segment_id);
                    }
                }
            }
            let records: Vec<AppendRecord<'_>> = buffers
                .iter()
                .map(|(piece, moved)| AppendRecord {
                    kind: RecordKind::Data,
                    seq: piece.seq,
                    lba: piece.lba,
                    block_count: piece.blocks as u32,
                    key_id: moved.key_id,
                    payload: &moved.payload,
                    table: Some(&moved.table),
                    // Re-encrypted data is new ciphertext under its key.
                    moved: !moved.rekeyed,
                })
                .collect();
            if !records.is_empty() {
                self.append_compacted(&records)?;
            }
            let moved: u64 = buffers.iter().map(|(p, _)| p.blocks * block_bytes).sum();
            let rekeyed: u64 = buffers
                .iter()
                .filter(|(_, m)| m.rekeyed)
                .map(|(p, _)| p.blocks * block_bytes)
                .sum();
            mover.report.bytes_moved += moved;
            mover.report.bytes_rekeyed += rekeyed;
            mover.status.bytes_moved += moved;
            (mover.progress)(mover.status);
            mover.steps.step()?;
            throttle(
                mover.options.rate_bytes_per_s,
                mover.status.bytes_moved,
                mover.started,
            );
            start = end;
        }
        if !corrupt.is_empty() {
            tracing::warn!(
                ?corrupt,
                "keeping segments with live blocks that fail their checksums"
            );
            mover.report.corrupt_segments.extend(corrupt);
        }
        Ok(())
    }

    /// Takes those of `segments` that nothing refers to out of the sealed
    /// table (see `IndexState::retiring`).
    fn retire_unreferenced(&self, segments: &BTreeSet<u64>) {
        let pinned = self.pinned_segments();
        let live = self.live_bytes_by_segment();
        let closed = self.closed_segments();
        let unreferenced: BTreeSet<u64> = segments
            .iter()
            .filter(|id| !pinned.contains(id) && !live.contains_key(id) && closed.contains(id))
            .copied()
            .collect();
        self.write_state().retire(&unreferenced);
    }

    /// Deletes those of `segments` that nothing refers to any more (and that
    /// the log's observer has copied, see `LogEvents::may_delete_segment`),
    /// then the checkpoints older than the newest (they may refer to them).
    fn delete_unreferenced(
        &self,
        segments: &BTreeSet<u64>,
        status: &mut CompactProgress,
        report: &mut CompactReport,
        steps: &mut Steps,
        progress: &mut dyn FnMut(&CompactProgress),
    ) -> Result<(), StoreError> {
        // Under the pins lock: a snapshot being taken either sees the moved
        // copies or pins the segment before we look.
        let pins = self.pins.lock_or_recover();
        let pinned: BTreeSet<u64> = pins.values().flatten().copied().collect();
        let live = self.live_bytes_by_segment();
        let closed = self.closed_segments();
        let mut deleted_any = false;
        for id in segments {
            if pinned.contains(id)
                || live.contains_key(id)
                || !closed.contains(id)
                || !self.may_delete_segment(*id)
            {
                continue;
            }
            let file = self.files.write_or_recover().remove(id);
            let path = self.segment_path(*id);
            let bytes = file
                .as_ref()
                .and_then(|f| f.file.metadata().ok())
                .map_or(0, |m| m.len());
            if self.recycle(file, &path)? {
                report.segments_recycled += 1;
            } else {
                fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
                report.bytes_freed += bytes;
            }
            self.write_state().unretire(*id, false);
            self.notify_deleted(*id);
            deleted_any = true;
            report.segments_deleted += 1;
            status.segments_done += 1;
            progress(status);
            steps.step()?;
        }
        drop(pins);
        if deleted_any {
            sync_dir(&self.segments_dir)?;
            let _no_checkpoint = self.checkpoint_lock.lock_or_recover();
            self.remove_checkpoints_beyond(1)?;
        }
        Ok(())
    }
}

/// Sleeps as long as needed to keep `moved` bytes since `started` at or
/// under `rate` bytes per second.
fn throttle(rate: Option<u64>, moved: u64, started: Instant) {
    let Some(rate) = rate.filter(|r| *r > 0) else {
        return;
    };
    let due = Duration::from_secs_f64(moved as f64 / rate as f64);
    if let Some(wait) = due.checked_sub(started.elapsed()) {
        std::thread::sleep(wait);
    }
}
