//! The local directory as a cache of the store (`--cache-size`): once a
//! segment is uploaded, its records may be evicted from the local file (a
//! hole punched over them; the header and the seal stay, so opening the
//! volume checks it as before), least recently read first, to keep what the
//! segment files hold under the cache size. A read of evicted records
//! fetches the chunks it touches with ranged GETs and writes them back into
//! the file: the cache refills.
//!
//! Rules that keep it safe:
//! - only segments below the newest local checkpoint's `segment_id_next`
//!   are evicted: a local recovery never replays them;
//! - a segment being read is never evicted (readers hold a [`CachePin`];
//!   a clone reading its parent's segment holds its shared file lock,
//!   `segment_lock`, and the owner skips a segment it cannot lock);
//!   what a batch of reads needs is fetched in parallel, and a sequential
//!   reader's next chunks in the background (`refill.rs`);
//! - the evicted set is written (`cache.json`, atomically) before a hole is
//!   punched, and a segment leaves it only after its refilled file is
//!   synced: after a crash every hole is known, never read as data.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::error::{RemoteError, Result};
use super::layout::StoredObject;
use crate::kms::fsutil::write_atomic;
use crate::objstore::{ByteRange, ObjectStore};
use crate::store::{ALIGN, punch_hole};
use crate::sync::LockOrRecover;

mod refill;
mod segment_lock;

pub use segment_lock::{SharedLock, lock_shared};

/// The file in the volume directory that lists the evicted segments.
pub const CACHE_STATE_FILE: &str = "cache.json";
/// Unit of eviction and refill: a random read of evicted data fetches the
/// chunks it touches (small, so that a cold 4 KiB read costs little more
/// than its own bytes; runs of chunks go in GETs of up to 1 MiB).
const CHUNK_BYTES: u64 = 64 << 10;
/// Bytes at a segment's end that stay (the seal, for every version).
const TAIL_KEPT_BYTES: u64 = 2 * ALIGN as u64;

/// What `lsvblk status` shows of the cache.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CacheStatus {
    /// `--cache-size`.
    pub capacity_bytes: u64,
    /// Bytes of uploaded segments held locally.
    pub resident_bytes: u64,
    /// Segments with evicted records now.
    pub evicted_segments: usize,
    /// Evictions so far.
    pub evictions: u64,
    /// Ranged GETs that refilled the cache.
    pub fetches: u64,
    /// Their bytes.
    pub fetched_bytes: u64,
}

/// One uploaded segment the cache keeps track of.
struct Cached {
    object: StoredObject,
    /// When it was last read (the LRU order).
    tick: u64,
    /// Reads in progress: it is not evicted while any runs.
    readers: usize,
    /// The chunks punched out and not fetched back; empty when whole.
    missing: BTreeSet<u64>,
    /// The last chunks of the latest reads, newest last (a read that
    /// follows one of them is sequential: the chunks after it are read
    /// ahead; several, since a read of table pages comes between two reads
    /// of data).
    recent_reads: VecDeque<u64>,
}

/// The byte range of a segment file of `len` bytes that eviction punches
/// out: the records between the header and the seal. What is outside it
/// (the header, the seal) always stays in the file.
pub fn evictable_range(len: u64) -> std::ops::Range<u64> {
    let end = len.saturating_sub(TAIL_KEPT_BYTES) / ALIGN as u64 * ALIGN as u64;
    ALIGN as u64..end.max(ALIGN as u64)
}

/// Writes `cache.json` of the volume in `dir`: segments `evicted` have
/// records punched out (a rebuild that fetches only their headers and
/// seals says so before the volume opens).
pub fn write_evicted(dir: &Path, evicted: &BTreeSet<u64>) -> Result<()> {
    let persisted = Persisted {
        evicted: evicted.iter().copied().collect(),
    };
    let bytes = serde_json::to_vec(&persisted).expect("a list serializes");
    let path = dir.join(CACHE_STATE_FILE);
    write_atomic(&path, &bytes, 0o600).map_err(|e| RemoteError::io(&path, e))
}

impl Cached {
    /// Segment `object` as the cache takes it in at `tick`: whole in its
    /// file, or with every chunk missing when `evicted`.
    fn new(object: StoredObject, tick: u64, evicted: bool) -> Self {
        let mut cached = Cached {
            object,
            tick,
            readers: 0,
            missing: BTreeSet::new(),
            recent_reads: VecDeque::new(),
        };
        if evicted {
            cached.missing = cached.chunks().collect();
        }
        cached
    }

    /// See [`evictable_range`].
    fn evictable(&self) -> std::ops::Range<u64> {
        evictable_range(self.object.len)
    }

    fn chunk_span(&self, chunk: u64) -> std::ops::Range<u64> {
        let range = self.evictable();
        let start = range.start + chunk * CHUNK_BYTES;
        start..(start + CHUNK_BYTES).min(range.end)
    }

