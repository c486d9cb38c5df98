//! The blocking client the daemon uses: HTTP/1.1 over the service's UNIX
//! socket, with connect/read/write timeouts, so a dead or stuck service is a
//! clear error within the timeout, never a hang.
//!
//! One connection is kept alive between calls. If a call on a *reused*
//! connection fails before any response byte arrives (the service closed
//! an idle connection, or restarted), it is retried once on a fresh
//! connection. A client made [`KmsClient::retrying_for`] a while also
//! retries, with backoff, calls that found the service down, busy (503) or
//! silent, until that while is over. Plaintext keys are decoded from the zeroized response body
//! straight into a [`DataKey`] in locked memory.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::crypto::hygiene::RegisterScrub;
use crate::crypto::{DataKey, KeyId, KeyKind};

use super::api::{
    Base64Bytes, DataKeyRequest, ErrorBody, Health, KeyContext, KeyInfo, MinVersionRequest, MyKeys,
    MyKeysRequest, RewrapRequest, RewrapResponse, UnwrapRequest, WrappingKeyInfo,
    base64_decode_into,
};
use super::calls::call_record;
use super::http::{HttpConn, HttpError, is_timeout};
use super::keys::KeyAction;
use super::limits::{CLIENT_TIMEOUT_MS_DEFAULT, HTTP_RESPONSE_BYTES_MAX};

/// Why a call to the service failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket: the service is down.
    #[error("key service unavailable at {path}: {source} (is lsvkms running?)")]
    Unavailable {
        /// The socket.
        path: PathBuf,
        /// The connect error.
        #[source]
        source: io::Error,
    },
    /// The service did not answer within the timeout.
    #[error("key service did not answer within {timeout_ms} ms")]
    Timeout {
        /// The timeout.
        timeout_ms: u64,
    },
    /// The connection broke before an answer came (the service closed it
    /// or went away).
    #[error("key service closed the connection without answering: {0}")]
    Disconnected(String),
    /// The answer is not what the API promises.
    #[error("key service protocol error: {0}")]
    Protocol(String),
    /// The service refused or failed the call.
    #[error("key service answered {status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable error code (README.md, "The key-wrapping service").
        code: String,
        /// Detail.
        message: String,
    },
}

/// A data key fresh from the service.
pub struct GeneratedKey {
    /// The key (locked memory).
    pub key: DataKey,
    /// Its wrapped blob, to store in the volume's metadata.
    pub wrapped_blob: Vec<u8>,
    /// The wrapping-key version of the blob.
    pub wrapping_key_version: u32,
}

#[derive(Deserialize)]
struct KeyResponse<'a> {
    key_id: KeyId,
    key_type: KeyKind,
    #[serde(default)]
    wrapped_blob: Option<Base64Bytes>,
    #[serde(default)]
    wrapping_key_version: Option<u32>,
    #[serde(default)]
    lease_id: Option<String>,
    #[serde(default)]
    lease_expires_unix_s: Option<u64>,
    #[serde(borrow)]
    plaintext_key: &'a str,
}

/// A lease lsvkms lent with an unwrap ([`KmsClient::unwrap_lending`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct LentLease {
    /// Its id: what [`KmsClient::unwrap_with_lease`] presents.
    pub lease_id: String,
    /// When it ends, seconds since the UNIX epoch.
    pub expires_unix_s: u64,
}

impl ClientError {
    /// True if the service was down, busy or silent: asking again later
    /// may succeed. Refusals (4xx) and broken answers are final.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unavailable { .. }
            | ClientError::Timeout { .. }
            | ClientError::Disconnected(_) => true,
            ClientError::Api { status, .. } => *status == 503,
            ClientError::Protocol(_) => false,
        }
    }
}

/// First pause between two tries of a client that retries, doubled after
/// each try up to [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE_FIRST: Duration = Duration::from_millis(50);
/// Longest pause between two tries.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);

/// A client of one `lsvkms` UNIX socket.
pub struct KmsClient {
    socket_path: PathBuf,
    timeout: Duration,
    retry_for: Duration,
    conn: Mutex<Option<HttpConn<UnixStream>>>,
}

impl KmsClient {
    /// A client with the default timeout ([`CLIENT_TIMEOUT_MS_DEFAULT`]).
    pub fn new(socket_path: impl AsRef<Path>) -> Self {
        Self::with_timeout(
            socket_path,
            Duration::from_millis(CLIENT_TIMEOUT_MS_DEFAULT),
        )
    }

