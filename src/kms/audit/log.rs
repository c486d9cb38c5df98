//! Appending to the audit log: group commit, fail closed.
//!
//! Callers hand an [`AuditEntry`] to one writer thread through a bounded
//! queue and wait for its answer. The writer takes everything queued (up to
//! [`AUDIT_BATCH_MAX`]), numbers and chains the records, writes them with
//! one `write` and one `fdatasync`, and only then answers each caller. So
//! one sync covers many concurrent calls, and no call gets an answer before
//! its record is on stable storage.
//!
//! Callers in lockstep (two clients each waiting for its answer before
//! asking again) would otherwise take turns, one record per sync: each
//! arrives while the other's sync runs. So the writer lingers (at most
//! [`AUDIT_LINGER_US_MAX`]) before writing while either
//! - fewer records are gathered than the largest of the last
//!   [`RECENT_BATCHES`] batches (callers that were recently concurrent
//!   probably still are), or
//! - calls that will append have started but not handed their record over
//!   yet ([`AuditLog::begin_call`]).
//!
//! A lone caller never waits; after concurrency ends, the writer stops
//! waiting within [`RECENT_BATCHES`] batches.
//!
//! Fail closed: if the file's mode has no write bit (an operator's
//! `chmod a-w`, honoured even for root), the batch is refused; if a write
//! or sync fails, the log is **poisoned** and every later call is refused
//! until restart (after a failed fsync the page cache's state is unknown).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use super::file::{AuditOpenError, FileSink, Head, head_path, open_file_sink, read_head};
use super::{AuditEntry, AuditKey, AuditRecord, AuditSink, encode_line, rfc3339_utc};
use crate::kms::limits::{
    AUDIT_BATCH_MAX, AUDIT_LINE_BYTES_MAX, AUDIT_LINGER_US_MAX, AUDIT_QUEUE_MAX,
};
use crate::ops::metrics::histogram::LatencyHistogram;

struct Job {
    entry: AuditEntry,
    reply: SyncSender<Result<u64, String>>,
}

/// The audit log as the service uses it: [`AuditLog::append`] returns only
/// after the record is durable, or fails.
pub struct AuditLog {
    // `None` only while dropping.
    sender: Option<SyncSender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
    status: Arc<Mutex<Result<(), String>>>,
    calls_in_progress: Arc<AtomicUsize>,
    sync_latency: Arc<LatencyHistogram>,
}

