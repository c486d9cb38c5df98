//! Segment reads, many at once: the reads of one batch of guest requests
//! submitted together through an io_uring (one of a few shared by every
//! thread, each used by one read call at a time), so that a
//! queue's 32 random reads reach the device in parallel instead of one
//! after another. Reads of one descriptor that follow each other in the
//! file go out as one vectored read. One read alone is a plain `pread`
//! (a syscall less than a ring round trip).
//!
//! **Buffer lifetime.** As for writes (see `uring`): [`read_all`] borrows
//! every buffer for the whole call and returns only once every read it
//! submitted has completed; a ring the kernel stops answering with reads
//! in flight aborts the process.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use io_uring::{IoUring, opcode, types};

use super::super::segment::read_exact_or_eof;
use super::IOV_MAX;
use super::uring::wait_all;
use crate::sync::LockOrRecover;

/// Submission queue entries of a thread's read ring: the most reads in
/// flight at once.
const RING_ENTRIES: u32 = 64;
/// Most bytes one vectored read gathers from reads that follow each other.
const MERGED_BYTES_MAX: usize = 1 << 20;

/// One read: `buf.len()` bytes of `file` at `offset`.
pub struct ReadOp<'a> {
    /// The descriptor to read (`O_DIRECT` ones need `buf` and `offset`
    /// aligned as the file system asks).
    pub file: &'a File,
    /// Where in the file.
    pub offset: u64,
    /// Where to.
    pub buf: &'a mut [u8],
}

/// Reads that go out as one submission: `ops[first..first + count]`,
/// back to back in one file.
struct Group {
    first: usize,
    offset: u64,
    fd: i32,
    count: usize,
    bytes: usize,
    iovecs: Vec<libc::iovec>,
}

/// Rings no read is using, for the next to take: a queue's read jobs run
/// on threads that come and go (one set per busy spell of the queue), and
/// a ring made for each would cost more than the reads it carries.
static SPARE_RINGS: Mutex<Vec<IoUring>> = Mutex::new(Vec::new());
/// Most spare rings kept (each holds a little locked kernel memory): a
/// few per queue job in flight is plenty.
const SPARE_RINGS_MAX: usize = 32;
/// Set once the kernel refused a ring: reads are `pread`s from then on.
static RING_REFUSED: AtomicBool = AtomicBool::new(false);