    /// A client whose every connect, read and write gives up after `timeout`.
    pub fn with_timeout(socket_path: impl AsRef<Path>, timeout: Duration) -> Self {
        Self {
            socket_path: socket_path.as_ref().to_path_buf(),
            timeout,
            retry_for: Duration::ZERO,
            conn: Mutex::new(None),
        }
    }

    /// This client, retrying each call that finds the service down, busy
    /// or silent ([`ClientError::is_transient`]) with backoff (50 ms
    /// doubling to 1 s) until `retry_for` has passed since the call began;
    /// then the last error is returned.
    pub fn retrying_for(mut self, retry_for: Duration) -> Self {
        self.retry_for = retry_for;
        self
    }

    /// `POST /v1/datakey`: a key of the default kind (AES-256-XTS).
    pub fn generate_data_key(
        &self,
        acl: &[String],
        context: &KeyContext,
    ) -> Result<GeneratedKey, ClientError> {
        self.generate_key_of_kind(KeyKind::Aes256Xts, acl, context, None)
    }

    /// `POST /v1/datakey` for a key of `kind` (sealed into its blob); with
    /// `replaces`, a new key for a rotation away from `replaces` (a key of
    /// the same volume), which lsvkms records on both keys for the users on
    /// the ACL to see.
    pub fn generate_key_of_kind(
        &self,
        kind: KeyKind,
        acl: &[String],
        context: &KeyContext,
        replaces: Option<KeyId>,
    ) -> Result<GeneratedKey, ClientError> {
        let request = DataKeyRequest {
            acl: acl.to_vec(),
            context: context.clone(),
            key_type: kind,
            replaces,
        };
        let body = self.call("POST", "/v1/datakey", &to_json(&request))?;
        let (key, response) = decode_key(&body)?;
        let wrapped_blob = response
            .wrapped_blob
            .ok_or_else(|| protocol("datakey answer lacks wrapped_blob"))?;
        let wrapping_key_version = response
            .wrapping_key_version
            .ok_or_else(|| protocol("lacks wrapping_key_version"))?;
        Ok(GeneratedKey {
            key,
            wrapped_blob: wrapped_blob.0,
            wrapping_key_version,
        })
    }

    /// `POST /v1/unwrap`: the DEK inside `wrapped_blob`, for the user of `user_token`.
    pub fn unwrap(
        &self,
        wrapped_blob: &[u8],
        context: &KeyContext,
        user_token: &str,
    ) -> Result<DataKey, ClientError> {
        let request = UnwrapRequest {
            wrapped_blob: Base64Bytes(wrapped_blob.to_vec()),
            context: context.clone(),
            user_token: user_token.to_owned(),
            lease_s: None,
            lease_id: None,
        };
        let body = self.call("POST", "/v1/unwrap", &to_json(&request))?;
        Ok(decode_key(&body)?.0)
    }

    /// [`KmsClient::unwrap`], and a lease for this service to unwrap
    /// blobs of `context` again for the same user without a token, for up
    /// to `lease_s` seconds (lsvkms may shorten it to its policy).
    pub fn unwrap_lending(
        &self,
        wrapped_blob: &[u8],
        context: &KeyContext,
        user_token: &str,
        lease_s: u64,
    ) -> Result<(DataKey, LentLease), ClientError> {
        let request = UnwrapRequest {
            wrapped_blob: Base64Bytes(wrapped_blob.to_vec()),
            context: context.clone(),
            user_token: user_token.to_owned(),
            lease_s: Some(lease_s),
            lease_id: None,
        };
        let body = self.call("POST", "/v1/unwrap", &to_json(&request))?;
        let (key, response) = decode_key(&body)?;
        let lease = match (response.lease_id, response.lease_expires_unix_s) {
            (Some(lease_id), Some(expires_unix_s)) => LentLease {
                lease_id,
                expires_unix_s,
            },
            _ => return Err(protocol("unwrap answer lacks the lease asked for")),
        };
        Ok((key, lease))
    }

    /// `POST /v1/unwrap` with a lease lent to this service instead of a
    /// user token.
    pub fn unwrap_with_lease(
        &self,
        wrapped_blob: &[u8],
        context: &KeyContext,
        lease_id: &str,
    ) -> Result<DataKey, ClientError> {
        let request = UnwrapRequest {
            wrapped_blob: Base64Bytes(wrapped_blob.to_vec()),
            context: context.clone(),
            user_token: String::new(),
            lease_s: None,
            lease_id: Some(lease_id.to_owned()),
        };
        let body = self.call("POST", "/v1/unwrap", &to_json(&request))?;
        Ok(decode_key(&body)?.0)
    }

    /// `POST /v1/leases/{id}/revoke`: ends the lease at once.
    pub fn revoke_lease(&self, lease_id: &str) -> Result<serde_json::Value, ClientError> {
        self.call_json("POST", &format!("/v1/leases/{lease_id}/revoke"), b"")
    }

