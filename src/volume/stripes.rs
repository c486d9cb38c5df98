//! Striped locks that keep a read-modify-write of a block from interleaving
//! with any other write to that block.
//!
//! Whole-block writes need no mutual exclusion among themselves (the newest
//! sequence number wins everywhere), so they take the stripes shared; a
//! partial-block write reads the old block, patches it and appends it, and
//! takes its stripes exclusively for that whole time. A stripe covers 1 MiB
//! regions of the volume (256 blocks of 4 KiB), hashed over 64 locks.
//!
//! Poisoning: the stripes guard no data (`()`), so a panic while one is
//! held leaves nothing half changed; they are taken with the recovering
//! helpers of [`crate::sync`].

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::sync::RwLockOrRecover;

/// Number of stripes: enough that unrelated writes rarely share one.
const STRIPES: usize = 64;
/// Blocks per region, as a shift: 2^8 = 256 blocks.
const REGION_SHIFT: u32 = 8;

/// The stripe locks of one volume.
#[derive(Debug)]
pub struct StripeLocks {
    stripes: Vec<RwLock<()>>,
}

/// Blocks `first..end` that one change of a batch touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRange {
    /// First block.
    pub first: u64,
    /// One past the last block.
    pub end: u64,
    /// The change reads the old blocks first (read-modify-write): its
    /// stripes are taken exclusively.
    pub exclusive: bool,
}

/// One stripe held, shared or exclusive; released on drop.
pub enum StripeHold<'a> {
    /// Shared (whole-block writes).
    Shared(#[allow(dead_code)] RwLockReadGuard<'a, ()>),
    /// Exclusive (read-modify-write).
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'a, ()>),
}

/// The stripes held for one batch; released on drop.
pub struct Held<'a>(#[allow(dead_code)] Vec<StripeHold<'a>>);

impl StripeLocks {
    /// A fresh set of stripes.
    pub fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }

    /// Locks every stripe any of `ranges` falls in, each once and in index
    /// order (so two writers can never deadlock): exclusively if any
    /// exclusive range falls in it, else shared.
    pub fn lock_ranges(&self, ranges: &[BlockRange]) -> Held<'_> {
        // Per stripe: None (not wanted), Some(false) shared, Some(true) exclusive.
        let mut wanted: [Option<bool>; STRIPES] = [None; STRIPES];
        for range in ranges {
            let first_region = range.first >> REGION_SHIFT;
            let last_region = (range.end.max(range.first + 1) - 1) >> REGION_SHIFT;
            for region in first_region..=last_region.min(first_region + STRIPES as u64) {
                let stripe = &mut wanted[(region % STRIPES as u64) as usize];
                *stripe = Some(stripe.unwrap_or(false) || range.exclusive);
            }
        }
        Held(
            self.stripes
                .iter()
                .zip(wanted)
                .filter_map(|(stripe, mode)| {
                    mode.map(|exclusive| {
                        if exclusive {
                            StripeHold::Exclusive(stripe.write_or_recover())
                        } else {
                            StripeHold::Shared(stripe.read_or_recover())
                        }
                    })
                })
                .collect(),
        )
    }
}

impl Default for StripeLocks {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stripe_is_exclusive_when_any_range_in_it_is() {
        let locks = StripeLocks::new();
        let held = locks.lock_ranges(&[
            BlockRange {
                first: 0,
                end: 1,
                exclusive: false,
            },
            BlockRange {
                first: 10,
                end: 11,
                exclusive: true,
            },
            BlockRange {
                first: 256,
                end: 257,
                exclusive: false,
            },
        ]);
        assert!(locks.stripes[0].try_read().is_err(), "stripe 0 exclusive");
        assert!(locks.stripes[1].try_read().is_ok(), "stripe 1 shared");
        assert!(locks.stripes[1].try_write().is_err());
        assert!(locks.stripes[2].try_write().is_ok(), "stripe 2 not held");
        drop(held);
        assert!(locks.stripes[0].try_write().is_ok());
    }
}
