//! Opening a log: load the newest valid checkpoint, check the sealed
//! segments it lists, replay what was appended after it, cut torn tails,
//! check the seal chain, rebuild the indexes of snapshots the crash left
//! unwritten, and seal what the crash left open.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::super::checkpoint::{self, CheckpointData};
use super::super::io::direct::{self, IoMode};
use super::super::record::PlacedRecord;
use super::super::scan::{ScanOutcome, find_v1_seal};
use super::super::segment::{self, SegmentVersion};
use super::super::snapshot::{SnapshotPoint, referenced_segments};
use super::super::{StoreError, sync_dir};
use super::authenticate::authenticate_snapshot_index;
use super::durability::PendingSeal;
use super::replay::{SegmentScan, list_segments, replay_plan};
use super::verify::{chain_seals, sealed_entry};
use super::{Log, LogConfig, SegmentFile};
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

/// One replayed segment and what its scan found.
struct Replayed {
    scan: SegmentScan,
    outcome: ScanOutcome,
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
    open_files(&log, &segment_ids)?;
    let checkpoint = load_newest_checkpoint(&log, &mut report)?;
    log.check_integrity_binding(&checkpoint)?;
    if let Some(path) = &report.checkpoint {
        log.check_listed_segments(&checkpoint, path, &segment_ids)?;
    }
    log.check_v2_floor(checkpoint.v2_floor)?;
    let mut replayed = Vec::new();
    for scan in replay_plan(&checkpoint, &segment_ids)? {
        let outcome = scan_one(&log, scan, &mut report)?;
        replayed.push(Replayed { scan, outcome });
    }
    let mut records: Vec<PlacedRecord> = replayed
        .iter()
        .flat_map(|r| r.outcome.records.iter().map(|s| s.record))
        .collect();
    report.segments_replayed = replayed.len();
    report.records_replayed = records.len();
    let seq_seen_max = records.iter().map(|r| r.header.seq).max();
    log.write_state().load(&checkpoint);
    load_seals(&log, &checkpoint, &replayed, &segment_ids)?;
    records.sort_by_key(|r| r.header.seq);
    if log.writes() {
        for (path, point) in unmaterialized {
            log.rebuild_snapshot_index(&checkpoint, &records, path, point)?;
        }
    }
    {
        let mut state = log.write_state();
        for record in &records {
            state.apply(record);
        }
        let segment_next = segment_ids.last().map_or(0, |id| id + 1);
        state.segment_id_next = checkpoint.segment_id_next.max(segment_next);
        // Every segment from here on is written as version 2, and with
        // record MACs if the log has them.
        state.v2_floor = checkpoint.v2_floor.min(state.segment_id_next);
        if state.mac_floor == u64::MAX {
            state.mac_floor = state.segment_id_next;
        }
    }
    // Skip far past every sequence number that may have been handed out
    // before the crash: tweaks must never repeat (limits::SEQ_REOPEN_GAP).
    let seq_floor = checkpoint.seq_next.max(seq_seen_max.map_or(0, |s| s + 1));
    log.seq_next
        .store(seq_floor + SEQ_REOPEN_GAP, Ordering::Relaxed);
    if log.writes() {
        for segment in &replayed {
            seal_if_open(&log, segment)?;
        }
        // Persist the new sequence floor and the replayed state at once.
        log.checkpoint()?;
    }
    Ok((log, report))
}

