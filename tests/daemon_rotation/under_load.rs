//! A rotation under verified I/O loses nothing and leaves no trace of the
//! old key: not in lsvkms, not in any segment file, not in the daemon's
//! memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::files::{blobs, records_by_key, superblock};
use super::kit::blkio::BlkClient;
use super::kit::data::{BLOCK, difference, fill};
use super::kit::disk::Disk;
use super::kit::kms::api_error;
use super::kit::rng::Rng;
use super::kit::secrets::{key_in_base64, key_needles, locked_mappings, memory_holds};
use super::{MIB, Setup, assert_outcome, current_key, lsvblk_json, status_key_ids};

/// Counts of the load's I/O.
#[derive(Default)]
struct LoadStats {
    ops: AtomicU64,
    errors: AtomicU64,
    mismatches: AtomicU64,
}

/// Random 4–64 KiB writes and reads over `disk` through `client` until
/// `stop`, every read compared with the model; returns the client, the
/// model and the first problems seen.
fn run_load(
    mut client: BlkClient,
    mut disk: Disk,
    mut rng: Rng,
    stats: &LoadStats,
    stop: &AtomicBool,
) -> (BlkClient, Disk, Vec<String>) {
    let mut problems = Vec::new();
    let blocks = disk.size() / BLOCK;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let len = rng.between(1, 16) * BLOCK;
        let offset = rng.between(0, blocks - len / BLOCK) * BLOCK;
        if rng.next().is_multiple_of(2) {
            let data = fill(&format!("load {n}"), offset, len);
            match client.write(0, offset, &data) {
                Ok(()) => disk.put(offset, &data),
                Err(e) => {
                    stats.errors.fetch_add(1, Ordering::SeqCst);
                    problems.push(format!("write {n} at {offset}: {e:?}"));
                }
            }
        } else {
            match client.read(0, offset, len as usize) {
                Ok(got) => {
                    if let Some(diff) = difference(&got, disk.range(offset, len), offset) {
                        stats.mismatches.fetch_add(1, Ordering::SeqCst);
                        problems.push(format!("read {n} at {offset}: {diff}"));
                    }
                }
                Err(e) => {
                    stats.errors.fetch_add(1, Ordering::SeqCst);
                    problems.push(format!("read {n} at {offset}: {e:?}"));
                }
            }
        }
        stats.ops.fetch_add(1, Ordering::SeqCst);
        n += 1;
        problems.truncate(10);
    }
    (client, disk, problems)
}

/// Live data before the rotation (the benchmark rotates 256 MiB and more).
const LOAD_DATA_BYTES: u64 = 32 * MIB;

