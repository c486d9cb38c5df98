//! Striped locks that keep a read-modify-write of a block from interleaving
//! with any other write to that block.
//!
//! Whole-block writes need no mutual exclusion among themselves (the newest
//! sequence number wins everywhere), so they take the stripes shared; a
//! partial-block write reads the old block, patches it and appends it, and
//! takes its stripes exclusively for that whole time. A stripe covers 1 MiB
//! regions of the volume (256 blocks of 4 KiB), hashed over 64 locks.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Number of stripes: enough that unrelated writes rarely share one.
const STRIPES: usize = 64;
/// Blocks per region, as a shift: 2^8 = 256 blocks.
const REGION_SHIFT: u32 = 8;

/// The stripe locks of one volume.
#[derive(Debug)]
pub struct StripeLocks {
    stripes: Vec<RwLock<()>>,
}

/// Locks held for one write; released on drop.
pub enum Held<'a> {
    /// Shared holds (whole-block writes).
    Shared(#[allow(dead_code)] Vec<RwLockReadGuard<'a, ()>>),
    /// Exclusive holds (read-modify-write).
    Exclusive(#[allow(dead_code)] Vec<RwLockWriteGuard<'a, ()>>),
}

impl StripeLocks {
    /// A fresh set of stripes.
    pub fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }

    /// Locks every stripe that blocks [first, end) fall in, in index order
    /// (so two writers can never deadlock).
    pub fn lock(&self, first: u64, end: u64, exclusive: bool) -> Held<'_> {
        self.lock_ranges(&[(first, end)], exclusive)
    }

    /// Locks every stripe any of the block ranges [first, end) falls in, each
    /// stripe once, in index order.
    pub fn lock_ranges(&self, ranges: &[(u64, u64)], exclusive: bool) -> Held<'_> {
        let mut wanted = [false; STRIPES];
        for &(first, end) in ranges {
            let first_region = first >> REGION_SHIFT;
            let last_region = (end.max(first + 1) - 1) >> REGION_SHIFT;
            for region in first_region..=last_region.min(first_region + STRIPES as u64) {
                wanted[(region % STRIPES as u64) as usize] = true;
            }
        }
        let chosen = self
            .stripes
            .iter()
            .zip(wanted)
            .filter(|(_, w)| *w)
            .map(|(s, _)| s);
        if exclusive {
            Held::Exclusive(
                chosen
                    .map(|s| s.write().unwrap_or_else(|p| p.into_inner()))
                    .collect(),
            )
        } else {
            Held::Shared(
                chosen
                    .map(|s| s.read().unwrap_or_else(|p| p.into_inner()))
                    .collect(),
            )
        }
    }
}

impl Default for StripeLocks {
    fn default() -> Self {
        Self::new()
    }
}
