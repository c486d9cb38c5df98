//! Thin, checked wrappers over the syscalls the standard library lacks
//! (`pwritev`, `fallocate`), and how segment files are written (`direct`).

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;

pub mod direct;
pub mod meta_cache;
pub mod reads;
pub mod uring;

/// Most iovecs one `pwritev` takes (Linux IOV_MAX).
pub const IOV_MAX: usize = 1024;

/// Writes all of `slices` at `offset` with as few `pwritev` calls as the
/// kernel allows, resuming after short writes.
pub fn pwritev_all(file: &File, slices: &[&[u8]], mut offset: u64) -> io::Result<()> {
    let mut remaining: Vec<&[u8]> = slices.iter().copied().filter(|s| !s.is_empty()).collect();
    let mut start = 0;
    while start < remaining.len() {
        let batch: Vec<IoSlice<'_>> = remaining[start..]
            .iter()
            .take(IOV_MAX)
            .map(|s| IoSlice::new(s))
            .collect();
        let written = pwritev(file, &batch, offset)?;
        if written == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        offset += written as u64;
        // Skip the slices written whole; trim the one written in part.
        let mut left = written;
        while left > 0 {
            let slice = remaining[start];
            if left >= slice.len() {
                left -= slice.len();
                start += 1;
            } else {
                remaining[start] = &slice[left..];
                left = 0;
            }
        }
    }
    Ok(())
}

/// Allocates the first `len` bytes of `file` on disk and makes it at least
/// that long (`fallocate` mode 0: what was not there reads as zeros).
///
/// A log head's segment is preallocated when it is created so that its
/// appends are writes inside the file, not past its end: on ext4 an
/// `O_DIRECT` write past the end of a file takes the inode lock
/// exclusively and completes synchronously, so a head's writes would go
/// to the device one at a time; inside the file they are in flight
/// together. Fails where the filesystem cannot preallocate (the caller
/// goes on without).
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    fallocate(file, 0, 0, len)
}

/// Frees `len` bytes of `file` from `offset` (the size stays; they read as
/// zeros until written again): how a store volume's cache evicts records.
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    fallocate(file, mode, offset, len)
}

/// Makes `len` bytes of `file` from `offset` read as zeros while keeping
/// them allocated (`FALLOC_FL_ZERO_RANGE`; the size stays): how a spare
/// segment is emptied before it is reused. Fails where the filesystem
/// cannot (the caller then deletes the spare and creates a segment).
pub(crate) fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
    fallocate(file, mode, offset, len)
}

/// `fallocate(2)` of bytes `offset..offset + len` of `file` in `mode`,
/// retried when a signal interrupts it.
fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range past off_t",
        ));
    };
    loop {
        // SAFETY: fallocate only reads its integer arguments; the descriptor
        // is open for as long as `file` lives.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) };
        if rc == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

fn pwritev(file: &File, slices: &[IoSlice<'_>], offset: u64) -> io::Result<usize> {
    let offset = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset past off_t"))?;
    loop {
        // SAFETY: IoSlice is ABI-compatible with iovec; the slices outlive the
        // call; the count is at most IOV_MAX (checked by the caller's `take`).
        let rc = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                slices.as_ptr().cast::<libc::iovec>(),
                slices.len() as libc::c_int,
                offset,
            )
        };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}
