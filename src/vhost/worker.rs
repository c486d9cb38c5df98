//! Draining one virtqueue: pop every available chain, parse it, execute it
//! against the volume, write its status byte, and return it to the driver.
//!
//! Reads land in guest memory and are decrypted there, in place; writes are
//! copied once out of guest memory into an aligned shadow buffer that is
//! encrypted in place and written to the log as it is (guest memory is
//! never modified by a write).

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use vhost_user_backend::VringT;
use vhost_user_backend::bitmap::BitmapMmapRegion;
use virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend, VolatileSlice};

use super::chain::Chain;
use super::metrics::{ErrorKind, Op};
use super::request::{self, Desc, DeviceLimits, Request, SECTOR_BYTES, SERIAL_BYTES, SectorRange};
use super::state::{GuestMemory, GuestRam, QueueState, Shared, Vring};
use crate::limits::WRITE_BATCH_BYTES_MAX;
use crate::store::{AlignedBuf, HeadId};
use crate::volume::{Change, ReadRequest, Volume, VolumeError};

/// One worker's view of the device while it drains a queue.
pub(crate) struct QueueWorker<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) memory: &'a GuestMemory,
    /// The volume, or why there is none to serve with (handed over to
    /// another daemon, or not taken over): requests then fail with IOERR.
    pub(crate) volume: Result<Arc<Volume>, String>,
    /// The log head this queue appends through (its queue index).
    pub(crate) head: HeadId,
}

/// How one chain ends: its status and the bytes it put in guest buffers;
/// for the metrics, its type (`None` if it did not parse) and the bytes it
/// asked to move.
struct Outcome {
    head: u16,
    status_addr: Option<GuestAddress>,
    status: u8,
    data_len: u32,
    op: Option<Op>,
    bytes: u64,
}

/// Writes gathered from one drain, appended together: at most
/// `WRITE_BATCH_BYTES_MAX` of them, as the guest picks how many are in flight.
#[derive(Default)]
struct WriteBatch {
    indexes: Vec<usize>,
    items: Vec<Change>,
    bytes: u64,
}

impl WriteBatch {
    fn push(&mut self, index: usize, offset: u64, shadow: AlignedBuf) {
        self.bytes += shadow.len() as u64;
        self.indexes.push(index);
        self.items.push(Change::Write {
            offset,
            data: shadow,
        });
    }

    /// True when a write of `bytes` more would take the batch past its limit.
    fn is_full_for(&self, bytes: u64) -> bool {
        self.bytes + bytes > WRITE_BATCH_BYTES_MAX
    }
}

/// Reads gathered from one drain, run together (their ciphertext in
/// flight at once): each with the guest buffers it fills.
#[derive(Default)]
struct ReadBatch {
    indexes: Vec<usize>,
    requests: Vec<(u64, Vec<GuestBuffer>)>,
}

impl ReadBatch {
    /// True when one of `buffers` shares guest memory with a read already
    /// in the batch (the guest may point two reads at the same pages; they
    /// then run one after the other, as written).
    fn overlaps(&self, buffers: &[GuestBuffer]) -> bool {
        let ours = self.requests.iter().flat_map(|(_, bufs)| bufs.iter());
        ours.into_iter().any(|a| {
            buffers.iter().any(|b| {
                let (a0, b0) = (a.ptr as usize, b.ptr as usize);
                a0 < b0 + b.len && b0 < a0 + a.len
            })
        })
    }
}

/// Why an executed request failed: the host's fault, not the guest's.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HostError {
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("guest memory changed under the request: {0}")]
    Memory(String),
    #[error("no volume to serve with: {0}")]
    NoVolume(String),
    #[error("a read or write reached the single-request path instead of a batch")]
    Unbatched,
}

