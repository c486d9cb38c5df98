//! What `lsvblk serve` refuses before it serves (a user not on the ACL,
//! lsvkms down, a volume served already) and `lsvblk create` before it asks
//! for a key: the exit code, the reason, and no socket.

use std::time::{Duration, Instant};

use super::durability::Stop;
use super::kit::cli::{LSVBLK, exit};
use super::kit::daemon::Daemon;
use super::kit::process::EXIT_WAIT;
use super::{MIB, setup};

#[test]
fn a_token_of_a_user_not_on_the_acl_exits_77_without_creating_the_socket() {
    let setup = setup(MIB, 4096, &[]);
    let mallory = setup.kms.token("mallory");
    let mut daemon = Daemon::spawn(&setup.volume, &setup.kms, &mallory, &[]);
    let status = daemon.wait_exit(EXIT_WAIT);
    let stderr = daemon.stderr();
    assert_eq!(status.code(), Some(exit::DENIED), "{status}:\n{stderr}");
    assert!(
        stderr.contains("not_on_acl"),
        "stderr names the reason:\n{stderr}"
    );
    assert!(
        stderr.contains("mallory"),
        "stderr names the user:\n{stderr}"
    );
    assert!(!daemon.socket.exists(), "socket file created");
}

#[test]
fn with_lsvkms_stopped_or_crashed_serve_retries_then_exits_69_without_creating_the_socket() {
    // Stopped: its socket is gone. Crashed: its socket file is left behind
    // and refuses connections.
    for stop in [Stop::Sigterm, Stop::Kill9] {
        let mut setup = setup(MIB, 4096, &[]);
        match stop {
            Stop::Sigterm | Stop::Sigint => {
                let status = setup.kms.stop();
                assert!(status.success(), "lsvkms stop: {status}");
            }
            Stop::Kill9 => setup.kms.kill9(),
        }
        let started = Instant::now();
        let mut daemon = Daemon::spawn(
            &setup.volume,
            &setup.kms,
            &setup.token,
            &["--kms-timeout", "2s"],
        );
        let status = daemon.wait_exit(EXIT_WAIT);
        let elapsed = started.elapsed();
        let stderr = daemon.stderr();
        let code = status.code();
        assert_eq!(code, Some(exit::KMS_UNAVAILABLE), "{status}:\n{stderr}");
        // It retried until --kms-timeout, then gave up.
        assert!(
            elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(8),
            "took {elapsed:?}"
        );
        assert!(
            stderr.contains("unavailable"),
            "stderr names the reason:\n{stderr}"
        );
        assert!(!daemon.socket.exists(), "socket file created");
    }
}

// --- One daemon per volume ----------------------------------------------------

#[test]
fn a_second_serve_of_a_volume_exits_75_while_the_first_serves_on() {
    let setup = setup(MIB, 4096, &[]);
    let mut first = setup.serve(&[]);
    let mut second = Daemon::spawn(&setup.volume, &setup.kms, &setup.token, &[]);
    let status = second.wait_exit(EXIT_WAIT);
    let stderr = second.stderr();
    assert_eq!(status.code(), Some(exit::BUSY), "{status}:\n{stderr}");
    assert!(
        stderr.contains("in use"),
        "stderr names the reason:\n{stderr}"
    );
    assert!(!second.socket.exists(), "socket file created");

    let mut client = first.client(1);
    client.write(0, 0, &[9; 4096]).unwrap();
    assert_eq!(client.read(0, 0, 4096).unwrap(), vec![9; 4096]);
    drop(client);
    first.stop_cleanly();
}

/// "Refuse a used directory before a data key is generated": the check comes
/// before lsvkms is asked (here there is no lsvkms at all, so asking would
/// exit 69 instead of 64).
#[test]
fn create_refuses_a_non_empty_directory_before_asking_for_a_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious"), b"data").unwrap();
    let output = std::process::Command::new(LSVBLK)
        .args([
            "create",
            "--size",
            "1M",
            "--acl",
            "alice",
            "--kms",
            "unix:/nonexistent.sock",
            "--volume",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(exit::USAGE),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("not empty"));
    assert_eq!(std::fs::read(dir.path().join("precious")).unwrap(), b"data");
}
