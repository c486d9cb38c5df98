//! A libblkio client (the `blkio` crate, pure Rust) that talks
//! vhost-user-blk to a socket: the "VMM" of the tests and benchmarks. Every
//! I/O buffer lives in one region of memory shared with the device.
//!
//! Two ways to drive it: one request at a time, waited for
//! ([`BlkClient::read`], [`BlkClient::write`], ...: the tests), or many in
//! flight, each in a slot of the region ([`BlkClient::submit`] and
//! [`BlkClient::reap`]: the load generators of the benchmarks).

use std::mem::MaybeUninit;
use std::path::Path;
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use lsvblk::limits::REQUEST_BYTES_MAX;

use super::rng::Rng;

/// Bytes of the shared buffer region unless told otherwise.
pub const REGION_BYTES: usize = 16 << 20;
/// Between two connection attempts.
const CONNECT_RETRY: Duration = Duration::from_millis(20);

/// How to connect.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// Virtqueues to ask for.
    pub num_queues: i32,
    /// Descriptors per virtqueue (`None`: libblkio's default, 256).
    pub queue_size: Option<i32>,
    /// libblkio's `read-only` property: the only way it starts on a device
    /// that offers VIRTIO_BLK_F_RO.
    pub read_only: bool,
    /// Bytes of the shared buffer region: the most data in flight at once.
    pub region_bytes: usize,
}

impl ClientOptions {
    /// `num_queues` queues of the default size, read-write, a region of
    /// [`REGION_BYTES`].
    pub fn queues(num_queues: i32) -> Self {
        ClientOptions {
            num_queues,
            queue_size: None,
            read_only: false,
            region_bytes: REGION_BYTES,
        }
    }
}

/// A connected libblkio instance with its queues and one shared region.
pub struct BlkClient {
    // Field order matters: queues and region go before the instance.
    queues: Vec<Blkioq>,
    region: MemoryRegion,
    blkio: Blkio,
    capacity: u64,
}

/// A failed connection attempt: libblkio's errno (positive) and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectFailed {
    /// The errno, e.g. `EROFS` from a read-write start on a read-only device.
    pub errno: i32,
    /// libblkio's message.
    pub message: String,
}

impl From<blkio::Error> for ConnectFailed {
    fn from(error: blkio::Error) -> Self {
        Self {
            errno: error.errno().raw_os_error(),
            message: error.message().to_string(),
        }
    }
}

impl std::fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.errno, self.message)
    }
}

/// A failed request: the negative errno libblkio reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoFailed(pub i32);

impl BlkClient {
    /// Connects to `socket` with `num_queues` queues, retrying while the
    /// socket is not there yet (up to `wait`).
    pub fn connect(socket: &Path, num_queues: i32, wait: Duration) -> Result<Self, String> {
        Self::connect_retrying(socket, &ClientOptions::queues(num_queues), wait, &mut || {})
    }

    /// Like [`BlkClient::connect`], with libblkio's `read-only` property set.
    pub fn connect_read_only(
        socket: &Path,
        num_queues: i32,
        wait: Duration,
    ) -> Result<Self, String> {
        let options = ClientOptions {
            read_only: true,
            ..ClientOptions::queues(num_queues)
        };
        Self::connect_retrying(socket, &options, wait, &mut || {})
    }

    /// One connection attempt, no retry: the errno tells why it failed
    /// (e.g. `EROFS` from a read-write start on a read-only device).
    pub fn connect_once(
        socket: &Path,
        num_queues: i32,
        read_only: bool,
    ) -> Result<Self, ConnectFailed> {
        let options = ClientOptions {
            read_only,
            ..ClientOptions::queues(num_queues)
        };
        Self::connect_with(socket, &options)
    }

    /// Connects with `options`, retrying for up to `wait`; before each retry
    /// it calls `between_tries`, which may panic to give up early (say,
    /// because the server died).
    pub fn connect_retrying(
        socket: &Path,
        options: &ClientOptions,
        wait: Duration,
        between_tries: &mut dyn FnMut(),
    ) -> Result<Self, String> {
        let deadline = Instant::now() + wait;
        loop {
            match Self::connect_with(socket, options) {
                Ok(client) => return Ok(client),
                Err(_) if Instant::now() < deadline => {
                    between_tries();
                    std::thread::sleep(CONNECT_RETRY);
                }
                Err(error) => return Err(error.to_string()),
            }
        }
    }

