//! A real `lsvblk serve`, and the volumes it serves, made by `lsvblk
//! create`. Its stderr goes to a file next to its [`Kms`]'s, so that tests
//! can assert on what it said and failures can show it.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use super::blkio::{BlkClient, ClientOptions};
use super::cli::{Lsvblk, run_to_success};
use super::kms::Kms;
use super::process::{OnDrop, Process};

/// How long a test's client keeps retrying to connect to a started daemon.
pub const CONNECT_WAIT: Duration = Duration::from_secs(10);

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
    let block_bytes = block_bytes.to_string();
    let mut args = vec!["--block-size", &block_bytes];
    args.extend_from_slice(extra_args);
    create_volume_using(&Lsvblk::this_build(), kms, size_bytes, acl, &args)
}

/// `lsvblk create --volume NEW --size SIZE --acl ACL --kms KMS ARGS` with
/// the `lsvblk` of `lsvblk`; returns the new volume directory (in the
/// KMS's directory).
pub fn create_volume_using(
    lsvblk: &Lsvblk,
    kms: &Kms,
    size_bytes: u64,
    acl: &[&str],
    args: &[&str],
) -> PathBuf {
    let volume = kms.fresh_path("volume", "d");
    let (size, acl, address) = (size_bytes.to_string(), acl.join(","), kms.address());
    let mut all = vec!["create", "--volume", volume.to_str().unwrap()];
    all.extend(["--size", &size, "--acl", &acl, "--kms", &address]);
    all.extend_from_slice(args);
    run_to_success(&mut lsvblk.command(&all));
    volume
}

/// How to run `lsvblk serve`, beyond the volume, lsvkms and the token.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The `lsvblk` to run, with its environment (e.g. `RUST_LOG`).
    pub lsvblk: Lsvblk,
    /// Extra `lsvblk serve` arguments.
    pub args: Vec<String>,
    /// What messages call the daemon.
    pub name: String,
    /// What dropping the [`Daemon`] while it runs does.
    pub on_drop: OnDrop,
    /// Where a core goes if the daemon dies of a signal, and whether it
    /// gets `--allow-core-dumps` ([`super::core::arrange_core`]); `None`:
    /// the process limits as they are.
    pub core: Option<(PathBuf, bool)>,
}

impl ServeOptions {
    /// This build's `lsvblk` with `args`, killed if dropped while it runs:
    /// what tests want.
    pub fn args(args: &[&str]) -> Self {
        ServeOptions {
            lsvblk: Lsvblk::this_build(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            name: "lsvblk".to_owned(),
            on_drop: OnDrop::Kill,
            core: None,
        }
    }
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
        Self::start_with(volume, kms, token, &ServeOptions::args(extra_args))
    }

    /// [`Daemon::start`] with `options`.
    pub fn start_with(volume: &Path, kms: &Kms, token: &Path, options: &ServeOptions) -> Self {
        let mut daemon = Self::spawn_with(volume, kms, token, options);
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
        Self::spawn_with(volume, kms, token, &ServeOptions::args(extra_args))
    }

    /// [`Daemon::spawn`] with `options`.
    pub fn spawn_with(volume: &Path, kms: &Kms, token: &Path, options: &ServeOptions) -> Self {
        Self::spawn_as(volume, kms, Some(token), options)
    }

    /// `lsvblk serve --ephemeral --size SIZE --volume DIR` (no lsvkms, no
    /// token), its socket and stderr beside `kms`'s files; returns once it
    /// listens.
    pub fn start_ephemeral(kms: &Kms, dir: &Path, size: &str) -> Self {
        let socket = kms.fresh_path("vhost", "sock");
        let stderr_path = kms.fresh_path("lsvblk-ephemeral", "stderr");
        let mut command = Lsvblk::this_build().command(&["serve", "--ephemeral", "--size", size]);
        command
            .arg("--volume")
            .arg(dir)
            .arg("--socket")
            .arg(&socket);
        let process = Process::spawn("lsvblk --ephemeral", command, stderr_path);
        let mut daemon = Daemon {
            process,
            socket,
            volume: dir.to_path_buf(),
        };
        daemon.wait_listening();
        daemon
    }

    /// `lsvblk serve` without `--token-file` (it unwraps with the leases
    /// kept in the volume); returns at once, as [`Daemon::spawn`].
    pub fn spawn_without_token(volume: &Path, kms: &Kms, extra_args: &[&str]) -> Self {
        Self::spawn_as(volume, kms, None, &ServeOptions::args(extra_args))
    }

