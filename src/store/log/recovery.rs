//! Opening a log: load the newest valid checkpoint, replay what was appended
//! after it, cut torn tails, and seal what the crash left open.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::super::checkpoint::{self, CheckpointData};
use super::super::segment::{self, SEGMENT_HEADER_BYTES, ScannedRecord};
use super::super::snapshot::{SnapshotPoint, referenced_segments};
use super::super::{StoreError, sync_dir};
use super::snapshots::write_snapshot_index;
use super::{IndexState, Log, LogConfig, RecoveryReport};
use crate::limits::SEQ_REOPEN_GAP;

/// Opens the log in `dir`, recovering from any crash. `unmaterialized`
/// lists snapshots whose point was recorded but whose index file is not
/// there: their index is rebuilt from replay and written (read-write opens).
pub fn open(
    dir: &Path,
    config: LogConfig,
    unmaterialized: &[(PathBuf, SnapshotPoint)],
) -> Result<(Log, RecoveryReport), StoreError> {
    for sub in ["segments", "checkpoints"] {
        if !dir.join(sub).is_dir() {
            return Err(StoreError::NotAStore {
                path: dir.to_path_buf(),
                reason: "no segments/ or checkpoints/ directory",
            });
        }
    }
    let mut report = RecoveryReport::default();
    let log = Log::empty(dir, config, 0, 0);
    let segment_ids = list_segments(&log.segments_dir)?;
    let checkpoint = load_newest_checkpoint(&log, &segment_ids, &mut report)?;
    let replay = replay_plan(&checkpoint, &segment_ids)?;
    open_files(&log, &segment_ids)?;
    let mut records: Vec<(u64, ScannedRecord)> = Vec::new();
    for (segment_id, start) in &replay {
        records.extend(
            scan_one(&log, *segment_id, *start, &mut report)?
                .into_iter()
                .map(|r| (*segment_id, r)),
        );
    }
    report.segments_replayed = replay.len();
    report.records_replayed = records.len();
    let seq_seen_max = records.iter().map(|(_, r)| r.header.seq).max();
    install_checkpoint(&log, &checkpoint);
    records.sort_by_key(|(_, r)| r.header.seq);
    if !log.config.read_only {
        for (path, point) in unmaterialized {
            rebuild_snapshot(&log, &checkpoint, &records, path, point)?;
        }
    }
    {
        let mut state = log.write_state();
        for (segment_id, record) in &records {
            log.apply(
                &mut state,
                *segment_id,
                record.offset,
                &record.header,
                record.header.key_id,
            );
        }
        let segment_next = segment_ids.last().map_or(0, |id| id + 1);
        state.segment_id_next = checkpoint.segment_id_next.max(segment_next);
    }
    // Skip far past every sequence number that may have been handed out
    // before the crash: tweaks must never repeat (limits::SEQ_REOPEN_GAP).
    let seq_floor = checkpoint.seq_next.max(seq_seen_max.map_or(0, |s| s + 1));
    log.seq_next
        .store(seq_floor + SEQ_REOPEN_GAP, Ordering::Relaxed);
    if !log.config.read_only {
        for (segment_id, _) in &replay {
            seal_if_open(&log, *segment_id)?;
        }
        // Persist the new sequence floor and the replayed state at once.
        log.checkpoint()?;
    }
    Ok((log, report))
}

fn load_newest_checkpoint(
    log: &Log,
    segment_ids: &[u64],
    report: &mut RecoveryReport,
) -> Result<CheckpointData, StoreError> {
    for path in checkpoint::list_checkpoints(&log.checkpoints_dir)? {
        let loaded = checkpoint::read(&path, &log.config.volume_id).and_then(|data| {
            // An older checkpoint may refer to segments compaction deleted
            // after writing a newer one: unusable, not a reason to read zeros.
            let missing = referenced_segments(&data)
                .into_iter()
                .any(|id| segment_ids.binary_search(&id).is_err());
            if missing {
                return Err(StoreError::BadCheckpoint {
                    path: path.clone(),
                    reason: "refers to a segment that no longer exists",
                });
            }
            Ok(data)
        });
        match loaded {
            Ok(data) => {
                report.checkpoint = Some(path);
                return Ok(data);
            }
            Err(error) => {
                tracing::warn!(%error, "skipping a checkpoint that fails its checks");
                report.skipped_checkpoints.push(error.to_string());
            }
        }
    }
    Ok(CheckpointData::default())
}

