//! A clone's reads of its parent snapshot's blocks when the parent is a
//! volume kept in an object store whose cache (`--cache-size`) evicted
//! them: the clone fetches the chunks its reads touch from the parent's
//! store with ranged GETs and writes them back into the parent's segment
//! files (the same bytes the parent would fetch), then reads them as any
//! other block, checked against its table.
//!
//! The parent's daemon owns its cache: the clone never evicts from it and
//! never writes its `cache.json`. It follows that file instead: a segment
//! listed there is treated as evicted (all its chunks fetched before a
//! read) each time the list changes, since the parent may have punched it
//! again. A hole the parent punches between a clone's refill and its read
//! of the same chunk fails that read's checks: an I/O error, never wrong
//! data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::attach::{RemoteStore, existing_volume_id};
use super::cache::{CACHE_STATE_FILE, SegmentCache};
use super::error::{RemoteError, Result};
use super::layout::{ObjectKind, StoredObject};
use super::lease::Leases;
use super::resolve::resolve;
use crate::objstore::ObjectStore;
use crate::store::{Log, LogEvents, ReadPin, ReadRange, WrittenCheckpoint};
use crate::sync::LockOrRecover;
use crate::volume::Volume;

/// Reads of a parent snapshot's evicted blocks (see the module doc).
pub struct ParentReads {
    store: Arc<dyn ObjectStore>,
    /// The parent's volume directory.
    dir: PathBuf,
    cache: Arc<SegmentCache>,
    known: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    /// The parent's segment objects, by id (listed again when an evicted
    /// segment is not among them).
    objects: BTreeMap<u64, StoredObject>,
    /// When `cache.json` was last read (its modification time).
    listed: Option<SystemTime>,
}

impl ParentReads {
    /// Makes `log`, a snapshot view of the volume in `dir` that is kept in
    /// `store`, fetch the blocks its reads need from the store when the
    /// parent evicted them.
    pub fn attach(store: Arc<dyn ObjectStore>, dir: &Path, log: &Log) -> Result<Arc<Self>> {
        let reads = Arc::new(Self {
            cache: SegmentCache::borrowed(Arc::clone(&store), dir),
            store,
            dir: dir.to_path_buf(),
            known: Mutex::new(Known::default()),
        });
        reads.refresh()?;
        log.set_events(Arc::clone(&reads) as _);
        Ok(reads)
    }

    /// Follows `cache.json` of the parent: each segment it lists now must
    /// be fetched before it is read.
    fn refresh(&self) -> Result<()> {
        let path = self.dir.join(CACHE_STATE_FILE);
        let modified = match std::fs::metadata(&path) {
            Ok(meta) => Some(meta.modified().map_err(|e| RemoteError::io(&path, e))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(RemoteError::io(&path, e)),
        };
        let mut known = self.known.lock_or_recover();
        if modified.is_some() && known.listed == modified {
            return Ok(());
        }
        let evicted = SegmentCache::persisted_evicted(&self.dir)?;
        if evicted.iter().any(|id| !known.objects.contains_key(id)) {
            let store = self.store.as_ref();
            let resolution = resolve(store, &Leases::read(store)?.epochs)?;
            known.objects = resolution
                .of_kind(ObjectKind::Segment)
                .map(|o| (o.number, o.clone()))
                .collect();
        }
        for id in &evicted {
            let object = known
                .objects
                .get(id)
                .ok_or_else(|| RemoteError::Incomplete {
                    reason: format!("the parent's evicted segment {id:016x} is not in its store"),
                })?;
            self.cache.mark_evicted(object.clone());
        }
        known.listed = modified;
        Ok(())
    }
}

impl LogEvents for ParentReads {
    // A snapshot view never seals nor checkpoints.
    fn segment_sealed(&self, _segment_id: u64, _path: &Path) {}

    fn checkpoint_written(&self, _checkpoint: &WrittenCheckpoint) {}

    fn before_reads(&self, ranges: &[ReadRange]) -> Vec<std::io::Result<ReadPin>> {
        if let Err(error) = self.refresh() {
            let text = error.to_string();
            return ranges
                .iter()
                .map(|_| Err(std::io::Error::other(text.clone())))
                .collect();
        }
        self.cache
            .pin_all(ranges)
            .into_iter()
            .map(|outcome| match outcome {
                Ok(pin) => Ok(pin.map(|p| Box::new(p) as Box<dyn Send>)),
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
