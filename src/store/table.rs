//! Block tables: one entry per block of a data record, in block order,
//! that lets a reader check each block's ciphertext before using it. This
//! module alone knows the entry layouts and builds and checks them.
//!
//! - Version 1 segments: 4 bytes per block, the CRC32C of the block's
//!   ciphertext (u32 little-endian).
//! - Version 2 segments: 16 bytes per block, the same CRC32C, then a 12-byte
//!   tag that authenticates the block (zero when the volume's records carry
//!   no MACs).

/// Bytes of one version 1 table entry.
pub const V1_ENTRY_BYTES: usize = 4;
/// Bytes of one version 2 table entry.
pub const V2_ENTRY_BYTES: usize = 16;

/// The table layout of a segment version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFormat {
    /// 4-byte entries: CRC32C.
    V1,
    /// 16-byte entries: CRC32C, then a 12-byte tag.
    V2,
}

impl TableFormat {
    /// Bytes of one entry.
    pub const fn entry_bytes(self) -> usize {
        match self {
            TableFormat::V1 => V1_ENTRY_BYTES,
            TableFormat::V2 => V2_ENTRY_BYTES,
        }
    }

    /// Bytes of the table of a record of `blocks` blocks.
    pub const fn table_bytes(self, blocks: u64) -> u64 {
        blocks * self.entry_bytes() as u64
    }

    /// Fills `table` with the entries of the whole blocks in `blocks`
    /// (`block_bytes` each), in order: each block's CRC32C, and for
    /// version 2 a zero tag (tags are written by whoever holds the MAC key).
    pub fn fill(self, blocks: &[u8], block_bytes: usize, table: &mut [u8]) {
        debug_assert_eq!(blocks.len() % block_bytes, 0);
        assert_eq!(
            table.len(),
            blocks.len() / block_bytes * self.entry_bytes(),
            "block table size"
        );
        for (block, entry) in blocks
            .chunks_exact(block_bytes)
            .zip(table.chunks_exact_mut(self.entry_bytes()))
        {
            entry[..4].copy_from_slice(&crc32c::crc32c(block).to_le_bytes());
            entry[4..].fill(0);
        }
    }

    /// The table of `payload` (whole blocks of `block_bytes`).
    pub fn build(self, payload: &[u8], block_bytes: usize) -> Vec<u8> {
        let mut table = vec![0u8; payload.len() / block_bytes * self.entry_bytes()];
        self.fill(payload, block_bytes, &mut table);
        table
    }

    /// The index of the first of the whole blocks in `blocks` whose CRC32C
    /// differs from its entry in `table` (same order), or `None`.
    pub fn first_corrupt_block(
        self,
        blocks: &[u8],
        block_bytes: usize,
        table: &[u8],
    ) -> Option<usize> {
        debug_assert_eq!(table.len(), blocks.len() / block_bytes * self.entry_bytes());
        blocks
            .chunks_exact(block_bytes)
            .zip(table.chunks_exact(self.entry_bytes()))
            .position(|(block, entry)| crc32c::crc32c(block).to_le_bytes() != entry[..4])
    }

    /// `table` (in this format) as a version 2 table: the same CRCs, and
    /// zero tags where this format has none.
    pub fn to_v2(self, table: &[u8]) -> Vec<u8> {
        match self {
            TableFormat::V2 => table.to_vec(),
            TableFormat::V1 => table
                .chunks_exact(V1_ENTRY_BYTES)
                .flat_map(|crc| {
                    let mut entry = [0u8; V2_ENTRY_BYTES];
                    entry[..4].copy_from_slice(crc);
                    entry
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_the_documented_bytes() {
        let blocks: Vec<u8> = (0..2 * 512).map(|i| (i % 251) as u8).collect();
        let crc0 = crc32c::crc32c(&blocks[..512]).to_le_bytes();
        let crc1 = crc32c::crc32c(&blocks[512..]).to_le_bytes();
        let v1 = TableFormat::V1.build(&blocks, 512);
        assert_eq!(v1, [crc0, crc1].concat());
        let v2 = TableFormat::V2.build(&blocks, 512);
        let mut expected = vec![0u8; 32];
        expected[..4].copy_from_slice(&crc0);
        expected[16..20].copy_from_slice(&crc1);
        assert_eq!(v2, expected);
        assert_eq!(TableFormat::V1.to_v2(&v1), v2);
    }

    #[test]
    fn a_changed_block_is_found() {
        let mut blocks = vec![7u8; 3 * 4096];
        for format in [TableFormat::V1, TableFormat::V2] {
            let table = format.build(&blocks, 4096);
            assert_eq!(format.first_corrupt_block(&blocks, 4096, &table), None);
            blocks[4096 + 9] ^= 1;
            assert_eq!(format.first_corrupt_block(&blocks, 4096, &table), Some(1));
            blocks[4096 + 9] ^= 1;
        }
    }
}