/// Reads every op. For each, in order: `Ok(true)` when its buffer is full,
/// `Ok(false)` when the file ended first, or the error.
pub fn read_all(ops: &mut [ReadOp<'_>]) -> Vec<io::Result<bool>> {
    if ops.len() > 1
        && uring_wanted()
        && let Some(mut ring) = take_ring()
    {
        let done = read_through(&mut ring, ops);
        // Every read of `ops` has completed: the ring holds nothing.
        let mut spare = SPARE_RINGS.lock_or_recover();
        if spare.len() < SPARE_RINGS_MAX {
            spare.push(ring);
        }
        return done;
    }
    ops.iter_mut().map(read_one).collect()
}

/// A spare ring, or a new one; `None` once the kernel refused one.
fn take_ring() -> Option<IoUring> {
    if let Some(ring) = SPARE_RINGS.lock_or_recover().pop() {
        return Some(ring);
    }
    if RING_REFUSED.load(Ordering::Relaxed) {
        return None;
    }
    IoUring::new(RING_ENTRIES)
        .inspect_err(|error| {
            if !RING_REFUSED.swap(true, Ordering::Relaxed) {
                tracing::info!(%error, "io_uring refused: segment reads use pread");
            }
        })
        .ok()
}

/// `LSVBLK_IO_URING=0` turns io_uring off for reads as for writes.
fn uring_wanted() -> bool {
    std::env::var("LSVBLK_IO_URING")
        .ok()
        .is_none_or(|v| v != "0")
}

fn read_one(op: &mut ReadOp<'_>) -> io::Result<bool> {
    read_exact_or_eof(op.file, op.buf, op.offset)
}

/// Reads `ops` through `ring`, in waves of at most [`RING_ENTRIES`]
/// groups; a group that comes back short or failed is read again op by op
/// with `pread`, so each op gets its own outcome.
fn read_through(ring: &mut IoUring, ops: &mut [ReadOp<'_>]) -> Vec<io::Result<bool>> {
    let groups = group(ops);
    let mut outcomes: Vec<Option<io::Result<bool>>> = ops.iter().map(|_| None).collect();
    for wave in groups.chunks(RING_ENTRIES as usize) {
        let results = submit_wave(ring, wave);
        for (group, result) in wave.iter().zip(results) {
            let range = group.first..group.first + group.count;
            if result == group.bytes as i32 {
                outcomes[range].iter_mut().for_each(|o| *o = Some(Ok(true)));
            } else {
                for index in range {
                    outcomes[index] = Some(read_one(&mut ops[index]));
                }
            }
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.expect("every op was read"))
        .collect()
}

/// Groups ops that read one descriptor back to back, within the limits of
/// one vectored read.
fn group(ops: &mut [ReadOp<'_>]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    // (descriptor, end offset) of the op before.
    let mut previous: Option<(i32, u64)> = None;
    for (index, op) in ops.iter_mut().enumerate() {
        let fd = op.file.as_raw_fd();
        let len = op.buf.len();
        let iovec = libc::iovec {
            iov_base: op.buf.as_mut_ptr().cast(),
            iov_len: len,
        };
        let follows = previous == Some((fd, op.offset));
        previous = Some((fd, op.offset + len as u64));
        match groups.last_mut() {
            Some(last)
                if follows
                    && last.iovecs.len() < IOV_MAX
                    && last.bytes + len <= MERGED_BYTES_MAX =>
            {
                last.count += 1;
                last.bytes += len;
                last.iovecs.push(iovec);
            }
            _ => groups.push(Group {
                first: index,
                offset: op.offset,
                fd,
                count: 1,
                bytes: len,
                iovecs: vec![iovec],
            }),
        }
    }
    groups
}

/// Submits every group of `wave` and waits until all have completed;
/// returns each one's result (bytes read, or a negative errno), in order.
fn submit_wave(ring: &mut IoUring, wave: &[Group]) -> Vec<i32> {
    for (index, group) in wave.iter().enumerate() {
        let entry = opcode::Readv::new(
            types::Fd(group.fd),
            group.iovecs.as_ptr(),
            group.iovecs.len() as u32,
        )
        .offset(group.offset)
        .build()
        .user_data(index as u64);
        // SAFETY: the iovecs point into the ops' buffers, which `read_all`
        // borrows mutably for the whole call, and the iovec arrays live in
        // `wave`; this function does not return before every entry pushed
        // here has completed (the loop below, or abort). A wave has at
        // most RING_ENTRIES entries and the queue is empty between waves.
        let pushed = unsafe { ring.submission().push(&entry) };
        assert!(pushed.is_ok(), "a wave fits the empty submission queue");
    }
    wait_all(ring, wave.len(), "reads")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::aligned::AlignedBuf;
    use std::os::unix::fs::FileExt;

    #[test]
    fn reads_come_back_in_place_merged_or_not_and_past_the_end_says_so() {
        let file = tempfile::tempfile().unwrap();
        let bytes: Vec<u8> = (0..64 * 4096).map(|i| (i / 4096 + i % 251) as u8).collect();
        file.write_all_at(&bytes, 0).unwrap();
        let mut a = AlignedBuf::zeroed(8192);
        let mut b = AlignedBuf::zeroed(4096);
        let mut c = vec![0u8; 100];
        let mut past = vec![0u8; 4096];
        let mut ops = vec![
            ReadOp {
                file: &file,
                offset: 4096,
                buf: &mut a,
            },
            ReadOp {
                file: &file,
                offset: 3 * 4096,
                buf: &mut b,
            },
            ReadOp {
                file: &file,
                offset: 77,
                buf: &mut c,
            },
            ReadOp {
                file: &file,
                offset: 63 * 4096 + 1,
                buf: &mut past,
            },
        ];
        assert_eq!(group(&mut ops).len(), 3, "a and b follow each other");
        let outcomes: Vec<bool> = read_all(&mut ops).into_iter().map(|o| o.unwrap()).collect();
        assert_eq!(outcomes, [true, true, true, false]);
        assert_eq!(&a[..], &bytes[4096..3 * 4096]);
        assert_eq!(&b[..], &bytes[3 * 4096..4 * 4096]);
        assert_eq!(&c[..], &bytes[77..177]);
        // One op alone takes the pread path, with the same answers.
        let mut alone = [ReadOp {
            file: &file,
            offset: 4096,
            buf: &mut a,
        }];
        assert!(read_all(&mut alone)[0].as_ref().unwrap());
    }
}
