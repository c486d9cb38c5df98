//! A key lsvkms finds compromised is rotated away within seconds of
//! lsvkms coming back, and destroyed.

use std::time::Instant;

use serde_json::Value;

use super::files::{blobs, records_by_key, superblock};
use super::kit::disk::Disk;
use super::kit::kms::api_error;
use super::{ACT_WAIT, MIB, Setup, current_key, status_key_ids, wait_for, wait_for_rotation};

#[test]
fn a_key_lsvkms_finds_compromised_is_rotated_away_within_seconds_and_destroyed() {
    let mut setup = Setup::new(8 * MIB, &[]);
    let mut daemon = setup.serve(&["--compact-rate-mib", "0"]);
    let mut client = daemon.client(1);
    let mut disk = Disk::zeros(setup.size);
    disk.write(&mut client, "before", 0, 4 * MIB);
    client.flush(0).unwrap();
    let old_key = current_key(&setup.status());
    let (_, old_blob) = blobs(&superblock(&setup.volume)).remove(0);
    assert_eq!(setup.key_status(&old_key), "enabled");

    // lsvkms goes away: the daemon serves on and says what it cannot do.
    setup.kms.stop();
    let last = std::cell::RefCell::new(Value::Null);
    let error = wait_for(
        "the daemon to notice lsvkms is gone",
        ACT_WAIT,
        || {
            let status = setup.status();
            *last.borrow_mut() = status.clone();
            status["keys"]["last_error"].as_str().map(str::to_owned)
        },
        || format!("status: {}", last.borrow()),
    );
    assert!(error.contains("lsvkms"), "{error}");
    disk.write(&mut client, "while lsvkms is away", 4 * MIB, MIB);
    client.flush(0).unwrap();

    // mallory, not on the ACL, unwrapped the key; `audit check` finds it.
    setup
        .kms
        .append_allowed_unwrap("mallory", old_key.parse().unwrap());
    let out = setup.kms.audit_check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("mallory") && stdout.contains(&old_key) && stdout.contains("COMPROMISED"),
        "{stdout}"
    );
    setup.kms.serve();
    assert_eq!(setup.key_status(&old_key), "compromised");

    let started = Instant::now();
    let status = wait_for_rotation(&setup, "compromised");
    eprintln!(
        "rotated away from the compromised key {:?} after lsvkms came back",
        started.elapsed()
    );
    assert_eq!(status["pid"], daemon.pid(), "the same daemon: {status}");
    let new_key = current_key(&status);
    assert_ne!(new_key, old_key);
    assert_eq!(status_key_ids(&status), [new_key.as_str()], "{status}");
    let keys = &status["keys"];
    assert_eq!(
        keys["last_rotation"]["outcome"]["destroyable"],
        serde_json::json!([old_key]),
        "{status}"
    );
    assert_eq!(keys["pending_destroy"], serde_json::json!([]), "{status}");
    assert!(keys["last_error"].is_null(), "{status}");

    // lsvkms destroyed the compromised key; the new one is fine.
    let info = setup
        .kms
        .client()
        .key_info(old_key.parse().unwrap())
        .unwrap();
    assert_eq!(
        (info.status.as_str(), info.compromised),
        ("destroyed", true)
    );
    let token = setup.alice_token();
    let kms = setup.kms.client();
    assert_eq!(
        api_error(kms.unwrap(&old_blob, &setup.context(), &token)).0,
        409
    );
    assert_eq!(setup.key_status(&new_key), "enabled");
    let records = records_by_key(&setup.volume);
    assert!(!records.contains_key(&old_key), "{records:?}");

    disk.check(
        &mut client,
        "after the rotation away from a compromised key",
    );
    drop(client);
    daemon.stop_cleanly();
    let mut daemon = setup.serve(&["--compact-rate-mib", "0"]);
    disk.check(&mut daemon.client(1), "after the rotation and a restart");
    daemon.stop_cleanly();
}