    /// One connection attempt with `options`.
    pub fn connect_with(socket: &Path, options: &ClientOptions) -> Result<Self, ConnectFailed> {
        let mut blkio = Blkio::new("virtio-blk-vhost-user")?;
        blkio.set_str("path", socket.to_str().expect("utf-8 path"))?;
        blkio.set_bool("read-only", options.read_only)?;
        blkio.connect()?;
        blkio.set_i32("num-queues", options.num_queues)?;
        if let Some(size) = options.queue_size {
            blkio.set_i32("queue-size", size)?;
        }
        let outcome = blkio.start()?;
        let region = blkio.alloc_mem_region(options.region_bytes)?;
        blkio.map_mem_region(&region)?;
        let capacity = blkio.get_u64("capacity")?;
        Ok(Self {
            queues: outcome.queues,
            region,
            blkio,
            capacity,
        })
    }

    /// Disk size, bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// An integer property (e.g. "request-alignment", "optimal-io-alignment").
    pub fn get_i32(&self, name: &str) -> i32 {
        self.blkio.get_i32(name).unwrap()
    }

    /// A property of the device (e.g. "read-only" as bool).
    pub fn get_bool(&self, name: &str) -> bool {
        self.blkio.get_bool(name).unwrap()
    }

    /// The shared buffer region as a slice.
    pub fn buffer(&mut self) -> &mut [u8] {
        // SAFETY: the region is `region.len` bytes of memory owned by
        // `blkio`, mapped for as long as `self` lives; the `&mut self`
        // borrow keeps requests from being submitted while the slice lives,
        // and the device writes only into buffers of requests in flight,
        // which callers do not look at before they complete.
        unsafe { std::slice::from_raw_parts_mut(self.region.addr as *mut u8, self.region.len) }
    }

    /// Fills the region with data from `Rng(seed)`: incompressible-looking
    /// data for every write, so that no backend can take a shortcut for
    /// zeros.
    pub fn randomize_region(&mut self, seed: u64) {
        Rng(seed).fill(self.buffer());
    }

    fn buffer_ptr(&self) -> *mut u8 {
        self.region.addr as *mut u8
    }

    fn wait_one(&mut self, queue: usize) -> Result<(), IoFailed> {
        wait_one(&mut self.queues[queue])
    }