impl Drop for AuditLog {
    /// Closes the queue and waits for the writer, so the log file (and its
    /// lock) is closed when this returns.
    fn drop(&mut self) {
        drop(self.sender.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

thread_local! {
    /// Whether the call running on this thread is counted in
    /// `calls_in_progress` and has not appended its first record yet.
    static CALL_COUNTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Counts one call as in progress until its first record is appended or
/// the guard drops, whichever is first (see [`AuditLog::begin_call`]).
pub struct CallGuard(Arc<AtomicUsize>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if CALL_COUNTED.replace(false) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl AuditLog {
    /// Starts the writer thread over `sink`, continuing the chain after `head`.
    pub fn start(sink: Box<dyn AuditSink>, key: AuditKey, head: Head) -> io::Result<Self> {
        let (sender, receiver) = mpsc::sync_channel(AUDIT_QUEUE_MAX);
        let status = Arc::new(Mutex::new(Ok(())));
        let calls_in_progress = Arc::new(AtomicUsize::new(0));
        let sync_latency = Arc::new(LatencyHistogram::default());
        let writer = Writer {
            sink,
            key,
            head,
            poisoned: None,
            status: Arc::clone(&status),
            calls_in_progress: Arc::clone(&calls_in_progress),
            recent_batch_sizes: [1; RECENT_BATCHES],
            batches_written: 0,
            sync_latency: Arc::clone(&sync_latency),
        };
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(receiver))?;
        Ok(Self {
            sender: Some(sender),
            writer: Some(writer),
            status,
            calls_in_progress,
            sync_latency,
        })
    }

    /// A log that refuses everything (the file could not be opened).
    pub fn refusing(reason: String) -> Self {
        let (sender, _receiver) = mpsc::sync_channel(1);
        Self {
            sender: Some(sender),
            writer: None,
            status: Arc::new(Mutex::new(Err(reason))),
            calls_in_progress: Arc::new(AtomicUsize::new(0)),
            sync_latency: Arc::default(),
        }
    }

    /// How long each batch's write and sync took (metrics).
    pub fn sync_latency(&self) -> Arc<LatencyHistogram> {
        Arc::clone(&self.sync_latency)
    }

    /// Marks a call that will append a record as in progress until the
    /// guard drops; the writer waits (briefly) for such calls to batch them.
    pub fn begin_call(&self) -> CallGuard {
        if !CALL_COUNTED.replace(true) {
            self.calls_in_progress.fetch_add(1, Ordering::AcqRel);
        }
        CallGuard(Arc::clone(&self.calls_in_progress))
    }

    /// Appends `entry` durably; returns its seq. `Err` means the record is
    /// not (known to be) durable: the caller must refuse the call.
    pub fn append(&self, entry: AuditEntry) -> Result<u64, String> {
        let (reply, answer) = mpsc::sync_channel(1);
        // No longer "about to append": the writer stops waiting for us.
        if CALL_COUNTED.replace(false) {
            self.calls_in_progress.fetch_sub(1, Ordering::AcqRel);
        }
        self.sender
            .as_ref()
            .expect("sender lives until drop")
            .send(Job { entry, reply })
            .map_err(|_| self.unhealthy_reason())?;
        answer
            .recv()
            .map_err(|_| "audit writer stopped".to_owned())?
    }

    /// `Ok` or why the last append failed.
    pub fn health(&self) -> Result<(), String> {
        self.status.lock().expect("status lock").clone()
    }

    fn unhealthy_reason(&self) -> String {
        self.health()
            .err()
            .unwrap_or_else(|| "audit writer stopped".into())
    }
}

struct Writer {
    sink: Box<dyn AuditSink>,
    key: AuditKey,
    head: Head,
    poisoned: Option<String>,
    status: Arc<Mutex<Result<(), String>>>,
    calls_in_progress: Arc<AtomicUsize>,
    recent_batch_sizes: [usize; RECENT_BATCHES],
    batches_written: usize,
    sync_latency: Arc<LatencyHistogram>,
}

/// Batches whose sizes predict the next one's.
pub const RECENT_BATCHES: usize = 4;

impl Writer {
    fn run(mut self, receiver: Receiver<Job>) {
        let mut batch = Vec::with_capacity(AUDIT_BATCH_MAX);
        while let Ok(first) = receiver.recv() {
            batch.push(first);
            self.gather(&receiver, &mut batch);
            let result = self.write_batch(&batch);
            self.recent_batch_sizes[self.batches_written % RECENT_BATCHES] = batch.len();
            self.batches_written = self.batches_written.wrapping_add(1);
            *self.status.lock().expect("status lock") =
                result.as_ref().map(|_| ()).map_err(Clone::clone);
            for (index, job) in batch.drain(..).enumerate() {
                let answer = result.as_ref().map(|first_seq| first_seq + index as u64);
                let _ = job.reply.send(answer.map_err(Clone::clone));
            }
        }
    }

    /// Adds whatever is queued to `batch`, then lingers (bounded) while more
    /// records are expected (see the module doc).
    fn gather(&self, receiver: &Receiver<Job>, batch: &mut Vec<Job>) {
        let linger_end = Instant::now() + Duration::from_micros(AUDIT_LINGER_US_MAX);
        let expected = self.recent_batch_sizes.iter().copied().max().unwrap_or(1);
        while batch.len() < AUDIT_BATCH_MAX {
            if let Ok(job) = receiver.try_recv() {
                batch.push(job);
                continue;
            }
            let now = Instant::now();
            let waiting_for_more =
                batch.len() < expected || self.calls_in_progress.load(Ordering::Acquire) > 0;
            if !waiting_for_more || now >= linger_end {
                return;
            }
            match receiver.recv_timeout(linger_end - now) {
                Ok(job) => batch.push(job),
                Err(_) => return,
            }
        }
    }

    /// Writes and syncs the batch; returns the first record's seq.
    fn write_batch(&mut self, batch: &[Job]) -> Result<u64, String> {
        if let Some(reason) = &self.poisoned {
            return Err(reason.clone());
        }
        self.sink.check_writable()?;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut bytes = Vec::with_capacity(batch.len() * 512);
        let mut head = self.head.clone();
        for job in batch {
            let record = AuditRecord {
                seq: head.seq + 1,
                time: rfc3339_utc(now_ms),
                entry: job.entry.clone(),
                prev: head.hash.clone(),
            };
            let (line, hash) = encode_line(&self.key, &record);
            assert!(
                line.len() <= AUDIT_LINE_BYTES_MAX,
                "audit fields are bounded"
            );
            bytes.extend_from_slice(&line);
            head = Head {
                seq: record.seq,
                hash,
                end_offset: 0,
            };
        }
        let started = Instant::now();
        let written = self.sink.append(&bytes).and_then(|()| self.sink.sync());
        self.sync_latency.observe(started.elapsed());
        if let Err(error) = written {
            let reason = format!("audit write/sync failed, refusing until restart: {error}");
            tracing::error!("{reason}");
            self.poisoned = Some(reason.clone());
            return Err(reason);
        }
        let first_seq = self.head.seq + 1;
        self.head = head;
        self.sink.set_head(&self.head);
        Ok(first_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::audit::{GENESIS_HASH, sample_entry};

    struct FlakySink {
        fail_sync: bool,
        lines: Arc<Mutex<Vec<u8>>>,
    }

    impl AuditSink for FlakySink {
        fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
            self.lines.lock().unwrap().extend_from_slice(bytes);
            Ok(())
        }
        fn sync(&mut self) -> io::Result<()> {
            if self.fail_sync {
                Err(io::Error::other("EIO"))
            } else {
                Ok(())
            }
        }
        fn check_writable(&self) -> Result<(), String> {
            Ok(())
        }
        fn set_head(&mut self, _head: &Head) {}
    }

    /// A log started on `sink` as a new, empty one.
    fn empty_log(sink: FlakySink) -> AuditLog {
        let genesis = Head {
            seq: 0,
            hash: GENESIS_HASH.into(),
            end_offset: 0,
        };
        AuditLog::start(Box::new(sink), AuditKey::from_bytes([1; 32]), genesis).unwrap()
    }

    #[test]
    fn failed_sync_refuses_and_stays_refused() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = FlakySink {
            fail_sync: true,
            lines,
        };
        let log = empty_log(sink);
        assert!(log.append(sample_entry("s")).is_err());
        assert!(
            log.append(sample_entry("s")).is_err(),
            "poisoned until restart"
        );
        assert!(log.health().is_err());
    }

    #[test]
    fn concurrent_appends_get_consecutive_seqs() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = FlakySink {
            fail_sync: false,
            lines: Arc::clone(&lines),
        };
        let log = Arc::new(empty_log(sink));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    (0..25)
                        .map(|_| log.append(sample_entry("s")).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
        assert_eq!(
            lines
                .lock()
                .unwrap()
                .iter()
                .filter(|b| **b == b'\n')
                .count(),
            100
        );
    }
}
