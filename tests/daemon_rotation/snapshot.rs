//! A snapshot still reads blocks under the old key: the rotation keeps it
//! (in lsvkms too) until the snapshot is deleted, and then has it destroyed.

use super::files::records_by_key;
use super::kit::disk::Disk;
use super::{MIB, Setup, assert_outcome, current_key, lsvblk_json};

#[test]
fn a_snapshot_keeps_the_old_key_alive_until_it_is_deleted() {
    let setup = Setup::new(8 * MIB, &[]);
    let mut daemon = setup.serve(&["--compact-rate-mib", "0"]);
    let mut client = daemon.client(1);
    let mut disk = Disk::zeros(setup.size);
    disk.write(&mut client, "snapshotted", 0, 2 * MIB);
    client.flush(0).unwrap();
    let at_snapshot = disk.clone();
    lsvblk_json(&["snapshot", "create", setup.vol(), "old", "--json"]);
    disk.write(&mut client, "after the snapshot", MIB, 2 * MIB);
    client.flush(0).unwrap();
    let old_key = current_key(&setup.status());

    let rotated = lsvblk_json(&["rotate", setup.vol(), "--json"]);
    assert_outcome(&rotated, "forgotten", &[&old_key]);
    assert_outcome(&rotated, "kept_for_snapshots", &[&old_key]);
    assert_outcome(&rotated, "destroyable", &[]);
    assert_eq!(setup.key_status(&old_key), "enabled");
    // The snapshot's segments keep their records under the old key, but
    // the volume no longer holds that key: it reads all its data (checked
    // below) under the new one.
    assert!(records_by_key(&setup.volume).contains_key(&old_key));
    let mut snapshot = setup.serve(&["--snapshot", "old", "--read-only"]);
    let mut reader = snapshot.client_read_only(1);
    at_snapshot.check(&mut reader, "the snapshot after the rotation");
    drop(reader);
    snapshot.stop_cleanly();
    disk.check(&mut client, "the volume after the rotation");

    let deleted = lsvblk_json(&["snapshot", "delete", setup.vol(), "old", "--json"]);
    assert_eq!(
        deleted["keys_destroyed"],
        serde_json::json!([old_key]),
        "{deleted}"
    );
    assert_eq!(setup.key_status(&old_key), "destroyed");
    let status = setup.status();
    assert_eq!(
        status["keys"]["pending_destroy"],
        serde_json::json!([]),
        "{status}"
    );
    disk.check(&mut client, "the volume after the snapshot's deletion");
    drop(client);
    daemon.stop_cleanly();
}
