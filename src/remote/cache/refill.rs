//! Refills for a batch of reads: the evicted chunks the reads touch are
//! fetched with ranged GETs in parallel (a long run of chunks cut into
//! GETs that go at once) and written back into the segment files; for a
//! sequential reader the chunks after what it reads are fetched in the
//! background while the guest consumes these. A chunk that another reader
//! or the readahead is fetching is waited for, not fetched twice.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{CHUNK_BYTES, CachePin, SegmentCache, State, get_span};
use crate::remote::error::{RemoteError, Result};
use crate::remote::layout::StoredObject;
use crate::store::ReadRange;
use crate::sync::LockOrRecover;

/// Longest ranged GET: a longer run of chunks goes as GETs of this size in
/// parallel.
const GET_BYTES_MAX: u64 = 1 << 20;
/// Ranged GETs in flight at once, for one batch or one readahead.
const GETS_IN_FLIGHT: usize = 8;
/// Chunks fetched ahead of a sequential reader (8 MiB), and never more
/// than a quarter of the cache.
const READAHEAD_CHUNKS: u64 = (8 << 20) / CHUNK_BYTES;
/// Reads per segment whose ends a following read is compared with.
const RECENT_READS: usize = 8;
/// Longest wait for a chunk someone else fetches before looking again.
const WAIT_SLICE: Duration = Duration::from_millis(200);

/// Chunks per segment.
type Chunks = BTreeMap<u64, BTreeSet<u64>>;

/// One ranged GET: chunks `chunks` of segment `segment_id`, bytes `span`.
struct Fetch {
    segment_id: u64,
    object: StoredObject,
    span: Range<u64>,
    chunks: Range<u64>,
}

impl SegmentCache {
    /// Makes bytes `start..end` of segment `segment_id` readable from its
    /// file and keeps them there until the returned pin is dropped (see
    /// [`SegmentCache::pin_all`]).
    pub fn pin(
        self: &Arc<Self>,
        segment_id: u64,
        start: u64,
        end: u64,
    ) -> Result<Option<CachePin>> {
        let range = ReadRange {
            segment_id,
            start,
            end,
        };
        self.pin_all(&[range]).pop().expect("one outcome per read")
    }

    /// Makes the bytes of each of `reads` readable from its segment file
    /// (fetching evicted chunks back, all of them at once) and keeps them
    /// there until its pin is dropped. One outcome per read, in order; a
    /// segment the cache does not track is whole (no pin).
    pub fn pin_all(self: &Arc<Self>, reads: &[ReadRange]) -> Vec<Result<Option<CachePin>>> {
        let mut state = self.lock();
        let pins: Vec<Option<CachePin>> =
            reads.iter().map(|r| self.pin_one(&mut state, r)).collect();
        let sequential = sequential_reads(&mut state, reads);
        let needed = missing_chunks(&state, reads);
        let mine = claim(&mut state, &needed);
        let mut readahead = None;
        if !state.reading_ahead {
            let ahead = readahead_chunks(&state, &sequential);
            let ahead = claim(&mut state, &ahead);
            if !ahead.is_empty() {
                state.reading_ahead = true;
                let held: Vec<CachePin> = ahead
                    .keys()
                    .filter_map(|id| self.hold(&mut state, *id))
                    .collect();
                readahead = Some((plan(&state, &ahead), held));
            }
        }
        let fetches = plan(&state, &mine);
        drop(state);
        if let Some((fetches, held)) = readahead {
            self.read_ahead(fetches, held);
        }
        let mut failure = self.fetch_all(fetches).err().map(|e| e.to_string());
        // Chunks someone else fetches are waited for; those whose fetch
        // failed meanwhile are fetched here, once.
        let mut state = self.lock();
        let mut retried = false;
        loop {
            let still = missing_chunks(&state, reads);
            let waiting = still
                .iter()
                .any(|(id, chunks)| chunks.iter().any(|c| state.fetching.contains(&(*id, *c))));
            if waiting {
                state = self
                    .fetched
                    .wait_timeout(state, WAIT_SLICE)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
                continue;
            }
            if still.is_empty() || retried {
                break;
            }
            retried = true;
            let again = claim(&mut state, &still);
            let fetches = plan(&state, &again);
            drop(state);
            if let Err(error) = self.fetch_all(fetches) {
                failure = Some(error.to_string());
            }
            state = self.lock();
        }
        let outcomes = reads
            .iter()
            .zip(pins)
            .map(|(read, pin)| {
                if missing_chunks(&state, std::slice::from_ref(read)).is_empty() {
                    return Ok(pin);
                }
                let path = self.segment_path(read.segment_id);
                let reason = failure.clone().unwrap_or_else(|| "not fetched".to_string());
                Err(RemoteError::io(&path, std::io::Error::other(reason)))
            })
            .collect();
        self.evict_over_capacity(state);
        outcomes
    }

