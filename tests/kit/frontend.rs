//! A hand-built vhost-user frontend for in-process backend tests: guest
//! memory, the driver side of split virtqueues written into it
//! (`virtio-queue`'s mock), and the vrings a VMM would have configured,
//! driven through the backend's `VhostUserBackend` calls directly.

use lsvblk::vhost::{BlockBackend, GuestMemory, GuestRam};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;

/// VIRTQ_DESC_F_NEXT.
pub const NEXT: u16 = 1;
/// VIRTQ_DESC_F_WRITE (device-writable).
pub const WRITE: u16 = 2;
/// Guest RAM of every frontend; rings at 64 KiB steps from 0.
pub const MEMORY_BYTES: usize = 16 << 20;

/// Guest memory, rings and vrings for `queues` queues of `queue_size`.
pub struct Frontend {
    pub mem: GuestRam,
    pub atomic: GuestMemory,
    pub queues: Vec<MockSplitQueue<'static, GuestRam>>,
    pub queue_size: u16,
}

impl Frontend {
    /// New guest memory with `queues` driver-side rings in it.
    pub fn new(queues: u16, queue_size: u16) -> Self {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), MEMORY_BYTES)]).unwrap();
        // The mock queues borrow the memory for the life of the test process.
        let leaked: &'static GuestRam = Box::leak(Box::new(mem.clone()));
        let queues = (0..u64::from(queues))
            .map(|i| MockSplitQueue::create(leaked, GuestAddress(i * 0x1_0000), queue_size))
            .collect();
        Self {
            atomic: GuestMemoryAtomic::new(mem.clone()),
            mem,
            queues,
            queue_size,
        }
    }

    /// What a VMM does to start the device on `backend`: the memory table,
    /// then each vring's size, addresses, `next_avail` (SET_VRING_BASE) and
    /// ready/enabled. Returns the vrings.
    pub fn start(&self, backend: &BlockBackend, next_avail: u16) -> Vec<VringRwLock<GuestMemory>> {
        backend.update_memory(self.atomic.clone()).unwrap();
        self.queues
            .iter()
            .map(|queue| {
                let vring =
                    VringRwLock::<GuestMemory>::new(self.atomic.clone(), self.queue_size).unwrap();
                vring.set_queue_size(self.queue_size);
                vring
                    .set_queue_info(
                        queue.desc_table_addr().0,
                        queue.avail_addr().0,
                        queue.used_addr().0,
                    )
                    .unwrap();
                vring.set_queue_next_avail(next_avail);
                vring.set_queue_next_used(queue.used().idx().load());
                vring.set_queue_ready(true);
                vring.set_enabled(true);
                vring
            })
            .collect()
    }

    /// Links `chain` (in order) and puts it on queue `queue`'s avail ring,
    /// its descriptors from table slot `first` on; returns the head index.
    pub fn add_chain(&self, queue: usize, chain: &[RawDescriptor], first: u16) -> u16 {
        let linked: Vec<RawDescriptor> = chain
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                let d = SplitDescriptor::from(*raw);
                let last = i + 1 == chain.len();
                let flags = if last {
                    d.flags() & !NEXT
                } else {
                    d.flags() | NEXT
                };
                RawDescriptor::from(SplitDescriptor::new(
                    d.addr().0,
                    d.len(),
                    flags,
                    first + i as u16 + 1,
                ))
            })
            .collect();
        self.queues[queue].add_desc_chains(&linked, first).unwrap();
        first
    }

    /// The used ring's `idx` of queue `queue`.
    pub fn used_idx(&self, queue: usize) -> u16 {
        self.queues[queue].used().idx().load()
    }

    /// The heads in queue `queue`'s used ring, oldest first.
    pub fn used_heads(&self, queue: usize) -> Vec<u16> {
        let q = &self.queues[queue];
        (0..self.used_idx(queue))
            .map(|i| {
                let slot = usize::from(i % self.queue_size);
                q.used().ring().ref_at(slot).unwrap().load().id() as u16
            })
            .collect()
    }
}

/// A split descriptor (unlinked; `Frontend::add_chain` links them).
pub fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// Runs `backend` for `queue` as its worker thread would: one thread per
/// queue, each seeing only its own vring, as event 0.
pub fn kick(backend: &BlockBackend, vrings: &[VringRwLock<GuestMemory>], queue: usize) {
    backend
        .handle_event(0, EventSet::IN, &vrings[queue..=queue], queue)
        .unwrap();
}
