//! `--store` and friends: a volume kept in an S3-compatible object store.

use std::path::PathBuf;
use std::sync::Arc;

use lsvblk::objstore::{Credentials, Error as StoreError, S3Config, S3Store};
use lsvblk::remote::{RemoteError, RemoteStore};

use crate::exit::{BUSY, DATA, DENIED, Failure, IO, KMS_UNAVAILABLE, USAGE};

/// Where a volume is kept besides its directory.
#[derive(clap::Args, Clone, Debug)]
pub struct StoreArgs {
    /// Keep the volume in an S3-compatible object store as well:
    /// s3://BUCKET/PREFIX (the bucket must exist; one volume per prefix).
    /// Credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the
    /// environment, or --credentials-file.
    #[arg(long, value_name = "s3://BUCKET/PREFIX", requires = "endpoint")]
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
        let (Some(url), Some(endpoint)) = (&self.store, &self.endpoint) else {
            return Ok(None);
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
        Ok(Some(RemoteStore {
            store: Arc::new(store),
            location: url.clone(),
            threads: self.store_threads.max(1),
        }))
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
