//! A child process with its stderr in a file, never leaked: it is stopped
//! and reaped when its handle drops (a failing assertion included), and
//! should the thread that started it die without dropping it (a test run
//! killed), the kernel kills it (`PR_SET_PDEATHSIG`).

use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a process may take to come up: generous, as the machine may be
/// busy compiling; a healthy start takes tens of milliseconds.
pub const START_WAIT: Duration = Duration::from_secs(30);
/// How long a process may take to exit once told to (or once it should).
pub const EXIT_WAIT: Duration = Duration::from_secs(30);
/// How long a benchmark's daemon may take to exit after SIGTERM (it may
/// have gigabytes to flush) before it is killed.
pub const STOP_WAIT: Duration = Duration::from_secs(60);
/// Between two looks at a starting or exiting process.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Who starts processes, for messages: the test or bench target.
const OWNER: &str = env!("CARGO_CRATE_NAME");

/// What dropping a [`Process`] that still runs does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDrop {
    /// SIGKILL and reap, at once: what a test wants when an assertion
    /// failed halfway.
    Kill,
    /// SIGTERM, wait up to [`STOP_WAIT`] (then SIGKILL): a benchmark's
    /// daemons flush and exit as they would in production. With
    /// `clean_exit_expected`, an exit other than 0 prints a warning with the
    /// process's stderr.
    Terminate {
        /// Whether a non-zero exit is worth a warning.
        clean_exit_expected: bool,
    },
}

/// A child process with its stderr in a file.
pub struct Process {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    stderr_path: PathBuf,
    on_drop: OnDrop,
}

impl Process {
    /// Starts `command` (stdin and stdout closed, stderr appended to
    /// `stderr_path`, so that a restarted service goes on in the same file).
    /// `name` is what messages call it.
    pub fn spawn(name: &str, mut command: Command, stderr_path: PathBuf) -> Self {
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .unwrap_or_else(|e| panic!("{}: {e}", stderr_path.display()));
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the
        // parent, as code between fork and exec must.
        unsafe {
            command.pre_exec(|| {
                // The thread that started us died (a test binary killed
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
            name: name.to_owned(),
            child,
            status: None,
            stderr_path,
            on_drop: OnDrop::Kill,
        }
    }

    /// Sets what dropping the process while it runs does ([`OnDrop::Kill`]
    /// unless told otherwise).
    pub fn set_on_drop(&mut self, on_drop: OnDrop) {
        self.on_drop = on_drop;
    }

    /// The process id (for /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote to stderr so far (also once it has exited).
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The exit status, if the process has exited (reaping it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    /// Panics, with its stderr, if the process has exited.
    pub fn check_alive(&mut self) {
        if let Some(status) = self.try_status() {
            panic!(
                "{} exited ({status}); its stderr:\n{}",
                self.name,
                self.stderr()
            );
        }
    }

    /// Polls `ready` until it holds; panics with stderr if the process exits
    /// first or [`START_WAIT`] passes.
    pub fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
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

    /// Waits for the process to exit on its own, at most `wait`; panics
    /// (with its stderr, after killing it) if it is still running then.
    pub fn wait_exit(&mut self, wait: Duration) -> ExitStatus {
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

    /// Sends `signal` and waits for the exit, at most [`EXIT_WAIT`].
    /// Panics if the process had already exited.
    pub fn signal_and_wait(&mut self, signal: i32) -> ExitStatus {
        assert!(
            self.try_status().is_none(),
            "{} already exited with {:?}:\n{}",
            self.name,
            self.status,
            self.stderr()
        );
        if let Err(error) = self.signal(signal) {
            panic!("kill {}: {error}", self.name);
        }
        self.wait_exit(EXIT_WAIT)
    }

    /// SIGKILL and reap: a crash, with nothing flushed or closed.
    pub fn kill9(&mut self) {
        let status = self.signal_and_wait(libc::SIGKILL);
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    }

    /// SIGTERM and wait up to [`STOP_WAIT`], SIGKILL after that; nothing if
    /// the process has exited already. With `clean_exit_expected`, an exit
    /// other than 0 prints a warning with its stderr. Never panics (it runs
    /// on drop).
    pub fn stop(&mut self, clean_exit_expected: bool) {
        let status = self.terminate();
        if clean_exit_expected && !status.is_some_and(|s| s.success()) {
            eprintln!(
                "{OWNER}: WARNING: {} did not exit cleanly ({status:?}); its stderr:\n{}",
                self.name,
                self.stderr()
            );
        }
    }

    /// [`Process::stop`] without the warning: the exit status, `None` if the
    /// process had to be killed.
    fn terminate(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.status = Some(status);
        }
        if self.status.is_some() {
            return self.status;
        }
        let _ = self.signal(libc::SIGTERM);
        let deadline = Instant::now() + STOP_WAIT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.status = Some(status);
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
                _ => {
                    eprintln!("{OWNER}: {} ignored SIGTERM; killing it", self.name);
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return None;
                }
            }
        }
    }

    fn signal(&self, signal: i32) -> std::io::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) on our own child, not yet reaped, so its pid cannot
        // have been reused.
        if unsafe { libc::kill(pid, signal) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// How much of a process's stderr a failing test shows (its end).
const STDERR_SHOWN_ON_PANIC: usize = 16 << 10;

impl Drop for Process {
    fn drop(&mut self) {
        // A test failed while the process was in scope: what it said is
        // often the explanation (libtest shows this with the failure).
        if std::thread::panicking() {
            let stderr = self.stderr();
            let mut from = stderr.len().saturating_sub(STDERR_SHOWN_ON_PANIC);
            while !stderr.is_char_boundary(from) {
                from += 1;
            }
            eprintln!(
                "--- {} stderr ({} bytes, the last {} shown) ---\n{}\n--- end of {} stderr ---",
                self.name,
                stderr.len(),
                stderr.len() - from,
                &stderr[from..],
                self.name
            );
        }
        match self.on_drop {
            OnDrop::Kill => {
                if matches!(self.child.try_wait(), Ok(None)) {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                }
            }
            OnDrop::Terminate {
                clean_exit_expected,
            } => self.stop(clean_exit_expected),
        }
    }
}
