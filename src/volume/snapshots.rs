//! Snapshots of a volume: their metadata blocks, index files, locks and
//! clone registrations, all under `snapshots/` in the volume directory:
//!
//! ```text
//! snapshots/<name>.json     metadata block (SnapshotMeta): point in the log,
//!                           wrapped key set, ACL
//! snapshots/<name>.index    the frozen extent index (checkpoint format)
//! snapshots/<name>.lock     flock(2)ed shared by every process reading it
//! snapshots/<name>.clones/  one file per clone made from it (its path)
//! ```
//!
//! A snapshot exists once its `.json` is durable; the index is written
//! within moments (or rebuilt by recovery). Deleting removes the `.json`
//! first, so a crash halfway leaves only files the next open cleans up.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::clock::unix_now_s;
use super::json_file::{io_error, write_json_atomic};
use super::superblock::{ParentRef, new_volume_id};
use super::{Integrity, KeyEntry, Keyring, Superblock, Volume, VolumeError, VolumeLock};
use crate::crypto::KeyId;
use crate::fsmode;
use crate::store::{self, SnapshotPoint};
use crate::sync::LockOrRecover;

/// Directory of snapshot files inside a volume directory.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// File with an ACL change waiting for the next snapshot (see [`PendingAcl`]).
pub const PENDING_ACL_FILE: &str = "acl-pending.json";
/// The `format` field of every snapshot metadata block.
pub const SNAPSHOT_FORMAT: &str = "lsvblk-snapshot";
/// Longest snapshot name, bytes.
pub const SNAPSHOT_NAME_BYTES_MAX: usize = 64;
/// Longest chain of clones of clones a volume may sit on.
const PARENT_DEPTH_MAX: usize = 32;

/// A snapshot's metadata block. Never holds key material.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Always `"lsvblk-snapshot"`.
    pub format: String,
    /// Its name, unique in the volume.
    pub name: String,
    /// Random id, 32 hex digits (names can be reused after a delete).
    pub snapshot_id: String,
    /// The volume it was taken of.
    pub volume_id: String,
    /// When it was taken, seconds since the Unix epoch.
    pub created_unix_s: u64,
    /// The volume's size then, bytes.
    pub size_bytes: u64,
    /// Where the log stood: exactly the records before it are in it.
    pub point: SnapshotPoint,
    /// The key the volume wrote with then.
    pub current_key_id: KeyId,
    /// Every key its blocks may be under, with wrapped blobs (copied from
    /// the volume, or the new blob of an ACL change).
    pub keys: Vec<KeyEntry>,
    /// Users allowed to unwrap its keys (copy of the sealed ACL).
    pub acl: Vec<String>,
}

/// An ACL change waiting for the next snapshot: the volume's current key,
/// sealed again by lsvkms with the new ACL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAcl {
    /// The key the blob holds (must be the volume's current key).
    pub key_id: KeyId,
    /// The new ACL.
    pub acl: Vec<String>,
    /// The new wrapped blob (base64).
    pub wrapped_blob: String,
    /// When it was set, seconds since the Unix epoch.
    pub created_unix_s: u64,
}

/// The files of one snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotPaths {
    /// Metadata block.
    pub meta: PathBuf,
    /// Frozen index.
    pub index: PathBuf,
    /// Reader lock.
    pub lock: PathBuf,
    /// Clone registrations.
    pub clones: PathBuf,
}

impl SnapshotPaths {
    /// The paths of snapshot `name` of the volume in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let base = dir.join(SNAPSHOTS_DIR);
        Self {
            meta: base.join(format!("{name}.json")),
            index: base.join(format!("{name}.index")),
            lock: base.join(format!("{name}.lock")),
            clones: base.join(format!("{name}.clones")),
        }
    }
}

/// Checks a snapshot name: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting
/// with a dot.
pub fn validate_snapshot_name(name: &str) -> Result<(), VolumeError> {
    let ok = !name.is_empty()
        && name.len() <= SNAPSHOT_NAME_BYTES_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(VolumeError::BadOption(format!(
            "snapshot name {name:?}: use 1 to {SNAPSHOT_NAME_BYTES_MAX} of A-Z a-z 0-9 . _ - (not starting with a dot)"
        )))
    }
}

/// The snapshots of the volume in `dir`, oldest first.
pub fn list_snapshots(dir: &Path) -> Result<Vec<SnapshotMeta>, VolumeError> {
    let base = dir.join(SNAPSHOTS_DIR);
    let entries = match fs::read_dir(&base) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(&base, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(&base, e))?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        if validate_snapshot_name(name).is_ok() {
            found.push(load_snapshot(dir, name)?);
        }
    }
    found.sort_by(|a, b| (a.point.seq_next, &a.name).cmp(&(b.point.seq_next, &b.name)));
    Ok(found)
}

