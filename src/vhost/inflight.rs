//! Inflight I/O tracking: the shared memory area a vhost-user frontend keeps
//! for its backend (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`), so that a
//! restarted backend learns which requests its predecessor took off the ring
//! and never completed, and in which order it took them.
//!
//! The backend allocates the area (`GET_INFLIGHT_FD`), the frontend keeps the
//! file and hands it to every backend that connects (`SET_INFLIGHT_FD`), so it
//! survives a backend crash. One region per queue, split virtqueues, laid out
//! as the vhost-user specification ("Inflight I/O tracking") describes and
//! QEMU's libvhost-user and DPDK implement; all integers little-endian, each
//! region 64-byte aligned and [`queue_region_bytes`] long:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8 | features (0) |
//! | 8  | 2 | version: 1; 0 = not initialised yet (new area, device reset) |
//! | 10 | 2 | desc_num: the queue size |
//! | 12 | 2 | last_batch_head: head of the last completed batch |
//! | 14 | 2 | used_idx: the used ring's `idx` after the last completed batch |
//! | 16 + 16·i | 16 | descriptor `i`: inflight (u8, 0/1), 5 padding bytes, next (u16: the batch list), counter (u64: fetch order) |
//!
//! The protocol, per queue:
//! - fetch: every chain taken off the avail ring is marked (`counter` = the
//!   queue's next counter value, then `inflight` = 1) before any of them is
//!   executed, in the order they were taken;
//! - complete (a batch of one chain, as libvhost-user does): `last_batch_head`
//!   = head, publish the used element (the used ring's `idx` moves), then
//!   `inflight` = 0 and `used_idx` = the used ring's `idx`;
//! - start (after a restart): if `used_idx` lags the used ring's `idx`, the
//!   backend died inside a completion: the lagging entries of the batch list
//!   from `last_batch_head` were completed, clear them. Every head still marked
//!   is resubmitted, oldest `counter` first, and the next avail index is the
//!   used ring's `idx` plus their number (the frontend's own guess, the used
//!   index, is right only if no request was in flight).
//!
//! The area comes from the frontend, so every index read from it is checked:
//! a damaged area is an [`InflightError`], never a panic.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU64, Ordering};

/// Bytes of a queue region's header.
pub const QUEUE_HEADER_BYTES: usize = 16;
/// Bytes of one descriptor's state.
pub const DESC_STATE_BYTES: usize = 16;
/// Queue regions start at multiples of this.
pub const REGION_ALIGN: usize = 64;
/// The layout version this module reads and writes.
pub const VERSION: u16 = 1;

const VERSION_OFFSET: usize = 8;
const DESC_NUM_OFFSET: usize = 10;
const LAST_BATCH_HEAD_OFFSET: usize = 12;
const USED_IDX_OFFSET: usize = 14;
const DESC_INFLIGHT_OFFSET: usize = 0;
const DESC_NEXT_OFFSET: usize = 6;
const DESC_COUNTER_OFFSET: usize = 8;

/// Bytes one queue of `queue_size` descriptors takes in the area.
pub fn queue_region_bytes(queue_size: u16) -> usize {
    let bytes = QUEUE_HEADER_BYTES + DESC_STATE_BYTES * usize::from(queue_size);
    bytes.div_ceil(REGION_ALIGN) * REGION_ALIGN
}

/// Why an inflight area cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    /// The frontend asked for an area we cannot describe.
    #[error("inflight area for {num_queues} queues of {queue_size}: {reason}")]
    BadGeometry {
        /// Queues asked for.
        num_queues: u16,
        /// Descriptors per queue.
        queue_size: u16,
        /// What is wrong.
        reason: &'static str,
    },
    /// Creating or mapping the shared memory failed.
    #[error("inflight area: {what}: {source}")]
    Os {
        /// The call that failed.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// A queue region holds values no backend writes.
    #[error("inflight region of queue {queue} is damaged: {reason}")]
    Damaged {
        /// The queue.
        queue: u16,
        /// What is wrong.
        reason: String,
    },
}

/// The mapped inflight area of all queues.
pub struct InflightArea {
    ptr: NonNull<u8>,
    len: usize,
    num_queues: u16,
    queue_size: u16,
}

// SAFETY: the mapping is plain shared memory that lives as long as the area;
// every access goes through atomics, so sharing it between threads is sound.
unsafe impl Send for InflightArea {}
// SAFETY: as above: only atomic accesses, never a `&mut` into the mapping.
unsafe impl Sync for InflightArea {}

