//! What can go wrong with a volume kept in an object store.

use std::path::PathBuf;

/// What can go wrong with a volume kept in an object store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The object store refused or failed a call.
    #[error("object store: {0}")]
    Store(#[from] crate::objstore::Error),
    /// A local file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The prefix holds no volume (nothing was created there).
    #[error(
        "no volume in the object store at {location} (create one with `lsvblk create --store`)"
    )]
    NoVolume {
        /// The store and prefix.
        location: String,
    },
    /// The prefix already holds a volume.
    #[error("the object store at {location} already holds volume {volume_id}")]
    VolumeExists {
        /// The store and prefix.
        location: String,
        /// The volume there.
        volume_id: String,
    },
    /// The objects belong to another volume than the local directory.
    #[error("the object store holds volume {found}, not volume {expected}")]
    OtherVolume {
        /// The volume this directory is.
        expected: String,
        /// The volume the store holds.
        found: String,
    },
    /// Another writer holds the volume's lease.
    #[error(
        "the volume is held by another writer (epoch {epoch}: {holder}); stop it, or pass \
         --takeover if its host is gone"
    )]
    Held {
        /// The lease's epoch.
        epoch: u64,
        /// Who holds it (host, pid, directory).
        holder: String,
    },
    /// A newer writer took the volume over: this one must stop writing.
    #[error("fenced: epoch {by} took the volume over from this writer (epoch {epoch})")]
    Fenced {
        /// Our epoch.
        epoch: u64,
        /// The epoch that took over.
        by: u64,
    },
    /// The store refuses the volume's uploads (credentials refused or
    /// revoked, the bucket gone): a wait for the store fails at once rather
    /// than until its deadline.
    #[error(
        "the object store has refused the volume's uploads for {for_s:.0} s ({error}); \
         restore its credentials or bucket: uploads are retried every 10 s"
    )]
    Refused {
        /// The store's last answer.
        error: String,
        /// Seconds since the first refusal.
        for_s: f64,
    },
    /// The bucket was deleted and is back without the volume's objects:
    /// nothing more is uploaded (the store would hold a volume with a hole).
    #[error(
        "the object store lost the volume: its bucket was deleted and is back without the \
         volume's objects (it has no volume-id); nothing more is uploaded and FLUSHes \
         that wait for the store fail. The local directory still holds every write: stop the \
         daemon and serve it without --store (or export it)"
    )]
    StoreLost,
    /// `--store` for a volume that is neither kept in a store nor a clone
    /// of a volume that is.
    #[error(
        "{} is not a clone: --store on a volume without remote.json names the store its \
         clone's parent is kept in",
        dir.display()
    )]
    NotAClone {
        /// The volume directory.
        dir: PathBuf,
    },
    /// The local directory and the store went separate ways.
    #[error(
        "{} last held epoch {local} but the object store is at epoch {store}: another host \
         wrote the volume since; open it on an empty directory",
        dir.display()
    )]
    Diverged {
        /// The volume directory.
        dir: PathBuf,
        /// The epoch the directory last held.
        local: u64,
        /// The newest epoch in the store.
        store: u64,
    },
    /// The directory holds a volume that is not kept in an object store.
    #[error(
        "{} holds a volume that is not kept in an object store (no remote.json); serve it \
         without --store, or give --store an empty directory to rebuild into",
        dir.display()
    )]
    NotAttached {
        /// The volume directory.
        dir: PathBuf,
    },
    /// An object is not what its name promises.
    #[error("object {key} is corrupt: {reason}")]
    Corrupt {
        /// The object.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The store lacks an object a rebuild needs.
    #[error("the object store lacks what a rebuild needs: {reason}")]
    Incomplete {
        /// What is missing.
        reason: String,
    },
    /// The log could not be read (a downloaded checkpoint).
    #[error(transparent)]
    Log(#[from] crate::store::StoreError),
}

impl RemoteError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RemoteError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Results of this module.
pub type Result<T, E = RemoteError> = std::result::Result<T, E>;
