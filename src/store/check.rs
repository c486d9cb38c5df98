//! A keyless check of a log's files (both segment versions), reported
//! rather than repaired: every checkpoint's checksums, every segment's
//! header, that every sealed segment the newest checkpoint lists is there
//! and ends with the listed seal, no version 1 segment where only version 2
//! ones can be, and (at [`CheckDepth::Records`]) every record's header,
//! table and block CRCs and that the seals newer than the checkpoint
//! continue its seal chain. It only reads files, so it also runs while a daemon serves
//! the volume: what the daemon is appending (segments newer than the newest
//! checkpoint, the tail of a head's open segment) may be torn and is not
//! damage; everything the newest checkpoint covers must be whole.
//!
//! `lsvblk inspect` runs it and exits 65 when it finds anything. The report
//! is a list of typed [`Damage`] findings so that further checks (record
//! MACs) can add kinds without changing its callers.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::aligned::ALIGN;
use super::checkpoint::{self, CheckpointData, SealedSegment};
use super::log::{LogConfig, chain_seals};
use super::scan::{self, RecordLimits, SealFound, find_v1_seal, read_seal};
use super::segment::{self, SegmentVersion};
use super::snapshot::segments_needed;
use super::{StoreError, log};

/// How far the check reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckDepth {
    /// Checkpoints and segment headers only: cheap (one small read per
    /// segment), finds files of another volume and missing segments.
    Headers,
    /// Also every record of every segment: reads the whole log.
    Records,
}

/// What kind of damage a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DamageKind {
    /// Bytes fail their checksum (a block, a record header or table, a
    /// segment header).
    Checksum,
    /// A segment that must be whole ends early (it lost its tail, and with
    /// it its seal record).
    Truncated,
    /// The bytes are not what the format allows there.
    Malformed,
    /// The file carries another volume's id: the files are not this
    /// volume's (or the superblock's `volume_id` was changed).
    ForeignVolume,
    /// A segment the newest checkpoint refers to (or lists as sealed) is
    /// not there.
    MissingSegment,
    /// A segment does not end with the seal the checkpoint lists, is of
    /// another version than listed, or its seal does not continue the
    /// log's seal chain: an older copy, a truncated, dropped or spliced-in
    /// segment.
    SealMismatch,
    /// A checkpoint file fails its checks.
    Checkpoint,
}

/// One thing found wrong.
#[derive(Clone, Debug, Serialize)]
pub struct Damage {
    /// What kind of damage.
    pub kind: DamageKind,
    /// The damaged (or missing) file.
    pub path: PathBuf,
    /// Where in the file, when known.
    pub offset_bytes: Option<u64>,
    /// What check failed, for people.
    pub detail: String,
}

/// What a check read and found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DamageReport {
    /// Segment files checked.
    pub segments_checked: u64,
    /// Checkpoint files checked.
    pub checkpoints_checked: u64,
    /// Bytes of segment files read.
    pub bytes_checked: u64,
    /// Segments whose records are not in their files (evicted to the
    /// volume's object store): their header and seal were checked only.
    pub segments_evicted: u64,
    /// Everything found wrong, in file order.
    pub findings: Vec<Damage>,
}

impl DamageReport {
    /// True when nothing was found wrong.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    fn found(&mut self, kind: DamageKind, path: &Path, offset: Option<u64>, detail: String) {
        self.findings.push(Damage {
            kind,
            path: path.to_path_buf(),
            offset_bytes: offset,
            detail,
        });
    }

    /// Records a store error met while checking `path`.
    fn found_error(&mut self, path: &Path, error: StoreError) {
        let (kind, offset) = match &error {
            StoreError::Corrupt { offset_bytes, .. } => (DamageKind::Checksum, Some(*offset_bytes)),
            StoreError::ForeignSegment { .. } => (DamageKind::ForeignVolume, None),
            _ => (DamageKind::Malformed, None),
        };
        self.found(kind, path, offset, error.to_string());
    }
}

impl std::fmt::Display for DamageReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(first) = self.findings.first() else {
            return write!(f, "no damage found");
        };
        write!(
            f,
            "{} problem(s) in the volume's files; first: {}",
            self.findings.len(),
            first.detail
        )
    }
}

/// How many times a check restarts when the newest checkpoint changed
/// under it (a serving daemon compacted meanwhile).
const RESTARTS_MAX: usize = 3;

