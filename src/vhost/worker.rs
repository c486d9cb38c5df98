//! Draining one virtqueue: pop every available chain, parse it, execute it
//! against the volume, write its status byte, and return it to the driver.
//!
//! Reads land in guest memory and are decrypted there, in place; writes are
//! copied once out of guest memory into an aligned shadow buffer that is
//! encrypted in place and written to the log as it is (guest memory is
//! never modified by a write).
//!
//! Reads and writes go out in batches (jobs) through the queue's lane
//! (`pipeline`): in direct mode several at once, each completing on its
//! own; any other request waits for every job in flight before it runs
//! (a FLUSH so covers every write completed before it).

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use vhost_user_backend::VringT;
use virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};

use super::batch::{ReadBatch, WriteBatch, gather, guest_buffers};
use super::chain::Chain;
use super::completion::{Completer, Outcome};
use super::metrics::Op;
use super::pipeline::Lane;
use super::request::{self, DeviceLimits, Request, SECTOR_BYTES, SERIAL_BYTES, SectorRange};
use super::state::{GuestMemory, GuestRam, QueueState, Shared, Vring};
use crate::limits::{QUEUE_JOB_BYTES, QUEUE_JOB_READS, QUEUE_JOBS_IN_FLIGHT};
use crate::store::{HeadId, IoMode};
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

/// What one `run` has gathered and not yet handed to the lane.
#[derive(Default)]
struct Pending {
    writes: WriteBatch,
    reads: ReadBatch,
    /// Requests already finished (invalid ones, and those run here).
    ready: Vec<Outcome>,
}

impl<'w> QueueWorker<'w> {
    /// How many jobs of this queue may be in flight at once: several in
    /// direct mode, where the device and the CPU would otherwise take
    /// turns; one (run here) in buffered mode, where the page cache
    /// already overlaps them.
    pub(crate) fn depth(&self) -> usize {
        match &self.volume {
            Ok(volume) if volume.io_mode() == IoMode::Direct => QUEUE_JOBS_IN_FLIGHT,
            _ => 1,
        }
    }

