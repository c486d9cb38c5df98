//! kill -9 in the middle of a rotation, again and again: each restarted
//! daemon resumes it by itself. And what a rotation owes lsvkms survives a
//! crash.

use std::time::{Duration, Instant};

use super::files::{records_by_key, superblock};
use super::kit::blkio::BlkClient;
use super::kit::cli::{Background, json_of};
use super::kit::data::{BLOCK, difference, fill};
use super::kit::disk::Disk;
use super::kit::rng::Rng;
use super::{ACT_WAIT, MIB, Setup, current_key, status_key_ids, wait_for, wait_for_rotation};

/// Live data of the rotation killed again and again: a daemon resumes a
/// rotation at 1 MiB/s here, moving a 1 MiB batch at once and then waiting
/// out the second, so each life moves 0 to 2 MiB; 32 MiB outlast the kills.
const KILLED_DATA_BYTES: u64 = 32 * MIB;
/// Kills while the rotation runs.
const KILLS: usize = 20;

/// One random write (flushed: acknowledged) and one random read, compared.
fn verified_io_step(client: &mut BlkClient, disk: &mut Disk, rng: &mut Rng, tag: &str) {
    let blocks = disk.size() / BLOCK;
    let len = rng.between(1, 16) * BLOCK;
    let offset = rng.between(0, blocks - len / BLOCK) * BLOCK;
    let data = fill(tag, offset, len);
    client
        .write(0, offset, &data)
        .unwrap_or_else(|e| panic!("{tag}: write at {offset}: {e:?}"));
    client.flush(0).unwrap();
    disk.put(offset, &data);
    let len = rng.between(1, 16) * BLOCK;
    let offset = rng.between(0, blocks - len / BLOCK) * BLOCK;
    let got = client.read(0, offset, len as usize).unwrap();
    if let Some(diff) = difference(&got, disk.range(offset, len), offset) {
        panic!("{tag}: read at {offset}: {diff}");
    }
}

#[test]
fn a_rotation_killed_at_20_random_points_resumes_by_itself_and_completes() {
    let setup = Setup::new(KILLED_DATA_BYTES + 8 * MIB, &[]);
    let mut rng = Rng::from_env_or_clock("kill -9 during rotation");
    // A daemon resumes a rotation at its background rate.
    let slow = ["--compact-rate-mib", "1"];
    let mut daemon = setup.serve(&slow);
    let mut client = daemon.client(1);
    let mut disk = Disk::zeros(setup.size);
    disk.write(&mut client, "base", 0, KILLED_DATA_BYTES);
    client.flush(0).unwrap();
    let old_key = current_key(&setup.status());

    let mut rotate = Some(Background::start(&[
        "rotate",
        setup.vol(),
        "--rate-mib",
        "1",
        "--json",
    ]));
    let new_key = wait_for(
        "the rotation to start",
        ACT_WAIT,
        || {
            let status = setup.status();
            status["keys"]["rotation"]["to"].as_str().map(str::to_owned)
        },
        String::new,
    );
    // The first daemon was writing; it dies in the rotation `rotate` asked
    // for. Each next one resumes the rotation by itself as it starts.
    let mut client = Some(client);
    let mut life_started = Instant::now();
    let mut moved = Vec::new();
    for kill in 0..KILLS {
        // Every other kill comes early (startup, recovery, the resumed
        // rotation's first batch), the others anywhere in the next 1.2 s,
        // while a client writes and reads (verified).
        let delay = if kill % 2 == 0 {
            Duration::from_millis(rng.between(0, 80))
        } else {
            let client = client.get_or_insert_with(|| daemon.client(1));
            verified_io_step(client, &mut disk, &mut rng, &format!("before kill {kill}"));
            if kill % 5 == 0 {
                disk.check(client, &format!("before kill {kill}"));
            }
            Duration::from_millis(rng.between(0, 1200))
        };
        std::thread::sleep(delay.saturating_sub(life_started.elapsed()));
        if kill % 2 == 1 {
            // Where the re-encryption is (`lsvblk status` takes a few ms:
            // not before the early kills).
            let status = setup.status();
            let progress = &status["keys"]["progress"]["bytes_moved"];
            moved.push(progress.as_u64().map(|b| b >> 10));
        }
        // The volume records the rotation until it is over.
        let recorded = superblock(&setup.volume)["rotation"].clone();
        assert_eq!(
            recorded["to"], new_key,
            "the rotation is over before kill {kill} (KiB moved since each daemon's start: \
             {moved:?})"
        );
        daemon.kill9();
        drop(client.take());
        if let Some(rotate) = rotate.take() {
            let output = rotate.finish();
            assert!(!output.status.success(), "rotate survived its daemon");
        }
        // The last restart re-encrypts without a rate limit.
        let args: &[&str] = if kill + 1 == KILLS {
            &["--compact-rate-mib", "0"]
        } else {
            &slow
        };
        daemon = setup.serve(args);
        life_started = Instant::now();
    }
    eprintln!("KiB moved since each daemon's start at the later kills: {moved:?}");
    let mut client = daemon.client(1);

    let status = wait_for_rotation(&setup, "manual");
    assert_eq!(current_key(&status), new_key, "{status}");
    assert_eq!(status_key_ids(&status), [new_key.as_str()], "{status}");
    assert_eq!(
        status["keys"]["last_rotation"]["outcome"]["forgotten"],
        serde_json::json!([old_key]),
        "{status}"
    );
    assert_eq!(setup.key_status(&old_key), "destroyed");
    let records = records_by_key(&setup.volume);
    assert!(!records.contains_key(&old_key), "{records:?}");
    assert!(
        records[&new_key].1 >= KILLED_DATA_BYTES / BLOCK,
        "{records:?}"
    );
    disk.check(&mut client, "after the rotation completed");
    drop(client);
    daemon.stop_cleanly();
}

