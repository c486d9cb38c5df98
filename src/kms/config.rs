//! The service's state directory and its `config.json`.
//!
//! ```text
//! DIR/                     0700
//!   config.json            this file's [`Config`]
//!   kek/vNNNNNN.key        file backend: wrapping keys (0600)
//!   kek-min-version.json   lowest wrapping-key version still accepted
//!   token-signing.key      Ed25519 seed for `lsvkms token issue` (0600)
//!   token-signing.pub      its public key, base64 (give it to verifiers)
//!   audit-mac.key          the audit chain's HMAC key (0600)
//!   audit.log, audit.log.head
//!   keys/<key id>.json     per-key state
//!   lsvkms.sock            the UNIX socket (default)
//! ```
//!
//! Relative paths in the config are relative to DIR.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::audit::AuditKey;
use super::auth::ServiceAllowList;
use super::auth::token::{TokenSigner, TokenVerifier};
use super::error::KmsError;
use super::fsutil;
use super::kek::file::FileKek;
use super::kek::pkcs11::{Pkcs11Config, Pkcs11Kek};
use super::kek::{KekError, WrappingKeys};
use super::limits::STATE_FILE_BYTES_MAX;

/// Which wrapping-key backend the service uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum KekConfig {
    /// Key files under `DIR/kek/`.
    File,
    /// Keys inside a PKCS#11 token.
    Pkcs11(Pkcs11Config),
}

/// A service allowed to call over the UNIX socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnixService {
    /// The name the audit log shows.
    pub name: String,
    /// The peer's effective uid (`SO_PEERCRED`).
    pub uid: u32,
}

/// A service allowed to call over TLS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsService {
    /// The name the audit log shows.
    pub name: String,
    /// SHA-256 of its client certificate (DER), hex.
    pub cert_sha256: String,
}

/// Another issuer whose user tokens we accept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalIssuer {
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// Its Ed25519 public key, base64 (32 bytes).
    pub public_key: String,
}

/// `DIR/config.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `iss` of the tokens `lsvkms token issue` signs.
    pub issuer: String,
    /// The UNIX socket to serve on.
    pub socket_path: PathBuf,
    /// The socket's permission bits (octal text, e.g. `"0660"`); callers are
    /// still checked against `services`.
    pub socket_mode: String,
    /// The audit log.
    pub audit_path: PathBuf,
    /// The wrapping-key backend.
    pub kek: KekConfig,
    /// Services allowed on the UNIX socket.
    pub services: Vec<UnixService>,
    /// Services allowed over TLS.
    #[serde(default)]
    pub tls_services: Vec<TlsService>,
    /// Other token issuers we trust.
    #[serde(default)]
    pub external_issuers: Vec<ExternalIssuer>,
    /// Longest lease a service may be lent (seconds; 0: no leases). A
    /// lease lets the service unwrap again for the same user and volume
    /// without a token (a daemon restarting after its user's token expired).
    #[serde(default = "default_lease_max_s")]
    pub lease_max_s: u64,
}

/// 30 days.
fn default_lease_max_s() -> u64 {
    30 * 24 * 3600
}

/// File names inside the state directory.
pub mod files {
    /// The config.
    pub const CONFIG: &str = "config.json";
    /// The token-signing seed.
    pub const TOKEN_KEY: &str = "token-signing.key";
    /// The token-signing public key.
    pub const TOKEN_PUB: &str = "token-signing.pub";
    /// The audit HMAC key.
    pub const AUDIT_KEY: &str = "audit-mac.key";
}

impl Config {
    /// The defaults `lsvkms init` writes.
    pub fn default_for(kek: KekConfig, service_uids: &[u32], issuer: String) -> Self {
        Self {
            issuer,
            socket_path: PathBuf::from("lsvkms.sock"),
            socket_mode: "0660".into(),
            audit_path: PathBuf::from("audit.log"),
            kek,
            services: service_uids
                .iter()
                .map(|uid| UnixService {
                    name: format!("uid-{uid}"),
                    uid: *uid,
                })
                .collect(),
            tls_services: Vec::new(),
            external_issuers: Vec::new(),
            lease_max_s: default_lease_max_s(),
        }
    }

