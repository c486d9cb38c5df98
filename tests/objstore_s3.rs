//! The S3 object store against a real Ceph cluster: three BlueStore OSDs
//! (pools of size 3, min_size 2) and radosgw, started by `ci/ceph.sh`
//! (ci/test.sh runs this file inside `ci/ceph.sh use`; by hand: `ci/ceph.sh
//! up` first). Never skipped: without the cluster every test fails and says
//! how to start it.
//!
//! The same contract the local-directory store is held to
//! (`lsvblk::objstore::contract`), then what only a real store shows:
//! multipart uploads, listings longer than one page, 8 racing conditional
//! creates, refused credentials and a missing bucket as typed errors, an
//! OSD killed (`kill -9`) under a PUT+GET loop (no error reaches the caller)
//! and radosgw stopped for seconds (calls wait and succeed when it is back;
//! past the retry deadline they fail as transient). About 40 s.

mod kit;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kit::ceph::{Fault, cluster, unique_prefix};
use lsvblk::objstore::contract::{self, pattern};
use lsvblk::objstore::{
    ByteRange, Credentials, Error, ObjectKey, ObjectStore, PutOutcome, S3Config, S3Store,
};

fn key(prefix: &str) -> ObjectKey {
    ObjectKey::new(prefix).unwrap()
}

#[test]
fn keeps_the_object_store_contract() {
    let _shared = cluster().fault_lock(false);
    let store = cluster().store(&unique_prefix("contract"));
    contract::check_store(&store, &key("c"));
}

#[test]
fn eight_racing_creates_have_exactly_one_winner() {
    let _shared = cluster().fault_lock(false);
    let store = cluster().store(&unique_prefix("race"));
    for round in 0..5 {
        contract::check_create_race(&store, &key(&format!("round-{round}")), 8);
    }
}

#[test]
fn large_objects_go_up_in_parts() {
    let _shared = cluster().fault_lock(false);
    let prefix = unique_prefix("multipart");
    let store = cluster().store(&prefix);
    let object = key("segment");
    let bytes = pattern(72 << 20, 3); // above the 64 MiB threshold
    store.put(&object, bytes.clone()).unwrap();
    assert_eq!(store.get(&object).unwrap(), bytes);
    assert_eq!(store.head(&object).unwrap().size, 72 << 20);
    let seam = 8 << 20; // where the first part ends
    let across = ByteRange::Span {
        start: seam - 100,
        end: seam + 100,
    };
    assert_eq!(
        store.get_range(&object, across).unwrap(),
        bytes.slice(seam as usize - 100..seam as usize + 100)
    );
    // radosgw logs each request: the upload was really multipart (a POST
    // ?uploads, then 9 parts of 8 MiB), not one PUT.
    let log = std::fs::read_to_string(cluster().rgw_log()).unwrap();
    let name = format!("{prefix}/segment");
    let posts = log
        .lines()
        .filter(|l| l.contains("POST /") && l.contains(&name) && l.contains("uploads"))
        .count();
    let parts = log
        .lines()
        .filter(|l| l.contains("PUT /") && l.contains(&name) && l.contains("partNumber="))
        .count();
    assert_eq!(
        (posts, parts),
        (1, 9),
        "one multipart upload of 9 parts in radosgw's log"
    );
    store.delete(&[object]).unwrap();
}

#[test]
fn listings_longer_than_one_page_are_complete() {
    let _shared = cluster().fault_lock(false);
    let store = cluster().store(&unique_prefix("list"));
    // S3 returns at most 1000 keys per page: 1100 need a continuation.
    let keys: Vec<ObjectKey> = (0..1100).map(|i| key(&format!("seg/{i:06}"))).collect();
    std::thread::scope(|scope| {
        for chunk in keys.chunks(138) {
            let store = &store;
            scope.spawn(move || {
                chunk
                    .iter()
                    .for_each(|k| store.put(k, Bytes::from_static(b"s")).unwrap())
            });
        }
    });
    let listed: Vec<ObjectKey> = store
        .list(&key("seg"))
        .unwrap()
        .into_iter()
        .map(|info| info.key)
        .collect();
    assert_eq!(listed, keys, "every key, in order");
    let after = store.list_after(&key("seg"), &keys[999]).unwrap();
    assert_eq!(after.len(), 100);
    assert_eq!(after[0].key, keys[1000]);
    store.delete(&keys).unwrap();
    assert_eq!(store.list(&key("seg")).unwrap(), vec![]);
}

