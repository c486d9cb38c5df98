//! Issue 3 acceptance, file backend: a real `lsvkms` on a temporary UNIX
//! socket goes through datakey → unwrap (ACL user ok, non-ACL 403, expired
//! 401, foreign signature 401, tampered 400) → disable/enable → rotate →
//! rewrap → both blobs unwrap → destroy (forever, across a restart). Also:
//! no key bytes in the audit log, the service's log output or its state.

mod kms_support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use kms_support::{Kms, acceptance_flow, api_error, files_under, leaks};
use lsvblk::kms::api::KeyContext;
use lsvblk::kms::client::{ClientError, KmsClient};

#[test]
fn acceptance_flow_with_the_file_backend() {
    let mut kms = Kms::init(&[], Vec::new());
    kms.start();
    acceptance_flow(&mut kms);
}

#[test]
fn no_plaintext_key_bytes_in_audit_log_service_log_or_state() {
    let mut kms = Kms::init(&[], Vec::new());
    kms.start();
    let outcome = acceptance_flow(&mut kms);
    // More keys, unwrapped several times, so there is plenty to leak.
    let client = kms.client();
    let context = KeyContext {
        volume_id: "vol-leak".into(),
        snapshot_id: "s1".into(),
    };
    let token = kms.token("dave", "10m");
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
    for path in files_under(kms.tmp.path()) {
        let bytes = std::fs::read(&path).unwrap();
        for dek in &deks {
            assert_eq!(leaks(&bytes, dek), None, "DEK found in {}", path.display());
        }
    }
}

#[test]
fn a_readable_wrapping_key_file_stops_the_service_from_starting() {
    let kms = Kms::init(&[], Vec::new());
    let key_file = kms.dir.join("kek/v000001.key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let dir = kms.dir.to_str().unwrap().to_owned();
    let out = kms.run(&["serve", "--dir", &dir]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

#[test]
fn an_unlisted_uid_is_refused_with_403() {
    let mut kms = Kms::init(&["--service-uid", "4242"], Vec::new());
    kms.start();
    let client = kms.client();
    let context = KeyContext {
        volume_id: "v".into(),
        snapshot_id: String::new(),
    };
    let (status, code) = api_error(client.generate_data_key(&["alice".to_owned()], &context));
    assert_eq!((status, code.as_str()), (403, "service_not_allowed"));
    let records = std::fs::read_to_string(kms.audit_path()).unwrap();
    assert!(
        records.contains("\"service\":\"uid:0\"") && records.contains("service_not_allowed"),
        "{records}"
    );
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
    let mut kms = Kms::init(&[], Vec::new());
    kms.start();
    let dir = kms.dir.to_str().unwrap().to_owned();
    let other = kms.tmp.path().join("other.sock");
    let out = kms.run(&["serve", "--dir", &dir, "--socket", other.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert!(kms.client().health().is_ok(), "the first one still serves");
}