    /// Loads `DIR/config.json`.
    pub fn load(dir: &Path) -> Result<Self, KmsError> {
        let path = dir.join(files::CONFIG);
        let bytes = fsutil::read_bounded(&path, STATE_FILE_BYTES_MAX)
            .map_err(|e| KmsError::State(format!("{}: {e}", path.display())))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| KmsError::State(format!("{}: {e}", path.display())))
    }

    /// `path` made absolute against DIR.
    pub fn resolve(dir: &Path, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            dir.join(path)
        }
    }

    /// The socket mode as bits.
    pub fn socket_mode_bits(&self) -> Result<u32, KmsError> {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|mode| *mode <= 0o777)
            .ok_or_else(|| {
                KmsError::State(format!("socket_mode {:?} is not octal", self.socket_mode))
            })
    }

    /// The service allow-list.
    pub fn allow_list(&self) -> ServiceAllowList {
        ServiceAllowList::new(
            self.services.iter().map(|s| (s.uid, s.name.clone())),
            self.tls_services
                .iter()
                .map(|s| (s.cert_sha256.clone(), s.name.clone())),
        )
    }

    /// The token verifier: our own issuer plus the external ones.
    pub fn token_verifier(&self, dir: &Path) -> Result<TokenVerifier, KmsError> {
        let signer = TokenSigner::load(self.issuer.clone(), &dir.join(files::TOKEN_KEY))?;
        let mut verifier = TokenVerifier::default();
        verifier.trust(self.issuer.clone(), signer.verifying_key());
        for external in &self.external_issuers {
            verifier.trust(
                external.issuer.clone(),
                TokenVerifier::parse_public_key(&external.public_key)?,
            );
        }
        Ok(verifier)
    }

    /// Opens the configured wrapping-key backend.
    pub fn open_kek(&self, dir: &Path) -> Result<Box<dyn WrappingKeys>, KekError> {
        Ok(match &self.kek {
            KekConfig::File => Box::new(FileKek::open(dir)?),
            KekConfig::Pkcs11(config) => {
                Box::new(Pkcs11Kek::open(dir, &resolve_pkcs11(dir, config), false)?)
            }
        })
    }
}

fn resolve_pkcs11(dir: &Path, config: &Pkcs11Config) -> Pkcs11Config {
    Pkcs11Config {
        pin_file: Config::resolve(dir, &config.pin_file),
        ..config.clone()
    }
}

/// Creates a new state directory: keys, config, and wrapping-key version 1.
pub fn init(dir: &Path, config: &Config) -> Result<(), KmsError> {
    let state = |what: &str, e: &dyn std::fmt::Display| KmsError::State(format!("{what}: {e}"));
    if dir.join(files::CONFIG).exists() {
        return Err(KmsError::Conflict(format!(
            "{} is already initialised",
            dir.display()
        )));
    }
    fsutil::create_private_dir(dir).map_err(|e| state("creating state dir", &e))?;
    match &config.kek {
        KekConfig::File => drop(FileKek::create(dir).map_err(|e| KmsError::Kek(e.to_string()))?),
        KekConfig::Pkcs11(p) => {
            drop(
                Pkcs11Kek::open(dir, &resolve_pkcs11(dir, p), true)
                    .map_err(|e| KmsError::Kek(e.to_string()))?,
            );
        }
    }
    TokenSigner::generate_file(&dir.join(files::TOKEN_KEY)).map_err(|e| state("token key", &e))?;
    let signer = TokenSigner::load(config.issuer.clone(), &dir.join(files::TOKEN_KEY))?;
    let public = B64.encode(signer.verifying_key().to_bytes()) + "\n";
    fsutil::write_new(&dir.join(files::TOKEN_PUB), public.as_bytes(), 0o644)
        .map_err(|e| state("public key", &e))?;
    AuditKey::generate_file(&dir.join(files::AUDIT_KEY)).map_err(|e| state("audit key", &e))?;
    let text = serde_json::to_vec_pretty(config).expect("config serializes");
    fsutil::write_atomic(&dir.join(files::CONFIG), &text, 0o600).map_err(|e| state("config", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_load_and_refuse_second_init() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("kms");
        let config = Config::default_for(KekConfig::File, &[0], "test-issuer".into());
        init(&state, &config).unwrap();
        assert_eq!(Config::load(&state).unwrap(), config);
        assert!(matches!(init(&state, &config), Err(KmsError::Conflict(_))));
        config.open_kek(&state).unwrap();
        config.token_verifier(&state).unwrap();
        assert_eq!(config.socket_mode_bits().unwrap(), 0o660);
    }

    #[test]
    fn kek_config_json_shape() {
        let text = r#"{"backend":"pkcs11","module":"/m.so","token_label":"t","pin_file":"pin"}"#;
        let parsed: KekConfig = serde_json::from_str(text).unwrap();
        assert!(matches!(parsed, KekConfig::Pkcs11(ref p) if p.key_label_prefix == "lsvkms-kek-v"));
        assert_eq!(
            serde_json::to_string(&KekConfig::File).unwrap(),
            r#"{"backend":"file"}"#
        );
    }
}