    /// Waits until the daemon listens on its socket (panics, with its
    /// stderr, if it exits first).
    pub fn wait_listening(&mut self) {
        let socket = self.socket.clone();
        self.process
            .wait_until("lsvblk to listen on its vhost-user socket", || {
                is_listening(&socket)
            });
    }

    fn spawn_as(volume: &Path, kms: &Kms, token: Option<&Path>, options: &ServeOptions) -> Self {
        let socket = kms.fresh_path("vhost", "sock");
        let stderr_path = kms.fresh_path("lsvblk", "stderr");
        let mut command = options.lsvblk.command(&["serve"]);
        command
            .arg("--volume")
            .arg(volume)
            .arg("--socket")
            .arg(&socket)
            .arg("--kms")
            .arg(kms.address())
            .args(
                token
                    .iter()
                    .flat_map(|t| [std::ffi::OsStr::new("--token-file"), t.as_os_str()]),
            )
            .args(&options.args);
        if let Some((dir, allow)) = &options.core {
            super::core::arrange_core(&mut command, dir, *allow);
        }
        let mut process = Process::spawn(&options.name, command, stderr_path);
        process.set_on_drop(options.on_drop);
        Daemon {
            process,
            socket,
            volume: volume.to_path_buf(),
        }
    }

    /// A client of the daemon with `num_queues` queues (retrying for
    /// [`CONNECT_WAIT`]); panics with the daemon's stderr if it cannot
    /// connect.
    pub fn client(&self, num_queues: i32) -> BlkClient {
        BlkClient::connect(&self.socket, num_queues, CONNECT_WAIT)
            .unwrap_or_else(|e| panic!("connect: {e}\ndaemon stderr:\n{}", self.stderr()))
    }

    /// A read-only client (libblkio's `read-only` set) with `num_queues`
    /// queues, as [`Daemon::client`].
    pub fn client_read_only(&self, num_queues: i32) -> BlkClient {
        BlkClient::connect_read_only(&self.socket, num_queues, CONNECT_WAIT)
            .unwrap_or_else(|e| panic!("connect: {e}\ndaemon stderr:\n{}", self.stderr()))
    }

    /// A client with `options`, retrying for up to `wait` while the daemon
    /// runs; panics (with its stderr) if the daemon exits or the time is up.
    pub fn client_with(&mut self, options: &ClientOptions, wait: Duration) -> BlkClient {
        let socket = self.socket.clone();
        let process = &mut self.process;
        let connected =
            BlkClient::connect_retrying(&socket, options, wait, &mut || process.check_alive());
        connected.unwrap_or_else(|e| panic!("connect: {e}\ndaemon stderr:\n{}", self.stderr()))
    }

    /// SIGTERM, then wait for the exit (the daemon flushes and closes the
    /// volume first). Panics if it takes longer than
    /// [`super::process::EXIT_WAIT`].
    pub fn sigterm_and_wait(&mut self) -> ExitStatus {
        self.process.signal_and_wait(libc::SIGTERM)
    }

    /// SIGTERM, and the exit must be 0 (with the daemon's stderr if not).
    pub fn stop_cleanly(&mut self) {
        let status = self.sigterm_and_wait();
        assert_eq!(status.code(), Some(0), "{status}:\n{}", self.stderr());
    }

    /// SIGINT (Ctrl-C) and wait for the exit.
    pub fn sigint_and_wait(&mut self) -> ExitStatus {
        self.process.signal_and_wait(libc::SIGINT)
    }

    /// SIGKILL and reap: a crash, with nothing flushed or closed.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Stops the daemon as [`Process::stop`] does (never panics).
    pub fn stop(&mut self, clean_exit_expected: bool) {
        self.process.stop(clean_exit_expected);
    }

    /// Waits for a daemon to exit on its own, at most `wait`; panics (with
    /// its stderr) if it is still running then.
    pub fn wait_exit(&mut self, wait: Duration) -> ExitStatus {
        self.process.wait_exit(wait)
    }

    /// Panics, with its stderr, if the daemon has exited.
    pub fn check_alive(&mut self) {
        self.process.check_alive();
    }

    /// The daemon's process id (for /proc).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// What the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// The daemon as a plain process (for a benchmark that treats it like
    /// any other vhost-user-blk server).
    pub fn into_process(self) -> Process {
        self.process
    }
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
