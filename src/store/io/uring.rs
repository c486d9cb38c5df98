//! Segment writes through io_uring: one ring per log head, each append cut
//! into writes of at most [`WRITE_BYTES_MAX`] that are in flight together.
//!
//! **Buffer lifetime.** The kernel reads a write's memory until the write
//! completes. [`WriteRing::write_all`] borrows the memory for the whole
//! call and returns only once every write it submitted has completed (on
//! errors too): the borrow checker then guarantees that the memory outlives
//! the kernel's use of it. A ring the kernel stops answering leaves no safe
//! way back (the buffers may still be read), so the process aborts.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{IoUring, opcode, types};

use super::{IOV_MAX, pwritev_all};

/// Most bytes one submitted write carries: a larger append goes out as
/// several writes, in flight at once, so the device works on them in
/// parallel. A multiple of the 4 KiB alignment, so every piece stays
/// aligned.
pub const WRITE_BYTES_MAX: usize = 256 << 10;
/// Submission queue entries per ring: the most writes in flight per head.
const RING_ENTRIES: u32 = 32;

/// One head's io_uring for frame writes.
pub struct WriteRing {
    ring: IoUring,
}

impl std::fmt::Debug for WriteRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteRing")
    }
}

/// One submitted write: `parts` at `offset`, and their iovecs (which must
/// stay where they are until the write completes).
struct Piece<'a> {
    offset: u64,
    parts: Vec<&'a [u8]>,
    iovecs: Vec<libc::iovec>,
    bytes: usize,
}

impl WriteRing {
    /// A new ring; fails where the kernel refuses io_uring (disabled by
    /// `kernel.io_uring_disabled`, a seccomp filter, an old kernel).
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            ring: IoUring::new(RING_ENTRIES)?,
        })
    }

    /// Writes all of `slices` at `offset` of `file`: cut into writes of at
    /// most [`WRITE_BYTES_MAX`] bytes, submitted together, and waited for.
    /// Returns once every write completed; the first error if one failed
    /// (the others have completed too). A short write is finished with
    /// `pwritev`.
    pub fn write_all(&mut self, file: &File, slices: &[&[u8]], offset: u64) -> io::Result<()> {
        let pieces = cut(slices, offset);
        let mut result = Ok(());
        for wave in pieces.chunks(RING_ENTRIES as usize) {
            let short = self.write_wave(file, wave);
            for (index, outcome) in short.into_iter().enumerate() {
                let finished = match outcome {
                    Ok(written) if written == wave[index].bytes => Ok(()),
                    Ok(_) => pwritev_all(file, &wave[index].parts, wave[index].offset),
                    Err(error) => Err(error),
                };
                if result.is_ok() {
                    result = finished;
                }
            }
        }
        result
    }

    /// Submits every piece of `wave` and waits until all have completed;
    /// returns each one's outcome (bytes written or error), in order.
    fn write_wave(&mut self, file: &File, wave: &[Piece<'_>]) -> Vec<io::Result<usize>> {
        let fd = types::Fd(file.as_raw_fd());
        for (index, piece) in wave.iter().enumerate() {
            let entry = opcode::Writev::new(fd, piece.iovecs.as_ptr(), piece.iovecs.len() as u32)
                .offset(piece.offset)
                .build()
                .user_data(index as u64);
            // SAFETY: the iovecs and the memory they point to are borrowed
            // by `wave` and `write_all`'s `slices`, and this function does
            // not return before every entry pushed here has completed (the
            // loop below, or abort). The wave has at most RING_ENTRIES
            // entries and the queue is empty between waves, so it fits.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            assert!(pushed.is_ok(), "a wave fits the empty submission queue");
        }
        wait_all(&mut self.ring, wave.len(), "writes")
            .into_iter()
            .map(|result| match result >= 0 {
                true => Ok(result as usize),
                false => Err(io::Error::from_raw_os_error(-result)),
            })
            .collect()
    }
}