    /// Each queue with its own equal slice of the shared region, so that
    /// each can be driven from a thread of its own (`Blkioq` is `Send`).
    pub fn queue_ios(&mut self) -> Vec<QueueIo<'_>> {
        let slice_bytes = self.region.len / self.queues.len();
        // SAFETY: as in `buffer`; the `&mut self` borrow keeps every other
        // use of the region out while the slices live.
        let region =
            unsafe { std::slice::from_raw_parts_mut(self.region.addr as *mut u8, self.region.len) };
        self.queues
            .iter_mut()
            .zip(region.chunks_exact_mut(slice_bytes))
            .map(|(queue, buffer)| QueueIo { queue, buffer })
            .collect()
    }

    /// Reads `len` bytes at `offset` through `queue`.
    pub fn read(&mut self, queue: usize, offset: u64, len: usize) -> Result<Vec<u8>, IoFailed> {
        assert!(len <= self.region.len);
        let ptr = self.buffer_ptr();
        self.queues[queue].read(offset, ptr, len, 0, ReqFlags::empty());
        self.wait_one(queue)?;
        Ok(self.buffer()[..len].to_vec())
    }

    /// Reads `len` bytes at `offset` through `queue`, in requests the device
    /// takes (at most `REQUEST_BYTES_MAX`); the error names the offset of
    /// the request that failed.
    pub fn read_large(&mut self, queue: usize, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(len as usize);
        let mut at = offset;
        while at < offset + len {
            let piece = (offset + len - at).min(REQUEST_BYTES_MAX);
            let data = self
                .read(queue, at, piece as usize)
                .map_err(|e| format!("read at {at}: {e:?}"))?;
            out.extend(data);
            at += piece;
        }
        Ok(out)
    }

    /// Writes `data` at `offset` through `queue`.
    pub fn write(&mut self, queue: usize, offset: u64, data: &[u8]) -> Result<(), IoFailed> {
        assert!(data.len() <= self.region.len);
        self.buffer()[..data.len()].copy_from_slice(data);
        let ptr = self.buffer_ptr();
        self.queues[queue].write(offset, ptr, data.len(), 0, ReqFlags::empty());
        self.wait_one(queue)
    }

    /// Submits every write on `queue` before waiting for any (a deep queue,
    /// as a guest keeps one), each from its own part of the region; returns
    /// each write's result, in order.
    pub fn write_at_once(
        &mut self,
        queue: usize,
        writes: &[(u64, Vec<u8>)],
    ) -> Vec<Result<(), IoFailed>> {
        self.submit_writes(queue, writes);
        wait_all(&mut self.queues[queue], writes.len())
    }

    /// Submits every write on `queue` (as [`BlkClient::write_at_once`]) and
    /// returns without waiting: what a VMM leaves behind when it dies.
    pub fn submit_writes(&mut self, queue: usize, writes: &[(u64, Vec<u8>)]) {
        let total: usize = writes.iter().map(|(_, data)| data.len()).sum();
        assert!(total <= self.region.len, "{total} B do not fit the region");
        let base = self.buffer_ptr();
        let mut at = 0;
        for (index, (offset, data)) in writes.iter().enumerate() {
            self.buffer()[at..at + data.len()].copy_from_slice(data);
            // SAFETY: `at + len <= region.len`, inside the region.
            let ptr = unsafe { base.add(at) };
            self.queues[queue].write(*offset, ptr, data.len(), index, ReqFlags::empty());
            at += data.len();
        }
        // Hand the requests to the device now (min_completions 0: no wait).
        let mut none: [MaybeUninit<Completion>; 0] = [];
        self.queues[queue]
            .do_io(&mut none, 0, None, None)
            .expect("do_io");
    }

    /// Writes the first `len` bytes of the region at each of `offsets`, all
    /// submitted before waiting for any: a deep queue of large writes, more
    /// than the region could hold one by one. Returns each write's result.
    pub fn write_region_at_once(
        &mut self,
        queue: usize,
        offsets: &[u64],
        len: usize,
    ) -> Vec<Result<(), IoFailed>> {
        assert!(len <= self.region.len);
        let ptr = self.buffer_ptr();
        for (index, offset) in offsets.iter().enumerate() {
            self.queues[queue].write(*offset, ptr, len, index, ReqFlags::empty());
        }
        wait_all(&mut self.queues[queue], offsets.len())
    }

    /// Flushes through `queue` (with nothing else in flight there).
    pub fn flush(&mut self, queue: usize) -> Result<(), IoFailed> {
        self.queues[queue].flush(0, ReqFlags::empty());
        self.wait_one(queue)
    }

    /// Discards a range through `queue`.
    pub fn discard(&mut self, queue: usize, offset: u64, len: u64) -> Result<(), IoFailed> {
        self.queues[queue].discard(offset, len, 0, ReqFlags::empty());
        self.wait_one(queue)
    }

    /// Writes zeros over a range through `queue` (`unmap`: may deallocate).
    pub fn write_zeroes(
        &mut self,
        queue: usize,
        offset: u64,
        len: u64,
        unmap: bool,
    ) -> Result<(), IoFailed> {
        let flags = if unmap {
            ReqFlags::empty()
        } else {
            ReqFlags::NO_UNMAP
        };
        self.queues[queue].write_zeroes(offset, len, 0, flags);
        self.wait_one(queue)
    }

    /// The buffer of `slot` when the region is cut into slots of `len`
    /// bytes: what a request submitted in that slot writes, or has read.
    pub fn slot(&mut self, slot: usize, len: usize) -> &mut [u8] {
        assert!((slot + 1) * len <= self.region.len, "region too small");
        &mut self.buffer()[slot * len..(slot + 1) * len]
    }

    /// Queues a read or write of `len` bytes at `offset` on `queue`, from or
    /// into the buffer of `slot` (slots of `len` bytes), with the slot as
    /// user data; [`BlkClient::reap`] tells when it is done.
    pub fn submit(&mut self, queue: usize, write: bool, slot: usize, offset: u64, len: usize) {
        assert!((slot + 1) * len <= self.region.len, "region too small");
        // SAFETY: inside the region, as just checked.
        let buf = unsafe { self.buffer_ptr().add(slot * len) };
        if write {
            self.queues[queue].write(offset, buf, len, slot, ReqFlags::empty());
        } else {
            self.queues[queue].read(offset, buf, len, slot, ReqFlags::empty());
        }
    }

    /// Like [`BlkClient::submit`] for requests of any size: the region is
    /// cut into slots of `slot_bytes`, and the request moves `len` bytes
    /// (at most `slot_bytes`) from or into the start of `slot`.
    pub fn submit_sized(
        &mut self,
        queue: usize,
        write: bool,
        (slot, slot_bytes): (usize, usize),
        offset: u64,
        len: usize,
    ) {
        assert!(len <= slot_bytes, "request larger than its slot");
        assert!(
            (slot + 1) * slot_bytes <= self.region.len,
            "region too small"
        );
        // SAFETY: inside the region, as just checked.
        let buf = unsafe { self.buffer_ptr().add(slot * slot_bytes) };
        if write {
            self.queues[queue].write(offset, buf, len, slot, ReqFlags::empty());
        } else {
            self.queues[queue].read(offset, buf, len, slot, ReqFlags::empty());
        }
    }

    /// Writes the whole disk through `queue`, `request_bytes` at a time with
    /// `qd` requests in flight, each from its slot of the region as the
    /// region is (see [`BlkClient::randomize_region`]); then FLUSH. Panics if
    /// a request fails. Returns the seconds it took, FLUSH included.
    pub fn write_whole_disk(&mut self, queue: usize, request_bytes: usize, qd: usize) -> f64 {
        let capacity = self.capacity;
        let start = Instant::now();
        let mut next = 0u64;
        let mut in_flight = 0;
        let mut completions = completions(qd);
        let mut free: Vec<usize> = (0..qd).collect();
        while in_flight > 0 || next < capacity {
            for slot in free.drain(..) {
                if next < capacity {
                    let len = request_bytes.min((capacity - next) as usize);
                    self.submit(queue, true, slot, next, len);
                    next += len as u64;
                    in_flight += 1;
                }
            }
            if in_flight > 0 {
                let done = self.reap_ok(queue, &mut completions, "writing the whole disk");
                in_flight -= done.len();
                free.extend(done);
            }
        }
        if let Err(error) = self.flush(queue) {
            panic!("FLUSH after writing the whole disk: {error:?}");
        }
        start.elapsed().as_secs_f64()
    }

    /// Hands what was submitted on `queue` to the device and waits for at
    /// least one completion: (user data, result) of each, the result
    /// negative (an errno) for a failed request.
    pub fn reap(
        &mut self,
        queue: usize,
        completions: &mut [MaybeUninit<Completion>],
    ) -> Vec<(usize, i32)> {
        reap_queue(&mut self.queues[queue], completions)
    }

    /// [`BlkClient::reap`] for a load no request of which may fail: the
    /// user data of each completion; panics, naming `what`, on a failure.
    pub fn reap_ok(
        &mut self,
        queue: usize,
        completions: &mut [MaybeUninit<Completion>],
        what: &str,
    ) -> Vec<usize> {
        let reaped = self.reap(queue, completions);
        reaped
            .into_iter()
            .map(|(user_data, ret)| {
                assert!(ret >= 0, "{what}: request failed: {ret}");
                user_data
            })
            .collect()
    }
}

