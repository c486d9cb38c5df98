//! Shared by the `kms_*` integration tests: a real `lsvkms` process on a
//! temporary UNIX socket (killed on drop), and the acceptance flow of issue 3.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use lsvblk::crypto::DataKey;
use lsvblk::kms::api::KeyContext;
use lsvblk::kms::auth::token::{Claims, TokenSigner};
use lsvblk::kms::client::{ClientError, KmsClient};
use lsvblk::kms::config::{Config, files};
use lsvblk::kms::keys::KeyAction;
use lsvblk::kms::service::now_unix_s;

/// The binary under test.
pub const LSVKMS: &str = env!("CARGO_BIN_EXE_lsvkms");

/// A state directory and (while started) the serving process.
pub struct Kms {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub stderr_path: PathBuf,
    pub env: Vec<(String, String)>,
    /// Extra arguments for `lsvkms serve` (e.g. `--tcp`).
    pub serve_args: Vec<String>,
    child: Option<Child>,
    starts: u32,
}

impl Kms {
    /// `lsvkms init --dir` with extra arguments.
    pub fn init(extra: &[&str], env: Vec<(String, String)>) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let kms = Kms {
            socket: tmp.path().join("kms.sock"),
            stderr_path: tmp.path().join("stderr.log"),
            dir,
            tmp,
            env,
            serve_args: Vec::new(),
            child: None,
            starts: 0,
        };
        let mut args = vec![
            "init",
            "--dir",
            kms.dir.to_str().unwrap(),
            "--issuer",
            "test-kms",
        ];
        args.extend_from_slice(extra);
        let out = kms.run(&args);
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        kms
    }

    /// Runs an `lsvkms` subcommand to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut command = Command::new(LSVKMS);
        command.args(args).envs(self.env.iter().cloned());
        command.output().unwrap()
    }

    /// Starts `lsvkms serve` (RUST_LOG=debug, stderr appended to a file) and
    /// waits until it answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .unwrap();
        let child = Command::new(LSVKMS)
            .args([
                "serve",
                "--dir",
                self.dir.to_str().unwrap(),
                "--socket",
                self.socket.to_str().unwrap(),
            ])
            .args(&self.serve_args)
            .envs(self.env.iter().cloned())
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.starts += 1;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Up: healthy, or refusing us (a test that does not allow-list
            // its own uid is answered 403 before the service reads a byte).
            match KmsClient::with_timeout(&self.socket, Duration::from_secs(1)).health() {
                Ok(_) | Err(ClientError::Api { status: 403, .. }) => return,
                Err(_) => {}
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("lsvkms exited with {status}: {}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "lsvkms did not come up: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on the pid of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.wait();
    }

    /// A client of the running service.
    pub fn client(&self) -> KmsClient {
        KmsClient::with_timeout(&self.socket, Duration::from_secs(10))
    }

    /// `lsvkms token issue`.
    pub fn token(&self, user: &str, ttl: &str) -> String {
        let dir = self.dir.to_str().unwrap().to_owned();
        let out = self.run(&[
            "token", "issue", "--dir", &dir, "--user", user, "--ttl", ttl,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// The service's own token signer (to make tokens the CLI refuses to).
    pub fn signer(&self) -> TokenSigner {
        let config = Config::load(&self.dir).unwrap();
        TokenSigner::load(config.issuer, &self.dir.join(files::TOKEN_KEY)).unwrap()
    }

    /// The audit log's path.
    pub fn audit_path(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// Everything the service wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// `lsvkms audit verify`: (success, stdout+stderr).
    pub fn audit_verify(&self) -> (bool, String) {
        let dir = self.dir.to_str().unwrap().to_owned();
        let out = self.run(&["audit", "verify", "--dir", &dir]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

impl Drop for Kms {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The status and code of a refused call.
pub fn api_error<T>(result: Result<T, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Api { status, code, .. }) => (status, code),
        Err(other) => panic!("expected an API error, got {other}"),
        Ok(_) => panic!("expected an API error, got success"),
    }
}

/// What the flow saw, for the tests that look for leaks afterwards.
pub struct FlowOutcome {
    /// Every DEK the client received.
    pub deks: Vec<Vec<u8>>,
}

fn same_key(a: &DataKey, b: &DataKey) -> bool {
    a.id() == b.id() && a.expose_secret() == b.expose_secret()
}

/// The acceptance flow of issue 3, against a started service.
pub fn acceptance_flow(kms: &mut Kms) -> FlowOutcome {
    let flow = Flow::create(kms);
    flow.refusals(kms);
    flow.disable_then_enable(kms);
    let blob_v2 = flow.rotate_and_rewrap(kms);
    flow.destroy_is_forever(kms, &blob_v2);
    let (ok, text) = kms.audit_verify();
    assert!(ok, "{text}");
    FlowOutcome {
        deks: vec![flow.key.expose_secret().to_vec()],
    }
}

/// One key through its life.
struct Flow {
    context: KeyContext,
    key: DataKey,
    blob_v1: Vec<u8>,
    alice: String,
}

impl Flow {
    /// datakey → unwrap as an ACL user (ok).
    fn create(kms: &Kms) -> Self {
        let client = kms.client();
        let context = KeyContext {
            volume_id: "vol-0001".into(),
            snapshot_id: String::new(),
        };
        let acl = vec!["alice".to_owned(), "carol".to_owned()];
        let generated = client.generate_data_key(&acl, &context).unwrap();
        assert_eq!(generated.wrapping_key_version, 1);
        let alice = kms.token("alice", "1h");
        let unwrapped = client
            .unwrap(&generated.wrapped_blob, &context, &alice)
            .unwrap();
        assert!(
            same_key(&unwrapped, &generated.key),
            "unwrap returns the DEK datakey returned"
        );
        Flow {
            context,
            key: generated.key,
            blob_v1: generated.wrapped_blob,
            alice,
        }
    }

    /// Non-ACL user (403, audited), expired token (401), token signed by
    /// another key (401), tampered blob (400, no panic), other context (400).
    fn refusals(&self, kms: &Kms) {
        let client = kms.client();
        let (blob, context) = (&self.blob_v1, &self.context);
        let bob = kms.token("bob", "1h");
        assert_eq!(
            api_error(client.unwrap(blob, context, &bob)),
            (403, "not_on_acl".into())
        );
        let records = client.audit(Some(self.key.id()), 100).unwrap();
        let denial = records
            .iter()
            .rev()
            .find(|r| r["action"] == "unwrap")
            .unwrap();
        assert_eq!(
            (denial["user"].as_str(), denial["decision"].as_str()),
            (Some("bob"), Some("deny"))
        );
        assert_eq!(denial["reason"], "not_on_acl");

        let now = now_unix_s();
        let claims = Claims {
            iss: "test-kms".into(),
            sub: "alice".into(),
            iat: now - 7200,
            exp: now - 3600,
            nbf: None,
        };
        let expired = kms.signer().sign_claims(&claims);
        assert_eq!(
            api_error(client.unwrap(blob, context, &expired)),
            (401, "token_expired".into())
        );
        let forged = TokenSigner::new("test-kms".into(), &[42; 32])
            .issue("alice", now, 3600)
            .unwrap();
        assert_eq!(
            api_error(client.unwrap(blob, context, &forged)),
            (401, "token_invalid".into())
        );

        for index in 0..blob.len() {
            let mut tampered = blob.clone();
            tampered[index] ^= 0x40;
            let (status, code) = api_error(client.unwrap(&tampered, context, &self.alice));
            assert_eq!(status, 400, "byte {index}: {code}");
        }
        assert_eq!(
            api_error(client.unwrap(&blob[..20], context, &self.alice)).0,
            400
        );
        let other = KeyContext {
            volume_id: "vol-0002".into(),
            snapshot_id: String::new(),
        };
        assert_eq!(
            api_error(client.unwrap(blob, &other, &self.alice)),
            (400, "context_mismatch".into())
        );
        assert!(
            client.health().is_ok(),
            "still serving after the tampered blobs"
        );
    }

    /// disable (refused) → enable (served again).
    fn disable_then_enable(&self, kms: &Kms) {
        let client = kms.client();
        let id = self.key.id();
        assert_eq!(
            client.set_key_state(id, KeyAction::Disable).unwrap().status,
            "disabled"
        );
        assert_eq!(
            api_error(client.unwrap(&self.blob_v1, &self.context, &self.alice)),
            (409, "key_disabled".into())
        );
        assert_eq!(
            client.set_key_state(id, KeyAction::Enable).unwrap().status,
            "enabled"
        );
        assert!(same_key(
            &client
                .unwrap(&self.blob_v1, &self.context, &self.alice)
                .unwrap(),
            &self.key
        ));
    }

    /// rotate → rewrap → old and new blob both unwrap to the same DEK.
    fn rotate_and_rewrap(&self, kms: &Kms) -> Vec<u8> {
        let client = kms.client();
        assert_eq!(client.rotate_wrapping_key().unwrap().current_version, 2);
        let rewrapped = client.rewrap(&self.blob_v1).unwrap();
        assert_eq!(
            (rewrapped.wrapping_key_version, rewrapped.key_id),
            (2, self.key.id())
        );
        let blob_v2 = rewrapped.wrapped_blob.0;
        assert_ne!(self.blob_v1, blob_v2);
        for blob in [&self.blob_v1, &blob_v2] {
            assert!(same_key(
                &client.unwrap(blob, &self.context, &self.alice).unwrap(),
                &self.key
            ));
        }
        let info = client.key_info(self.key.id()).unwrap();
        assert_eq!(info.wrapping_key_versions, vec![1, 2]);
        assert_eq!(info.acl, ["alice", "carol"]);
        assert_eq!(info.key_type, lsvblk::crypto::KeyKind::Aes256Xts);
        blob_v2
    }

    /// destroy → refused forever, also after a restart.
    fn destroy_is_forever(&self, kms: &mut Kms, blob_v2: &[u8]) {
        let id = self.key.id();
        let refused = |kms: &Kms| {
            let client = kms.client();
            for blob in [&self.blob_v1[..], blob_v2] {
                assert_eq!(
                    api_error(client.unwrap(blob, &self.context, &self.alice)),
                    (409, "key_destroyed".into())
                );
            }
            assert_eq!(client.key_info(id).unwrap().status, "destroyed");
        };
        let client = kms.client();
        assert_eq!(
            client.set_key_state(id, KeyAction::Destroy).unwrap().status,
            "destroyed"
        );
        refused(kms);
        assert_eq!(
            api_error(client.set_key_state(id, KeyAction::Enable)),
            (409, "invalid_transition".into())
        );
        assert_eq!(
            api_error(client.rewrap(blob_v2)),
            (409, "key_destroyed".into())
        );
        drop(client);
        kms.stop();
        kms.start();
        refused(kms);
    }
}

/// True if `haystack` contains `key` as raw bytes, hex or base64.
pub fn leaks(haystack: &[u8], key: &[u8]) -> Option<&'static str> {
    use base64::Engine as _;
    let text = String::from_utf8_lossy(haystack).to_lowercase();
    if haystack.windows(key.len()).any(|w| w == key) {
        return Some("raw");
    }
    if text.contains(&hex::encode(key)) || text.contains(&hex::encode(&key[..16])) {
        return Some("hex");
    }
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(key)
        .to_lowercase();
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(key)
        .to_lowercase();
    if text.contains(&b64[..40]) || text.contains(&b64url[..40]) {
        return Some("base64");
    }
    None
}

/// Every file under `dir`, recursively (bounded depth).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), 0)];
    while let Some((path, depth)) = pending.pop() {
        for entry in fs::read_dir(&path).unwrap().flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() && depth < 4 {
                pending.push((entry.path(), depth + 1));
            } else if kind.is_file() {
                found.push(entry.path());
            }
        }
    }
    found
}
