//! Spare segment files: segments that compaction emptied are kept, up to a
//! bound, and reused by the next segment a head starts, instead of being
//! deleted and created again.
//!
//! Why: a new segment costs a file creation, a directory entry and an
//! allocation of its whole size (`io::preallocate`); a spare already has
//! its blocks. Reuse zeroes the spare's range first (`io::zero_range`:
//! the blocks stay allocated and read as zeros, so the scan of a reused
//! file ends at the new records, exactly as in a fresh preallocated one),
//! writes the new header, and only then renames it to its segment name. A
//! crash at any point leaves either a `.spare` file (ignored by everything
//! that lists segments, and zeroed again before any reuse) or a segment
//! that looks like a freshly created one.
//!
//! Spares live beside the segments as `NNNNNNNNNNNNNNNN.spare` (same
//! directory, so the renames never cross a filesystem). A writable open
//! also deletes segment files a crash left half made
//! (`segment::CREATION_SUFFIX`).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::super::StoreError;
use super::super::io::zero_range;
use super::super::segment::{self, SegmentHeaderFields};
use super::{Log, SegmentFile};
use crate::sync::LockOrRecover;

/// The file name suffix of a spare segment file.
const SPARE_SUFFIX: &str = ".spare";

/// The spare segment files of one log and how many it may keep.
pub(super) struct SpareSegments {
    dir: PathBuf,
    limit: usize,
    inner: Mutex<Spares>,
}

#[derive(Default)]
struct Spares {
    /// Numbers of the spare files present, in the order they are reused.
    numbers: Vec<u64>,
    /// The next number to give a new spare.
    next: u64,
}

impl SpareSegments {
    /// Spares of the log whose segments are in `dir`, keeping at most
    /// `limit`: adopts the spare files a previous process left (deleting
    /// those past `limit`). A read-only log (`limit` 0) neither keeps nor
    /// deletes any.
    pub(super) fn open(dir: &Path, limit: usize) -> Self {
        let mut spares = Spares::default();
        if limit > 0 {
            remove_creation_leftovers(dir);
            let mut found = list(dir);
            found.sort_unstable();
            spares.next = found.last().map_or(0, |n| n + 1);
            for number in found.split_off(found.len().min(limit)) {
                let path = spare_path(dir, number);
                if let Err(error) = fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), %error, "extra spare segment not deleted");
                }
            }
            spares.numbers = found;
        }
        Self {
            dir: dir.to_path_buf(),
            limit,
            inner: Mutex::new(spares),
        }
    }

    /// Keeps the segment file at `segment` as a spare if there is room:
    /// renames it and returns true. False (nothing done) when the pool is
    /// full; the caller deletes the segment as before.
    pub(super) fn keep(&self, segment: &Path) -> io::Result<bool> {
        let mut spares = self.inner.lock_or_recover();
        if spares.numbers.len() >= self.limit {
            return Ok(false);
        }
        let number = spares.next;
        fs::rename(segment, spare_path(&self.dir, number))?;
        spares.next += 1;
        spares.numbers.push(number);
        Ok(true)
    }

    /// Takes a spare for reuse: its path and the file opened for reading and
    /// writing (the caller zeroes it before anything else). `None` when
    /// there is none; a spare that cannot be opened is deleted and the next
    /// one tried.
    pub(super) fn take(&self) -> Option<(PathBuf, File)> {
        let mut spares = self.inner.lock_or_recover();
        while let Some(number) = spares.numbers.pop() {
            let path = spare_path(&self.dir, number);
            match fs::OpenOptions::new().read(true).write(true).open(&path) {
                Ok(file) => return Some((path, file)),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "spare segment unusable");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        None
    }

    /// How many spare files there are and their bytes on disk.
    pub(super) fn usage(&self) -> (usize, u64) {
        let spares = self.inner.lock_or_recover();
        let bytes = spares
            .numbers
            .iter()
            .filter_map(|n| fs::metadata(spare_path(&self.dir, *n)).ok())
            .map(|m| m.len())
            .sum();
        (spares.numbers.len(), bytes)
    }
}

impl Log {
    /// Keeps the emptied segment at `path` as a spare if there is room and
    /// nothing else holds `file` open: a reader that planned a read of it
    /// before compaction moved its blocks still reads the old contents of
    /// a deleted file, but would read zeros from a reused one. Nor when an
    /// observer (a store volume's cache) watches the segment files: it
    /// opens them by name to punch out and refill records, and one such
    /// call in flight would land in the reused file. True if kept.
    pub(super) fn recycle(
        &self,
        file: Option<Arc<SegmentFile>>,
        path: &Path,
    ) -> Result<bool, StoreError> {
        if self.events.get().is_some() || file.is_none_or(|f| Arc::strong_count(&f) != 1) {
            return Ok(false);
        }
        self.spares.keep(path).map_err(|e| StoreError::io(path, e))
    }

