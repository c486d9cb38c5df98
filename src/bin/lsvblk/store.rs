//! `--store` and friends: a volume kept in an object store (S3-compatible,
//! or a directory).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lsvblk::objstore::{
    Credentials, Error as StoreError, LocalDirStore, ObjectStore, S3Config, S3Store,
};
use lsvblk::remote::{RemoteError, RemoteStore};

use crate::exit::{BUSY, DATA, DENIED, Failure, IO, KMS_UNAVAILABLE, USAGE};

/// Where a volume is kept besides its directory.
#[derive(clap::Args, Clone, Debug)]
pub struct StoreArgs {
    /// Keep the volume in an object store as well: s3://BUCKET/PREFIX, an
    /// S3-compatible store (the bucket must exist; one volume per prefix;
    /// needs --endpoint; credentials: AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY from the environment, or --credentials-file),
    /// or file:///DIR, the same objects as files under a directory (another
    /// disk, a network mount; created if missing). Serving a clone of such a
    /// volume's snapshot: the parent's store, which the clone's reads of
    /// blocks the parent evicted from its cache are fetched from.
    #[arg(long, value_name = "s3://BUCKET/PREFIX|file:///DIR")]
    pub store: Option<String>,
    /// The S3 endpoint's URL, e.g. http://127.0.0.1:7480.
    #[arg(long, value_name = "URL", requires = "store")]
    pub endpoint: Option<String>,
    /// A file of NAME=VALUE lines with AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY; must be ours and not readable by others.
    #[arg(long, requires = "store")]
    pub credentials_file: Option<PathBuf>,
    /// Uploads and downloads in flight at once.
    #[arg(long, default_value_t = 4, requires = "store")]
    pub store_threads: usize,
}

impl StoreArgs {
    /// The store, if `--store` was given.
    pub fn open(&self) -> Result<Option<RemoteStore>, Failure> {
        let Some(url) = &self.store else {
            return Ok(None);
        };
        let store: Arc<dyn ObjectStore> = match url.strip_prefix("file://") {
            Some(root) => Arc::new(LocalDirStore::create(Path::new(root)).map_err(store_failure)?),
            None => Arc::new(self.open_s3(url)?),
        };
        Ok(Some(RemoteStore {
            store,
            location: url.clone(),
            threads: self.store_threads.max(1),
        }))
    }

    /// The S3 store at `url`, probed.
    fn open_s3(&self, url: &str) -> Result<S3Store, Failure> {
        let Some(endpoint) = &self.endpoint else {
            return Err(Failure::Usage(anyhow::anyhow!(
                "--store {url} needs --endpoint URL (or use file:///DIR)"
            )));
        };
        let credentials = match &self.credentials_file {
            Some(path) => Credentials::from_file(path),
            None => Credentials::from_env(),
        }
        .map_err(store_failure)?;
        let mut config = S3Config::from_url(url, endpoint).map_err(store_failure)?;
        if let Ok(region) = std::env::var("AWS_REGION") {
            config.region = region;
        }
        let store = S3Store::new(config, &credentials).map_err(store_failure)?;
        // Wrong credentials or a missing bucket: say so now, not mid-serve.
        store.probe().map_err(store_failure)?;
        Ok(store)
    }
}

/// A failure of the object store.
fn store_failure(error: StoreError) -> Failure {
    Failure::Remote(RemoteError::Store(error))
}

/// A failure of a volume kept in an object store.
pub fn remote_failure(error: RemoteError) -> Failure {
    Failure::Remote(error)
}

/// The exit code of a failure of a volume kept in an object store: refused
/// credentials 77, an unreachable store 69, another writer 75, a wrong
/// bucket, prefix or directory 64, a damaged or foreign object 65.
pub fn remote_exit_code(error: &RemoteError) -> i32 {
    match error {
        RemoteError::Store(error) => match error {
            StoreError::CredentialsRefused { .. } => DENIED,
            StoreError::BucketMissing { .. }
            | StoreError::Credentials { .. }
            | StoreError::Config { .. }
            | StoreError::InvalidKey { .. } => USAGE,
            StoreError::Transient { .. } => KMS_UNAVAILABLE,
            _ => IO,
        },
        RemoteError::Held { .. } | RemoteError::Fenced { .. } => BUSY,
        RemoteError::NoVolume { .. }
        | RemoteError::VolumeExists { .. }
        | RemoteError::Diverged { .. }
        | RemoteError::NotAttached { .. } => USAGE,
        RemoteError::Corrupt { .. }
        | RemoteError::OtherVolume { .. }
        | RemoteError::Incomplete { .. }
        | RemoteError::Log(_) => DATA,
        _ => IO,
    }
}
