//! Processes the benchmarks start: daemons (lsvblk, lsvkms, QSD) with their
//! logs, a key service with a token, and short tool runs.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The benchmark's name (the bench target), for messages.
const BENCH: &str = env!("CARGO_CRATE_NAME");
/// How long a daemon may take to exit after SIGTERM before it is killed.
pub const STOP_WAIT: Duration = Duration::from_secs(60);
/// How long a daemon may take to listen on its socket.
pub const CONNECT_WAIT: Duration = Duration::from_secs(30);
/// The user the key service issues the benchmark's token for.
pub const USER: &str = "bench";

/// A daemon started by a benchmark, stopped (SIGTERM) when dropped.
pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
    /// Whether a non-zero exit after SIGTERM is worth a warning.
    clean_exit_expected: bool,
}

impl Daemon {
    pub fn spawn(
        name: &str,
        command: &mut Command,
        log: PathBuf,
        clean_exit_expected: bool,
    ) -> Self {
        let out = File::create(&log).expect("daemon log");
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Daemon {
            name: name.to_owned(),
            child,
            log,
            clean_exit_expected,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics with the daemon's log if it has exited.
    pub fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}); its log:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Daemon {
    /// SIGTERM, wait (SIGKILL after [`STOP_WAIT`]); warns with the log if a
    /// clean exit was expected and did not happen.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_WAIT;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    eprintln!("{BENCH} bench: {} ignored SIGTERM; killing it", self.name);
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        if self.clean_exit_expected && !status.is_some_and(|s| s.success()) {
            eprintln!(
                "{BENCH} bench: WARNING: {} did not exit cleanly ({status:?}); its log:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running lsvkms with a token for [`USER`].
pub struct Kms {
    /// Its UNIX socket.
    pub socket: PathBuf,
    /// A file holding a token for [`USER`].
    pub token_file: PathBuf,
    _daemon: Daemon,
}

impl Kms {
    pub fn start(lsvkms: &Path, dir: &Path) -> Self {
        let state = dir.join("kms");
        run_tool(Command::new(lsvkms).arg("init").arg("--dir").arg(&state));
        let socket = dir.join("kms.sock");
        let daemon = Daemon::spawn(
            "lsvkms",
            Command::new(lsvkms)
                .arg("serve")
                .arg("--dir")
                .arg(&state)
                .arg("--socket")
                .arg(&socket),
            dir.join("lsvkms.log"),
            false,
        );
        wait_for_socket(&socket, CONNECT_WAIT);
        let token = run_tool(
            Command::new(lsvkms)
                .args(["token", "issue", "--user", USER, "--ttl", "1h", "--dir"])
                .arg(&state),
        );
        let token_file = dir.join("token");
        std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&token_file)
            .and_then(|mut f| f.write_all(token.trim().as_bytes()))
            .expect("write token file");
        Kms {
            socket,
            token_file,
            _daemon: daemon,
        }
    }
}

/// Runs a short command to completion; returns its stdout, panics on failure.
pub fn run_tool(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// Waits until something listens on `socket`.
pub fn wait_for_socket(socket: &Path, wait: Duration) {
    let deadline = Instant::now() + wait;
    while UnixStream::connect(socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {} after {wait:?}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
