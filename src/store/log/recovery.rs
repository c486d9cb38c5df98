//! Opening a log: load the newest valid checkpoint, replay what was appended
//! after it, cut torn tails, rebuild the indexes of snapshots the crash left
//! unwritten, and seal what the crash left open.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::super::checkpoint::{self, CheckpointData};
use super::super::segment::{self, ScannedRecord};
use super::super::snapshot::{SnapshotPoint, referenced_segments};
use super::super::{StoreError, sync_dir};
use super::replay::{ReplayedRecord, SegmentScan, list_segments, replay_plan};
use super::{Log, LogConfig};
use crate::limits::SEQ_REOPEN_GAP;
use crate::sync::RwLockOrRecover;

/// What recovery found and did when the log was opened.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// The checkpoint replay started from, if any.
    pub checkpoint: Option<PathBuf>,
    /// Checkpoints that were skipped because they failed their checks.
    pub skipped_checkpoints: Vec<String>,
    /// Segments scanned.
    pub segments_replayed: usize,
    /// Records applied from the log.
    pub records_replayed: usize,
    /// Torn tails cut off.
    pub torn_tails: Vec<TornTail>,
}

/// The torn tail of a segment, cut off at open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment.
    pub segment_id: u64,
    /// Where the first invalid record started (the new end of the file).
    pub offset: u64,
    /// What was wrong with it.
    pub reason: &'static str,
}

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
    let mut records: Vec<ReplayedRecord> = Vec::new();
    for scan in &replay {
        let scanned = scan_one(&log, *scan, &mut report)?;
        records.extend(ReplayedRecord::of_segment(scan.segment_id, scanned));
    }
    report.segments_replayed = replay.len();
    report.records_replayed = records.len();
    let seq_seen_max = records.iter().map(|r| r.header.seq).max();
    log.write_state().load(&checkpoint);
    records.sort_by_key(|r| r.header.seq);
    if !log.config.read_only {
        for (path, point) in unmaterialized {
            log.rebuild_snapshot_index(&checkpoint, &records, path, point)?;
        }
    }
    {
        let mut state = log.write_state();
        for record in &records {
            state.apply(record.segment_id, record.offset, &record.header);
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
        for scan in &replay {
            seal_if_open(&log, scan.segment_id)?;
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
        match checkpoint::read(&path, &log.config.volume_id) {
            Ok(data) => {
                // Compaction deletes segments only after writing a checkpoint
                // that no longer refers to them: a segment the newest usable
                // checkpoint refers to that is gone is damage, named here
                // (an older checkpoint would only fail less clearly).
                if let Some(segment_id) = referenced_segments(&data)
                    .into_iter()
                    .find(|id| segment_ids.binary_search(id).is_err())
                {
                    return Err(StoreError::SegmentMissing { segment_id });
                }
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

/// Opens the files of `segment_ids` and checks their headers.
fn open_files(log: &Log, segment_ids: &[u64]) -> Result<(), StoreError> {
    let mut files = log.files.write_or_recover();
    for id in segment_ids {
        let path = log.segment_path(*id);
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

/// Scans one segment as `scan` says. A sealed segment must be whole; an
/// unsealed one (a head's last, at the crash) has its torn tail cut off.
fn scan_one(
    log: &Log,
    scan: SegmentScan,
    report: &mut RecoveryReport,
) -> Result<Vec<ScannedRecord>, StoreError> {
    let segment_id = scan.segment_id;
    let path = log.segment_path(segment_id);
    let file = replayed_file(log, segment_id);
    let outcome = segment::scan_segment(
        &file,
        &path,
        scan.from,
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
        report.torn_tails.push(TornTail {
            segment_id,
            offset,
            reason,
        });
        if !log.config.read_only {
            file.set_len(outcome.end_offset)
                .map_err(|e| StoreError::io(&path, e))?;
            file.sync_data().map_err(|e| StoreError::io(&path, e))?;
        }
    }
    Ok(outcome.records)
}

/// The open file of a segment `open_files` opened.
fn replayed_file(log: &Log, segment_id: u64) -> Arc<File> {
    let files = log.files.read_or_recover();
    Arc::clone(
        files
            .get(&segment_id)
            .expect("replayed segments were opened"),
    )
}

/// Seals a replayed segment that the crash left open; nothing will append to
/// it again (heads start new segments).
fn seal_if_open(log: &Log, segment_id: u64) -> Result<(), StoreError> {
    let file = replayed_file(log, segment_id);
    let path = log.segment_path(segment_id);
    let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
    if !segment::is_sealed(&file, len).map_err(|e| StoreError::io(&path, e))? {
        log.seal(segment_id, &file, len)?;
        sync_dir(&log.segments_dir)?;
    }
    Ok(())
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
    log.write_state().load(&data);
    Ok(log)
}
