//! Rebuilding a volume directory from the object store alone: the metadata,
//! the newest checkpoint, every segment it needs and the segments written
//! after it (up to the first missing one), downloaded in parallel and each
//! checked against its name before it is written.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::cache::{evictable_range, get_span, write_evicted};
use super::error::{RemoteError, Result};
use super::layout::{ObjectKind, StoredObject};
use super::meta;
use super::resolve::Resolution;
use crate::kms::fsutil::{fsync_dir, write_new};
use crate::objstore::ObjectStore;
use crate::store::{read_checkpoint, segments_needed};
use crate::volume::{SnapshotPaths, Superblock};

/// Rebuilds the volume `volume_id` (hex) into the empty directory `dir`
/// from `resolution`, with `threads` parallel downloads. With `lazy` (a
/// volume served with a cache size), the segments below the checkpoint's
/// replay point get only their header and seal, the rest of each file a
/// hole, listed as evicted in `cache.json`: the cache fetches records when
/// they are read, and the volume opens after a few small GETs per segment
/// instead of a download of all its data. Returns the objects it used
/// (the new epoch adopts them).
pub fn rebuild(
    store: &dyn ObjectStore,
    resolution: &Resolution,
    dir: &Path,
    volume_id: &str,
    threads: usize,
    lazy: bool,
) -> Result<Vec<StoredObject>> {
    let meta_object = restore_metadata(store, resolution, dir, volume_id)?;
    let raw_id = volume_id_bytes(volume_id)?;
    let checkpoint_object = resolution
        .newest(ObjectKind::Checkpoint)
        .ok_or_else(|| incomplete("no checkpoint object"))?;
    let checkpoint_path = dir
        .join("checkpoints")
        .join(format!("{:016x}.ckpt", checkpoint_object.number));
    let bytes = download(store, checkpoint_object)?;
    write_new(&checkpoint_path, &bytes, 0o600).map_err(|e| RemoteError::io(&checkpoint_path, e))?;
    let data = read_checkpoint(&checkpoint_path, &raw_id)?;
    let needs = segments_needed(&data);
    if let Some(missing) = needs.iter().find(|id| resolution.segment(**id).is_none()) {
        return Err(RemoteError::Incomplete {
            reason: format!(
                "checkpoint {} needs segment {missing:016x}, which is not stored",
                checkpoint_object.key().as_str()
            ),
        });
    }
    // Below the replay point only what the checkpoint needs: the others
    // may have been collected (see `collect`).
    let mut segments: Vec<StoredObject> = resolution
        .of_kind(ObjectKind::Segment)
        .filter(|s| s.number < data.segment_id_next && needs.contains(&s.number))
        .cloned()
        .collect();
    let below_replay = segments.len();
    // Segments after the checkpoint are replayed in order: stop at a gap.
    let mut next = data.segment_id_next;
    while let Some(segment) = resolution.segment(next) {
        segments.push(segment.clone());
        next += 1;
    }
    let segments_dir = dir.join("segments");
    let (placeholders, whole) = segments.split_at(if lazy { below_replay } else { 0 });
    let evicted: BTreeSet<u64> = placeholders.iter().map(|s| s.number).collect();
    if !evicted.is_empty() {
        // Listed before any hole exists (as the cache does).
        write_evicted(dir, &evicted)?;
    }
    fetch_all(placeholders, threads, |object| {
        write_placeholder(store, object, &segments_dir)
    })?;
    download_segments(store, whole, &segments_dir, threads)?;
    fsync_dir(&dir.join("checkpoints")).map_err(|e| RemoteError::io(dir, e))?;
    segments.push(checkpoint_object.clone());
    segments.push(meta_object);
    Ok(segments)
}

