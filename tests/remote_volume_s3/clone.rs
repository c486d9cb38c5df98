//! A writable clone of a stored volume's snapshot, on the volume's host: it
//! reads the snapshot's blocks from the volume's directory and writes its
//! own log, while the volume goes on being written and uploaded.

use crate::kit::ceph::cluster;
use crate::kit::daemon::{Daemon, ServeOptions};
use crate::{MIB, Setup, lsvblk};

const PIECE: u64 = 64 * 1024;

fn pattern(seed: u64) -> Vec<u8> {
    (0..PIECE)
        .map(|i| (i as u8).wrapping_mul(11) ^ (seed as u8))
        .collect()
}

/// `lsvblk clone` of snapshot `snap1` of `volume` into a fresh directory
/// (its key's ACL: alice): the directory and the command's JSON answer.
fn clone_snap1(setup: &Setup, volume: &str) -> (std::path::PathBuf, serde_json::Value) {
    let clone_dir = setup.fresh_dir();
    let clone_path = clone_dir.to_str().unwrap();
    let (kms, token) = (setup.kms.address(), setup.token.to_str().unwrap());
    let args = ["clone", volume, "snap1", clone_path, "--acl", "alice"];
    let mut args = args.to_vec();
    args.extend(["--kms", &kms, "--token-file", token, "--json"]);
    let cloned = lsvblk().json(&args);
    (clone_dir, cloned)
}

#[test]
fn a_clone_of_a_stored_volumes_snapshot_serves_beside_it() {
    let _shared = cluster().fault_lock(false);
    let setup = Setup::new("clone", 8 * MIB);
    let volume = setup.volume.to_str().unwrap().to_string();
    let mut alice = setup.serve(&setup.volume, &["--flush", "remote"]);
    let mut client = alice.client(1);
    for piece in 0..8 {
        client.write(0, piece * PIECE, &pattern(piece)).unwrap();
    }
    client.flush(0).unwrap();
    lsvblk().json(&["snapshot", "create", &volume, "snap1", "--json"]);
    client.write(0, 0, &pattern(100)).unwrap();
    client.flush(0).unwrap();

    let (clone_dir, cloned) = clone_snap1(&setup, &volume);
    assert_eq!(cloned["parent"]["snapshot"], "snap1", "{cloned}");

    let mut clone = Daemon::start(&clone_dir, &setup.kms, &setup.token, &[]);
    let mut writer = clone.client(1);
    writer.write(0, PIECE, &pattern(200)).unwrap();
    writer.flush(0).unwrap();
    // The snapshot's blocks, the clone's own write, and the volume's own
    // write after the snapshot, each where it belongs.
    assert_eq!(writer.read(0, 0, PIECE as usize).unwrap(), pattern(0));
    assert_eq!(writer.read(0, PIECE, PIECE as usize).unwrap(), pattern(200));
    for piece in 2..8 {
        let got = writer.read(0, piece * PIECE, PIECE as usize).unwrap();
        assert_eq!(got, pattern(piece), "piece {piece}");
    }
    assert_eq!(client.read(0, 0, PIECE as usize).unwrap(), pattern(100));
    assert_eq!(client.read(0, PIECE, PIECE as usize).unwrap(), pattern(1));

    drop(writer);
    clone.stop_cleanly();
    drop(client);
    alice.stop_cleanly();
}

