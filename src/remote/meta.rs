//! The volume's metadata files as one object: `volume.json` (geometry, the
//! wrapped keys, the key policy), the pending ACL, and `snapshots/` (each
//! snapshot's metadata with its wrapped blobs, and its frozen index).

use std::collections::BTreeMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::{RemoteError, Result};
use crate::kms::fsutil::{fsync_dir, write_atomic};
use crate::volume::{PENDING_ACL_FILE, SNAPSHOTS_DIR};

const META_FORMAT: &str = "lsvblk-volume-meta";
const ROOT_FILES: [&str; 2] = ["volume.json", PENDING_ACL_FILE];

#[derive(Debug, Serialize, Deserialize)]
struct Bundle {
    format: String,
    /// Relative path -> base64 of the file's bytes.
    files: BTreeMap<String, String>,
}

/// Reads the metadata files of the volume in `dir` into one object.
pub fn collect(dir: &Path) -> Result<Bytes> {
    let mut files = BTreeMap::new();
    let engine = base64::engine::general_purpose::STANDARD;
    for (name, path) in meta_files(dir)? {
        if let Some(bytes) = read_if_there(&path)? {
            files.insert(name, engine.encode(bytes));
        }
    }
    let bundle = Bundle {
        format: META_FORMAT.to_string(),
        files,
    };
    Ok(Bytes::from(
        serde_json::to_vec(&bundle).expect("a bundle serializes"),
    ))
}

/// A number that changes when a metadata file of the volume in `dir`
/// appears, goes or is rewritten (names, sizes and times; nothing read).
pub fn fingerprint(dir: &Path) -> Result<u64> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for (name, path) in meta_files(dir)? {
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        (name, meta.len(), meta.modified().ok()).hash(&mut hasher);
    }
    Ok(hasher.finish())
}

/// True when a snapshot of the volume in `dir` has no frozen index yet
/// (the log writes it out at its next checkpoint).
pub fn snapshot_unindexed(dir: &Path) -> Result<bool> {
    let names: Vec<String> = meta_files(dir)?.into_iter().map(|(name, _)| name).collect();
    Ok(names.iter().any(|name| {
        name.strip_suffix(".json")
            .filter(|stem| stem.starts_with(SNAPSHOTS_DIR))
            .is_some_and(|stem| !names.contains(&format!("{stem}.index")))
    }))
}

/// The metadata files of the volume in `dir`: relative name and path.
fn meta_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut files: Vec<(String, PathBuf)> = ROOT_FILES
        .iter()
        .map(|name| (name.to_string(), dir.join(name)))
        .collect();
    let snapshots = dir.join(SNAPSHOTS_DIR);
    if snapshots.is_dir() {
        for entry in fs::read_dir(&snapshots).map_err(|e| RemoteError::io(&snapshots, e))? {
            let entry = entry.map_err(|e| RemoteError::io(&snapshots, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            // Snapshot metadata and frozen indexes; not the locks, nor the
            // clone registrations (`NAME.clones/`: paths of clones on this
            // host, which another host does not have).
            let kept = name.ends_with(".json") || name.ends_with(".index");
            if !kept || !is_plain_name(&name) || name.contains(".tmp") || !entry.path().is_file() {
                continue;
            }
            files.push((format!("{SNAPSHOTS_DIR}/{name}"), entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// Writes the files of a bundle `collect` made into the empty volume
/// directory `dir`; `key` names the object in errors.
pub fn restore(dir: &Path, key: &str, bytes: &[u8]) -> Result<()> {
    let corrupt = |reason: String| RemoteError::Corrupt {
        key: key.to_string(),
        reason,
    };
    let bundle: Bundle = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if bundle.format != META_FORMAT {
        return Err(corrupt(format!("format {:?}", bundle.format)));
    }
    if !bundle.files.contains_key("volume.json") {
        return Err(corrupt("no volume.json".to_string()));
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let snapshots = dir.join(SNAPSHOTS_DIR);
    for (name, encoded) in &bundle.files {
        let allowed = ROOT_FILES.contains(&name.as_str())
            || name
                .strip_prefix(SNAPSHOTS_DIR)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(is_plain_name);
        if !allowed {
            return Err(corrupt(format!("names a file {name:?} outside the volume")));
        }
        let bytes = engine
            .decode(encoded)
            .map_err(|e| corrupt(format!("{name}: {e}")))?;
        let path = dir.join(name);
        if name.starts_with(SNAPSHOTS_DIR) && !snapshots.is_dir() {
            fs::create_dir(&snapshots).map_err(|e| RemoteError::io(&snapshots, e))?;
            fsync_dir(dir).map_err(|e| RemoteError::io(dir, e))?;
        }
        write_atomic(&path, &bytes, 0o600).map_err(|e| RemoteError::io(&path, e))?;
    }
    Ok(())
}

fn read_if_there(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RemoteError::io(path, e)),
    }
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_round_trip_and_refuse_paths_outside() {
        let from = tempfile::tempdir().unwrap();
        fs::write(from.path().join("volume.json"), b"{}").unwrap();
        fs::create_dir(from.path().join(SNAPSHOTS_DIR)).unwrap();
        fs::write(from.path().join("snapshots/a.json"), b"snap").unwrap();
        fs::write(from.path().join("snapshots/a.lock"), b"").unwrap();
        // A clone registration: local to this host, not metadata.
        fs::create_dir(from.path().join("snapshots/a.clones")).unwrap();
        let bundle = collect(from.path()).unwrap();
        assert!(fingerprint(from.path()).is_ok());
        let to = tempfile::tempdir().unwrap();
        restore(to.path(), "k", &bundle).unwrap();
        assert_eq!(
            fs::read(to.path().join("snapshots/a.json")).unwrap(),
            b"snap"
        );
        assert!(!to.path().join("snapshots/a.lock").exists());
        assert!(!to.path().join("snapshots/a.clones").exists());
        let evil = br#"{"format":"lsvblk-volume-meta","files":{"volume.json":"","../x":""}}"#;
        let error = restore(to.path(), "k", evil).unwrap_err().to_string();
        assert!(error.contains("outside the volume"), "{error}");
    }
}