/// The metadata of snapshot `name` of the volume in `dir`.
pub fn load_snapshot(dir: &Path, name: &str) -> Result<SnapshotMeta, VolumeError> {
    validate_snapshot_name(name)?;
    let path = SnapshotPaths::new(dir, name).meta;
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(VolumeError::NoSuchSnapshot {
                name: name.to_string(),
            });
        }
        Err(e) => return Err(io_error(&path, e)),
    };
    let meta: SnapshotMeta = serde_json::from_str(&text).map_err(|e| VolumeError::NotAVolume {
        path: path.clone(),
        reason: format!("snapshot metadata does not parse: {e}"),
    })?;
    if meta.format != SNAPSHOT_FORMAT || meta.name != name {
        return Err(VolumeError::NotAVolume {
            path,
            reason: "not the metadata block of this snapshot".to_string(),
        });
    }
    Ok(meta)
}

/// Rewrites the metadata block of an existing snapshot (new wrapped blobs).
pub(crate) fn store_snapshot_meta(dir: &Path, meta: &SnapshotMeta) -> Result<(), VolumeError> {
    write_json_atomic(&SnapshotPaths::new(dir, &meta.name).meta, meta)
}

/// Records an ACL change for the volume in `dir`; the next snapshot takes it.
pub fn set_pending_acl(dir: &Path, pending: &PendingAcl) -> Result<(), VolumeError> {
    write_json_atomic(&dir.join(PENDING_ACL_FILE), pending)
}

/// The ACL change waiting for the next snapshot, if any.
pub fn pending_acl(dir: &Path) -> Result<Option<PendingAcl>, VolumeError> {
    let path = dir.join(PENDING_ACL_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| VolumeError::NotAVolume {
                path,
                reason: format!("pending ACL does not parse: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(&path, e)),
    }
}

/// Every key id any snapshot of the volume in `dir` lists.
pub(crate) fn snapshot_key_ids(dir: &Path) -> Result<BTreeSet<KeyId>, VolumeError> {
    Ok(list_snapshots(dir)?
        .iter()
        .flat_map(|m| m.keys.iter().map(|k| k.key_id))
        .collect())
}

/// Snapshots whose metadata is there but whose index is not (taken just
/// before a crash): recovery rebuilds them.
pub(crate) fn unmaterialized(dir: &Path) -> Result<Vec<(PathBuf, SnapshotPoint)>, VolumeError> {
    Ok(list_snapshots(dir)?
        .into_iter()
        .map(|meta| (SnapshotPaths::new(dir, &meta.name).index, meta.point))
        .filter(|(index, _)| !index.exists())
        .collect())
}

/// Removes the files a crash during a delete left behind: index, lock and
/// clone registrations of snapshots whose metadata is gone.
pub(crate) fn remove_orphans(dir: &Path) -> Result<(), VolumeError> {
    let base = dir.join(SNAPSHOTS_DIR);
    let Ok(entries) = fs::read_dir(&base) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_error(&base, e))?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let Some((name, _)) = [".index", ".lock", ".clones"]
            .iter()
            .find_map(|suffix| file_name.strip_suffix(suffix).map(|n| (n, suffix)))
        else {
            continue;
        };
        if validate_snapshot_name(name).is_ok() && !SnapshotPaths::new(dir, name).meta.exists() {
            let path = entry.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| io_error(&path, e))?;
        }
    }
    Ok(())
}

