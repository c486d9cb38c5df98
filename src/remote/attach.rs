//! Tying a volume directory to its object store: putting a new volume
//! there (`lsvblk create --store`) and claiming it to serve (`lsvblk serve
//! --store`), rebuilding the directory first when it is empty.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::{RemoteError, Result};
use super::layout::{ObjectKind, StoredObject, VOLUME_ID_KEY, root_key};
use super::lease::{self, Leases};
use super::rebuild::{self, rebuild, volume_id_bytes};
use super::resolve::{resolve, write_base};
use super::uploader::{Uploader, segment_id_of};
use crate::kms::fsutil::write_atomic;
use crate::objstore::{Error as StoreError, ObjectStore, PutOutcome};
use crate::store::{WrittenCheckpoint, list_checkpoints, read_checkpoint, segments_needed};
use crate::volume::Superblock;

/// The file in a volume directory that says which store and epoch it
/// belongs to.
pub const LOCAL_STATE_FILE: &str = "remote.json";
/// Present while a directory is being rebuilt: an interrupted rebuild is
/// started over, never served.
pub(super) const REBUILDING_FILE: &str = ".rebuilding";

/// A volume's object store and how to name it in messages.
#[derive(Clone, Debug)]
pub struct RemoteStore {
    /// The store, its keys relative to the volume's prefix.
    pub store: Arc<dyn ObjectStore>,
    /// `s3://BUCKET/PREFIX`, for messages.
    pub location: String,
    /// Parallel uploads and downloads.
    pub threads: usize,
}

/// What a local volume directory remembers of its store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct LocalState {
    pub(super) volume_id: String,
    pub(super) epoch: u64,
    location: String,
}

/// A volume claimed for writing: its epoch and what is already stored.
#[derive(Debug)]
pub struct Claimed {
    /// Our epoch.
    pub epoch: u64,
    /// The objects it adopted from the store (not to be uploaded again).
    pub stored: Vec<StoredObject>,
    /// True when the directory was rebuilt from the store.
    pub rebuilt: bool,
}

/// Refuses a store whose prefix holds a volume already (before one is
/// created for it).
pub fn check_vacant(remote: &RemoteStore) -> Result<()> {
    match stored_volume_id(remote) {
        Ok(volume_id) => Err(RemoteError::VolumeExists {
            location: remote.location.clone(),
            volume_id,
        }),
        Err(RemoteError::Store(StoreError::NotFound { .. })) => Ok(()),
        Err(error) => Err(error),
    }
}

/// True when serving `dir` with a store would rebuild it first: it is
/// missing or empty, or a rebuild of it was interrupted.
pub fn needs_rebuild(dir: &Path) -> bool {
    dir.join(REBUILDING_FILE).exists()
        || std::fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none())
}

/// Puts the volume just created in `dir` into the store (which must not
/// hold one): its id, epoch 1, its segments, checkpoint and metadata.
pub fn create(remote: &RemoteStore, dir: &Path) -> Result<()> {
    let volume_id = Superblock::load(dir)
        .map_err(|e| RemoteError::Incomplete {
            reason: e.to_string(),
        })?
        .volume_id;
    let marker = Bytes::from(format!("{volume_id}\n"));
    if remote
        .store
        .put_if_absent(&root_key(VOLUME_ID_KEY), marker)?
        == PutOutcome::AlreadyExists
    {
        return Err(RemoteError::VolumeExists {
            location: remote.location.clone(),
            volume_id: stored_volume_id(remote)?,
        });
    }
    let epoch = 1;
    lease::claim(remote.store.as_ref(), epoch, dir)?;
    write_base(remote.store.as_ref(), epoch, 0, &[])?;
    let uploader = Uploader::start(
        Arc::clone(&remote.store),
        dir,
        epoch,
        &[],
        remote.threads,
        None,
    )?;
    uploader.queue_existing(newest_checkpoint(dir, &volume_id)?)?;
    if !uploader.finish(Duration::from_secs(600)) {
        return Err(RemoteError::Incomplete {
            reason: uploader.status().last_error.unwrap_or_default(),
        });
    }
    lease::release(remote.store.as_ref(), epoch)?;
    write_local_state(dir, &volume_id, epoch, &remote.location)
}

/// Claims the volume in the store for a writer in `dir`: refuses while
/// another writer holds it (unless `takeover`), rebuilds an empty `dir`
/// from the store (`lazy`: fetching segment records only when they are
/// read, see `rebuild`), and starts a new epoch adopting what is stored.
pub fn claim(remote: &RemoteStore, dir: &Path, takeover: bool, lazy: bool) -> Result<Claimed> {
    let store = remote.store.as_ref();
    let volume_id = existing_volume_id(remote)?;
    let leases = Leases::read(store)?;
    let rebuild_dir = is_empty_or_rebuilding(dir)?;
    if !rebuild_dir {
        let local = read_local_state(dir)?;
        if local.volume_id != volume_id {
            return Err(RemoteError::OtherVolume {
                expected: local.volume_id,
                found: volume_id,
            });
        }
        if local.epoch != leases.newest() {
            return Err(RemoteError::Diverged {
                dir: dir.to_path_buf(),
                local: local.epoch,
                store: leases.newest(),
            });
        }
    }
    leases.check_free(store, dir, takeover)?;
    let epoch = leases.newest() + 1;
    lease::claim(store, epoch, dir)?;
    let resolution = resolve(store, &leases.epochs)?;
    let adopted = if rebuild_dir {
        start_rebuild(dir)?;
        match rebuild(store, &resolution, dir, &volume_id, remote.threads, lazy) {
            Ok(adopted) => adopted,
            Err(error) => {
                // The epoch never started (it has no base): free it, so the
                // next attempt needs no --takeover.
                if let Err(release) = lease::release(store, epoch) {
                    tracing::warn!(%release, epoch, "could not release the lease of a failed rebuild");
                }
                return Err(error);
            }
        }
    } else {
        let local = local_segments(dir)?;
        resolution
            .all()
            .filter(|o| match o.kind {
                ObjectKind::Segment => local.contains(&o.number),
                kind => resolution.newest(kind) == Some(*o),
            })
            .cloned()
            .collect()
    };
    write_base(store, epoch, resolution.epoch, &adopted)?;
    write_local_state(dir, &volume_id, epoch, &remote.location)?;
    if rebuild_dir {
        let marker = dir.join(REBUILDING_FILE);
        fs::remove_file(&marker).map_err(|e| RemoteError::io(&marker, e))?;
    }
    Ok(Claimed {
        epoch,
        stored: adopted,
        rebuilt: rebuild_dir,
    })
}

