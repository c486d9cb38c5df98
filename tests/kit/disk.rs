//! A byte model of a disk: what every byte must read as, kept in step with
//! what a client wrote, and checked against what a daemon returns.

use super::blkio::BlkClient;
use super::data::{BLOCK, assert_same, fill};

/// Bytes of one write [`Disk::write`] sends.
const WRITE_BYTES: u64 = 1 << 20;

/// What every byte of a disk must read as.
#[derive(Clone)]
pub struct Disk {
    bytes: Vec<u8>,
}

impl Disk {
    /// A disk of `size` bytes that was never written: zeros.
    pub fn zeros(size: u64) -> Self {
        Self {
            bytes: vec![0; size as usize],
        }
    }

    /// Size, bytes.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Every byte.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `data` was written at `offset`.
    pub fn put(&mut self, offset: u64, data: &[u8]) {
        self.bytes[offset as usize..offset as usize + data.len()].copy_from_slice(data);
    }

    /// `offset..offset + len` was zeroed (write-zeroes, discard).
    pub fn zero(&mut self, offset: u64, len: u64) {
        self.bytes[offset as usize..(offset + len) as usize].fill(0);
    }

    /// What `offset..offset + len` must read as.
    pub fn range(&self, offset: u64, len: u64) -> &[u8] {
        &self.bytes[offset as usize..(offset + len) as usize]
    }

    /// Bytes in 4 KiB blocks that are not all zeros: what the log keeps
    /// live when every block was written once at least and none was zeroed.
    pub fn non_zero_bytes(&self) -> u64 {
        let blocks = self.bytes.chunks(BLOCK as usize);
        blocks.filter(|b| b.iter().any(|x| *x != 0)).count() as u64 * BLOCK
    }

    /// Writes `fill(tag, ..)` over `offset..offset + len` through queue 0
    /// (1 MiB requests) and into the model.
    pub fn write(&mut self, client: &mut BlkClient, tag: &str, offset: u64, len: u64) {
        let data = fill(tag, offset, len);
        for (n, piece) in data.chunks(WRITE_BYTES as usize).enumerate() {
            let at = offset + n as u64 * WRITE_BYTES;
            client
                .write(0, at, piece)
                .unwrap_or_else(|e| panic!("write of {tag} at {at}: {e:?}"));
        }
        self.put(offset, &data);
    }

    /// Reads the whole disk through queue 0 of `client` and compares.
    pub fn check(&self, client: &mut BlkClient, context: &str) {
        let got = client
            .read_large(0, 0, self.size())
            .unwrap_or_else(|e| panic!("{context}: {e}"));
        assert_same(&got, &self.bytes, 0, context);
    }
}
