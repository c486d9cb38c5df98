//! Walking a descriptor chain from its head index, for the chains a restarted
//! backend resubmits from the inflight area: they are no longer on the avail
//! ring, so `virtio-queue`'s iterator (which starts from the ring) cannot
//! produce them.
//!
//! Same rules as `virtio-queue`'s walk: at most `queue_size` descriptors, one
//! level of indirection (an indirect table's length a multiple of 16, its
//! descriptors not indirect again), at most 2^32 bytes in all. A broken chain
//! ends where it breaks; the request parser then rejects what is missing.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::request::Desc;

/// Bytes of one split-ring descriptor.
const DESC_BYTES: u64 = 16;

/// A chain taken off a queue: its head index and its descriptors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chain {
    pub(crate) head: u16,
    pub(crate) descs: Vec<Desc>,
}

impl Chain {
    /// The chain `virtio-queue` popped off the avail ring.
    pub(crate) fn from_descriptors(head: u16, descs: impl Iterator<Item = Descriptor>) -> Self {
        Self {
            head,
            descs: descs.map(desc_of).collect(),
        }
    }

    /// The chain starting at descriptor `head` of the table at `table`
    /// (`queue_size` entries).
    pub(crate) fn walk<M: GuestMemoryBackend>(
        mem: &M,
        table: GuestAddress,
        queue_size: u16,
        head: u16,
    ) -> Self {
        let mut descs = Vec::new();
        let mut table = table;
        let mut size = queue_size;
        let mut index = head;
        let mut ttl = queue_size;
        let mut indirect = false;
        let mut bytes = 0u32;
        while ttl > 0 && index < size {
            let Some(addr) = table.0.checked_add(u64::from(index) * DESC_BYTES) else {
                break;
            };
            let Ok(desc) = mem.read_obj::<Descriptor>(GuestAddress(addr)) else {
                break;
            };
            if desc.refers_to_indirect_table() {
                let entries = u64::from(desc.len()) / DESC_BYTES;
                if indirect
                    || u64::from(desc.len()) % DESC_BYTES != 0
                    || entries > u64::from(u16::MAX)
                {
                    break;
                }
                (table, size, index, ttl, indirect) =
                    (desc.addr(), entries as u16, 0, entries as u16, true);
                continue;
            }
            let Some(total) = bytes.checked_add(desc.len()) else {
                break;
            };
            bytes = total;
            descs.push(desc_of(desc));
            if !desc.has_next() {
                break;
            }
            index = desc.next();
            ttl -= 1;
        }
        Self { head, descs }
    }
}

fn desc_of(desc: Descriptor) -> Desc {
    Desc {
        addr: desc.addr(),
        len: desc.len(),
        writable: desc.is_write_only(),
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::*;

    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn walks_what_the_driver_built_as_virtio_queue_does() {
        let mem = memory();
        let queue = MockSplitQueue::new(&mem, 16);
        let descs = [
            Descriptor::new(0x8000, 16, NEXT, 3),
            Descriptor::new(0x9000, 4096, NEXT | WRITE, 5),
            Descriptor::new(0xa000, 1, WRITE, 0),
        ];
        // Slots 2, 3 and 5 of the table, linked 2 -> 3 -> 5.
        for (slot, desc) in [2u16, 3, 5].into_iter().zip(descs) {
            let at = queue.desc_table_addr().0 + 16 * u64::from(slot);
            mem.write_obj(desc, GuestAddress(at)).unwrap();
        }
        let chain = Chain::walk(&mem, queue.desc_table_addr(), 16, 2);
        assert_eq!(chain.head, 2);
        let lens: Vec<_> = chain.descs.iter().map(|d| (d.len, d.writable)).collect();
        assert_eq!(lens, vec![(16, false), (4096, true), (1, true)]);
    }

    #[test]
    fn follows_one_indirect_table() {
        let mem = memory();
        let queue = MockSplitQueue::new(&mem, 16);
        let table = GuestAddress(0x2_0000);
        let inner = [
            Descriptor::new(0x8000, 16, NEXT, 1),
            Descriptor::new(0x9000, 512, NEXT, 2),
            Descriptor::new(0xa000, 1, WRITE, 0),
        ];
        for (i, d) in inner.iter().enumerate() {
            mem.write_obj(*d, GuestAddress(table.0 + 16 * i as u64))
                .unwrap();
        }
        let head = Descriptor::new(table.0, 48, INDIRECT, 0);
        mem.write_obj(head, queue.desc_table_addr()).unwrap();
        let chain = Chain::walk(&mem, queue.desc_table_addr(), 16, 0);
        assert_eq!(chain.descs.len(), 3);
        assert_eq!(chain.descs[1].addr, GuestAddress(0x9000));
    }

    #[test]
    fn loops_and_bad_tables_end_the_walk() {
        let mem = memory();
        let queue = MockSplitQueue::new(&mem, 8);
        let base = queue.desc_table_addr().0;
        // 0 -> 1 -> 0 -> ...: stops after the queue size.
        mem.write_obj(Descriptor::new(0x8000, 16, NEXT, 1), GuestAddress(base))
            .unwrap();
        mem.write_obj(
            Descriptor::new(0x9000, 16, NEXT, 0),
            GuestAddress(base + 16),
        )
        .unwrap();
        assert_eq!(
            Chain::walk(&mem, queue.desc_table_addr(), 8, 0).descs.len(),
            8
        );
        // Head outside the table, next outside the table, odd indirect size.
        assert!(
            Chain::walk(&mem, queue.desc_table_addr(), 8, 9)
                .descs
                .is_empty()
        );
        mem.write_obj(
            Descriptor::new(0x8000, 16, NEXT, 200),
            GuestAddress(base + 32),
        )
        .unwrap();
        assert_eq!(
            Chain::walk(&mem, queue.desc_table_addr(), 8, 2).descs.len(),
            1
        );
        mem.write_obj(
            Descriptor::new(0x2_0000, 40, INDIRECT, 0),
            GuestAddress(base + 48),
        )
        .unwrap();
        assert!(
            Chain::walk(&mem, queue.desc_table_addr(), 8, 3)
                .descs
                .is_empty()
        );
        // A descriptor table outside guest memory.
        assert!(
            Chain::walk(&mem, GuestAddress(0xffff_0000), 8, 0)
                .descs
                .is_empty()
        );
    }
}
