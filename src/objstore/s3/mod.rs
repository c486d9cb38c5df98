//! An object store in an S3 bucket, through the `object_store` crate.
//!
//! `object_store` is async; this store owns a small tokio runtime
//! ([`S3Config::runtime_threads`] worker threads, 2 by default, plus at most
//! [`BLOCKING_THREADS_MAX`] for blocking helpers) and each call blocks its
//! caller's thread on it. Many threads may call at once: each request's
//! future runs on its caller's thread; the runtime's threads drive the
//! sockets and timers. Do not call from inside an async runtime.
//!
//! Retries are `object_store`'s: connection failures, timeouts of
//! idempotent requests, 5xx and 429 answers are retried with exponential
//! backoff and jitter until [`S3Config::retry_deadline`].

mod config;
mod errors;

pub use config::S3Config;

use std::future::Future;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectMeta, ObjectStore as _,
    ObjectStoreExt as _, PutMode, PutPayload, RetryConfig, WriteMultipart,
};

use super::credentials::Credentials;
use super::error::{Error, Result};
use super::{ByteRange, ObjectInfo, ObjectKey, ObjectStore, PutOutcome};

/// Threads the runtime may add for blocking helpers (e.g. resolving a host
/// name); object I/O never uses them.
pub const BLOCKING_THREADS_MAX: usize = 2;

/// A bucket (and optional key prefix) on an S3-compatible endpoint. `Debug`
/// shows where, never the credentials.
pub struct S3Store {
    config: S3Config,
    client: AmazonS3,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("endpoint", &self.config.endpoint)
            .field("bucket", &self.config.bucket)
            .field(
                "prefix",
                &self.config.prefix.as_ref().map(ObjectKey::as_str),
            )
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// A store with `config`, signing with `credentials`. Makes no request:
    /// a wrong endpoint, bucket or credentials show at the first call (as
    /// [`Error::Transient`], [`Error::BucketMissing`] or
    /// [`Error::CredentialsRefused`]); [`S3Store::probe`] asks at once.
    pub fn new(config: S3Config, credentials: &Credentials) -> Result<Self> {
        config.check()?;
        // HTTPS endpoints use rustls with ring (as our other TLS does). A
        // provider installed before us stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: config.retry_backoff_first,
                max_backoff: config.retry_backoff_max,
                base: 2.0,
            },
            // The deadline bounds the retries, not a count.
            max_retries: usize::MAX,
            retry_timeout: config.retry_deadline,
        };
        let options = ClientOptions::new()
            .with_allow_http(config.endpoint.starts_with("http://"))
            .with_timeout(config.request_timeout)
            .with_connect_timeout(config.connect_timeout);
        let mut builder = AmazonS3Builder::new()
            .with_endpoint(&config.endpoint)
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(credentials.access_key_id())
            .with_secret_access_key(credentials.secret_access_key())
            .with_virtual_hosted_style_request(false)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_unsigned_payload(!config.sign_payload)
            .with_retry(retry)
            .with_client_options(options);
        if let Some(token) = credentials.session_token() {
            builder = builder.with_token(token);
        }
        let client = builder.build().map_err(|error| Error::Config {
            reason: error.to_string(),
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.runtime_threads)
            .max_blocking_threads(BLOCKING_THREADS_MAX)
            .thread_name("lsvblk-s3")
            .enable_all()
            .build()
            .map_err(|error| Error::Config {
                reason: format!("cannot start the S3 client's threads: {error}"),
            })?;
        Ok(S3Store {
            config,
            client,
            runtime,
        })
    }

    /// Asks the store once (a listing under the prefix) whether the bucket
    /// exists and our credentials are accepted.
    pub fn probe(&self) -> Result<()> {
        let prefix = self.prefix_path(None)?;
        let first = async {
            let mut listing = self.client.list(prefix.as_ref());
            listing.try_next().await.map(drop)
        };
        self.run("LIST", "", first)
    }

    /// The settings this store runs with.
    pub fn config(&self) -> &S3Config {
        &self.config
    }

    fn full_key(&self, key: &ObjectKey) -> String {
        match &self.config.prefix {
            Some(prefix) => format!("{prefix}/{key}"),
            None => key.to_string(),
        }
    }

    fn path_of(&self, key: &ObjectKey) -> Result<Path> {
        let full = self.full_key(key);
        Path::parse(&full).map_err(|_| Error::InvalidKey {
            key: full,
            reason: "refused by the S3 client",
        })
    }

    /// `PREFIX/key` as a listing prefix, or the store's own prefix alone.
    fn prefix_path(&self, key: Option<&ObjectKey>) -> Result<Option<Path>> {
        match (key, &self.config.prefix) {
            (Some(key), _) => self.path_of(key).map(Some),
            (None, Some(prefix)) => {
                Path::parse(prefix.as_str())
                    .map(Some)
                    .map_err(|_| Error::InvalidKey {
                        key: prefix.to_string(),
                        reason: "refused by the S3 client",
                    })
            }
            (None, None) => Ok(None),
        }
    }

    /// Our key for a listed object, or `None` for an object whose name our
    /// keys cannot express (not one of ours).
    fn info_of(&self, meta: ObjectMeta) -> Option<ObjectInfo> {
        let full = meta.location.as_ref();
        let relative = match &self.config.prefix {
            Some(prefix) => full.strip_prefix(prefix.as_str())?.strip_prefix('/')?,
            None => full,
        };
        match ObjectKey::new(relative) {
            Ok(key) => Some(ObjectInfo {
                key,
                size: meta.size,
            }),
            Err(_) => {
                tracing::warn!(
                    object = full,
                    "skipping an object whose name is not a key of ours"
                );
                None
            }
        }
    }

    /// Blocks on `future`, mapping its error for `op` on `key`.
    fn run<T>(
        &self,
        op: &'static str,
        key: &str,
        future: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        self.runtime.block_on(future).map_err(|error| {
            errors::classify(op, key, &self.config.bucket, error, started.elapsed())
        })
    }

    /// Uploads `bytes` in parts of `part_bytes`, `part_concurrency` at a
    /// time; on failure the upload is aborted (its parts deleted).
    async fn put_in_parts(&self, path: &Path, mut bytes: Bytes) -> object_store::Result<()> {
        let upload = self.client.put_multipart(path).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.config.part_bytes);
        while !bytes.is_empty() {
            if let Err(error) = writer.wait_for_capacity(self.config.part_concurrency).await {
                let _ = writer.abort().await;
                return Err(error);
            }
            writer.put(bytes.split_to(bytes.len().min(self.config.part_bytes)));
        }
        writer.finish().await.map(drop)
    }

    fn listing(
        &self,
        op: &'static str,
        prefix: &ObjectKey,
        after: Option<&ObjectKey>,
    ) -> Result<Vec<ObjectInfo>> {
        let prefix_path = self.prefix_path(Some(prefix))?;
        let stream = match after {
            Some(after) => self
                .client
                .list_with_offset(prefix_path.as_ref(), &self.path_of(after)?),
            None => self.client.list(prefix_path.as_ref()),
        };
        let metas: Vec<ObjectMeta> = self.run(op, prefix.as_str(), stream.try_collect())?;
        let mut found: Vec<ObjectInfo> = metas
            .into_iter()
            .filter_map(|meta| self.info_of(meta))
            .collect();
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }
}

