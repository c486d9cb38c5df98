//! The small JSON files of a volume directory (`volume.json`, snapshot
//! metadata, the pending ACL): replaced atomically and durably.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::VolumeError;
use crate::store;

/// Writes `value` as pretty JSON at `path` atomically and durably: a
/// temporary file `.NAME.tmp` beside it, fsync, rename, directory fsync.
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), VolumeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut text = serde_json::to_string_pretty(value).expect("metadata serializes");
    text.push('\n');
    let mut file = crate::fsmode::create_private_file(&tmp).map_err(|e| io_error(&tmp, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_error(path, e))?;
    store::sync_dir(dir)?;
    Ok(())
}

/// The volume error for an I/O error on `path`.
pub(crate) fn io_error(path: &Path, source: std::io::Error) -> VolumeError {
    VolumeError::Io {
        path: path.to_path_buf(),
        source,
    }
}
