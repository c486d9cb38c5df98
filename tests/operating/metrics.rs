//! `lsvblk serve --metrics`: a running daemon scraped while a libblkio
//! client loads it; the counters must agree with what the client did.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::kit::cli::lsvblk_json;
use super::kit::daemon::{Daemon, create_volume};
use super::kit::kms::Kms;
use super::kit::rng::Rng;
use super::scrape::Scrape;

const MIB: u64 = 1 << 20;

#[test]
fn a_scrape_under_load_counts_what_the_client_did() {
    let mut kms = Kms::start();
    let token = kms.token("alice");
    let volume = create_volume(&kms, 64 * MIB, &["alice"], 4096);
    let socket: PathBuf = kms.fresh_path("metrics", "sock");
    let daemon = Daemon::start(
        &volume,
        &kms,
        &token,
        &[
            "--num-queues",
            "2",
            "--metrics",
            socket.to_str().unwrap(),
            "--background-poll-ms",
            "200",
        ],
    );
    let mut client = daemon.client(2);
    let before = Scrape::from(&socket);
    assert_eq!(before.get("lsvblk_volume_size_bytes"), (64 * MIB) as f64);

    // A scraper reads while the client writes: the write counter never
    // goes back.
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = std::thread::spawn({
        let (stop, socket) = (Arc::clone(&stop), socket.clone());
        move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(Scrape::from(&socket).op("lsvblk_requests_total", 0, "write"));
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        }
    });
    let mut rng = Rng(18);
    let mut q0_bytes = 0u64;
    const Q0_WRITES: u64 = 200;
    for _ in 0..Q0_WRITES {
        let len = rng.between(1, 16) * 4096;
        let offset = rng.below((64 * MIB - len) / 4096) * 4096;
        client.write(0, offset, &rng.bytes(len as usize)).unwrap();
        q0_bytes += len;
    }
    // A deep queue on queue 1: 32 writes in flight at once, then reads.
    let writes: Vec<(u64, Vec<u8>)> = (0..32u64).map(|i| (i * 65536, rng.bytes(8192))).collect();
    for result in client.write_at_once(1, &writes) {
        result.unwrap();
    }
    for i in 0..10 {
        client.read(1, i * 4096, 4096).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let seen = scraper.join().unwrap();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    eprintln!("{} scrapes during the load", seen.len());

    let after = Scrape::from(&socket);
    let delta =
        |name: &str, queue: usize, op: &str| after.op(name, queue, op) - before.op(name, queue, op);
    assert_eq!(delta("lsvblk_requests_total", 0, "write"), Q0_WRITES as f64);
    assert_eq!(
        delta("lsvblk_request_bytes_total", 0, "write"),
        q0_bytes as f64
    );
    assert_eq!(delta("lsvblk_requests_total", 1, "write"), 32.0);
    assert_eq!(
        delta("lsvblk_request_bytes_total", 1, "write"),
        (32 * 8192) as f64
    );
    assert_eq!(delta("lsvblk_requests_total", 1, "read"), 10.0);
    assert_eq!(delta("lsvblk_request_bytes_total", 1, "read"), 40960.0);
    assert_eq!(delta("lsvblk_requests_total", 0, "read"), 0.0);
    // Every completed request is in its latency histogram.
    assert_eq!(
        delta("lsvblk_request_duration_seconds_count", 0, "write"),
        Q0_WRITES as f64
    );
    assert_eq!(
        after.get(r#"lsvblk_request_duration_seconds_bucket{le="+Inf",queue="1",op="write"}"#),
        after.op("lsvblk_request_duration_seconds_count", 1, "write")
    );
    for queue in 0..2 {
        assert_eq!(
            after.get(&format!("lsvblk_requests_in_flight{{queue=\"{queue}\"}}")),
            0.0
        );
        for kind in ["guest", "host"] {
            let series =
                format!("lsvblk_request_errors_total{{queue=\"{queue}\",kind=\"{kind}\"}}");
            assert_eq!(after.get(&series), 0.0, "{series}");
        }
    }
    // The log holds at least what was written last at each place.
    let live = after.get("lsvblk_log_live_bytes");
    assert!(
        live > 0.0 && live <= after.get("lsvblk_log_file_bytes"),
        "{live}"
    );
    assert!(after.get("lsvblk_log_segments") >= 1.0);

    // Keys: every byte the client wrote was encrypted under the one key
    // (compaction's moves are not new encryption), which holds all live data.
    let written = (q0_bytes + 32 * 8192) as f64;
    assert_eq!(after.get("lsvblk_keys"), 1.0);
    let encrypted = |scrape: &Scrape| scrape.get("lsvblk_key_encrypted_bytes");
    assert_eq!(encrypted(&after) - encrypted(&before), written);
    assert_eq!(after.get("lsvblk_key_live_bytes"), live);
    assert_eq!(after.get("lsvblk_key_rotation_running"), 0.0);
    assert!(after.get("lsvblk_log_bytes_since_checkpoint") <= after.get("lsvblk_log_file_bytes"));
    // The daemon unwrapped its key, and asks lsvkms about it every poll.
    assert!(after.get("lsvblk_kms_calls_total") >= 1.0);
    assert!(after.get("lsvblk_kms_last_success_age_seconds") < 30.0);
    upkeep_moves_with_compaction_rotation_and_an_lsvkms_outage(&socket, &volume, &mut kms, &after);
    drop(client);
    let mut daemon = daemon;
    daemon.stop_cleanly();
}

/// `lsvblk compact` and `lsvblk rotate` through the daemon, then lsvkms
/// stopped: each shows in the next scrape.
fn upkeep_moves_with_compaction_rotation_and_an_lsvkms_outage(
    socket: &Path,
    volume: &Path,
    kms: &mut Kms,
    after: &Scrape,
) {
    let vol = volume.to_str().unwrap();
    lsvblk_json(&["compact", vol, "--json"]);
    let compacted = Scrape::from(socket);
    let runs = |scrape: &Scrape| scrape.get("lsvblk_compaction_runs_total");
    assert!(runs(&compacted) > runs(after));
    assert_eq!(compacted.get("lsvblk_compaction_running"), 0.0);
    assert_eq!(compacted.get("lsvblk_compaction_last_failed"), 0.0);
    assert!(compacted.get("lsvblk_compaction_last_rate_bytes_per_second") >= 0.0);

    lsvblk_json(&["rotate", vol, "--json"]);
    let rotated = Scrape::from(socket);
    assert_eq!(rotated.get("lsvblk_key_rotations_total"), 1.0);
    assert_eq!(rotated.get("lsvblk_key_rotation_running"), 0.0);
    // Every live block is under the new key now.
    assert_eq!(
        rotated.get("lsvblk_key_live_bytes"),
        rotated.get("lsvblk_log_live_bytes")
    );
    assert!(rotated.get("lsvblk_key_age_seconds") <= after.get("lsvblk_key_age_seconds") + 1.0);

    let unreachable =
        |scrape: &Scrape| scrape.get(r#"lsvblk_kms_call_failures_total{kind="unreachable"}"#);
    let failed_before = unreachable(&rotated);
    kms.stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    while unreachable(&Scrape::from(socket)) <= failed_before {
        assert!(Instant::now() < deadline, "no failed lsvkms call counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let down = Scrape::from(socket);
    assert!(down.get("lsvblk_kms_last_success_age_seconds") >= 1.0);
    assert_eq!(down.get("lsvblk_key_care_failing"), 1.0);
}