/// Waits (up to a few seconds) for the index file of a snapshot the daemon
/// serving the volume has just taken.
pub(crate) fn wait_for_index(paths: &SnapshotPaths, name: &str) -> Result<(), VolumeError> {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !paths.index.exists() {
        if Instant::now() > deadline {
            return Err(VolumeError::SnapshotNotReady {
                name: name.to_string(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// Clones registered on a snapshot that still exist (their directories hold
/// a volume whose parent is this snapshot).
pub fn live_clones(paths: &SnapshotPaths, snapshot_id: &str) -> Result<Vec<PathBuf>, VolumeError> {
    let entries = match fs::read_dir(&paths.clones) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(&paths.clones, e)),
    };
    let mut clones = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(&paths.clones, e))?;
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let clone_dir = PathBuf::from(text.trim());
        let still_ours = Superblock::load(&clone_dir)
            .ok()
            .and_then(|sb| sb.parent)
            .is_some_and(|p| p.snapshot_id == snapshot_id);
        if still_ours {
            clones.push(clone_dir);
        }
    }
    Ok(clones)
}

/// Registers `clone_dir` (volume `clone_volume_id`) as a clone of a snapshot.
pub(crate) fn register_clone(
    paths: &SnapshotPaths,
    clone_volume_id: &str,
    clone_dir: &Path,
) -> Result<(), VolumeError> {
    fsmode::create_private_dir_all(&paths.clones).map_err(|e| io_error(&paths.clones, e))?;
    let path = paths.clones.join(clone_volume_id);
    fsmode::create_private_file(&path)
        .and_then(|mut file| file.write_all(clone_dir.to_string_lossy().as_bytes()))
        .map_err(|e| io_error(&path, e))?;
    store::sync_dir(&paths.clones)?;
    Ok(())
}

impl Volume {
    /// Takes snapshot `name`: O(1) on disk, no data copied; safe while the
    /// volume is read and written. It copies the volume's wrapped key set;
    /// a pending ACL change ([`set_pending_acl`]) takes effect here: the
    /// snapshot, and the volume from now on, carry its new blob. The index
    /// file follows by [`Volume::materialize_snapshots`] (or the next
    /// checkpoint; recovery rebuilds it after a crash).
    pub fn create_snapshot(&self, name: &str) -> Result<SnapshotMeta, VolumeError> {
        self.check_writable()?;
        validate_snapshot_name(name)?;
        let paths = SnapshotPaths::new(&self.dir, name);
        if paths.meta.exists() {
            return Err(VolumeError::SnapshotExists {
                name: name.to_string(),
            });
        }
        let base = self.dir.join(SNAPSHOTS_DIR);
        fsmode::create_private_dir_all(&base).map_err(|e| io_error(&base, e))?;
        // The key set and the log point must agree: no rotation may switch
        // keys between reading the one and taking the other.
        let _keys_stable = self.lifecycle_lock();
        let mut superblock = Superblock::load(&self.dir)?;
        let pending = pending_acl(&self.dir)?.filter(|p| p.key_id == superblock.current_key_id);
        // The snapshot carries the pending ACL's blob in its key set.
        if let Some(pending) = &pending {
            for entry in &mut superblock.keys {
                if entry.key_id == pending.key_id {
                    entry.wrapped_blob = Some(pending.wrapped_blob.clone());
                    entry.acl = pending.acl.clone();
                }
            }
        }
        let acl = superblock
            .keys
            .iter()
            .find(|k| k.key_id == superblock.current_key_id)
            .map(|k| k.acl.clone())
            .unwrap_or_default();
        let point = self.log.take_snapshot(name, paths.index.clone())?;
        let meta = SnapshotMeta {
            format: SNAPSHOT_FORMAT.to_string(),
            name: name.to_string(),
            snapshot_id: hex::encode(new_volume_id()?),
            volume_id: superblock.volume_id.clone(),
            created_unix_s: unix_now_s(),
            size_bytes: superblock.size_bytes,
            point,
            current_key_id: superblock.current_key_id,
            keys: superblock.keys.clone(),
            acl,
        };
        if let Err(error) = write_json_atomic(&paths.meta, &meta) {
            self.log.abandon_snapshot(name, &paths.index);
            return Err(error);
        }
        if let Some(pending) = pending {
            // The snapshot holds the new blob; the volume adopts it too, but
            // after the snapshot exists (see `materialize_snapshots`): until
            // then the pending file stays, and adopting it again is harmless.
            *self.adopt_acl.lock_or_recover() = Some(pending);
        }
        Ok(meta)
    }

    /// Finishes the snapshots taken since the last call: writes their index
    /// files, and makes the volume adopt an ACL change the last one carried.
    pub fn materialize_snapshots(&self) -> Result<(), VolumeError> {
        self.log.materialize_snapshots()?;
        let pending = self.adopt_acl.lock_or_recover().take();
        if let Some(pending) = pending {
            // Load-modify-store of volume.json: never beside a rotation's.
            let _one = self.lifecycle_lock();
            let mut superblock = Superblock::load(&self.dir)?;
            for entry in &mut superblock.keys {
                if entry.key_id == pending.key_id {
                    entry.wrapped_blob = Some(pending.wrapped_blob.clone());
                    entry.acl = pending.acl.clone();
                }
            }
            superblock.store(&self.dir)?;
            // Only if no newer change was set meanwhile.
            if pending_acl(&self.dir)?.as_ref() == Some(&pending) {
                let path = self.dir.join(PENDING_ACL_FILE);
                fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
            }
        }
        Ok(())
    }

    /// The volume's snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotMeta>, VolumeError> {
        list_snapshots(&self.dir)
    }

    /// Deletes snapshot `name`. Refused while a process reads it (a daemon
    /// serving it, a clone on it) or a clone of it exists. Its blocks no
    /// other snapshot or the volume uses become garbage for compaction.
    /// Returns the keys nothing needs any more (the volume rotated away from
    /// them, no other snapshot lists them): the key service may destroy them.
    pub fn delete_snapshot(&self, name: &str) -> Result<Vec<KeyId>, VolumeError> {
        self.check_writable()?;
        let meta = load_snapshot(&self.dir, name)?;
        let paths = SnapshotPaths::new(&self.dir, name);
        let _exclusive = VolumeLock::acquire_file(&paths.lock, false).map_err(|e| match e {
            VolumeError::Busy { .. } => VolumeError::SnapshotInUse {
                name: name.to_string(),
                by: "a process serving it or a clone made from it".to_string(),
            },
            other => other,
        })?;
        let clones = live_clones(&paths, &meta.snapshot_id)?;
        if !clones.is_empty() {
            return Err(VolumeError::SnapshotInUse {
                name: name.to_string(),
                by: format!(
                    "clones {}",
                    clones
                        .iter()
                        .map(|c| c.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        // Make sure its index is not still queued, then forget it.
        self.log.materialize_snapshots()?;
        fs::remove_file(&paths.meta).map_err(|e| io_error(&paths.meta, e))?;
        store::sync_dir(&self.dir.join(SNAPSHOTS_DIR))?;
        self.log.unpin(name);
        remove_orphans(&self.dir)?;
        let volume_keys: Vec<KeyId> = Superblock::load(&self.dir)?
            .keys
            .iter()
            .map(|k| k.key_id)
            .collect();
        let others = snapshot_key_ids(&self.dir)?;
        Ok(meta
            .keys
            .iter()
            .map(|k| k.key_id)
            .filter(|id| !volume_keys.contains(id) && !others.contains(id))
            .collect())
    }

    /// Pins the segments of every snapshot of the volume (at open).
    pub(crate) fn pin_snapshots(&self) -> Result<(), VolumeError> {
        let volume_id = self.superblock.volume_id_bytes()?;
        for meta in list_snapshots(&self.dir)? {
            let index = SnapshotPaths::new(&self.dir, &meta.name).index;
            if self.read_only && !index.exists() {
                // Not rebuilt by a read-only open; nothing is compacted either.
                continue;
            }
            let data = store::read_checkpoint(&index, &volume_id)?;
            self.log.pin(&meta.name, store::referenced_segments(&data));
        }
        Ok(())
    }
}

/// The snapshots a volume reads through, nearest first: for a clone, its
/// parent snapshot, that volume's parent, and so on. Each is opened as a
/// read-only view, under a shared lock that keeps it from being deleted.
pub(crate) fn open_parent_views(
    superblock: &Superblock,
    keyring: &Keyring,
) -> Result<Vec<(store::Log, VolumeLock)>, VolumeError> {
    let mut views = Vec::new();
    let mut next: Option<ParentRef> = superblock.parent.clone();
    while let Some(parent) = next {
        if views.len() >= PARENT_DEPTH_MAX {
            return Err(VolumeError::BadOption(format!(
                "clone chain deeper than {PARENT_DEPTH_MAX}"
            )));
        }
        let parent_superblock = Superblock::load(&parent.volume_dir)?;
        let meta = load_snapshot(&parent.volume_dir, &parent.snapshot)?;
        if parent_superblock.volume_id != parent.volume_id || meta.snapshot_id != parent.snapshot_id
        {
            return Err(VolumeError::NoSuchSnapshot {
                name: format!(
                    "{} of {} (the clone's parent was replaced)",
                    parent.snapshot,
                    parent.volume_dir.display()
                ),
            });
        }
        let (log, lock) =
            open_snapshot_view(&parent.volume_dir, &parent_superblock, &meta.name, keyring)?;
        views.push((log, lock));
        next = parent_superblock.parent.clone();
    }
    Ok(views)
}

/// Opens snapshot `name` of the volume in `dir` as a read-only log, holding
/// its shared reader lock; its index's MAC is checked with those of the
/// snapshot's keys `keyring` holds (none: a keyless open, nothing checked).
pub(crate) fn open_snapshot_view(
    dir: &Path,
    superblock: &Superblock,
    name: &str,
    keyring: &Keyring,
) -> Result<(store::Log, VolumeLock), VolumeError> {
    let paths = SnapshotPaths::new(dir, name);
    let lock = VolumeLock::acquire_file(&paths.lock, true)?;
    // Deleted between listing and locking?
    let meta = load_snapshot(dir, name)?;
    let macs = match superblock.integrity {
        Integrity::Mac => keyring.log_keys_for(meta.keys.iter().map(|k| k.key_id)),
        Integrity::Crc => None,
    };
    wait_for_index(&paths, name)?;
    let config = store::LogConfig {
        volume_id: superblock.volume_id_bytes()?,
        block_shift: superblock.block_shift(),
        capacity_blocks: superblock.size_bytes / u64::from(superblock.block_bytes),
        segment_bytes: superblock.segment_bytes,
        heads: 1,
        read_only: true,
        io: store::IoMode::Buffered,
        meta_cache_bytes: store::META_CACHE_BYTES_DEFAULT,
        macs,
    };
    let log = store::open_view(dir, &paths.index, config)?;
    Ok((log, lock))
}
