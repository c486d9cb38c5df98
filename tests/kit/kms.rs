//! A real `lsvkms`: `lsvkms init` of a state directory, then `lsvkms serve`
//! on a UNIX socket, its stderr in a file; tokens for users; its audit log.
//!
//! A test's service lives in a temporary directory of its own that every
//! other file of the test goes to as well ([`Kms::fresh_path`]: tokens,
//! volumes, sockets, logs), removed when the [`Kms`] drops; a benchmark
//! puts it in a directory it owns ([`Kms::start_in`]).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lsvblk::crypto::KeyId;
use lsvblk::kms::api::KeyContext;
use lsvblk::kms::audit::log::{AuditLog, open_file_sink};
use lsvblk::kms::audit::{AuditEntry, AuditKey, Decision};
use lsvblk::kms::auth::token::TokenSigner;
use lsvblk::kms::client::{ClientError, GeneratedKey, KmsClient};
use lsvblk::kms::config::{Config, files};

use super::cli::run_to_success;
use super::dirs::fast_tempdir;
use super::process::{OnDrop, Process};

/// The key-wrapping service of this build.
pub const LSVKMS: &str = env!("CARGO_BIN_EXE_lsvkms");
/// The issuer every kit service signs its tokens as (`lsvkms init
/// --issuer`).
pub const ISSUER: &str = "lsvblk-tests";
/// How long a client of the kit waits for an answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A state directory and (while serving) the `lsvkms serve` process.
pub struct Kms {
    /// Where everything lives: owned by the service in tests.
    dir: PathBuf,
    state_dir: PathBuf,
    socket: PathBuf,
    stderr_path: PathBuf,
    lsvkms: PathBuf,
    env: Vec<(String, String)>,
    serve_args: Vec<String>,
    /// Where `serve` leaves a core, and whether with `--allow-core-dumps`.
    core: Option<(PathBuf, bool)>,
    on_drop: OnDrop,
    process: Option<Process>,
    names_next: AtomicU32,
    /// Dropped last: removes `dir` (tests only).
    _tmp: Option<tempfile::TempDir>,
}

impl Kms {
    /// `lsvkms init` (with `init_args`) in a fresh temporary directory, and
    /// `lsvkms serve`; returns once the service answers a health check.
    pub fn start() -> Self {
        let mut kms = Self::init(&[], Vec::new());
        kms.serve();
        kms
    }

    /// `lsvkms init` with `init_args` in a fresh temporary directory, not
    /// serving yet ([`Kms::serve`]). Every `lsvkms` it runs gets `env`,
    /// and `serve` logs at debug level (`RUST_LOG=debug`), so that tests see
    /// all it would ever log.
    pub fn init(init_args: &[&str], env: Vec<(String, String)>) -> Self {
        let tmp = fast_tempdir();
        let dir = tmp.path().to_path_buf();
        let mut env = env;
        env.push(("RUST_LOG".to_owned(), "debug".to_owned()));
        Self::init_at(Path::new(LSVKMS), dir, Some(tmp), env, init_args)
    }

    /// [`Kms::init`], but `serve` logs at the default level (no
    /// `RUST_LOG`): what a production service keeps in memory.
    pub fn init_default_logging(init_args: &[&str]) -> Self {
        let tmp = fast_tempdir();
        let dir = tmp.path().to_path_buf();
        let env = vec![("RUST_LOG".to_owned(), String::new())];
        Self::init_at(Path::new(LSVKMS), dir, Some(tmp), env, init_args)
    }

    /// For a benchmark: `lsvkms init` and `lsvkms serve` with the `lsvkms`
    /// at `lsvkms` (a release build), everything in `dir` (which the caller
    /// removes), logging warnings only. Dropping it stops the service with
    /// SIGTERM.
    pub fn start_in(lsvkms: &Path, dir: &Path) -> Self {
        let env = vec![("RUST_LOG".to_owned(), "warn".to_owned())];
        let mut kms = Self::init_at(lsvkms, dir.to_path_buf(), None, env, &[]);
        kms.on_drop = OnDrop::Terminate {
            clean_exit_expected: false,
        };
        kms.serve();
        kms
    }