/// Waits until the `count` entries just submitted to `ring` (user data
/// `0..count`) have all completed; returns each one's result (bytes, or a
/// negative errno), in order. A ring that stops answering with `what` in
/// flight leaves no safe way back (their buffers may still be in use): the
/// process aborts.
pub(super) fn wait_all(ring: &mut IoUring, count: usize, what: &str) -> Vec<i32> {
    let mut results: Vec<Option<i32>> = vec![None; count];
    let mut done = 0;
    while done < count {
        if let Err(error) = ring.submit_and_wait(1) {
            match error.raw_os_error() {
                Some(libc::EINTR | libc::EAGAIN | libc::EBUSY) => {}
                _ => {
                    tracing::error!(%error, what, "io_uring stopped answering with I/O in flight: aborting (its buffers may still be in use)");
                    std::process::abort();
                }
            }
        }
        for completion in ring.completion() {
            if let Some(slot) = results.get_mut(completion.user_data() as usize)
                && slot.is_none()
            {
                *slot = Some(completion.result());
                done += 1;
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every entry completed"))
        .collect()
}

/// Cuts `slices` (written back to back from `offset`) into pieces of at
/// most [`WRITE_BYTES_MAX`] bytes and [`IOV_MAX`] iovecs.
fn cut<'a>(slices: &[&'a [u8]], offset: u64) -> Vec<Piece<'a>> {
    let mut pieces: Vec<Piece<'a>> = Vec::new();
    let mut at = offset;
    for slice in slices.iter().filter(|s| !s.is_empty()) {
        let mut rest: &'a [u8] = slice;
        while !rest.is_empty() {
            let full = pieces
                .last()
                .is_none_or(|p| p.bytes == WRITE_BYTES_MAX || p.parts.len() == IOV_MAX);
            if full {
                pieces.push(Piece {
                    offset: at,
                    parts: Vec::new(),
                    iovecs: Vec::new(),
                    bytes: 0,
                });
            }
            let piece = pieces.last_mut().expect("pushed above");
            let take = rest.len().min(WRITE_BYTES_MAX - piece.bytes);
            let (part, tail) = rest.split_at(take);
            piece.parts.push(part);
            piece.iovecs.push(libc::iovec {
                iov_base: part.as_ptr() as *mut libc::c_void,
                iov_len: part.len(),
            });
            piece.bytes += take;
            at += take as u64;
            rest = tail;
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::store::aligned::AlignedBuf;

    #[test]
    fn pieces_cover_the_slices_in_order_within_the_limits() {
        let big = vec![1u8; 3 * WRITE_BYTES_MAX + 4096];
        let small = vec![2u8; 4096];
        let pieces = cut(&[&small, &big, &[], &small], 8192);
        assert_eq!(pieces.len(), 4);
        let mut at = 8192;
        for piece in &pieces {
            assert_eq!(piece.offset, at);
            assert!(piece.bytes <= WRITE_BYTES_MAX);
            assert_eq!(
                piece.bytes,
                piece.parts.iter().map(|p| p.len()).sum::<usize>()
            );
            at += piece.bytes as u64;
        }
        assert_eq!(at, 8192 + (big.len() + 2 * small.len()) as u64);
    }

    #[test]
    fn a_ring_writes_what_pwritev_would() {
        let Ok(mut ring) = WriteRing::new() else {
            eprintln!("io_uring refused here: nothing to test");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        let mut a = AlignedBuf::zeroed(4096);
        a.fill(7);
        let mut b = AlignedBuf::zeroed(WRITE_BYTES_MAX * 2 + 8192);
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = (i / 4096) as u8;
        }
        ring.write_all(&file, &[&a, &b], 4096).unwrap();
        let mut back = vec![0u8; a.len() + b.len()];
        file.read_exact_at(&mut back, 4096).unwrap();
        assert_eq!(&back[..4096], &a[..]);
        assert_eq!(&back[4096..], &b[..]);
        // A write to a descriptor open read-only fails, and says so.
        let read_only = File::open(dir.path().join("f")).unwrap();
        assert!(ring.write_all(&read_only, &[&a], 0).is_err());
    }
}
