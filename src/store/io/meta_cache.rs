//! A bounded cache of frame meta: the 4 KiB pages of segment files that
//! hold frame headers, record headers and block tables (each block's
//! CRC, and tag where the volume has MACs). A read needs its blocks'
//! entries to verify them; with segment files read `O_DIRECT` (no page
//! cache) a miss costs a second device read, so the pages of every frame
//! this process writes go in at write time, and pages read on a miss go
//! in too. Least recently used pages leave first.
//!
//! Pages are keyed by segment id and file offset. Segment ids are never
//! reused, so a deleted segment's pages are never looked up again (they
//! age out); the one place a segment's bytes change under the same key is
//! a failed append taken back, which forgets the pages from that offset
//! ([`MetaCache::forget_from`]).

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;
use serde::Serialize;

use super::super::aligned::ALIGN;
use crate::sync::LockOrRecover;

/// Default size of a log's frame-meta cache: 64 MiB of pages (each page
/// holds the entries of up to 256 blocks, so this covers tens of GiB of
/// data written in large requests and a few GiB written 4 KiB at a time).
pub const META_CACHE_BYTES_DEFAULT: u64 = 64 << 20;
/// Independent locks, so queues reading at once rarely wait for each other.
const SHARDS: usize = 8;

type Page = Box<[u8; ALIGN]>;

/// The cache (see the module doc).
pub struct MetaCache {
    shards: Vec<Mutex<LruCache<(u64, u64), Page>>>,
    capacity_pages: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What status shows of a cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MetaCacheStats {
    /// Lookups all of whose pages were cached.
    pub hits: u64,
    /// Lookups that had to read the file.
    pub misses: u64,
    /// Pages held now.
    pub pages: u64,
    /// Most pages it holds.
    pub capacity_pages: u64,
}

impl std::fmt::Debug for MetaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl MetaCache {
    /// A cache of at most `bytes` of pages (0: caches nothing).
    pub fn new(bytes: u64) -> Self {
        let capacity_pages = usize::try_from(bytes / ALIGN as u64).unwrap_or(usize::MAX);
        let per_shard = NonZeroUsize::new(capacity_pages.div_ceil(SHARDS).max(1)).expect("max(1)");
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            capacity_pages,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, segment_id: u64, page: u64) -> &Mutex<LruCache<(u64, u64), Page>> {
        let mix = (segment_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (page / ALIGN as u64)) as usize;
        &self.shards[mix % SHARDS]
    }

    /// Copies `out.len()` bytes of segment `segment_id` at `offset` into
    /// `out` if every page they lie on is cached; false (a miss, `out`
    /// unspecified) else.
    pub fn copy_out(&self, segment_id: u64, offset: u64, out: &mut [u8]) -> bool {
        let hit = self.capacity_pages > 0 && self.try_copy_out(segment_id, offset, out);
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    fn try_copy_out(&self, segment_id: u64, offset: u64, out: &mut [u8]) -> bool {
        let mut at = 0usize;
        while at < out.len() {
            let position = offset + at as u64;
            let page = position - position % ALIGN as u64;
            let within = (position - page) as usize;
            let take = (ALIGN - within).min(out.len() - at);
            let mut shard = self.shard(segment_id, page).lock_or_recover();
            let Some(bytes) = shard.get(&(segment_id, page)) else {
                return false;
            };
            out[at..at + take].copy_from_slice(&bytes[within..within + take]);
            at += take;
        }
        true
    }

    /// Puts the pages `bytes` (whole pages) of segment `segment_id` from
    /// the aligned `offset` in the cache, replacing what it held for them.
    pub fn insert(&self, segment_id: u64, offset: u64, bytes: &[u8]) {
        debug_assert!(offset.is_multiple_of(ALIGN as u64));
        if self.capacity_pages == 0 {
            return;
        }
        for (index, chunk) in bytes.chunks_exact(ALIGN).enumerate() {
            let page = offset + (index * ALIGN) as u64;
            let mut copy: Page = Box::new([0u8; ALIGN]);
            copy.copy_from_slice(chunk);
            self.shard(segment_id, page)
                .lock_or_recover()
                .put((segment_id, page), copy);
        }
    }

    /// Forgets the pages of segment `segment_id` from `offset` on (bytes
    /// there were taken back and will be written again).
    pub fn forget_from(&self, segment_id: u64, offset: u64) {
        let first_page = offset - offset % ALIGN as u64;
        for shard in &self.shards {
            let mut shard = shard.lock_or_recover();
            let stale: Vec<(u64, u64)> = shard
                .iter()
                .map(|(key, _)| *key)
                .filter(|(segment, page)| *segment == segment_id && *page >= first_page)
                .collect();
            for key in stale {
                shard.pop(&key);
            }
        }
    }

    /// Hits, misses and size.
    pub fn stats(&self) -> MetaCacheStats {
        MetaCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            pages: self
                .shards
                .iter()
                .map(|s| s.lock_or_recover().len() as u64)
                .sum(),
            capacity_pages: self.capacity_pages as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_ranges_come_back_across_pages_and_taken_back_pages_are_forgotten() {
        let cache = MetaCache::new(1 << 20);
        let pages: Vec<u8> = (0..3 * ALIGN).map(|i| (i % 253) as u8).collect();
        cache.insert(7, 8192, &pages);
        let mut out = vec![0u8; 5000];
        assert!(cache.copy_out(7, 8192 + 3000, &mut out));
        assert_eq!(out, pages[3000..8000]);
        assert!(!cache.copy_out(8, 8192, &mut out), "another segment");
        assert!(!cache.copy_out(7, 4096, &mut out), "a page before");
        cache.forget_from(7, 12288);
        assert!(!cache.copy_out(7, 8192 + 3000, &mut out));
        let mut first = vec![0u8; 100];
        assert!(cache.copy_out(7, 8192, &mut first));
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.pages), (2, 3, 1));
    }

    #[test]
    fn the_least_recently_used_pages_leave_first_and_zero_caches_nothing() {
        let cache = MetaCache::new((SHARDS * ALIGN) as u64);
        for page in 0..(4 * SHARDS as u64) {
            cache.insert(1, page * ALIGN as u64, &[1u8; ALIGN]);
        }
        assert!(cache.stats().pages <= SHARDS as u64);
        let off = MetaCache::new(0);
        off.insert(1, 0, &[1u8; ALIGN]);
        assert!(!off.copy_out(1, 0, &mut [0u8; 16]));
        assert_eq!(off.stats().pages, 0);
    }
}
