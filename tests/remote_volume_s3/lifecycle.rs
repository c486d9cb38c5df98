//! Losing the host, a second writer, a zombie writer.

use std::time::Duration;

use crate::kit::ceph::cluster;
use crate::kit::cli::exit;
use crate::kit::versions::VerifiedLoad;
use crate::{MIB, Setup, for_time, refused};

#[test]
fn remote_flushed_writes_survive_losing_the_host() {
    let _shared = cluster().fault_lock(false);
    let setup = Setup::new("host-loss", 32 * MIB);
    // Without background compaction: a remote FLUSH racing it can wait for a
    // stored checkpoint past a compacted segment for minutes (known, open).
    let mut first = setup.serve(
        &setup.volume,
        &["--flush", "remote", "--compact-rate-mib", "0"],
    );

    // While the first daemon holds the volume, a second host is refused
    // before it touches anything.
    let elsewhere = setup.fresh_dir();
    let (code, stderr) = refused(setup.spawn(&elsewhere, &[]));
    assert_eq!(code, Some(exit::BUSY), "{stderr}");
    assert!(stderr.contains("held by another writer"), "{stderr}");
    assert!(
        !elsewhere.exists(),
        "a refused claim must not create the directory"
    );

    let mut load = VerifiedLoad::new("host-loss", first.client(1), 8, 30);
    load.precondition();
    load.run(&mut for_time(Duration::from_secs(3)));
    load.flush();
    assert_eq!((load.io_errors, load.mismatches), (0, 0));
    // (Background compaction may have sealed segments since the FLUSH: the
    // backlog need not be empty.)
    let status = setup.status(&setup.volume);
    assert_eq!(status["upload"]["epoch"], 2, "{status}");
    assert!(
        status["upload"]["uploaded_segments"].as_u64() > Some(3),
        "{status}"
    );

    // The host is lost: the daemon dies, its directory with it.
    first.kill9();
    std::fs::remove_dir_all(&setup.volume).unwrap();
    let mut rebuilt = setup.serve(&elsewhere, &["--takeover"]);
    assert!(
        rebuilt
            .stderr()
            .contains("rebuilt the volume from the object store")
    );
    load.client = Some(rebuilt.client(1));
    let check = load.verify_disk();
    assert_eq!(
        (check.io_errors, check.mismatches),
        (0, 0),
        "{}",
        rebuilt.stderr()
    );
    assert_eq!(check.verified, 32 * MIB / 4096);
    rebuilt.stop_cleanly();
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..64 * 1024)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn a_zombie_writer_after_a_takeover_never_appears() {
    let _shared = cluster().fault_lock(false);
    let setup = Setup::new("zombie", 16 * MIB);
    let mut zombie = setup.serve(&setup.volume, &["--flush", "remote"]);
    let mut old = zombie.client(1);
    old.write(0, 0, &pattern(1)).unwrap();
    old.flush(0).unwrap();

    // The old host is cut off, not dead: a new one takes over.
    let second = setup.fresh_dir();
    let mut successor = setup.serve(&second, &["--takeover", "--flush", "remote"]);
    let mut new = successor.client(1);
    assert_eq!(new.read(0, 0, 64 * 1024).unwrap(), pattern(1));

    // The zombie still writes to its own directory, but its flush fails:
    // the store shows it a newer epoch.
    old.write(0, 0, &pattern(2)).unwrap();
    assert!(old.flush(0).is_err(), "a fenced writer's FLUSH must fail");
    assert!(zombie.stderr().contains("fenced"), "{}", zombie.stderr());
    new.write(0, 64 * 1024, &pattern(3)).unwrap();
    new.flush(0).unwrap();
    drop(new);
    successor.stop_cleanly();

    // A third host (no --takeover needed: the successor released it) sees
    // the successor's writes and none of the zombie's.
    let third = setup.fresh_dir();
    let mut reader = setup.serve(&third, &[]);
    let mut client = reader.client(1);
    assert_eq!(client.read(0, 0, 64 * 1024).unwrap(), pattern(1));
    assert_eq!(client.read(0, 64 * 1024, 64 * 1024).unwrap(), pattern(3));
    drop(client);
    reader.stop_cleanly();
    drop(old);
    zombie.kill9();
}
