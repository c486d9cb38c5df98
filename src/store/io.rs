//! Thin, checked wrappers over the syscalls the standard library lacks,
//! and how segment files are written (`direct`).

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