fn list_segments(segments_dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(segments_dir).map_err(|e| StoreError::io(segments_dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(segments_dir, e))?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(segment::parse_segment_name)
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Which segments to scan and from where: every segment the checkpoint does
/// not cover (from its start) and each head's open segment (from the
/// checkpointed offset). A segment in that range that is missing is an error.
fn replay_plan(
    checkpoint: &CheckpointData,
    segment_ids: &[u64],
) -> Result<Vec<(u64, u64)>, StoreError> {
    let mut plan: BTreeMap<u64, u64> = BTreeMap::new();
    for (segment_id, offset) in &checkpoint.heads {
        if segment_ids.binary_search(segment_id).is_err() {
            return Err(StoreError::SegmentMissing {
                segment_id: *segment_id,
            });
        }
        plan.insert(*segment_id, *offset);
    }
    let uncovered = segment_ids
        .iter()
        .filter(|id| **id >= checkpoint.segment_id_next);
    for (expected, id) in (checkpoint.segment_id_next..).zip(uncovered) {
        if *id != expected {
            return Err(StoreError::SegmentMissing {
                segment_id: expected,
            });
        }
        plan.insert(*id, SEGMENT_HEADER_BYTES);
    }
    Ok(plan.into_iter().collect())
}

fn open_files(log: &Log, segment_ids: &[u64]) -> Result<(), StoreError> {
    let mut files = log.files.write().unwrap_or_else(|p| p.into_inner());
    for id in segment_ids {
        let path = segment::segment_path(&log.segments_dir, *id);
        let file = OpenOptions::new()
            .read(true)
            .write(!log.config.read_only)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        segment::check_segment_header(&file, &path, *id, &log.config.volume_id)?;
        files.insert(*id, Arc::new(file));
    }
    Ok(())
}

/// Scans one segment from `start`. A sealed segment must be whole; an
/// unsealed one (a head's last, at the crash) has its torn tail cut off.
fn scan_one(
    log: &Log,
    segment_id: u64,
    start: u64,
    report: &mut RecoveryReport,
) -> Result<Vec<ScannedRecord>, StoreError> {
    let path = segment::segment_path(&log.segments_dir, segment_id);
    let file = file_of(log, segment_id);
    let outcome = segment::scan_segment(
        &file,
        &path,
        start,
        log.config.block_shift,
        log.config.capacity_blocks,
    )?;
    if let Some((offset, reason)) = outcome.stopped {
        if outcome.sealed {
            return Err(StoreError::Corrupt {
                path,
                offset_bytes: offset,
                reason,
            });
        }
        tracing::warn!(
            segment_id,
            offset,
            reason,
            "cutting the torn tail of a segment"
        );
        report.torn_tails.push((segment_id, offset, reason));
        if !log.config.read_only {
            file.set_len(outcome.end_offset)
                .map_err(|e| StoreError::io(&path, e))?;
            file.sync_data().map_err(|e| StoreError::io(&path, e))?;
        }
    }
    Ok(outcome.records)
}

fn file_of(log: &Log, segment_id: u64) -> Arc<File> {
    let files = log.files.read().unwrap_or_else(|p| p.into_inner());
    Arc::clone(
        files
            .get(&segment_id)
            .expect("replayed segments were opened"),
    )
}

/// Seals a replayed segment that the crash left open; nothing will append to
/// it again (heads start new segments).
fn seal_if_open(log: &Log, segment_id: u64) -> Result<(), StoreError> {
    let file = file_of(log, segment_id);
    let path = segment::segment_path(&log.segments_dir, segment_id);
    let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
    if !segment::is_sealed(&file, len).map_err(|e| StoreError::io(&path, e))? {
        log.seal(segment_id, &file, len)?;
        sync_dir(&log.segments_dir)?;
    }
    Ok(())
}

fn install_checkpoint(log: &Log, checkpoint: &CheckpointData) {
    log.write_state().load(checkpoint);
}

/// Rebuilds the index of a snapshot that was taken but not written out
/// before the crash: the checkpoint (older than the snapshot, because a
/// checkpoint is written only after every earlier snapshot's index) plus
/// the replayed records the snapshot point covers.
fn rebuild_snapshot(
    log: &Log,
    checkpoint: &CheckpointData,
    records: &[(u64, ScannedRecord)],
    path: &Path,
    point: &SnapshotPoint,
) -> Result<(), StoreError> {
    if checkpoint.segment_id_next > point.segment_id_next || checkpoint.seq_next > point.seq_next {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            offset_bytes: 0,
            reason: "snapshot index missing and the newest checkpoint is newer than the snapshot",
        });
    }
    let mut state = IndexState::empty(0);
    state.load(checkpoint);
    for (segment_id, record) in records {
        if point.covers(*segment_id, record.offset) {
            log.apply(
                &mut state,
                *segment_id,
                record.offset,
                &record.header,
                record.header.key_id,
            );
        }
    }
    let data = CheckpointData {
        seq_next: point.seq_next,
        segment_id_next: point.segment_id_next,
        heads: Vec::new(),
        keys: state.keys.clone(),
        key_encrypted_bytes: Vec::new(),
        extents: state.index.iter().map(|(lba, e)| (lba, *e)).collect(),
    };
    tracing::info!(snapshot = %path.display(), "rebuilt a snapshot index from the log");
    write_snapshot_index(path, &log.config.volume_id, &data)
}

