//! The blocking client the daemon uses: HTTP/1.1 over the service's UNIX
//! socket, with connect/read/write timeouts, so a dead or stuck service is a
//! clear error within the timeout, never a hang.
//!
//! One connection is kept alive between calls. If a call on a *reused*
//! connection fails before any response byte arrives (the service closed
//! an idle connection, or restarted), it is retried once on a fresh
//! connection. Plaintext keys are decoded from the zeroized response body
//! straight into a [`DataKey`] in locked memory.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::crypto::hygiene::RegisterScrub;
use crate::crypto::{DataKey, KeyId, KeyKind};

use super::api::{
    Base64Bytes, DataKeyRequest, ErrorBody, Health, KeyContext, KeyInfo, MinVersionRequest,
    RewrapRequest, RewrapResponse, UnwrapRequest, WrappingKeyInfo, base64_decode_into,
};
use super::http::{HttpConn, HttpError};
use super::keys::KeyAction;
use super::limits::{CLIENT_TIMEOUT_MS_DEFAULT, HTTP_RESPONSE_BYTES_MAX};

/// Why a call to the service failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// The connection broke or the answer is not what the API promises.
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
    #[serde(borrow)]
    plaintext_key: &'a str,
}

/// A client of one `lsvkms` UNIX socket.
pub struct KmsClient {
    socket_path: PathBuf,
    timeout: Duration,
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
            conn: Mutex::new(None),
        }
    }

    /// `POST /v1/datakey`.
    pub fn generate_data_key(
        &self,
        acl: &[String],
        context: &KeyContext,
    ) -> Result<GeneratedKey, ClientError> {
        let request = DataKeyRequest {
            acl: acl.to_vec(),
            context: context.clone(),
            key_type: KeyKind::Aes256Xts,
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
        };
        let body = self.call("POST", "/v1/unwrap", &to_json(&request))?;
        Ok(decode_key(&body)?.0)
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

    /// One request/response; the body of a 200, else [`ClientError::Api`].
    fn call(
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
        if reused
            && matches!(result, Err(HttpError::Closed) | Err(HttpError::Io(_)))
            && !is_timeout(&result)
        {
            conn = self.connect()?;
            result = exchange(&mut conn, method, target, body);
        }
        let (status, answer) = result.map_err(|e| self.transport_error(e))?;
        *slot = Some(conn);
        if status == 200 {
            return Ok(answer);
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
            HttpError::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                ClientError::Timeout {
                    timeout_ms: self.timeout.as_millis() as u64,
                }
            }
            other => protocol(&other.to_string()),
        }
    }
}

fn is_timeout(result: &Result<(u16, Zeroizing<Vec<u8>>), HttpError>) -> bool {
    matches!(result, Err(HttpError::Io(e)) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

fn exchange(
    conn: &mut HttpConn<UnixStream>,
    method: &str,
    target: &str,
    body: &[u8],
) -> Result<(u16, Zeroizing<Vec<u8>>), HttpError> {
    conn.write_request(method, target, body)?;
    conn.read_response()
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
