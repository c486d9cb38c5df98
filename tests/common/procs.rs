//! Real `lsvkms` and `lsvblk serve` processes for integration tests, all in
//! one temporary directory, never leaked: each process is killed and reaped
//! when its handle drops (a failing assertion included), and should the
//! thread that started it die without dropping it (a test run killed), the
//! kernel kills it (`PR_SET_PDEATHSIG`).
//!
//! Each process's stderr goes to a file in the temporary directory, so tests
//! can assert on what it said and failures can show it.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lsvblk::kms::client::KmsClient;

/// The daemon under test.
pub const LSVBLK: &str = env!("CARGO_BIN_EXE_lsvblk");
/// The key-wrapping service.
pub const LSVKMS: &str = env!("CARGO_BIN_EXE_lsvkms");

/// How long a process may take to come up: generous, as the machine may be
/// busy compiling; a healthy start takes tens of milliseconds.
pub const START_WAIT: Duration = Duration::from_secs(30);
/// How long a process may take to exit once told to (or once it should).
pub const EXIT_WAIT: Duration = Duration::from_secs(30);
/// Between two looks at a starting or exiting process.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// A running `lsvkms serve` and the temporary directory every other file of
/// the test lives in (tokens, volumes, sockets, logs).
pub struct Kms {
    tmp: tempfile::TempDir,
    state_dir: PathBuf,
    socket: PathBuf,
    stderr_path: PathBuf,
    process: Option<Process>,
    names_next: AtomicU32,
}

impl Kms {
    /// `lsvkms init` in a fresh temporary directory, then `lsvkms serve` on a
    /// socket there; returns once the service answers a health check.
    pub fn start() -> Self {
        let tmp = super::fast_tempdir();
        let state_dir = tmp.path().join("kms-state");
        let socket = tmp.path().join("kms.sock");
        let stderr_path = tmp.path().join("lsvkms.stderr");
        let mut kms = Kms {
            tmp,
            state_dir,
            socket,
            stderr_path,
            process: None,
            names_next: AtomicU32::new(0),
        };
        let state = kms.state_dir.to_str().unwrap().to_owned();
        run_to_success(
            LSVKMS,
            &["init", "--dir", &state, "--issuer", "lsvblk-tests"],
        );
        kms.serve();
        kms
    }

    /// `lsvkms serve` on the socket; returns once it answers a health check.
    fn serve(&mut self) {
        let mut command = Command::new(LSVKMS);
        command.args([
            "serve",
            "--dir",
            self.state_dir.to_str().unwrap(),
            "--socket",
            self.socket.to_str().unwrap(),
        ]);
        let mut process = Process::spawn(command, self.stderr_path.clone());
        let client = KmsClient::with_timeout(&self.socket, Duration::from_secs(1));
        process.wait_until("lsvkms to answer a health check", || {
            client.health().is_ok()
        });
        self.process = Some(process);
    }

    /// Starts the service again after [`Kms::stop`] or [`Kms::kill9`], on
    /// the same socket and state (its stderr goes on in the same file).
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "lsvkms is still running");
        self.serve();
    }

    /// The service's state directory (`lsvkms ... --dir`): its keys, audit
    /// log and audit key.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Runs `lsvkms ARGS` to completion, whatever its exit status (`audit
    /// check` exits 2 when it finds something).
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(LSVKMS)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {LSVKMS}: {e}"))
    }

    /// `--kms` as lsvblk takes it.
    pub fn address(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// A path in the temporary directory that nothing has used yet.
    pub fn fresh_path(&self, stem: &str, extension: &str) -> PathBuf {
        let number = self.names_next.fetch_add(1, Ordering::Relaxed);
        self.tmp.path().join(format!("{stem}-{number}.{extension}"))
    }

    /// Issues a token for `user` (valid an hour), writes it to a file and
    /// returns the file's path, for `lsvblk serve --token-file`.
    pub fn token(&self, user: &str) -> PathBuf {
        let state = self.state_dir.to_str().unwrap();
        let output = run_to_success(
            LSVKMS,
            &[
                "token", "issue", "--dir", state, "--user", user, "--ttl", "1h",
            ],
        );
        let path = self.fresh_path(&format!("token-{user}"), "jwt");
        fs::write(&path, output).unwrap();
        path
    }

    /// SIGTERM, then wait for the service to exit; its socket goes with it.
    pub fn stop(&mut self) -> ExitStatus {
        let mut process = self.process.take().expect("lsvkms is running");
        process.signal_and_wait(libc::SIGTERM)
    }

    /// SIGKILL and reap: the service crashes, leaving its socket file.
    pub fn kill9(&mut self) {
        let mut process = self.process.take().expect("lsvkms is running");
        let status = process.signal_and_wait(libc::SIGKILL);
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    }

    /// What the service wrote to stderr so far (also once it has exited).
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// A client of the running service, as a test's own (for its audit
    /// log, or to unwrap a key the way a daemon does).
    pub fn client(&self) -> KmsClient {
        KmsClient::with_timeout(&self.socket, Duration::from_secs(5))
    }
}

/// `lsvblk create` of a `size_bytes` volume readable by the users in `acl`,
/// with `block_bytes` blocks (4096 or 512); returns the volume directory.
pub fn create_volume(kms: &Kms, size_bytes: u64, acl: &[&str], block_bytes: u32) -> PathBuf {
    create_volume_with(kms, size_bytes, acl, block_bytes, &[])
}

