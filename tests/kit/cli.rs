//! The command line: `lsvblk` and `lsvkms` commands run to completion (their
//! exit codes, stderr and JSON answers) or in the background.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The daemon and command line of this build.
pub const LSVBLK: &str = env!("CARGO_BIN_EXE_lsvblk");

/// Exit codes of lsvblk (sysexits).
pub mod exit {
    /// A usage error, or a volume directory that is not empty.
    pub const USAGE: i32 = 64;
    /// lsvkms cannot be reached.
    pub const KMS_UNAVAILABLE: i32 = 69;
    /// The volume or snapshot is in use.
    pub const BUSY: i32 = 75;
    /// The user is not on the ACL.
    pub const DENIED: i32 = 77;
}

/// Runs a command to completion; panics with its output unless it
/// succeeds. Returns its stdout.
pub fn run_to_success(command: &mut Command) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} exited with {}:\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// The `lsvblk` command line of one build, with the environment its
/// commands get.
#[derive(Clone, Debug)]
pub struct Lsvblk {
    program: PathBuf,
    env: Vec<(String, String)>,
}

impl Lsvblk {
    /// The `lsvblk` cargo built with this test or bench.
    pub fn this_build() -> Self {
        Self::at(Path::new(LSVBLK))
    }

    /// The `lsvblk` at `program` (a benchmark's release build).
    pub fn at(program: &Path) -> Self {
        Lsvblk {
            program: program.to_path_buf(),
            env: Vec::new(),
        }
    }

    /// The same, with `name=value` in the environment of every command.
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Where the executable is.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// `lsvblk ARGS` as a command not started yet (stdin closed).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(args)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null());
        command
    }

    /// Runs `lsvblk ARGS` to completion, whatever its exit status, and
    /// returns its status, stdout and stderr.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.program.display()))
    }

    /// `lsvblk ARGS`, which must succeed; its stdout as JSON (ARGS ask for
    /// it).
    pub fn json(&self, args: &[&str]) -> Value {
        json_of(args, &self.run(args))
    }

    /// Starts `lsvblk ARGS` in the background.
    pub fn background(&self, args: &[&str]) -> Background {
        let mut command = self.command(args);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start lsvblk {args:?}: {e}"));
        Background {
            child: Some(child),
            exit: None,
        }
    }
}

/// Runs `lsvblk ARGS` (this build) to completion, whatever its exit status:
/// for the administrative commands (`snapshot`, `acl`, `clone`, `compact`,
/// `status`, `inspect`, `rotate`, `policy`).
pub fn run_lsvblk(args: &[&str]) -> Output {
    Lsvblk::this_build().run(args)
}

/// `lsvblk ARGS` (this build), which must succeed; its stdout as JSON.
pub fn lsvblk_json(args: &[&str]) -> Value {
    Lsvblk::this_build().json(args)
}

/// The JSON on the stdout of the `lsvblk ARGS` that gave `output`; panics
/// (with its stderr) unless the command succeeded.
pub fn json_of(args: &[&str], output: &Output) -> Value {
    assert!(
        output.status.success(),
        "lsvblk {args:?}: {}:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "lsvblk {args:?}: stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Checks that a command exited with `code` and that its stderr names every
/// one of `words`; returns the stderr.
pub fn assert_refused(what: &str, output: &Output, code: i32, words: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}: {}:\n{stderr}",
        output.status
    );
    for word in words {
        assert!(
            stderr.contains(word),
            "{what}: stderr does not name {word:?}:\n{stderr}"
        );
    }
    stderr
}

/// A command running in the background with its output piped (a long
/// compaction, a rotation); killed and reaped if dropped first.
pub struct Background {
    child: Option<Child>,
    exit: Option<std::process::ExitStatus>,
}

impl Background {
    /// Starts `lsvblk ARGS` (this build).
    pub fn start(args: &[&str]) -> Self {
        Lsvblk::this_build().background(args)
    }

    /// Whether it still runs (waitpid, no blocking).
    pub fn running(&mut self) -> bool {
        if self.exit.is_none() {
            let child = self.child.as_mut().expect("not finished");
            self.exit = child.try_wait().expect("waitpid");
        }
        self.exit.is_none()
    }

    /// Waits for it to exit; its status and output.
    pub fn finish(mut self) -> Output {
        let child = self.child.take().expect("not finished");
        child.wait_with_output().expect("wait for the command")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` every 50 ms until it gives a value; panics after `wait`
/// with `what` and the last thing `describe` says.
pub fn wait_for<T>(
    what: &str,
    wait: Duration,
    mut check: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {wait:?}; {}",
            describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
