//! Users not on an ACL are refused with the reason, and lsvkms audits
//! each denial with their name.

use serde_json::Value;

use super::kit::cli::{assert_refused, exit};
use super::kit::daemon::Daemon;
use super::kit::kms::Kms;
use super::kit::process::EXIT_WAIT;
use super::story::Story;

/// A refused `lsvblk serve`: it exits `code`, says `words`, and never
/// listens.
fn assert_serve_refused(mut daemon: Daemon, code: i32, words: &[&str]) {
    let status = daemon.wait_exit(EXIT_WAIT);
    let stderr = daemon.stderr();
    assert_eq!(status.code(), Some(code), "{status}:\n{stderr}");
    for word in words {
        assert!(
            stderr.contains(word),
            "stderr does not name {word:?}:\n{stderr}"
        );
    }
    assert!(
        !daemon.socket.exists(),
        "a refused serve created its socket"
    );
}

/// The last audit record of lsvkms for `user` doing `action` on `key_id`.
fn last_audit(kms: &Kms, key_id: &str, user: &str, action: &str) -> Value {
    let key_id = key_id.parse().unwrap();
    let records = kms.client().audit(Some(key_id), 1000).unwrap();
    records
        .into_iter()
        .rev()
        .find(|r| r["user"] == user && r["action"] == action)
        .unwrap_or_else(|| panic!("lsvkms audited no {action} by {user} on key {key_id}"))
}

// --- Refusals, audited ------------------------------------------------------------

#[test]
fn users_not_on_an_acl_are_refused_with_the_reason_and_audited_by_name() {
    let story = Story::new();
    let key_id = story.current_key_id();

    // Before the ACL change bob may not serve alice's volume.
    let bob_live = Daemon::spawn(&story.volume, &story.kms, &story.bob, &[]);
    assert_serve_refused(bob_live, exit::DENIED, &["not_on_acl", "bob"]);
    let denial = last_audit(&story.kms, &key_id, "bob", "unwrap");
    assert_eq!(
        (denial["decision"].as_str(), denial["reason"].as_str()),
        (Some("deny"), Some("not_on_acl"))
    );

    // Nor may mallory put herself on it.
    let output = story.acl_set("alice,mallory", &story.mallory);
    assert_refused(
        "mallory's acl set",
        &output,
        exit::DENIED,
        &["not_on_acl", "mallory"],
    );
    let denial = last_audit(&story.kms, &key_id, "mallory", "reacl");
    assert_eq!(denial["decision"], "deny");
    assert!(
        !story.volume.join("acl-pending.json").exists(),
        "a refused ACL change is pending"
    );

    let mut h = story.handoff();
    let story = &h.story;

    // The snapshot is alice's and bob's, not mallory's.
    let mallory_serve = Daemon::spawn(
        &story.volume,
        &story.kms,
        &story.mallory,
        &["--snapshot", "snap1", "--read-only"],
    );
    assert_serve_refused(mallory_serve, exit::DENIED, &["not_on_acl", "mallory"]);
    let denial = last_audit(&story.kms, &key_id, "mallory", "unwrap");
    assert_eq!(
        (denial["decision"].as_str(), denial["reason"].as_str()),
        (Some("deny"), Some("not_on_acl")),
        "{denial}"
    );
    assert_eq!(denial["context"]["volume_id"].as_str().unwrap().len(), 32);

    let mallory_clone = story.kms.fresh_path("mallory-clone", "d");
    let output = story.clone_snapshot("snap1", &mallory_clone, "mallory", &story.mallory);
    assert_refused(
        "mallory's clone",
        &output,
        exit::DENIED,
        &["not_on_acl", "mallory"],
    );
    assert!(
        !mallory_clone.join("volume.json").exists(),
        "a refused clone left a volume behind"
    );

    // None of it disturbed alice.
    h.live
        .check(&mut h.alice_client, "alice's volume after the refusals");
    h.stop_alice();
}
