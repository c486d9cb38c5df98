//! Scraping a daemon's `--metrics` UNIX socket the way Prometheus does:
//! one HTTP GET, the OpenMetrics text parsed into its samples.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// One scrape: every sample line, `name{labels}` -> value.
pub struct Scrape(HashMap<String, f64>);

impl Scrape {
    /// Scrapes the metrics served on `path`.
    pub fn from(path: &Path) -> Self {
        let mut stream = UnixStream::connect(path).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: lsvblk\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        let samples = body
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').unwrap();
                (series.to_owned(), value.parse().unwrap())
            })
            .collect();
        Scrape(samples)
    }

    /// The value of `series` (`name{labels}` as exposed); panics if absent.
    pub fn get(&self, series: &str) -> f64 {
        self.find(series)
            .unwrap_or_else(|| panic!("no {series} in {:?}", self.0.keys()))
    }

    /// The value of `series`, if exposed.
    pub fn find(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    /// `NAME{queue="Q",op="OP"}`.
    pub fn op(&self, name: &str, queue: usize, op: &str) -> f64 {
        self.get(&format!("{name}{{queue=\"{queue}\",op=\"{op}\"}}"))
    }
}