    /// The chunks bytes `start..end` of the file touch.
    fn chunks_touched(&self, start: u64, end: u64) -> std::ops::Range<u64> {
        let range = self.evictable();
        let (start, end) = (start.max(range.start), end.min(range.end));
        if start >= end {
            return 0..0;
        }
        (start - range.start) / CHUNK_BYTES..(end - range.start).div_ceil(CHUNK_BYTES)
    }

    fn chunks(&self) -> std::ops::Range<u64> {
        let range = self.evictable();
        0..(range.end - range.start).div_ceil(CHUNK_BYTES)
    }

    /// Bytes of records it holds locally (the header and seal, which
    /// always stay, do not count: they are not the cache's to free).
    fn resident_bytes(&self) -> u64 {
        let missing: u64 = self
            .missing
            .iter()
            .map(|c| {
                let span = self.chunk_span(*c);
                span.end - span.start
            })
            .sum();
        let range = self.evictable();
        range.end - range.start - missing
    }
}

#[derive(Default)]
struct State {
    segments: BTreeMap<u64, Cached>,
    /// Chunks being fetched now (segment, chunk), by a reader or the
    /// readahead: a reader that needs one waits for it.
    fetching: BTreeSet<(u64, u64)>,
    /// A background readahead runs (one at a time).
    reading_ahead: bool,
    tick: u64,
    /// Segments below this are never replayed by a local recovery.
    replay_floor: u64,
    status: CacheStatus,
}

/// What `cache.json` holds.
#[derive(Serialize, Deserialize)]
struct Persisted {
    evicted: Vec<u64>,
}

/// The cache of a volume's uploaded segments (see the module doc).
pub struct SegmentCache {
    store: Arc<dyn ObjectStore>,
    segments_dir: PathBuf,
    volume_dir: PathBuf,
    state: Mutex<State>,
    /// Signalled when fetched chunks land (or a fetch fails).
    fetched: Condvar,
    /// Another process's cache (a clone reading its parent's files): it
    /// never evicts and never writes `cache.json`.
    borrowed: bool,
}

/// Keeps a segment's records in its file while the log reads them.
pub struct CachePin {
    cache: Arc<SegmentCache>,
    segment_id: u64,
}

impl Drop for CachePin {
    fn drop(&mut self) {
        if let Some(cached) = self.cache.lock().segments.get_mut(&self.segment_id) {
            cached.readers -= 1;
        }
    }
}

impl SegmentCache {
    /// The cache of the volume in `dir`, holding at most `capacity` bytes of
    /// uploaded segments (tell it which with [`SegmentCache::admit`]).
    pub fn open(store: Arc<dyn ObjectStore>, dir: &Path, capacity: u64) -> Arc<Self> {
        let cache = Self {
            store,
            segments_dir: dir.join("segments"),
            volume_dir: dir.to_path_buf(),
            state: Mutex::new(State {
                status: CacheStatus {
                    capacity_bytes: capacity,
                    ..CacheStatus::default()
                },
                ..State::default()
            }),
            fetched: Condvar::new(),
            borrowed: false,
        };
        Arc::new(cache)
    }

    /// The cache of another process's volume in `dir` (a clone's parent):
    /// it refills what reads need and never evicts nor writes `cache.json`
    /// (tell it what the owner evicted with [`SegmentCache::mark_evicted`]).
    pub fn borrowed(store: Arc<dyn ObjectStore>, dir: &Path) -> Arc<Self> {
        let mut cache = Arc::into_inner(Self::open(store, dir, u64::MAX)).expect("just made");
        cache.borrowed = true;
        Arc::new(cache)
    }

    /// Bytes `holes` of segment `object` are missing from its file (its
    /// owner punched them out): the chunks they touch are fetched again
    /// before they are read.
    pub fn mark_missing(&self, object: StoredObject, holes: &[std::ops::Range<u64>]) {
        let mut state = self.lock();
        let id = object.number;
        if !state.segments.contains_key(&id) {
            state.tick += 1;
            let cached = Cached::new(object, state.tick, false);
            state.segments.insert(id, cached);
        }
        let cached = state.segments.get_mut(&id).expect("just tracked");
        for hole in holes {
            let touched = cached.chunks_touched(hole.start, hole.end);
            cached.missing.extend(touched);
        }
    }

