//! Checking a volume's files without its key: the log's checks
//! ([`crate::store::check_files`]) with the geometry and id from the
//! superblock.

use std::collections::BTreeSet;
use std::path::Path;

use super::open::log_config;
use super::{Superblock, VolumeError, VolumeOptions};
use crate::store::{self, CheckDepth, DamageReport};

/// Checks the segments and checkpoints of the volume in `dir` (read only,
/// no lock: it also runs while a daemon serves the volume). A segment or
/// checkpoint carrying another volume id than the superblock's is a
/// finding, so a changed `volume_id` shows here before any key is asked for.
pub fn check_files(dir: &Path, depth: CheckDepth) -> Result<DamageReport, VolumeError> {
    check_files_evicted(dir, depth, &BTreeSet::new())
}

/// [`check_files`] of a volume whose segments `evicted` hold only their
/// header and seal (the records are in its object store): those are
/// checked at [`CheckDepth::Headers`] and counted as evicted, not damaged.
pub fn check_files_evicted(
    dir: &Path,
    depth: CheckDepth,
    evicted: &BTreeSet<u64>,
) -> Result<DamageReport, VolumeError> {
    let superblock = Superblock::load(dir)?;
    let options = VolumeOptions {
        read_only: true,
        ..VolumeOptions::default()
    };
    let config = log_config(&superblock, &options, None)?;
    Ok(store::check_files(dir, &config, depth, evicted)?)
}