impl ObjectStore for S3Store {
    fn put(&self, key: &ObjectKey, bytes: Bytes) -> Result<()> {
        let path = self.path_of(key)?;
        if bytes.len() > self.config.multipart_threshold {
            return self.run(
                "PUT (multipart)",
                key.as_str(),
                self.put_in_parts(&path, bytes),
            );
        }
        self.run(
            "PUT",
            key.as_str(),
            self.client.put(&path, PutPayload::from(bytes)),
        )
        .map(drop)
    }

    fn put_if_absent(&self, key: &ObjectKey, bytes: Bytes) -> Result<PutOutcome> {
        // Always one PUT: a conditional multipart completion is not honoured
        // by every S3 implementation (radosgw overwrites).
        let path = self.path_of(key)?;
        let started = Instant::now();
        let payload = PutPayload::from(bytes.clone());
        let create = self.client.put_opts(&path, payload, PutMode::Create.into());
        match self.runtime.block_on(create) {
            Ok(_) => Ok(PutOutcome::Created),
            // 412 (exists) or 409 (another create in flight, on AWS).
            Err(object_store::Error::AlreadyExists { .. }) => match self.get(key) {
                Ok(existing) if existing == bytes => Ok(PutOutcome::Created),
                Ok(_) | Err(Error::NotFound { .. }) => Ok(PutOutcome::AlreadyExists),
                Err(error) => Err(error),
            },
            Err(error) => Err(errors::classify(
                "PUT if absent",
                key.as_str(),
                &self.config.bucket,
                error,
                started.elapsed(),
            )),
        }
    }

    fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        let path = self.path_of(key)?;
        let get = async { self.client.get(&path).await?.bytes().await };
        self.run("GET", key.as_str(), get)
    }

    fn get_range(&self, key: &ObjectKey, range: ByteRange) -> Result<Bytes> {
        range.check()?;
        let path = self.path_of(key)?;
        let wanted = match range {
            ByteRange::Span { start, end } => GetRange::Bounded(start..end),
            ByteRange::From(start) => GetRange::Offset(start),
            ByteRange::Suffix(n) => GetRange::Suffix(n),
        };
        let options = GetOptions::default().with_range(Some(wanted));
        let started = Instant::now();
        let get = async { self.client.get_opts(&path, options).await?.bytes().await };
        self.runtime
            .block_on(get)
            .map_err(|error| match errors::status_of(&error) {
                Some(416) => Error::InvalidRange {
                    key: key.to_string(),
                    range,
                },
                _ => errors::classify(
                    "GET range",
                    key.as_str(),
                    &self.config.bucket,
                    error,
                    started.elapsed(),
                ),
            })
    }

    fn head(&self, key: &ObjectKey) -> Result<ObjectInfo> {
        let path = self.path_of(key)?;
        let meta = self.run("HEAD", key.as_str(), self.client.head(&path))?;
        Ok(ObjectInfo {
            key: key.clone(),
            size: meta.size,
        })
    }

    fn list(&self, prefix: &ObjectKey) -> Result<Vec<ObjectInfo>> {
        self.listing("LIST", prefix, None)
    }

    fn list_after(&self, prefix: &ObjectKey, after: &ObjectKey) -> Result<Vec<ObjectInfo>> {
        self.listing("LIST after", prefix, Some(after))
    }

    fn delete(&self, keys: &[ObjectKey]) -> Result<()> {
        let Some(first) = keys.first() else {
            return Ok(());
        };
        let paths: Vec<Path> = keys
            .iter()
            .map(|key| self.path_of(key))
            .collect::<Result<_>>()?;
        let requests = futures_util::stream::iter(paths.into_iter().map(Ok));
        let delete = async {
            let mut results = self.client.delete_stream(Box::pin(requests));
            while let Some(result) = results.next().await {
                match result {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
            Ok(())
        };
        self.run("DELETE", first.as_str(), delete)
    }
}
