//! `lsvblk serve` against a key service that is not there yet, and the
//! daemon's sockets and files against other local users.

mod kit;

use std::time::{Duration, Instant};

use kit::daemon::{Daemon, create_volume, is_listening};
use kit::kms::Kms;

const MIB: u64 = 1 << 20;

/// lsvkms restarting (down for a second) while a daemon starts: the daemon
/// retries until it answers, then serves.
#[test]
fn serve_waits_for_an_lsvkms_that_comes_back_within_the_kms_timeout() {
    let mut kms = Kms::start();
    let volume = create_volume(&kms, MIB, &["alice"], 4096);
    let token = kms.token("alice");
    kms.stop();
    let started = Instant::now();
    let mut daemon = Daemon::spawn(&volume, &kms, &token, &["--kms-timeout", "60s"]);
    std::thread::sleep(Duration::from_millis(1500));
    kms.serve();
    let socket = daemon.socket.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !is_listening(&socket) {
        assert!(
            Instant::now() < deadline,
            "daemon never served:\n{}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(
        daemon.stderr().contains("retrying"),
        "it said it was retrying:\n{}",
        daemon.stderr()
    );
    assert!(daemon.sigterm_and_wait().success());
}
