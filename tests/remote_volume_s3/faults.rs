//! The cluster failing under a served volume: an OSD killed, radosgw
//! stopped. Each holds the fault lock, so no other test sees the fault.

use std::time::{Duration, Instant};

use crate::kit::ceph::{Fault, cluster};
use crate::kit::versions::VerifiedLoad;
use crate::{MIB, Setup, for_time};

/// Kills the daemon, rebuilds the volume on a new directory and checks
/// every block against the model.
pub fn rebuild_and_verify(
    setup: &Setup,
    daemon: &mut crate::kit::daemon::Daemon,
    load: &mut VerifiedLoad,
) {
    daemon.kill9();
    let mut rebuilt = setup.serve(&setup.fresh_dir(), &["--takeover"]);
    load.client = Some(rebuilt.client(1));
    let check = load.verify_disk();
    assert_eq!((check.io_errors, check.mismatches), (0, 0));
    rebuilt.stop_cleanly();
}

#[test]
fn an_osd_killed_during_writes_loses_nothing() {
    let _exclusive = cluster().fault_lock(true);
    let setup = Setup::new("osd-kill", 32 * MIB);
    let mut daemon = setup.serve(&setup.volume, &["--flush", "remote"]);
    let mut load = VerifiedLoad::new("osd-kill", daemon.client(1), 8, 30);
    load.precondition();
    let fault = Fault::kill_osd(1);
    let mut flushes = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        load.run(&mut for_time(Duration::from_secs(1)));
        load.flush();
        flushes += 1;
    }
    fault.end();
    load.run(&mut for_time(Duration::from_secs(1)));
    load.flush();
    assert_eq!((load.io_errors, load.mismatches), (0, 0));
    assert!(
        flushes >= 2,
        "remote FLUSHes went on while the OSD was down"
    );
    rebuild_and_verify(&setup, &mut daemon, &mut load);
}

#[test]
fn radosgw_stopped_for_30_s_delays_remote_flushes_and_loses_nothing() {
    let _exclusive = cluster().fault_lock(true);
    let setup = Setup::new("rgw-stop", 32 * MIB);
    let mut daemon = setup.serve(&setup.volume, &["--flush", "remote"]);
    let mut load = VerifiedLoad::new("rgw-stop", daemon.client(1), 8, 30);
    load.precondition();
    let fault = Fault::stop_rgw();
    let stopped = Instant::now();
    // Writes go on into the journal.
    load.run(&mut for_time(Duration::from_secs(3)));
    assert_eq!((load.io_errors, load.mismatches), (0, 0));
    let watcher = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            // While the FLUSH waits, `status` shows what waits for upload.
            std::thread::sleep(Duration::from_secs(10));
            let status = setup.status(&setup.volume);
            std::thread::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed()));
            fault.end();
            status
        });
        let flushed = load.client.as_mut().unwrap().flush(0);
        let status = watcher.join().unwrap();
        assert!(
            flushed.is_ok(),
            "FLUSH failed; status {}:\n{}",
            setup.status(&setup.volume),
            daemon.stderr()
        );
        status
    });
    let waited = stopped.elapsed();
    assert!(
        waited >= Duration::from_secs(29),
        "the remote FLUSH returned after {waited:?}, with radosgw down"
    );
    let upload = &watcher["upload"];
    assert!(upload["backlog_segments"].as_u64() > Some(0), "{watcher}");
    assert!(upload["backlog_bytes"].as_u64() > Some(0), "{watcher}");
    rebuild_and_verify(&setup, &mut daemon, &mut load);
}