    /// Segments `cache.json` lists as evicted (they must be fetched back
    /// before they are read, whatever the file shows).
    pub fn persisted_evicted(dir: &Path) -> Result<BTreeSet<u64>> {
        let path = dir.join(CACHE_STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Persisted>(&bytes)
                .map(|p| p.evicted.into_iter().collect())
                .map_err(|e| RemoteError::Corrupt {
                    key: path.display().to_string(),
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
            Err(e) => Err(RemoteError::io(&path, e)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock_or_recover()
    }

    /// The cache's figures.
    pub fn status(&self) -> CacheStatus {
        let state = self.lock();
        let mut status = state.status.clone();
        status.resident_bytes = state.segments.values().map(Cached::resident_bytes).sum();
        status.evicted_segments = state
            .segments
            .values()
            .filter(|c| !c.missing.is_empty())
            .count();
        status
    }

    /// Takes in segment `object` (uploaded, its file whole unless
    /// `evicted`), then evicts what the capacity asks for.
    pub fn admit(&self, object: StoredObject, evicted: bool) {
        let mut state = self.lock();
        state.tick += 1;
        let cached = Cached::new(object, state.tick, evicted);
        state.segments.insert(cached.object.number, cached);
        self.evict_over_capacity(state);
    }

    /// Segment `segment_id` is about to be deleted: forget it.
    pub fn forget(&self, segment_id: u64) {
        self.lock().segments.remove(&segment_id);
    }

    /// A local checkpoint was written: segments below `segment_id_next`
    /// may be evicted from now on (by the next [`SegmentCache::trim`]).
    pub fn checkpoint_written(&self, segment_id_next: u64) {
        let mut state = self.lock();
        state.replay_floor = state.replay_floor.max(segment_id_next);
    }

    /// Evicts what the capacity asks for.
    pub fn trim(&self) {
        self.evict_over_capacity(self.lock());
    }

    /// True when the cache is over its size and only a newer local
    /// checkpoint would let it evict more.
    pub fn wants_checkpoint(&self) -> bool {
        let state = self.lock();
        let resident: u64 = state.segments.values().map(Cached::resident_bytes).sum();
        resident > state.status.capacity_bytes
            && state
                .segments
                .range(state.replay_floor..)
                .any(|(_, c)| c.missing.is_empty())
    }

    /// Evicts least recently read segments until the resident bytes fit.
    fn evict_over_capacity(&self, mut state: MutexGuard<'_, State>) {
        // Segments a clone is reading now (see `segment_lock`).
        let mut busy = BTreeSet::new();
        loop {
            let resident: u64 = state.segments.values().map(Cached::resident_bytes).sum();
            if resident <= state.status.capacity_bytes {
                return;
            }
            let floor = state.replay_floor;
            let victim = state
                .segments
                .range(..floor)
                .filter(|(id, c)| {
                    c.readers == 0 && c.missing.len() < c.chunks().count() && !busy.contains(*id)
                })
                .min_by_key(|(_, c)| c.tick)
                .map(|(id, _)| *id);
            let Some(id) = victim else {
                return;
            };
            match self.evict(&mut state, id) {
                Ok(true) => {}
                Ok(false) => {
                    busy.insert(id);
                }
                Err(error) => {
                    tracing::warn!(%error, segment = format!("{id:016x}"), "cannot evict a segment from the cache; keeping it");
                    state.segments.remove(&id);
                }
            }
        }
    }

    /// Punches segment `id`'s records out of its file, after recording it
    /// as evicted. Evicts nothing and returns false while a clone reads the
    /// file (it holds its shared lock).
    fn evict(&self, state: &mut State, id: u64) -> Result<bool> {
        let path = self.segment_path(id);
        let file = File::options()
            .write(true)
            .open(&path)
            .map_err(|e| RemoteError::io(&path, e))?;
        if !segment_lock::try_lock_exclusive(&file).map_err(|e| RemoteError::io(&path, e))? {
            return Ok(false);
        }
        let cached = state.segments.get_mut(&id).expect("a tracked segment");
        let range = cached.evictable();
        // A segment with chunks missing is listed already: no write (and
        // no fsync) for the eviction of a partly refilled one.
        let listed = !cached.missing.is_empty();
        cached.missing = cached.chunks().collect();
        if !listed {
            self.persist(state)?;
        }
        punch_hole(&file, range.start, range.end - range.start)
            .map_err(|e| RemoteError::io(&path, e))?;
        state.status.evictions += 1;
        Ok(true)
    }

    /// The file of segment `id`.
    fn segment_path(&self, id: u64) -> PathBuf {
        self.segments_dir.join(format!("{id:016x}.seg"))
    }

    /// Writes `cache.json`: every segment with records punched out.
    fn persist(&self, state: &State) -> Result<()> {
        if self.borrowed {
            return Ok(());
        }
        let evicted = state
            .segments
            .iter()
            .filter(|(_, c)| !c.missing.is_empty())
            .map(|(id, _)| *id)
            .collect();
        write_evicted(&self.volume_dir, &evicted)
    }
}

/// Bytes `span` of `object`, with a ranged GET that must return them all.
pub fn get_span(
    store: &dyn ObjectStore,
    object: &StoredObject,
    span: std::ops::Range<u64>,
) -> Result<bytes::Bytes> {
    let range = ByteRange::Span {
        start: span.start,
        end: span.end,
    };
    let bytes = store.get_range(&object.key(), range)?;
    if bytes.len() as u64 != span.end - span.start {
        return Err(RemoteError::Corrupt {
            key: object.key().as_str().to_string(),
            reason: format!("a ranged GET of {span:?} returned {} bytes", bytes.len()),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_keeps_the_header_and_the_seal() {
        let range = evictable_range(16 << 20);
        assert_eq!(range.start, ALIGN as u64);
        assert_eq!(range.end, (16 << 20) - TAIL_KEPT_BYTES);
        // A segment smaller than what always stays has nothing to evict.
        assert!(evictable_range(8192).is_empty());
    }
}
