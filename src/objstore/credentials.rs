//! S3 credentials: from the environment or from a private file, never shown.
//!
//! The file holds `NAME=VALUE` lines (an `export ` in front, quotes around
//! the value, blank lines and `#` comments are fine; other names are
//! ignored), the same names as the environment:
//!
//! ```text
//! AWS_ACCESS_KEY_ID=AKIA...
//! AWS_SECRET_ACCESS_KEY=...
//! # AWS_SESSION_TOKEN=...   (temporary credentials only)
//! ```
//!
//! It must be readable by its owner alone (mode 0600 or stricter) and owned
//! by us: a group- or world-readable file is refused, not used.

use std::path::Path;

use zeroize::Zeroizing;

use super::error::{Error, Result};
use crate::kms::fsutil;

/// Largest credentials file read (a few lines are expected).
const FILE_BYTES_MAX: u64 = 64 * 1024;

const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

/// An access key id and its secret (plus a session token for temporary
/// credentials). `Debug` shows the key id only; the secret is wiped from
/// this struct's memory on drop.
#[derive(Clone)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Credentials {
    /// Credentials from their parts. Both must be non-empty printable ASCII
    /// without spaces (what S3 issues).
    pub fn new(access_key_id: &str, secret_access_key: &str) -> Result<Self> {
        check_value(ACCESS_KEY_ID, access_key_id)?;
        check_value(SECRET_ACCESS_KEY, secret_access_key)?;
        Ok(Credentials {
            access_key_id: access_key_id.to_string(),
            secret_access_key: Zeroizing::new(secret_access_key.to_string()),
            session_token: None,
        })
    }

    /// From `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and, if set,
    /// `AWS_SESSION_TOKEN`.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup("the environment", |name| std::env::var(name).ok())
    }

    /// From a private file (see the module doc for its format).
    pub fn from_file(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        fsutil::check_private(path).map_err(|error| Error::Credentials {
            reason: format!("refusing the credentials file: {error}"),
        })?;
        let bytes =
            Zeroizing::new(fsutil::read_bounded(path, FILE_BYTES_MAX).map_err(|error| {
                Error::Credentials {
                    reason: format!("{shown}: {error}"),
                }
            })?);
        let text = std::str::from_utf8(&bytes).map_err(|_| Error::Credentials {
            reason: format!("{shown} is not UTF-8 text"),
        })?;
        Self::from_lookup(&shown, |name| file_value(text, name))
    }

    fn from_lookup(source: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let missing = |name: &str| Error::Credentials {
            reason: format!("{name} is not set in {source}"),
        };
        let access_key_id = lookup(ACCESS_KEY_ID).ok_or_else(|| missing(ACCESS_KEY_ID))?;
        let secret =
            Zeroizing::new(lookup(SECRET_ACCESS_KEY).ok_or_else(|| missing(SECRET_ACCESS_KEY))?);
        let mut credentials = Self::new(&access_key_id, &secret)?;
        if let Some(token) = lookup(SESSION_TOKEN).map(Zeroizing::new) {
            check_value(SESSION_TOKEN, &token)?;
            credentials.session_token = Some(token);
        }
        Ok(credentials)
    }

    /// The access key id (not a secret: it names the key).
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    pub(super) fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    pub(super) fn session_token(&self) -> Option<&str> {
        self.session_token.as_deref().map(String::as_str)
    }
}

/// The value of the last `name=value` line of `text` (`export ` and quotes
/// allowed).
fn file_value(text: &str, name: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
            let (key, value) = line.split_once('=')?;
            (key.trim() == name).then(|| unquote(value.trim()).to_string())
        })
        .next_back()
}

fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}

fn check_value(name: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::Credentials {
            reason: format!("{name} is empty"),
        });
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        // Say where, never what: the value may be a secret.
        return Err(Error::Credentials {
            reason: format!("{name} contains spaces or characters that are not printable ASCII"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const SECRET: &str = "wJalrXUtnFEMIK7MDENGbPxRfiCYzzSECRET";

    fn write_file(dir: &Path, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join("s3.credentials");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let mut credentials = Credentials::new("AKIDEXAMPLE", SECRET).unwrap();
        credentials.session_token = Some(Zeroizing::new("TOKENSECRET".into()));
        let shown = format!("{credentials:?} {credentials:#?}");
        assert!(shown.contains("AKIDEXAMPLE"));
        assert!(
            !shown.contains(SECRET) && !shown.contains("TOKENSECRET"),
            "{shown}"
        );
    }

    #[test]
    fn reads_a_private_file_in_env_syntax() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "# from ci/ceph.sh env\nexport AWS_ENDPOINT_URL=http://127.0.0.1:7480\n\
             export AWS_ACCESS_KEY_ID=AKIDEXAMPLE\nAWS_SECRET_ACCESS_KEY='{SECRET}'\n"
        );
        let credentials = Credentials::from_file(&write_file(dir.path(), &text, 0o600)).unwrap();
        assert_eq!(credentials.access_key_id(), "AKIDEXAMPLE");
        assert_eq!(credentials.secret_access_key(), SECRET);
        assert_eq!(credentials.session_token(), None);
    }

    #[test]
    fn refuses_a_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("AWS_ACCESS_KEY_ID=AKIDEXAMPLE\nAWS_SECRET_ACCESS_KEY={SECRET}\n");
        for mode in [0o640, 0o604, 0o644, 0o660] {
            let error = Credentials::from_file(&write_file(dir.path(), &text, mode)).unwrap_err();
            let shown = error.to_string();
            assert!(shown.contains("chmod 600"), "{mode:o}: {shown}");
            assert!(!shown.contains(SECRET));
        }
        assert!(Credentials::from_file(&write_file(dir.path(), &text, 0o400)).is_ok());
    }

    #[test]
    fn missing_or_malformed_values_are_named_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        let only_id = write_file(dir.path(), "AWS_ACCESS_KEY_ID=AKIDEXAMPLE\n", 0o600);
        let error = Credentials::from_file(&only_id).unwrap_err().to_string();
        assert!(
            error.contains("AWS_SECRET_ACCESS_KEY is not set"),
            "{error}"
        );
        let spaced = format!("AWS_ACCESS_KEY_ID=AKIDEXAMPLE\nAWS_SECRET_ACCESS_KEY=a {SECRET}\n");
        let error = Credentials::from_file(&write_file(dir.path(), &spaced, 0o600))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("AWS_SECRET_ACCESS_KEY contains spaces"),
            "{error}"
        );
        assert!(!error.contains(SECRET));
        assert!(Credentials::new("", SECRET).is_err());
    }

    #[test]
    fn environment_lookup_takes_the_session_token_too() {
        let env = |name: &str| match name {
            ACCESS_KEY_ID => Some("AKIDEXAMPLE".to_string()),
            SECRET_ACCESS_KEY => Some(SECRET.to_string()),
            SESSION_TOKEN => Some("TOKEN".to_string()),
            _ => None,
        };
        let credentials = Credentials::from_lookup("test", env).unwrap();
        assert_eq!(credentials.session_token(), Some("TOKEN"));
    }
}
