//! The systemd units, and the sd_notify readiness protocol of both daemons
//! received on a test `NOTIFY_SOCKET` (a UNIX datagram socket of the test,
//! as systemd makes for a `Type=notify` unit).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::kit::cli::Lsvblk;
use super::kit::daemon::{Daemon, ServeOptions, create_volume, is_listening};
use super::kit::dirs::fast_tempdir;
use super::kit::kms::{Kms, LSVKMS};
use super::kit::process::Process;
use super::{have, repo};

/// `systemd-analyze verify` of the units in `dir` (an instance of the
/// template too); panics with what it said unless it has nothing to say.
/// It needs no running systemd: it loads the units the way systemd would.
pub fn verify_units(dir: &Path) {
    assert!(
        have("systemd-analyze"),
        "systemd-analyze is missing (Debian package systemd)"
    );
    let instance = dir.join("lsvblk@vm1.service");
    if !instance.exists() {
        std::os::unix::fs::symlink("lsvblk@.service", &instance).unwrap();
    }
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("lsvkms.service"))
        .arg(&instance)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        output.status
    );
}

#[test]
fn units_pass_systemd_analyze_verify_and_are_hardened() {
    let tmp = fast_tempdir();
    let bin_dir = Path::new(LSVKMS).parent().unwrap().to_str().unwrap();
    for unit in ["lsvkms.service", "lsvblk@.service"] {
        let text = std::fs::read_to_string(repo().join("packaging/systemd").join(unit)).unwrap();
        for setting in [
            "Type=notify",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "LimitCORE=0",
            "LockPersonality=yes",
            "RestrictAddressFamilies=AF_UNIX\n",
            "MemoryDenyWriteExecute=yes",
            "SystemCallFilter=@system-service",
        ] {
            assert!(text.contains(setting), "{unit} lacks {setting}");
        }
        // Point ExecStart at this build, which systemd-analyze checks exists.
        let text = text.replace("/usr/local/bin", bin_dir);
        std::fs::write(tmp.path().join(unit), text).unwrap();
    }
    verify_units(tmp.path());
}

/// The test's end of `NOTIFY_SOCKET`.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket { socket, path }
    }

    /// The next message, or None if none arrives within `wait`.
    fn receive(&self, wait: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(wait)).unwrap();
        let mut buffer = [0u8; 4096];
        match self.socket.recv(&mut buffer) {
            Ok(n) => Some(String::from_utf8_lossy(&buffer[..n]).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("notify socket: {e}"),
        }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

fn assert_has(message: &str, state: &str) {
    assert!(
        message.lines().any(|l| l == state),
        "no {state} in {message:?}"
    );
}

#[test]
fn lsvkms_says_ready_once_its_socket_listens_and_stopping_on_sigterm() {
    let notify_dir = fast_tempdir();
    let notify = NotifySocket::bind(notify_dir.path());
    let kms = Kms::init(&[], Vec::new());
    let mut command = Command::new(LSVKMS);
    command
        .args(["serve", "--dir"])
        .arg(kms.state_dir())
        .arg("--socket")
        .arg(kms.socket())
        .env("NOTIFY_SOCKET", notify.path());
    let mut process = Process::spawn("lsvkms", command, kms.fresh_path("lsvkms", "stderr"));
    let ready = notify
        .receive(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no READY=1:\n{}", process.stderr()));
    // Checked the instant READY=1 arrives: the socket must already listen.
    assert!(
        is_listening(kms.socket()),
        "READY=1 before the socket listens"
    );
    assert_has(&ready, "READY=1");
    assert!(ready.contains("STATUS=serving on"), "{ready}");
    assert!(kms.client().health().is_ok());
    assert_eq!(notify.receive(Duration::from_millis(200)), None);

    let status = process.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "{status}: {}", process.stderr());
    assert_has(
        &notify.receive(Duration::from_secs(1)).unwrap(),
        "STOPPING=1",
    );
}

#[test]
fn lsvblk_says_ready_only_once_its_vhost_socket_listens_and_stopping_on_sigterm() {
    let mut kms = Kms::start();
    let volume = create_volume(&kms, 16 << 20, &["alice"], 4096);
    let token = kms.token("alice");
    // lsvkms is down: the daemon waits for its key, and must not say ready.
    kms.stop();
    let notify = NotifySocket::bind(kms.dir());
    let options = ServeOptions {
        lsvblk: Lsvblk::this_build().with_env("NOTIFY_SOCKET", notify.path()),
        ..ServeOptions::args(&["--kms-timeout", "120s"])
    };
    let mut daemon = Daemon::spawn_with(&volume, &kms, &token, &options);
    let early = notify.receive(Duration::from_secs(2));
    daemon.check_alive();
    assert_eq!(early, None, "notified while waiting for lsvkms");
    assert!(!is_listening(&daemon.socket));

    kms.serve();
    let started = Instant::now();
    let ready = notify
        .receive(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no READY=1:\n{}", daemon.stderr()));
    assert!(
        is_listening(&daemon.socket),
        "READY=1 before the socket listens"
    );
    assert_has(&ready, "READY=1");
    eprintln!("READY=1 {:?} after lsvkms came back", started.elapsed());
    let client = daemon.client(1);
    assert_eq!(client.capacity(), 16 << 20);
    drop(client);

    let status = daemon.sigterm_and_wait();
    assert!(status.success(), "{status}: {}", daemon.stderr());
    assert_has(
        &notify.receive(Duration::from_secs(1)).unwrap(),
        "STOPPING=1",
    );
}
