//! The raw figures of the cluster through our S3 client,
//! `lsvblk::objstore::S3Store`: what the volume cases are measured against.
//!
//! - PUT of 8 MiB objects (about a sealed segment's size), one stream and
//!   four streams at once (below the multipart threshold: one PUT each);
//! - GET of whole 8 MiB objects, one stream;
//! - ranged GET of 1 MiB at a random 1 MiB-aligned offset, one stream;
//! - ranged GET of 4 KiB at a random 4 KiB-aligned offset, one stream and
//!   eight streams (as a deep guest queue of cold reads would issue them).
//!
//! The reads go to 16 objects of 8 MiB written first. PUTs overwrite 16 keys
//! per stream (radosgw reclaims what they replace). Everything is under the
//! store's prefix and deleted by [`cleanup`].

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use lsvblk::objstore::contract::pattern;
use lsvblk::objstore::{ByteRange, ObjectKey, ObjectStore, S3Store};

use super::common::{Options, Suite, Throughput};
use super::kit::rng::Rng;

const OBJECT_BYTES: usize = 8 << 20;
const READ_OBJECTS: u64 = 16;
const PUT_KEYS_PER_STREAM: u64 = 16;
/// Streams of the parallel PUT case: as many as a daemon's uploads in
/// flight (`--store-threads`, default 4).
pub const PUT_STREAMS: usize = 4;
const SMALL_READ_STREAMS: usize = 8;
/// Ranged 4 KiB GETs one stream issues per call of the eight-stream case.
const SMALL_READS_PER_STREAM: usize = 16;

/// Measures the raw cases on `store` (see the module doc).
pub fn measure(store: &S3Store, options: &Options) -> Vec<Throughput> {
    let reads: Vec<ObjectKey> = (0..READ_OBJECTS)
        .map(|i| key(&format!("read/{i}")))
        .collect();
    for (i, object) in reads.iter().enumerate() {
        store.put(object, pattern(OBJECT_BYTES, i as u8)).unwrap();
    }
    let payload = pattern(OBJECT_BYTES, 0xA5);

    let mut suite = Suite::new(options.clone());
    let put_1 = AtomicU64::new(0);
    suite.add(
        "raw_put_8m_mbps",
        "PUT 8 MiB, 1 stream",
        OBJECT_BYTES,
        || {
            put_next(store, 0, &put_1, &payload);
        },
    );
    let put_4 = AtomicU64::new(0);
    let label = format!("PUT 8 MiB, {PUT_STREAMS} streams");
    suite.add(
        "raw_put_8m_4streams_mbps",
        &label,
        OBJECT_BYTES * PUT_STREAMS,
        || {
            std::thread::scope(|scope| {
                for stream in 1..=PUT_STREAMS as u64 {
                    let (put_4, payload) = (&put_4, &payload);
                    scope.spawn(move || put_next(store, stream, put_4, payload));
                }
            });
        },
    );
    let mut random = Rng(1);
    suite.add(
        "raw_get_8m_mbps",
        "GET 8 MiB, 1 stream",
        OBJECT_BYTES,
        || {
            let object = &reads[random.below(READ_OBJECTS) as usize];
            assert_eq!(store.get(object).unwrap().len(), OBJECT_BYTES);
        },
    );
    let mut random = Rng(2);
    suite.add(
        "raw_get_range_1m_mbps",
        "ranged GET 1 MiB, 1 stream",
        1 << 20,
        || {
            read_random(store, &reads, &mut random, 1 << 20);
        },
    );
    let mut random = Rng(3);
    suite.add(
        "raw_get_range_4k_1stream_mbps",
        "ranged GET 4 KiB, 1 stream",
        4096,
        || {
            read_random(store, &reads, &mut random, 4096);
        },
    );
    let label = format!("ranged GET 4 KiB, {SMALL_READ_STREAMS} streams");
    let per_call = 4096 * SMALL_READ_STREAMS * SMALL_READS_PER_STREAM;
    let seed = AtomicU64::new(4);
    suite.add("raw_get_range_4k_mbps", &label, per_call, || {
        std::thread::scope(|scope| {
            for _ in 0..SMALL_READ_STREAMS {
                let mut random = Rng(seed.fetch_add(1, Ordering::Relaxed));
                let reads = &reads;
                scope.spawn(move || {
                    for _ in 0..SMALL_READS_PER_STREAM {
                        read_random(store, reads, &mut random, 4096);
                    }
                });
            }
        });
    });
    suite.run()
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(name).unwrap()
}

/// PUTs `payload` to the next of stream `stream`'s keys.
fn put_next(store: &S3Store, stream: u64, counter: &AtomicU64, payload: &Bytes) {
    let n = counter.fetch_add(1, Ordering::Relaxed) % PUT_KEYS_PER_STREAM;
    store
        .put(&key(&format!("put/{stream}/{n}")), payload.clone())
        .unwrap();
}

/// A ranged GET of `bytes` at a random `bytes`-aligned offset of a random
/// read object.
fn read_random(store: &S3Store, reads: &[ObjectKey], random: &mut Rng, bytes: usize) {
    let object = &reads[random.below(READ_OBJECTS) as usize];
    let start = random.below((OBJECT_BYTES / bytes) as u64) * bytes as u64;
    let range = ByteRange::Span {
        start,
        end: start + bytes as u64,
    };
    assert_eq!(store.get_range(object, range).unwrap().len(), bytes);
}

/// Deletes the objects [`measure`] wrote.
pub fn cleanup(store: &S3Store) {
    for prefix in ["read", "put"] {
        let objects = store.list(&key(prefix)).unwrap();
        let keys: Vec<ObjectKey> = objects.into_iter().map(|object| object.key).collect();
        store.delete(&keys).unwrap();
    }
}