impl QueueWorker<'_> {
    /// Processes every chain now available on `vring`. Each is marked in
    /// flight (when the frontend tracks inflight I/O) before any is run.
    pub(crate) fn drain(&self, vring: &Vring, queue: &mut QueueState) -> io::Result<()> {
        let mem = self.memory.memory();
        let chains: Vec<Chain> = match vring.get_mut().get_queue_mut().iter(mem.clone()) {
            Ok(iter) => iter
                .map(|chain| Chain::from_descriptors(chain.head_index(), chain))
                .collect(),
            Err(error) => {
                // A corrupt avail ring: nothing on this queue can be trusted
                // until the driver resets it. Other queues carry on.
                self.shared
                    .guest_errors
                    .log(&format!("queue unusable: {error}"));
                return Ok(());
            }
        };
        if chains.is_empty() {
            return Ok(());
        }
        if let Some(inflight) = queue.inflight.as_mut() {
            for chain in &chains {
                inflight.mark(chain.head);
            }
        }
        let chains = self.hold_back(chains, queue);
        self.run(vring, queue, chains, &mem)
    }

    /// Brings the queue's inflight region up to date after the queue
    /// started, and runs what the previous backend left in flight before
    /// anything new (see `inflight`).
    pub(crate) fn resume(&self, vring: &Vring, queue: &mut QueueState) -> io::Result<()> {
        queue.resumed = true;
        let Some(inflight) = queue.inflight.as_mut() else {
            return Ok(());
        };
        let used = vring.queue_used_idx().map_err(io::Error::other)?;
        let resume = match inflight.start(used) {
            Ok(resume) => resume,
            Err(error) => {
                // Run without tracking rather than not at all.
                tracing::error!(%error, "inflight I/O tracking off for this queue");
                queue.inflight = None;
                return Ok(());
            }
        };
        if let Some(next_avail) = resume.next_avail {
            vring.set_queue_next_avail(next_avail);
        }
        if resume.resubmit.is_empty() {
            return Ok(());
        }
        tracing::info!(
            requests = resume.resubmit.len(),
            used_idx = used,
            "resubmitting the requests the previous backend left in flight"
        );
        let mem = self.memory.memory();
        let (table, size) = {
            let state = vring.get_ref();
            let q = state.get_queue();
            (GuestAddress(q.desc_table()), q.size())
        };
        let chains = resume
            .resubmit
            .into_iter()
            .map(|head| Chain::walk(&*mem, table, size, head))
            .collect();
        self.run(vring, queue, chains, &mem)
    }

    /// Runs the requests the test hook held back (when the queue stops).
    pub(crate) fn finish_held(&self, vring: &Vring, queue: &mut QueueState) -> io::Result<()> {
        let held = std::mem::take(&mut queue.held);
        if held.is_empty() {
            return Ok(());
        }
        let mem = self.memory.memory();
        self.run(vring, queue, held, &mem)
    }

    /// The test hook's hold-back: keeps the chosen chain for later.
    fn hold_back(&self, chains: Vec<Chain>, queue: &mut QueueState) -> Vec<Chain> {
        let (held, run): (Vec<Chain>, Vec<Chain>) = chains
            .into_iter()
            .partition(|c| self.shared.hold.take(c.head));
        queue.held.extend(held);
        run
    }

    /// Parses and executes `chains` in order, then completes them.
    fn run(
        &self,
        vring: &Vring,
        queue: &mut QueueState,
        chains: Vec<Chain>,
        mem: &GuestRam,
    ) -> io::Result<()> {
        let limits = DeviceLimits {
            capacity_sectors: self.shared.geometry.capacity_sectors,
            read_only: self.shared.options.read_only,
        };
        let started = Instant::now();
        if let Some(metrics) = self.metrics() {
            metrics.started(chains.len());
        }
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(chains.len());
        let mut writes = WriteBatch::default();
        let mut reads = ReadBatch::default();
        for chain in chains {
            let parsed = request::parse(&chain.descs, mem, limits);
            let index = outcomes.len();
            let (op, bytes) = match &parsed.request {
                Ok(request) => {
                    let (op, bytes) = op_and_bytes(request);
                    (Some(op), bytes)
                }
                Err(_) => (None, 0),
            };
            outcomes.push(Outcome {
                head: chain.head,
                status_addr: parsed.status,
                status: 0,
                data_len: 0,
                op,
                bytes,
            });
            match parsed.request {
                Err(error) => {
                    self.shared.guest_errors.log(&error.to_string());
                    outcomes[index].status = error.status();
                }
                // Writes wait to be appended together (one pwritev for the
                // whole batch); anything else runs after the writes before it.
                Ok(Request::Write {
                    sector,
                    data,
                    bytes,
                }) => {
                    self.run_reads(&mut reads, &mut outcomes);
                    // Before copying, not after: the copy is what the limit
                    // bounds (a ring of 4 MiB writes is gigabytes).
                    if writes.is_full_for(bytes) {
                        self.run_writes(&mut writes, &mut outcomes);
                    }
                    match gather(mem, &data, bytes) {
                        Ok(shadow) => writes.push(index, sector * SECTOR_BYTES, shadow),
                        Err(error) => outcomes[index].status = self.host_failure(&error),
                    }
                }
                // Reads wait to be run together, after the writes before them.
                Ok(Request::Read { sector, data, .. }) => {
                    self.run_writes(&mut writes, &mut outcomes);
                    match guest_buffers(mem, &data) {
                        Ok(buffers) => {
                            if reads.overlaps(&buffers) {
                                self.run_reads(&mut reads, &mut outcomes);
                            }
                            reads.indexes.push(index);
                            reads.requests.push((sector * SECTOR_BYTES, buffers));
                        }
                        Err(error) => outcomes[index].status = self.host_failure(&error),
                    }
                }
                Ok(other) => {
                    self.run_writes(&mut writes, &mut outcomes);
                    self.run_reads(&mut reads, &mut outcomes);
                    let (status, data_len) = match self.execute(&other, mem) {
                        Ok(data_len) => (VIRTIO_BLK_S_OK as u8, data_len),
                        Err(error) => (self.host_failure(&error), 0),
                    };
                    outcomes[index].status = status;
                    outcomes[index].data_len = data_len;
                }
            }
        }
        self.run_writes(&mut writes, &mut outcomes);
        self.run_reads(&mut reads, &mut outcomes);
        self.complete(vring, queue, &outcomes, mem, started)
    }

    /// This queue's counters.
    fn metrics(&self) -> Option<&super::metrics::QueueMetrics> {
        self.shared.metrics.queue(self.head.0)
    }

    /// Writes each status byte and publishes each used element, one at a
    /// time, each bracketed by the inflight region's completion steps.
    fn complete(
        &self,
        vring: &Vring,
        queue: &QueueState,
        outcomes: &[Outcome],
        mem: &GuestRam,
        started: Instant,
    ) -> io::Result<()> {
        let metrics = self.metrics();
        for outcome in outcomes {
            let used_len = self.write_status(outcome, mem);
            if let Some(inflight) = &queue.inflight {
                inflight.completing(outcome.head);
            }
            let used_idx = {
                let mut state = vring.get_mut();
                let q = state.get_queue_mut();
                q.add_used(mem, outcome.head, used_len)
                    .map_err(io::Error::other)?;
                q.next_used()
            };
            if let Some(inflight) = &queue.inflight {
                inflight.completed(outcome.head, used_idx);
            }
            if let Some(metrics) = metrics {
                let error = match (outcome.op, outcome.status == VIRTIO_BLK_S_OK as u8) {
                    (_, true) => None,
                    (None, false) => Some(ErrorKind::Guest),
                    (Some(_), false) => Some(ErrorKind::Host),
                };
                metrics.completed(outcome.op, outcome.bytes, started.elapsed(), error);
            }
        }
        self.shared.hold.completed(outcomes.len() as u64);
        if vring.needs_notification().map_err(io::Error::other)? {
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    /// Appends the pending writes as one batch and records their status.
    fn run_writes(&self, writes: &mut WriteBatch, outcomes: &mut [Outcome]) {
        if writes.items.is_empty() {
            return;
        }
        let WriteBatch { indexes, items, .. } = std::mem::take(writes);
        let status = match self
            .volume()
            .and_then(|volume| Ok(volume.write_batch(self.head, items)?))
            .and_then(|()| self.writethrough())
        {
            Ok(()) => VIRTIO_BLK_S_OK as u8,
            Err(error) => self.host_failure(&error),
        };
        for index in indexes {
            outcomes[index].status = status;
        }
    }

    /// Runs the pending reads as one batch and records their status.
    fn run_reads(&self, reads: &mut ReadBatch, outcomes: &mut [Outcome]) {
        if reads.requests.is_empty() {
            return;
        }
        let ReadBatch {
            indexes,
            mut requests,
        } = std::mem::take(reads);
        let results: Vec<Result<(), HostError>> = match &self.volume {
            Ok(volume) => {
                let offsets: Vec<u64> = requests.iter().map(|(offset, _)| *offset).collect();
                let mut slices: Vec<Vec<&mut [u8]>> = requests
                    .iter_mut()
                    .map(|(_, buffers)| buffers.iter_mut().map(|b| b.as_mut_slice()).collect())
                    .collect();
                let mut batch: Vec<ReadRequest<'_, '_>> = offsets
                    .into_iter()
                    .zip(slices.iter_mut())
                    .map(|(offset, bufs)| ReadRequest { offset, bufs })
                    .collect();
                let done = volume.read_batch(&mut batch);
                done.into_iter()
                    .map(|r| r.map_err(HostError::from))
                    .collect()
            }
            Err(reason) => requests
                .iter()
                .map(|_| Err(HostError::NoVolume(reason.clone())))
                .collect(),
        };
        for ((index, (_, buffers)), result) in indexes.into_iter().zip(&requests).zip(results) {
            match result {
                Ok(()) => {
                    // Written behind vm-memory's back: log the pages for a
                    // migration in progress.
                    for buffer in buffers {
                        buffer.dirty.mark_dirty(0, buffer.len);
                    }
                    outcomes[index].status = VIRTIO_BLK_S_OK as u8;
                    outcomes[index].data_len =
                        u32::try_from(outcomes[index].bytes).unwrap_or(u32::MAX);
                }
                Err(error) => outcomes[index].status = self.host_failure(&error),
            }
        }
    }

    fn volume(&self) -> Result<&Arc<Volume>, HostError> {
        self.volume
            .as_ref()
            .map_err(|reason| HostError::NoVolume(reason.clone()))
    }

    fn host_failure(&self, error: &HostError) -> u8 {
        self.shared.host_errors.log(&error.to_string());
        virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR as u8
    }

    /// Writes the status byte; returns the used length (bytes written to
    /// device-writable buffers, status included), 0 without a status byte.
    fn write_status(&self, outcome: &Outcome, mem: &GuestRam) -> u32 {
        let Some(status_addr) = outcome.status_addr else {
            return 0; // nowhere to write a status: the driver sees length 0
        };
        if mem.write_obj(outcome.status, status_addr).is_err() {
            self.shared
                .guest_errors
                .log("status byte outside guest memory");
            return 0;
        }
        let data_len = if outcome.status == VIRTIO_BLK_S_OK as u8 {
            outcome.data_len
        } else {
            0
        };
        data_len.saturating_add(1)
    }

    /// Executes a valid request; returns bytes written into guest buffers.
    fn execute(&self, request: &Request, mem: &GuestRam) -> Result<u32, HostError> {
        let volume = self.volume()?;
        match request {
            Request::Flush => {
                volume.flush()?;
                Ok(0)
            }
            Request::GetId { data } => {
                let serial = self.shared.options.serial;
                let len = (data.len as usize).min(SERIAL_BYTES);
                mem.write_slice(&serial[..len], data.addr)
                    .map_err(|e| HostError::Memory(e.to_string()))?;
                Ok(len as u32)
            }
            Request::Discard(ranges) => {
                let changes = ranges.iter().map(|range| Change::Discard {
                    offset: range_offset(range),
                    len: range_len(range),
                });
                volume.write_batch(self.head, changes.collect())?;
                self.writethrough()?;
                Ok(0)
            }
            Request::WriteZeroes(ranges) => {
                let changes = ranges.iter().map(|range| Change::WriteZeroes {
                    offset: range_offset(range),
                    len: range_len(range),
                    unmap: range.unmap,
                });
                volume.write_batch(self.head, changes.collect())?;
                self.writethrough()?;
                Ok(0)
            }
            // `run` gathers every read and write into a batch; one here is
            // a bug.
            Request::Read { .. } | Request::Write { .. } => Err(HostError::Unbatched),
        }
    }

    /// In writethrough mode (the guest cleared `wce`) a write is durable
    /// before it completes.
    fn writethrough(&self) -> Result<(), HostError> {
        if self.shared.wce.load(Ordering::Relaxed) == 0 {
            self.volume()?.flush()?;
        }
        Ok(())
    }
}

/// What the metrics count a request as: its type and the bytes it moves.
fn op_and_bytes(request: &Request) -> (Op, u64) {
    match request {
        Request::Read { bytes, .. } => (Op::Read, *bytes),
        Request::Write { bytes, .. } => (Op::Write, *bytes),
        Request::Flush => (Op::Flush, 0),
        Request::GetId { .. } => (Op::GetId, 0),
        Request::Discard(ranges) => (Op::Discard, ranges.iter().map(range_len).sum()),
        Request::WriteZeroes(ranges) => (Op::WriteZeroes, ranges.iter().map(range_len).sum()),
    }
}

fn range_offset(range: &SectorRange) -> u64 {
    range.sector * SECTOR_BYTES
}

fn range_len(range: &SectorRange) -> u64 {
    u64::from(range.sectors) * SECTOR_BYTES
}

/// A guest buffer as host memory, valid while the memory guard lives.
struct GuestBuffer {
    ptr: *mut u8,
    len: usize,
    /// Its region's dirty-page log, from the buffer's first byte.
    dirty: BitmapMmapRegion,
}

impl GuestBuffer {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr..ptr+len` lies inside a guest memory region mapped for
        // as long as the caller holds the memory guard (it does, for the whole
        // request), and the parser checked the range is in guest memory. The
        // guest may touch the same bytes concurrently; that is its own race on
        // its own buffer, and we never make decisions on values read back
        // from it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// Host views of the guest buffers `data` (split where they cross regions).
fn guest_buffers(mem: &GuestRam, data: &[Desc]) -> Result<Vec<GuestBuffer>, HostError> {
    let mut buffers = Vec::with_capacity(data.len());
    for desc in data {
        for slice in mem.get_slices(desc.addr, desc.len as usize) {
            let slice: VolatileSlice<'_, BitmapMmapRegion> =
                slice.map_err(|e| HostError::Memory(e.to_string()))?;
            let guard = slice.ptr_guard_mut();
            buffers.push(GuestBuffer {
                ptr: guard.as_ptr(),
                len: slice.len(),
                dirty: slice.bitmap().clone(),
            });
        }
    }
    Ok(buffers)
}

/// Copies the guest buffers `data` (`bytes` in all, the sum of their
/// lengths) into one aligned shadow buffer.
fn gather(mem: &GuestRam, data: &[Desc], bytes: u64) -> Result<AlignedBuf, HostError> {
    AlignedBuf::overwritten_by(bytes as usize, |shadow| {
        let mut at = 0usize;
        for desc in data {
            let len = desc.len as usize;
            mem.read_slice(&mut shadow[at..at + len], desc.addr)
                .map_err(|e| HostError::Memory(e.to_string()))?;
            at += len;
        }
        debug_assert_eq!(at, shadow.len());
        Ok(())
    })
}
