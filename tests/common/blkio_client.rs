//! A small synchronous libblkio client (the `blkio` crate, pure Rust) that
//! talks vhost-user-blk to a socket: what the tests and benchmarks use as the
//! "VMM". Every I/O buffer lives in one region shared with the device.
#![allow(dead_code)]

use std::mem::MaybeUninit;
use std::path::Path;
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};

/// Bytes of the shared buffer region.
pub const REGION_BYTES: usize = 16 << 20;

/// A connected libblkio instance with its queues and one shared region.
pub struct BlkClient {
    // Field order matters: queues and region go before the instance.
    pub queues: Vec<Blkioq>,
    region: MemoryRegion,
    blkio: Blkio,
}

/// A failed connection attempt: libblkio's errno (positive) and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectFailed {
    pub errno: i32,
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

/// A failed request: the negative errno libblkio reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoFailed(pub i32);

impl BlkClient {
    /// Connects to `socket` with `num_queues` queues, retrying while the
    /// socket is not there yet (up to `wait`).
    pub fn connect(socket: &Path, num_queues: i32, wait: Duration) -> Result<Self, String> {
        Self::connect_retrying(socket, num_queues, false, wait)
    }

    /// Like [`BlkClient::connect`], with libblkio's `read-only` property set:
    /// the only way libblkio starts on a device that offers VIRTIO_BLK_F_RO.
    pub fn connect_read_only(
        socket: &Path,
        num_queues: i32,
        wait: Duration,
    ) -> Result<Self, String> {
        Self::connect_retrying(socket, num_queues, true, wait)
    }

    fn connect_retrying(
        socket: &Path,
        num_queues: i32,
        read_only: bool,
        wait: Duration,
    ) -> Result<Self, String> {
        let deadline = Instant::now() + wait;
        loop {
            match Self::connect_once(socket, num_queues, read_only) {
                Ok(client) => return Ok(client),
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => return Err(format!("{}: {}", error.errno, error.message)),
            }
        }
    }

    /// One connection attempt, no retry: the errno tells why it failed
    /// (e.g. `EROFS` from a read-write start on a read-only device).
    pub fn connect_once(
        socket: &Path,
        num_queues: i32,
        read_only: bool,
    ) -> Result<Self, ConnectFailed> {
        let mut blkio = Blkio::new("virtio-blk-vhost-user")?;
        blkio.set_str("path", socket.to_str().unwrap())?;
        blkio.set_bool("read-only", read_only)?;
        blkio.connect()?;
        blkio.set_i32("num-queues", num_queues)?;
        let outcome = blkio.start()?;
        let region = blkio.alloc_mem_region(REGION_BYTES)?;
        blkio.map_mem_region(&region)?;
        Ok(Self {
            queues: outcome.queues,
            region,
            blkio,
        })
    }

    /// Disk size, bytes.
    pub fn capacity(&self) -> u64 {
        self.blkio.get_u64("capacity").unwrap()
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
        // SAFETY: the region is REGION_BYTES of memory owned by `blkio`,
        // mapped for as long as `self` lives; requests using it are complete
        // whenever this method can be called (every call below waits).
        unsafe { std::slice::from_raw_parts_mut(self.region.addr as *mut u8, self.region.len) }
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
        let slice_bytes = REGION_BYTES / self.queues.len();
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
        assert!(len <= REGION_BYTES);
        let ptr = self.buffer_ptr();
        self.queues[queue].read(offset, ptr, len, 0, ReqFlags::empty());
        self.wait_one(queue)?;
        Ok(self.buffer()[..len].to_vec())
    }

    /// Writes `data` at `offset` through `queue`.
    pub fn write(&mut self, queue: usize, offset: u64, data: &[u8]) -> Result<(), IoFailed> {
        assert!(data.len() <= REGION_BYTES);
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
        assert!(total <= REGION_BYTES, "{total} B do not fit the region");
        let base = self.buffer_ptr();
        let mut at = 0;
        for (index, (offset, data)) in writes.iter().enumerate() {
            self.buffer()[at..at + data.len()].copy_from_slice(data);
            // SAFETY: `at + len <= REGION_BYTES`, inside the region.
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
        assert!(len <= REGION_BYTES);
        let ptr = self.buffer_ptr();
        for (index, offset) in offsets.iter().enumerate() {
            self.queues[queue].write(*offset, ptr, len, index, ReqFlags::empty());
        }
        wait_all(&mut self.queues[queue], offsets.len())
    }

    /// Flushes through `queue`.
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
}