    /// Counts a read of a tracked segment: the LRU order, a pin.
    fn pin_one(self: &Arc<Self>, state: &mut State, read: &ReadRange) -> Option<CachePin> {
        state.tick += 1;
        let tick = state.tick;
        state.segments.get_mut(&read.segment_id)?.tick = tick;
        self.hold(state, read.segment_id)
    }

    /// A pin on segment `id`, if tracked: it is not evicted while held.
    fn hold(self: &Arc<Self>, state: &mut State, id: u64) -> Option<CachePin> {
        state.segments.get_mut(&id)?.readers += 1;
        Some(CachePin {
            cache: Arc::clone(self),
            segment_id: id,
        })
    }

    /// Fetches `fetches` in the background, holding `pins` meanwhile.
    fn read_ahead(self: &Arc<Self>, fetches: Vec<Fetch>, pins: Vec<CachePin>) {
        let cache = Arc::clone(self);
        let keys: Vec<(u64, Range<u64>)> = fetches
            .iter()
            .map(|f| (f.segment_id, f.chunks.clone()))
            .collect();
        let spawned = std::thread::Builder::new()
            .name("cache-readahead".to_string())
            .spawn(move || {
                if let Err(error) = cache.fetch_all(fetches) {
                    tracing::debug!(%error, "a readahead of evicted data failed");
                }
                cache.lock().reading_ahead = false;
                drop(pins);
            });
        if spawned.is_err() {
            let mut state = self.lock();
            for (id, chunks) in keys {
                for chunk in chunks {
                    state.fetching.remove(&(id, chunk));
                }
            }
            state.reading_ahead = false;
        }
    }

    /// Runs `fetches` at most [`GETS_IN_FLIGHT`] at a time, writes what
    /// they get into the segment files and records it; the first failure.
    fn fetch_all(&self, fetches: Vec<Fetch>) -> Result<()> {
        if fetches.is_empty() {
            return Ok(());
        }
        let next = AtomicUsize::new(0);
        let outcomes: Mutex<Vec<(usize, Result<u64>)>> = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..fetches.len().min(GETS_IN_FLIGHT) {
                scope.spawn(|| {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(fetch) = fetches.get(index) else {
                            break;
                        };
                        let outcome = self.fetch_one(fetch);
                        outcomes.lock_or_recover().push((index, outcome));
                    }
                });
            }
        });
        let outcomes = outcomes.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut state = self.lock();
        let mut first_failure = None;
        let mut whole = BTreeSet::new();
        for (index, outcome) in outcomes {
            let fetch = &fetches[index];
            for chunk in fetch.chunks.clone() {
                state.fetching.remove(&(fetch.segment_id, chunk));
            }
            match outcome {
                Ok(bytes) => {
                    state.status.fetches += 1;
                    state.status.fetched_bytes += bytes;
                    if let Some(cached) = state.segments.get_mut(&fetch.segment_id) {
                        for chunk in fetch.chunks.clone() {
                            cached.missing.remove(&chunk);
                        }
                        if cached.missing.is_empty() {
                            whole.insert(fetch.segment_id);
                        }
                    }
                }
                Err(error) => {
                    first_failure.get_or_insert(error);
                }
            }
        }
        let settled = self.settle_whole(&state, &whole);
        self.fetched.notify_all();
        drop(state);
        match (first_failure, settled) {
            (Some(error), _) | (None, Err(error)) => Err(error),
            (None, Ok(())) => Ok(()),
        }
    }

    /// Gets one fetch's bytes and writes them into its segment file.
    fn fetch_one(&self, fetch: &Fetch) -> Result<u64> {
        let path = self.segment_path(fetch.segment_id);
        let bytes = get_span(self.store.as_ref(), &fetch.object, fetch.span.clone())?;
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| RemoteError::io(&path, e))?;
        file.write_all_at(&bytes, fetch.span.start)
            .map_err(|e| RemoteError::io(&path, e))?;
        Ok(bytes.len() as u64)
    }

    /// Segments `whole` were refilled completely: their files are synced
    /// before `cache.json` stops listing them (see the module doc).
    fn settle_whole(&self, state: &State, whole: &BTreeSet<u64>) -> Result<()> {
        if whole.is_empty() {
            return Ok(());
        }
        for id in whole {
            let path = self.segment_path(*id);
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| RemoteError::io(&path, e))?;
            file.sync_data().map_err(|e| RemoteError::io(&path, e))?;
        }
        self.persist(state)
    }
}