/// Hands what was submitted on `queue` to the device and waits for at
/// least one completion: (user data, result) of each.
fn reap_queue(
    queue: &mut Blkioq,
    completions: &mut [MaybeUninit<Completion>],
) -> Vec<(usize, i32)> {
    let done = queue
        .do_io(completions, 1, None, None)
        .unwrap_or_else(|e| panic!("do_io: {}", e.message()));
    completions[..done]
        .iter()
        .map(|c| {
            // SAFETY: do_io initialised the first `done` completions.
            let c = unsafe { c.assume_init_ref() };
            (c.user_data, c.ret)
        })
        .collect()
}

/// Room for `count` completions, for [`BlkClient::reap`].
pub fn completions(count: usize) -> Vec<MaybeUninit<Completion>> {
    (0..count).map(|_| MaybeUninit::uninit()).collect()
}

// Threads drive queues of one client: that needs `Blkioq: Send`.
const _: fn() = assert_send::<Blkioq>;
fn assert_send<T: Send>() {}

/// Submits nothing; waits for one completion on `queue`.
fn wait_one(queue: &mut Blkioq) -> Result<(), IoFailed> {
    let mut completions = [const { MaybeUninit::<Completion>::uninit() }; 1];
    let done = queue.do_io(&mut completions, 1, None, None).expect("do_io");
    assert_eq!(done, 1);
    // SAFETY: do_io initialised `done` completions.
    let ret = unsafe { completions[0].assume_init_ref().ret };
    if ret < 0 { Err(IoFailed(ret)) } else { Ok(()) }
}

