//! The wire format shared by the server and the client: JSON bodies of the
//! HTTP API (README.md, "The key-wrapping service" documents each endpoint).
//!
//! Byte strings travel as standard base64 (`wrapped_blob`, `plaintext_key`).
//! No type here holds a plaintext key: the server writes `plaintext_key`
//! straight from locked memory into a zeroized buffer, and the client reads
//! it from the zeroized body into a [`crate::crypto::DataKey`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::crypto::{KeyId, KeyKind};

use super::limits::{ACL_ENTRIES_MAX, CONTEXT_ID_BYTES_MAX, USER_BYTES_MAX};

/// A request field that breaks the API's rules (the service answers it
/// with 400 `bad_request`). Its own type, not the service's error, so the
/// wire types depend on nothing but the limits.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidField(pub String);

/// Who and what a key is for, sealed into its blob as associated data: an
/// unwrap must present the same context.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyContext {
    /// The volume the key encrypts.
    pub volume_id: String,
    /// The snapshot, or empty for the live volume.
    #[serde(default)]
    pub snapshot_id: String,
}

impl KeyContext {
    /// Checks each id's length and characters.
    pub fn validate(&self) -> Result<(), InvalidField> {
        check_name(
            "context.volume_id",
            &self.volume_id,
            CONTEXT_ID_BYTES_MAX,
            false,
        )?;
        check_name(
            "context.snapshot_id",
            &self.snapshot_id,
            CONTEXT_ID_BYTES_MAX,
            true,
        )
    }
}

/// Checks a user name (an ACL entry or a token subject).
pub fn validate_user(user: &str) -> Result<(), InvalidField> {
    check_name("user", user, USER_BYTES_MAX, false)
}

/// Checks an ACL: 1 to [`ACL_ENTRIES_MAX`] valid, distinct user names.
pub fn validate_acl(acl: &[String]) -> Result<(), InvalidField> {
    if acl.is_empty() || acl.len() > ACL_ENTRIES_MAX {
        return Err(InvalidField(format!(
            "acl has {} entries, allowed 1..={ACL_ENTRIES_MAX}",
            acl.len()
        )));
    }
    for (index, user) in acl.iter().enumerate() {
        validate_user(user)?;
        if acl[..index].contains(user) {
            return Err(InvalidField(format!("acl lists {user:?} twice")));
        }
    }
    Ok(())
}

fn check_name(
    field: &str,
    value: &str,
    bytes_max: usize,
    empty_ok: bool,
) -> Result<(), InvalidField> {
    if value.len() > bytes_max || (value.is_empty() && !empty_ok) {
        return Err(InvalidField(format!(
            "{field} must be 1..={bytes_max} bytes, got {}",
            value.len()
        )));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(InvalidField(format!(
            "{field} must not contain whitespace or control characters"
        )));
    }
    Ok(())
}

/// Bytes that travel as a base64 string in JSON (never key material).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Base64Bytes(pub Vec<u8>);

impl std::fmt::Debug for Base64Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Base64Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Base64Bytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&B64.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        B64.decode(text.as_bytes())
            .map(Base64Bytes)
            .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
    }
}

/// `POST /v1/datakey` request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataKeyRequest {
    /// Users allowed to unwrap the key.
    pub acl: Vec<String>,
    /// Sealed as associated data; unwrap must present it again.
    pub context: KeyContext,
    /// The kind of key to create (default `aes256-xts`).
    #[serde(default = "default_kind")]
    pub key_type: KeyKind,
    /// The key the new one replaces (a rotation of the same volume): both
    /// records then name each other, for the users on the ACL to see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<KeyId>,
}

fn default_kind() -> KeyKind {
    KeyKind::Aes256Xts
}

/// `POST /v1/unwrap` request. Its `Debug` hides the token (a credential).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnwrapRequest {
    /// The blob `datakey` or `rewrap` returned.
    pub wrapped_blob: Base64Bytes,
    /// Must equal the context sealed in the blob.
    pub context: KeyContext,
    /// The end user's token (a JWT signed with EdDSA); empty when
    /// `lease_id` stands in for it.
    #[serde(default)]
    pub user_token: String,
    /// With a token: also lend the calling service a lease on this context
    /// for up to this many seconds (at most the policy's `lease_max_s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_s: Option<u64>,
    /// Instead of a token: a lease this service was lent for this context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
}

