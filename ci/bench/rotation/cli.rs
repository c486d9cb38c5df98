//! The `lsvblk` commands the bench runs on its volume: `status`, and
//! `rotate` beside the load.

use std::path::Path;
use std::time::Instant;

use serde_json::Value;

use super::common::MB_BYTES;
use super::kit::cli::{Background, Lsvblk};

fn path(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The `lsvblk` commands the bench runs on its volume.
pub struct Cli<'a> {
    pub lsvblk: &'a Lsvblk,
    pub volume: &'a Path,
}

impl Cli<'_> {
    /// `lsvblk status VOLUME --json`.
    pub fn status(&self) -> Value {
        self.lsvblk.json(&["status", path(self.volume), "--json"])
    }

    /// Starts `lsvblk rotate VOLUME --json --rate-mib RATE` (after noting
    /// the current key and the bytes live under it).
    pub fn start_rotation(&self, rate_mib: u64) -> Running {
        let status = self.status();
        let old_key = status["keys"]["current_key_id"].clone();
        let live_bytes = status["keys"]["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|k| k["current"] == Value::Bool(true))
            .filter_map(|k| k["usage"]["live_bytes"].as_u64())
            .sum();
        let started = Instant::now();
        let rate = rate_mib.to_string();
        let process =
            self.lsvblk
                .background(&["rotate", path(self.volume), "--json", "--rate-mib", &rate]);
        Running {
            process,
            started,
            old_key,
            live_bytes,
            rate_mib,
        }
    }
}

/// A running `lsvblk rotate` (killed if dropped first: the daemon carries
/// on with the rotation until it stops).
pub struct Running {
    process: Background,
    started: Instant,
    old_key: Value,
    live_bytes: u64,
    rate_mib: u64,
}

impl Running {
    /// Whether it has exited (waitpid, no blocking).
    pub fn exited(&mut self) -> bool {
        !self.process.running()
    }

    /// Waits for it; its result. Panics if it failed or left the key as it
    /// was.
    pub fn finish(self) -> Rotation {
        let output = self.process.finish();
        let wall_s = self.started.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "lsvblk rotate failed ({}):\n{text}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let output: Value = serde_json::from_str(text.trim()).expect("rotate JSON");
        assert_ne!(
            output["current_key_id"], self.old_key,
            "the rotation left the key as it was: {output}"
        );
        let number = |value: &Value| value.as_u64().expect("a byte count in rotate's output");
        Rotation {
            rate_mib: self.rate_mib,
            live_bytes: self.live_bytes,
            bytes_rekeyed: number(&output["outcome"]["bytes_rekeyed"]),
            bytes_moved: number(&output["outcome"]["bytes_moved"]),
            seconds: output["seconds"].as_f64().expect("seconds"),
            wall_s,
        }
    }
}

/// What one rotation did.
pub struct Rotation {
    pub rate_mib: u64,
    /// Bytes live under the key rotated away from, at the start.
    pub live_bytes: u64,
    /// From `lsvblk rotate`'s output.
    pub bytes_rekeyed: u64,
    pub bytes_moved: u64,
    pub seconds: f64,
    /// From starting `lsvblk rotate` to seeing it exit.
    pub wall_s: f64,
}

impl Rotation {
    /// MB/s re-keyed, as `lsvblk rotate` measured its own time.
    pub fn rekey_mbps(&self) -> f64 {
        self.bytes_rekeyed as f64 / self.seconds / MB_BYTES
    }

    pub fn describe(&self) -> String {
        format!(
            "{} MiB live, {} MiB re-keyed in {:.2} s ({:.0} MB/s)",
            self.live_bytes >> 20,
            self.bytes_rekeyed >> 20,
            self.seconds,
            self.rekey_mbps()
        )
    }
}
