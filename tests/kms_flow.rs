//! The wrapping service end to end, file backend: a real `lsvkms` on a temporary UNIX
//! socket goes through datakey → unwrap (ACL user ok, non-ACL 403, expired
//! 401, foreign signature 401, tampered 400) → disable/enable → rotate →
//! rewrap → both blobs unwrap → destroy (forever, across a restart). Also:
//! no key bytes in the audit log, the service's log output or its state.
//! Also: an ACL change through `POST /v1/rewrap` with `acl`.

mod kit;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use kit::dirs::files_under;
use kit::kms::{Kms, api_error, context, generate_key};
use kit::kms_acceptance::acceptance_flow;
use kit::secrets::leaks;
use lsvblk::kms::api::{KeyContext, to_base64};
use lsvblk::kms::client::{ClientError, KmsClient};

#[test]
fn acceptance_flow_with_the_file_backend() {
    let mut kms = Kms::start();
    acceptance_flow(&mut kms);
}

#[test]
fn no_plaintext_key_bytes_in_audit_log_service_log_or_state() {
    let mut kms = Kms::start();
    let outcome = acceptance_flow(&mut kms);
    // More keys, unwrapped several times, so there is plenty to leak.
    let client = kms.client();
    let context = KeyContext {
        volume_id: "vol-leak".into(),
        snapshot_id: "s1".into(),
    };
    let token = kms.token_text("dave", "10m");
    let mut deks = outcome.deks;
    for _ in 0..3 {
        let generated = client
            .generate_data_key(&["dave".to_owned()], &context)
            .unwrap();
        let key = client
            .unwrap(&generated.wrapped_blob, &context, &token)
            .unwrap();
        deks.push(key.expose_secret().to_vec());
    }
    kms.stop();
    let stderr = kms.stderr();
    assert!(
        stderr.contains("DEBUG"),
        "the service logged at debug level"
    );
    for path in files_under(kms.dir()) {
        let bytes = std::fs::read(&path).unwrap();
        for dek in &deks {
            assert_eq!(leaks(&bytes, dek), None, "DEK found in {}", path.display());
        }
    }
}

