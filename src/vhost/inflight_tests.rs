//! The inflight region against the layout QEMU (libvhost-user) and DPDK use:
//! regions are built and read byte by byte here, as a frontend or a previous
//! backend would have left them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::*;

const QUEUE_SIZE: u16 = 128;

/// A raw view of one queue region, written as another implementation would.
struct RawRegion<'a> {
    file: &'a File,
    base: u64,
}

impl RawRegion<'_> {
    fn put(&self, offset: u64, bytes: &[u8]) {
        self.file.write_all_at(bytes, self.base + offset).unwrap();
    }
    fn get<const N: usize>(&self, offset: u64) -> [u8; N] {
        let mut bytes = [0u8; N];
        self.file
            .read_exact_at(&mut bytes, self.base + offset)
            .unwrap();
        bytes
    }
    fn header(&self, version: u16, desc_num: u16, last_batch_head: u16, used_idx: u16) {
        self.put(8, &version.to_le_bytes());
        self.put(10, &desc_num.to_le_bytes());
        self.put(12, &last_batch_head.to_le_bytes());
        self.put(14, &used_idx.to_le_bytes());
    }
    fn desc(&self, head: u16, inflight: u8, next: u16, counter: u64) {
        let at = 16 + 16 * u64::from(head);
        self.put(at, &[inflight]);
        self.put(at + 6, &next.to_le_bytes());
        self.put(at + 8, &counter.to_le_bytes());
    }
    fn used_idx(&self) -> u16 {
        u16::from_le_bytes(self.get(14))
    }
    fn inflight(&self, head: u16) -> u8 {
        self.get::<1>(16 + 16 * u64::from(head))[0]
    }
}

fn area(num_queues: u16) -> (File, Arc<InflightArea>) {
    let (file, size) = InflightArea::create(num_queues, QUEUE_SIZE).unwrap();
    let area = InflightArea::map(&file, 0, size, num_queues, QUEUE_SIZE).unwrap();
    (file, Arc::new(area))
}

#[test]
fn region_size_is_what_libvhost_user_and_dpdk_allocate() {
    for queue_size in [4u16, 8, 64, 128, 256, 1024] {
        let qs = usize::from(queue_size);
        // libvhost-user: ALIGN_UP(sizeof(VuDescStateSplit) * qs + sizeof(uint16_t), 64)
        let libvhost_user = (16 * qs + 2).div_ceil(64) * 64;
        // DPDK: RTE_ALIGN_MUL_CEIL(16 * qs + sizeof(uint64_t) + 4 * sizeof(uint16_t), 64)
        let dpdk = (16 * qs + 16).div_ceil(64) * 64;
        assert_eq!(
            queue_region_bytes(queue_size),
            libvhost_user,
            "{queue_size}"
        );
        assert_eq!(queue_region_bytes(queue_size), dpdk, "{queue_size}");
    }
    let (file, size) = InflightArea::create(2, 128).unwrap();
    assert_eq!(size, 2 * 2112);
    assert_eq!(file.metadata().unwrap().len(), size);
}

#[test]
fn a_new_region_is_initialised_in_place() {
    let (file, area) = area(2);
    let mut queue = area.queue(1).unwrap();
    assert_eq!(queue.start(40).unwrap(), Resume::default());
    let raw = RawRegion {
        file: &file,
        base: queue_region_bytes(QUEUE_SIZE) as u64,
    };
    assert_eq!(raw.get::<2>(8), 1u16.to_le_bytes(), "version");
    assert_eq!(raw.get::<2>(10), QUEUE_SIZE.to_le_bytes(), "desc_num");
    assert_eq!(raw.used_idx(), 40);
    // Queue 0's region is untouched.
    let raw0 = RawRegion {
        file: &file,
        base: 0,
    };
    assert_eq!(raw0.get::<16>(0), [0u8; 16]);
}

#[test]
fn marks_and_completions_land_where_the_layout_says() {
    let (file, area) = area(1);
    let raw = RawRegion {
        file: &file,
        base: 0,
    };
    let mut queue = area.queue(0).unwrap();
    queue.start(7).unwrap();
    queue.mark(5);
    queue.mark(9);
    let desc5 = raw.get::<16>(16 + 16 * 5);
    assert_eq!(desc5[0], 1, "inflight");
    assert_eq!(&desc5[1..6], &[0u8; 5], "padding");
    assert_eq!(
        u64::from_le_bytes(desc5[8..16].try_into().unwrap()),
        1,
        "counter"
    );
    let desc9 = raw.get::<16>(16 + 16 * 9);
    assert_eq!(u64::from_le_bytes(desc9[8..16].try_into().unwrap()), 2);
    queue.completing(9);
    assert_eq!(raw.get::<2>(12), 9u16.to_le_bytes(), "last_batch_head");
    queue.completed(9, 8);
    assert_eq!(raw.inflight(9), 0);
    assert_eq!(raw.inflight(5), 1);
    assert_eq!(raw.used_idx(), 8);
}

