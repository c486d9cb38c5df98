//! A user lists, with their own token, the keys whose ACL lists them.

use base64::Engine;
use serde_json::Value;

use super::kit::cli::{lsvblk_json, run_to_success};
use super::kit::daemon::create_volume;
use super::kit::data::BLOCK;
use super::kit::kms::Kms;
use super::{MIB, path};

/// `lsvkms keys list --socket S --token-file TOKEN [ARGS]`, run to its end.
fn run_list(kms: &Kms, token: &std::path::Path, args: &[&str]) -> std::process::Output {
    let socket = path(kms.socket());
    let mut all = vec![
        "keys",
        "list",
        "--socket",
        socket,
        "--token-file",
        path(token),
    ];
    all.extend_from_slice(args);
    kms.run(&all)
}

/// `lsvkms keys list ... --json`: the answer.
fn list(kms: &Kms, token: &std::path::Path) -> Value {
    let out = run_list(kms, token, &["--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ids(listing: &Value) -> Vec<String> {
    listing["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap().to_owned())
        .collect()
}

fn key<'a>(listing: &'a Value, id: &str) -> &'a Value {
    listing["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == id)
        .unwrap_or_else(|| panic!("no key {id} in {listing}"))
}

#[test]
fn users_list_their_key_ids_rotations_show_and_a_removed_user_stops_seeing_the_key() {
    let kms = Kms::start();
    let volume = create_volume(&kms, 4 * MIB, &["alice", "bob"], BLOCK as u32);
    let (alice, bob, mallory) = (kms.token("alice"), kms.token("bob"), kms.token("mallory"));
    let other = create_volume(&kms, MIB, &["carol"], BLOCK as u32);
    let inspect = lsvblk_json(&["inspect", "--volume", path(&volume), "--json"]);
    let first = inspect["current_key_id"].as_str().unwrap().to_owned();
    let volume_id = inspect["volume_id"].as_str().unwrap().to_owned();

    let mine = list(&kms, &alice);
    assert_eq!(mine["user"], "alice");
    assert_eq!(ids(&mine), [first.as_str()], "not carol's key of {other:?}");
    let listed = key(&mine, &first);
    assert_eq!(listed["status"], "enabled");
    assert_eq!(listed["context"]["volume_id"], volume_id.as_str());
    assert_eq!(listed["acl"], serde_json::json!(["alice", "bob"]));
    assert!(listed["created_unix_s"].as_u64().unwrap() > 0);
    assert_eq!(ids(&list(&kms, &bob)), [first.as_str()]);
    assert!(ids(&list(&kms, &mallory)).is_empty());

    // Never key material: not the key in any form lsvkms could print.
    let secret = kms
        .client()
        .unwrap(
            &super::blob_of(&volume, &first),
            &super::context(&volume_id),
            std::fs::read_to_string(&alice).unwrap().trim(),
        )
        .unwrap();
    let material = secret.expose_secret()[..64].to_vec();
    let text = mine.to_string();
    for form in [
        hex::encode(&material),
        base64::engine::general_purpose::STANDARD.encode(&material),
    ] {
        assert!(!text.contains(&form), "key material in the listing");
    }

    // A rotation: the new key appears, the old one is destroyed, each names
    // the other.
    let rotated = lsvblk_json(&[
        "rotate",
        path(&volume),
        "--kms",
        &kms.address(),
        "--token-file",
        path(&alice),
        "--json",
    ]);
    let second = rotated["current_key_id"].as_str().unwrap().to_owned();
    let mine = list(&kms, &alice);
    let mut listed = ids(&mine);
    listed.sort();
    let mut both = [first.clone(), second.clone()];
    both.sort();
    assert_eq!(listed, both);
    assert_eq!(key(&mine, &first)["status"], "destroyed");
    assert!(
        key(&mine, &first)["state_changed_unix_s"]
            .as_u64()
            .is_some()
    );
    assert_eq!(key(&mine, &first)["replaced_by"], second.as_str());
    assert_eq!(key(&mine, &second)["replaces"], first.as_str());
    assert_eq!(key(&mine, &second)["status"], "enabled");

    // bob taken off the ACL: he no longer sees the current key.
    run_to_success(&mut super::kit::cli::Lsvblk::this_build().command(&[
        "acl",
        "set",
        path(&volume),
        "--acl",
        "alice",
        "--kms",
        &kms.address(),
        "--token-file",
        path(&alice),
    ]));
    assert!(
        !ids(&list(&kms, &bob)).contains(&second),
        "bob is off the ACL"
    );
    assert_eq!(
        key(&list(&kms, &alice), &second)["acl"],
        serde_json::json!(["alice"])
    );

    // The table names the keys too.
    let out = run_list(&kms, &alice, &[]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&first) && table.contains(&second) && table.contains("destroyed"),
        "{table}"
    );

    // A token that does not verify lists nothing.
    let forged = kms.fresh_path("forged", "jwt");
    std::fs::write(&forged, "not.a.token").unwrap();
    std::fs::set_permissions(&forged, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = run_list(&kms, &forged, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("token_invalid"),
        "{out:?}"
    );

    // Every listing is audited with its user; the forged one denied.
    let audit = std::fs::read_to_string(kms.audit_path()).unwrap();
    let listings: Vec<Value> = audit
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["action"] == "key_list")
        .collect();
    assert_eq!(listings.len(), 8, "each listing is audited");
    assert!(
        listings
            .iter()
            .any(|r| r["user"] == "mallory" && r["decision"] == "allow")
    );
    assert_eq!(listings.last().unwrap()["decision"], "deny");
}
