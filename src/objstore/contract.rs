//! The behaviour every [`ObjectStore`] must show, as checks a test runs
//! against an implementation: the unit tests run them on [`LocalDirStore`]
//! and the in-process double, `tests/objstore_s3.rs` on a real radosgw, so
//! the local store behaves as S3 does. Test support: each check panics at
//! the first difference; nothing else calls them.
//!
//! [`LocalDirStore`]: super::LocalDirStore

use std::sync::Barrier;

use bytes::Bytes;

use super::{ByteRange, Error, ObjectInfo, ObjectKey, ObjectStore, PutOutcome};

/// Runs every single-threaded check under `base` (which should be empty and
/// is left empty).
pub fn check_store(store: &dyn ObjectStore, base: &ObjectKey) {
    round_trips(store, &sub(base, "round-trip"));
    missing_objects(store, &sub(base, "missing"));
    ranges(store, &sub(base, "ranges"));
    conditional_creates(store, &sub(base, "create"));
    listings(store, &sub(base, "list"));
    assert_eq!(
        store.list(base).unwrap(),
        vec![],
        "{store:?}: the checks left objects behind"
    );
}

/// `threads` threads create the same key at once with different bytes:
/// exactly one is told [`PutOutcome::Created`], and the object holds its bytes.
pub fn check_create_race(store: &dyn ObjectStore, base: &ObjectKey, threads: usize) {
    let key = sub(base, "race");
    let barrier = Barrier::new(threads);
    let outcomes: Vec<(PutOutcome, Bytes)> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..threads)
            .map(|racer| {
                let (key, barrier) = (&key, &barrier);
                scope.spawn(move || {
                    let bytes = pattern(64, racer as u8);
                    barrier.wait();
                    (store.put_if_absent(key, bytes.clone()).unwrap(), bytes)
                })
            })
            .collect();
        racers
            .into_iter()
            .map(|racer| racer.join().unwrap())
            .collect()
    });
    let winners: Vec<&Bytes> = outcomes
        .iter()
        .filter(|(outcome, _)| *outcome == PutOutcome::Created)
        .map(|(_, bytes)| bytes)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "{store:?}: exactly one racer creates the object"
    );
    assert_eq!(
        store.get(&key).unwrap(),
        *winners[0],
        "the object holds the winner's bytes"
    );
    store.delete(std::slice::from_ref(&key)).unwrap();
}

/// `len` bytes that differ with `seed` and along the object (so a shifted or
/// mixed-up range shows).
pub fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect::<Vec<u8>>()
        .into()
}

fn sub(base: &ObjectKey, name: &str) -> ObjectKey {
    base.join(name).expect("test key segments are valid")
}

fn round_trips(store: &dyn ObjectStore, base: &ObjectKey) {
    let mut keys = Vec::new();
    for (i, len) in [0usize, 1, 4096 + 7, 300_000].into_iter().enumerate() {
        let key = sub(base, &format!("object-{len}"));
        let bytes = pattern(len, i as u8);
        store.put(&key, bytes.clone()).unwrap();
        assert_eq!(
            store.get(&key).unwrap(),
            bytes,
            "{store:?}: {key} reads back"
        );
        assert_eq!(
            store.head(&key).unwrap(),
            ObjectInfo {
                key: key.clone(),
                size: len as u64
            }
        );
        keys.push(key);
    }
    let replaced = pattern(10, 99);
    store.put(&keys[2], replaced.clone()).unwrap();
    assert_eq!(
        store.get(&keys[2]).unwrap(),
        replaced,
        "a put replaces the object whole"
    );
    store.delete(&keys).unwrap();
    for key in &keys {
        assert!(
            matches!(store.get(key), Err(Error::NotFound { .. })),
            "{key} deleted"
        );
    }
    store.delete(&keys).unwrap();
    store.delete(&[]).unwrap();
}

fn missing_objects(store: &dyn ObjectStore, base: &ObjectKey) {
    let key = sub(base, "never-written");
    let not_found = |result: Result<(), Error>| matches!(result, Err(Error::NotFound { .. }));
    assert!(not_found(store.get(&key).map(drop)), "{store:?}: get");
    assert!(not_found(store.head(&key).map(drop)), "{store:?}: head");
    assert!(
        not_found(store.get_range(&key, ByteRange::From(0)).map(drop)),
        "{store:?}: range"
    );
    assert_eq!(store.list(base).unwrap(), vec![]);
}