/// [`create_volume`] with extra `lsvblk create` arguments (`--segment-size`).
pub fn create_volume_with(
    kms: &Kms,
    size_bytes: u64,
    acl: &[&str],
    block_bytes: u32,
    extra_args: &[&str],
) -> PathBuf {
    let volume = kms.fresh_path("volume", "d");
    let mut args = vec![
        "create".to_owned(),
        "--volume".to_owned(),
        volume.to_str().unwrap().to_owned(),
        "--size".to_owned(),
        size_bytes.to_string(),
        "--acl".to_owned(),
        acl.join(","),
        "--kms".to_owned(),
        kms.address(),
        "--block-size".to_owned(),
        block_bytes.to_string(),
    ];
    args.extend(extra_args.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_to_success(LSVBLK, &args);
    volume
}

/// A running (or exited) `lsvblk serve`.
pub struct Daemon {
    process: Process,
    /// The vhost-user socket it was told to listen on.
    pub socket: PathBuf,
    /// The volume it serves.
    pub volume: PathBuf,
}

impl Daemon {
    /// Starts `lsvblk serve` on a fresh socket and returns once the socket is
    /// listening. Panics, with the daemon's stderr, if it exits first.
    pub fn start(volume: &Path, kms: &Kms, token: &Path, extra_args: &[&str]) -> Self {
        let mut daemon = Self::spawn(volume, kms, token, extra_args);
        let socket = daemon.socket.clone();
        daemon
            .process
            .wait_until("lsvblk to listen on its vhost-user socket", || {
                is_listening(&socket)
            });
        daemon
    }

    /// Starts `lsvblk serve` on a fresh socket and returns at once: for
    /// daemons expected to refuse to serve.
    pub fn spawn(volume: &Path, kms: &Kms, token: &Path, extra_args: &[&str]) -> Self {
        let socket = kms.fresh_path("vhost", "sock");
        let stderr_path = kms.fresh_path("lsvblk", "stderr");
        let mut command = Command::new(LSVBLK);
        command
            .arg("serve")
            .arg("--volume")
            .arg(volume)
            .arg("--socket")
            .arg(&socket)
            .arg("--kms")
            .arg(kms.address())
            .arg("--token-file")
            .arg(token)
            .args(extra_args);
        Daemon {
            process: Process::spawn(command, stderr_path),
            socket,
            volume: volume.to_path_buf(),
        }
    }

    /// SIGTERM, then wait for the exit (the daemon flushes and closes the
    /// volume first). Panics if it takes longer than [`EXIT_WAIT`].
    pub fn sigterm_and_wait(&mut self) -> ExitStatus {
        self.process.signal_and_wait(libc::SIGTERM)
    }

    /// SIGINT (Ctrl-C) and wait for the exit.
    pub fn sigint_and_wait(&mut self) -> ExitStatus {
        self.process.signal_and_wait(libc::SIGINT)
    }

    /// SIGKILL and reap: a crash, with nothing flushed or closed.
    pub fn kill9(&mut self) {
        let status = self.process.signal_and_wait(libc::SIGKILL);
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    }

    /// Waits for a daemon to exit on its own, at most `wait`; panics (with
    /// its stderr) if it is still running then.
    pub fn wait_exit(&mut self, wait: Duration) -> ExitStatus {
        self.process.wait_exit(wait)
    }

    /// The daemon's process id (for /proc).
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// What the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }
}

/// A child process with its stderr in a file; killed and reaped on drop.
struct Process {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    stderr_path: PathBuf,
}

impl Process {
    fn spawn(mut command: Command, stderr_path: PathBuf) -> Self {
        let name = command.get_program().to_string_lossy().into_owned();
        // Appended to: a restarted service goes on in the same file.
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .unwrap();
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the
        // parent, as code between fork and exec must.
        unsafe {
            command.pre_exec(|| {
                // The test thread that started us died (a test binary killed
                // mid-run): take the process with it rather than leak it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process {
            name,
            child,
            status: None,
            stderr_path,
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The exit status, if the process has exited (reaping it).
    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    /// Polls `ready` until it holds; panics with stderr if the process exits
    /// first or [`START_WAIT`] passes.
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + START_WAIT;
        while !ready() {
            if let Some(status) = self.try_status() {
                panic!(
                    "waiting for {what}: {} exited with {status}:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {what}: still not there after {START_WAIT:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn wait_exit(&mut self, wait: Duration) -> ExitStatus {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} still running after {wait:?} (killed it):\n{}",
                    self.name,
                    self.stderr()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn signal_and_wait(&mut self, signal: i32) -> ExitStatus {
        assert!(
            self.try_status().is_none(),
            "{} already exited with {:?}:\n{}",
            self.name,
            self.status,
            self.stderr()
        );
        // SAFETY: kill(2) on our own child, not yet reaped, so its pid cannot
        // have been reused.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
        self.wait_exit(EXIT_WAIT)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `lsvblk ARGS` to completion, whatever its exit status, and returns
/// its status, stdout and stderr: for the administrative commands
/// (`snapshot`, `acl`, `clone`, `compact`, `status`, `inspect`).
pub fn run_lsvblk(args: &[&str]) -> std::process::Output {
    Command::new(LSVBLK)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {LSVBLK}: {e}"))
}

/// Runs a command to completion; panics with its stderr unless it succeeds.
/// Returns its stdout.
fn run_to_success(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} exited with {}:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// True when a UNIX socket is bound at `path` and listening. The file alone
/// is not enough: bind creates it before listen, and a crashed daemon leaves
/// it behind. Linux lists listening sockets in /proc/net/unix (flags
/// `00010000` = __SO_ACCEPTCON), with their path last.
pub fn is_listening(path: &Path) -> bool {
    let is_socket = fs::metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if !is_socket {
        return false;
    }
    let Ok(table) = fs::read_to_string("/proc/net/unix") else {
        return true; // no /proc: the socket file is the best we have
    };
    let wanted = path.to_str().unwrap();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() >= 8 && fields[3] == "00010000" && fields[7] == wanted
    })
}
