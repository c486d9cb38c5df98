//! Losing the host, a second writer, a zombie writer (whose late uploads
//! are collected), a remote FLUSH racing background compaction.

use std::path::Path;
use std::time::{Duration, Instant};

use lsvblk::objstore::{ObjectKey, ObjectStore};

use crate::kit::ceph::cluster;
use crate::kit::cli::exit;
use crate::kit::daemon::Daemon;
use crate::kit::versions::VerifiedLoad;
use crate::{MIB, Setup, for_time, refused};

#[test]
fn remote_flushed_writes_survive_losing_the_host() {
    let _shared = cluster().fault_lock(false);
    let setup = Setup::new("host-loss", 32 * MIB);
    let mut first = setup.serve(&setup.volume, &["--flush", "remote"]);

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

    lose_the_host_and_verify(&setup, &mut first, &mut load, &elsewhere);
}

/// The host is lost: the daemon dies, its directory with it; the volume
/// rebuilt from the store in `elsewhere` holds every block as the model says.
pub fn lose_the_host_and_verify(
    setup: &Setup,
    daemon: &mut Daemon,
    load: &mut VerifiedLoad,
    elsewhere: &Path,
) {
    daemon.kill9();
    std::fs::remove_dir_all(&setup.volume).unwrap();
    let mut rebuilt = setup.serve(elsewhere, &["--takeover"]);
    verify_rebuilt(&mut rebuilt, load, setup.size_bytes);
}

/// The daemon `rebuilt` serves a volume of `size_bytes` it rebuilt from the
/// store: every block is as `load`'s model says. Stops it.
pub fn verify_rebuilt(rebuilt: &mut Daemon, load: &mut VerifiedLoad, size_bytes: u64) {
    let stderr = rebuilt.stderr();
    assert!(
        stderr.contains("rebuilt the volume from the object store"),
        "{stderr}"
    );
    load.client = Some(rebuilt.client(1));
    let check = load.verify_disk();
    assert_eq!(
        (check.io_errors, check.mismatches),
        (0, 0),
        "{}",
        rebuilt.stderr()
    );
    assert_eq!(check.verified, size_bytes / 4096);
    rebuilt.stop_cleanly();
}

/// Compaction deletes segments whose data it moved; one not uploaded yet
/// must stay until it is (a rebuild replays every segment after the stored
/// checkpoint). Remote FLUSHes while compaction runs return in seconds, and
/// the volume rebuilt from the store then holds every flushed write.
#[test]
fn remote_flushes_racing_background_compaction_return_promptly() {
    /// Far more than an upload of one second of writes takes here; far less
    /// than the FLUSH's own limit (`--store-wait`).
    const FLUSH_PROMPT: Duration = Duration::from_secs(45);
    const ROUNDS_MAX: usize = 20;
    let _shared = cluster().fault_lock(false);
    let setup = Setup::new("flush-vs-compaction", 32 * MIB);
    let mut daemon = setup.serve(
        &setup.volume,
        &[
            "--flush",
            "remote",
            "--store-wait",
            "3m",
            "--compact-rate-mib",
            "16",
            "--background-poll-ms",
            "200",
        ],
    );
    let mut load = VerifiedLoad::new("flush-vs-compaction", daemon.client(1), 8, 30);
    load.precondition();
    let compaction_runs = |setup: &Setup| {
        let status = setup.status(&setup.volume);
        let compaction = &status["compaction"];
        compaction["runs"].as_u64().unwrap_or(0) + u64::from(!compaction["running"].is_null())
    };
    let mut slowest = Duration::ZERO;
    let mut rounds = 0;
    while rounds < ROUNDS_MAX && (rounds < 4 || compaction_runs(&setup) < 2) {
        load.run(&mut for_time(Duration::from_secs(1)));
        let started = Instant::now();
        load.flush();
        slowest = slowest.max(started.elapsed());
        rounds += 1;
    }
    assert_eq!((load.io_errors, load.mismatches), (0, 0));
    assert!(
        compaction_runs(&setup) >= 2,
        "compaction never ran in {rounds} rounds: {}",
        setup.status(&setup.volume)
    );
    assert!(
        slowest < FLUSH_PROMPT,
        "a remote FLUSH took {slowest:?} while compaction ran"
    );
    eprintln!("{rounds} rounds of writes + remote FLUSH; slowest FLUSH {slowest:?}");
    let elsewhere = setup.fresh_dir();
    lose_the_host_and_verify(&setup, &mut daemon, &mut load, &elsewhere);
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
    let epoch_of = |dir: &Path| setup.status(dir)["upload"]["epoch"].as_u64().unwrap();
    let (fenced, current) = (epoch_of(&setup.volume), epoch_of(&second));
    drop(new);
    successor.stop_cleanly();

    // What the zombie uploaded after the takeover is collected: every
    // object left in its epoch's folder is one the successor adopted.
    let store = setup.store();
    let key = |name: String| ObjectKey::new(name).unwrap();
    let base = store
        .get(&key(format!("e{current:016x}/base.json")))
        .unwrap();
    let base: serde_json::Value = serde_json::from_slice(&base).unwrap();
    let adopted: Vec<&str> = base["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    let left: Vec<String> = store
        .list(&key(format!("e{fenced:016x}")))
        .unwrap()
        .into_iter()
        .map(|o| o.key.as_str().to_string())
        .filter(|k| !k.ends_with("base.json") && !adopted.contains(&k.as_str()))
        .collect();
    assert!(left.is_empty(), "the fenced epoch's orphans stay: {left:?}");

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
