//! A live migration's hand-over between two daemons on one volume, with
//! libblkio as each side's VMM: `lsvblk serve --standby` takes the volume over
//! when its client starts the device, from the daemon serving it, which hands
//! it over (flush, checkpoint, unlock) and exits 0 — but only once nothing
//! runs on its own device.

use std::time::{Duration, Instant};

use super::kit::data::assert_same;
use super::kit::rng::Rng;
use super::{MIB, setup};

const HANDOVER_WAIT: Duration = Duration::from_secs(20);

#[test]
fn a_standby_daemon_takes_the_volume_over_and_the_source_exits() {
    let setup = setup(8 * MIB, 4096, &[]);
    let mut source = setup.serve(&[]);
    let before = Rng(70).bytes(MIB as usize);
    let mut client = source.client(1);
    client.write(0, MIB, &before).unwrap();
    drop(client); // the source's VM stopped its device (migration switch-over)

    let mut destination = setup.serve(&["--standby"]);
    source.check_alive(); // standby touches nothing until its device starts
    let mut client = destination.client(1);
    assert_same(
        &client.read(0, MIB, MIB as usize).unwrap(),
        &before,
        MIB,
        "read on the destination",
    );
    let after = Rng(71).bytes(MIB as usize);
    client.write(0, 3 * MIB, &after).unwrap();

    let status = source.wait_exit(HANDOVER_WAIT);
    assert_eq!(status.code(), Some(0), "{}", source.stderr());
    assert!(
        source
            .stderr()
            .contains("volume handed over to another daemon"),
        "{}",
        source.stderr()
    );
    assert!(
        destination.stderr().contains("took the volume over"),
        "{}",
        destination.stderr()
    );
    drop(client);
    destination.stop_cleanly();

    // What the destination wrote is on the volume, for the next daemon.
    let mut next = setup.serve(&[]);
    let mut client = next.client(1);
    assert_same(
        &client.read(0, 3 * MIB, MIB as usize).unwrap(),
        &after,
        3 * MIB,
        "after the destination stopped",
    );
    drop(client);
    next.stop_cleanly();
}

#[test]
fn the_source_keeps_the_volume_while_its_device_runs() {
    let setup = setup(8 * MIB, 4096, &[]);
    let mut source = setup.serve(&[]);
    let mut running = source.client(1);
    let data = Rng(72).bytes(MIB as usize);
    running.write(0, 0, &data).unwrap();

    // The destination's device starts while the source's still runs: the
    // source refuses the hand-over and the destination's I/O fails.
    let mut destination = setup.serve(&["--standby"]);
    let mut early = destination.client(1);
    assert!(
        early.read(0, 0, 4096).is_err(),
        "the destination served a volume it does not hold"
    );
    source.check_alive();
    running.write(0, MIB, &data).unwrap();
    assert_same(
        &running.read(0, MIB, MIB as usize).unwrap(),
        &data,
        MIB,
        "the source after the refusal",
    );
    assert!(
        destination
            .stderr()
            .contains("a VM runs on this daemon's disk"),
        "{}",
        destination.stderr()
    );

    // Once the source's device stops (its client is gone: the source sees
    // the hang-up a moment later), a next request takes the volume over.
    drop(running);
    let started = Instant::now();
    let read = loop {
        match early.read(0, MIB, MIB as usize) {
            Ok(read) => break read,
            Err(error) if started.elapsed() > HANDOVER_WAIT => {
                panic!("{error:?}\n{}", destination.stderr())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert_same(
        &read,
        &data,
        MIB,
        "the destination after the source stopped",
    );
    let status = source.wait_exit(HANDOVER_WAIT);
    assert_eq!(status.code(), Some(0), "{}", source.stderr());
    drop(early);
    destination.stop_cleanly();
}

#[test]
fn a_daemon_starting_while_a_status_reads_the_volume_waits_for_it() {
    let setup = setup(8 * MIB, 4096, &[]);
    let mut first = setup.serve(&[]);
    let data = Rng(72).bytes(MIB as usize);
    first.client(1).write(0, 0, &data).unwrap();
    first.stop_cleanly();
    // Between two daemons (a restart, a hand-over) `lsvblk status` opens
    // the volume read-only: it holds the lock shared for a moment.
    let reader = lsvblk::volume::VolumeLock::acquire(&first.volume, true).unwrap();
    let released = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        drop(reader);
    });
    // The next daemon waits for the reader instead of exiting 75.
    let mut next = setup.serve(&[]);
    released.join().unwrap();
    next.check_alive();
    assert_same(
        &next.client(1).read(0, 0, MIB as usize).unwrap(),
        &data,
        0,
        "after the reader let go",
    );
    next.stop_cleanly();
}