/// Opens a snapshot's frozen index (written by
/// [`Log::materialize_snapshots`]) as a read-only log over the segments of
/// `dir`. Only the segments the index refers to are opened.
pub fn open_view(dir: &Path, index_path: &Path, mut config: LogConfig) -> Result<Log, StoreError> {
    config.read_only = true;
    let data = checkpoint::read(index_path, &config.volume_id)?;
    let log = Log::empty(dir, config, data.seq_next, data.segment_id_next);
    let segments: Vec<u64> = referenced_segments(&data).into_iter().collect();
    open_files(&log, &segments)?;
    install_checkpoint(&log, &data);
    Ok(log)
}

/// The index of the snapshot at `point` while the log is open: the newest
/// valid checkpoint no newer than the point, plus the records the point
/// covers among those replayed after it (read from the segments, verified).
pub(super) fn build_snapshot_data(
    log: &Log,
    point: &SnapshotPoint,
) -> Result<CheckpointData, StoreError> {
    let segment_ids = list_segments(&log.segments_dir)?;
    let mut checkpoint = None;
    for path in checkpoint::list_checkpoints(&log.checkpoints_dir)? {
        if let Ok(data) = checkpoint::read(&path, &log.config.volume_id)
            && data.seq_next <= point.seq_next
            && data.segment_id_next <= point.segment_id_next
        {
            checkpoint = Some(data);
            break;
        }
    }
    let checkpoint = checkpoint.unwrap_or_default();
    let mut records: Vec<(u64, ScannedRecord)> = Vec::new();
    for (segment_id, start) in replay_plan(&checkpoint, &segment_ids)? {
        if segment_id >= point.segment_id_next {
            continue;
        }
        let path = segment::segment_path(&log.segments_dir, segment_id);
        let file = log.segment_file(segment_id)?;
        // Records past the point may be half written right now: the scan
        // stops there, after every record the point covers (all durable).
        let outcome = segment::scan_segment(
            &file,
            &path,
            start,
            log.config.block_shift,
            log.config.capacity_blocks,
        )?;
        records.extend(
            outcome
                .records
                .into_iter()
                .filter(|r| point.covers(segment_id, r.offset))
                .map(|r| (segment_id, r)),
        );
    }
    records.sort_by_key(|(_, r)| r.header.seq);
    let mut state = IndexState::empty(0);
    state.load(&checkpoint);
    for (segment_id, record) in &records {
        log.apply(
            &mut state,
            *segment_id,
            record.offset,
            &record.header,
            record.header.key_id,
        );
    }
    Ok(CheckpointData {
        seq_next: point.seq_next,
        segment_id_next: point.segment_id_next,
        heads: Vec::new(),
        keys: state.keys.clone(),
        key_encrypted_bytes: Vec::new(),
        extents: state.index.iter().map(|(lba, e)| (lba, *e)).collect(),
    })
}