#[test]
fn a_rotation_under_verified_io_loses_nothing_and_leaves_no_trace_of_the_old_key() {
    let setup = Setup::new(LOAD_DATA_BYTES + 8 * MIB, &[]);
    let mut rng = Rng::from_env_or_clock("rotation under load");
    // No background compaction: what segments hold is the rotation's doing.
    let daemon = setup.serve(&["--compact-rate-mib", "0"]);
    let mut client = daemon.client(1);
    let mut disk = Disk::zeros(setup.size);
    disk.write(&mut client, "base", 0, LOAD_DATA_BYTES);
    client.flush(0).unwrap();

    let before = setup.status();
    let old_key = current_key(&before);
    assert_eq!(status_key_ids(&before), [old_key.as_str()], "{before}");
    let old_material = setup.data_key(&old_key);
    let (_, old_blob) = blobs(&superblock(&setup.volume))
        .into_iter()
        .find(|(id, _)| *id == old_key)
        .unwrap();
    let needles = key_needles(&old_material);
    // The checks below can fail: the daemon holds the key now, and the
    // segment files are full of records under it.
    let held = memory_holds(daemon.pid(), &needles);
    assert!(
        (0..needles.len()).all(|n| held.iter().any(|h| h.starts_with(&format!("needle {n} ")))),
        "the memory scan does not find the key the daemon uses: {held:?}"
    );
    let records = records_by_key(&setup.volume);
    assert!(
        records[&old_key].1 >= LOAD_DATA_BYTES / BLOCK,
        "the segment scan misses records: {records:?}"
    );

    // The load runs before, during and after the rotation.
    let stats = Arc::new(LoadStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load = std::thread::spawn({
        let (stats, stop) = (Arc::clone(&stats), Arc::clone(&stop));
        let load_rng = Rng(rng.next());
        move || run_load(client, disk, load_rng, &stats, &stop)
    });
    std::thread::sleep(Duration::from_millis(200));
    let ops_before = stats.ops.load(Ordering::SeqCst);
    let started = Instant::now();
    // 16 MiB/s: the 32 MiB take about 2 s, under load all along.
    let args = ["rotate", setup.vol(), "--rate-mib", "16", "--json"];
    let rotated = lsvblk_json(&args);
    let took = started.elapsed();
    let ops_during = stats.ops.load(Ordering::SeqCst) - ops_before;
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let (mut client, disk, problems) = load.join().unwrap();
    eprintln!(
        "rotation of {} MiB under load: {took:?}, {ops_during} I/Os during it, {} in all: {rotated}",
        LOAD_DATA_BYTES >> 20,
        stats.ops.load(Ordering::SeqCst)
    );
    assert_eq!(
        (
            stats.errors.load(Ordering::SeqCst),
            stats.mismatches.load(Ordering::SeqCst)
        ),
        (0, 0),
        "I/O errors and mismatches under rotation: {problems:?}"
    );
    assert!(
        ops_during >= 50,
        "only {ops_during} I/Os during the rotation"
    );

    // The answer, and what status says.
    let new_key = rotated["current_key_id"].as_str().unwrap().to_owned();
    assert_ne!(new_key, old_key, "{rotated}");
    assert_eq!(rotated["reason"], "manual", "{rotated}");
    assert_outcome(&rotated, "forgotten", &[&old_key]);
    assert_outcome(&rotated, "destroyable", &[&old_key]);
    let outcome = &rotated["outcome"];
    // Every byte under the old key at the switch (the load wrote some of
    // the last 8 MiB too), once; a second pass may take a write that was
    // in flight at the switch.
    let rekeyed = outcome["bytes_rekeyed"].as_u64().unwrap();
    assert!(
        (LOAD_DATA_BYTES / 2..=setup.size + MIB).contains(&rekeyed),
        "{rotated}"
    );
    let after = setup.status();
    assert_eq!(current_key(&after), new_key, "{after}");
    assert_eq!(status_key_ids(&after), [new_key.as_str()], "{after}");
    let keys = &after["keys"];
    assert!(keys["rotation"].is_null(), "{after}");
    assert_eq!(keys["rotations"], 1, "{after}");
    assert_eq!(keys["last_rotation"]["reason"], "manual", "{after}");
    assert_eq!(keys["pending_destroy"], serde_json::json!([]), "{after}");
    let usage = &keys["keys"][0]["usage"];
    assert!(
        usage["live_bytes"].as_u64().unwrap() >= LOAD_DATA_BYTES,
        "{after}"
    );
    assert_eq!(
        superblock(&setup.volume)["current_key_id"],
        new_key.as_str()
    );

    // lsvkms destroyed the old key: its blob opens nothing any more.
    assert_eq!(setup.key_status(&old_key), "destroyed");
    let token = setup.alice_token();
    let client_kms = setup.kms.client();
    assert_eq!(
        api_error(client_kms.unwrap(&old_blob, &setup.context(), &token)).0,
        409
    );
    assert_eq!(setup.key_status(&new_key), "enabled");

    // No record under the old key in any segment file.
    let records = records_by_key(&setup.volume);
    assert!(!records.contains_key(&old_key), "{records:?}");
    assert!(
        records[&new_key].1 >= LOAD_DATA_BYTES / BLOCK,
        "{records:?}"
    );

    // Nor in the daemon's memory; the new key is there (the scan still
    // works), and only in locked pages (its material and schedule): not in
    // a dead stack frame, nor in a buffer of lsvkms's answer.
    let mut old_forms = key_in_base64(&old_material);
    old_forms.extend(needles.iter().map(|n| n.to_vec()));
    let old_forms: Vec<&[u8]> = old_forms.iter().map(Vec::as_slice).collect();
    let held = memory_holds(daemon.pid(), &old_forms);
    assert!(
        held.is_empty(),
        "the daemon still holds the old key after the rotation: {held:?}"
    );
    // (The new key came to the daemon in lsvkms's answer, in base64.)
    let new_material = setup.data_key(&new_key);
    let mut new_forms = key_in_base64(&new_material);
    new_forms.extend(key_needles(&new_material).iter().map(|n| n.to_vec()));
    let new_forms: Vec<&[u8]> = new_forms.iter().map(Vec::as_slice).collect();
    let held = memory_holds(daemon.pid(), &new_forms);
    assert!(!held.is_empty(), "the memory scan misses the new key");
    let locked = locked_mappings(daemon.pid());
    let unlocked: Vec<&String> = held
        .iter()
        .filter(|h| !locked.iter().any(|m| h.contains(m.as_str())))
        .collect();
    assert!(
        unlocked.is_empty(),
        "the new key is outside locked memory: {unlocked:?}"
    );

    disk.check(&mut client, "after the rotation");
    drop(client);
    let mut daemon = daemon;
    daemon.stop_cleanly();
    let mut daemon = setup.serve(&["--compact-rate-mib", "0"]);
    disk.check(&mut daemon.client(1), "after the rotation and a restart");
    daemon.stop_cleanly();
}
