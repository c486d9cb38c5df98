//! Durability: every acknowledged change survives SIGTERM, SIGINT and
//! kill -9; writes in flight are whole or absent; a deep queue of large
//! writes does not make the daemon hold them all.

use std::time::Duration;

use lsvblk::limits::REQUEST_BYTES_MAX;

use super::kit::blkio::BlkClient;
use super::kit::data::assert_same;
use super::kit::disk::Disk;
use super::kit::rng::Rng;
use super::{KIB, MIB, setup};

/// Random writes (most of them partial blocks), write-zeroes and whole-block
/// discards over `span` bytes through both queues of `client`, each applied
/// to `model` once acknowledged. No flush: that is the point.
fn random_changes(client: &mut BlkClient, model: &mut Disk, rng: &mut Rng, count: usize) {
    let span = model.size();
    for _ in 0..count {
        let queue = rng.below(2) as usize;
        let len = (rng.below(256) + 1) * 512;
        let offset = rng.below((span - len) / 512 + 1) * 512;
        match rng.below(10) {
            0 => {
                let unmap = rng.below(2) == 0;
                client.write_zeroes(queue, offset, len, unmap).unwrap();
                model.zero(offset, len);
            }
            1 => {
                let first = offset.div_ceil(4096) * 4096;
                let end = ((offset + len) / 4096 * 4096).max(first);
                if end > first {
                    client.discard(queue, first, end - first).unwrap();
                    model.zero(first, end - first);
                }
            }
            _ => {
                let data = rng.bytes(len as usize);
                client.write(queue, offset, &data).unwrap();
                model.put(offset, &data);
            }
        }
    }
}

/// How a daemon's life ends.
pub(crate) enum Stop {
    Sigterm,
    Sigint,
    Kill9,
}

/// Three daemon lifetimes, each ended by `stop` while the client is still
/// connected (a disconnect would make the daemon flush); each restart must
/// read back exactly what was acknowledged before.
fn acknowledged_changes_survive(stop: Stop) {
    const SIZE_BYTES: u64 = 8 * MIB;
    // 1 MiB segments: the changes roll over several segment files.
    let setup = setup(SIZE_BYTES, 4096, &["--segment-size", "1M"]);
    let mut model = Disk::zeros(SIZE_BYTES);
    let mut rng = Rng(5);
    for life in 0..3 {
        let mut daemon = setup.serve(&["--num-queues", "2", "--block-size", "512"]);
        let mut client = daemon.client(2);
        model.check(&mut client, &format!("start of life {life}"));
        random_changes(&mut client, &mut model, &mut rng, 150);
        match stop {
            Stop::Sigterm => daemon.stop_cleanly(),
            Stop::Sigint => {
                let status = daemon.sigint_and_wait();
                assert_eq!(status.code(), Some(0), "{status}:\n{}", daemon.stderr());
            }
            Stop::Kill9 => daemon.kill9(),
        }
        drop(client);
    }
    let mut daemon = setup.serve(&[]);
    let mut client = daemon.client(1);
    model.check(&mut client, "after the last restart");
    drop(client);
    daemon.stop_cleanly();
}

#[test]
fn every_acknowledged_change_survives_sigterm_and_a_restart() {
    acknowledged_changes_survive(Stop::Sigterm);
}

#[test]
fn every_acknowledged_change_survives_sigint_and_a_restart() {
    acknowledged_changes_survive(Stop::Sigint);
}

#[test]
fn every_acknowledged_change_survives_kill_9_and_a_restart() {
    acknowledged_changes_survive(Stop::Kill9);
}

/// Rounds of writes all in flight at once: the daemon drains many chains
/// per kick and appends a drain's writes together. Within a round the
/// writes are disjoint (in-flight writes have no order); across rounds they
/// overwrite each other, aligned or not.
#[test]
fn a_deep_queue_of_writes_in_flight_at_once_reads_back_and_survives_kill_9() {
    const SIZE_BYTES: u64 = 8 * MIB;
    const IN_FLIGHT: u64 = 128;
    const SLOT_BYTES: u64 = SIZE_BYTES / IN_FLIGHT; // one write per slot per round
    let setup = setup(SIZE_BYTES, 4096, &["--segment-size", "1M"]);
    let mut daemon = setup.serve(&["--block-size", "512"]);
    let mut client = daemon.client(1);
    let mut model = Disk::zeros(SIZE_BYTES);
    let mut rng = Rng(7);
    for round in 0..6 {
        let writes: Vec<(u64, Vec<u8>)> = (0..IN_FLIGHT)
            .map(|slot| {
                let len = if rng.below(2) == 0 {
                    (rng.below(SLOT_BYTES / 4096) + 1) * 4096
                } else {
                    (rng.below(16) + 1) * 512
                };
                let within = rng.below((SLOT_BYTES - len) / 512 + 1) * 512;
                (slot * SLOT_BYTES + within, rng.bytes(len as usize))
            })
            .collect();
        for (index, result) in client.write_at_once(0, &writes).into_iter().enumerate() {
            let (offset, data) = &writes[index];
            assert_eq!(
                result,
                Ok(()),
                "round {round}: write {} B at {offset}",
                data.len()
            );
            model.put(*offset, data);
        }
    }
    model.check(&mut client, "after all rounds");
    daemon.kill9(); // still connected: nothing flushed
    drop(client);
    let mut daemon = setup.serve(&[]);
    let mut client = daemon.client(1);
    model.check(&mut client, "after kill -9 and a restart");
    drop(client);
    daemon.stop_cleanly();
}

