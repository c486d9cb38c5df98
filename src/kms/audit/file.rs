//! The audit log on disk: records, then padding.
//!
//! Records are JSON lines. The file is extended **ahead** in chunks of
//! [`AUDIT_PREALLOC_BYTES`] of padding (`\n` bytes), synced once per chunk;
//! each batch of records then overwrites padding in place. An `fdatasync`
//! of an overwrite inside the file's size needs no journal commit for the
//! size: measured here ~180 µs against ~430 µs for a true append. The log
//! ends at its first empty line; everything after is padding. Blank lines
//! are what JSON-lines readers skip, so `grep`, `jq` and `tail` still work.
//!
//! The head file (`<log>.head`) names the newest durable record: its seq,
//! hash and the byte offset where it ends. It is rewritten (not synced)
//! after every synced batch, so it may lag behind the log after a power
//! cut but is never ahead of it.
//!
//! Opening recovers from a crash in the middle of a batch, which can leave
//! any subset of that batch's pages on disk: starting at the record the
//! head names (checked), every following line must authenticate and chain;
//! the first that does not, and everything after it, was never answered.
//! Those bytes are copied aside (`<log>.cut.<unix ms>`) and turned back
//! into padding, with a warning. A head that names a record the log does
//! not have at that place is tampering or damage: opening fails.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{AuditKey, AuditSink, GENESIS_HASH, StoredRecord, decode_line};
use crate::kms::fsutil;
use crate::kms::limits::{AUDIT_CUT_BYTES_MAX, AUDIT_LINE_BYTES_MAX, AUDIT_PREALLOC_BYTES};

/// The padding byte after the last record.
pub const PAD: u8 = b'\n';

/// The head file's contents: the newest durable record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Its seq (0: empty log).
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// The byte offset just after its line (0: unknown, scan from the start).
    #[serde(default)]
    pub end_offset: u64,
}

impl Head {
    /// The head of an empty log.
    pub fn genesis() -> Self {
        Head {
            seq: 0,
            hash: GENESIS_HASH.into(),
            end_offset: 0,
        }
    }
}

/// Bytes the head file is padded to, so each rewrite is one small pwrite.
const HEAD_BYTES: usize = 192;

/// The head file of the log at `log_path`.
pub fn head_path(log_path: &Path) -> PathBuf {
    let mut name = log_path.as_os_str().to_owned();
    name.push(".head");
    PathBuf::from(name)
}