impl std::fmt::Debug for UnwrapRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnwrapRequest")
            .field("wrapped_blob", &self.wrapped_blob)
            .field("context", &self.context)
            .field("user_token", &"<redacted>")
            .field("lease_s", &self.lease_s)
            .field("lease_id", &self.lease_id)
            .finish()
    }
}

/// `POST /v1/rewrap` request. Its `Debug` hides the token (a credential).
///
/// Without `acl` the blob is only sealed again under the newest
/// wrapping-key version. With `acl` the same key is sealed with that ACL
/// instead (an ACL change): then `user_token` is required and its subject
/// must be on the ACL sealed in `wrapped_blob`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewrapRequest {
    /// The blob to seal again under the newest wrapping-key version.
    pub wrapped_blob: Base64Bytes,
    /// The new ACL (1..=[`ACL_ENTRIES_MAX`] distinct users), or `None` to
    /// keep the sealed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<Vec<String>>,
    /// The token of a user on the blob's current ACL; required with `acl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_token: Option<String>,
}

impl std::fmt::Debug for RewrapRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewrapRequest")
            .field("wrapped_blob", &self.wrapped_blob)
            .field("acl", &self.acl)
            .field(
                "user_token",
                &self.user_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `POST /v1/rewrap` response.
#[derive(Debug, Serialize, Deserialize)]
pub struct RewrapResponse {
    /// The key inside (unchanged).
    pub key_id: KeyId,
    /// The new blob.
    pub wrapped_blob: Base64Bytes,
    /// The wrapping-key version it is sealed under.
    pub wrapping_key_version: u32,
}

/// `POST /v1/wrapping-key/min-version` request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinVersionRequest {
    /// Blobs sealed under lower versions are refused from now on.
    pub min_version: u32,
}

/// `GET /v1/wrapping-key` and rotation response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrappingKeyInfo {
    /// `file` or `pkcs11`.
    pub backend: String,
    /// The version new blobs are sealed under.
    pub current_version: u32,
    /// The lowest version still accepted.
    pub min_version: u32,
}

/// A key's lifecycle state as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Unwraps are served.
    Enabled,
    /// Unwraps are refused until enabled again.
    Disabled,
    /// Unwraps are refused forever.
    Destroyed,
}

impl KeyState {
    /// The state's name as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            KeyState::Enabled => "enabled",
            KeyState::Disabled => "disabled",
            KeyState::Destroyed => "destroyed",
        }
    }
}

/// `GET /v1/keys/{key_id}` response (and the answer to state changes).
/// Never key material.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The key's id.
    pub key_id: KeyId,
    /// The key's kind.
    pub key_type: KeyKind,
    /// One word: `destroyed`, else `compromised`, else `disabled` or `enabled`.
    pub status: String,
    /// The stored lifecycle state.
    pub state: KeyState,
    /// Set by `lsvkms audit check` when a non-ACL user unwrapped the key.
    pub compromised: bool,
    /// Creation time, seconds since the UNIX epoch.
    pub created_unix_s: u64,
    /// Wrapping-key versions blobs of this key have been sealed under.
    pub wrapping_key_versions: Vec<u32>,
    /// The newest ACL sealed for the key: the one it was created with, or
    /// the last one `POST /v1/rewrap` with `acl` set (empty from a service
    /// too old to report it).
    #[serde(default)]
    pub acl: Vec<String>,
    /// Counts the changes to the key's record: a caller passes the one it
    /// knows as `?since=` and is answered 304 (not audited) while it holds
    /// (0 from a service too old to report it).
    #[serde(default)]
    pub revision: u64,
    /// The context sealed in the key's blobs (volume, snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<KeyContext>,
    /// When its state changed last, and the keys of its rotations.
    #[serde(flatten)]
    pub history: KeyHistory,
}

/// A key's history as its record keeps it (and [`KeyInfo`] shows it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyHistory {
    /// When the state last changed (disable, enable, destroy), seconds
    /// since the UNIX epoch (for a key rotated away: when it was destroyed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_changed_unix_s: Option<u64>,
    /// The key this one replaced in a rotation (`datakey` with `replaces`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<KeyId>,
    /// The key that replaced this one in a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<KeyId>,
}