/// Fills the empty directory `dir` with what serving snapshot `name` of
/// volume `volume_id` read-only needs from `resolution`: the metadata (with
/// the snapshot's wrapped keys and frozen index) and the segments the index
/// refers to.
pub fn fetch_snapshot(
    store: &dyn ObjectStore,
    resolution: &Resolution,
    dir: &Path,
    volume_id: &str,
    name: &str,
    threads: usize,
) -> Result<()> {
    restore_metadata(store, resolution, dir, volume_id)?;
    let index = SnapshotPaths::new(dir, name).index;
    if !index.exists() {
        return Err(incomplete(&format!(
            "the stored metadata has no snapshot {name:?} (one taken moments ago reaches the store with the next checkpoint)"
        )));
    }
    let data = read_checkpoint(&index, &volume_id_bytes(volume_id)?)?;
    let segments = segments_needed(&data)
        .into_iter()
        .map(|id| {
            resolution.segment(id).cloned().ok_or_else(|| {
                incomplete(&format!(
                    "snapshot {name:?} needs segment {id:016x}, which is not stored"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    download_segments(store, &segments, &dir.join("segments"), threads)
}

/// Downloads the newest metadata object into the empty directory `dir`,
/// checks it is volume `volume_id`'s, and makes the empty `segments/` and
/// `checkpoints/`. Returns the object.
fn restore_metadata(
    store: &dyn ObjectStore,
    resolution: &Resolution,
    dir: &Path,
    volume_id: &str,
) -> Result<StoredObject> {
    let meta_object = resolution
        .newest(ObjectKind::Meta)
        .ok_or_else(|| incomplete("no metadata object"))?;
    let bundle = download(store, meta_object)?;
    meta::restore(dir, meta_object.key().as_str(), &bundle)?;
    let superblock = Superblock::load(dir).map_err(|e| incomplete(&e.to_string()))?;
    if superblock.volume_id != volume_id {
        return Err(RemoteError::OtherVolume {
            expected: volume_id.to_string(),
            found: superblock.volume_id,
        });
    }
    for sub in ["segments", "checkpoints"] {
        let path = dir.join(sub);
        fs::create_dir(&path).map_err(|e| RemoteError::io(&path, e))?;
    }
    fsync_dir(dir).map_err(|e| RemoteError::io(dir, e))?;
    Ok(meta_object.clone())
}

fn incomplete(reason: &str) -> RemoteError {
    RemoteError::Incomplete {
        reason: reason.to_string(),
    }
}

/// Downloads `objects` into `segments_dir` with `threads` threads.
pub(super) fn download_segments(
    store: &dyn ObjectStore,
    objects: &[StoredObject],
    segments_dir: &Path,
    threads: usize,
) -> Result<()> {
    fetch_all(objects, threads, |object| {
        let path = segments_dir.join(format!("{:016x}.seg", object.number));
        let bytes = download(store, object)?;
        write_new(&path, &bytes, 0o600).map_err(|e| RemoteError::io(&path, e))
    })?;
    fsync_dir(segments_dir).map_err(|e| RemoteError::io(segments_dir, e))
}

/// Writes segment `object`'s file in `segments_dir` at its full length
/// with only what eviction keeps (the header and the seal, fetched with
/// ranged GETs); the records are a hole.
fn write_placeholder(
    store: &dyn ObjectStore,
    object: &StoredObject,
    segments_dir: &Path,
) -> Result<()> {
    let path = segments_dir.join(format!("{:016x}.seg", object.number));
    let io = |e| RemoteError::io(&path, e);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    file.set_len(object.len).map_err(io)?;
    let holes = evictable_range(object.len);
    for (start, end) in [(0, holes.start), (holes.end, object.len)] {
        if start >= end {
            continue;
        }
        let bytes = get_span(store, object, start..end)?;
        file.write_all_at(&bytes, start).map_err(io)?;
    }
    file.sync_data().map_err(io)
}

/// Runs `fetch` on each of `objects` with `threads` threads; the first
/// failure stops the rest and is returned.
fn fetch_all(
    objects: &[StoredObject],
    threads: usize,
    fetch: impl Fn(&StoredObject) -> Result<()> + Sync,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<RemoteError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, objects.len().max(1)) {
            scope.spawn(|| {
                while let Some(object) = objects.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Err(error) = fetch(object) {
                        let mut failure = failure.lock().unwrap_or_else(|e| e.into_inner());
                        failure.get_or_insert(error);
                        next.store(objects.len(), Ordering::Relaxed);
                    }
                }
            });
        }
    });
    match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Gets an object and checks it against its name.
pub(super) fn download(store: &dyn ObjectStore, object: &StoredObject) -> Result<bytes::Bytes> {
    let bytes = store.get(&object.key())?;
    object.verify(&bytes)?;
    Ok(bytes)
}

/// The 16 bytes of a volume id written as 32 hex digits.
pub fn volume_id_bytes(volume_id: &str) -> Result<[u8; 16]> {
    hex::decode(volume_id)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| RemoteError::Corrupt {
            key: super::layout::VOLUME_ID_KEY.to_string(),
            reason: format!("{volume_id:?} is not a volume id"),
        })
}
