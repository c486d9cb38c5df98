//! Aligned buffers: memory that direct I/O can read into and write from.
//!
//! Every frame of a version 2 segment is written from memory that is
//! [`ALIGN`]-aligned, in lengths that are multiples of [`ALIGN`], at
//! [`ALIGN`]-aligned file offsets: what `O_DIRECT` asks of all three. An
//! [`AlignedBuf`] is such memory: its start is aligned and its capacity is a
//! whole number of aligned blocks; its length (the bytes in use) may be any
//! size up to the capacity, and the bytes past the length are kept zero so
//! that a buffer written out whole pads with zeros.
//!
//! Buffers come from a small process-wide pool of freed buffers, one free
//! list per power-of-two size class up to [`POOLED_BYTES_MAX`], so the write
//! path does not call the allocator per request; larger buffers are
//! allocated and freed directly. The pool remembers how much of a freed
//! buffer was used, so handing it out again clears only those bytes, and
//! not even them when the new owner overwrites them all
//! ([`AlignedBuf::copy_from`], [`AlignedBuf::overwritten_by`]).

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use crate::sync::LockOrRecover;

/// Alignment of start, capacity and file offsets, bytes.
pub const ALIGN: usize = 4096;
/// Largest capacity the pool keeps for reuse, bytes.
pub const POOLED_BYTES_MAX: usize = 1 << 20;
/// Size classes: 4 KiB, 8 KiB, ... [`POOLED_BYTES_MAX`].
const CLASSES: usize = (POOLED_BYTES_MAX / ALIGN).trailing_zeros() as usize + 1;
/// Free bytes each size class may keep (at least one buffer): a queue's
/// whole write batch of one request size, so that the next batch's shadow
/// buffers all come back from the pool. Memory fresh from the allocator
/// costs a page fault and a zeroing per 4 KiB on first touch (with 4 MiB
/// here, half of each batch of eight 1 MiB writes did); the pool keeps no
/// more than was once in use at once.
const CLASS_FREE_BYTES_MAX: usize = crate::limits::WRITE_BATCH_BYTES_MAX as usize;

/// One aligned block of the buffer's storage.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; ALIGN]);
const _: () = assert!(std::mem::size_of::<Block>() == ALIGN);
const _: () = assert!(std::mem::align_of::<Block>() == ALIGN);

/// Rounds `bytes` up to a multiple of [`ALIGN`].
pub const fn align_up(bytes: usize) -> usize {
    bytes.div_ceil(ALIGN) * ALIGN
}

/// A byte buffer whose start is [`ALIGN`]-aligned and whose capacity is a
/// multiple of [`ALIGN`]; bytes past its length are zero. Derefs to the
/// bytes in use. Returned to the pool when dropped.
pub struct AlignedBuf {
    blocks: Vec<Block>,
    len: usize,
    /// Bytes from the start that may be non-zero: the largest length set.
    dirty: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (capacity `len` rounded up to
    /// [`ALIGN`], or one block for an empty buffer).
    pub fn zeroed(len: usize) -> Self {
        let mut buf = Self::with_len(len);
        let dirty = std::mem::replace(&mut buf.dirty, len);
        buf.padded_mut()[..dirty].fill(0);
        buf
    }

    /// A buffer holding a copy of `bytes`.
    pub fn copy_from(bytes: &[u8]) -> Self {
        let filled: Result<Self, std::convert::Infallible> =
            Self::overwritten_by(bytes.len(), |buf| {
                buf.copy_from_slice(bytes);
                Ok(())
            });
        match filled {
            Ok(buf) => buf,
            Err(never) => match never {},
        }
    }

    /// A buffer of `len` bytes that `fill` writes, every byte of it (what
    /// it leaves unwritten holds whatever an earlier owner of the storage
    /// left there); the padding past `len` is zero. A `fill` error drops
    /// the buffer and is returned.
    pub fn overwritten_by<E>(
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<Self, E> {
        let mut buf = Self::with_len(len);
        let dirty = buf.dirty;
        if dirty > len {
            buf.padded_mut()[len..dirty].fill(0);
        }
        buf.dirty = len;
        fill(&mut buf)?;
        Ok(buf)
    }

    /// Storage for `len` bytes from the pool or the allocator; `dirty`
    /// says how much of it may be non-zero.
    fn with_len(len: usize) -> Self {
        let blocks = align_up(len.max(1)) / ALIGN;
        let (storage, dirty) = POOL.take(blocks).unwrap_or_else(|| {
            let class_blocks = if Pool::class(blocks.next_power_of_two()).is_some() {
                blocks.next_power_of_two()
            } else {
                blocks
            };
            let mut v = Vec::with_capacity(class_blocks);
            v.resize(blocks, Block([0; ALIGN]));
            (v, 0)
        });
        Self {
            dirty: dirty.min(blocks * ALIGN),
            blocks: storage,
            len,
        }
    }

    /// Bytes in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no byte is in use.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of storage: the length rounded up to [`ALIGN`].
    pub fn capacity(&self) -> usize {
        self.blocks.len() * ALIGN
    }

    /// The whole storage: the bytes in use, then zeros up to the capacity.
    pub fn padded(&self) -> &[u8] {
        // SAFETY: `blocks` is a live Vec of `Block`s, plain byte arrays with
        // no padding (size == ALIGN, asserted above), so its storage is
        // `capacity()` initialized bytes; the borrow of `self` keeps it alive
        // and unaliased by `&mut`.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast::<u8>(), self.capacity()) }
    }

    fn padded_mut(&mut self) -> &mut [u8] {
        let capacity = self.capacity();
        // SAFETY: as in `padded`, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<u8>(), capacity) }
    }

    /// Sets the length to `len` (at most the capacity); bytes between the
    /// old and new lengths read as zero.
    pub fn truncate_or_extend(&mut self, len: usize) {
        assert!(len <= self.capacity(), "length past the capacity");
        if len < self.len {
            let old = self.len;
            self.padded_mut()[len..old].fill(0);
        }
        self.len = len;
        self.dirty = self.dirty.max(len);
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.padded()[..self.len]
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.padded_mut()[..len]
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        Self::copy_from(self)
    }
}

impl std::fmt::Debug for AlignedBuf {
    /// The size only: buffers hold guest data or ciphertext.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} of {} bytes)", self.len, self.capacity())
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        POOL.give(std::mem::take(&mut self.blocks), self.dirty);
    }
}

/// Free storage of one size class, and how many bytes of each may be
/// non-zero.
type FreeList = Vec<(Vec<Block>, usize)>;

/// Free storage by size class (class `c` holds `1 << c` blocks).
struct Pool {
    classes: [Mutex<FreeList>; CLASSES],
}

static POOL: Pool = Pool {
    classes: [const { Mutex::new(Vec::new()) }; CLASSES],
};

impl Pool {
    /// The class whose buffers are exactly `blocks` blocks, if pooled.
    fn class(blocks: usize) -> Option<usize> {
        (blocks.is_power_of_two() && blocks * ALIGN <= POOLED_BYTES_MAX)
            .then(|| blocks.trailing_zeros() as usize)
    }

