//! Live migration of a volume kept in the store between two hosts: two
//! daemons with two directories that share nothing but the bucket. The
//! destination's `serve --standby` rebuilds the volume from the store and
//! follows it; when its VMM starts the device it asks the source through
//! the store, the source (its device stopped) seals, checkpoints, uploads
//! the rest and releases its lease, and the destination catches up and
//! claims the next epoch.

use std::time::{Duration, Instant};

use crate::kit::ceph::cluster;
use crate::kit::versions::VerifiedLoad;
use crate::lifecycle::verify_rebuilt;
use crate::{MIB, Setup, for_time};

const HANDOVER_WAIT: Duration = Duration::from_secs(60);

#[test]
fn a_standby_on_another_host_takes_the_volume_over_mid_load() {
    let _shared = cluster().fault_lock(false);
    let setup = Setup::new("migrate", 32 * MIB);
    let mut source = setup.serve(&setup.volume, &["--flush", "remote"]);
    let mut load = VerifiedLoad::new("migrate", source.client(1), 8, 30);
    load.precondition();
    load.run(&mut for_time(Duration::from_secs(2)));
    load.flush();

    // The destination host: its own, empty directory; the standby rebuilds
    // the volume there and follows the writes that go on meanwhile.
    let elsewhere = setup.fresh_dir();
    let mut destination = setup.serve(&elsewhere, &["--standby", "--flush", "remote"]);
    load.run(&mut for_time(Duration::from_secs(3)));
    // No FLUSH since: the last writes are acknowledged, in the source's
    // journal only. The switch-over: the source's VMM stops its device,
    // the destination's starts and sends the next requests.
    drop(load.client.take());
    load.client = Some(destination.client(1));
    let switched = Instant::now();
    load.run(&mut for_time(Duration::from_secs(2)));
    let status = source.wait_exit(HANDOVER_WAIT);
    let stderr = source.stderr();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("a standby on another host asks"),
        "{stderr}"
    );
    assert!(
        stderr.contains("volume handed over to another daemon"),
        "{stderr}"
    );
    assert!(stderr.contains("lease released"), "{stderr}");
    let taken = destination.stderr();
    assert!(taken.contains("standby: rebuilt the volume"), "{taken}");
    assert!(taken.contains("released the volume; claimed it"), "{taken}");
    assert!(taken.contains("took the volume over"), "{taken}");
    assert_eq!(
        (load.io_errors, load.mismatches),
        (0, 0),
        "{:?}\n{taken}",
        load.mismatch_notes
    );
    eprintln!("switch-over and 2 s of load: {:?}", switched.elapsed());

    // Every block the source acknowledged (flushed or not) and every one
    // the destination wrote since is there, on the destination...
    let check = load.verify_disk();
    assert_eq!(
        (check.io_errors, check.mismatches),
        (0, 0),
        "{}",
        destination.stderr()
    );
    assert_eq!(check.verified, setup.size_bytes / 4096);
    // ... under the next epoch (create 1, source 2, destination 3), which
    // fences the source's epoch.
    let status = setup.status(&elsewhere);
    assert_eq!(status["upload"]["epoch"], 3, "{status}");
    load.flush();
    drop(load.client.take());
    destination.stop_cleanly();

    // ... and in the store: a third host rebuilds it from the bucket alone.
    let third = setup.fresh_dir();
    let mut rebuilt = setup.serve(&third, &[]);
    verify_rebuilt(&mut rebuilt, &mut load, setup.size_bytes);
}

#[test]
fn the_source_keeps_the_volume_while_its_device_runs() {
    let _shared = cluster().fault_lock(false);
    let setup = Setup::new("migrate-refused", 32 * MIB);
    let mut source = setup.serve(&setup.volume, &[]);
    let mut running = source.client(1);
    let data = vec![0x5a; MIB as usize];
    running.write(0, 0, &data).unwrap();

    // The destination's device starts while the source's still runs: the
    // source refuses through the store, and the destination's I/O fails
    // with its reason instead of waiting.
    let elsewhere = setup.fresh_dir();
    let mut destination = setup.serve(&elsewhere, &["--standby"]);
    let mut early = destination.client(1);
    assert!(
        early.read(0, 0, 4096).is_err(),
        "the destination served a volume it does not hold"
    );
    source.check_alive();
    running.write(0, MIB, &data).unwrap();
    let stderr = destination.stderr();
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(
        stderr.contains("a VM runs on this daemon's disk"),
        "{stderr}"
    );

    // Once the source's device stops, a next request takes the volume over
    // with everything the source acknowledged.
    drop(running);
    let started = Instant::now();
    let read = loop {
        match early.read(0, MIB, MIB as usize) {
            Ok(read) => break read,
            Err(error) if started.elapsed() > HANDOVER_WAIT => {
                panic!("{error:?}\n{}", destination.stderr())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(read == data, "the destination read other data");
    let status = source.wait_exit(HANDOVER_WAIT);
    assert_eq!(status.code(), Some(0), "{}", source.stderr());
    drop(early);
    destination.stop_cleanly();
}

#[test]
fn a_standby_told_to_stop_does_not_wait_for_a_writer_that_cannot_answer() {
    let _shared = cluster().fault_lock(false);
    let setup = Setup::new("migrate-sigterm", 32 * MIB);
    let mut source = setup.serve(&setup.volume, &[]);
    let mut running = source.client(1);
    running.write(0, 0, &vec![0x5a; MIB as usize]).unwrap();
    let elsewhere = setup.fresh_dir();
    let mut destination = setup.serve(&elsewhere, &["--standby"]);
    // The source cannot answer (stopped, as a hung host would be): the
    // destination's first request waits for its answer, up to a minute.
    let source_pid = source.pid() as libc::pid_t;
    // SAFETY: signals to a child process this test started.
    assert_eq!(unsafe { libc::kill(source_pid, libc::SIGSTOP) }, 0);
    let mut waiting = destination.client(1);
    let destination_pid = destination.pid() as libc::pid_t;
    let signaller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(destination_pid, libc::SIGTERM) }, 0);
        Instant::now()
    });
    assert!(
        waiting.read(0, 0, 4096).is_err(),
        "served without the answer"
    );
    let signalled = signaller.join().unwrap();
    let status = destination.wait_exit(Duration::from_secs(20));
    let stopped_after = signalled.elapsed();
    let stderr = destination.stderr();
    assert!(
        stopped_after < Duration::from_secs(10),
        "the standby took {stopped_after:?} to stop ({status}):\n{stderr}"
    );
    assert!(stderr.contains("took its request back"), "{stderr}");
    drop(waiting);
    // The source goes on as the writer: the request was taken back.
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(source_pid, libc::SIGCONT) }, 0);
    std::thread::sleep(Duration::from_secs(2));
    source.check_alive();
    running.write(0, MIB, &vec![0x6b; MIB as usize]).unwrap();
    assert!(running.read(0, MIB, MIB as usize).unwrap() == vec![0x6b; MIB as usize]);
    drop(running);
    source.stop_cleanly();
}
