//! A VM outlives its user's token: the daemon's lease.

use std::time::Duration;

use lsvblk::kms::keys::KeyAction;
use serde_json::Value;

use super::kit::cli::run_to_success;
use super::kit::daemon::Daemon;
use super::kit::disk::Disk;
use super::kit::kms::{Kms, api_error};
use super::{MIB, Setup, path};

/// The lease id the daemon keeps in the volume directory.
fn lease_id(setup: &Setup) -> String {
    let text = std::fs::read_to_string(setup.volume.join("lease.json")).unwrap();
    let file: Value = serde_json::from_str(&text).unwrap();
    let leases = file["leases"].as_object().unwrap();
    assert_eq!(leases.len(), 1, "{file}");
    leases.values().next().unwrap()["lease_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A daemon started without a token must refuse to serve: exit 77, and
/// lsvkms's reason in its stderr.
fn assert_restart_refused(setup: &Setup, reason: &str) {
    let mut daemon = Daemon::spawn_without_token(&setup.volume, &setup.kms, &[]);
    let status = daemon.wait_exit(Duration::from_secs(30));
    let stderr = daemon.stderr();
    assert_eq!(status.code(), Some(77), "{stderr}");
    assert!(stderr.contains(reason), "{reason}: {stderr}");
}

/// SIGTERM, then a daemon without a token; returns it serving.
fn restart_without_token(daemon: &mut Daemon, setup: &Setup) -> Daemon {
    daemon.stop_cleanly();
    let mut again = Daemon::spawn_without_token(&setup.volume, &setup.kms, &[]);
    again.wait_listening();
    again
}

fn revoke(kms: &Kms, lease_id: &str) {
    let socket = path(kms.socket());
    let out = kms.run(&["lease", "revoke", "--socket", socket, lease_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_leased_daemon_outlives_a_5s_token_and_a_revoked_lease_refuses_the_restart() {
    let setup = Setup::start();
    let short = setup.kms.token_for("alice", "5s");
    let mut daemon = Daemon::start(&setup.volume, &setup.kms, &short, &["--lease", "1h"]);
    let mut disk = Disk::zeros(8 * MIB);
    {
        let mut client = daemon.client(1);
        disk.write(&mut client, "with a fresh token", 0, MIB);
        client.flush(0).unwrap();
    }
    let lease = lease_id(&setup);
    let mode = std::fs::metadata(setup.volume.join("lease.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // The token expires; the VM goes on, and a restart needs no token.
    std::thread::sleep(Duration::from_secs(6));
    let key_id = setup.status()["keys"]["current_key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let volume_id = setup.volume_id();
    let refused = setup.kms.client().unwrap(
        &super::blob_of(&setup.volume, &key_id),
        &super::context(&volume_id),
        std::fs::read_to_string(&short).unwrap().trim(),
    );
    assert_eq!(api_error(refused), (401, "token_expired".to_owned()));
    {
        let mut client = daemon.client(1);
        disk.write(&mut client, "after the token expired", MIB, MIB);
        client.flush(0).unwrap();
    }
    let mut daemon = restart_without_token(&mut daemon, &setup);
    {
        let mut client = daemon.client(1);
        disk.check(&mut client, "after a restart without token");
        disk.write(&mut client, "after a restart without token", 2 * MIB, MIB);
        client.flush(0).unwrap();
    }
    let by_lease: Vec<Value> = setup
        .audit()
        .into_iter()
        .filter(|r| r["action"] == "unwrap" && r["lease"] == lease.as_str())
        .collect();
    assert_eq!(by_lease.len(), 2, "lent, then used once: {by_lease:?}");
    assert!(
        by_lease
            .iter()
            .all(|r| r["user"] == "alice" && r["decision"] == "allow")
    );

    // Revoked: the running VM keeps its key, a restart is refused.
    revoke(&setup.kms, &lease);
    daemon.stop_cleanly();
    assert_restart_refused(&setup, "lease_refused");
    let revoked = setup
        .audit()
        .into_iter()
        .filter(|r| r["action"] == "lease_revoke")
        .count();
    assert_eq!(revoked, 1);
}

#[test]
fn a_disabled_key_or_a_user_taken_off_the_acl_ends_the_lease_at_once() {
    let setup = Setup::start();
    let mut daemon = Daemon::start(&setup.volume, &setup.kms, &setup.alice, &["--lease", "30d"]);
    let status = setup.status();
    let key_id: lsvblk::crypto::KeyId = status["keys"]["current_key_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let kms = setup.kms.client();
    let mut daemon = restart_without_token(&mut daemon, &setup);

    // Disabled, then enabled again: the lease stays ended.
    kms.set_key_state(key_id, KeyAction::Disable).unwrap();
    kms.set_key_state(key_id, KeyAction::Enable).unwrap();
    daemon.stop_cleanly();
    assert_restart_refused(&setup, "key_disabled");

    // A new lease; alice taken off the ACL (bob's now) ends it.
    let mut daemon = Daemon::start(&setup.volume, &setup.kms, &setup.alice, &["--lease", "30d"]);
    let mut daemon = restart_without_token(&mut daemon, &setup);
    run_to_success(&mut super::kit::cli::Lsvblk::this_build().command(&[
        "acl",
        "set",
        setup.vol(),
        "--acl",
        "bob",
        "--kms",
        &setup.kms.address(),
        "--token-file",
        path(&setup.alice),
    ]));
    daemon.stop_cleanly();
    assert_restart_refused(&setup, "removed_from_acl");
}
