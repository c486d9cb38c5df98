//! A standby's copy of a volume kept in an object store, on a host other
//! than its writer's: rebuilt from the store when the standby starts (as a
//! reader: no lease), brought up to date while it waits, and once more when
//! it takes the volume over, when only what the writer sealed last is new
//! (its tail segments, its final checkpoint and metadata).
//!
//! A local segment file is trusted only if this follower downloaded it from
//! the object the store now names for its id; anything else is fetched
//! again, and files the newest checkpoint neither needs nor replays are
//! deleted, so the directory opens exactly as a fresh rebuild would.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::attach::{
    REBUILDING_FILE, RemoteStore, existing_volume_id, is_empty_or_rebuilding, read_local_state,
    start_rebuild, write_local_state,
};
use super::cache::{SegmentCache, write_evicted};
use super::error::{RemoteError, Result};
use super::layout::{ObjectKind, StoredObject};
use super::lease::Leases;
use super::rebuild::{download, download_segments, rebuild, volume_id_bytes};
use super::resolve::{Resolution, resolve};
use super::{meta, uploader::segment_id_of};
use crate::kms::fsutil::{fsync_dir, write_new};
use crate::objstore::Error as StoreError;
use crate::store::{read_checkpoint, segments_needed};
use crate::volume::{VolumeError, VolumeLock};

/// How often a catch-up starts over when an object went meanwhile.
const CATCH_UP_ATTEMPTS: u32 = 5;

/// What one catch-up did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaughtUp {
    /// The newest epoch in the store (its writer's, or the last one's).
    pub epoch: u64,
    /// Objects downloaded (segments, checkpoint, metadata).
    pub downloaded: usize,
    /// True when the directory was rebuilt from scratch.
    pub rebuilt: bool,
}

/// Keeps a directory on this host a copy of the volume in the store.
pub struct Follower {
    remote: RemoteStore,
    dir: PathBuf,
    lazy: bool,
    /// The objects this follower put into the directory, by kind and number.
    known: BTreeMap<(ObjectKind, u64), StoredObject>,
}

impl Follower {
    /// A follower of `remote` in `dir` (`lazy`: a first rebuild fetches the
    /// checkpointed segments' headers and seals only, as `serve
    /// --cache-size` does). Nothing happens before [`Follower::catch_up`].
    pub fn new(remote: RemoteStore, dir: &Path, lazy: bool) -> Self {
        Self {
            remote,
            dir: dir.to_path_buf(),
            lazy,
            known: BTreeMap::new(),
        }
    }