impl InflightArea {
    /// A new zero-filled area (a memfd) for `num_queues` queues of
    /// `queue_size` descriptors, as `GET_INFLIGHT_FD` answers: the file and
    /// its size.
    pub fn create(num_queues: u16, queue_size: u16) -> Result<(File, u64), InflightError> {
        let len = area_bytes(num_queues, queue_size)?;
        // SAFETY: memfd_create with a NUL-terminated name; the descriptor it
        // returns is ours alone and wrapped in a File at once.
        let fd = unsafe { libc::memfd_create(c"lsvblk-inflight".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(os_error("memfd_create"));
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len as u64)
            .map_err(|source| InflightError::Os {
                what: "ftruncate",
                source,
            })?;
        Ok((file, len as u64))
    }

    /// Maps the area the frontend handed over (`SET_INFLIGHT_FD`): `size`
    /// bytes at `offset` of `file`, `num_queues` regions of `queue_size`.
    pub fn map(
        file: &File,
        offset: u64,
        size: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Self, InflightError> {
        let needed = area_bytes(num_queues, queue_size)?;
        let bad = |reason| InflightError::BadGeometry {
            num_queues,
            queue_size,
            reason,
        };
        if size < needed as u64 {
            return Err(bad("mmap_size is smaller than the regions"));
        }
        let offset = libc::off_t::try_from(offset).map_err(|_| bad("mmap_offset too large"))?;
        // SAFETY: a fresh shared mapping of a file we were given; the kernel
        // checks offset and length against the file. We only ever touch the
        // first `needed` bytes, through atomics.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                needed,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(os_error("mmap"));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| os_error("mmap"))?;
        Ok(Self {
            ptr,
            len: needed,
            num_queues,
            queue_size,
        })
    }

    /// Queues the area has regions for.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// The tracking state of queue `index`, if the area has a region for it.
    pub fn queue(self: &Arc<Self>, index: u16) -> Option<QueueInflight> {
        (index < self.num_queues).then(|| QueueInflight {
            area: Arc::clone(self),
            index,
            base: usize::from(index) * queue_region_bytes(self.queue_size),
            next_counter: 0,
        })
    }

    fn u8_at(&self, offset: usize) -> &AtomicU8 {
        assert!(offset < self.len);
        // SAFETY: in bounds (checked above), any address is aligned for u8,
        // the mapping lives as long as `self`.
        unsafe { AtomicU8::from_ptr(self.ptr.as_ptr().add(offset)) }
    }

    fn u16_at(&self, offset: usize) -> &AtomicU16 {
        assert!(offset + 2 <= self.len && offset.is_multiple_of(2));
        // SAFETY: in bounds and 2-aligned (checked above; the mapping is
        // page-aligned), the mapping lives as long as `self`.
        unsafe { AtomicU16::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        assert!(offset + 8 <= self.len && offset.is_multiple_of(8));
        // SAFETY: in bounds and 8-aligned (checked above; the mapping is
        // page-aligned), the mapping lives as long as `self`.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }
}

impl Drop for InflightArea {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping `map` made; no reference into
        // it outlives `self` (queue views hold an Arc of the area).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn area_bytes(num_queues: u16, queue_size: u16) -> Result<usize, InflightError> {
    let bad = |reason| InflightError::BadGeometry {
        num_queues,
        queue_size,
        reason,
    };
    if num_queues == 0 {
        return Err(bad("no queues"));
    }
    if queue_size == 0 || queue_size > crate::limits::QUEUE_SIZE_MAX {
        return Err(bad("queue size out of range"));
    }
    Ok(usize::from(num_queues) * queue_region_bytes(queue_size))
}

fn os_error(what: &'static str) -> InflightError {
    InflightError::Os {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// What a queue starting on an inflight region must do first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// Where to continue on the avail ring (`None`: where the frontend said).
    pub next_avail: Option<u16>,
    /// Heads to run again before anything new, oldest first.
    pub resubmit: Vec<u16>,
}

/// One queue's region: marks chains in flight and clears them on completion.
pub struct QueueInflight {
    area: Arc<InflightArea>,
    index: u16,
    base: usize,
    next_counter: u64,
}

impl QueueInflight {
    /// Brings the region up to date when the queue starts, `ring_used_idx`
    /// being the used ring's `idx` as the guest sees it: initialises a new
    /// region, or repairs an interrupted completion and lists what the
    /// previous backend left in flight (see the module documentation).
    pub fn start(&mut self, ring_used_idx: u16) -> Result<Resume, InflightError> {
        let size = self.area.queue_size;
        if self.header_u16(VERSION_OFFSET).load(Ordering::Acquire) == 0 {
            self.header_u16(DESC_NUM_OFFSET)
                .store(size, Ordering::Relaxed);
            self.header_u16(LAST_BATCH_HEAD_OFFSET)
                .store(0, Ordering::Relaxed);
            self.header_u16(USED_IDX_OFFSET)
                .store(ring_used_idx, Ordering::Relaxed);
            self.header_u16(VERSION_OFFSET)
                .store(VERSION, Ordering::Release);
            self.next_counter = 1;
            return Ok(Resume::default());
        }
        let version = self.header_u16(VERSION_OFFSET).load(Ordering::Acquire);
        let desc_num = self.header_u16(DESC_NUM_OFFSET).load(Ordering::Relaxed);
        if version != VERSION || desc_num != size {
            return Err(self.damaged(format!(
                "version {version}, desc_num {desc_num} (expected {VERSION}, {size})"
            )));
        }
        let logged_used = self.header_u16(USED_IDX_OFFSET).load(Ordering::Relaxed);
        if logged_used != ring_used_idx {
            self.clear_last_batch(ring_used_idx.wrapping_sub(logged_used))?;
            self.header_u16(USED_IDX_OFFSET)
                .store(ring_used_idx, Ordering::Release);
        }
        let mut pending: Vec<(u64, u16)> = (0..size)
            .filter(|&head| self.desc_inflight(head).load(Ordering::Acquire) == 1)
            .map(|head| (self.desc_counter(head).load(Ordering::Relaxed), head))
            .collect();
        pending.sort_unstable();
        self.next_counter = pending.last().map_or(1, |&(counter, _)| counter + 1);
        let count = u16::try_from(pending.len()).unwrap_or(u16::MAX);
        Ok(Resume {
            next_avail: Some(ring_used_idx.wrapping_add(count)),
            resubmit: pending.into_iter().map(|(_, head)| head).collect(),
        })
    }

    /// Marks `head` in flight (fetch order = call order). Heads outside the
    /// region are ignored: the parser rejects such a chain anyway.
    pub fn mark(&mut self, head: u16) {
        if head >= self.area.queue_size {
            return;
        }
        self.desc_counter(head)
            .store(self.next_counter, Ordering::Relaxed);
        self.next_counter += 1;
        self.desc_inflight(head).store(1, Ordering::Release);
    }

    /// Call before publishing `head`'s used element.
    pub fn completing(&self, head: u16) {
        if head >= self.area.queue_size {
            return;
        }
        self.desc_next(head).store(head, Ordering::Relaxed);
        self.header_u16(LAST_BATCH_HEAD_OFFSET)
            .store(head, Ordering::Release);
    }

    /// Call once `head`'s used element is published and the used ring's
    /// `idx` is `ring_used_idx`.
    pub fn completed(&self, head: u16, ring_used_idx: u16) {
        if head < self.area.queue_size {
            self.desc_inflight(head).store(0, Ordering::Release);
        }
        self.header_u16(USED_IDX_OFFSET)
            .store(ring_used_idx, Ordering::Release);
    }

    /// The previous backend published `count` used elements of its last
    /// batch but died before clearing them: walk the batch list and clear.
    fn clear_last_batch(&self, count: u16) -> Result<(), InflightError> {
        let size = self.area.queue_size;
        if count > size {
            return Err(self.damaged(format!(
                "used ring is {count} ahead of the region, more than the queue size {size}"
            )));
        }
        let mut head = self
            .header_u16(LAST_BATCH_HEAD_OFFSET)
            .load(Ordering::Acquire);
        for _ in 0..count {
            if head >= size {
                return Err(self.damaged(format!("batch list names head {head}")));
            }
            self.desc_inflight(head).store(0, Ordering::Release);
            head = self.desc_next(head).load(Ordering::Relaxed);
        }
        Ok(())
    }

    fn damaged(&self, reason: String) -> InflightError {
        InflightError::Damaged {
            queue: self.index,
            reason,
        }
    }

    fn header_u16(&self, offset: usize) -> &AtomicU16 {
        self.area.u16_at(self.base + offset)
    }

    fn desc_offset(&self, head: u16) -> usize {
        self.base + QUEUE_HEADER_BYTES + DESC_STATE_BYTES * usize::from(head)
    }

    fn desc_inflight(&self, head: u16) -> &AtomicU8 {
        self.area
            .u8_at(self.desc_offset(head) + DESC_INFLIGHT_OFFSET)
    }

    fn desc_next(&self, head: u16) -> &AtomicU16 {
        self.area.u16_at(self.desc_offset(head) + DESC_NEXT_OFFSET)
    }

    fn desc_counter(&self, head: u16) -> &AtomicU64 {
        self.area
            .u64_at(self.desc_offset(head) + DESC_COUNTER_OFFSET)
    }
}

#[cfg(test)]
#[path = "inflight_tests.rs"]
mod tests;
