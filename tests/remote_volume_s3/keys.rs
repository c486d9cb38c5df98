//! Key rotation and rewrapping on a volume kept in the store: what they
//! change (records under the new key, new wrapped blobs, a new ACL) is in
//! the bucket before lsvkms forgets what it replaces, so the volume rebuilt
//! from the bucket alone on another host opens with the keys lsvkms still
//! serves.

use std::time::Duration;

use lsvblk::crypto::KeyId;

use crate::kit::ceph::cluster;
use crate::kit::cli::{json_of, wait_for};
use crate::kit::daemon::Daemon;
use crate::kit::versions::VerifiedLoad;
use crate::lifecycle::lose_the_host_and_verify;
use crate::{MIB, Setup, for_time, lsvblk};

/// `volume.json` of the volume in `dir`.
fn superblock(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("volume.json")).unwrap()).unwrap()
}

fn key_state(setup: &Setup, key_id: &str) -> String {
    let key_id: KeyId = key_id.parse().unwrap();
    setup.kms.client().key_info(key_id).unwrap().status
}

/// A rotation while the guest writes: the old key is destroyed only once
/// the store holds the metadata and a checkpoint without it, and a remote
/// FLUSH returns only once the store holds the key its writes need. Losing
/// the host right after both loses nothing.
#[test]
fn a_rotation_while_writing_reaches_the_store_before_the_old_key_goes() {
    let _shared = cluster().fault_lock(false);
    let setup = Setup::new("rotate", 16 * MIB);
    let mut daemon = setup.serve(
        &setup.volume,
        &["--flush", "remote", "--compact-rate-mib", "0"],
    );
    let mut load = VerifiedLoad::new("rotate", daemon.client(1), 8, 30);
    load.precondition();
    let old_key = superblock(&setup.volume)["current_key_id"]
        .as_str()
        .unwrap()
        .to_string();

    // 4 MiB/s: the 16 MiB take a few seconds, written to all along.
    let volume = setup.volume.to_str().unwrap();
    let args = ["rotate", volume, "--rate-mib", "4", "--json"];
    let mut rotation = lsvblk().background(&args);
    load.run(&mut || !rotation.running());
    let rotated = json_of(&args, &rotation.finish());
    let new_key = rotated["current_key_id"].as_str().unwrap().to_string();
    assert_ne!(new_key, old_key, "{rotated}");
    // The old key goes once the store holds what replaces it: right after
    // the rotation on a quiet machine; under load the uploads may outlast
    // the rotation's own wait, and the daemon's key care destroys it on a
    // later tick.
    wait_for(
        "lsvkms to destroy the old key",
        Duration::from_secs(180),
        || (key_state(&setup, &old_key) == "destroyed").then_some(()),
        || {
            format!(
                "old key {}; rotation {rotated}",
                key_state(&setup, &old_key)
            )
        },
    );
    // Writes under the new key only, then a remote FLUSH.
    load.run(&mut for_time(Duration::from_millis(500)));
    load.flush();
    assert_eq!((load.io_errors, load.mismatches), (0, 0));

    let elsewhere = setup.fresh_dir();
    lose_the_host_and_verify(&setup, &mut daemon, &mut load, &elsewhere);
    assert_eq!(superblock(&elsewhere)["current_key_id"], new_key.as_str());
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..64 * 1024)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}

/// lsvkms rotates its wrapping key and bob joins the volume's ACL; the
/// daemon rewraps the blobs by itself. Once lsvkms refuses the old wrapping
/// key, bob opens the volume (and its snapshot) from the bucket alone on
/// other hosts: the store holds the rewrapped blobs and the new ACL.
#[test]
fn rewrapped_blobs_and_a_new_acl_reach_the_store() {
    let _shared = cluster().fault_lock(false);
    let setup = Setup::new("rewrap", 8 * MIB);
    let (mut alice, mut client) = setup.share_a_snapshot(&pattern(1));

    let version = setup
        .kms
        .client()
        .rotate_wrapping_key()
        .unwrap()
        .current_version;
    wait_for(
        "the daemon to rewrap its blobs and adopt the new ACL",
        Duration::from_secs(60),
        || {
            let keys = superblock(&setup.volume)["keys"].clone();
            let done = keys.as_array().unwrap().iter().all(|key| {
                let blob = base64_decode(key["wrapped_blob"].as_str().unwrap());
                let sealed = lsvblk::kms::seal::parse(&blob).unwrap();
                sealed.kek_version == version && key["acl"] == serde_json::json!(["alice", "bob"])
            });
            done.then_some(())
        },
        || superblock(&setup.volume).to_string(),
    );
    setup
        .kms
        .client()
        .set_min_wrapping_key_version(version)
        .unwrap();
    client.write(0, 64 * 1024, &pattern(2)).unwrap();
    client.flush(0).unwrap();

    // Alice's host is lost; bob takes the volume over on another.
    alice.kill9();
    drop(client);
    std::fs::remove_dir_all(&setup.volume).unwrap();
    let bob_token = setup.kms.token("bob");
    let mut options = setup.options(&["--takeover"]);
    let mut bob = Daemon::start_with(&setup.fresh_dir(), &setup.kms, &bob_token, &options);
    let mut reader = bob.client(1);
    assert_eq!(reader.read(0, 0, 64 * 1024).unwrap(), pattern(1));
    assert_eq!(reader.read(0, 64 * 1024, 64 * 1024).unwrap(), pattern(2));
    drop(reader);
    bob.stop_cleanly();

    // The snapshot's blob was rewrapped in the store too.
    options = setup.options(&["--snapshot", "snap1", "--read-only"]);
    let mut snapshot = Daemon::start_with(&setup.fresh_dir(), &setup.kms, &bob_token, &options);
    let mut reader = snapshot.client_read_only(1);
    assert_eq!(reader.read(0, 0, 64 * 1024).unwrap(), pattern(1));
    drop(reader);
    snapshot.stop_cleanly();
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}