    /// Processes every chain now available on `vring`. Each is marked in
    /// flight (when the frontend tracks inflight I/O) before any is run.
    /// False when the queue cannot be used (not ready, or its avail ring
    /// unreadable): the caller stops draining it until the driver kicks or
    /// resets it, instead of spinning on it.
    pub(crate) fn drain<'env>(
        &'env self,
        vring: &Vring,
        held: &mut Vec<Chain>,
        lane: &mut Lane<'env>,
        completer: &'env Completer<'env>,
    ) -> io::Result<bool> {
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
                return Ok(false);
            }
        };
        if chains.is_empty() {
            return Ok(true);
        }
        completer.mark(chains.iter().map(|chain| chain.head));
        let chains = self.hold_back(chains, held);
        self.run(chains, lane, completer)?;
        Ok(true)
    }

    /// Brings the queue's inflight region up to date after the queue
    /// started; returns what the previous backend left in flight, to run
    /// before anything new (see `inflight`).
    pub(crate) fn resume(&self, vring: &Vring, queue: &mut QueueState) -> io::Result<Vec<Chain>> {
        queue.resumed = true;
        let Some(inflight) = queue.inflight.as_mut() else {
            return Ok(Vec::new());
        };
        let used = vring.queue_used_idx().map_err(io::Error::other)?;
        let resume = match inflight.start(used) {
            Ok(resume) => resume,
            Err(error) => {
                // Run without tracking rather than not at all.
                tracing::error!(%error, "inflight I/O tracking off for this queue");
                queue.inflight = None;
                return Ok(Vec::new());
            }
        };
        if let Some(next_avail) = resume.next_avail {
            vring.set_queue_next_avail(next_avail);
        }
        if resume.resubmit.is_empty() {
            return Ok(Vec::new());
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
        Ok(resume
            .resubmit
            .into_iter()
            .map(|head| Chain::walk(&*mem, table, size, head))
            .collect())
    }

    /// The test hook's hold-back: keeps the chosen chain for later.
    fn hold_back(&self, chains: Vec<Chain>, held: &mut Vec<Chain>) -> Vec<Chain> {
        let (hold, run): (Vec<Chain>, Vec<Chain>) = chains
            .into_iter()
            .partition(|c| self.shared.hold.take(c.head));
        held.extend(hold);
        run
    }

    /// Parses `chains` in order and hands their reads and writes to `lane`
    /// in batches; runs anything else here once the jobs before it are
    /// done. Returns once every request is handed over or finished.
    pub(crate) fn run<'env>(
        &'env self,
        chains: Vec<Chain>,
        lane: &mut Lane<'env>,
        completer: &'env Completer<'env>,
    ) -> io::Result<()> {
        let mem = self.memory.memory();
        let mem: &GuestRam = &mem;
        let limits = DeviceLimits {
            capacity_sectors: self.shared.geometry.capacity_sectors,
            read_only: self.shared.options.read_only,
        };
        let started = Instant::now();
        if let Some(metrics) = self.shared.metrics.queue(self.head.0) {
            metrics.started(chains.len());
        }
        // Jobs are cut smaller when they run beside each other.
        let pipelined = !lane.runs_inline(false);
        let mut pending = Pending::default();
        for chain in chains {
            let parsed = request::parse(&chain.descs, mem, limits);
            let (op, bytes) = match &parsed.request {
                Ok(request) => {
                    let (op, bytes) = op_and_bytes(request);
                    (Some(op), bytes)
                }
                Err(_) => (None, 0),
            };
            let mut outcome = Outcome {
                head: chain.head,
                status_addr: parsed.status,
                status: 0,
                data_len: 0,
                op,
                bytes,
                started,
            };
            match parsed.request {
                Err(error) => {
                    self.shared.guest_errors.log(&error.to_string());
                    outcome.status = error.status();
                    pending.ready.push(outcome);
                }
                // Writes wait to be appended together (one append for the
                // batch); anything else goes after the writes before it.
                Ok(Request::Write {
                    sector,
                    data,
                    bytes,
                }) => {
                    self.send_reads(&mut pending, lane, completer, false);
                    // Before copying, not after: the copy is what the limit
                    // bounds (a ring of 4 MiB writes is gigabytes).
                    if pending.writes.is_full_for(bytes)
                        || (pipelined && pending.writes.bytes >= QUEUE_JOB_BYTES)
                    {
                        self.send_writes(&mut pending, lane, completer, false);
                    }
                    match gather(mem, &data, bytes) {
                        Ok(shadow) => pending.writes.push(outcome, sector * SECTOR_BYTES, shadow),
                        Err(error) => {
                            outcome.status = self.host_failure(&error);
                            pending.ready.push(outcome);
                        }
                    }
                }
                // Reads wait to be run together, after the writes before them.
                Ok(Request::Read { sector, data, .. }) => {
                    self.send_writes(&mut pending, lane, completer, false);
                    match guest_buffers(mem, &data) {
                        Ok(buffers) => {
                            if pending.reads.overlaps(&buffers)
                                || (pipelined
                                    && (pending.reads.outcomes.len() >= QUEUE_JOB_READS
                                        || pending.reads.bytes >= QUEUE_JOB_BYTES))
                            {
                                self.send_reads(&mut pending, lane, completer, false);
                            }
                            // The guest pointed this read at memory a read
                            // in flight fills: it waits for it.
                            if buffers.iter().any(|b| lane.fills(b.ptr as usize, b.len)) {
                                lane.wait_all();
                            }
                            pending.reads.push(outcome, sector * SECTOR_BYTES, buffers);
                        }
                        Err(error) => {
                            outcome.status = self.host_failure(&error);
                            pending.ready.push(outcome);
                        }
                    }
                }
                Ok(other) => {
                    self.send_writes(&mut pending, lane, completer, false);
                    self.send_reads(&mut pending, lane, completer, false);
                    // A FLUSH covers every write completed before it: wait
                    // for the writes in flight (and keep the order of
                    // discards and write-zeroes with the writes around them).
                    lane.wait_all();
                    match self.execute(&other, mem) {
                        Ok(data_len) => {
                            outcome.status = VIRTIO_BLK_S_OK as u8;
                            outcome.data_len = data_len;
                        }
                        Err(error) => outcome.status = self.host_failure(&error),
                    }
                    pending.ready.push(outcome);
                }
            }
        }
        // At most one of the two is pending here (each sends the other).
        self.send_writes(&mut pending, lane, completer, true);
        self.send_reads(&mut pending, lane, completer, true);
        completer.publish(&pending.ready)
    }

    /// Hands the pending writes to the lane as one job (`last`: the run's
    /// last, which runs here when nothing else is in flight).
    fn send_writes<'env>(
        &'env self,
        pending: &mut Pending,
        lane: &mut Lane<'env>,
        completer: &'env Completer<'env>,
        last: bool,
    ) {
        if pending.writes.outcomes.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut pending.writes);
        if lane.runs_inline(last) {
            pending.ready.extend(self.run_writes(batch));
            return;
        }
        lane.dispatch(Box::new(move || {
            let outcomes = self.run_writes(batch);
            if let Err(error) = completer.publish(&outcomes) {
                tracing::error!(%error, "cannot complete a queue's writes");
            }
        }));
    }

    /// Hands the pending reads to the lane as one job (see `send_writes`).
    fn send_reads<'env>(
        &'env self,
        pending: &mut Pending,
        lane: &mut Lane<'env>,
        completer: &'env Completer<'env>,
        last: bool,
    ) {
        if pending.reads.outcomes.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut pending.reads);
        if lane.runs_inline(last) {
            pending.ready.extend(self.run_reads(batch));
            return;
        }
        lane.filling(batch.ranges());
        lane.dispatch(Box::new(move || {
            let outcomes = self.run_reads(batch);
            if let Err(error) = completer.publish(&outcomes) {
                tracing::error!(%error, "cannot complete a queue's reads");
            }
        }));
    }

    /// Appends `batch`'s writes as one and returns their outcomes.
    fn run_writes(&self, batch: WriteBatch) -> Vec<Outcome> {
        let WriteBatch {
            mut outcomes,
            items,
            ..
        } = batch;
        let status = match self
            .volume()
            .and_then(|volume| Ok(volume.write_batch(self.head, items)?))
            .and_then(|()| self.writethrough())
        {
            Ok(()) => VIRTIO_BLK_S_OK as u8,
            Err(error) => self.host_failure(&error),
        };
        for outcome in &mut outcomes {
            outcome.status = status;
        }
        outcomes
    }

    /// Runs `batch`'s reads as one and returns their outcomes.
    fn run_reads(&self, batch: ReadBatch) -> Vec<Outcome> {
        let ReadBatch {
            mut outcomes,
            mut requests,
            ..
        } = batch;
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
        for ((outcome, (_, buffers)), result) in outcomes.iter_mut().zip(&requests).zip(results) {
            match result {
                Ok(()) => {
                    // Written behind vm-memory's back: log the pages for a
                    // migration in progress.
                    for buffer in buffers {
                        buffer.dirty.mark_dirty(0, buffer.len);
                    }
                    outcome.status = VIRTIO_BLK_S_OK as u8;
                    outcome.data_len = u32::try_from(outcome.bytes).unwrap_or(u32::MAX);
                }
                Err(error) => outcome.status = self.host_failure(&error),
            }
        }
        outcomes
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
