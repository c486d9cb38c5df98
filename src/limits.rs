//! Every bound in one place, each with its unit and reason.
//!
//! Channels, pools and buffers are sized from these; nothing is sized from a
//! length that a guest or a file on disk chose.

/// Default size of one XTS data unit and of one volume block, bytes.
/// 4 KiB matches the page size and the guest's filesystem block size.
pub const BLOCK_BYTES_DEFAULT: u32 = 4096;

/// The smaller data unit we also support, bytes (one virtio sector).
pub const SECTOR_BYTES: u32 = 512;

/// Default chunk a large buffer is cut into for the crypto pool, bytes.
/// Big enough that a thread hand-off (~µs) is noise next to the work (~50 µs).
pub const CRYPTO_CHUNK_BYTES_DEFAULT: usize = 512 * 1024;

/// Smallest chunk the crypto pool accepts, bytes: one 4 KiB data unit.
pub const CRYPTO_CHUNK_BYTES_MIN: usize = 4096;

/// Default target size of one segment file, bytes.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// Spare segment files a log keeps per head after compaction empties them,
/// for its next segments to reuse (their blocks stay allocated, so a new
/// segment costs no file creation and no allocation). One per head covers
/// each head's next segment; the space they hold stays reported as spare.
pub const SPARE_SEGMENTS_PER_HEAD: usize = 1;

/// Smallest allowed segment target, bytes (small values are for tests).
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;

/// Largest allowed segment target, bytes.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 34;

/// Largest single write, bytes. One write is one record, so this also bounds
/// a record and the shadow buffer a write needs.
pub const WRITE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Largest volume, bytes (2^56: block numbers stay far from u64 overflow).
pub const VOLUME_BYTES_MAX: u64 = 1 << 56;

/// Bytes appended between automatic checkpoints: bounds replay after a crash
/// to about this much reading.
pub const CHECKPOINT_INTERVAL_BYTES: u64 = 256 * 1024 * 1024;

/// Checkpoints kept on disk; older ones are deleted after a new one is durable.
pub const CHECKPOINTS_KEPT: usize = 2;

/// Sequence numbers skipped at every open. A write that was in flight at a
/// crash may have left ciphertext on disk under a sequence number that replay
/// never saw; skipping far past the highest seen keeps every XTS tweak unique.
/// In-flight writes are bounded by queues × queue depth, far below this.
pub const SEQ_REOPEN_GAP: u64 = 1 << 24;

const _: () = assert!(CRYPTO_CHUNK_BYTES_DEFAULT >= CRYPTO_CHUNK_BYTES_MIN);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
const _: () = assert!(BLOCK_BYTES_DEFAULT.is_multiple_of(SECTOR_BYTES));

/// Largest data payload of one virtio-blk request, bytes. Advertised to the
/// guest as SEG_MAX × SIZE_MAX; the worker's buffers are sized from it.
pub const REQUEST_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// Most bytes of guest writes a queue worker copies out before appending
/// them (one batch, one pwritev). The guest picks how many writes it keeps
/// in flight: without this bound a ring of 1024 writes of 4 MiB is 4 GiB of
/// shadow buffers per queue. 16 MiB still batches 256 writes of 64 KiB.
pub const WRITE_BATCH_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Most batches (jobs) of one queue in flight at once in direct mode: the
/// queue's worker hands each batch to a thread of its own and takes the
/// next requests while the device or the crypto pool works on it. Four
/// keep a 2-core host's device and CPU both busy (one batch decrypting
/// while others wait for the device) without a thread per request.
pub const QUEUE_JOBS_IN_FLIGHT: usize = 4;

/// In direct mode a queue's batch of writes is handed on once it holds
/// this many bytes (a batch of reads likewise, or at `QUEUE_JOB_READS`
/// reads), so that the first requests of a large wake-up complete while
/// the next are still being encrypted or read. With `QUEUE_JOBS_IN_FLIGHT`
/// this bounds a queue's shadow buffers in flight to 4 × (2 MiB + one
/// request of `REQUEST_BYTES_MAX`), 24 MiB, where one batch was 16 MiB.
pub const QUEUE_JOB_BYTES: u64 = 2 * 1024 * 1024;

/// Most reads in one job in direct mode (see `QUEUE_JOB_BYTES`): a
/// queue's 32 small random reads go out as one job, through one ring
/// submission. Cut into jobs of 8 (four waves of completions), each job's
/// hand-over to a thread cost more than the waves won: randread QD32 at 8
/// was 32 325 IOPS on 0.65 cores, at 32 41 638 on 0.38 (loaded runs,
/// README Performance > Device).
pub const QUEUE_JOB_READS: usize = 32;

/// Largest size of one guest data segment advertised (SIZE_MAX), bytes.
/// One page: with SEG_MAX this caps a Linux guest's requests at
/// REQUEST_BYTES_MAX however its buffers are laid out.
pub const SEGMENT_SIZE_MAX: u32 = 4096;

/// Most data segments per request advertised (SEG_MAX).
pub const SEG_MAX: u32 = 1024;

/// Most discard / write-zeroes segments per request (advertised and accepted).
pub const DISCARD_SEGMENTS_MAX: u32 = 1;

/// Largest discard or write-zeroes range advertised, in 512-byte sectors
/// (4 GiB: a record covers at most u32::MAX blocks, far more than this).
pub const DISCARD_SECTORS_MAX: u32 = 1 << 23;

/// Largest virtqueue the device accepts, descriptors.
pub const QUEUE_SIZE_MAX: u16 = 1024;

/// Most virtqueues (one worker thread each).
pub const QUEUES_MAX: usize = 16;

const _: () = assert!(REQUEST_BYTES_MAX <= WRITE_BYTES_MAX);
// Any one request fits an empty batch.
const _: () = assert!(REQUEST_BYTES_MAX <= WRITE_BATCH_BYTES_MAX);
const _: () = assert!(SEG_MAX as u64 * SEGMENT_SIZE_MAX as u64 == REQUEST_BYTES_MAX);

/// `lsvblk compact` cleans segments whose live bytes are at most this
/// fraction of their records: after it, the log holds at most about
/// 1 / 0.9 = 1.11 × the live data (plus the open segments).
pub const COMPACT_LIVE_RATIO_DEFAULT: f64 = 0.9;

/// The daemon's background compaction starts when the segments hold more
/// than this many times the live data ...
pub const AUTO_COMPACT_SPACE_RATIO: f64 = 1.5;

/// ... and then cleans segments at most this live.
pub const AUTO_COMPACT_LIVE_RATIO: f64 = 0.5;

/// Background compaction moves at most this many bytes per second unless
/// told otherwise (`lsvblk serve --compact-rate`).
pub const AUTO_COMPACT_RATE_BYTES_DEFAULT: u64 = 64 << 20;

/// A volume in an object store with `--flush local` holds its uploads back
/// while a write burst streams: seals closer together than this are a
/// burst (16 MiB segments sealing this often are 320 MB/s of writes, so a
/// slow writer never holds anything back) ...
pub const UPLOAD_HOLD_BURST_GAP: std::time::Duration = std::time::Duration::from_millis(50);

/// ... for at most this long after the first segment of the backlog was
/// sealed (after it, uploads go on beside the writes) ...
pub const UPLOAD_HOLD_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// ... and only while the backlog is under this share of `--upload-lag`
/// (a FLUSH waits at the whole lag: the uploads start before it does).
pub const UPLOAD_HOLD_LAG_SHARE: f64 = 0.75;