/// Writes in flight when the daemon stops are each whole or absent after a
/// restart, whether it stopped on SIGTERM (exit 0) or was killed mid-write
/// (recovery cuts torn records): the volume promises atomic writes.
#[test]
fn writes_in_flight_at_sigterm_or_kill_9_are_each_whole_or_absent_after_a_restart() {
    const SLOTS: u64 = 64;
    const SLOT_BYTES: u64 = 128 * KIB; // one write per slot in flight at once
    let setup = setup(SLOTS * SLOT_BYTES, 4096, &["--segment-size", "1M"]);
    let mut disk = vec![0u8; (SLOTS * SLOT_BYTES) as usize]; // as last read
    let mut rng = Rng(9);
    let mut daemon = setup.serve(&["--block-size", "512"]);
    for round in 0..6 {
        let writes: Vec<(u64, Vec<u8>)> = (0..SLOTS)
            .map(|slot| {
                let len = (rng.below(SLOT_BYTES / 512 - 1) + 1) * 512;
                let within = rng.below((SLOT_BYTES - len) / 512 + 1) * 512;
                (slot * SLOT_BYTES + within, rng.bytes(len as usize))
            })
            .collect();
        let mut client = daemon.client(1);
        client.submit_writes(0, &writes);
        std::thread::sleep(Duration::from_millis(rng.below(8)));
        if round % 2 == 0 {
            daemon.stop_cleanly();
        } else {
            daemon.kill9();
        }
        drop(client);
        daemon = setup.serve(&["--block-size", "512"]);
        let mut client = daemon.client(1);
        let now = client.read_large(0, 0, SLOTS * SLOT_BYTES).unwrap();
        for (slot, (offset, data)) in writes.iter().enumerate() {
            let range = slot * SLOT_BYTES as usize..(slot + 1) * SLOT_BYTES as usize;
            let old = &disk[range.clone()];
            let mut new = old.to_vec();
            let at = (*offset as usize) - range.start;
            new[at..at + data.len()].copy_from_slice(data);
            let got = &now[range];
            assert!(
                got == old || got == &new[..],
                "round {round}: the write of {} B at {offset} is torn, or spilled out",
                data.len()
            );
        }
        disk = now;
    }
    daemon.stop_cleanly();
}

/// Peak resident memory of a process, bytes (VmHWM).
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * KIB
}

/// A guest chooses how many requests it keeps in flight, and how large:
/// the daemon must not hold them all in memory at once. Here 85 writes of
/// 4 MiB (340 MiB) are in flight on one queue (libblkio's 256-entry ring,
/// three descriptors a request); a daemon that bounds what it holds per
/// queue stays far below that.
#[test]
fn a_deep_queue_of_4_mib_writes_keeps_the_daemon_under_128_mib() {
    const IN_FLIGHT: u64 = 85;
    const PEAK_BYTES_MAX: u64 = 128 * MIB;
    let setup = setup(IN_FLIGHT * REQUEST_BYTES_MAX, 4096, &[]);
    let mut daemon = setup.serve(&[]);
    let mut client = daemon.client(1);
    let data = Rng(10).bytes(REQUEST_BYTES_MAX as usize);
    client.buffer()[..data.len()].copy_from_slice(&data);
    let offsets: Vec<u64> = (0..IN_FLIGHT).map(|n| n * REQUEST_BYTES_MAX).collect();
    let results = client.write_region_at_once(0, &offsets, data.len());
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let peak = peak_rss_bytes(daemon.pid());
    for offset in [0, (IN_FLIGHT - 1) * REQUEST_BYTES_MAX] {
        let got = client.read(0, offset, data.len()).unwrap();
        assert_same(&got, &data, offset, "a written block");
    }
    assert!(peak < PEAK_BYTES_MAX, "daemon peak RSS {} MiB", peak / MIB);
    drop(client);
    daemon.stop_cleanly();
}