    /// `POST /v1/rewrap`: the same key, ACL and context sealed under the
    /// newest wrapping-key version.
    pub fn rewrap(&self, wrapped_blob: &[u8]) -> Result<RewrapResponse, ClientError> {
        let request = RewrapRequest {
            wrapped_blob: Base64Bytes(wrapped_blob.to_vec()),
            acl: None,
            user_token: None,
        };
        self.call_json("POST", "/v1/rewrap", &to_json(&request))
    }

    /// `POST /v1/rewrap` with `acl`: the same key and context sealed with
    /// `acl` under the newest wrapping-key version. The user of
    /// `user_token` must be on the ACL sealed in `wrapped_blob`; the old
    /// blob keeps its old ACL.
    pub fn rewrap_with_acl(
        &self,
        wrapped_blob: &[u8],
        acl: &[String],
        user_token: &str,
    ) -> Result<RewrapResponse, ClientError> {
        let request = RewrapRequest {
            wrapped_blob: Base64Bytes(wrapped_blob.to_vec()),
            acl: Some(acl.to_vec()),
            user_token: Some(user_token.to_owned()),
        };
        self.call_json("POST", "/v1/rewrap", &to_json(&request))
    }

    /// `POST /v1/wrapping-key/rotate`.
    pub fn rotate_wrapping_key(&self) -> Result<WrappingKeyInfo, ClientError> {
        self.call_json("POST", "/v1/wrapping-key/rotate", b"")
    }

    /// `POST /v1/wrapping-key/min-version`.
    pub fn set_min_wrapping_key_version(
        &self,
        min_version: u32,
    ) -> Result<WrappingKeyInfo, ClientError> {
        self.call_json(
            "POST",
            "/v1/wrapping-key/min-version",
            &to_json(&MinVersionRequest { min_version }),
        )
    }

    /// `POST /v1/keys/{id}/disable|enable|destroy`.
    pub fn set_key_state(&self, key_id: KeyId, action: KeyAction) -> Result<KeyInfo, ClientError> {
        self.call_json("POST", &format!("/v1/keys/{key_id}/{}", action.name()), b"")
    }

    /// `GET /v1/keys/{id}`.
    pub fn key_info(&self, key_id: KeyId) -> Result<KeyInfo, ClientError> {
        self.call_json("GET", &format!("/v1/keys/{key_id}"), b"")
    }

    /// `GET /v1/keys/{id}?since=REVISION`: `None` while the key's record
    /// is still at revision `since` (lsvkms answers 304 and audits
    /// nothing), else its info, as [`KmsClient::key_info`].
    pub fn key_info_since(
        &self,
        key_id: KeyId,
        since: u64,
    ) -> Result<Option<KeyInfo>, ClientError> {
        let target = format!("/v1/keys/{key_id}?since={since}");
        match self.call("GET", &target, b"") {
            Err(ClientError::Api { status: 304, .. }) => Ok(None),
            Err(error) => Err(error),
            Ok(answer) => serde_json::from_slice(&answer)
                .map(Some)
                .map_err(|e| protocol(&format!("answer to {target}: {e}"))),
        }
    }

    /// `POST /v1/keys/mine`: the keys whose ACL lists the user of
    /// `user_token` (ids, contexts, ACLs, states, times; never material).
    pub fn my_keys(&self, user_token: &str) -> Result<MyKeys, ClientError> {
        let request = MyKeysRequest {
            user_token: user_token.to_owned(),
        };
        self.call_json("POST", "/v1/keys/mine", &to_json(&request))
    }