/// Reads a head file (`None` if absent).
pub fn read_head(path: &Path) -> io::Result<Option<Head>> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() <= HEAD_BYTES => {
            let text = String::from_utf8_lossy(&bytes);
            serde_json::from_str(text.trim_end())
                .map(Some)
                .map_err(io::Error::other)
        }
        Ok(_) => Err(io::Error::other("head file too large")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The real sink: the padded log file and its head file.
pub struct FileSink {
    file: File,
    head: File,
    end: u64,
    allocated: u64,
}

impl FileSink {
    /// Makes sure `bytes_needed` bytes exist (padding), syncing the new size.
    fn extend_to(&mut self, bytes_needed: u64) -> io::Result<()> {
        if bytes_needed <= self.allocated {
            return Ok(());
        }
        let target = bytes_needed.div_ceil(AUDIT_PREALLOC_BYTES) * AUDIT_PREALLOC_BYTES;
        let padding = [PAD; 64 * 1024];
        let mut at = self.allocated;
        while at < target {
            let count = (target - at).min(padding.len() as u64) as usize;
            self.file.write_all_at(&padding[..count], at)?;
            at += count as u64;
        }
        // The one sync that changes the file's size, once per chunk.
        self.file.sync_data()?;
        self.allocated = target;
        Ok(())
    }
}

impl AuditSink for FileSink {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.extend_to(self.end + bytes.len() as u64)?;
        self.file.write_all_at(bytes, self.end)?;
        self.end += bytes.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn check_writable(&self) -> Result<(), String> {
        let meta = self.file.metadata().map_err(|e| format!("stat: {e}"))?;
        if meta.nlink() == 0 {
            return Err("audit log was deleted".into());
        }
        if meta.mode() & 0o222 == 0 {
            return Err(format!(
                "audit log is read-only (mode {:04o})",
                meta.mode() & 0o7777
            ));
        }
        Ok(())
    }

    fn set_head(&mut self, head: &Head) {
        let head = Head {
            end_offset: self.end,
            ..head.clone()
        };
        let mut bytes = serde_json::to_vec(&head).expect("head serializes");
        assert!(bytes.len() < HEAD_BYTES);
        bytes.resize(HEAD_BYTES, b' ');
        let _ = self.head.write_all_at(&bytes, 0);
    }
}

/// Why the audit log cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditOpenError {
    /// I/O on the log or head file.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another process has the log open for writing (a second `lsvkms
    /// serve` on the same state directory): two writers would overwrite
    /// each other's records.
    #[error("audit log {path} is in use by another process")]
    InUse {
        /// The file.
        path: String,
    },
    /// The head names a record the log does not have, or the log is shorter.
    #[error("audit log {path} is damaged: {reason} (run `lsvkms audit verify`)")]
    Damaged {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Opens (creating if needed) the log at `path`, recovers from a torn last
/// batch (module doc) and returns the sink and the newest record.
pub fn open_file_sink(path: &Path, key: &AuditKey) -> Result<(FileSink, Head), AuditOpenError> {
    let io_err = |source| AuditOpenError::Io {
        path: path.display().to_string(),
        source,
    };
    let damaged = |reason: String| AuditOpenError::Damaged {
        path: path.display().to_string(),
        reason,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    lock_exclusive(&file).map_err(|_| AuditOpenError::InUse {
        path: path.display().to_string(),
    })?;
    let size = file.metadata().map_err(io_err)?.len();
    let recorded = read_head(&head_path(path)).map_err(io_err)?;
    let start = scan_start(&file, key, recorded.as_ref(), size)
        .map_err(io_err)?
        .map_err(damaged)?;
    let (last, garbage) = scan_forward(&file, key, start).map_err(io_err)?;
    if let Some(recorded) = &recorded
        && recorded.seq > last.seq
    {
        return Err(damaged(format!(
            "head says seq {} but the log ends at {}",
            recorded.seq, last.seq
        )));
    }
    if garbage {
        set_aside(path, &file, last.end_offset, size).map_err(io_err)?;
    }
    let head = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(head_path(path))
        .map_err(io_err)?;
    let mut sink = FileSink {
        file,
        head,
        end: last.end_offset,
        allocated: size,
    };
    sink.set_head(&last);
    Ok((sink, last))
}

/// Takes an exclusive, non-blocking `flock` on the log, held as long as
/// the file stays open (the sink's lifetime).
fn lock_exclusive(file: &File) -> io::Result<()> {
    // SAFETY: flock on an fd we own and keep open; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Where the forward scan starts: the record the head names, checked
/// against the log (`Ok(Err(reason))` if it does not match).
fn scan_start(
    file: &File,
    key: &AuditKey,
    recorded: Option<&Head>,
    size: u64,
) -> io::Result<Result<Head, String>> {
    let Some(head) = recorded.filter(|h| h.seq > 0 && h.end_offset > 0) else {
        return Ok(Ok(Head::genesis()));
    };
    if head.end_offset > size {
        return Ok(Err(format!(
            "head ends at byte {} but the log has {size}",
            head.end_offset
        )));
    }
    let window = head.end_offset.min(AUDIT_LINE_BYTES_MAX as u64 + 1);
    let mut tail = vec![0u8; window as usize];
    file.read_exact_at(&mut tail, head.end_offset - window)?;
    if tail.pop() != Some(b'\n') {
        return Ok(Err(
            "the head's record does not end where the head says".into()
        ));
    }
    let line = &tail[tail
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |at| at + 1)..];
    match decode_line(key, line) {
        Ok(stored) if stored.record.seq == head.seq && stored.hash == head.hash => {
            Ok(Ok(head.clone()))
        }
        _ => Ok(Err(format!(
            "record {} is not where the head says",
            head.seq
        ))),
    }
}

/// Reads authentic, chained lines from `start` on. Returns the last one and
/// whether anything but padding follows it.
fn scan_forward(file: &File, key: &AuditKey, start: Head) -> io::Result<(Head, bool)> {
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(start.end_offset))?;
    let mut last = start;
    let mut line = Vec::with_capacity(AUDIT_LINE_BYTES_MAX);
    loop {
        if read_line(&mut reader, &mut line)? == 0 {
            return Ok((last, false));
        }
        if line == [PAD] {
            return Ok((last, !rest_is_padding(&mut reader)?));
        }
        let Some(stored) = line
            .strip_suffix(b"\n")
            .and_then(|l| decode_line(key, l).ok())
        else {
            return Ok((last, true));
        };
        if !chains(&last, &stored) {
            return Ok((last, true));
        }
        let end_offset = last.end_offset + line.len() as u64;
        last = Head {
            seq: stored.record.seq,
            hash: stored.hash,
            end_offset,
        };
    }
}

fn chains(previous: &Head, stored: &StoredRecord) -> bool {
    stored.record.seq == previous.seq + 1 && stored.record.prev == previous.hash
}

/// Reads the next line into `line` (cleared first), its `\n` included:
/// at most one byte over [`AUDIT_LINE_BYTES_MAX`], so that a longer line
/// shows as too long. 0 at the end of the file.
pub fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<usize> {
    line.clear();
    reader
        .take(AUDIT_LINE_BYTES_MAX as u64 + 1)
        .read_until(b'\n', line)
}

/// True if only padding is left to read.
pub fn rest_is_padding(reader: &mut impl Read) -> io::Result<bool> {
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let read = reader.read(&mut chunk)?;
        if read == 0 {
            return Ok(true);
        }
        if chunk[..read].iter().any(|b| *b != PAD) {
            return Ok(false);
        }
    }
}

/// Copies `[from, size)` to `<log>.cut.<ms>` and turns it back into padding.
fn set_aside(path: &Path, file: &File, from: u64, size: u64) -> io::Result<()> {
    let bytes = size - from;
    if bytes > AUDIT_CUT_BYTES_MAX {
        return Err(io::Error::other(format!(
            "{bytes} unreadable bytes after the last record: too many to set aside"
        )));
    }
    let mut cut = vec![0u8; bytes as usize];
    file.read_exact_at(&mut cut, from)?;
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".cut.{unix_ms}"));
    let aside = PathBuf::from(aside);
    let kept = cut.iter().rposition(|b| *b != PAD).map_or(0, |at| at + 1);
    fsutil::write_new(&aside, &cut[..kept], 0o600)?;
    tracing::warn!(bytes = kept, aside = %aside.display(), "audit log: set aside an unanswered (torn) tail");
    file.write_all_at(&vec![PAD; cut.len()], from)?;
    file.sync_data()
}
