//! Compaction of a served volume under verified I/O, and a daemon killed
//! in the middle of one.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::kit::blkio::BlkClient;
use super::kit::cli::{Background, lsvblk_json};
use super::kit::data::{BLOCK, assert_same};
use super::kit::disk::Disk;
use super::story::Story;
use super::{KIB, MIB, SIZE_BYTES, path};

/// Live bytes of the garbage-making rounds, and how much of the volume they
/// cover.
const CHURN_BYTES: u64 = 12 * MIB;

/// Writes that leave garbage: `CHURN_BYTES` written twice over (the first
/// round all dead), then every other 256 KiB written a third time (the
/// second round half dead, its live half to be moved by compaction).
fn churn(client: &mut BlkClient, disk: &mut Disk) {
    for round in ["churn 1", "churn 2"] {
        disk.write(client, round, 0, CHURN_BYTES);
    }
    for offset in (0..CHURN_BYTES).step_by(512 * KIB as usize) {
        disk.write(client, "churn 3", offset, 256 * KIB);
    }
    client.flush(0).unwrap();
}

/// `lsvblk status --json`, through the daemon serving `volume`.
fn status(volume: &Path) -> Value {
    lsvblk_json(&["status", path(volume), "--json"])
}

/// Between two steps of the I/O load that runs during a compaction.
const LOAD_PAUSE: Duration = Duration::from_millis(10);

/// One verified step of I/O load: a write of a few blocks at a place that
/// depends on `n`, then a read of another range compared with `disk`.
fn load_step(client: &mut BlkClient, disk: &mut Disk, n: u64) {
    let blocks = SIZE_BYTES / BLOCK;
    let offset = (n * 7919 % (blocks - 16)) * BLOCK;
    disk.write(client, &format!("load {n}"), offset, (n % 16 + 1) * BLOCK);
    let at = (n * 104_729 % (blocks - 64)) * BLOCK;
    let got = client.read(0, at, (64 * BLOCK) as usize).unwrap();
    assert_same(
        &got,
        disk.range(at, 64 * BLOCK),
        at,
        &format!("load read {n}"),
    );
}

