//! The volume's bucket deleted while the daemon serves it (in a bucket of
//! the test's own: the other tests share the cluster's), then created
//! again, empty. Writes go on into the journal; remote FLUSHes fail at once
//! (`status`: the bucket does not exist); once the bucket is back without the
//! volume's objects the daemon does not upload on (the store would hold a
//! volume with a hole that a remote FLUSH vouches for): it reports that
//! the store lost the volume, and the directory, served without `--store`,
//! holds every write.

use std::time::{Duration, Instant};

use crate::kit::ceph::ceph_sh_ok;
use crate::kit::daemon::Daemon;
use crate::kit::versions::VerifiedLoad;
use crate::refused::status_until;
use crate::{MIB, Setup, for_time};

/// A bucket of the test's own, deleted (with its objects) on drop.
struct OwnBucket(String);

impl OwnBucket {
    fn create() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("lsvblk-gone-{}-{nanos:x}", std::process::id());
        ceph_sh_ok(&["bucket-create", &name]);
        OwnBucket(name)
    }

    fn delete(&self) {
        ceph_sh_ok(&["bucket-rm", &self.0]);
    }

    fn recreate(&self) {
        ceph_sh_ok(&["bucket-create", &self.0]);
    }
}

impl Drop for OwnBucket {
    fn drop(&mut self) {
        let _ = crate::kit::ceph::ceph_sh(&["bucket-rm", &self.0]);
    }
}

/// Asks for a FLUSH and says how long it took and whether it failed.
fn flush_fails(load: &mut VerifiedLoad) -> (bool, Duration) {
    let asked = Instant::now();
    let failed = load.client.as_mut().unwrap().flush(0).is_err();
    (failed, asked.elapsed())
}

#[test]
fn a_deleted_bucket_fails_remote_flushes_and_one_back_empty_is_refused_for_good() {
    let _shared = crate::kit::ceph::cluster().fault_lock(false);
    let bucket = OwnBucket::create();
    let setup = Setup::new_in("bucket-gone", 16 * MIB, &bucket.0);
    let mut daemon = setup.serve(&setup.volume, &["--flush", "remote"]);
    let mut load = VerifiedLoad::new("bucket-gone", daemon.client(1), 8, 30);
    load.precondition();
    load.flush();

    bucket.delete();
    // Writes go on into the journal; a remote FLUSH fails within seconds.
    load.run(&mut for_time(Duration::from_secs(1)));
    assert_eq!((load.io_errors, load.mismatches), (0, 0));
    let (failed, waited) = flush_fails(&mut load);
    assert!(failed, "a remote FLUSH succeeded with the bucket deleted");
    assert!(waited < Duration::from_secs(20), "{waited:?}");
    let status = status_until(&setup, Duration::from_secs(30), |s| {
        s["upload"]["refused"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not exist"))
    });
    assert!(
        status["upload"]["backlog_bytes"].as_u64() > Some(0),
        "{status}"
    );

    // Back, but empty: the store lost the volume. Not uploaded to again.
    bucket.recreate();
    let status = status_until(&setup, Duration::from_secs(60), |s| {
        s["upload"]["refused"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("lost the volume"))
    });
    assert!(
        status["upload"]["backlog_segments"].as_u64() > Some(0),
        "{status}"
    );
    load.run(&mut for_time(Duration::from_secs(1)));
    assert_eq!((load.io_errors, load.mismatches), (0, 0));
    let (failed, waited) = flush_fails(&mut load);
    assert!(failed, "a remote FLUSH succeeded into the emptied bucket");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    let stderr = daemon.stderr();
    assert!(stderr.contains("lost the volume"), "{stderr}");
    assert!(!stderr.contains("uploads resumed"), "{stderr}");
    let uploaded = setup.objects();
    assert!(
        uploaded.is_empty(),
        "uploaded into the emptied bucket: {uploaded:?}"
    );

    // Nothing acknowledged is lost: the directory, served without the
    // store, holds every write.
    // A clean stop cannot upload the rest: it says so (exit 74, EX_IOERR).
    drop(load.client.take());
    let stopped = daemon.sigterm_and_wait();
    assert_eq!(stopped.code(), Some(74), "{stopped}:\n{}", daemon.stderr());
    let mut local = Daemon::start(&setup.volume, &setup.kms, &setup.token, &[]);
    load.client = Some(local.client(1));
    let check = load.verify_disk();
    assert_eq!((check.io_errors, check.mismatches), (0, 0));
    drop(load.client.take());
    local.stop_cleanly();
}
