//! Alice's snapshot served read-only to bob on another host from the store
//! alone, with bob's token: lsvkms checks the snapshot's ACL as for a
//! snapshot served from alice's directory.

use std::time::Duration;

use lsvblk::objstore::{ObjectKey, ObjectStore};

use crate::kit::ceph::cluster;
use crate::kit::cli::{exit, wait_for};
use crate::kit::daemon::Daemon;
use crate::{MIB, Setup, refused};

fn pattern(seed: u8) -> Vec<u8> {
    (0..64 * 1024)
        .map(|i| (i as u8).wrapping_mul(7) ^ seed)
        .collect()
}

/// True when the newest metadata object of epoch 2 holds snapshot `name`
/// with its frozen index.
fn stored_with_index(setup: &Setup, name: &str) -> bool {
    let store = setup.store();
    let folder = ObjectKey::new("e0000000000000002/meta").unwrap();
    let Some(newest) = store
        .list(&folder)
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .max()
    else {
        return false;
    };
    let bundle = String::from_utf8_lossy(&store.get(&newest).unwrap()).into_owned();
    bundle.contains(&format!("\"snapshots/{name}.index\""))
}

#[test]
fn bob_serves_alices_snapshot_from_the_store_on_another_host() {
    let _shared = cluster().fault_lock(false);
    let setup = Setup::new("handoff", 16 * MIB);
    let (mut alice, mut client) = setup.share_a_snapshot(&pattern(1));
    client.write(0, 0, &pattern(2)).unwrap();
    client.flush(0).unwrap();
    // The daemon writes a checkpoint when the metadata changed; the
    // snapshot goes up with it.
    wait_for(
        "the snapshot to reach the store",
        Duration::from_secs(60),
        || stored_with_index(&setup, "snap1").then_some(()),
        || setup.status(&setup.volume).to_string(),
    );

    // Bob, on another host (an empty directory), with his own token.
    let bob_token = setup.kms.token("bob");
    let snapshot_args = ["--snapshot", "snap1", "--read-only"];
    let mut bob = Daemon::start_with(
        &setup.fresh_dir(),
        &setup.kms,
        &bob_token,
        &setup.options(&snapshot_args),
    );
    assert!(
        bob.stderr()
            .contains("fetched the snapshot from the object store"),
        "{}",
        bob.stderr()
    );
    let mut reader = bob.client_read_only(1);
    assert_eq!(reader.read(0, 0, 64 * 1024).unwrap(), pattern(1));
    assert!(reader.write(0, 0, &pattern(3)).is_err());
    assert_eq!(client.read(0, 0, 64 * 1024).unwrap(), pattern(2));

    // Mallory is not on the snapshot's ACL.
    let mallory = setup.kms.token("mallory");
    let (code, stderr) = refused(Daemon::spawn_with(
        &setup.fresh_dir(),
        &setup.kms,
        &mallory,
        &setup.options(&snapshot_args),
    ));
    assert_eq!(code, Some(exit::DENIED), "{stderr}");
    assert!(stderr.contains("not_on_acl"), "{stderr}");

    drop(reader);
    bob.stop_cleanly();
    drop(client);
    alice.stop_cleanly();
}
