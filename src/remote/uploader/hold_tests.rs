//! Uploads held back during a write burst: when they wait, and what ends
//! the wait.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{State, Uploader};
use crate::limits::{UPLOAD_HOLD_BURST_GAP, UPLOAD_HOLD_MAX};
use crate::objstore::memory::MemoryStore;
use crate::store::LogEvents;

const MS: Duration = Duration::from_millis(1);

/// A state with one queued segment of 4 KiB, sealed and queued at
/// `sealed`, holding below `hold_bytes`.
fn holding(hold_bytes: u64, sealed: Instant) -> State {
    let mut state = State {
        hold_bytes,
        last_seal: Some(sealed),
        queued_since: Some(sealed),
        ..State::default()
    };
    state.queued.insert(1, (PathBuf::from("1.seg"), 4096));
    state
}

#[test]
fn a_burst_holds_the_upload_until_its_gap_passes() {
    let sealed = Instant::now();
    let state = holding(1 << 20, sealed);
    assert_eq!(
        state.burst_hold(sealed + 10 * MS),
        Some(UPLOAD_HOLD_BURST_GAP - 10 * MS)
    );
    assert_eq!(state.burst_hold(sealed + UPLOAD_HOLD_BURST_GAP), None);
}

#[test]
fn a_hold_ends_at_its_bound_even_while_seals_go_on() {
    let first = Instant::now();
    let mut state = holding(1 << 20, first);
    let late = first + UPLOAD_HOLD_MAX - 5 * MS;
    state.last_seal = Some(late);
    assert_eq!(state.burst_hold(late), Some(5 * MS));
    state.last_seal = Some(first + UPLOAD_HOLD_MAX);
    assert_eq!(state.burst_hold(first + UPLOAD_HOLD_MAX), None);
}

#[test]
fn nothing_is_held_when_off_full_stopping_or_awaited() {
    let sealed = Instant::now();
    let now = sealed + MS;
    assert_eq!(holding(0, sealed).burst_hold(now), None, "off");
    assert_eq!(
        holding(4096, sealed).burst_hold(now),
        None,
        "backlog at the bound"
    );
    assert!(holding(4097, sealed).burst_hold(now).is_some());
    let mut stopping = holding(1 << 20, sealed);
    stopping.stopping = true;
    assert_eq!(stopping.burst_hold(now), None, "stopping");
    let mut awaited = holding(1 << 20, sealed);
    awaited.waiters = 1;
    assert_eq!(awaited.burst_hold(now), None, "a FLUSH waits");
}

/// An uploader into memory, holding below 1 GiB, and its segment files.
fn uploader(dir: &Path) -> Arc<Uploader> {
    std::fs::create_dir_all(dir.join("segments")).unwrap();
    let uploader = Uploader::start(Arc::new(MemoryStore::new()), dir, 1, &[], 2, None).unwrap();
    uploader.hold_during_bursts(1 << 30);
    uploader
}

fn seal(uploader: &Uploader, dir: &Path, id: u64) {
    let path = dir.join("segments").join(format!("{id:016x}.seg"));
    std::fs::write(&path, vec![id as u8; 4096]).unwrap();
    uploader.segment_sealed(id, &path);
}

#[test]
fn a_burst_uploads_once_it_pauses() {
    let dir = tempfile::tempdir().unwrap();
    let uploader = uploader(dir.path());
    (1..=3).for_each(|id| seal(&uploader, dir.path(), id));
    let start = Instant::now();
    while uploader.status().uploaded_segments < 3 {
        assert!(start.elapsed() < Duration::from_secs(10), "never uploaded");
        std::thread::sleep(MS);
    }
    uploader.finish(Duration::from_secs(5));
}

#[test]
fn a_waiting_flush_ends_the_hold_while_the_burst_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let uploader = uploader(dir.path());
    seal(&uploader, dir.path(), 1);
    let sealer = {
        let (uploader, dir) = (Arc::clone(&uploader), dir.path().to_path_buf());
        std::thread::spawn(move || {
            for id in 2..200 {
                seal(&uploader, &dir, id);
                std::thread::sleep(5 * MS);
            }
        })
    };
    std::thread::sleep(20 * MS);
    let start = Instant::now();
    uploader
        .wait_sealed_uploaded(Duration::from_secs(10))
        .unwrap();
    // Held, it would have waited until UPLOAD_HOLD_MAX after the first seal.
    assert!(
        start.elapsed() < UPLOAD_HOLD_MAX / 2,
        "the FLUSH waited {:?}",
        start.elapsed()
    );
    sealer.join().unwrap();
    uploader.finish(Duration::from_secs(5));
}
