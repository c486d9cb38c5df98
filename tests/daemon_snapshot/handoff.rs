//! A snapshot taken while alice's daemon serves the volume: bob serves it
//! read-only beside her and reads the data of its moment, not hers since.

use std::path::Path;

use super::kit::blkio::{BlkClient, IoFailed};
use super::kit::data::fill;
use super::story::{ALICE_RANGES, Story};
use super::{EBADF, EROFS, MIB, SIZE_BYTES};

/// A snapshot is O(1): a flush, an index clone, one small metadata file.
/// Measured here (tmpfs, so fsync is free; tests in parallel on 2 cores):
/// 0.1 to 0.2 ms. On a disk file system the fsyncs add a few ms.
const SNAPSHOT_CREATE_MS_MAX: f64 = 10.0;

#[test]
fn a_snapshot_taken_while_served_gives_bob_read_only_the_data_of_its_moment() {
    let mut h = Story::new().handoff();
    let create_ms = h.snapshot["create_ms"]
        .as_f64()
        .expect("create_ms in the answer");
    assert!(
        create_ms < SNAPSHOT_CREATE_MS_MAX,
        "snapshot create took {create_ms} ms: {}",
        h.snapshot
    );
    assert_eq!(h.snapshot["name"], "snap1");
    assert_eq!(h.snapshot["acl"], serde_json::json!(["alice", "bob"]));
    let snapshot_files = snapshot_files(&h.story.volume, "snap1");

    // Bob serves the snapshot with his own token beside alice's daemon.
    let mut bob_daemon = h.story.serve_snapshot(&h.story.bob, "snap1");
    match BlkClient::connect_once(&bob_daemon.socket, 1, false) {
        Ok(_) => panic!("libblkio started bob's read-only export for writing"),
        Err(failed) => assert_eq!(failed.errno, EROFS, "{failed:?}"),
    }
    let mut bob = bob_daemon.client_read_only(1);
    assert!(bob.get_bool("read-only"));
    assert_eq!(bob.capacity(), SIZE_BYTES);
    h.at_snapshot
        .check(&mut bob, "bob's snapshot (alice's v1, not her v2)");

    // His writes fail and change nothing.
    let (offset, len) = ALICE_RANGES[1];
    let attempt = fill("bob's write to the snapshot", offset, len);
    assert_eq!(bob.write(0, offset, &attempt), Err(IoFailed(-EBADF)));
    assert_eq!(bob.write_zeroes(0, 0, MIB, false), Err(IoFailed(-EBADF)));
    assert_eq!(bob.discard(0, 0, MIB), Err(IoFailed(-EBADF)));
    h.at_snapshot
        .check(&mut bob, "bob's snapshot after his refused writes");

    // Alice's volume went on as hers meanwhile.
    h.live.check(
        &mut h.alice_client,
        "alice's volume while bob reads the snapshot",
    );
    let more = fill("alice v3", 8 * MIB, MIB);
    h.alice_client.write(0, 8 * MIB, &more).unwrap();
    h.live.put(8 * MIB, &more);
    h.at_snapshot
        .check(&mut bob, "bob's snapshot after alice wrote more");

    drop(bob);
    bob_daemon.stop_cleanly();
    assert!(
        snapshot_files == self::snapshot_files(&h.story.volume, "snap1"),
        "serving the snapshot changed its files"
    );
    h.live
        .check(&mut h.alice_client, "alice's volume at the end");
    h.stop_alice();
}

/// The metadata and index files of snapshot `name`, with their contents.
fn snapshot_files(volume: &Path, name: &str) -> Vec<(String, Vec<u8>)> {
    ["json", "index"]
        .iter()
        .map(|ext| {
            let file = volume.join("snapshots").join(format!("{name}.{ext}"));
            (ext.to_string(), std::fs::read(&file).unwrap())
        })
        .collect()
}