#[test]
fn a_readable_wrapping_key_file_stops_the_service_from_starting() {
    let kms = Kms::init(&[], Vec::new());
    let key_file = kms.state_dir().join("kek/v000001.key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let dir = kms.state_dir().to_str().unwrap().to_owned();
    let out = kms.run(&["serve", "--dir", &dir]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

#[test]
fn an_unlisted_uid_is_refused_with_403() {
    let mut kms = Kms::init(&["--service-uid", "4242"], Vec::new());
    kms.serve();
    let client = kms.client();
    let context = context("v");
    let (status, code) = api_error(client.generate_data_key(&["alice".to_owned()], &context));
    assert_eq!((status, code.as_str()), (403, "service_not_allowed"));
    // Refused before a byte was read; audited in counts, within a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = std::fs::read_to_string(kms.audit_path()).unwrap();
        if records.contains("\"service\":\"uid:0\"") && records.contains("service_not_allowed") {
            break;
        }
        assert!(Instant::now() < deadline, "no audit record: {records}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn client_reports_a_dead_service_quickly_and_times_out_on_a_silent_one() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = KmsClient::with_timeout(tmp.path().join("none.sock"), Duration::from_millis(300));
    assert!(matches!(
        missing.health(),
        Err(ClientError::Unavailable { .. })
    ));
    let path = tmp.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let silent = KmsClient::with_timeout(&path, Duration::from_millis(300));
    let started = Instant::now();
    let result = silent.health();
    assert!(
        matches!(result, Err(ClientError::Timeout { timeout_ms: 300 })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(listener);
}

#[test]
fn a_second_server_on_the_same_state_directory_refuses_to_start() {
    let kms = Kms::start();
    let dir = kms.state_dir().to_str().unwrap().to_owned();
    let other = kms.dir().join("other.sock");
    let out = kms.run(&["serve", "--dir", &dir, "--socket", other.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert!(kms.client().health().is_ok(), "the first one still serves");
}

/// One raw `POST` on its own connection (for bodies the client cannot
/// send): the status and the JSON body.
fn raw_post(kms: &Kms, target: &str, body: &str) -> (u16, serde_json::Value) {
    let mut stream = UnixStream::connect(kms.socket()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST {target} HTTP/1.1\r\nHost: lsvkms\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, json) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(json).unwrap())
}

/// The newest audit record about `key_id` with `action`.
fn last_record(kms: &Kms, key_id: lsvblk::crypto::KeyId, action: &str) -> serde_json::Value {
    let records = kms.client().audit(Some(key_id), 100).unwrap();
    records
        .into_iter()
        .rev()
        .find(|r| r["action"] == action)
        .unwrap_or_else(|| panic!("no {action} record"))
}

#[test]
fn an_acl_user_changes_the_acl_and_the_new_blob_carries_it() {
    let kms = Kms::start();
    let client = kms.client();
    let (context, generated) = generate_key(&client, &["alice"], "vol-acl");
    let old_blob = generated.wrapped_blob;
    let (alice, bob) = (kms.token_text("alice", "1h"), kms.token_text("bob", "1h"));
    let from_old = client.unwrap(&old_blob, &context, &alice).unwrap();
    assert_eq!(
        api_error(client.unwrap(&old_blob, &context, &bob)),
        (403, "not_on_acl".into())
    );

    // A plain rewrap keeps the ACL and leaves the key record's ACL alone.
    let plain = client.rewrap(&old_blob).unwrap();
    assert_eq!(
        api_error(client.unwrap(&plain.wrapped_blob.0, &context, &bob)),
        (403, "not_on_acl".into())
    );
    assert_eq!(client.key_info(from_old.id()).unwrap().acl, ["alice"]);

    // (a) alice, on [alice], changes the ACL to [alice, bob].
    let new_acl = vec!["alice".to_owned(), "bob".to_owned()];
    let changed = client.rewrap_with_acl(&old_blob, &new_acl, &alice).unwrap();
    assert_eq!(
        (changed.key_id, changed.wrapping_key_version),
        (from_old.id(), 1)
    );
    let new_blob = changed.wrapped_blob.0;
    assert_ne!(new_blob, old_blob);
    for token in [&bob, &alice] {
        let key = client.unwrap(&new_blob, &context, token).unwrap();
        assert_eq!(key.id(), from_old.id());
        assert_eq!(key.expose_secret(), from_old.expose_secret(), "same DEK");
    }
    assert_eq!(
        api_error(client.unwrap(&old_blob, &context, &bob)),
        (403, "not_on_acl".into()),
        "the old blob keeps its old ACL"
    );
    let allowed = last_record(&kms, from_old.id(), "reacl");
    assert_eq!(
        (allowed["user"].as_str(), allowed["decision"].as_str()),
        (Some("alice"), Some("allow"))
    );

    // (e) the key record carries the new ACL.
    assert_eq!(client.key_info(from_old.id()).unwrap().acl, new_acl);

    // A change is decided by the ACL of the blob presented: bob may
    // change the new blob's ACL, not the old one's.
    let bob_only = vec!["bob".to_owned()];
    assert_eq!(
        api_error(client.rewrap_with_acl(&old_blob, &bob_only, &bob)),
        (403, "not_on_acl".into())
    );
    let by_bob = client.rewrap_with_acl(&new_blob, &bob_only, &bob).unwrap();
    assert_eq!(
        api_error(client.unwrap(&by_bob.wrapped_blob.0, &context, &alice)),
        (403, "not_on_acl".into())
    );
    assert_eq!(client.key_info(from_old.id()).unwrap().acl, bob_only);
    let (ok, text) = kms.audit_verify();
    assert!(ok, "{text}");
}

#[test]
fn acl_changes_are_refused_without_a_listed_user_or_a_valid_acl() {
    let kms = Kms::start();
    let client = kms.client();
    let (_, generated) = generate_key(&client, &["alice"], "vol-acl");
    let (blob, key_id) = (generated.wrapped_blob, generated.key.id());
    let alice = kms.token_text("alice", "1h");
    let wide = vec!["alice".to_owned(), "mallory".to_owned()];

    // (b) mallory is not on the ACL: 403, audited as a denial with her name.
    let mallory = kms.token_text("mallory", "1h");
    assert_eq!(
        api_error(client.rewrap_with_acl(&blob, &wide, &mallory)),
        (403, "not_on_acl".into())
    );
    let denial = last_record(&kms, key_id, "reacl");
    assert_eq!(
        (denial["user"].as_str(), denial["decision"].as_str()),
        (Some("mallory"), Some("deny"))
    );
    assert_eq!(denial["reason"], "not_on_acl");

    // (c) an ACL without a token: 401, as an unwrap without a valid token.
    let encoded = to_base64(&blob);
    let (status, body) = raw_post(
        &kms,
        "/v1/rewrap",
        &format!(r#"{{"wrapped_blob":"{encoded}","acl":["alice","mallory"]}}"#),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_invalid"))
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("user_token is required"),
        "{body}"
    );
    assert_eq!(
        api_error(client.rewrap_with_acl(&blob, &wide, "not-a-token")),
        (401, "token_invalid".into())
    );
    // A token without an ACL is a mistake, not something to ignore.
    let (status, body) = raw_post(
        &kms,
        "/v1/rewrap",
        &format!(r#"{{"wrapped_blob":"{encoded}","user_token":"{alice}"}}"#),
    );
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));

    // (d) an invalid ACL: 400, even for a listed user.
    for acl in [vec![], vec!["alice".to_owned(), "alice".to_owned()]] {
        assert_eq!(
            api_error(client.rewrap_with_acl(&blob, &acl, &alice)),
            (400, "bad_request".into())
        );
    }

    // A disabled key's ACL cannot change either.
    client
        .set_key_state(key_id, lsvblk::kms::keys::KeyAction::Disable)
        .unwrap();
    assert_eq!(
        api_error(client.rewrap_with_acl(&blob, &wide, &alice)),
        (409, "key_disabled".into())
    );

    // Nothing of the above changed the key's ACL.
    assert_eq!(client.key_info(key_id).unwrap().acl, ["alice"]);
    let records = std::fs::read_to_string(kms.audit_path()).unwrap();
    assert!(!records.contains(&alice) && !records.contains(&mallory));
}