fn ranges(store: &dyn ObjectStore, base: &ObjectKey) {
    let key = sub(base, "object");
    let bytes = pattern(10_000, 7);
    store.put(&key, bytes.clone()).unwrap();
    let span = |start, end| ByteRange::Span { start, end };
    let expected = [
        (span(0, 4096), &bytes[..4096]),
        (span(4095, 4097), &bytes[4095..4097]),
        (span(9_000, 20_000), &bytes[9_000..]),
        (ByteRange::From(9_999), &bytes[9_999..]),
        (ByteRange::Suffix(512), &bytes[10_000 - 512..]),
        (ByteRange::Suffix(50_000), &bytes[..]),
    ];
    for (range, want) in expected {
        assert_eq!(
            store.get_range(&key, range).unwrap(),
            want,
            "{store:?}: {range}"
        );
    }
    for range in [span(10_000, 10_001), ByteRange::From(20_000)] {
        let error = store.get_range(&key, range).unwrap_err();
        assert!(
            matches!(error, Error::InvalidRange { .. }),
            "{store:?}: {range}: {error}"
        );
    }
    for range in [span(5, 5), ByteRange::Suffix(0)] {
        let error = store.get_range(&key, range).unwrap_err();
        assert!(
            matches!(error, Error::EmptyRange { .. }),
            "{store:?}: {range}: {error}"
        );
    }
    store.delete(&[key]).unwrap();
}

fn conditional_creates(store: &dyn ObjectStore, base: &ObjectKey) {
    let key = sub(base, "lease");
    let ours = pattern(100, 1);
    assert_eq!(
        store.put_if_absent(&key, ours.clone()).unwrap(),
        PutOutcome::Created
    );
    let theirs = pattern(100, 2);
    assert_eq!(
        store.put_if_absent(&key, theirs).unwrap(),
        PutOutcome::AlreadyExists
    );
    assert_eq!(
        store.get(&key).unwrap(),
        ours,
        "{store:?}: a refused create writes nothing"
    );
    assert_eq!(
        store.put_if_absent(&key, ours).unwrap(),
        PutOutcome::Created,
        "{store:?}: our own bytes already there (a retried create) count as created"
    );
    store.delete(&[key]).unwrap();
}

fn listings(store: &dyn ObjectStore, base: &ObjectKey) {
    let names = ["a", "b/1", "b/2", "b-c", "c"];
    let keys: Vec<ObjectKey> = names.iter().map(|name| sub(base, name)).collect();
    for (i, key) in keys.iter().enumerate() {
        store.put(key, pattern(i, 0)).unwrap();
    }
    // A sibling whose name extends the prefix is not under it.
    let sibling = ObjectKey::new(format!("{base}x/1")).unwrap();
    store.put(&sibling, pattern(1, 0)).unwrap();
    let listed: Vec<(String, u64)> = store
        .list(base)
        .unwrap()
        .into_iter()
        .map(|info| (info.key.to_string(), info.size))
        .collect();
    // Byte order of whole keys: "b-c" sorts before "b/1" ('-' < '/').
    let want: Vec<(String, u64)> = [("a", 0), ("b-c", 3), ("b/1", 1), ("b/2", 2), ("c", 4)]
        .into_iter()
        .map(|(name, size)| (format!("{base}/{name}"), size))
        .collect();
    assert_eq!(listed, want, "{store:?}");
    let after: Vec<String> = store
        .list_after(base, &keys[1])
        .unwrap()
        .into_iter()
        .map(|info| info.key.to_string())
        .collect();
    assert_eq!(
        after,
        [want[3].0.clone(), want[4].0.clone()],
        "{store:?}: after {}",
        keys[1]
    );
    assert_eq!(store.list(&sub(base, "b")).unwrap().len(), 2);
    store.delete(&keys).unwrap();
    store.delete(&[sibling]).unwrap();
    assert_eq!(store.list(base).unwrap(), vec![]);
}