    /// Storage of `blocks` blocks from the pool, if it has some, and how
    /// many bytes of it may be non-zero. Requests of other sizes round up
    /// to the next class.
    fn take(&self, blocks: usize) -> Option<(Vec<Block>, usize)> {
        let class = Self::class(blocks.next_power_of_two())?;
        let (mut storage, dirty) = self.classes[class].lock_or_recover().pop()?;
        storage.truncate(blocks);
        Some((storage, dirty))
    }

    /// Keeps `storage`, of which the first `dirty` bytes may be non-zero,
    /// for reuse if its class has room.
    fn give(&self, mut storage: Vec<Block>, dirty: usize) {
        let blocks = storage.capacity();
        let Some(class) = Self::class(blocks) else {
            return;
        };
        // Growing back to the class size writes zeros over the blocks a
        // shorter owner had truncated away.
        storage.resize(blocks, Block([0; ALIGN]));
        let mut free = self.classes[class].lock_or_recover();
        if free.is_empty() || (free.len() + 1) * blocks * ALIGN <= CLASS_FREE_BYTES_MAX {
            free.push((storage, dirty));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_padded_with_zeros_and_reused_clean() {
        for len in [0, 1, 512, 4096, 4097, 12288, 1 << 20, (1 << 20) + 512] {
            let mut buf = AlignedBuf::zeroed(len);
            assert_eq!(buf.as_ptr() as usize % ALIGN, 0, "len {len}");
            assert_eq!(buf.len(), len);
            assert_eq!(buf.capacity(), align_up(len.max(1)));
            assert!(buf.padded().iter().all(|b| *b == 0));
            buf.fill(0xa5);
            assert!(buf.padded()[len..].iter().all(|b| *b == 0));
        }
        // Every buffer above was dirtied and dropped: a new one from the
        // same classes must still be zero, and a copy padded with zeros.
        for len in [4096, 8192, 1 << 20] {
            assert!(AlignedBuf::zeroed(len).padded().iter().all(|b| *b == 0));
            let mut dirty = AlignedBuf::zeroed(len);
            dirty.fill(0x5a);
            drop(dirty);
            let copy = AlignedBuf::copy_from(&[1u8; 100]);
            assert!(copy.padded()[100..].iter().all(|b| *b == 0));
        }
    }

    #[test]
    fn truncating_zeroes_the_tail() {
        let mut buf = AlignedBuf::copy_from(&[7u8; 5000]);
        buf.truncate_or_extend(100);
        buf.truncate_or_extend(5000);
        assert!(buf[..100].iter().all(|b| *b == 7));
        assert!(buf[100..].iter().all(|b| *b == 0));
    }
}