/// Checks the log in `dir` (its `segments/` and `checkpoints/`) against
/// `config` (volume id, block size, capacity); the segments in `evicted`
/// (their records punched out of the file, kept in an object store) at
/// [`CheckDepth::Headers`] only. An `Err` is a failure to check (a
/// directory that cannot be listed), never damage.
pub fn check_files(
    dir: &Path,
    config: &LogConfig,
    depth: CheckDepth,
    evicted: &BTreeSet<u64>,
) -> Result<DamageReport, StoreError> {
    let checkpoints_dir = dir.join("checkpoints");
    let mut attempt = 0;
    loop {
        let newest_before = checkpoint::list_checkpoints(&checkpoints_dir)?;
        let report = check_once(dir, config, (depth, evicted), &newest_before)?;
        let newest_after = checkpoint::list_checkpoints(&checkpoints_dir)?;
        attempt += 1;
        if newest_after.first() == newest_before.first() || attempt >= RESTARTS_MAX {
            return Ok(report);
        }
    }
}

fn check_once(
    dir: &Path,
    config: &LogConfig,
    (depth, evicted): (CheckDepth, &BTreeSet<u64>),
    checkpoint_paths: &[PathBuf],
) -> Result<DamageReport, StoreError> {
    let mut report = DamageReport::default();
    let newest = newest_checkpoint(config, checkpoint_paths, &mut report);
    let segments_dir = dir.join("segments");
    let segment_ids = log::list_segments(&segments_dir)?;
    for id in segments_needed(&newest) {
        if segment_ids.binary_search(&id).is_err() {
            let path = segment::segment_path(&segments_dir, id);
            let detail =
                format!("segment {id:016x} is missing (the newest checkpoint refers to it)");
            report.found(DamageKind::MissingSegment, &path, None, detail);
        }
    }
    let mut unlisted_seals = BTreeMap::new();
    for id in segment_ids {
        let path = segment::segment_path(&segments_dir, id);
        let file = match File::open(&path) {
            Ok(file) => file,
            // Compaction deleted it meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        report.segments_checked += 1;
        let segment = Segment {
            file: &file,
            path: &path,
            id,
        };
        let segment_depth = if evicted.contains(&id) {
            report.segments_evicted += 1;
            CheckDepth::Headers
        } else {
            depth
        };
        let mut seal = check_segment(&segment, config, segment_depth, &newest, &mut report)?;
        // An evicted segment sealed after the newest checkpoint (it was a
        // head's open segment then) still continues the seal chain: its
        // seal stays in the file's kept tail.
        if seal.is_none() && depth != segment_depth {
            seal = kept_seal(&segment, &newest).map_err(|e| StoreError::io(&path, e))?;
        }
        if let Some(seal) = seal {
            unlisted_seals.insert(id, seal);
        }
    }
    if let Err(error) = chain_seals(newest.last_seal, unlisted_seals) {
        let StoreError::SealMismatch { segment_id, .. } = &error else {
            return Err(error);
        };
        let path = segment::segment_path(&segments_dir, *segment_id);
        let detail = format!("{}: {error}", path.display());
        report.found(DamageKind::SealMismatch, &path, None, detail);
    }
    Ok(report)
}

/// A segment file being checked.
struct Segment<'a> {
    file: &'a File,
    path: &'a Path,
    id: u64,
}

/// Checks one segment against the newest checkpoint; returns its version 2
/// seal when the checkpoint does not list it (found at
/// [`CheckDepth::Records`] only), for the seal chain check.
fn check_segment(
    segment: &Segment<'_>,
    config: &LogConfig,
    depth: CheckDepth,
    newest: &CheckpointData,
    report: &mut DamageReport,
) -> Result<Option<SealFound>, StoreError> {
    let Segment { file, path, id } = *segment;
    let version = match segment::check_segment_header(
        file,
        path,
        id,
        &config.volume_id,
        config.block_shift,
    ) {
        Ok(version) => version,
        Err(error) => {
            report.found_error(path, error);
            return Ok(None);
        }
    };
    if version == SegmentVersion::V1 && id >= newest.v2_floor {
        let detail = format!(
            "segment {id:016x} is version 1, but every segment from {:016x} on was written as version 2",
            newest.v2_floor
        );
        report.found(DamageKind::Malformed, path, Some(0), detail);
        return Ok(None);
    }
    let listed = newest.sealed.iter().find(|s| s.segment_id == id);
    if let Some(listed) = listed {
        check_listed_seal(segment, version, listed, report)?;
    }
    if depth == CheckDepth::Headers {
        return Ok(None);
    }
    // Bytes up to here must be whole; after it a tail may be torn.
    let whole_up_to = if id >= newest.segment_id_next {
        Some(version.first_record())
    } else {
        newest
            .heads
            .iter()
            .find(|head| head.segment_id == id)
            .map(|head| head.offset)
    };
    let seal = check_records(segment, version, config, whole_up_to, report)?;
    Ok(seal.filter(|_| listed.is_none() && version == SegmentVersion::V2))
}

