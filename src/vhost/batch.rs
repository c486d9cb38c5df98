//! A queue's batches: the writes and the reads of one job (see
//! `pipeline`), and the guest memory they read from or fill.

use vhost_user_backend::bitmap::BitmapMmapRegion;
use vm_memory::{Bytes, GuestMemoryBackend, VolatileSlice};

use super::completion::Outcome;
use super::request::Desc;
use super::state::GuestRam;
use super::worker::HostError;
use crate::limits::WRITE_BATCH_BYTES_MAX;
use crate::store::AlignedBuf;
use crate::volume::Change;

/// Writes appended together: at most `WRITE_BATCH_BYTES_MAX` of them, as
/// the guest picks how many are in flight.
#[derive(Default)]
pub(crate) struct WriteBatch {
    pub(crate) outcomes: Vec<Outcome>,
    pub(crate) items: Vec<Change>,
    pub(crate) bytes: u64,
}

impl WriteBatch {
    /// Adds the write of `outcome`: `shadow` at byte `offset`.
    pub(crate) fn push(&mut self, outcome: Outcome, offset: u64, shadow: AlignedBuf) {
        self.bytes += shadow.len() as u64;
        self.outcomes.push(outcome);
        self.items.push(Change::Write {
            offset,
            data: shadow,
        });
    }

    /// True when a write of `bytes` more would take the batch past its limit.
    pub(crate) fn is_full_for(&self, bytes: u64) -> bool {
        self.bytes + bytes > WRITE_BATCH_BYTES_MAX
    }
}

/// Reads run together (their ciphertext in flight at once): each with the
/// guest buffers it fills.
#[derive(Default)]
pub(crate) struct ReadBatch {
    pub(crate) outcomes: Vec<Outcome>,
    pub(crate) requests: Vec<(u64, Vec<GuestBuffer>)>,
    pub(crate) bytes: u64,
}

impl ReadBatch {
    /// Adds the read of `outcome`: byte `offset` into `buffers`.
    pub(crate) fn push(&mut self, outcome: Outcome, offset: u64, buffers: Vec<GuestBuffer>) {
        self.bytes += outcome.bytes;
        self.outcomes.push(outcome);
        self.requests.push((offset, buffers));
    }

    /// True when one of `buffers` shares guest memory with a read already
    /// in the batch (the guest may point two reads at the same pages; they
    /// then run one after the other, as written).
    pub(crate) fn overlaps(&self, buffers: &[GuestBuffer]) -> bool {
        let ours = self.requests.iter().flat_map(|(_, bufs)| bufs.iter());
        ours.into_iter()
            .any(|a| buffers.iter().any(|b| a.overlaps(b.ptr as usize, b.len)))
    }

    /// The guest memory the batch fills: (address, length) of each buffer.
    pub(crate) fn ranges(&self) -> Vec<(usize, usize)> {
        self.requests
            .iter()
            .flat_map(|(_, bufs)| bufs.iter().map(|b| (b.ptr as usize, b.len)))
            .collect()
    }
}

/// A guest buffer as host memory, valid while the memory guard lives.
pub(crate) struct GuestBuffer {
    pub(crate) ptr: *mut u8,
    pub(crate) len: usize,
    /// Its region's dirty-page log, from the buffer's first byte.
    pub(crate) dirty: BitmapMmapRegion,
}

// SAFETY: a `GuestBuffer` is a view of guest memory, which lives as long as
// the memory guard its drain holds (every job of the drain ends before the
// guard is dropped, see `pipeline`); one job fills it, on whichever thread
// runs that job, and the lane keeps a second read into the same memory
// waiting until the first is done (`Lane::fills`).
unsafe impl Send for GuestBuffer {}

impl GuestBuffer {
    /// True when the buffer shares a byte with `address..address + len`.
    fn overlaps(&self, address: usize, len: usize) -> bool {
        let start = self.ptr as usize;
        start < address + len && address < start + self.len
    }

    /// The buffer as a byte slice.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr..ptr+len` lies inside a guest memory region mapped for
        // as long as the caller holds the memory guard (it does, for the whole
        // request), and the parser checked the range is in guest memory. The
        // guest may touch the same bytes concurrently; that is its own race on
        // its own buffer, and we never make decisions on values read back
        // from it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// Host views of the guest buffers `data` (split where they cross regions).
pub(crate) fn guest_buffers(mem: &GuestRam, data: &[Desc]) -> Result<Vec<GuestBuffer>, HostError> {
    let mut buffers = Vec::with_capacity(data.len());
    for desc in data {
        for slice in mem.get_slices(desc.addr, desc.len as usize) {
            let slice: VolatileSlice<'_, BitmapMmapRegion> =
                slice.map_err(|e| HostError::Memory(e.to_string()))?;
            let guard = slice.ptr_guard_mut();
            buffers.push(GuestBuffer {
                ptr: guard.as_ptr(),
                len: slice.len(),
                dirty: slice.bitmap().clone(),
            });
        }
    }
    Ok(buffers)
}

/// Copies the guest buffers `data` (`bytes` in all, the sum of their
/// lengths) into one aligned shadow buffer.
pub(crate) fn gather(mem: &GuestRam, data: &[Desc], bytes: u64) -> Result<AlignedBuf, HostError> {
    AlignedBuf::overwritten_by(bytes as usize, |shadow| {
        let mut at = 0usize;
        for desc in data {
            let len = desc.len as usize;
            mem.read_slice(&mut shadow[at..at + len], desc.addr)
                .map_err(|e| HostError::Memory(e.to_string()))?;
            at += len;
        }
        debug_assert_eq!(at, shadow.len());
        Ok(())
    })
}
