//! The daemon rotates by itself for live bytes, bytes ever encrypted, age
//! and retirement, as its policy says; no key it rotated away from stays in
//! its memory.

use std::fs;

use serde_json::Value;

use super::kit::disk::Disk;
use super::kit::secrets::{key_in_base64, key_needles, memory_holds};
use super::{
    ACT_WAIT, MIB, Setup, current_key, lsvblk_json, path, status_key_ids, wait_for,
    wait_for_rotation,
};

const DAY_S: i64 = 24 * 3600;

/// Waits until no rotation is due, running or about to finish.
fn wait_until_settled(setup: &Setup) -> Value {
    let last = std::cell::RefCell::new(Value::Null);
    wait_for(
        "the keys to settle",
        ACT_WAIT,
        || {
            let status = setup.status();
            let keys = &status["keys"];
            let settled = keys["rotation"].is_null()
                && keys["rotation_due"].is_null()
                && keys["progress"].is_null();
            *last.borrow_mut() = status.clone();
            settled.then_some(status)
        },
        || format!("status: {}", last.borrow()),
    )
}

/// `lsvblk policy VOLUME ARGS --json` (through the daemon); the policy.
fn set_policy(setup: &Setup, args: &[&str]) -> Value {
    let mut all = vec!["policy", setup.vol()];
    all.extend_from_slice(args);
    all.push("--json");
    lsvblk_json(&all)["policy"].clone()
}

/// Checks that `status` shows a rotation for `reason` from the last of
/// `keys` to a new key, the old one forgotten by the volume and destroyed
/// by lsvkms; adds the new key to `keys`.
fn check_rotated(setup: &Setup, keys: &mut Vec<String>, status: &Value, reason: &str) {
    let key = current_key(status);
    assert!(!keys.contains(&key), "{reason}: no new key: {status}");
    assert_eq!(status_key_ids(status), [key.as_str()], "{status}");
    let previous = keys.last().unwrap();
    assert_eq!(
        status["keys"]["last_rotation"]["outcome"]["forgotten"],
        serde_json::json!([previous]),
        "{reason}: keys so far {keys:?}: {status}"
    );
    assert_eq!(setup.key_status(previous), "destroyed", "{reason}");
    keys.push(key);
}

/// The current key's entry in `status`'s `keys.keys`.
fn current_entry(status: &Value) -> Value {
    let current = current_key(status);
    status["keys"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == current.as_str())
        .unwrap_or_else(|| panic!("no entry for the current key: {status}"))
        .clone()
}

#[test]
fn the_daemon_rotates_by_itself_for_live_bytes_encrypted_bytes_age_and_retirement() {
    let setup = Setup::new(16 * MIB, &[]);
    let skew = setup.kms.fresh_path("clock-skew", "txt");
    fs::write(&skew, "0").unwrap();
    let mut daemon = setup.serve(&["--compact-rate-mib", "0", "--clock-skew-file", path(&skew)]);
    let mut client = daemon.client(1);
    let mut disk = Disk::zeros(setup.size);
    disk.write(&mut client, "v1", 0, 4 * MIB);
    client.flush(0).unwrap();
    let first = setup.status();
    assert!(first["keys"]["rotation_due"].is_null(), "{first}");
    assert!(first["keys"]["last_rotation"].is_null(), "{first}");
    let mut keys = vec![current_key(&first)];
    // Each key's bytes while lsvkms still unwraps it, to look for in the
    // daemon's memory once it is rotated away (all but the first came to
    // the daemon in lsvkms's answers to its own requests).
    let mut materials = vec![setup.data_key(&keys[0])];
    let entry = current_entry(&first);
    assert_eq!(entry["usage"]["live_bytes"], 4 * MIB, "{first}");
    assert!(entry["age_s"].as_u64().unwrap() < 3600, "{first}");
    // Live bytes: the key protects 4 MiB, more than 2 MiB.
    let policy = set_policy(&setup, &["--rotate-live", "2M"]);
    assert_eq!(policy["rotate_live_bytes"], 2 * MIB);
    let status = wait_for_rotation(&setup, "live-bytes");
    check_rotated(&setup, &mut keys, &status, "live-bytes");
    materials.extend(setup.try_data_key(keys.last().unwrap()));
    assert_eq!(status["keys"]["policy"]["rotate_live_bytes"], 2 * MIB);
    // The new key protects the same 4 MiB: lift the limit before it
    // rotates again.
    set_policy(&setup, &["--rotate-live", "1T"]);
    let status = wait_until_settled(&setup);
    // (It may have rotated once more for live bytes meanwhile.)
    if current_key(&status) != *keys.last().unwrap() {
        check_rotated(&setup, &mut keys, &status, "live-bytes");
    }

    // Bytes ever encrypted: 4 MiB more written than the limit allows.
    let encrypted = current_entry(&status)["usage"]["encrypted_bytes"]
        .as_u64()
        .unwrap();
    let limit = (encrypted + 2 * MIB).to_string();
    set_policy(&setup, &["--rotate-encrypted", &limit]);
    disk.write(&mut client, "v2", 0, 4 * MIB);
    client.flush(0).unwrap();
    let status = wait_for_rotation(&setup, "encrypted-bytes");
    check_rotated(&setup, &mut keys, &status, "encrypted-bytes");
    materials.extend(setup.try_data_key(keys.last().unwrap()));
    set_policy(&setup, &["--rotate-encrypted", "1T"]);
    wait_until_settled(&setup);

    // Age: the daemon's clock moves 91 days on (the default is 90).
    fs::write(&skew, (91 * DAY_S).to_string()).unwrap();
    let status = wait_for_rotation(&setup, "age");
    check_rotated(&setup, &mut keys, &status, "age");
    materials.extend(setup.try_data_key(keys.last().unwrap()));
    let entry = current_entry(&status);
    assert!(entry["age_s"].as_u64().unwrap() < 3600, "{status}");

    // Retirement: rotation by age as good as off, and the key 121 days old
    // (the default retirement age is 120 days).
    let policy = set_policy(&setup, &["--rotate-age-days", "100000"]);
    assert_eq!(policy["rotate_age_s"], 100_000 * DAY_S);
    assert_eq!(policy["retire_age_s"], 120 * DAY_S);
    fs::write(&skew, ((91 + 121) * DAY_S).to_string()).unwrap();
    let status = wait_for_rotation(&setup, "retirement");
    check_rotated(&setup, &mut keys, &status, "retirement");
    let status = wait_until_settled(&setup);
    assert_eq!(status["keys"]["rotations"], keys.len() - 1, "{status}");
    assert!(status["keys"]["last_error"].is_null(), "{status}");

    // No form of a rotated-away key is left in the daemon's memory.
    let current = setup.data_key(keys.last().unwrap());
    for (n, material) in materials.iter().enumerate() {
        assert_ne!(material, &current);
        let mut forms = key_in_base64(material);
        forms.extend(key_needles(material).iter().map(|n| n.to_vec()));
        let forms: Vec<&[u8]> = forms.iter().map(Vec::as_slice).collect();
        let held = memory_holds(daemon.pid(), &forms);
        assert!(
            held.is_empty(),
            "rotated-away key {n} is in the daemon: {held:?}"
        );
    }
    disk.check(&mut client, "after four rotations");
    drop(client);
    daemon.stop_cleanly();
    let mut daemon = setup.serve(&["--compact-rate-mib", "0"]);
    disk.check(&mut daemon.client(1), "after four rotations and a restart");
    daemon.stop_cleanly();
}