    /// The directory followed.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Brings the directory up to the newest state in the store. The first
    /// call rebuilds it: an empty one, or a stale copy of this volume
    /// (`remote.json` names it, nothing holds its lock), which is cleared
    /// first. A directory of another volume, or one a daemon holds, is
    /// refused.
    ///
    /// The writer goes on deleting objects a newer checkpoint no longer
    /// needs, and a reader holds no lease that would stop it: an object
    /// gone between the listing and its download starts the catch-up over
    /// (a few times) with a new listing.
    pub fn catch_up(&mut self) -> Result<CaughtUp> {
        let mut attempt = 1;
        loop {
            match self.catch_up_once() {
                Err(RemoteError::Store(StoreError::NotFound { .. }))
                    if attempt < CATCH_UP_ATTEMPTS =>
                {
                    tracing::debug!(attempt, "an object went while catching up; listing again");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn catch_up_once(&mut self) -> Result<CaughtUp> {
        let store = self.remote.store.as_ref();
        let volume_id = existing_volume_id(&self.remote)?;
        let leases = Leases::read(store)?;
        let resolution = resolve(store, &leases.epochs)?;
        if self.known.is_empty() {
            self.clear_stale(&volume_id)?;
            start_rebuild(&self.dir)?;
            let lazy = self.lazy;
            let threads = self.remote.threads;
            let adopted = rebuild(store, &resolution, &self.dir, &volume_id, threads, lazy)?;
            let marker = self.dir.join(REBUILDING_FILE);
            fs::remove_file(&marker).map_err(|e| RemoteError::io(&marker, e))?;
            write_local_state(
                &self.dir,
                &volume_id,
                leases.newest(),
                &self.remote.location,
            )?;
            for object in &adopted {
                self.known.insert(known_key(object), object.clone());
            }
            return Ok(CaughtUp {
                epoch: leases.newest(),
                downloaded: adopted.len(),
                rebuilt: true,
            });
        }
        let downloaded = self.update(&resolution, &volume_id)?;
        write_local_state(
            &self.dir,
            &volume_id,
            leases.newest(),
            &self.remote.location,
        )?;
        Ok(CaughtUp {
            epoch: leases.newest(),
            downloaded,
            rebuilt: false,
        })
    }

    /// Empties a stale copy of the volume (see `catch_up`).
    fn clear_stale(&self, volume_id: &str) -> Result<()> {
        if is_empty_or_rebuilding(&self.dir)? {
            return Ok(());
        }
        let local = read_local_state(&self.dir)?;
        if local.volume_id != volume_id {
            return Err(RemoteError::OtherVolume {
                expected: local.volume_id,
                found: volume_id.to_string(),
            });
        }
        let lock = VolumeLock::acquire(&self.dir, false).map_err(|e| match e {
            VolumeError::Busy { .. } => RemoteError::Incomplete {
                reason: format!(
                    "{} is served by another daemon of this host: a standby needs a directory \
                     of its own",
                    self.dir.display()
                ),
            },
            other => RemoteError::Incomplete {
                reason: other.to_string(),
            },
        })?;
        tracing::info!(dir = %self.dir.display(), epoch = local.epoch, "clearing a stale copy of the volume before following it");
        fs::remove_dir_all(&self.dir).map_err(|e| RemoteError::io(&self.dir, e))?;
        drop(lock);
        Ok(())
    }

    /// Brings a directory this follower rebuilt up to `resolution`.
    fn update(&mut self, resolution: &Resolution, volume_id: &str) -> Result<usize> {
        let store = self.remote.store.as_ref();
        let mut downloaded = 0;
        let checkpoint = resolution
            .newest(ObjectKind::Checkpoint)
            .ok_or_else(|| incomplete("no checkpoint object"))?
            .clone();
        let checkpoints = self.dir.join("checkpoints");
        let checkpoint_path = checkpoints.join(format!("{:016x}.ckpt", checkpoint.number));
        if !self.is_known(&checkpoint, &checkpoint_path) {
            let bytes = download(store, &checkpoint)?;
            remove_if_there(&checkpoint_path)?;
            write_new(&checkpoint_path, &bytes, 0o600)
                .map_err(|e| RemoteError::io(&checkpoint_path, e))?;
            fsync_dir(&checkpoints).map_err(|e| RemoteError::io(&checkpoints, e))?;
            self.known
                .insert(known_key(&checkpoint), checkpoint.clone());
            downloaded += 1;
        }
        let data = read_checkpoint(&checkpoint_path, &volume_id_bytes(volume_id)?)?;
        let needs = segments_needed(&data);
        let mut wanted: Vec<StoredObject> = Vec::new();
        for id in &needs {
            let segment = resolution.segment(*id).ok_or_else(|| {
                incomplete(&format!(
                    "checkpoint {} needs segment {id:016x}, which is not stored",
                    checkpoint.key().as_str()
                ))
            })?;
            wanted.push(segment.clone());
        }
        let mut next = data.segment_id_next;
        while let Some(segment) = resolution.segment(next) {
            wanted.push(segment.clone());
            next += 1;
        }
        let segments = self.dir.join("segments");
        let keep: BTreeSet<u64> = wanted.iter().map(|s| s.number).collect();
        let fetch: Vec<StoredObject> = wanted
            .into_iter()
            .filter(|s| !self.is_known(s, &segment_path(&segments, s.number)))
            .collect();
        let mut evicted = SegmentCache::persisted_evicted(&self.dir)?;
        let before = evicted.len();
        for object in &fetch {
            remove_if_there(&segment_path(&segments, object.number))?;
            evicted.remove(&object.number);
        }
        download_segments(store, &fetch, &segments, self.remote.threads)?;
        downloaded += fetch.len();
        for object in fetch {
            self.known.insert(known_key(&object), object);
        }
        // What the newest checkpoint neither needs nor replays goes: the
        // open then sees what a fresh rebuild would.
        for entry in fs::read_dir(&segments).map_err(|e| RemoteError::io(&segments, e))? {
            let entry = entry.map_err(|e| RemoteError::io(&segments, e))?;
            let Some(id) = entry.file_name().to_str().and_then(segment_id_of) else {
                continue;
            };
            if !keep.contains(&id) {
                remove_if_there(&entry.path())?;
                self.known.remove(&(ObjectKind::Segment, id));
                evicted.remove(&id);
            }
        }
        if evicted.len() != before {
            write_evicted(&self.dir, &evicted)?;
        }
        for entry in fs::read_dir(&checkpoints).map_err(|e| RemoteError::io(&checkpoints, e))? {
            let entry = entry.map_err(|e| RemoteError::io(&checkpoints, e))?;
            if entry.path() != checkpoint_path {
                remove_if_there(&entry.path())?;
            }
        }
        if let Some(meta_object) = resolution.newest(ObjectKind::Meta)
            && self.known.get(&known_key(meta_object)) != Some(meta_object)
        {
            let bundle = download(store, meta_object)?;
            meta::restore(&self.dir, meta_object.key().as_str(), &bundle)?;
            self.known
                .insert(known_key(meta_object), meta_object.clone());
            downloaded += 1;
        }
        Ok(downloaded)
    }

    /// True when `path` holds `object` as this follower downloaded it.
    fn is_known(&self, object: &StoredObject, path: &Path) -> bool {
        self.known.get(&known_key(object)) == Some(object) && path.exists()
    }
}

/// Where `object` stands in `Follower::known`: segments and checkpoints
/// by their number (one file each), the metadata as one (the newest).
fn known_key(object: &StoredObject) -> (ObjectKind, u64) {
    match object.kind {
        ObjectKind::Meta => (ObjectKind::Meta, 0),
        kind => (kind, object.number),
    }
}

fn segment_path(segments: &Path, id: u64) -> PathBuf {
    segments.join(format!("{id:016x}.seg"))
}

fn remove_if_there(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RemoteError::io(path, e)),
    }
}

fn incomplete(reason: &str) -> RemoteError {
    RemoteError::Incomplete {
        reason: reason.to_string(),
    }
}