/// Fills an empty `dir` from the store with what serving snapshot `name`
/// read-only needs (see `rebuild::fetch_snapshot`): no lease is claimed, a
/// reader never writes to the store. A directory already filled is left as
/// it is; returns whether it was filled now.
pub fn fetch_snapshot(remote: &RemoteStore, dir: &Path, name: &str) -> Result<bool> {
    if !is_empty_or_rebuilding(dir)? {
        return Ok(false);
    }
    let store = remote.store.as_ref();
    let volume_id = existing_volume_id(remote)?;
    let resolution = resolve(store, &Leases::read(store)?.epochs)?;
    start_rebuild(dir)?;
    rebuild::fetch_snapshot(store, &resolution, dir, &volume_id, name, remote.threads)?;
    let marker = dir.join(REBUILDING_FILE);
    fs::remove_file(&marker).map_err(|e| RemoteError::io(&marker, e))?;
    Ok(true)
}

/// The newest checkpoint of the volume in `dir`, as an upload job.
pub fn newest_checkpoint(dir: &Path, volume_id: &str) -> Result<Option<WrittenCheckpoint>> {
    let Some(path) = list_checkpoints(&dir.join("checkpoints"))?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let data = read_checkpoint(&path, &volume_id_bytes(volume_id)?)?;
    let needs = segments_needed(&data);
    Ok(Some(WrittenCheckpoint {
        path,
        seq_next: data.seq_next,
        segment_id_next: data.segment_id_next,
        needs,
    }))
}

/// The id of the volume the store holds; none there is `NoVolume`.
pub(crate) fn existing_volume_id(remote: &RemoteStore) -> Result<String> {
    match stored_volume_id(remote) {
        Err(RemoteError::Store(StoreError::NotFound { .. })) => Err(RemoteError::NoVolume {
            location: remote.location.clone(),
        }),
        other => other,
    }
}

fn stored_volume_id(remote: &RemoteStore) -> Result<String> {
    let bytes = remote.store.get(&root_key(VOLUME_ID_KEY))?;
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    volume_id_bytes(&text)?;
    Ok(text)
}

/// True for a missing or empty directory, or one an interrupted rebuild
/// left (then emptied here).
pub(super) fn is_empty_or_rebuilding(dir: &Path) -> Result<bool> {
    if dir.join(REBUILDING_FILE).exists() {
        tracing::warn!(dir = %dir.display(), "starting over an interrupted rebuild");
        fs::remove_dir_all(dir).map_err(|e| RemoteError::io(dir, e))?;
        return Ok(true);
    }
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(RemoteError::io(dir, e)),
    }
}

pub(super) fn start_rebuild(dir: &Path) -> Result<()> {
    crate::kms::fsutil::create_private_dir(dir).map_err(|e| RemoteError::io(dir, e))?;
    let marker = dir.join(REBUILDING_FILE);
    write_atomic(&marker, b"", 0o600).map_err(|e| RemoteError::io(&marker, e))
}

fn local_segments(dir: &Path) -> Result<BTreeSet<u64>> {
    let segments = dir.join("segments");
    let mut ids = BTreeSet::new();
    for entry in fs::read_dir(&segments).map_err(|e| RemoteError::io(&segments, e))? {
        let entry = entry.map_err(|e| RemoteError::io(&segments, e))?;
        ids.extend(entry.file_name().to_str().and_then(segment_id_of));
    }
    Ok(ids)
}

pub(super) fn read_local_state(dir: &Path) -> Result<LocalState> {
    let path = dir.join(LOCAL_STATE_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RemoteError::NotAttached {
                dir: dir.to_path_buf(),
            });
        }
        Err(e) => return Err(RemoteError::io(&path, e)),
    };
    serde_json::from_slice(&bytes).map_err(|e| RemoteError::Corrupt {
        key: path.display().to_string(),
        reason: e.to_string(),
    })
}

pub(super) fn write_local_state(
    dir: &Path,
    volume_id: &str,
    epoch: u64,
    location: &str,
) -> Result<()> {
    let state = LocalState {
        volume_id: volume_id.to_string(),
        epoch,
        location: location.to_string(),
    };
    let path = dir.join(LOCAL_STATE_FILE);
    let bytes = serde_json::to_vec_pretty(&state).expect("state serializes");
    write_atomic(&path, &bytes, 0o600).map_err(|e| RemoteError::io(&path, e))
}
