//! The audit trail: `lsvkms audit verify` passes on an untouched
//! log and fails on one changed byte, one deleted line (middle or last) and
//! two swapped lines; a read-only audit file makes calls fail with 503
//! (fail closed); `lsvkms audit check` finds an unwrap by a user who is not
//! on the key's ACL and marks the key compromised, but not one by a user
//! an ACL change removed.

mod kit;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use kit::kms::{Kms, api_error, context, generate_key};

/// A started service whose log holds a few records.
fn service_with_history() -> (Kms, Vec<u8>) {
    let kms = Kms::start();
    let client = kms.client();
    let (context, generated) = generate_key(&client, &["alice"], "vol-a");
    let alice = kms.token_text("alice", "1h");
    let bob = kms.token_text("bob", "1h");
    for _ in 0..3 {
        client
            .unwrap(&generated.wrapped_blob, &context, &alice)
            .unwrap();
        assert_eq!(
            api_error(client.unwrap(&generated.wrapped_blob, &context, &bob)).0,
            403
        );
    }
    (kms, generated.wrapped_blob)
}

/// The record lines (the log is padded with empty lines after them).
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn verify_passes_untouched_and_fails_on_each_kind_of_tampering() {
    let (mut kms, _) = service_with_history();
    kms.stop();
    let (ok, text) = kms.audit_verify();
    assert!(ok, "untouched log must verify: {text}");
    assert!(text.contains("7 records"), "{text}");
    let path = kms.audit_path();
    let original = fs::read_to_string(&path).unwrap();
    let original_lines = lines(&original);

    let mut one_byte = original.clone().into_bytes();
    let at = original_lines[0].len() + 30; // inside line 2
    one_byte[at] = if one_byte[at] == b'a' { b'b' } else { b'a' };
    // Rewritten files keep the log's size: records, then padding.
    let join = |lines: &[String]| {
        let records: String = lines.iter().map(|l| format!("{l}\n")).collect();
        records.clone() + &"\n".repeat(original.len() - records.len())
    };
    let mut middle_deleted = original_lines.clone();
    middle_deleted.remove(3);
    let mut last_deleted = original_lines.clone();
    last_deleted.pop();
    let mut swapped = original_lines.clone();
    swapped.swap(2, 3);
    let cases: [(&str, Vec<u8>); 4] = [
        ("one byte changed", one_byte),
        ("a middle line deleted", join(&middle_deleted).into_bytes()),
        ("the last line deleted", join(&last_deleted).into_bytes()),
        ("two lines swapped", join(&swapped).into_bytes()),
    ];
    for (name, bytes) in cases {
        fs::write(&path, &bytes).unwrap();
        let (ok, text) = kms.audit_verify();
        assert!(!ok, "{name}: verify must fail, said {text}");
        assert!(text.contains("BROKEN"), "{name}: {text}");
    }
    fs::write(&path, &original).unwrap();
    assert!(kms.audit_verify().0, "restored log verifies again");
}

#[test]
fn a_read_only_audit_file_makes_calls_fail_with_503() {
    let (kms, blob) = service_with_history();
    let client = kms.client();
    let context = context("vol-a");
    let alice = kms.token_text("alice", "1h");
    let path = kms.audit_path();
    let records_before = lines(&fs::read_to_string(&path).unwrap()).len();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).unwrap();
    assert_eq!(
        api_error(client.unwrap(&blob, &context, &alice)),
        (503, "audit_unavailable".into())
    );
    assert_eq!(
        api_error(client.generate_data_key(&["alice".to_owned()], &context)),
        (503, "audit_unavailable".into())
    );
    assert_eq!(
        api_error(client.health()).0,
        503,
        "health reports the audit failure"
    );
    assert_eq!(
        lines(&fs::read_to_string(&path).unwrap()).len(),
        records_before,
        "nothing written"
    );
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    client.unwrap(&blob, &context, &alice).unwrap();
    assert!(kms.audit_verify().0);
}

#[test]
fn audit_check_finds_a_non_acl_unwrap_and_marks_the_key_compromised() {
    let (mut kms, blob) = service_with_history();
    let client = kms.client();
    let key_id = lsvblk::kms::seal::parse(&blob).unwrap().key_id;
    assert_eq!(client.key_info(key_id).unwrap().status, "enabled");
    let clean = kms.audit_check();
    assert!(
        clean.status.success(),
        "denied attempts are not findings: {}",
        String::from_utf8_lossy(&clean.stdout)
    );
    drop(client);
    kms.stop();

    // An operator's break-glass tool (or a leaked service identity on an
    // ACL-less path) unwrapped the key for "mallory" and recorded it.
    kms.append_allowed_unwrap("mallory", key_id);

    let out = kms.audit_check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("mallory") && stdout.contains(&key_id.to_hex()),
        "{stdout}"
    );
    assert!(stdout.contains("COMPROMISED"), "{stdout}");
    kms.serve();
    let info = kms.client().key_info(key_id).unwrap();
    assert_eq!(info.status, "compromised");
    assert!(info.compromised);
    assert!(
        kms.audit_verify().0,
        "a properly keyed break-glass record keeps the chain intact"
    );
}

#[test]
fn a_forged_line_without_the_audit_key_fails_verify_but_check_still_sees_it() {
    let (mut kms, blob) = service_with_history();
    kms.stop();
    let key_id = lsvblk::kms::seal::parse(&blob).unwrap().key_id;
    let path = kms.audit_path();
    let text = fs::read_to_string(&path).unwrap();
    let last = text.lines().rfind(|l| !l.is_empty()).unwrap();
    let forged = last
        .replace("\"user\":\"bob\"", "\"user\":\"eve\"")
        .replace("\"decision\":\"deny\"", "\"decision\":\"allow\"");
    assert_ne!(forged, last);
    fs::write(&path, text.replace(last, &forged)).unwrap();
    assert!(!kms.audit_verify().0);
    let out = kms.audit_check();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&key_id.to_hex()));
}

#[test]
fn audit_check_does_not_blame_users_an_acl_change_removed() {
    let kms = Kms::start();
    let client = kms.client();
    let (context, generated) = generate_key(&client, &["alice", "bob"], "vol-acl");
    let (blob, key_id) = (generated.wrapped_blob, generated.key.id());
    let (alice, bob) = (kms.token_text("alice", "1h"), kms.token_text("bob", "1h"));
    client.unwrap(&blob, &context, &bob).unwrap();
    let changed = client
        .rewrap_with_acl(&blob, &["alice".to_owned()], &alice)
        .unwrap();
    assert_eq!(
        api_error(client.unwrap(&changed.wrapped_blob.0, &context, &bob)),
        (403, "not_on_acl".into())
    );
    // The blob from before the change still carries bob: the service
    // cannot revoke a blob it does not hold.
    client.unwrap(&blob, &context, &bob).unwrap();
    let out = kms.audit_check();
    assert!(
        out.status.success(),
        "bob's unwraps were allowed by a blob that lists him: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let info = client.key_info(key_id).unwrap();
    assert_eq!(
        (info.status.as_str(), info.acl),
        ("enabled", vec!["alice".to_owned()])
    );
}
