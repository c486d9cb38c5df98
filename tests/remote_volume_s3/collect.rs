//! Objects nothing needs any more (segments compaction dropped, older
//! checkpoints and metadata) are deleted from the store, and the volume
//! rebuilt from what is left is whole.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use lsvblk::objstore::{ObjectKey, ObjectStore};

use crate::kit::ceph::cluster;
use crate::kit::versions::VerifiedLoad;
use crate::{MIB, Setup, for_time};

/// The ids of the segment objects the store holds for epochs 1 (create) and
/// 2 (the one daemon).
fn stored_segments(setup: &Setup) -> BTreeSet<u64> {
    let store = setup.store();
    ["e0000000000000001", "e0000000000000002"]
        .into_iter()
        .flat_map(|epoch| store.list(&ObjectKey::new(epoch).unwrap()).unwrap())
        .filter_map(|info| {
            let (_, name) = info.key.as_str().split_once("/segments/")?;
            u64::from_str_radix(name.get(..16)?, 16).ok()
        })
        .collect()
}

/// The ids of the segment files in the volume directory.
fn local_segments(volume: &Path) -> BTreeSet<u64> {
    std::fs::read_dir(volume.join("segments"))
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name();
            u64::from_str_radix(name.to_str()?.strip_suffix(".seg")?, 16).ok()
        })
        .collect()
}

#[test]
fn objects_of_segments_compaction_dropped_are_collected() {
    const ROUNDS_MAX: usize = 20;
    let _shared = cluster().fault_lock(false);
    let setup = Setup::new("collect", 32 * MIB);
    let mut daemon = setup.serve(
        &setup.volume,
        &[
            "--flush",
            "remote",
            "--compact-rate-mib",
            "64",
            "--background-poll-ms",
            "200",
        ],
    );
    let mut load = VerifiedLoad::new("collect", daemon.client(1), 8, 30);
    load.precondition();
    let collected = |setup: &Setup| {
        setup.status(&setup.volume)["upload"]["collected_objects"]
            .as_u64()
            .unwrap_or(0)
    };
    let mut rounds = 0;
    while rounds < ROUNDS_MAX && (rounds < 3 || collected(&setup) == 0) {
        load.run(&mut for_time(Duration::from_secs(1)));
        load.flush();
        rounds += 1;
    }
    assert_eq!((load.io_errors, load.mismatches), (0, 0));
    assert!(
        collected(&setup) > 0,
        "nothing collected in {rounds} rounds: {}",
        setup.status(&setup.volume)
    );

    // A clean stop stores a last checkpoint and collects after it: the
    // store then holds exactly the segments the directory holds.
    drop(load.client.take());
    daemon.stop_cleanly();
    assert_eq!(stored_segments(&setup), local_segments(&setup.volume));

    // What is left is the whole volume.
    let mut rebuilt = setup.serve(&setup.fresh_dir(), &[]);
    load.client = Some(rebuilt.client(1));
    let check = load.verify_disk();
    assert_eq!((check.io_errors, check.mismatches), (0, 0));
    assert_eq!(check.verified, 32 * MIB / 4096);
    drop(load.client.take());
    rebuilt.stop_cleanly();
}
