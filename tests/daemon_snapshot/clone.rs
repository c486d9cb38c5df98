//! Bob's clone of the snapshot: it reads the snapshot, keeps his writes,
//! and pins the snapshot.

use serde_json::Value;

use super::kit::cli::{assert_refused, exit, lsvblk_json, run_lsvblk};
use super::kit::daemon::Daemon;
use super::story::Story;
use super::{KIB, MIB, path};

#[test]
fn bobs_clone_reads_the_snapshot_keeps_his_writes_and_pins_the_snapshot() {
    let mut h = Story::new().handoff();
    let story = &h.story;
    let clone = story.kms.fresh_path("bob-clone", "d");
    let output = story.clone_snapshot("snap1", &clone, "bob", &story.bob);
    assert!(
        output.status.success(),
        "clone: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let made: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(made["acl"], serde_json::json!(["bob"]));
    assert_eq!(made["parent"]["snapshot"], "snap1");

    // Bob serves his clone like any volume, with his token.
    let mut clone_daemon = Daemon::start(&clone, &story.kms, &story.bob, &[]);
    let mut client = clone_daemon.client(1);
    h.at_snapshot
        .check(&mut client, "bob's clone before he writes");
    // Over snapshot data (whole and in part) and over holes.
    let mut mine = h.at_snapshot.clone();
    for (offset, len) in [
        (MIB, 2 * MIB),
        (8 * MIB, MIB),
        (14 * MIB + 4 * KIB, 64 * KIB),
    ] {
        mine.write(&mut client, "bob's clone", offset, len);
    }
    client.flush(0).unwrap();
    mine.check(&mut client, "bob's clone after his writes");

    // The snapshot, served again beside the clone and alice, is unchanged.
    let mut snapshot_daemon = story.serve_snapshot(&story.bob, "snap1");
    let mut snapshot = snapshot_daemon.client_read_only(1);
    h.at_snapshot
        .check(&mut snapshot, "snap1 beside bob's clone");
    h.live
        .check(&mut h.alice_client, "alice's volume beside bob's clone");

    // The snapshot may not go while anything builds on it.
    let output = run_lsvblk(&["snapshot", "delete", story.vol(), "snap1"]);
    assert_refused(
        "delete while served",
        &output,
        exit::BUSY,
        &["snap1", "in use"],
    );
    drop(snapshot);
    snapshot_daemon.stop_cleanly();
    drop(client);
    clone_daemon.stop_cleanly();
    let output = run_lsvblk(&["snapshot", "delete", story.vol(), "snap1"]);
    assert_refused(
        "delete with a clone",
        &output,
        exit::BUSY,
        &["snap1", "clone", path(&clone)],
    );
    let listed = lsvblk_json(&["snapshot", "list", story.vol(), "--json"]);
    assert_eq!(listed[0]["name"], "snap1", "{listed}");
    assert_eq!(listed[0]["clones"], serde_json::json!([clone]), "{listed}");

    // Bob's writes are durable in the clone, and still only there.
    let mut clone_daemon = Daemon::start(&clone, &story.kms, &story.bob, &[]);
    let mut client = clone_daemon.client(1);
    mine.check(&mut client, "bob's clone after a restart");
    drop(client);
    clone_daemon.stop_cleanly();
    let mut snapshot_daemon = story.serve_snapshot(&story.bob, "snap1");
    h.at_snapshot
        .check(&mut snapshot_daemon.client_read_only(1), "snap1 at the end");
    snapshot_daemon.stop_cleanly();
    h.live
        .check(&mut h.alice_client, "alice's volume at the end");
    h.stop_alice();
}
