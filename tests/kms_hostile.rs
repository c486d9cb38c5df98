//! lsvkms under hostile local clients, on a real process whose socket any
//! local user may connect to (mode 0666):
//!
//! - 200 connections from a uid that is not allow-listed and 64 from one
//!   that is, all trickling a request head one byte every 0.5 s, while an
//!   allow-listed client unwraps on a fresh connection each time: every
//!   unwrap succeeds, p99 under 100 ms, and the hostile connections are
//!   audited (counted per peer and reason, not one line each);
//! - requests refused by the HTTP codec (a 60 KB head in one write, too
//!   many headers, a chunked body, a body over the limit, garbage) are
//!   answered with the right status and audited.
//!
//! The hostile clients are forked children that become another uid
//! (tests run as root) and make only system calls (`kit/stranger.rs`).

mod kit;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use kit::kms::Kms;
use kit::stranger::{NOBODY, Stranger, trickle, unix_address};
use lsvblk::kms::api::KeyContext;
use lsvblk::kms::client::KmsClient;

/// An allow-listed uid that behaves badly.
const GREEDY_SERVICE: u32 = 65533;

/// A service allow-listing root (the test) and [`GREEDY_SERVICE`], on a
/// socket every local user can reach.
fn open_service() -> Kms {
    let mut kms = Kms::init(
        &[
            "--service-uid",
            "0",
            "--service-uid",
            &GREEDY_SERVICE.to_string(),
        ],
        Vec::new(),
    );
    let config_path = kms.state_dir().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["socket_mode"] = "0666".into();
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    // The socket lives in the test's temporary directory: let others in.
    std::fs::set_permissions(kms.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    kms.serve();
    kms
}

/// The audit log's records, parsed.
fn audit_records(kms: &Kms) -> Vec<serde_json::Value> {
    std::fs::read_to_string(kms.audit_path())
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits (at most 10 s) for connection refusals of `service` for `reason`
/// in the audit log; returns how many they count and in how many records.
fn refusals_audited(kms: &Kms, service: &str, reason: &str) -> (u64, usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records: Vec<_> = audit_records(kms)
            .into_iter()
            .filter(|r| {
                r["action"] == "connection" && r["service"] == service && r["reason"] == reason
            })
            .collect();
        if !records.is_empty() || Instant::now() > deadline {
            let count = records.iter().map(|r| r["count"].as_u64().unwrap()).sum();
            return (count, records.len());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn trickling_strangers_and_a_greedy_service_do_not_lock_out_an_allowed_client() {
    let kms = open_service();
    let context = KeyContext {
        volume_id: "vol-dos".into(),
        snapshot_id: String::new(),
    };
    let generated = kms
        .client()
        .generate_data_key(&["alice".to_owned()], &context)
        .unwrap();
    let token = kms.token_text("alice", "10m");
    let address = unix_address(kms.socket());
    let run_ms = 8_000;
    let strangers = Stranger::spawn(NOBODY, NOBODY, || trickle(&address, 200, 500, run_ms));
    let greedy = Stranger::spawn(GREEDY_SERVICE, GREEDY_SERVICE, || {
        trickle(&address, 64, 500, run_ms)
    });
    // Let the hostile connections pile up first.
    std::thread::sleep(Duration::from_millis(1500));

    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(run_ms - 2500) {
        // A fresh connection each time: it must get a slot under attack.
        let client = KmsClient::with_timeout(kms.socket(), Duration::from_secs(5));
        let begun = Instant::now();
        let key = client
            .unwrap(&generated.wrapped_blob, &context, &token)
            .unwrap_or_else(|e| panic!("unwrap {} under attack: {e}", latencies.len()));
        latencies.push(begun.elapsed());
        assert_eq!(key.id(), generated.key.id());
        std::thread::sleep(Duration::from_millis(10));
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let p50 = latencies[latencies.len() / 2];
    println!(
        "{} unwraps under attack: p50 {p50:?}, p99 {p99:?}",
        latencies.len()
    );
    assert!(latencies.len() >= 50, "only {} unwraps", latencies.len());
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
    drop((strangers, greedy));

    // Audited, in counts: not a line per connection.
    let (count, records) = refusals_audited(&kms, "uid:65534", "service_not_allowed");
    assert!(count >= 200, "stranger refusals counted: {count}");
    assert!(
        (records as u64) < count / 10,
        "{records} records for {count}"
    );
    let greedy_name = format!("uid-{GREEDY_SERVICE}");
    let (busy, _) = refusals_audited(&kms, &greedy_name, "busy");
    let (slow, _) = refusals_audited(&kms, &greedy_name, "request_timeout");
    assert!(busy >= 48, "busy refusals of the greedy service: {busy}");
    assert!(slow >= 16, "slow requests of the greedy service: {slow}");
    let (ok, text) = kms.audit_verify();
    assert!(ok, "{text}");
}

/// Sends `bytes` on a fresh connection (one write) and returns the status
/// of the answer.
fn status_of(kms: &Kms, bytes: &[u8]) -> u16 {
    let mut stream = UnixStream::connect(kms.socket()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The service may answer and close before reading all of it.
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"))
}

#[test]
fn requests_the_codec_refuses_are_answered_and_audited() {
    let kms = open_service();
    let big_head = format!(
        "GET /v1/health HTTP/1.1\r\nHost: lsvkms\r\nX-Big: {}\r\n\r\n",
        "a".repeat(60_000)
    );
    assert_eq!(status_of(&kms, big_head.as_bytes()), 431, "a 60 KB head");
    let mut many = String::from("GET /v1/health HTTP/1.1\r\n");
    for i in 0..40 {
        many.push_str(&format!("X-{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(status_of(&kms, many.as_bytes()), 431, "40 headers");
    let chunked =
        b"POST /v1/unwrap HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_eq!(status_of(&kms, chunked), 400, "chunked");
    let large = b"POST /v1/unwrap HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n";
    assert_eq!(status_of(&kms, large), 413, "a 1 MB body");
    assert_eq!(
        status_of(&kms, b"\x16\x03\x01 not http\r\n\r\n"),
        400,
        "garbage"
    );

    for reason in [
        "head_too_large",
        "too_many_headers",
        "chunked",
        "too_large",
        "malformed",
    ] {
        let (count, _) = refusals_audited(&kms, "uid-0", reason);
        assert_eq!(count, 1, "{reason}");
    }
    assert!(kms.client().health().is_ok(), "still serving");
}
