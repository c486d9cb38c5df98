//! Segment writes through io_uring: one ring per log head; an append's
//! writes (of at most [`WRITE_BYTES_MAX`] each) are submitted as they
//! become ready and are in flight together ([`WriteStream`]).
//!
//! **Buffer lifetime.** The kernel reads a write's memory until the write
//! completes. [`WriteStream::submit`] is `unsafe`: its caller promises the
//! memory stays valid until the stream is finished or dropped, and both
//! wait for every write submitted (a stream cannot be forgotten by its
//! owner, the log's append, which keeps the buffers it writes from in the
//! same struct, dropped after the stream). A ring the kernel stops
//! answering leaves no safe way back (the buffers may still be read), so
//! the process aborts.

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
/// stay where they are until the write completes: they live in their own
/// heap allocation, which moving the `Piece` does not move).
struct Piece {
    offset: u64,
    iovecs: Vec<libc::iovec>,
    bytes: usize,
}

impl Piece {
    /// The memory the piece writes.
    ///
    /// # Safety
    /// The memory its iovecs point to must still be valid (the contract of
    /// [`WriteStream::submit`]).
    unsafe fn parts(&self) -> Vec<&[u8]> {
        self.iovecs
            .iter()
            // SAFETY: the caller's contract: the iovecs point to live memory.
            .map(|v| unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) })
            .collect()
    }
}

impl WriteRing {
    /// A new ring; fails where the kernel refuses io_uring (disabled by
    /// `kernel.io_uring_disabled`, a seccomp filter, an old kernel).
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            ring: IoUring::new(RING_ENTRIES)?,
        })
    }

    /// A stream of writes to `file`: submitted as they become ready, in
    /// flight together, waited for at [`WriteStream::finish`].
    pub fn stream<'r>(&'r mut self, file: &'r File) -> WriteStream<'r> {
        WriteStream {
            ring: &mut self.ring,
            file,
            pieces: Vec::new(),
            results: Vec::new(),
            pushed: 0,
            completed: 0,
        }
    }
}

/// Writes submitted one after another to one file while the caller
/// prepares the next ones, and waited for together ([`WriteRing::stream`]).
/// Dropping it waits for every write in flight (a panic unwinding through
/// the caller too), so no write outlives the stream.
pub struct WriteStream<'r> {
    ring: &'r mut IoUring,
    file: &'r File,
    /// Every piece submitted so far, in order (user data = index).
    pieces: Vec<Piece>,
    /// Each piece's result once completed (bytes, or a negative errno).
    results: Vec<Option<i32>>,
    /// Pieces pushed to the submission queue so far.
    pushed: usize,
    completed: usize,
}

impl WriteStream<'_> {
    /// Submits writes of all of `slices`, back to back from `offset` (cut
    /// into pieces of at most [`WRITE_BYTES_MAX`]); returns without waiting
    /// for them, once each is queued (waiting for earlier ones only while
    /// [`RING_ENTRIES`] are in flight).
    ///
    /// # Safety
    /// The memory of `slices` must stay valid and unchanged until
    /// [`WriteStream::finish`] returns or the stream is dropped.
    pub unsafe fn submit(&mut self, slices: &[&[u8]], offset: u64) {
        let fd = types::Fd(self.file.as_raw_fd());
        for piece in cut(slices, offset) {
            while self.pushed - self.completed >= RING_ENTRIES as usize {
                self.reap(1);
            }
            let index = self.pieces.len();
            let entry = opcode::Writev::new(fd, piece.iovecs.as_ptr(), piece.iovecs.len() as u32)
                .offset(piece.offset)
                .build()
                .user_data(index as u64);
            self.pieces.push(piece);
            self.results.push(None);
            // SAFETY: the iovecs live in the piece's own allocation, kept in
            // `self.pieces` until the stream is finished or dropped, both of
            // which wait for every write; the memory they point to is the
            // caller's to keep (this function's contract). At most
            // RING_ENTRIES writes are in flight and each submitted entry
            // leaves the queue at `submit`, so there is room.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            assert!(pushed.is_ok(), "the submission queue has room");
            self.pushed += 1;
        }
        // Out to the kernel now: the device starts on them while the
        // caller prepares the next.
        self.reap(0);
    }

    /// Waits for every write submitted so far; returns the first error (a
    /// short write is finished with `pwritev`).
    pub fn finish(&mut self) -> io::Result<()> {
        self.wait_all();
        let mut result = Ok(());
        for (piece, outcome) in self.pieces.iter().zip(&self.results) {
            let outcome = outcome.expect("every write completed");
            let finished = match usize::try_from(outcome) {
                Ok(written) if written == piece.bytes => Ok(()),
                // SAFETY: the memory stays valid until `finish` returns
                // (`submit`'s contract).
                Ok(written) => pwritev_all(
                    self.file,
                    &skip_bytes(&unsafe { piece.parts() }, written),
                    piece.offset + written as u64,
                ),
                Err(_) => Err(io::Error::from_raw_os_error(-outcome)),
            };
            if result.is_ok() {
                result = finished;
            }
        }
        result
    }

    fn wait_all(&mut self) {
        while self.completed < self.pushed {
            self.reap(1);
        }
    }

    /// Submits what is queued, waits for at least `min` completions, and
    /// records every completion there is.
    fn reap(&mut self, min: usize) {
        let (results, completed) = (&mut self.results, &mut self.completed);
        reap(self.ring, min, "writes", |index, result| {
            if let Some(slot) = results.get_mut(index)
                && slot.is_none()
            {
                *slot = Some(result);
                *completed += 1;
            }
        });
    }
}