// --- What a rotation owes lsvkms, and what a snapshot keeps ------------------------

/// A rotation that ends while lsvkms is away owes it the old key's
/// destruction; a daemon killed then, and started again, still pays.
#[test]
fn a_key_owed_to_lsvkms_for_destruction_is_destroyed_after_a_crash_and_restart() {
    let mut setup = Setup::new(8 * MIB, &[]);
    let mut daemon = setup.serve(&["--compact-rate-mib", "0"]);
    let mut client = daemon.client(1);
    let mut disk = Disk::zeros(setup.size);
    disk.write(&mut client, "before", 0, 3 * MIB);
    client.flush(0).unwrap();
    let old_key = current_key(&setup.status());

    // 3 MiB at 1 MiB/s: lsvkms is gone long before the rotation ends.
    let rotate = Background::start(&["rotate", setup.vol(), "--rate-mib", "1", "--json"]);
    wait_for(
        "the rotation to start",
        ACT_WAIT,
        || {
            superblock(&setup.volume)["rotation"]
                .as_object()
                .map(|_| ())
        },
        String::new,
    );
    setup.kms.stop();
    let output = rotate.finish();
    let rotated = json_of(&["rotate"], &output);
    assert_eq!(
        rotated["outcome"]["destroyable"],
        serde_json::json!([old_key]),
        "{rotated}"
    );
    let status = setup.status();
    assert_eq!(
        status["keys"]["pending_destroy"],
        serde_json::json!([old_key]),
        "{status}"
    );

    daemon.kill9();
    drop(client);
    setup.kms.serve();
    assert_eq!(setup.key_status(&old_key), "enabled");
    let mut daemon = setup.serve(&["--compact-rate-mib", "0"]);
    wait_for(
        "lsvkms to destroy the old key",
        ACT_WAIT,
        || (setup.key_status(&old_key) == "destroyed").then_some(()),
        || format!("status: {}", setup.status()),
    );
    let status = setup.status();
    assert_eq!(
        status["keys"]["pending_destroy"],
        serde_json::json!([]),
        "{status}"
    );
    disk.check(&mut daemon.client(1), "after the restart");
    daemon.stop_cleanly();
}
