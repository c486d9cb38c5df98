//! An object store in a local directory: object `a/b/c` is the file
//! `ROOT/a/b/c`.
//!
//! Every write goes to a new temporary file beside its target (created with
//! `O_EXCL`, named `.tmp.<random>`: no key segment starts with `.`), is
//! synced, then renamed over the target (`put`) or hard-linked to it
//! (`put_if_absent`: `link` fails if the target exists, atomically, where
//! `rename` would replace it). The directory is synced after each, so a
//! returned write survives a power cut, and a reader sees the old object or
//! the new one, never a part.

use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::error::{Error, Result};
use super::{ByteRange, ObjectInfo, ObjectKey, ObjectStore, PutOutcome};
use crate::fsmode;
use crate::kms::fsutil;

/// Objects are private data: owner read/write only.
const OBJECT_MODE: u32 = 0o600;
const TEMP_PREFIX: &str = ".tmp.";
/// Temporary names tried before giving up.
const TEMP_ATTEMPTS_MAX: u32 = 8;

/// Files under a root directory (see the module doc).
#[derive(Debug)]
pub struct LocalDirStore {
    root: PathBuf,
}

impl LocalDirStore {
    /// The store in `root`, which must be an existing directory.
    pub fn open(root: &Path) -> Result<Self> {
        let meta = fs::metadata(root).map_err(|source| local("open", root, source))?;
        if !meta.is_dir() {
            let source = io::Error::other("not a directory");
            return Err(local("open", root, source));
        }
        Ok(LocalDirStore {
            root: root.to_path_buf(),
        })
    }

    /// The store in `root`, created (with its parents) if missing.
    pub fn create(root: &Path) -> Result<Self> {
        fsmode::create_private_dir_all(root).map_err(|source| local("create", root, source))?;
        Self::open(root)
    }

    fn path_of(&self, key: &ObjectKey) -> PathBuf {
        // Keys are checked: no empty, "." or ".." segment, no leading '/'.
        self.root.join(key.as_str())
    }

    /// Writes `bytes` to a new synced temporary file in `key`'s directory
    /// (created as needed) and returns its path and the target's.
    fn write_temporary(&self, key: &ObjectKey, bytes: &[u8]) -> Result<(PathBuf, PathBuf)> {
        let target = self.path_of(key);
        let dir = target
            .parent()
            .expect("an object path has a parent: the root");
        self.create_dirs(dir)?;
        let mut attempts = 0;
        loop {
            let temp = dir.join(format!("{TEMP_PREFIX}{:016x}", random_u64()));
            match fsutil::write_new(&temp, bytes, OBJECT_MODE) {
                Ok(()) => return Ok((temp, target)),
                // A name taken (64 random bits: a leftover of a crash, at most).
                Err(error)
                    if error.kind() == ErrorKind::AlreadyExists && attempts < TEMP_ATTEMPTS_MAX =>
                {
                    attempts += 1;
                }
                Err(source) => {
                    if source.kind() != ErrorKind::AlreadyExists {
                        let _ = fs::remove_file(&temp);
                    }
                    return Err(local("write", &temp, source));
                }
            }
        }
    }

    /// Creates `dir` and any missing parents below the root, syncing each
    /// new directory's parent so the new entry is durable.
    fn create_dirs(&self, dir: &Path) -> Result<()> {
        if dir == self.root || dir.is_dir() {
            return Ok(());
        }
        let parent = dir.parent().expect("below the root");
        self.create_dirs(parent)?;
        match fsmode::create_private_dir(dir) {
            Ok(()) => sync_dir(parent),
            Err(error) if error.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(source) => Err(local("create directory", dir, source)),
        }
    }

    fn read_file(&self, key: &ObjectKey) -> Result<Vec<u8>> {
        let path = self.path_of(key);
        fs::read(&path).map_err(|source| not_found_or(key, "read", &path, source))
    }

    fn collect(&self, dir: &Path, found: &mut Vec<ObjectInfo>) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(local("list", dir, source)),
        };
        for entry in entries {
            let entry = entry.map_err(|source| local("list", dir, source))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue; // our temporary files
            }
            let meta = entry
                .metadata()
                .map_err(|source| local("list", &path, source))?;
            if meta.is_dir() {
                self.collect(&path, found)?;
            } else if meta.is_file() {
                let Some(key) = self.key_of(&path) else {
                    continue; // a file no key names: not ours
                };
                found.push(ObjectInfo {
                    key,
                    size: meta.len(),
                });
            }
        }
        Ok(())
    }

    fn key_of(&self, path: &Path) -> Option<ObjectKey> {
        let relative = path.strip_prefix(&self.root).ok()?.to_str()?;
        ObjectKey::new(relative).ok()
    }

    /// Removes the now empty directories between `dir` and the root.
    fn prune_empty_dirs(&self, mut dir: &Path) {
        while dir != self.root && fs::remove_dir(dir).is_ok() {
            match dir.parent() {
                Some(parent) => dir = parent,
                None => return,
            }
        }
    }
}

impl ObjectStore for LocalDirStore {
    fn put(&self, key: &ObjectKey, bytes: Bytes) -> Result<()> {
        let (temp, target) = self.write_temporary(key, &bytes)?;
        if let Err(source) = fs::rename(&temp, &target) {
            let _ = fs::remove_file(&temp);
            return Err(local("rename", &target, source));
        }
        sync_dir(target.parent().expect("has a parent"))
    }

