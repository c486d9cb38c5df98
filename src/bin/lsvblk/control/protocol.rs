//! The control protocol's messages and its bounded line reader.

use std::io::{self, BufRead, Read};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest request line the daemon reads (newline excluded); a longer one is
/// refused with a `bad-request` error.
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;

/// Longest reply line the client reads (newline excluded): snapshot lists
/// and status objects stay far below this.
pub const REPLY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// One operation asked of the daemon: the only line a client sends.
///
/// On the wire `{"op": "snapshot-create", "name": "before-upgrade"}`;
/// unknown fields are refused rather than ignored (a misspelt limit must
/// not silently fall back to the default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ControlRequest {
    /// Take a snapshot of the volume as it is now.
    SnapshotCreate {
        /// The new snapshot's name.
        name: String,
    },
    /// Delete a snapshot (its blocks become garbage for compaction).
    SnapshotDelete {
        /// The snapshot's name.
        name: String,
    },
    /// List the volume's snapshots.
    SnapshotList,
    /// Compact the log: rewrite live blocks out of mostly-dead segments.
    Compact {
        /// Rewrite at most this many MiB per second (default: the daemon's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate_mib_s: Option<u64>,
        /// Only compact segments whose live fraction is at most this (0..=1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        live_ratio_max: Option<f64>,
    },
    /// Copy the blocks the volume still reads from its base image into
    /// its log, encrypted.
    Flatten,
    /// Report the volume's state (geometry, log statistics, snapshots).
    Status,
    /// Read every block through its checks and report those that fail.
    Scrub,
    /// Rotate the volume's key now (or continue a rotation in progress).
    Rotate {
        /// An operator says this key is compromised: urgent, no rate limit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compromised: Option<String>,
        /// Re-encrypt at most this many MiB per second (default: the daemon's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate_mib_s: Option<u64>,
        /// Re-key the blocks kept snapshots hold too.
        #[serde(default)]
        include_snapshots: bool,
    },
    /// Seal every wrapped blob again under lsvkms's newest wrapping key.
    Rewrap,
    /// Replace the key policy.
    SetPolicy {
        /// The new policy.
        policy: lsvblk::volume::KeyPolicy,
    },
    /// Hand the volume over to the daemon asking (a live migration's
    /// destination, `lsvblk serve --standby`): refused while a VM runs on
    /// this daemon's disk; otherwise the daemon flushes, seals, checkpoints,
    /// releases the volume, answers, and stops.
    HandOver,
}

impl ControlRequest {
    /// The request's `op`, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            ControlRequest::SnapshotCreate { .. } => "snapshot-create",
            ControlRequest::SnapshotDelete { .. } => "snapshot-delete",
            ControlRequest::SnapshotList => "snapshot-list",
            ControlRequest::Compact { .. } => "compact",
            ControlRequest::Flatten => "flatten",
            ControlRequest::Status => "status",
            ControlRequest::Scrub => "scrub",
            ControlRequest::Rotate { .. } => "rotate",
            ControlRequest::Rewrap => "rewrap",
            ControlRequest::SetPolicy { .. } => "set-policy",
            ControlRequest::HandOver => "hand-over",
        }
    }
}

/// Why the daemon refused or failed a request: a stable short `kind` that
/// scripts and exit codes key on, and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({kind})")]
pub struct ControlError {
    /// Stable short code: one of the `ControlError::*` kind constants (a
    /// newer daemon may add others).
    pub kind: String,
    /// What went wrong, for people.
    pub message: String,
}

impl ControlError {
    /// The named snapshot (or other object) does not exist.
    pub const NOT_FOUND: &str = "not-found";
    /// The name is taken already.
    pub const ALREADY_EXISTS: &str = "already-exists";
    /// The daemon is doing something that excludes this request (e.g. a
    /// compaction is running); try again later.
    pub const BUSY: &str = "busy";
    /// The request was malformed, too large or had bad arguments.
    pub const BAD_REQUEST: &str = "bad-request";
    /// An I/O error on the volume.
    pub const IO: &str = "io";
    /// The peer's uid may not use this socket.
    pub const DENIED: &str = "denied";
    /// A bug in the daemon (the handler panicked).
    pub const INTERNAL: &str = "internal";

    /// An error of `kind` (one of the constants above) with `message`.
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            kind: kind.to_owned(),
            message: message.into(),
        }
    }
}

impl From<io::Error> for ControlError {
    fn from(error: io::Error) -> Self {
        Self::new(Self::IO, error.to_string())
    }
}

/// One line the daemon sends: `{"progress": …}`, `{"ok": …}` or
/// `{"error": {…}}`. Only the last line of an answer is `ok` or `error`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ControlReply {
    /// How far a long operation got (its shape is the operation's).
    Progress(Value),
    /// The request succeeded with this result.
    Ok(Value),
    /// The request failed.
    Error(ControlError),
}

/// What [`read_line`] found.
#[derive(Debug)]
pub enum Line {
    /// A line (newline stripped); the last one may lack its newline.
    Text(Vec<u8>),
    /// More than the limit without a newline.
    TooLong,
    /// End of stream before any byte.
    Eof,
}

/// Reads one `\n`-terminated line of at most `bytes_max` bytes (newline
/// excluded) without ever buffering more than `bytes_max + 1` bytes.
pub fn read_line(reader: &mut impl BufRead, bytes_max: usize) -> io::Result<Line> {
    let mut line = Vec::new();
    let limit = u64::try_from(bytes_max)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    reader.take(limit).read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(Line::Text(line));
    }
    Ok(if line.is_empty() {
        Line::Eof
    } else if line.len() > bytes_max {
        Line::TooLong
    } else {
        Line::Text(line)
    })
}

/// `reply` as one line, newline included.
pub fn encode_reply(reply: &ControlReply) -> Vec<u8> {
    let mut line = serde_json::to_vec(reply).unwrap_or_else(|e| {
        // Only a map with non-string keys fails to serialize: say so
        // rather than send nothing.
        let error = ControlError::new(
            ControlError::INTERNAL,
            format!("reply does not serialize: {e}"),
        );
        serde_json::to_vec(&ControlReply::Error(error)).unwrap_or_default()
    });
    line.push(b'\n');
    line
}