/// Polls the parent's `status` until its cache evicted `segments`.
fn wait_evicted(setup: &Setup, segments: u64) {
    let start = std::time::Instant::now();
    loop {
        let status = setup.status(&setup.volume);
        if status["upload"]["cache"]["evicted_segments"].as_u64() >= Some(segments) {
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the cache did not evict: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[test]
fn a_clone_reads_what_its_stored_parent_evicted_from_the_store() {
    let _shared = cluster().fault_lock(false);
    let setup = Setup::new("clone-evicted", 16 * MIB);
    let volume = setup.volume.to_str().unwrap().to_string();
    // 8 MiB of snapshot data (1 MiB segments) and a cache of 2 MiB.
    let pieces = 8 * MIB / PIECE;
    let mut alice = setup.serve(&setup.volume, &["--flush", "remote", "--cache-size", "2M"]);
    let mut client = alice.client(1);
    for piece in 0..pieces {
        client.write(0, piece * PIECE, &pattern(piece)).unwrap();
    }
    client.flush(0).unwrap();
    lsvblk().json(&["snapshot", "create", &volume, "snap1", "--json"]);
    wait_evicted(&setup, 4);

    let (clone_dir, _) = clone_snap1(&setup, &volume);

    // Without its parent's store, the clone cannot read what the parent
    // evicted: an I/O error, never wrong data.
    let mut clone = Daemon::start(&clone_dir, &setup.kms, &setup.token, &[]);
    let mut reader = clone.client(1);
    let mut failed = 0;
    for piece in 0..pieces {
        match reader.read(0, piece * PIECE, PIECE as usize) {
            Ok(got) => assert_eq!(got, pattern(piece), "piece {piece}"),
            Err(_) => failed += 1,
        }
    }
    assert!(failed > 0, "nothing was evicted: the test shows nothing");
    drop(reader);
    clone.stop_cleanly();

    // With it (`--store` names the parent's), every block, fetched by
    // ranged GETs; the clone's own writes go to its own log.
    let mut options = ServeOptions::args(&[]);
    options.lsvblk = lsvblk();
    options.args.extend(setup.store_args());
    let mut clone = Daemon::start_with(&clone_dir, &setup.kms, &setup.token, &options);
    let mut reader = clone.client(1);
    for piece in 0..pieces {
        let got = reader.read(0, piece * PIECE, PIECE as usize).unwrap();
        assert_eq!(got, pattern(piece), "piece {piece}");
    }
    reader.write(0, 0, &pattern(300)).unwrap();
    reader.flush(0).unwrap();
    assert_eq!(reader.read(0, 0, PIECE as usize).unwrap(), pattern(300));
    // The parent goes on, its blocks unchanged by the clone's refills.
    for piece in 0..pieces {
        let got = client.read(0, piece * PIECE, PIECE as usize).unwrap();
        assert_eq!(got, pattern(piece), "parent piece {piece}");
    }
    drop(reader);
    clone.stop_cleanly();
    drop(client);
    alice.stop_cleanly();
}

/// The race a clone's reads had with its parent's cache, provoked: the
/// parent (a 2 MiB cache over 8 MiB of snapshot data) evicts all the time
/// while its own reader refills other segments, and the clone reads the
/// same snapshot blocks meanwhile. Before a clone pinned the parent's
/// segments it read, a hole punched between its refill and its read failed
/// that read; now every read returns the snapshot's data.
#[test]
fn a_clone_reads_while_its_stored_parent_evicts_the_same_segments() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let _shared = cluster().fault_lock(false);
    let setup = Setup::new("clone-race", 16 * MIB);
    let volume = setup.volume.to_str().unwrap().to_string();
    let pieces = 8 * MIB / PIECE;
    let mut alice = setup.serve(&setup.volume, &["--flush", "remote", "--cache-size", "2M"]);
    let mut client = alice.client(1);
    for piece in 0..pieces {
        client.write(0, piece * PIECE, &pattern(piece)).unwrap();
    }
    client.flush(0).unwrap();
    lsvblk().json(&["snapshot", "create", &volume, "snap1", "--json"]);
    wait_evicted(&setup, 4);
    let (clone_dir, _) = clone_snap1(&setup, &volume);
    let mut options = ServeOptions::args(&[]);
    options.lsvblk = lsvblk();
    options.args.extend(setup.store_args());
    let mut clone = Daemon::start_with(&clone_dir, &setup.kms, &setup.token, &options);
    let mut reader = clone.client(1);

    let stop = AtomicBool::new(false);
    let evictions_before = setup.status(&setup.volume)["upload"]["cache"]["evictions"]
        .as_u64()
        .unwrap();
    let (clone_reads, failures) = std::thread::scope(|scope| {
        // The parent reads its segments round and round: each refill
        // evicts another segment.
        let churn = scope.spawn(|| {
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                for piece in (0..pieces).step_by(4) {
                    let got = client.read(0, piece * PIECE, PIECE as usize).unwrap();
                    assert_eq!(got, pattern(piece), "parent piece {piece}");
                }
                rounds += 1;
            }
            rounds
        });
        let start = std::time::Instant::now();
        let (mut reads, mut failures) = (0u64, Vec::new());
        while start.elapsed() < std::time::Duration::from_secs(20) {
            for piece in 0..pieces {
                match reader.read(0, piece * PIECE, PIECE as usize) {
                    Ok(got) => assert_eq!(got, pattern(piece), "clone piece {piece}"),
                    Err(error) => failures.push((piece, error)),
                }
                reads += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        assert!(churn.join().unwrap() > 0, "the parent never read");
        (reads, failures)
    });
    let evictions = setup.status(&setup.volume)["upload"]["cache"]["evictions"]
        .as_u64()
        .unwrap()
        - evictions_before;
    assert!(
        evictions > pieces / 4,
        "the parent evicted only {evictions} times: the race was not provoked"
    );
    assert!(
        failures.is_empty(),
        "{} of {clone_reads} clone reads failed while the parent evicted ({evictions} evictions): {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    drop(reader);
    clone.stop_cleanly();
    alice.stop_cleanly();
}