    fn init_at(
        lsvkms: &Path,
        dir: PathBuf,
        tmp: Option<tempfile::TempDir>,
        env: Vec<(String, String)>,
        init_args: &[&str],
    ) -> Self {
        let kms = Kms {
            state_dir: dir.join("kms-state"),
            socket: dir.join("kms.sock"),
            stderr_path: dir.join("lsvkms.stderr"),
            dir,
            lsvkms: lsvkms.to_path_buf(),
            env,
            serve_args: Vec::new(),
            core: None,
            on_drop: OnDrop::Kill,
            process: None,
            names_next: AtomicU32::new(0),
            _tmp: tmp,
        };
        let state = kms.state_dir.to_str().unwrap().to_owned();
        let mut args = vec!["init", "--dir", &state, "--issuer", ISSUER];
        args.extend_from_slice(init_args);
        run_to_success(kms.command().args(&args));
        kms
    }

    /// `lsvkms ARGS` with the service's environment, not started yet.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.lsvkms);
        command.envs(self.env.iter().cloned()).stdin(Stdio::null());
        command
    }

    /// Extra arguments for every later `lsvkms serve` (e.g. `--tcp`).
    pub fn set_serve_args(&mut self, args: Vec<String>) {
        self.serve_args = args;
    }

    /// Makes every later `lsvkms serve` leave a core in `dir` if it dies
    /// of a signal, with `--allow-core-dumps` if `allow` (see
    /// [`super::core::arrange_core`]).
    pub fn set_core(&mut self, dir: PathBuf, allow: bool) {
        self.core = Some((dir, allow));
    }

    /// The process id of `lsvkms serve`.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("lsvkms is running").pid()
    }

    /// Sends `signal` to `lsvkms serve` and waits for it to end.
    pub fn signal_and_wait(&mut self, signal: i32) -> ExitStatus {
        let mut process = self.process.take().expect("lsvkms is running");
        process.signal_and_wait(signal)
    }

    /// `lsvkms serve` on the socket; returns once it answers a health
    /// check. Also starts the service again after [`Kms::stop`] or
    /// [`Kms::kill9`], on the same socket and state (its stderr goes on in
    /// the same file).
    pub fn serve(&mut self) {
        assert!(self.process.is_none(), "lsvkms is still running");
        let mut command = self.command();
        command
            .arg("serve")
            .arg("--dir")
            .arg(&self.state_dir)
            .arg("--socket")
            .arg(&self.socket)
            .args(&self.serve_args);
        if let Some((dir, allow)) = &self.core {
            super::core::arrange_core(&mut command, dir, *allow);
        }
        let mut process = Process::spawn("lsvkms", command, self.stderr_path.clone());
        process.set_on_drop(self.on_drop);
        let client = KmsClient::with_timeout(&self.socket, Duration::from_secs(1));
        // Up: healthy, or refusing us (a test that does not allow-list its
        // own uid is answered 403 before the service reads a byte).
        process.wait_until("lsvkms to answer a health check", || {
            matches!(
                client.health(),
                Ok(_) | Err(ClientError::Api { status: 403, .. })
            )
        });
        self.process = Some(process);
    }

    /// SIGTERM, then wait for the service to exit; its socket goes with it.
    pub fn stop(&mut self) -> ExitStatus {
        let mut process = self.process.take().expect("lsvkms is running");
        process.signal_and_wait(libc::SIGTERM)
    }

    /// SIGKILL and reap: the service crashes, leaving its socket file.
    pub fn kill9(&mut self) {
        self.process.take().expect("lsvkms is running").kill9();
    }

    /// The directory everything of this service (and of its test) is in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The service's state directory (`lsvkms ... --dir`): its keys, audit
    /// log and audit key.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The service's UNIX socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `--kms` as lsvblk takes it.
    pub fn address(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// The audit log.
    pub fn audit_path(&self) -> PathBuf {
        self.state_dir.join("audit.log")
    }

    /// Runs `lsvkms ARGS` to completion, whatever its exit status (`audit
    /// check` exits 2 when it finds something).
    pub fn run(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.lsvkms.display()))
    }

    /// A path in the service's directory that nothing has used yet.
    pub fn fresh_path(&self, stem: &str, extension: &str) -> PathBuf {
        let number = self.names_next.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{stem}-{number}.{extension}"))
    }

    /// `lsvkms token issue` for `user`, valid for `ttl` (`1h`, `10m`): the
    /// token itself.
    pub fn token_text(&self, user: &str, ttl: &str) -> String {
        let state = self.state_dir.to_str().unwrap();
        let args = [
            "token", "issue", "--dir", state, "--user", user, "--ttl", ttl,
        ];
        run_to_success(self.command().args(args)).trim().to_owned()
    }

    /// A token for `user`, valid an hour, in a new file (mode 0600) whose
    /// path it returns: for `lsvblk serve --token-file`.
    pub fn token(&self, user: &str) -> PathBuf {
        self.token_for(user, "1h")
    }

    /// [`Kms::token`] valid for `ttl` (`5s`, `10m`).
    pub fn token_for(&self, user: &str, ttl: &str) -> PathBuf {
        let token = self.token_text(user, ttl);
        let path = self.fresh_path(&format!("token-{user}"), "jwt");
        fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(token.as_bytes()))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    /// The service's own token signer (to make tokens the CLI refuses to).
    pub fn signer(&self) -> TokenSigner {
        let config = Config::load(&self.state_dir).unwrap();
        TokenSigner::load(config.issuer, &self.state_dir.join(files::TOKEN_KEY)).unwrap()
    }

    /// `lsvkms audit verify`: (success, stdout and stderr).
    pub fn audit_verify(&self) -> (bool, String) {
        let state = self.state_dir.to_str().unwrap().to_owned();
        let out = self.run(&["audit", "verify", "--dir", &state]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `lsvkms audit check` of the state directory, whatever its exit
    /// status (2 when it finds something).
    pub fn audit_check(&self) -> Output {
        let state = self.state_dir.to_str().unwrap().to_owned();
        self.run(&["audit", "check", "--dir", &state])
    }

    /// Appends to the audit log of the stopped service an unwrap of
    /// `key_id` allowed for `user`, keyed with the service's audit key: what
    /// an operator's break-glass tool, or a leaked service identity, leaves
    /// behind.
    pub fn append_allowed_unwrap(&self, user: &str, key_id: KeyId) {
        assert!(self.process.is_none(), "lsvkms is running");
        let key = AuditKey::load(&self.state_dir.join(files::AUDIT_KEY)).unwrap();
        let (sink, head) = open_file_sink(&self.audit_path(), &key).unwrap();
        let log = AuditLog::start(Box::new(sink), key, head).unwrap();
        log.append(AuditEntry {
            service: "break-glass".into(),
            user: Some(user.into()),
            action: "unwrap".into(),
            key_id: Some(key_id),
            context: None,
            decision: Decision::Allow,
            reason: "ok".into(),
            count: None,
            lease: None,
        })
        .unwrap();
    }

    /// What the service wrote to stderr so far (also once it has exited).
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// A client of the running service, as a test's own (for its audit
    /// log, or to unwrap a key the way a daemon does).
    pub fn client(&self) -> KmsClient {
        KmsClient::with_timeout(&self.socket, CLIENT_TIMEOUT)
    }
}

/// The HTTP status and error code of a call lsvkms refused; panics if it
/// did not refuse.
pub fn api_error<T>(result: Result<T, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Api { status, code, .. }) => (status, code),
        Err(other) => panic!("expected an API error, got {other}"),
        Ok(_) => panic!("expected an API error, got success"),
    }
}

/// The context of a data key for volume `volume_id` (no snapshot).
pub fn context(volume_id: &str) -> KeyContext {
    KeyContext {
        volume_id: volume_id.into(),
        snapshot_id: String::new(),
    }
}

/// A data key `client`'s lsvkms makes for the users `acl` and volume
/// `volume_id`, with the context it is sealed for.
pub fn generate_key(
    client: &KmsClient,
    acl: &[&str],
    volume_id: &str,
) -> (KeyContext, GeneratedKey) {
    let context = context(volume_id);
    let acl: Vec<String> = acl.iter().map(|user| user.to_string()).collect();
    let generated = client.generate_data_key(&acl, &context).unwrap();
    (context, generated)
}
