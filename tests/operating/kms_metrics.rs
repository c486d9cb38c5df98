//! `lsvkms serve --metrics`: calls allowed, denied and refused before the
//! API, each counted where it belongs, and the audit log's syncs timed.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use lsvblk::kms::api::KeyContext;

use super::kit::kms::{Kms, api_error};
use super::scrape::Scrape;

fn requests(scrape: &Scrape, endpoint: &str, decision: &str) -> f64 {
    let series =
        format!("lsvkms_requests_total{{endpoint=\"{endpoint}\",decision=\"{decision}\"}}");
    scrape.find(&series).unwrap_or(0.0)
}

fn refusals(scrape: &Scrape, stage: &str, reason: &str) -> f64 {
    let series = format!("lsvkms_refusals_total{{stage=\"{stage}\",reason=\"{reason}\"}}");
    scrape.find(&series).unwrap_or(0.0)
}

#[test]
fn a_scrape_counts_calls_by_endpoint_and_decision_and_refusals_by_reason() {
    let mut kms = Kms::init(&[], Vec::new());
    let metrics = kms.fresh_path("kms-metrics", "sock");
    kms.set_serve_args(vec!["--metrics".into(), metrics.to_str().unwrap().into()]);
    kms.serve();
    let before = Scrape::from(&metrics);
    assert_eq!(before.get("lsvkms_audit_writable"), 1.0);
    assert_eq!(before.get("lsvkms_wrapping_key_version"), 1.0);

    let client = kms.client();
    let context = KeyContext {
        volume_id: "metrics-volume".into(),
        snapshot_id: String::new(),
    };
    let key = client
        .generate_data_key(&["alice".to_owned()], &context)
        .unwrap();
    let alice = kms.token_text("alice", "1h");
    let bob = kms.token_text("bob", "1h");
    for _ in 0..3 {
        client.unwrap(&key.wrapped_blob, &context, &alice).unwrap();
    }
    for _ in 0..2 {
        let (status, code) = api_error(client.unwrap(&key.wrapped_blob, &context, &bob));
        assert_eq!((status, code.as_str()), (403, "not_on_acl"));
    }
    // Not HTTP at all: refused before any API call.
    let mut garbage = UnixStream::connect(kms.socket()).unwrap();
    garbage.write_all(b"\x16\x03\x01 not http\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = garbage.read_to_end(&mut answer);
    assert!(answer.starts_with(b"HTTP/1.1 400"), "{answer:?}");

    let after = Scrape::from(&metrics);
    let delta = |endpoint: &str, decision: &str| {
        requests(&after, endpoint, decision) - requests(&before, endpoint, decision)
    };
    assert_eq!(delta("datakey", "allow"), 1.0);
    assert_eq!(delta("unwrap", "allow"), 3.0);
    assert_eq!(delta("unwrap", "deny"), 2.0);
    assert_eq!(delta("unwrap", "error"), 0.0);
    assert_eq!(
        refusals(&after, "call", "not_on_acl") - refusals(&before, "call", "not_on_acl"),
        2.0
    );
    assert_eq!(
        refusals(&after, "connection", "malformed") - refusals(&before, "connection", "malformed"),
        1.0
    );
    // Every answered unwrap is in its latency histogram.
    let unwraps =
        |scrape: &Scrape| scrape.get(r#"lsvkms_request_duration_seconds_count{endpoint="unwrap"}"#);
    assert_eq!(unwraps(&after) - unwraps(&before), 5.0);
    // Six audited calls, made durable in one to six batches (group commit),
    // each batch's write and sync timed.
    let syncs = |scrape: &Scrape| scrape.get("lsvkms_audit_sync_duration_seconds_count");
    let batches = syncs(&after) - syncs(&before);
    assert!((1.0..=6.0).contains(&batches), "{batches}");
    assert!(after.get("lsvkms_audit_sync_duration_seconds_sum") > 0.0);
    kms.stop();
}