/// `POST /v1/keys/mine` request: a user asks, with their own token, for
/// the keys whose ACL lists them. Its `Debug` hides the token.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MyKeysRequest {
    /// The user's token (a JWT signed with EdDSA).
    pub user_token: String,
}

impl std::fmt::Debug for MyKeysRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MyKeysRequest { user_token: <redacted> }")
    }
}

/// `POST /v1/keys/mine` response: never key material.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MyKeys {
    /// The token's user.
    pub user: String,
    /// Every key whose current ACL lists the user, oldest first (destroyed
    /// ones too: a rotation shows as a new key and a destroyed old one).
    pub keys: Vec<KeyInfo>,
    /// True if there were more than the service lists in one answer.
    #[serde(default)]
    pub truncated: bool,
}

/// `GET /v1/health` response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, or `degraded` when the audit log or wrapping key is unusable.
    pub status: String,
    /// `ok` or why the audit log is unwritable.
    pub audit: String,
    /// The wrapping key (`null` when the backend is unusable).
    pub wrapping_key: Option<WrappingKeyInfo>,
    /// When degraded: the error code (as in [`ErrorBody`]), so any client
    /// reads a 503 health answer like any other error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When degraded: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The body of every error response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable error code (README.md, "The key-wrapping service").
    pub error: String,
    /// Human-readable detail; may change between versions.
    pub message: String,
}

/// Encodes bytes as standard base64.
pub fn to_base64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Decodes standard base64 into `target`, which must have room for it
/// (used to decode key material straight into a zeroized buffer).
pub fn base64_decode_into(text: &str, target: &mut Vec<u8>) -> Result<(), InvalidField> {
    B64.decode_vec(text.as_bytes(), target)
        .map_err(|e| InvalidField(format!("not base64: {e}")))
}

/// Encodes bytes as standard base64 into `target`, replacing what it held
/// (used for key material: give it a zeroized buffer with room, so it never
/// reallocates). The text is written straight into `target`: the `base64`
/// crate's `String` encoders stage their output in a 1 KiB array on the
/// stack, which would leave the encoded key behind in a dead frame.
pub fn base64_encode_into(bytes: &[u8], target: &mut Vec<u8>) {
    let encoded_bytes = base64::encoded_len(bytes.len(), true).expect("small input");
    target.clear();
    target.resize(encoded_bytes, 0);
    B64.encode_slice(bytes, &mut target[..])
        .expect("the buffer is sized for the encoding");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_rules() {
        assert!(validate_acl(&[]).is_err());
        assert!(validate_acl(&["alice".into(), "alice".into()]).is_err());
        assert!(validate_acl(&["al ice".into()]).is_err());
        assert!(validate_acl(&["x".repeat(USER_BYTES_MAX + 1)]).is_err());
        assert!(validate_acl(&["alice".into(), "bob".into()]).is_ok());
        let many: Vec<String> = (0..=ACL_ENTRIES_MAX).map(|i| format!("u{i}")).collect();
        assert!(validate_acl(&many).is_err());
    }

    #[test]
    fn rewrap_request_is_backward_compatible_and_hides_the_token() {
        let old = r#"{"wrapped_blob":"AAEC"}"#;
        let req: RewrapRequest = serde_json::from_str(old).unwrap();
        assert_eq!((req.acl, req.user_token), (None, None));
        let plain = RewrapRequest {
            wrapped_blob: Base64Bytes(vec![0, 1, 2]),
            acl: None,
            user_token: None,
        };
        assert_eq!(serde_json::to_string(&plain).unwrap(), old);
        let reacl = RewrapRequest {
            acl: Some(vec!["alice".into(), "bob".into()]),
            user_token: Some("secret.token.value".into()),
            ..plain
        };
        let debug = format!("{reacl:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert!(
            debug.contains("<redacted>") && debug.contains("bob"),
            "{debug}"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = r#"{"acl":["a"],"context":{"volume_id":"v"},"extra":1}"#;
        assert!(serde_json::from_str::<DataKeyRequest>(text).is_err());
        let text = r#"{"acl":["a"],"context":{"volume_id":"v"}}"#;
        let req: DataKeyRequest = serde_json::from_str(text).unwrap();
        assert_eq!(req.key_type, KeyKind::Aes256Xts);
    }
}
