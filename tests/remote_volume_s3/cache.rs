//! The volume directory as a cache of the store (`--cache-size`): a volume
//! bigger than its cache keeps only the cache's worth of uploaded segments
//! locally and reads the rest back with ranged GETs, also after a restart
//! and when opened on an empty directory (which fetches records only when
//! they are read).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crate::kit::ceph::cluster;
use crate::kit::cli::wait_for;
use crate::kit::versions::VerifiedLoad;
use crate::{MIB, Setup, for_time, lsvblk};

const CACHE_BYTES: u64 = 8 * MIB;

/// Bytes the segment files take on disk (holes take none).
fn segments_allocated(volume: &Path) -> u64 {
    std::fs::read_dir(volume.join("segments"))
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

#[test]
fn a_volume_bigger_than_its_cache_reads_evicted_data_back() {
    let _shared = cluster().fault_lock(false);
    let setup = Setup::new("cache", 32 * MIB);
    // Without background compaction, so that what the directory holds is
    // the uploaded segments alone (compaction's reads of evicted data take
    // the same path as the guest's).
    let cache_args = [
        "--flush",
        "remote",
        "--cache-size",
        "8M",
        "--compact-rate-mib",
        "0",
    ];
    let mut daemon = setup.serve(&setup.volume, &cache_args);
    let mut load = VerifiedLoad::new("cache", daemon.client(1), 8, 30);
    load.precondition();
    load.run(&mut for_time(Duration::from_secs(2)));
    load.flush();
    assert_eq!((load.io_errors, load.mismatches), (0, 0));

    // Everything is uploaded: the cache evicts down to its size.
    let cache = |setup: &Setup| setup.status(&setup.volume)["upload"]["cache"].clone();
    wait_for(
        "the cache to evict down to its size",
        Duration::from_secs(60),
        || (cache(&setup)["resident_bytes"].as_u64()? <= CACHE_BYTES).then_some(()),
        || cache(&setup).to_string(),
    );
    let allocated = segments_allocated(&setup.volume);
    assert!(
        allocated < 16 * MIB,
        "the segment files still take {allocated} bytes on disk: {}",
        cache(&setup)
    );
    // A keyless check of the files says which segments are evicted, and
    // finds no damage in them.
    let volume = setup.volume.to_str().unwrap();
    let inspect = lsvblk().json(&["inspect", "--volume", volume, "--json"]);
    assert!(
        inspect["damage"]["segments_evicted"].as_u64() > Some(0),
        "{inspect}"
    );

    // Every block reads back: evicted ones through ranged GETs.
    let check = load.verify_disk();
    assert_eq!((check.io_errors, check.mismatches), (0, 0));
    let status = cache(&setup);
    assert!(status["evictions"].as_u64() > Some(0), "{status}");
    assert!(status["fetches"].as_u64() > Some(0), "{status}");

    // A restart knows what was evicted (cache.json) and reads it back too.
    drop(load.client.take());
    daemon.stop_cleanly();
    let mut daemon = setup.serve(&setup.volume, &cache_args);
    load.client = Some(daemon.client(1));
    let check = load.verify_disk();
    assert_eq!((check.io_errors, check.mismatches), (0, 0));
    assert_eq!(check.verified, 32 * MIB / 4096);
    drop(load.client.take());
    daemon.stop_cleanly();

    // Opened with a cache on an empty directory (another host), the volume
    // gets only the segments' headers and seals; its records come from the
    // store as they are read.
    let elsewhere = setup.fresh_dir();
    let mut daemon = setup.serve(&elsewhere, &cache_args);
    let allocated = segments_allocated(&elsewhere);
    assert!(
        allocated < 8 * MIB,
        "the rebuilt segment files take {allocated} bytes on disk"
    );
    load.client = Some(daemon.client(1));
    let check = load.verify_disk();
    assert_eq!((check.io_errors, check.mismatches), (0, 0));
    assert_eq!(check.verified, 32 * MIB / 4096);
    let status = setup.status(&elsewhere)["upload"]["cache"].clone();
    assert!(status["fetches"].as_u64() > Some(0), "{status}");
    drop(load.client.take());
    daemon.stop_cleanly();
}
