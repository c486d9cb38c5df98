//! The extent index: which log record holds the newest version of each block.
//!
//! Extents are sorted, disjoint block ranges. Insertion is **newest wins**:
//! a range written under sequence number `s` replaces only the parts of older
//! extents with a smaller sequence number. Replay (whose records arrive in any
//! order across log heads) and concurrent writers therefore converge on the
//! same state: for every block, the record with the highest sequence number.

use std::collections::BTreeMap;

/// Where the blocks of an extent live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// The blocks read as zeros (discarded or written with zeros).
    Zero,
    /// The blocks are ciphertext in a data record.
    Data(DataLocation),
}

/// A data record in a segment, enough to find any of its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataLocation {
    /// Segment file holding the record.
    pub segment_id: u64,
    /// Offset of the record's block table (its first entry) in the
    /// segment, bytes. Entries are as wide as the segment's version says.
    pub table_offset: u64,
    /// Offset of the record's first block of ciphertext in the segment.
    pub payload_offset: u64,
    /// First block the record covers (the extent may cover a sub-range).
    pub record_lba: u64,
    /// Blocks the record covers.
    pub record_blocks: u32,
    /// Index of the record's key id in the store's key table.
    pub key_index: u32,
}

/// One extent: `blocks` blocks from a starting block (the map key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Blocks covered.
    pub blocks: u64,
    /// Sequence number of the write that produced the blocks.
    pub seq: u64,
    /// Where they are.
    pub location: Location,
}

/// A piece of a looked-up range: `blocks` blocks from `lba`, either mapped to
/// an extent or a hole (never written: reads as zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// First block of the piece.
    pub lba: u64,
    /// Blocks in the piece.
    pub blocks: u64,
    /// The extent's data, or `None` for a hole.
    pub extent: Option<(u64, Location)>,
}

/// Sorted, disjoint extents keyed by first block.
#[derive(Clone, Debug, Default)]
pub struct ExtentIndex {
    extents: BTreeMap<u64, Extent>,
}

impl ExtentIndex {
    /// An empty index: every block is a hole.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of extents.
    pub fn len(&self) -> usize {
        self.extents.len()
    }

    /// True when no block is mapped.
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// The segments data extents refer to.
    pub fn segments(&self) -> std::collections::BTreeSet<u64> {
        self.extents
            .values()
            .filter_map(|extent| match extent.location {
                Location::Data(d) => Some(d.segment_id),
                Location::Zero => None,
            })
            .collect()
    }