#[test]
fn out_of_order_leftovers_are_resubmitted_oldest_first() {
    let (file, area) = area(1);
    let raw = RawRegion {
        file: &file,
        base: 0,
    };
    raw.header(1, QUEUE_SIZE, 2, 20);
    raw.desc(3, 1, 0, 10);
    raw.desc(7, 1, 0, 8);
    raw.desc(1, 1, 0, 12);
    raw.desc(2, 0, 0, 9); // completed
    let mut queue = area.queue(0).unwrap();
    let resume = queue.start(20).unwrap();
    assert_eq!(resume.resubmit, vec![7, 3, 1]);
    assert_eq!(resume.next_avail, Some(23));
    // New marks continue after the highest counter seen.
    queue.mark(4);
    assert_eq!(u64::from_le_bytes(raw.get(16 + 16 * 4 + 8)), 13);
}

#[test]
fn a_completion_interrupted_after_publishing_is_cleared() {
    let (file, area) = area(1);
    let raw = RawRegion {
        file: &file,
        base: 0,
    };
    // The backend published head 3 (used ring at 21) and died before
    // clearing it and updating used_idx (still 20).
    raw.header(1, QUEUE_SIZE, 3, 20);
    raw.desc(3, 1, 3, 10);
    raw.desc(7, 1, 0, 8);
    let mut queue = area.queue(0).unwrap();
    let resume = queue.start(21).unwrap();
    assert_eq!(resume.resubmit, vec![7]);
    assert_eq!(resume.next_avail, Some(22));
    assert_eq!(raw.inflight(3), 0);
    assert_eq!(raw.used_idx(), 21);
}

#[test]
fn a_batch_list_is_walked_for_as_many_entries_as_the_used_ring_moved() {
    let (file, area) = area(1);
    let raw = RawRegion {
        file: &file,
        base: 0,
    };
    // A backend batching 3 completions (heads 4 <- 6 <- 8, last first)
    // published all three and died before clearing any.
    raw.header(1, QUEUE_SIZE, 8, 65534);
    raw.desc(8, 1, 6, 5);
    raw.desc(6, 1, 4, 4);
    raw.desc(4, 1, 0, 3);
    raw.desc(0, 1, 0, 2);
    let mut queue = area.queue(0).unwrap();
    let resume = queue.start(1).unwrap(); // 65534 + 3, wrapped
    assert_eq!(resume.resubmit, vec![0]);
    assert_eq!(resume.next_avail, Some(2));
}

#[test]
fn a_damaged_region_is_an_error_not_a_panic() {
    type Damage = fn(&RawRegion);
    let cases: [(&str, Damage); 4] = [
        ("unknown version", |raw| raw.header(2, QUEUE_SIZE, 0, 0)),
        ("other queue size", |raw| raw.header(1, 64, 0, 0)),
        ("used ring far ahead", |raw| {
            raw.header(1, QUEUE_SIZE, 0, 1000)
        }),
        ("batch head out of range", |raw| {
            raw.header(1, QUEUE_SIZE, 500, 0);
        }),
    ];
    for (what, damage) in cases {
        let (file, area) = area(1);
        damage(&RawRegion {
            file: &file,
            base: 0,
        });
        let mut queue = area.queue(0).unwrap();
        let result = queue.start(1);
        assert!(
            matches!(result, Err(InflightError::Damaged { queue: 0, .. })),
            "{what}: {result:?}"
        );
    }
}

#[test]
fn bad_geometry_is_refused() {
    assert!(InflightArea::create(0, 128).is_err());
    assert!(InflightArea::create(1, 0).is_err());
    assert!(InflightArea::create(1, 2048).is_err());
    let (file, size) = InflightArea::create(1, 128).unwrap();
    assert!(InflightArea::map(&file, 0, size - 1, 1, 128).is_err());
    assert!(InflightArea::map(&file, 0, size, 2, 128).is_err());
    let area = Arc::new(InflightArea::map(&file, 0, size, 1, 128).unwrap());
    assert!(area.queue(1).is_none());
    let mut queue = area.queue(0).unwrap();
    queue.start(0).unwrap();
    queue.mark(128); // outside the region: ignored
    queue.completing(500);
    queue.completed(500, 1);
}

#[test]
fn a_restarted_backend_sees_what_its_predecessor_left() {
    let (file, size) = InflightArea::create(1, QUEUE_SIZE).unwrap();
    {
        let first = Arc::new(InflightArea::map(&file, 0, size, 1, QUEUE_SIZE).unwrap());
        let mut queue = first.queue(0).unwrap();
        queue.start(0).unwrap();
        for head in [10, 11, 12, 13] {
            queue.mark(head);
        }
        // 11 and 13 complete (used ring 0 -> 1 -> 2); 10 is held back, 12 runs.
        queue.completing(11);
        queue.completed(11, 1);
        queue.completing(13);
        queue.completed(13, 2);
    } // killed: the mapping goes, the frontend keeps the file
    let second = Arc::new(InflightArea::map(&file, 0, size, 1, QUEUE_SIZE).unwrap());
    let mut queue = second.queue(0).unwrap();
    let resume = queue.start(2).unwrap();
    assert_eq!(resume.resubmit, vec![10, 12]);
    assert_eq!(resume.next_avail, Some(4));
}
