//! After lsvkms rotates its wrapping key, the daemon rewraps the blobs of
//! its volume and snapshots by itself, and `lsvblk rewrap` those of a
//! volume no daemon serves.

use std::time::Instant;

use super::files::{blob_versions, blobs, superblock};
use super::kit::daemon::{Daemon, create_volume_with};
use super::kit::data::BLOCK;
use super::kit::disk::Disk;
use super::kit::kms::api_error;
use super::{ACT_WAIT, MIB, Setup, lsvblk_json, path, wait_for};

#[test]
fn after_lsvkms_rotates_its_wrapping_key_blobs_are_rewrapped_served_or_not() {
    let setup = Setup::new(8 * MIB, &[]);
    let unserved = create_volume_with(
        &setup.kms,
        8 * MIB,
        &["alice"],
        BLOCK as u32,
        &["--segment-size", "1M"],
    );
    let mut daemon = setup.serve(&["--compact-rate-mib", "0"]);
    let mut client = daemon.client(1);
    let mut disk = Disk::zeros(setup.size);
    disk.write(&mut client, "before", 0, 2 * MIB);
    client.flush(0).unwrap();
    lsvblk_json(&["snapshot", "create", setup.vol(), "snap", "--json"]);
    let before = blob_versions(&setup.volume);
    assert_eq!(
        before.len(),
        2,
        "the volume's key and the snapshot's: {before:?}"
    );
    let old_version = *before.values().next().unwrap();
    assert!(before.values().all(|v| *v == old_version), "{before:?}");
    let (_, old_blob) = blobs(&superblock(&setup.volume)).remove(0);

    let rotated = setup.kms.client().rotate_wrapping_key().unwrap();
    let version = rotated.current_version;
    assert!(version > old_version, "{rotated:?}");
    let started = Instant::now();
    let after = wait_for(
        "the daemon to rewrap its blobs",
        ACT_WAIT,
        || {
            let versions = blob_versions(&setup.volume);
            versions.values().all(|v| *v == version).then_some(versions)
        },
        || format!("{:?}", blob_versions(&setup.volume)),
    );
    eprintln!("rewrapped by the daemon after {:?}", started.elapsed());
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    assert!(setup.status()["keys"]["last_error"].is_null());

    // No daemon looks after the other volume: `lsvblk rewrap` does.
    let unserved_versions = blob_versions(&unserved);
    assert!(
        unserved_versions.values().all(|v| *v == old_version),
        "{unserved_versions:?}"
    );
    let kms = setup.kms.address();
    let out = lsvblk_json(&["rewrap", path(&unserved), "--kms", &kms, "--json"]);
    assert_eq!(out["replaced"], 1, "{out}");
    let unserved_versions = blob_versions(&unserved);
    assert!(
        unserved_versions.values().all(|v| *v == version),
        "{unserved_versions:?}"
    );

    // Once lsvkms refuses the old wrapping key, only the new blobs open:
    // the volume, its snapshot and the other volume all serve again.
    setup
        .kms
        .client()
        .set_min_wrapping_key_version(version)
        .unwrap();
    let token = setup.alice_token();
    assert_eq!(
        api_error(
            setup
                .kms
                .client()
                .unwrap(&old_blob, &setup.context(), &token)
        )
        .0,
        409
    );
    drop(client);
    daemon.stop_cleanly();
    let mut daemon = setup.serve(&["--compact-rate-mib", "0"]);
    disk.check(&mut daemon.client(1), "with the rewrapped blob");
    let mut snapshot = setup.serve(&["--snapshot", "snap", "--read-only"]);
    let mut reader = snapshot.client_read_only(1);
    disk.check(&mut reader, "the snapshot with its rewrapped blob");
    drop(reader);
    snapshot.stop_cleanly();
    daemon.stop_cleanly();
    let mut other = Daemon::start(&unserved, &setup.kms, &setup.alice, &[]);
    Disk::zeros(8 * MIB).check(&mut other.client(1), "the other volume, rewrapped");
    other.stop_cleanly();
}