/// Of `reads`, those that go on from where one of the latest reads of their
/// segment ended (into the next chunk); each read is noted. A read of the
/// same chunk again (a record's table) is not one.
fn sequential_reads(state: &mut State, reads: &[ReadRange]) -> Vec<ReadRange> {
    let mut sequential = Vec::new();
    for read in reads {
        let Some(cached) = state.segments.get_mut(&read.segment_id) else {
            continue;
        };
        let chunks = cached.chunks_touched(read.start, read.end);
        if chunks.is_empty() {
            continue;
        }
        let last_touched = chunks.end - 1;
        let follows = cached.recent_reads.iter().any(|last| {
            *last + 1 == chunks.start || (*last == chunks.start && last_touched > *last)
        });
        if cached.recent_reads.len() == RECENT_READS {
            cached.recent_reads.pop_front();
        }
        cached.recent_reads.push_back(last_touched);
        if follows {
            sequential.push(*read);
        }
    }
    sequential
}

/// The evicted chunks each segment's `reads` touch.
fn missing_chunks(state: &State, reads: &[ReadRange]) -> Chunks {
    let mut chunks = Chunks::new();
    for read in reads {
        let Some(cached) = state.segments.get(&read.segment_id) else {
            continue;
        };
        let missing = cached
            .chunks_touched(read.start, read.end)
            .filter(|c| cached.missing.contains(c));
        chunks.entry(read.segment_id).or_default().extend(missing);
    }
    chunks.retain(|_, c| !c.is_empty());
    chunks
}

/// The evicted chunks after each of the `sequential` reads, up to the
/// readahead's length: past a segment's end, on into the next segment
/// (the log seals one after the other, so a reader of data written
/// sequentially goes on there).
fn readahead_chunks(state: &State, sequential: &[ReadRange]) -> Chunks {
    let window = READAHEAD_CHUNKS.min(state.status.capacity_bytes / 4 / CHUNK_BYTES);
    let mut chunks = Chunks::new();
    for read in sequential {
        let Some(cached) = state.segments.get(&read.segment_id) else {
            continue;
        };
        let (mut id, mut from, mut left) = (
            read.segment_id,
            cached.chunks_touched(read.start, read.end).end,
            window,
        );
        while left > 0 {
            let Some(cached) = state.segments.get(&id) else {
                break;
            };
            let end = cached.chunks().end.min(from.saturating_add(left));
            let ahead = (from..end).filter(|c| cached.missing.contains(c));
            chunks.entry(id).or_default().extend(ahead);
            left -= end.saturating_sub(from);
            (id, from) = (id + 1, 0);
        }
    }
    chunks.retain(|_, c| !c.is_empty());
    chunks
}

/// Of `wanted`, the chunks nobody fetches yet, marked as being fetched (by
/// the caller).
fn claim(state: &mut State, wanted: &Chunks) -> Chunks {
    let mut claimed = Chunks::new();
    for (id, chunks) in wanted {
        for chunk in chunks {
            if state.fetching.insert((*id, *chunk)) {
                claimed.entry(*id).or_default().insert(*chunk);
            }
        }
    }
    claimed
}