    fn put_if_absent(&self, key: &ObjectKey, bytes: Bytes) -> Result<PutOutcome> {
        let (temp, target) = self.write_temporary(key, &bytes)?;
        let linked = fs::hard_link(&temp, &target);
        let _ = fs::remove_file(&temp);
        match linked {
            Ok(()) => {
                sync_dir(target.parent().expect("has a parent"))?;
                Ok(PutOutcome::Created)
            }
            Err(error) if error.kind() == ErrorKind::AlreadyExists => {
                // Our own earlier write (see the trait's contract), or another's.
                match self.read_file(key)? == bytes {
                    true => Ok(PutOutcome::Created),
                    false => Ok(PutOutcome::AlreadyExists),
                }
            }
            Err(source) => Err(local("link", &target, source)),
        }
    }

    fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        self.read_file(key).map(Bytes::from)
    }

    fn get_range(&self, key: &ObjectKey, range: ByteRange) -> Result<Bytes> {
        range.check()?;
        let path = self.path_of(key);
        let file = File::open(&path).map_err(|source| not_found_or(key, "open", &path, source))?;
        let size = file
            .metadata()
            .map_err(|source| local("stat", &path, source))?
            .len();
        let Some(span) = range.resolve(size) else {
            return Err(Error::InvalidRange {
                key: key.to_string(),
                range,
            });
        };
        let length = usize::try_from(span.end - span.start).map_err(|_| Error::Permanent {
            op: "GET",
            key: key.to_string(),
            detail: format!("range {range} does not fit in memory"),
        })?;
        let mut bytes = vec![0u8; length];
        file.read_exact_at(&mut bytes, span.start)
            .map_err(|source| local("read", &path, source))?;
        Ok(Bytes::from(bytes))
    }

    fn head(&self, key: &ObjectKey) -> Result<ObjectInfo> {
        let path = self.path_of(key);
        let meta =
            fs::metadata(&path).map_err(|source| not_found_or(key, "stat", &path, source))?;
        if !meta.is_file() {
            return Err(Error::NotFound {
                key: key.to_string(),
            });
        }
        Ok(ObjectInfo {
            key: key.clone(),
            size: meta.len(),
        })
    }

    fn list(&self, prefix: &ObjectKey) -> Result<Vec<ObjectInfo>> {
        let mut found = Vec::new();
        self.collect(&self.path_of(prefix), &mut found)?;
        // S3 lists in byte order of the whole key; a directory walk does not.
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    fn list_after(&self, prefix: &ObjectKey, after: &ObjectKey) -> Result<Vec<ObjectInfo>> {
        let mut found = self.list(prefix)?;
        found.retain(|object| object.key > *after);
        Ok(found)
    }

    fn delete(&self, keys: &[ObjectKey]) -> Result<()> {
        for key in keys {
            let path = self.path_of(key);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::NotFound => continue,
                Err(source) => return Err(local("delete", &path, source)),
            }
            let dir = path.parent().expect("has a parent");
            sync_dir(dir)?;
            self.prune_empty_dirs(dir);
        }
        Ok(())
    }
}

fn local(op: &'static str, path: &Path, source: io::Error) -> Error {
    Error::Local {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn not_found_or(key: &ObjectKey, op: &'static str, path: &Path, source: io::Error) -> Error {
    // ENOTDIR: a segment of the key is a file, so the object cannot exist.
    match source.kind() {
        ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::IsADirectory => {
            Error::NotFound {
                key: key.to_string(),
            }
        }
        _ => local(op, path, source),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    fsutil::fsync_dir(dir).map_err(|source| local("sync directory", dir, source))
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // The OS random source does not fail on Linux once booted; a fixed value
    // would only cost a retry of the O_EXCL create.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objstore::contract;
    use std::os::unix::fs::PermissionsExt;

    fn base() -> ObjectKey {
        ObjectKey::new("vol").unwrap()
    }

    #[test]
    fn keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        contract::check_store(&store, &base());
        contract::check_create_race(&store, &base(), 8);
        let left: Vec<_> = walk(dir.path());
        assert!(
            left.iter().all(|path| path.is_dir()),
            "no file left: {left:?}"
        );
    }

    #[test]
    fn objects_are_private_files_and_temporaries_are_not_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        let key = base().join("seg/1").unwrap();
        store.put(&key, contract::pattern(100, 1)).unwrap();
        let path = dir.path().join("vol/seg/1");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // What a crash between create and rename leaves: invisible to reads.
        fs::write(dir.path().join("vol/seg/.tmp.0123456789abcdef"), b"torn").unwrap();
        fs::write(dir.path().join("vol/not a key"), b"foreign").unwrap();
        let listed = store.list(&base()).unwrap();
        assert_eq!(listed, vec![ObjectInfo { key, size: 100 }]);
    }

    #[test]
    fn a_key_through_a_file_is_not_found_and_a_missing_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        store.put(&base(), contract::pattern(1, 0)).unwrap();
        let below = base().join("x").unwrap();
        assert!(matches!(store.get(&below), Err(Error::NotFound { .. })));
        assert!(matches!(store.head(&below), Err(Error::NotFound { .. })));
        assert!(matches!(
            store.put(&below, Bytes::new()),
            Err(Error::Local { .. })
        ));
        let missing = dir.path().join("missing");
        assert!(matches!(
            LocalDirStore::open(&missing),
            Err(Error::Local { .. })
        ));
        assert!(LocalDirStore::create(&missing).is_ok());
    }

    #[test]
    fn deleting_the_last_object_of_a_directory_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        let key = base().join("a/b/c").unwrap();
        store.put(&key, Bytes::from_static(b"x")).unwrap();
        store.delete(&[key]).unwrap();
        assert!(!dir.path().join("vol").exists());
        assert!(dir.path().exists(), "never the root");
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                found.extend(walk(&path));
            }
            found.push(path);
        }
        found
    }
}