#[test]
fn compaction_of_a_served_volume_under_verified_io_frees_space_and_keeps_every_byte() {
    let story = Story::new();
    // No background compaction: this test decides when to compact.
    let serve_args = ["--compact-rate-mib", "0"];
    let mut daemon = story.serve(&story.alice, &serve_args);
    let mut client = daemon.client(1);
    let mut disk = Disk::zeros(SIZE_BYTES);
    disk.write(&mut client, "base", 0, SIZE_BYTES);
    client.flush(0).unwrap();
    let base = disk.clone();
    lsvblk_json(&["snapshot", "create", story.vol(), "base", "--json"]);
    churn(&mut client, &mut disk);

    let before = status(&story.volume);
    assert_eq!(before["served"], true, "{before}");
    assert_eq!(before["pid"], daemon.pid(), "{before}");
    // Direct by default; buffered where the filesystem refuses O_DIRECT.
    assert!(
        matches!(before["io"].as_str(), Some("direct" | "buffered")),
        "{before}"
    );
    assert_eq!(before["space"]["live_bytes"], SIZE_BYTES, "{before}");
    let log_before = before["space"]["log_bytes"].as_u64().unwrap();
    assert!(log_before > SIZE_BYTES + 2 * CHURN_BYTES, "{before}");

    // Compact slowly (4 MiB/s) while writing and reading, verifying reads.
    let mut compact = Background::start(&["compact", story.vol(), "--rate-mib", "4", "--json"]);
    let mut steps = 0;
    let mut saw_running = false;
    while compact.running() {
        load_step(&mut client, &mut disk, steps);
        steps += 1;
        if steps % 16 == 0 && !saw_running {
            saw_running = !status(&story.volume)["compaction"]["running"].is_null();
        }
        // A steady load, not a flood: what it writes must not outgrow
        // what the compaction frees.
        std::thread::sleep(LOAD_PAUSE);
    }
    let output = compact.finish();
    assert!(
        output.status.success(),
        "compact: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let done: Value = serde_json::from_slice(&output.stdout).unwrap();
    let report = &done["report"];
    // The first round's 12 segments at least, and the half-dead second;
    // a few (one per log head at most) are kept as spares for reuse, the
    // others' space goes back to the filesystem.
    assert!(report["segments_deleted"].as_u64().unwrap() >= 12, "{done}");
    let recycled = report["segments_recycled"].as_u64().unwrap();
    assert!(recycled <= 3, "{done}");
    assert!(
        report["bytes_freed"].as_u64().unwrap() >= (12 - recycled) * MIB,
        "{done}"
    );
    assert!(report["bytes_moved"].as_u64().unwrap() > 0, "{done}");
    assert!(
        done["log_bytes_after"].as_u64().unwrap() < done["log_bytes_before"].as_u64().unwrap(),
        "{done}"
    );
    assert!(
        steps > 16,
        "only {steps} load steps ran during the compaction"
    );
    assert!(saw_running, "status never showed the compaction running");

    let after = status(&story.volume);
    assert_eq!(after["served"], true, "{after}");
    assert_eq!(after["compaction"]["runs"], 1, "{after}");
    assert_eq!(after["compaction"]["last"]["report"], *report, "{after}");
    let space = &after["space"];
    assert_eq!(space["live_bytes"], disk.non_zero_bytes(), "{after}");
    let log_after = space["log_bytes"].as_u64().unwrap();
    assert!(log_after < log_before, "{after}");
    assert_eq!(
        space["dead_bytes"],
        log_after - space["live_bytes"].as_u64().unwrap()
    );
    assert!(
        space["snapshot_pinned_bytes"].as_u64().unwrap() >= SIZE_BYTES,
        "{after}"
    );

    disk.check(&mut client, "alice's volume after compaction");
    // The snapshot's blocks were pinned: it still reads as it was.
    let mut snapshot_daemon = story.serve_snapshot(&story.alice, "base");
    base.check(
        &mut snapshot_daemon.client_read_only(1),
        "snapshot base after compaction",
    );
    snapshot_daemon.stop_cleanly();
    // And all of it holds after a restart.
    drop(client);
    daemon.stop_cleanly();
    let mut daemon = story.serve(&story.alice, &serve_args);
    disk.check(
        &mut daemon.client(1),
        "alice's volume after compaction and a restart",
    );
    daemon.stop_cleanly();
}

#[test]
fn a_daemon_killed_in_the_middle_of_a_compaction_loses_nothing_and_compacts_again() {
    let story = Story::new();
    let serve_args = ["--compact-rate-mib", "0"];
    let mut daemon = story.serve(&story.alice, &serve_args);
    let mut client = daemon.client(1);
    let mut disk = Disk::zeros(SIZE_BYTES);
    churn(&mut client, &mut disk);

    // At 1 MiB/s the 6 MiB to move take 6 s: kill the daemon in between.
    let started = Instant::now();
    let compact = Background::start(&["compact", story.vol(), "--rate-mib", "1", "--json"]);
    let progress = loop {
        let running = status(&story.volume)["compaction"]["running"].clone();
        if running["bytes_moved"].as_u64().is_some_and(|m| m > 0) {
            break running;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "compaction never moved a byte"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(500).saturating_sub(started.elapsed()));
    let moved = progress["bytes_moved"].as_u64().unwrap();
    assert!(
        moved < progress["bytes_total"].as_u64().unwrap(),
        "{progress}"
    );
    daemon.kill9();
    drop(client);
    let output = compact.finish();
    assert_ne!(output.status.code(), Some(0), "compact survived its daemon");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("daemon"), "compact says why:\n{stderr}");

    let mut daemon = story.serve(&story.alice, &serve_args);
    let mut client = daemon.client(1);
    disk.check(&mut client, "after kill -9 during compaction and a restart");
    let again = lsvblk_json(&["compact", story.vol(), "--json"]);
    let report = &again["report"];
    assert!(
        report["segments_deleted"].as_u64().unwrap() >= 12,
        "{again}"
    );
    assert!(report["bytes_freed"].as_u64().unwrap() > 0, "{again}");
    let space = &status(&story.volume)["space"];
    assert_eq!(space["live_bytes"], CHURN_BYTES, "{space}");
    disk.check(&mut client, "after the second compaction");
    drop(client);
    daemon.stop_cleanly();
    let mut daemon = story.serve(&story.alice, &serve_args);
    disk.check(
        &mut daemon.client(1),
        "after the second compaction and a restart",
    );
    daemon.stop_cleanly();
}
