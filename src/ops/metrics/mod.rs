//! `--metrics ADDR`: the Prometheus text format served over HTTP on
//! `127.0.0.1:PORT` (any `HOST:PORT`) or on a UNIX socket path.
//!
//! The exposition is `prometheus-client`'s: a [`Registry`] of collectors
//! that read the daemons' own counters (atomics, see
//! [`crate::vhost::metrics`] and [`crate::kms::metrics`]) and state at
//! scrape time, so serving requests costs nothing more than the counting.
//! Every path answers with the metrics (`/metrics` by convention); one
//! short-lived connection at a time. Collectors, one per source:
//!
//! - [`DeviceCollector`]: the vhost-user device's queues and the log;
//! - [`UpkeepCollector`]: compaction, keys, rotation, lsvkms calls, and
//!   the uploads of a volume kept in an object store;
//! - [`KmsCollector`]: lsvkms's requests, refusals and audit log.

mod device;
mod encode;
pub mod histogram;
mod kms;
mod upkeep;
mod upload;

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use device::DeviceCollector;
pub use kms::KmsCollector;
use prometheus_client::registry::Registry;
pub use upkeep::{StatusSource, UpkeepCollector};

/// Where metrics are served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsAddress {
    /// A TCP address, e.g. `127.0.0.1:9650`.
    Tcp(SocketAddr),
    /// A UNIX socket path (anything with a `/`).
    Unix(PathBuf),
}

impl std::str::FromStr for MetricsAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.contains('/') {
            return Ok(MetricsAddress::Unix(PathBuf::from(text)));
        }
        text.parse().map(MetricsAddress::Tcp).map_err(|_| {
            format!("{text:?} is neither HOST:PORT (e.g. 127.0.0.1:9650) nor a socket path")
        })
    }
}

/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest request head read.
const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;

/// Binds `address` and serves `registry` on a thread of its own until the
/// process exits. A stale UNIX socket file is replaced.
pub fn serve(address: &MetricsAddress, registry: Registry) -> io::Result<()> {
    let registry = Arc::new(registry);
    match address {
        MetricsAddress::Tcp(addr) => {
            let listener = TcpListener::bind(addr)?;
            spawn(move || {
                for stream in listener.incoming().flatten() {
                    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
                    answer(&registry, stream);
                }
            })
        }
        MetricsAddress::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path)?;
            spawn(move || {
                for stream in listener.incoming().flatten() {
                    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
                    answer(&registry, stream);
                }
            })
        }
    }
}

fn spawn(body: impl FnOnce() + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new()
        .name("metrics".to_string())
        .spawn(body)
        .map(drop)
}

/// Reads the request head (whatever it asks) and answers with the metrics;
/// errors only end this connection.
fn answer<S: io::Read + Write>(registry: &Registry, stream: S) {
    let mut reader = BufReader::new(stream);
    let mut head = 0usize;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(n) => head += n,
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        if head > REQUEST_HEAD_BYTES_MAX {
            return;
        }
    }
    let mut body = String::new();
    let (status, body) = match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => ("200 OK", body),
        Err(_) => ("500 Internal Server Error", "encoding failed\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = reader.get_mut().write_all(response.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_tcp_or_a_socket_path() {
        assert_eq!(
            "127.0.0.1:9650".parse::<MetricsAddress>().unwrap(),
            MetricsAddress::Tcp("127.0.0.1:9650".parse().unwrap())
        );
        assert_eq!(
            "/run/lsvblk/vm1.metrics".parse::<MetricsAddress>().unwrap(),
            MetricsAddress::Unix("/run/lsvblk/vm1.metrics".into())
        );
        assert!("localhost".parse::<MetricsAddress>().is_err());
    }
}
