//! Where an S3 store is and how hard it tries.

use std::time::Duration;

use crate::objstore::error::{Error, Result};
use crate::objstore::key::ObjectKey;

/// S3's smallest part of a multipart upload (except the last).
const PART_BYTES_MIN: usize = 5 << 20;

/// An S3 store's settings. [`S3Config::new`] fills in the defaults, each
/// chosen below; fields may be changed before [`super::S3Store::new`].
#[derive(Debug, Clone)]
pub struct S3Config {
    /// Base URL of the S3 API, e.g. `http://127.0.0.1:7480` or
    /// `https://s3.eu-west-1.amazonaws.com`. Requests use path-style URLs
    /// (`ENDPOINT/BUCKET/KEY`), which every S3 implementation serves.
    pub endpoint: String,
    /// The bucket (it must exist).
    pub bucket: String,
    /// Our objects' keys are `PREFIX/KEY` in the bucket (none: `KEY`).
    pub prefix: Option<ObjectKey>,
    /// The region requests are signed for (S3-compatible stores accept any).
    pub region: String,
    /// How long one call retries transient failures (connection refused or
    /// reset, timeouts, 5xx, 429) before giving up with
    /// [`Error::Transient`]. Default 60 s: long enough for a restarting
    /// gateway or a failed-over storage node, short enough that a caller
    /// hears of a real outage within a minute.
    pub retry_deadline: Duration,
    /// First wait between retries (doubling, with jitter, up to
    /// `retry_backoff_max`). Default 100 ms.
    pub retry_backoff_first: Duration,
    /// Longest wait between retries. Default 2 s, so a store that comes back
    /// is used again within about 2 s.
    pub retry_backoff_max: Duration,
    /// Longest one request may take (including its body). Default 30 s:
    /// a 32 MiB object at 2 MiB/s.
    pub request_timeout: Duration,
    /// Longest a TCP (and TLS) connect may take. Default 5 s.
    pub connect_timeout: Duration,
    /// Objects larger than this are uploaded in parts, in parallel. Default
    /// 64 MiB: a segment object of a store volume (16 MiB and its seal by
    /// default) goes up in one PUT; as a multipart upload it took three part
    /// requests plus the initiate and complete requests.
    pub multipart_threshold: usize,
    /// Size of each part (at least 5 MiB). Default 8 MiB.
    pub part_bytes: usize,
    /// Parts of one object in flight at once. Default 4.
    pub part_concurrency: usize,
    /// Threads of the client's own async runtime (HTTP I/O, timers).
    /// Default 2: a blocking call waits on its own thread; the runtime
    /// threads only drive sockets.
    pub runtime_threads: usize,
    /// Whether a request's signature covers a SHA-256 of its body. Default
    /// false (`x-amz-content-sha256: UNSIGNED-PAYLOAD`, which S3 and radosgw
    /// accept): hashing each uploaded segment cost the client and the store
    /// a pass over its bytes each. What we store does not rely on it: every
    /// object's name carries its length and CRC32C, checked on each
    /// download, and each block carries a MAC under the volume's key; TLS
    /// (`https://`) protects requests in transit.
    pub sign_payload: bool,
}

impl S3Config {
    /// Settings for `bucket` at `endpoint`, with the defaults documented on
    /// each field and region `us-east-1`.
    pub fn new(endpoint: &str, bucket: &str) -> Self {
        S3Config {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            bucket: bucket.to_string(),
            prefix: None,
            region: "us-east-1".to_string(),
            retry_deadline: Duration::from_secs(60),
            retry_backoff_first: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            multipart_threshold: 64 << 20,
            part_bytes: 8 << 20,
            part_concurrency: 4,
            runtime_threads: 2,
            sign_payload: false,
        }
    }

    /// Settings from a store URL `s3://BUCKET[/PREFIX]` and an endpoint.
    pub fn from_url(url: &str, endpoint: &str) -> Result<Self> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| Error::Config {
            reason: format!("{url:?} is not an s3://BUCKET[/PREFIX] URL"),
        })?;
        let (bucket, prefix) = match rest.split_once('/') {
            Some((bucket, prefix)) => (bucket, Some(prefix.trim_end_matches('/'))),
            None => (rest, None),
        };
        let mut config = S3Config::new(endpoint, bucket);
        config.prefix = match prefix {
            Some(prefix) if !prefix.is_empty() => Some(ObjectKey::new(prefix)?),
            _ => None,
        };
        Ok(config)
    }

    /// Refuses settings no store could work with.
    pub fn check(&self) -> Result<()> {
        let refuse = |reason: String| Err(Error::Config { reason });
        if !is_bucket_name(&self.bucket) {
            return refuse(format!(
                "bucket name {:?}: 3-63 characters of a-z 0-9 . -, starting and ending with a letter or digit",
                self.bucket
            ));
        }
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return refuse(format!(
                "endpoint {:?} is not an http(s):// URL",
                self.endpoint
            ));
        }
        if self.part_bytes < PART_BYTES_MIN {
            return refuse(format!(
                "part size {} is below S3's 5 MiB minimum",
                self.part_bytes
            ));
        }
        if self.multipart_threshold < self.part_bytes {
            return refuse("the multipart threshold is below the part size".to_string());
        }
        if self.part_concurrency == 0 || self.runtime_threads == 0 {
            return refuse("part concurrency and runtime threads must be at least 1".to_string());
        }
        Ok(())
    }
}

/// S3's bucket naming rules (the subset every implementation accepts).
fn is_bucket_name(name: &str) -> bool {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-';
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name.bytes().all(allowed)
        && edge(name.as_bytes().first())
        && edge(name.as_bytes().last())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_name_bucket_and_prefix() {
        let config = S3Config::from_url("s3://vols/alice/vm1/", "http://127.0.0.1:7480/").unwrap();
        assert_eq!(config.bucket, "vols");
        assert_eq!(config.prefix.unwrap().as_str(), "alice/vm1");
        assert_eq!(config.endpoint, "http://127.0.0.1:7480");
        assert!(
            S3Config::from_url("s3://vols", "http://x")
                .unwrap()
                .prefix
                .is_none()
        );
        assert!(
            S3Config::from_url("s3://vols/", "http://x")
                .unwrap()
                .prefix
                .is_none()
        );
        assert!(S3Config::from_url("http://vols", "http://x").is_err());
        assert!(S3Config::from_url("s3://vols/a//b", "http://x").is_err());
    }

    #[test]
    fn refuses_unusable_settings() {
        assert!(
            S3Config::new("http://127.0.0.1:7480", "lsvblk")
                .check()
                .is_ok()
        );
        for bucket in ["ab", "Vols", "-vols", "vols-", "a_b", &"a".repeat(64)] {
            assert!(
                S3Config::new("http://x", bucket).check().is_err(),
                "{bucket}"
            );
        }
        assert!(S3Config::new("127.0.0.1:7480", "vols").check().is_err());
        let mut config = S3Config::new("http://x", "vols");
        config.part_bytes = 1 << 20;
        assert!(config.check().is_err());
    }
}