    /// `GET /v1/audit?key_id=…&limit=…`: the records, oldest first.
    pub fn audit(
        &self,
        key_id: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, ClientError> {
        let target = match key_id {
            Some(id) => format!("/v1/audit?key_id={id}&limit={limit}"),
            None => format!("/v1/audit?limit={limit}"),
        };
        let answer: serde_json::Value = self.call_json("GET", &target, b"")?;
        serde_json::from_value(answer["records"].clone()).map_err(|e| protocol(&e.to_string()))
    }

    /// `GET /v1/health`. A degraded service answers `Err(Api { status: 503, .. })`.
    pub fn health(&self) -> Result<Health, ClientError> {
        self.call_json("GET", "/v1/health", b"")
    }

    fn call_json<T: DeserializeOwned>(
        &self,
        method: &str,
        target: &str,
        body: &[u8],
    ) -> Result<T, ClientError> {
        let answer = self.call(method, target, body)?;
        serde_json::from_slice(&answer).map_err(|e| protocol(&format!("answer to {target}: {e}")))
    }

    /// One request/response, retried while transient if so configured;
    /// the body of a 200, else [`ClientError::Api`]. Its outcome goes into
    /// the process's [`call_record`].
    fn call(
        &self,
        method: &str,
        target: &str,
        body: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let give_up = Instant::now() + self.retry_for;
        let mut pause = RETRY_PAUSE_FIRST;
        loop {
            match self.call_once(method, target, body) {
                Err(error) if error.is_transient() && Instant::now() + pause < give_up => {
                    tracing::warn!(%error, retry_in_ms = pause.as_millis() as u64, "key service not available; retrying");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(RETRY_PAUSE_MAX);
                }
                result => {
                    call_record().note(&result);
                    return result;
                }
            }
        }
    }

    fn call_once(
        &self,
        method: &str,
        target: &str,
        body: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let mut slot = self.conn.lock().expect("client lock poisoned");
        let reused = slot.is_some();
        let mut conn = match slot.take() {
            Some(conn) => conn,
            None => self.connect()?,
        };
        let mut result = exchange(&mut conn, method, target, body);
        let stale = match &result {
            Err(HttpError::Closed) => true,
            Err(HttpError::Io(e)) => !is_timeout(e),
            _ => false,
        };
        if reused && stale {
            conn = self.connect()?;
            result = exchange(&mut conn, method, target, body);
        }
        let (status, answer) = result.map_err(|e| self.transport_error(e))?;
        *slot = Some(conn);
        if status == 200 {
            return Ok(answer);
        }
        if status == 304 {
            return Err(ClientError::Api {
                status,
                code: "not_modified".to_owned(),
                message: "unchanged since the revision given".to_owned(),
            });
        }
        let error: ErrorBody = serde_json::from_slice(&answer)
            .map_err(|_| protocol(&format!("status {status} without an error body")))?;
        Err(ClientError::Api {
            status,
            code: error.error,
            message: error.message,
        })
    }

    fn connect(&self) -> Result<HttpConn<UnixStream>, ClientError> {
        let unavailable = |source| ClientError::Unavailable {
            path: self.socket_path.clone(),
            source,
        };
        let stream = UnixStream::connect(&self.socket_path).map_err(unavailable)?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(unavailable)?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(unavailable)?;
        Ok(HttpConn::new(stream, HTTP_RESPONSE_BYTES_MAX))
    }

    fn transport_error(&self, error: HttpError) -> ClientError {
        match error {
            HttpError::Io(e) if is_timeout(&e) => ClientError::Timeout {
                timeout_ms: self.timeout.as_millis() as u64,
            },
            HttpError::Io(e) => ClientError::Disconnected(e.to_string()),
            HttpError::Closed => ClientError::Disconnected(HttpError::Closed.to_string()),
            other => protocol(&other.to_string()),
        }
    }
}

/// Sends a request and reads the answer. The service may answer before it
/// reads a byte (503 busy, 403 to a stranger) and close: then sending
/// fails, but the answer is there to read, and it is what counts.
fn exchange(
    conn: &mut HttpConn<UnixStream>,
    method: &str,
    target: &str,
    body: &[u8],
) -> Result<(u16, Zeroizing<Vec<u8>>), HttpError> {
    let sent = conn.write_request(method, target, body);
    match (conn.read_response(), sent) {
        (Ok(answer), _) => Ok(answer),
        (Err(_), Err(unsent)) => Err(HttpError::Io(unsent)),
        (Err(unread), Ok(())) => Err(unread),
    }
}

fn protocol(detail: &str) -> ClientError {
    ClientError::Protocol(detail.to_owned())
}

fn to_json(value: &impl serde::Serialize) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(serde_json::to_vec(value).expect("requests serialize"))
}

/// Decodes the key of a key-bearing answer and checks it against its id.
fn decode_key(body: &[u8]) -> Result<(DataKey, KeyResponse<'_>), ClientError> {
    // Decoding runs the key's bytes through vector registers.
    let _registers = RegisterScrub::on_drop();
    let response: KeyResponse<'_> =
        serde_json::from_slice(body).map_err(|e| protocol(&e.to_string()))?;
    let mut material = Zeroizing::new(Vec::with_capacity(128));
    base64_decode_into(response.plaintext_key, &mut material)
        .map_err(|e| protocol(&e.to_string()))?;
    let key =
        DataKey::from_bytes(response.key_type, &material).map_err(|e| protocol(&e.to_string()))?;
    if key.id() != response.key_id {
        return Err(protocol("plaintext_key does not match key_id"));
    }
    Ok((key, response))
}