/// The version 2 seal an evicted segment keeps in its last pages (the
/// cache never punches them), when the newest checkpoint does not list it:
/// the seal chain check needs it although the records are in the store.
fn kept_seal(segment: &Segment<'_>, newest: &CheckpointData) -> std::io::Result<Option<SealFound>> {
    if newest.sealed.iter().any(|s| s.segment_id == segment.id) {
        return Ok(None);
    }
    let len = segment.file.metadata()?.len();
    let page = ALIGN as u64;
    for back in [page, 2 * page] {
        if let Some(offset) = len.checked_sub(back)
            && let Some(seal) = read_seal(segment.file, segment.id, offset)?
        {
            return Ok(Some(seal));
        }
    }
    Ok(None)
}

/// Checks that a segment the checkpoint lists as sealed is of the listed
/// version and ends with the listed seal (a compare of offset and MAC: no
/// key needed).
fn check_listed_seal(
    segment: &Segment<'_>,
    version: SegmentVersion,
    listed: &SealedSegment,
    report: &mut DamageReport,
) -> Result<(), StoreError> {
    let Segment { file, path, id } = *segment;
    let io = |e| StoreError::io(path, e);
    let found = match version {
        SegmentVersion::V1 => find_v1_seal(file, file.metadata().map_err(io)?.len()).map_err(io)?,
        SegmentVersion::V2 => read_seal(file, id, listed.seal_offset).map_err(io)?,
    };
    let reason = if version != listed.version {
        "segment version differs from the checkpoint's"
    } else {
        match found {
            None => "no seal where the checkpoint lists one",
            Some(seal) if seal.offset != listed.seal_offset || seal.mac != listed.seal_mac => {
                "seal differs from the checkpoint's"
            }
            Some(_) => return Ok(()),
        }
    };
    let error = StoreError::SealMismatch {
        segment_id: id,
        reason,
    };
    let detail = format!("{}: {error}", path.display());
    report.found(
        DamageKind::SealMismatch,
        path,
        Some(listed.seal_offset),
        detail,
    );
    Ok(())
}

/// The newest checkpoint that passes its checks; the ones that fail are
/// findings. A volume without any usable checkpoint checks against an empty
/// one (every segment is then "newer than the checkpoint").
fn newest_checkpoint(
    config: &LogConfig,
    paths: &[PathBuf],
    report: &mut DamageReport,
) -> CheckpointData {
    let mut newest = None;
    for path in paths {
        match checkpoint::read(path, &config.volume_id) {
            Ok(data) => {
                report.checkpoints_checked += 1;
                newest.get_or_insert(data);
            }
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            }
            Err(error) => {
                report.checkpoints_checked += 1;
                let kind = match error {
                    StoreError::BadCheckpoint {
                        reason: checkpoint::FOREIGN_VOLUME,
                        ..
                    } => DamageKind::ForeignVolume,
                    _ => DamageKind::Checkpoint,
                };
                report.found(kind, path, None, error.to_string());
            }
        }
    }
    newest.unwrap_or_default()
}

/// Scans every record of one segment and returns its seal, if any.
/// `whole_up_to`: `None` for a segment the newest checkpoint covers, which
/// must be whole and sealed; else the offset up to which it must be valid
/// (a torn tail after it is an unfinished append, not damage).
fn check_records(
    segment: &Segment<'_>,
    version: SegmentVersion,
    config: &LogConfig,
    whole_up_to: Option<u64>,
    report: &mut DamageReport,
) -> Result<Option<SealFound>, StoreError> {
    let Segment { file, path, id } = *segment;
    let limits = RecordLimits {
        block_shift: config.block_shift,
        capacity_blocks: config.capacity_blocks,
    };
    let outcome = scan::scan_segment(file, path, id, version, version.first_record(), &limits)?;
    report.bytes_checked += outcome.end_offset;
    for offset in &outcome.damaged {
        let detail = format!(
            "{} is corrupt at byte {offset}: a block of the record fails its checksum",
            path.display()
        );
        report.found(DamageKind::Checksum, path, Some(*offset), detail);
    }
    match (whole_up_to, outcome.stopped) {
        (None, Some((offset, reason))) => {
            let detail = format!("{} is corrupt at byte {offset}: {reason}", path.display());
            report.found(DamageKind::Checksum, path, Some(offset), detail);
        }
        (None, None) if outcome.seal.is_none() => {
            let detail = format!(
                "{} is truncated: a sealed segment ends at byte {} without its seal record",
                path.display(),
                outcome.end_offset
            );
            report.found(
                DamageKind::Truncated,
                path,
                Some(outcome.end_offset),
                detail,
            );
        }
        (Some(whole), Some((offset, reason))) if offset < whole => {
            let detail = format!(
                "{} is corrupt at byte {offset}, before the checkpointed end {whole}: {reason}",
                path.display()
            );
            report.found(DamageKind::Checksum, path, Some(offset), detail);
        }
        _ => {}
    }
    Ok(outcome.seal)
}
