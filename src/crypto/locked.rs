//! Memory for secrets: page-aligned, locked in RAM (mlock), excluded from core
//! dumps (MADV_DONTDUMP), and overwritten with zeros before it is released.
//!
//! A [`LockedBox<T>`] owns one or more whole pages holding a single `T`. It is
//! meant for small, pointer-free secrets: key bytes and expanded key schedules.

use std::io;
use std::ptr::NonNull;

use zeroize::Zeroize;

/// A `T` in its own locked, non-dumpable pages, zeroed on drop.
pub struct LockedBox<T> {
    ptr: NonNull<T>,
    map_bytes: usize,
}

// SAFETY: LockedBox owns its T exclusively (like Box<T>), so it is Send/Sync
// exactly when T is.
unsafe impl<T: Send> Send for LockedBox<T> {}
// SAFETY: as above; shared references only hand out &T.
unsafe impl<T: Sync> Sync for LockedBox<T> {}

impl<T> LockedBox<T> {
    /// Allocates locked pages and moves `value` into them.
    ///
    /// The caller's copy of `value` is moved, not wiped: build secrets in place
    /// with [`LockedBox::new_filled`] where that matters, and call
    /// [`scrub_stack`] after constructing large secrets by value.
    pub fn new(value: T) -> io::Result<Self> {
        let map_bytes = page_round_up(size_of::<T>().max(1));
        let ptr = map_locked(map_bytes)?.cast::<T>();
        // SAFETY: `ptr` points to `map_bytes >= size_of::<T>()` writable bytes,
        // page-aligned (so aligned for any T with align <= page size, asserted
        // below), and nothing else refers to them yet.
        unsafe {
            assert!(align_of::<T>() <= page_bytes());
            ptr.as_ptr().write(value);
        }
        Ok(Self { ptr, map_bytes })
    }

    /// Shared access to the secret.
    pub fn get(&self) -> &T {
        // SAFETY: `ptr` was initialised in `new`/`new_filled` and lives as
        // long as `self`.
        unsafe { self.ptr.as_ref() }
    }

    /// Exclusive access to the secret.
    pub fn get_mut(&mut self) -> &mut T {
        // SAFETY: as in `get`; `&mut self` guarantees exclusivity.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T> LockedBox<T> {
    /// Allocates locked pages holding `blank` (a value that is not secret,
    /// such as all zeros) and lets `fill` write the secret in place, so no copy
    /// of it is left outside locked memory.
    pub fn new_filled<E>(
        blank: T,
        fill: impl FnOnce(&mut T) -> Result<(), E>,
    ) -> Result<Self, LockedFillError<E>> {
        let mut boxed = Self::new(blank).map_err(LockedFillError::Lock)?;
        fill(boxed.get_mut()).map_err(LockedFillError::Fill)?;
        Ok(boxed)
    }
}

/// Why [`LockedBox::new_filled`] failed.
#[derive(Debug)]
pub enum LockedFillError<E> {
    /// The pages could not be mapped or locked.
    Lock(io::Error),
    /// The fill function failed.
    Fill(E),
}

impl<T> Drop for LockedBox<T> {
    fn drop(&mut self) {
        // SAFETY: the T is initialised and dropped exactly once, here; the
        // mapping is ours, `map_bytes` long, and unmapped exactly once.
        unsafe {
            std::ptr::drop_in_place(self.ptr.as_ptr());
            let bytes =
                std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<u8>(), self.map_bytes);
            bytes.zeroize();
            libc::munlock(self.ptr.as_ptr().cast(), self.map_bytes);
            libc::munmap(self.ptr.as_ptr().cast(), self.map_bytes);
        }
    }
}

impl<T> std::fmt::Debug for LockedBox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockedBox(<secret>)")
    }
}

/// Overwrites a stretch of the stack below the caller's frame with zeros.
///
/// Building a secret by value (an AES key schedule, say) leaves a copy in a
/// dead stack frame; calling this right afterwards overwrites that frame.
#[inline(never)]
pub fn scrub_stack() {
    let mut scratch = [0u8; 16 * 1024];
    scratch.zeroize();
    std::hint::black_box(&mut scratch);
}

/// Bytes of stack [`scrub_callee_frames`] overwrites: about twice what
/// XTS uses below its caller (with VAES-512, x86_64: about 3 KiB for our
/// loop's frame, 4 KiB for the AES backend's, 3.5 KiB for its callees).
pub const CALLEE_FRAMES_BYTES: usize = 16 * 1024;

/// Overwrites the stack just below the caller's frame, where the frames of
/// the functions it has called were, with zeros: cheap enough to follow
/// every encryption (one memset of [`CALLEE_FRAMES_BYTES`]).
///
/// An AES backend keeps round keys in its frame (broadcast to vector
/// registers, spilled; AES-256's first two round keys are the key itself).
/// Left alone they stay in that dead frame of a long-lived thread (a crypto
/// worker, a queue worker), or in the cached stack of a thread that exited,
/// after the key was zeroized and unmapped: a rotated-away key would still
/// be in the daemon's memory.
#[inline]
pub fn scrub_callee_frames() {
    scrub_callee_frames_of::<CALLEE_FRAMES_BYTES>();
}

/// [`scrub_callee_frames`] over `BYTES` of stack, for callers that know
/// how deep their callees go (a test checks it: see `crypto::xts`).
#[inline(never)]
pub fn scrub_callee_frames_of<const BYTES: usize>() {
    let mut scratch = [0u8; BYTES];
    // The compiler must assume `black_box` reads the zeros, so the memset
    // stays (zeroize's volatile byte writes would cost ten times more on
    // this hot path).
    std::hint::black_box(&mut scratch);
}

fn page_bytes() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|s| *s > 0)
        .unwrap_or(4096)
}

fn page_round_up(bytes: usize) -> usize {
    bytes.div_ceil(page_bytes()) * page_bytes()
}

fn map_locked(map_bytes: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping has no preconditions; the result is
    // checked against MAP_FAILED before use.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `addr` is a fresh mapping of `map_bytes` bytes that we own.
    let locked = unsafe {
        // `||` stops at the first failure, so errno still describes it.
        if libc::mlock(addr, map_bytes) != 0
            || libc::madvise(addr, map_bytes, libc::MADV_DONTDUMP) != 0
        {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    if let Err(error) = locked {
        // SAFETY: unmapping the mapping we just made and will not use again.
        unsafe { libc::munmap(addr, map_bytes) };
        return Err(error);
    }
    NonNull::new(addr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_box_holds_value_and_is_locked() {
        let mut boxed = LockedBox::new([7u8; 64]).unwrap();
        assert_eq!(boxed.get()[0], 7);
        boxed.get_mut()[0] = 9;
        assert_eq!(boxed.get()[0], 9);
        // The page must be resident and locked: mincore reports it present.
        let mut vec = [0u8; 1];
        // SAFETY: querying residency of our own mapping.
        let rc = unsafe { libc::mincore(boxed.ptr.as_ptr().cast(), 64, vec.as_mut_ptr()) };
        assert_eq!(rc, 0);
        assert_eq!(vec[0] & 1, 1);
    }

    #[test]
    fn debug_hides_contents() {
        let boxed = LockedBox::new([0x41u8; 16]).unwrap();
        assert_eq!(format!("{boxed:?}"), "LockedBox(<secret>)");
    }
}