#[test]
fn refused_credentials_are_a_typed_error_at_once() {
    let _shared = cluster().fault_lock(false);
    let prefix = unique_prefix("credentials");
    let right = cluster().credentials();
    let secret = "0000000000000000000000000000000000000000";
    let cases = [
        (
            Credentials::new(right.access_key_id(), secret).unwrap(),
            "SignatureDoesNotMatch",
        ),
        (
            Credentials::new("NOSUCHACCESSKEY00000", secret).unwrap(),
            "InvalidAccessKeyId",
        ),
    ];
    for (credentials, code) in cases {
        let store = S3Store::new(cluster().config(&prefix), &credentials).unwrap();
        let started = Instant::now();
        let results: [Result<(), Error>; 5] = [
            store.put(&key("k"), Bytes::from_static(b"v")),
            store.get(&key("k")).map(drop),
            store.list(&key("k")).map(drop),
            store.head(&key("k")).map(drop),
            store.probe(),
        ];
        for result in results {
            let error = result.unwrap_err();
            assert!(
                matches!(error, Error::CredentialsRefused { .. }),
                "{code}: {error}"
            );
            assert!(!error.to_string().contains(secret));
        }
        let message = store.get(&key("k")).unwrap_err().to_string();
        assert!(message.contains(code), "{message}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refusals are not retried"
        );
        assert!(!format!("{store:?} {credentials:?}").contains(secret));
    }
}

#[test]
fn a_missing_bucket_is_a_typed_error() {
    let _shared = cluster().fault_lock(false);
    let config = S3Config::new(cluster().endpoint(), "lsvblk-no-such-bucket");
    let store = S3Store::new(config, &cluster().credentials()).unwrap();
    let results: [Result<(), Error>; 4] = [
        store.put(&key("k"), Bytes::from_static(b"v")),
        store.get(&key("k")).map(drop),
        store.list(&key("k")).map(drop),
        store.probe(),
    ];
    for result in results {
        let error = result.unwrap_err();
        assert!(matches!(error, Error::BucketMissing { .. }), "{error}");
    }
    assert!(matches!(
        store.put_if_absent(&key("k"), Bytes::new()),
        Err(Error::BucketMissing { .. })
    ));
}

/// Writes and reads back 1 MiB objects in a loop until `stop`; returns the
/// number of verified pairs and the slowest pair.
fn put_get_loop(store: &S3Store, stop: &AtomicBool, pairs: &AtomicU64) -> Duration {
    let mut slowest = Duration::ZERO;
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let object = key(&format!("loop/{}", i % 16));
        let bytes = pattern(1 << 20, i as u8);
        let started = Instant::now();
        store.put(&object, bytes.clone()).unwrap();
        assert_eq!(store.get(&object).unwrap(), bytes, "pair {i}");
        slowest = slowest.max(started.elapsed());
        pairs.fetch_add(1, Ordering::SeqCst);
        i += 1;
    }
    slowest
}

#[test]
fn an_osd_killed_under_load_surfaces_no_error() {
    let _exclusive = cluster().fault_lock(true);
    let store = cluster().store(&unique_prefix("osd-kill"));
    let (stop, pairs) = (AtomicBool::new(false), AtomicU64::new(0));
    let slowest = std::thread::scope(|scope| {
        let worker = scope.spawn(|| put_get_loop(&store, &stop, &pairs));
        std::thread::sleep(Duration::from_secs(2));
        let before_kill = pairs.load(Ordering::SeqCst);
        let fault = Fault::kill_osd(1);
        std::thread::sleep(Duration::from_secs(6));
        let while_down = pairs.load(Ordering::SeqCst) - before_kill;
        fault.end();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::SeqCst);
        let slowest = worker.join().expect("no error reached the loop");
        assert!(while_down > 0, "I/O went on with one OSD down (min_size 2)");
        slowest
    });
    eprintln!(
        "{} verified PUT+GET pairs, slowest {slowest:?}",
        pairs.load(Ordering::SeqCst)
    );
    store
        .delete(
            &(0..16)
                .map(|i| key(&format!("loop/{i}")))
                .collect::<Vec<_>>(),
        )
        .unwrap();
}

#[test]
fn a_stopped_gateway_is_waited_for_until_the_deadline() {
    let _exclusive = cluster().fault_lock(true);
    let prefix = unique_prefix("rgw-stop");
    let store = cluster().store(&prefix);
    let object = key("k");
    let fault = Fault::stop_rgw();
    // A short deadline: the call gives up, typed as transient.
    let mut impatient = cluster().config(&prefix);
    impatient.retry_deadline = Duration::from_secs(1);
    let impatient = S3Store::new(impatient, &cluster().credentials()).unwrap();
    let started = Instant::now();
    let error = impatient.get(&object).unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the deadline"
    );
    // The default deadline (60 s) outlasts a gateway down for 5 s.
    let stopped_for = Duration::from_secs(5);
    let waited = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let started = Instant::now();
            let created = store.put_if_absent(&object, Bytes::from_static(b"after the outage"));
            (created, started.elapsed())
        });
        std::thread::sleep(stopped_for);
        fault.end();
        let (created, waited) = writer.join().unwrap();
        assert_eq!(created.unwrap(), PutOutcome::Created);
        waited
    });
    assert!(
        waited >= stopped_for - Duration::from_millis(500),
        "it waited for the gateway: {waited:?}"
    );
    assert_eq!(
        store.get(&object).unwrap(),
        Bytes::from_static(b"after the outage")
    );
    store.delete(&[object]).unwrap();
}