/// The GETs that fetch `chunks`: runs of consecutive chunks, cut at
/// [`GET_BYTES_MAX`].
fn plan(state: &State, chunks: &Chunks) -> Vec<Fetch> {
    let per_get = (GET_BYTES_MAX / CHUNK_BYTES).max(1);
    let mut fetches = Vec::new();
    for (id, chunks) in chunks {
        let Some(cached) = state.segments.get(id) else {
            continue;
        };
        let mut runs: Vec<Range<u64>> = Vec::new();
        for &chunk in chunks {
            match runs.last_mut() {
                Some(run) if run.end == chunk && run.end - run.start < per_get => run.end += 1,
                _ => runs.push(chunk..chunk + 1),
            }
        }
        fetches.extend(runs.into_iter().map(|run| Fetch {
            segment_id: *id,
            object: cached.object.clone(),
            span: cached.chunk_span(run.start).start..cached.chunk_span(run.end - 1).end,
            chunks: run,
        }));
    }
    fetches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::cache::{CacheStatus, Cached};
    use crate::remote::layout::ObjectKind;

    fn state_with_segment(len: u64, missing: &[u64]) -> State {
        let object = StoredObject::describe(ObjectKind::Segment, 7, 1, &vec![0u8; len as usize]);
        let cached = Cached {
            object,
            tick: 0,
            readers: 0,
            missing: missing.iter().copied().collect(),
            recent_reads: std::collections::VecDeque::new(),
        };
        let mut state = State {
            status: CacheStatus {
                capacity_bytes: 64 << 20,
                ..CacheStatus::default()
            },
            ..State::default()
        };
        state.segments.insert(7, cached);
        state
    }

    #[test]
    fn runs_of_missing_chunks_become_gets_of_at_most_a_mib() {
        let state = state_with_segment(16 << 20, &[]);
        let per_get = GET_BYTES_MAX / CHUNK_BYTES;
        let mut wanted: BTreeSet<u64> = (0..per_get + 2).collect();
        wanted.insert(per_get + 5);
        let chunks: Chunks = [(7, wanted)].into();
        let fetches = plan(&state, &chunks);
        let runs: Vec<Range<u64>> = fetches.iter().map(|f| f.chunks.clone()).collect();
        let expected = [0..per_get, per_get..per_get + 2, per_get + 5..per_get + 6];
        assert_eq!(runs, expected);
        assert_eq!(fetches[0].span.end - fetches[0].span.start, GET_BYTES_MAX);
    }

    #[test]
    fn only_a_read_that_goes_on_from_a_recent_one_is_sequential() {
        let mut state = state_with_segment(16 << 20, &[]);
        let span = |first: u64, last: u64| ReadRange {
            segment_id: 7,
            start: 4096 + first * CHUNK_BYTES,
            end: 4096 + (last + 1) * CHUNK_BYTES - 8192,
        };
        // A table in chunk 0 and a random read; the table again.
        assert!(sequential_reads(&mut state, &[span(0, 0), span(40, 40)]).is_empty());
        assert!(sequential_reads(&mut state, &[span(0, 0)]).is_empty());
        // Reads that go on from the random one: into the next chunk, or
        // from within its last chunk past it.
        assert_eq!(
            sequential_reads(&mut state, &[span(41, 41)]),
            [span(41, 41)]
        );
        assert_eq!(
            sequential_reads(&mut state, &[span(41, 43)]),
            [span(41, 43)]
        );
    }

    #[test]
    fn a_sequential_reader_gets_the_missing_chunks_after_its_read() {
        let state = state_with_segment(16 << 20, &[3, 4, 5, 200]);
        let read = ReadRange {
            segment_id: 7,
            start: 4096,
            end: 4096 + 3 * CHUNK_BYTES,
        };
        let ahead = readahead_chunks(&state, &[read]);
        assert_eq!(ahead[&7], [3, 4, 5].into_iter().collect());
        let needed = missing_chunks(&state, &[read]);
        assert!(needed.is_empty(), "{needed:?}");
    }

    #[test]
    fn the_readahead_goes_on_into_the_next_segment() {
        let mut state = state_with_segment(2 << 20, &[]);
        let next = StoredObject::describe(ObjectKind::Segment, 8, 1, &vec![0u8; 2 << 20]);
        let chunks = Cached {
            object: next,
            tick: 0,
            readers: 0,
            missing: (0..40).collect(),
            recent_reads: std::collections::VecDeque::new(),
        };
        state.segments.insert(8, chunks);
        let last = state.segments[&7].chunks().end;
        state.segments.get_mut(&7).unwrap().missing = (last - 2..last).collect();
        let read = ReadRange {
            segment_id: 7,
            start: 4096 + (last - 4) * CHUNK_BYTES,
            end: 4096 + (last - 2) * CHUNK_BYTES,
        };
        let ahead = readahead_chunks(&state, &[read]);
        assert_eq!(ahead[&7], (last - 2..last).collect());
        // The window (8 MiB: 128 chunks) less the 2 chunks of segment 7.
        let window = READAHEAD_CHUNKS;
        let in_next = (window - 2).min(state.segments[&8].chunks().end);
        assert_eq!(ahead[&8], (0..in_next.min(40)).collect());
    }
}