    /// Every extent in block order: (first block, extent).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Extent)> {
        self.extents.iter().map(|(lba, extent)| (*lba, extent))
    }

    /// Maps `blocks` blocks from `lba` to `location` as written under `seq`,
    /// except where a newer write already holds a block.
    pub fn insert(&mut self, lba: u64, blocks: u64, seq: u64, location: Location) {
        assert!(blocks > 0, "empty extent at {lba}");
        let end = lba.checked_add(blocks).expect("extent end overflows u64");
        // Gaps of [lba, end) not held by newer extents get the new location.
        let mut free_from = lba;
        let mut newer_ranges: Vec<(u64, u64)> = Vec::new();
        for (start, extent) in self.overlapping(lba, end) {
            if extent.seq > seq {
                newer_ranges.push((start.max(lba), (start + extent.blocks).min(end)));
            } else {
                self.cut(start, lba, end);
            }
        }
        for (newer_start, newer_end) in newer_ranges {
            if newer_start > free_from {
                self.put(free_from, newer_start - free_from, seq, location);
            }
            free_from = free_from.max(newer_end);
        }
        if free_from < end {
            self.put(free_from, end - free_from, seq, location);
        }
        self.debug_check_sorted_and_disjoint();
    }

    /// The range `blocks` blocks from `lba` as pieces in block order.
    pub fn lookup(&self, lba: u64, blocks: u64) -> Vec<Piece> {
        let end = lba + blocks;
        let mut pieces = Vec::new();
        let mut cursor = lba;
        for (start, extent) in self.overlapping(lba, end) {
            let piece_start = start.max(lba);
            if piece_start > cursor {
                pieces.push(Piece {
                    lba: cursor,
                    blocks: piece_start - cursor,
                    extent: None,
                });
            }
            let piece_end = (start + extent.blocks).min(end);
            pieces.push(Piece {
                lba: piece_start,
                blocks: piece_end - piece_start,
                extent: Some((extent.seq, extent.location)),
            });
            cursor = piece_end;
        }
        if cursor < end {
            pieces.push(Piece {
                lba: cursor,
                blocks: end - cursor,
                extent: None,
            });
        }
        pieces
    }

    /// Extents overlapping [lba, end), copied out so the map can be changed.
    /// One search, walking back from the last extent that starts before
    /// `end`: extents are sorted and disjoint, so the first one that ends at
    /// or before `lba` ends the walk.
    fn overlapping(&self, lba: u64, end: u64) -> Vec<(u64, Extent)> {
        let mut found: Vec<(u64, Extent)> = self
            .extents
            .range(..end)
            .rev()
            .take_while(|(start, extent)| **start + extent.blocks > lba)
            .map(|(start, extent)| (*start, *extent))
            .collect();
        found.reverse();
        found
    }

    /// Removes [lba, end) from the extent starting at `start`, keeping the
    /// parts before and after.
    fn cut(&mut self, start: u64, lba: u64, end: u64) {
        let extent = self
            .extents
            .remove(&start)
            .expect("cut of a missing extent");
        let extent_end = start + extent.blocks;
        if start < lba {
            self.extents.insert(
                start,
                Extent {
                    blocks: lba - start,
                    ..extent
                },
            );
        }
        if extent_end > end {
            self.extents.insert(
                end,
                Extent {
                    blocks: extent_end - end,
                    ..extent
                },
            );
        }
    }

    fn put(&mut self, lba: u64, blocks: u64, seq: u64, location: Location) {
        let previous = self.extents.insert(
            lba,
            Extent {
                blocks,
                seq,
                location,
            },
        );
        debug_assert!(previous.is_none(), "put over an existing extent at {lba}");
    }

    /// O(n) check that extents are sorted and disjoint; debug builds only.
    fn debug_check_sorted_and_disjoint(&self) {
        if cfg!(debug_assertions) && self.extents.len() <= 4096 {
            let mut previous_end = 0;
            for (start, extent) in &self.extents {
                assert!(*start >= previous_end, "extent at {start} overlaps");
                assert!(extent.blocks > 0);
                previous_end = start + extent.blocks;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(tag: u64) -> Location {
        Location::Data(DataLocation {
            segment_id: tag,
            table_offset: 0,
            payload_offset: 0,
            record_lba: 0,
            record_blocks: 1,
            key_index: 0,
        })
    }

    /// Reference: a per-block array of (seq, tag) with newest-wins writes.
    fn model_apply(model: &mut [Option<(u64, u64)>], lba: u64, blocks: u64, seq: u64, tag: u64) {
        for block in lba..lba + blocks {
            let slot = &mut model[block as usize];
            if slot.is_none_or(|(old, _)| old < seq) {
                *slot = Some((seq, tag));
            }
        }
    }

    proptest! {
        #[test]
        fn newest_write_wins_in_any_order(
            writes in proptest::collection::vec((0u64..60, 1u64..8), 1..40),
            order_seed in any::<u64>(),
        ) {
            let mut order: Vec<usize> = (0..writes.len()).collect();
            // Shuffle deterministically from the seed: replay order is arbitrary.
            let mut state = order_seed | 1;
            for i in (1..order.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                order.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let mut index = ExtentIndex::new();
            let mut model = vec![None; 80];
            for &i in &order {
                let (lba, blocks) = writes[i];
                let seq = i as u64 + 1;
                index.insert(lba, blocks, seq, data(seq));
                model_apply(&mut model, lba, blocks, seq, seq);
            }
            for piece in index.lookup(0, 80) {
                for block in piece.lba..piece.lba + piece.blocks {
                    let got = piece.extent.map(|(seq, loc)| match loc {
                        Location::Data(d) => (seq, d.segment_id),
                        Location::Zero => (seq, u64::MAX),
                    });
                    prop_assert_eq!(got, model[block as usize], "block {}", block);
                }
            }
        }
    }

    #[test]
    fn lookup_reports_holes_and_splits() {
        let mut index = ExtentIndex::new();
        index.insert(10, 10, 1, data(1));
        index.insert(12, 2, 2, Location::Zero);
        let pieces = index.lookup(8, 14);
        let shape: Vec<(u64, u64, Option<u64>)> = pieces
            .iter()
            .map(|p| (p.lba, p.blocks, p.extent.map(|e| e.0)))
            .collect();
        assert_eq!(
            shape,
            vec![
                (8, 2, None),
                (10, 2, Some(1)),
                (12, 2, Some(2)),
                (14, 6, Some(1)),
                (20, 2, None)
            ]
        );
    }

    #[test]
    fn older_write_does_not_overwrite_newer() {
        let mut index = ExtentIndex::new();
        index.insert(0, 4, 5, data(5));
        index.insert(0, 8, 3, data(3));
        let pieces = index.lookup(0, 8);
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].extent.unwrap().0, 5);
        assert_eq!(pieces[1].extent.unwrap().0, 3);
    }
}