impl Drop for WriteStream<'_> {
    /// No write may outlive the memory it reads: wait for them all.
    fn drop(&mut self) {
        self.wait_all();
    }
}

/// `parts` without their first `skip` bytes.
fn skip_bytes<'a>(parts: &[&'a [u8]], mut skip: usize) -> Vec<&'a [u8]> {
    let mut rest = Vec::with_capacity(parts.len());
    for part in parts {
        if skip >= part.len() {
            skip -= part.len();
        } else {
            rest.push(&part[skip..]);
            skip = 0;
        }
    }
    rest
}

/// Waits until the `count` entries just submitted to `ring` (user data
/// `0..count`) have all completed; returns each one's result (bytes, or a
/// negative errno), in order.
pub(super) fn wait_all(ring: &mut IoUring, count: usize, what: &str) -> Vec<i32> {
    let mut results: Vec<Option<i32>> = vec![None; count];
    let mut done = 0;
    while done < count {
        reap(ring, 1, what, |index, result| {
            if let Some(slot) = results.get_mut(index)
                && slot.is_none()
            {
                *slot = Some(result);
                done += 1;
            }
        });
    }
    results
        .into_iter()
        .map(|r| r.expect("every entry completed"))
        .collect()
}

/// Submits what `ring` has queued, waits for at least `min` completions
/// and hands each completion there is to `completed(user data, result)`.
/// A ring that stops answering with `what` in flight leaves no safe way
/// back (their buffers may still be in use): the process aborts.
fn reap(ring: &mut IoUring, min: usize, what: &str, mut completed: impl FnMut(usize, i32)) {
    if let Err(error) = ring.submit_and_wait(min) {
        match error.raw_os_error() {
            Some(libc::EINTR | libc::EAGAIN | libc::EBUSY) => {}
            _ => {
                tracing::error!(%error, what, "io_uring stopped answering with I/O in flight: aborting (its buffers may still be in use)");
                std::process::abort();
            }
        }
    }
    for completion in ring.completion() {
        completed(completion.user_data() as usize, completion.result());
    }
}

/// Cuts `slices` (written back to back from `offset`) into pieces of at
/// most [`WRITE_BYTES_MAX`] bytes and [`IOV_MAX`] iovecs.
fn cut(slices: &[&[u8]], offset: u64) -> Vec<Piece> {
    let mut pieces: Vec<Piece> = Vec::new();
    let mut at = offset;
    for slice in slices.iter().filter(|s| !s.is_empty()) {
        let mut rest: &[u8] = slice;
        while !rest.is_empty() {
            let full = pieces
                .last()
                .is_none_or(|p| p.bytes == WRITE_BYTES_MAX || p.iovecs.len() == IOV_MAX);
            if full {
                pieces.push(Piece {
                    offset: at,
                    iovecs: Vec::new(),
                    bytes: 0,
                });
            }
            let piece = pieces.last_mut().expect("pushed above");
            let take = rest.len().min(WRITE_BYTES_MAX - piece.bytes);
            let (part, tail) = rest.split_at(take);
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
                piece.iovecs.iter().map(|v| v.iov_len).sum::<usize>()
            );
            at += piece.bytes as u64;
        }
        assert_eq!(at, 8192 + (big.len() + 2 * small.len()) as u64);
    }

    /// Writes `slices` at `offset` and waits for them.
    fn write_all(
        ring: &mut WriteRing,
        file: &File,
        slices: &[&[u8]],
        offset: u64,
    ) -> io::Result<()> {
        let mut stream = ring.stream(file);
        // SAFETY: `slices` outlives the stream, which `finish` waits for.
        unsafe { stream.submit(slices, offset) };
        stream.finish()
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
        write_all(&mut ring, &file, &[&a, &b], 4096).unwrap();
        let mut back = vec![0u8; a.len() + b.len()];
        file.read_exact_at(&mut back, 4096).unwrap();
        assert_eq!(&back[..4096], &a[..]);
        assert_eq!(&back[4096..], &b[..]);
        // A stream of more writes than the ring has entries, each submitted
        // before the earlier ones completed, lands whole and in place.
        let pages: Vec<AlignedBuf> = (0..3 * RING_ENTRIES as usize)
            .map(|i| AlignedBuf::copy_from(&[i as u8; 4096]))
            .collect();
        let mut stream = ring.stream(&file);
        for (i, page) in pages.iter().enumerate() {
            // SAFETY: `pages` outlives the stream.
            unsafe { stream.submit(&[page], (i * 4096) as u64) };
        }
        stream.finish().unwrap();
        drop(stream);
        for (i, page) in pages.iter().enumerate() {
            let mut back = [0u8; 4096];
            file.read_exact_at(&mut back, (i * 4096) as u64).unwrap();
            assert_eq!(&back[..], &page[..], "page {i}");
        }
        // A write to a descriptor open read-only fails, and says so.
        let read_only = File::open(dir.path().join("f")).unwrap();
        assert!(write_all(&mut ring, &read_only, &[&a], 0).is_err());
    }
}
