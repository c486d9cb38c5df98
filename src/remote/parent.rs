//! A clone's reads of its parent snapshot's blocks when the parent is a
//! volume kept in an object store whose cache (`--cache-size`) evicted
//! them: the clone fetches the chunks its reads touch from the parent's
//! store with ranged GETs and writes them back into the parent's segment
//! files (the same bytes the parent would fetch), then reads them as any
//! other block, checked against its table.
//!
//! The parent's daemon owns its cache: the clone never evicts from it and
//! never writes its `cache.json`. Before it reads a parent segment, the
//! clone takes the file's shared lock (`cache::lock_shared`), which keeps
//! the parent from punching it until the read is done (the parent evicts
//! another segment meanwhile), and looks for holes in what it reads
//! (`SEEK_HOLE`): those chunks are fetched first. So what the parent
//! evicts at any moment is read back, never failed for.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::attach::{RemoteStore, existing_volume_id};
use super::cache::{SegmentCache, SharedLock, lock_shared};
use super::error::{RemoteError, Result};
use super::layout::{ObjectKind, StoredObject};
use super::lease::Leases;
use super::resolve::resolve;
use crate::objstore::ObjectStore;
use crate::ops::sparse::hole_ranges;
use crate::store::{Log, LogEvents, ReadPin, ReadRange, WrittenCheckpoint};
use crate::sync::LockOrRecover;
use crate::volume::Volume;

/// Reads of a parent snapshot's evicted blocks (see the module doc).
pub struct ParentReads {
    store: Arc<dyn ObjectStore>,
    /// The parent's segment files.
    segments_dir: PathBuf,
    cache: Arc<SegmentCache>,
    /// The parent's segment objects, by id (listed again when a segment
    /// with holes is not among them).
    objects: Mutex<BTreeMap<u64, StoredObject>>,
}

impl ParentReads {
    /// Makes `log`, a snapshot view of the volume in `dir` that is kept in
    /// `store`, fetch the blocks its reads need from the store when the
    /// parent evicted them.
    pub fn attach(store: Arc<dyn ObjectStore>, dir: &Path, log: &Log) -> Result<Arc<Self>> {
        let reads = Arc::new(Self {
            cache: SegmentCache::borrowed(Arc::clone(&store), dir),
            store,
            segments_dir: dir.join("segments"),
            objects: Mutex::new(BTreeMap::new()),
        });
        reads.list_objects()?;
        log.set_events(Arc::clone(&reads) as _);
        Ok(reads)
    }

    /// Lists the parent's segment objects in the store again.
    fn list_objects(&self) -> Result<()> {
        let store = self.store.as_ref();
        let resolution = resolve(store, &Leases::read(store)?.epochs)?;
        *self.objects.lock_or_recover() = resolution
            .of_kind(ObjectKind::Segment)
            .map(|o| (o.number, o.clone()))
            .collect();
        Ok(())
    }

    /// Segment `id`'s object in the store.
    fn object(&self, id: u64) -> Result<StoredObject> {
        if let Some(object) = self.objects.lock_or_recover().get(&id) {
            return Ok(object.clone());
        }
        self.list_objects()?;
        self.objects
            .lock_or_recover()
            .get(&id)
            .cloned()
            .ok_or_else(|| RemoteError::Incomplete {
                reason: format!("the parent's evicted segment {id:016x} is not in its store"),
            })
    }

    /// Locks each segment `ranges` read (shared: the parent does not evict
    /// it meanwhile) and tells the cache which of their chunks the parent
    /// punched out. The locks, to hold until the reads are done.
    fn lock_and_find_holes(&self, ranges: &[ReadRange]) -> Result<Vec<SharedLock>> {
        let segments: BTreeSet<u64> = ranges.iter().map(|r| r.segment_id).collect();
        let mut locks = Vec::with_capacity(segments.len());
        for id in segments {
            let path = self.segments_dir.join(format!("{id:016x}.seg"));
            let Some(lock) = lock_shared(&path).map_err(|e| RemoteError::io(&path, e))? else {
                continue; // no file: the read fails as it would have
            };
            locks.push(lock);
            let file = File::open(&path).map_err(|e| RemoteError::io(&path, e))?;
            let mut holes = Vec::new();
            for range in ranges.iter().filter(|r| r.segment_id == id) {
                holes.extend(
                    hole_ranges(&file, range.start..range.end)
                        .map_err(|e| RemoteError::io(&path, e))?,
                );
            }
            if !holes.is_empty() {
                self.cache.mark_missing(self.object(id)?, &holes);
            }
        }
        Ok(locks)
    }
}

impl LogEvents for ParentReads {
    // A snapshot view never seals nor checkpoints.
    fn segment_sealed(&self, _segment_id: u64, _path: &Path) {}

    fn checkpoint_written(&self, _checkpoint: &WrittenCheckpoint) {}

    fn before_reads(&self, ranges: &[ReadRange]) -> Vec<std::io::Result<ReadPin>> {
        let locks = match self.lock_and_find_holes(ranges) {
            Ok(locks) => Arc::new(locks),
            Err(error) => {
                let text = error.to_string();
                return ranges
                    .iter()
                    .map(|_| Err(std::io::Error::other(text.clone())))
                    .collect();
            }
        };
        self.cache
            .pin_all(ranges)
            .into_iter()
            .map(|outcome| match outcome {
                Ok(pin) => Ok(Some(Box::new((pin, Arc::clone(&locks))) as Box<dyn Send>)),
                Err(error) => Err(std::io::Error::other(error.to_string())),
            })
            .collect()
    }
}

/// Makes the clone `volume` read the blocks of its parent snapshot that
/// the parent's cache evicted from `remote`, the store its parent is kept
/// in (which must hold the parent volume).
pub fn attach_parent_reads(remote: &RemoteStore, volume: &Volume) -> Result<Arc<ParentReads>> {
    let (Some(parent), Some(log)) = (&volume.superblock().parent, volume.parent_logs().first())
    else {
        return Err(RemoteError::NotAClone {
            dir: volume.dir().to_path_buf(),
        });
    };
    let stored = existing_volume_id(remote)?;
    if stored != parent.volume_id {
        return Err(RemoteError::OtherVolume {
            expected: parent.volume_id.clone(),
            found: stored,
        });
    }
    ParentReads::attach(Arc::clone(&remote.store), &parent.volume_dir, log)
}
