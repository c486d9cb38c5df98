//! The store refusing a served volume's uploads: the access key the daemon
//! signs with is revoked while it serves (`radosgw-admin key rm`), then
//! restored. Remote FLUSHes must fail at once (an I/O error to the guest,
//! not a wait of --store-wait), the refusal must show in `status`, in the
//! metrics and once in the log, and uploads must resume by themselves once
//! the key is back, with nothing lost.

use std::time::{Duration, Instant};

use crate::faults::rebuild_and_verify;
use crate::kit::ceph::{ceph_sh, ceph_sh_ok, cluster};
use crate::kit::versions::VerifiedLoad;
use crate::scrape::Scrape;
use crate::{MIB, Setup, for_time, write_private};

/// The log line of a refusal (logged once, however often it is retried).
const REFUSED_LINE: &str = "the object store refuses the volume's uploads";

/// A key pair of the cluster's S3 user, revoked again on drop.
struct ExtraKey {
    access: String,
    secret: String,
}

impl ExtraKey {
    fn add() -> Self {
        let mut random = [0u8; 30];
        getrandom::fill(&mut random).unwrap();
        let key = ExtraKey {
            access: hex::encode(&random[..10]).to_uppercase(),
            secret: hex::encode(&random[10..]),
        };
        key.restore();
        key
    }

    fn revoke(&self) {
        ceph_sh_ok(&["key-rm", &self.access]);
    }

    fn restore(&self) {
        ceph_sh_ok(&["key-add", &self.access, &self.secret]);
    }
}

impl Drop for ExtraKey {
    fn drop(&mut self) {
        let _ = ceph_sh(&["key-rm", &self.access]);
    }
}

/// Polls `status` of the daemon serving the setup's volume until `done`
/// says yes (panics after `wait`); returns that status.
pub(crate) fn status_until(
    setup: &Setup,
    wait: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let status = setup.status(&setup.volume);
        if done(&status) {
            return status;
        }
        assert!(
            start.elapsed() < wait,
            "still not so after {wait:?}: {status}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn revoked_credentials_fail_remote_flushes_at_once_and_uploads_resume_when_restored() {
    // Only this test's own key is revoked: other tests go on.
    let _shared = cluster().fault_lock(false);
    let setup = Setup::new("refused", 16 * MIB);
    let key = ExtraKey::add();
    let text = format!(
        "AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\n",
        key.access, key.secret
    );
    write_private(&setup.credentials, &text);
    let metrics = setup.kms.fresh_path("metrics", "sock");
    let metrics_arg = metrics.to_str().unwrap();
    let mut daemon = setup.serve(
        &setup.volume,
        &["--flush", "remote", "--metrics", metrics_arg],
    );
    let mut load = VerifiedLoad::new("refused", daemon.client(1), 8, 30);
    load.precondition();
    load.flush();
    assert_eq!(
        Scrape::from(&metrics).get("lsvblk_upload_store_refusing"),
        0.0
    );

    key.revoke();
    // Writes go on into the journal.
    load.run(&mut for_time(Duration::from_secs(1)));
    assert_eq!((load.io_errors, load.mismatches), (0, 0));
    let asked = Instant::now();
    let flushed = load.client.as_mut().unwrap().flush(0);
    let waited = asked.elapsed();
    assert!(
        flushed.is_err(),
        "a remote FLUSH succeeded with the key revoked"
    );
    assert!(
        waited < Duration::from_secs(20),
        "the refused FLUSH took {waited:?} (--store-wait is 5 min)"
    );
    // Retried every 10 s, reported as a refusal all along.
    let status = status_until(&setup, Duration::from_secs(60), |s| {
        s["upload"]["refused"]["attempts"].as_u64() >= Some(3)
    });
    let refusal = &status["upload"]["refused"];
    let error = refusal["error"].as_str().unwrap();
    assert!(error.contains("InvalidAccessKeyId"), "{status}");
    assert!(!error.contains(&key.secret), "{status}");
    let scrape = Scrape::from(&metrics);
    assert_eq!(scrape.get("lsvblk_upload_store_refusing"), 1.0);
    assert_eq!(scrape.get("lsvblk_upload_failing"), 1.0);
    assert!(scrape.get("lsvblk_upload_backlog_bytes") > 0.0);
    // A FLUSH during the refusal fails at once too.
    let asked = Instant::now();
    assert!(load.client.as_mut().unwrap().flush(0).is_err());
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    let stderr = daemon.stderr();
    assert_eq!(stderr.matches(REFUSED_LINE).count(), 1, "{stderr}");
    assert!(!stderr.contains(&key.secret));

    key.restore();
    status_until(&setup, Duration::from_secs(60), |s| {
        s["upload"]["refused"].is_null() && s["upload"]["backlog_segments"] == 0
    });
    load.run(&mut for_time(Duration::from_secs(1)));
    load.flush();
    assert_eq!((load.io_errors, load.mismatches), (0, 0));
    let scrape = Scrape::from(&metrics);
    assert_eq!(scrape.get("lsvblk_upload_store_refusing"), 0.0);
    assert_eq!(scrape.get("lsvblk_upload_failing"), 0.0);
    let stderr = daemon.stderr();
    assert_eq!(stderr.matches(REFUSED_LINE).count(), 1, "{stderr}");
    assert!(stderr.contains("uploads resumed"), "{stderr}");

    // The host lost: everything flushed is in the store.
    rebuild_and_verify(&setup, &mut daemon, &mut load);
}