/// Waits for `count` completions on `queue`, whose requests carry their
/// index as user data; returns each request's result by index.
fn wait_all(queue: &mut Blkioq, count: usize) -> Vec<Result<(), IoFailed>> {
    let mut results = vec![None; count];
    let mut completions = [const { MaybeUninit::<Completion>::uninit() }; 64];
    let mut left = count;
    while left > 0 {
        let done = queue.do_io(&mut completions, 1, None, None).expect("do_io");
        for completion in &completions[..done] {
            // SAFETY: do_io initialised the first `done` completions.
            let completion = unsafe { completion.assume_init_ref() };
            let result = if completion.ret < 0 {
                Err(IoFailed(completion.ret))
            } else {
                Ok(())
            };
            assert!(results[completion.user_data].replace(result).is_none());
        }
        left -= done;
    }
    results.into_iter().map(Option::unwrap).collect()
}

/// One queue of a [`BlkClient`] with its own slice of the shared region.
pub struct QueueIo<'a> {
    queue: &'a mut Blkioq,
    buffer: &'a mut [u8],
}

impl QueueIo<'_> {
    /// Bytes of this queue's slice: the largest request it can carry.
    pub fn buffer_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, IoFailed> {
        assert!(len <= self.buffer.len());
        let ptr = self.buffer.as_mut_ptr();
        self.queue.read(offset, ptr, len, 0, ReqFlags::empty());
        wait_one(self.queue)?;
        Ok(self.buffer[..len].to_vec())
    }

    /// Writes `data` at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), IoFailed> {
        assert!(data.len() <= self.buffer.len());
        self.buffer[..data.len()].copy_from_slice(data);
        let ptr = self.buffer.as_mut_ptr();
        self.queue
            .write(offset, ptr, data.len(), 0, ReqFlags::empty());
        wait_one(self.queue)
    }

    /// Queues a read or write of `len` bytes at `offset` from slot `slot`
    /// of this queue's slice (bytes `slot * len ..`), with `slot` as its
    /// user data, as [`BlkClient::submit`] does for the whole region.
    pub fn submit(&mut self, write: bool, slot: usize, offset: u64, len: usize) {
        let buf = self.buffer[slot * len..(slot + 1) * len].as_mut_ptr();
        if write {
            self.queue.write(offset, buf, len, slot, ReqFlags::empty());
        } else {
            self.queue.read(offset, buf, len, slot, ReqFlags::empty());
        }
    }

    /// Hands what was submitted to the device and waits for at least one
    /// completion; the user data of each. Panics, naming `what`, if a
    /// request failed.
    pub fn reap_ok(
        &mut self,
        completions: &mut [MaybeUninit<Completion>],
        what: &str,
    ) -> Vec<usize> {
        reap_queue(self.queue, completions)
            .into_iter()
            .map(|(user_data, ret)| {
                assert!(ret >= 0, "{what}: request failed: {ret}");
                user_data
            })
            .collect()
    }
}