/// The newest checkpoint that passes its own checks (older ones are the
/// fallback for a damaged newest one). Whether the segments it names are
/// all there is checked next (`Log::check_listed_segments`): compaction
/// deletes segments only after writing a checkpoint that no longer names
/// them, so a missing one is damage, not a reason to go back further.
fn load_newest_checkpoint(
    log: &Log,
    report: &mut RecoveryReport,
) -> Result<CheckpointData, StoreError> {
    for path in checkpoint::list_checkpoints(&log.checkpoints_dir)? {
        let bytes = fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
        let checked = checkpoint::decode(&path, &log.config.volume_id, &bytes)
            .and_then(|data| log.authenticate_checkpoint(&path, &bytes, data));
        match checked {
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
    // Without a checkpoint nothing says where version 2 began: replay
    // takes version 1 segments as they come.
    Ok(CheckpointData {
        v2_floor: u64::MAX,
        ..CheckpointData::default()
    })
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
        let version = segment::check_segment_header(
            &file,
            &path,
            *id,
            &log.config.volume_id,
            log.config.block_shift,
        )?;
        let macs = version == SegmentVersion::V2
            && segment::header_says_macs(&file).map_err(|e| StoreError::io(&path, e))?;
        let mut segment = SegmentFile::buffered(file, version, macs);
        if log.io_mode() == IoMode::Direct && version == SegmentVersion::V2 {
            // For reads, and for the seal a recovered unsealed segment gets
            // at the next flush. Version 1 records are not aligned, and a
            // file system that refuses O_DIRECT here is read through the
            // page cache.
            segment.direct = direct::open_direct(&path, !log.config.read_only)
                .inspect_err(|error| tracing::debug!(path = %path.display(), %error, "segment read buffered"))
                .ok();
        }
        files.insert(*id, Arc::new(segment));
    }
    Ok(())
}

/// Puts the seals of the log into the state: the checkpoint's (loaded with
/// it), those replay found, in chain order, and for a log upgraded from
/// version 1 the seals of its version 1 segments.
fn load_seals(
    log: &Log,
    checkpoint: &CheckpointData,
    replayed: &[Replayed],
    segment_ids: &[u64],
) -> Result<(), StoreError> {
    let listed: Vec<u64> = checkpoint.sealed.iter().map(|s| s.segment_id).collect();
    let mut found_v1 = Vec::new();
    let mut found_v2 = BTreeMap::new();
    for segment in replayed {
        let id = segment.scan.segment_id;
        let Some(seal) = segment.outcome.seal.filter(|_| !listed.contains(&id)) else {
            continue;
        };
        match log.segment_file(id)?.version {
            SegmentVersion::V1 => found_v1.push(sealed_entry(id, SegmentVersion::V1, &seal)),
            SegmentVersion::V2 => {
                found_v2.insert(id, seal);
            }
        }
    }
    let chain = chain_seals(checkpoint.last_seal, found_v2)?;
    if checkpoint.v2_floor == u64::MAX {
        // Written by a version 1 log: list the seals of its segments.
        for id in segment_ids
            .iter()
            .filter(|id| **id < checkpoint.segment_id_next)
        {
            let file = log.segment_file(*id)?;
            let io = |e| StoreError::io(&log.segment_path(*id), e);
            let len = file.file.metadata().map_err(io)?.len();
            if file.version == SegmentVersion::V1
                && let Some(seal) = find_v1_seal(&file.file, len).map_err(io)?
            {
                found_v1.push(sealed_entry(*id, SegmentVersion::V1, &seal));
            }
        }
    }
    let mut state = log.write_state();
    for entry in found_v1 {
        state.record_seal(entry);
    }
    for (id, seal) in chain {
        state.record_seal(sealed_entry(id, SegmentVersion::V2, &seal));
    }
    Ok(())
}

/// Scans one segment as `scan` says. A sealed segment must be whole; an
/// unsealed one (a head's last, at the crash) has its torn tail cut off.
fn scan_one(
    log: &Log,
    scan: SegmentScan,
    report: &mut RecoveryReport,
) -> Result<ScanOutcome, StoreError> {
    let segment_id = scan.segment_id;
    let path = log.segment_path(segment_id);
    let outcome = log.scan(scan)?;
    if let Some((offset, reason)) = outcome.stopped
        && outcome.seal.is_some()
    {
        return Err(StoreError::Corrupt {
            path,
            offset_bytes: offset,
            reason,
        });
    }
    // Frames the checksums accept must carry valid MACs: a bad one is
    // tampering (refused), never a torn write (cut).
    log.authenticate(scan, &outcome)?;
    if let Some((offset, reason)) = outcome.stopped {
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
        if log.writes() {
            let file = log.segment_file(segment_id)?;
            file.file
                .set_len(outcome.end_offset)
                .and_then(|()| file.file.sync_data())
                .map_err(|e| StoreError::io(&path, e))?;
        }
    }
    Ok(outcome)
}

/// Seals a replayed segment that the crash left open, at the end of its
/// valid log; nothing will append to it again (heads start new segments).
fn seal_if_open(log: &Log, segment: &Replayed) -> Result<(), StoreError> {
    if segment.outcome.seal.is_some() {
        return Ok(());
    }
    let head = segment.scan.resume.unwrap_or_default();
    let records = &segment.outcome.records;
    let pending = PendingSeal {
        id: segment.scan.segment_id,
        file: log.segment_file(segment.scan.segment_id)?,
        end: segment.outcome.end_offset,
        records: head.records + records.len() as u64,
        last_mac: records.last().map_or(head.last_mac, |r| r.mac),
    };
    log.seal(&pending)?;
    sync_dir(&log.segments_dir)
}

/// Opens a snapshot's frozen index (written by
/// [`Log::materialize_snapshots`]) as a read-only log over the segments of
/// `dir`, its MAC checked with `config.macs` (the snapshot's keys). Only
/// the segments the index refers to are opened.
pub fn open_view(dir: &Path, index_path: &Path, mut config: LogConfig) -> Result<Log, StoreError> {
    config.read_only = true;
    let bytes = fs::read(index_path).map_err(|e| StoreError::io(index_path, e))?;
    let data = checkpoint::decode(index_path, &config.volume_id, &bytes)?;
    let data = authenticate_snapshot_index(config.macs.as_deref(), index_path, &bytes, data)?;
    let log = Log::empty(dir, config, data.seq_next, data.segment_id_next);
    let segments: Vec<u64> = referenced_segments(&data).into_iter().collect();
    open_files(&log, &segments)?;
    log.write_state().load(&data);
    Ok(log)
}