    /// A spare segment file (see `spares`) with all of it zeroed, if there
    /// is one; one that cannot be zeroed is deleted.
    pub(super) fn zeroed_spare(&self) -> Option<(PathBuf, File)> {
        let (path, file) = self.spares.take()?;
        let zeroed = file.metadata().and_then(|m| zero_range(&file, 0, m.len()));
        match zeroed {
            Ok(()) => Some((path, file)),
            Err(error) => {
                tracing::debug!(path = %path.display(), %error, "spare segment not reused");
                drop(file);
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Segment `id`'s file: the zeroed `spare` made into it, or a new file
    /// (also when the spare cannot be used, which is then deleted).
    pub(super) fn new_segment_file(
        &self,
        spare: Option<(PathBuf, File)>,
        id: u64,
        fields: &SegmentHeaderFields,
    ) -> Result<File, StoreError> {
        let volume_id = &self.config.volume_id;
        if let Some((path, file)) = spare {
            match segment::reuse_segment(&self.segments_dir, &path, file, id, volume_id, fields) {
                Ok(file) => return Ok(file),
                Err(error) => {
                    tracing::warn!(%error, "spare segment not reused; creating a new one");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        segment::create_segment(&self.segments_dir, id, volume_id, fields)
    }
}

/// The path of spare `number` in `dir`.
fn spare_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016x}{SPARE_SUFFIX}"))
}

/// Deletes segment files a crash left half made (`segment::CREATION_SUFFIX`:
/// never named as segments, so nothing refers to them).
fn remove_creation_leftovers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.ends_with(segment::CREATION_SUFFIX))
        {
            let path = entry.path();
            if let Err(error) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "half-made segment not deleted");
            }
        }
    }
}

/// Numbers of the spare files in `dir` (none if it cannot be read).
fn list(dir: &Path) -> Vec<u64> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let hex = name.to_str()?.strip_suffix(SPARE_SUFFIX)?;
            (hex.len() == 16)
                .then(|| u64::from_str_radix(hex, 16).ok())
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, b"segment").unwrap();
        path
    }

    #[test]
    fn keeps_up_to_its_limit_and_reuses_the_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let spares = SpareSegments::open(dir.path(), 2);
        assert!(spares.keep(&segment(dir.path(), "a.seg")).unwrap());
        assert!(spares.keep(&segment(dir.path(), "b.seg")).unwrap());
        let third = segment(dir.path(), "c.seg");
        assert!(
            !spares.keep(&third).unwrap(),
            "a third spare over a limit of 2"
        );
        assert!(third.exists(), "a segment not kept is left to the caller");
        assert!(!dir.path().join("a.seg").exists());
        assert_eq!(spares.usage(), (2, 14));
        let (path, _file) = spares.take().unwrap();
        assert_eq!(path, spare_path(dir.path(), 1));
        assert_eq!(spares.usage().0, 1);
        fs::remove_file(path).unwrap();
        assert!(spares.take().is_some());
        assert!(spares.take().is_none());
    }

    #[test]
    fn a_reopen_adopts_spares_and_deletes_those_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let first = SpareSegments::open(dir.path(), 3);
        for name in ["a.seg", "b.seg", "c.seg"] {
            assert!(first.keep(&segment(dir.path(), name)).unwrap());
        }
        fs::write(dir.path().join("0000000000000001.seg"), b"x").unwrap();
        fs::write(dir.path().join("short.spare"), b"x").unwrap();
        let again = SpareSegments::open(dir.path(), 2);
        assert_eq!(again.usage().0, 2);
        assert!(
            !spare_path(dir.path(), 2).exists(),
            "the spare past the limit"
        );
        assert!(dir.path().join("0000000000000001.seg").exists());
        assert!(dir.path().join("short.spare").exists(), "not a spare name");
        // New spares get numbers after the adopted ones.
        assert!(!again.keep(&segment(dir.path(), "d.seg")).unwrap());
        let (_path, _file) = again.take().unwrap();
        assert!(again.keep(&segment(dir.path(), "d.seg")).unwrap());
        assert!(spare_path(dir.path(), 3).exists());
        let read_only = SpareSegments::open(dir.path(), 0);
        assert_eq!(read_only.usage().0, 0);
        assert!(
            spare_path(dir.path(), 3).exists(),
            "read-only deletes nothing"
        );
    }
}
