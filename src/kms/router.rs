//! The router: maps each endpoint onto a [`Service`] operation and its
//! answer onto an HTTP reply.
//!
//! Bodies are never logged; responses carrying key material are built in
//! zeroized buffers.

use serde::Serialize;
use zeroize::Zeroizing;

use crate::crypto::{DataKey, KeyId, KeyKind};

use super::api::{
    Base64Bytes, DataKeyRequest, ErrorBody, MinVersionRequest, MyKeysRequest, RewrapRequest,
    RewrapResponse, UnwrapRequest, base64_encode_into,
};
use super::auth::PeerIdentity;
use super::error::KmsError;
use super::keys::KeyAction;
use super::leases::Lease;
use super::metrics::Stage;
use super::service::Service;

/// Bytes reserved for a response that carries a key, so serializing never
/// reallocates (a reallocation would leave a copy of the key behind).
const KEY_RESPONSE_BYTES: usize = 16 * 1024;

/// An HTTP reply: status and JSON body (zeroized on drop).
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Zeroizing<Vec<u8>>,
}

impl Reply {
    fn json(value: &impl Serialize) -> Self {
        let mut body = Zeroizing::new(Vec::with_capacity(KEY_RESPONSE_BYTES));
        serde_json::to_writer(&mut *body, value).expect("responses serialize");
        Reply { status: 200, body }
    }

    /// 304: what the caller knows is still current (empty body).
    fn not_modified() -> Self {
        Reply {
            status: 304,
            body: Zeroizing::new(Vec::new()),
        }
    }

    /// The answer to a refused or failed call.
    pub fn error(error: &KmsError) -> Self {
        let body = ErrorBody {
            error: error.code().to_owned(),
            message: error.to_string(),
        };
        Reply {
            status: error.http_status(),
            ..Reply::json(&body)
        }
    }
}

/// A response that carries a plaintext key (borrowed from a zeroized string).
#[derive(Serialize)]
struct KeyResponse<'a> {
    key_id: KeyId,
    key_type: KeyKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    wrapped_blob: Option<Base64Bytes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wrapping_key_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_expires_unix_s: Option<u64>,
    plaintext_key: &'a str,
}

fn key_reply(
    key: &DataKey,
    wrapped_blob: Option<Base64Bytes>,
    wrapping_key_version: Option<u32>,
    lease: Option<Lease>,
) -> Reply {
    let mut encoded = Zeroizing::new(Vec::with_capacity(128));
    base64_encode_into(
        &key.expose_secret()[..key.kind().material_bytes()],
        &mut encoded,
    );
    Reply::json(&KeyResponse {
        key_id: key.id(),
        key_type: key.kind(),
        wrapped_blob,
        wrapping_key_version,
        lease_expires_unix_s: lease.as_ref().map(|l| l.expires_unix_s),
        lease_id: lease.map(|l| l.lease_id),
        plaintext_key: std::str::from_utf8(&encoded).expect("base64 is ASCII"),
    })
}

fn parse_body<T: for<'de> serde::Deserialize<'de>>(body: &[u8]) -> Result<T, KmsError> {
    serde_json::from_slice(body).map_err(|e| KmsError::BadRequest(format!("request body: {e}")))
}

fn parse_key_id(text: &str) -> Result<KeyId, KmsError> {
    text.parse()
        .map_err(|e: crate::crypto::key::ParseKeyIdError| KmsError::BadRequest(e.to_string()))
}

/// Answers one request. Every call except `GET /v1/health` is audited,
/// including malformed ones.
pub fn route(
    service: &Service,
    peer: &PeerIdentity,
    method: &str,
    target: &str,
    body: &[u8],
) -> Reply {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if method == "GET" && path == "/v1/health" {
        let (healthy, health) = service.health();
        let mut reply = Reply::json(&health);
        reply.status = if healthy { 200 } else { 503 };
        return reply;
    }
    let _call = service.begin_call();
    dispatch(service, peer, method, path, query, body).unwrap_or_else(|error| {
        service.metrics().refused(Stage::Call, error.code());
        Reply::error(&error)
    })
}

fn dispatch(
    service: &Service,
    peer: &PeerIdentity,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> Result<Reply, KmsError> {
    let refuse = |action: &str, error: KmsError| service.refuse(peer, action, error);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("POST", ["v1", "datakey"]) => {
            let request: DataKeyRequest = parse_body(body).map_err(|e| refuse("datakey", e))?;
            let grant = service.datakey(peer, &request)?;
            Ok(key_reply(
                &grant.key,
                Some(Base64Bytes(grant.blob)),
                Some(grant.kek_version),
                None,
            ))
        }
        ("POST", ["v1", "unwrap"]) => {
            let request: UnwrapRequest = parse_body(body).map_err(|e| refuse("unwrap", e))?;
            let unwrapped = service.unwrap(peer, &request)?;
            Ok(key_reply(
                &unwrapped.opened.key,
                None,
                None,
                unwrapped.lease,
            ))
        }
        ("POST", ["v1", "rewrap"]) => {
            let request: RewrapRequest = parse_body(body).map_err(|e| refuse("rewrap", e))?;
            let r = service.rewrap(peer, &request)?;
            let response = RewrapResponse {
                key_id: r.key_id,
                wrapped_blob: Base64Bytes(r.blob),
                wrapping_key_version: r.kek_version,
            };
            Ok(Reply::json(&response))
        }
        ("POST", ["v1", "wrapping-key", "rotate"]) => Ok(Reply::json(&service.rotate(peer)?)),
        ("POST", ["v1", "wrapping-key", "min-version"]) => {
            let request: MinVersionRequest =
                parse_body(body).map_err(|e| refuse("set_min_version", e))?;
            Ok(Reply::json(
                &service.set_min_version(peer, request.min_version)?,
            ))
        }
        ("GET", ["v1", "wrapping-key"]) => Ok(Reply::json(&service.wrapping_key_info(peer)?)),
        ("GET", ["v1", "keys", id]) => {
            let id = parse_key_id(id).map_err(|e| refuse("key_info", e))?;
            let since = parse_since(query).map_err(|e| refuse("key_info", e))?;
            match service.key_info_since(peer, id, since)? {
                Some(info) => Ok(Reply::json(&info)),
                None => Ok(Reply::not_modified()),
            }
        }
        ("POST", ["v1", "keys", "mine"]) => {
            let request: MyKeysRequest = parse_body(body).map_err(|e| refuse("key_list", e))?;
            Ok(Reply::json(&service.my_keys(peer, &request)?))
        }
        ("POST", ["v1", "keys", id, action]) => {
            let Some(action) = KeyAction::from_name(action) else {
                return Err(refuse("unknown", KmsError::NoRoute(path.to_owned())));
            };
            let id = parse_key_id(id).map_err(|e| refuse(action.name(), e))?;
            Ok(Reply::json(&service.set_state(peer, id, action)?))
        }
        ("POST", ["v1", "leases", id, "revoke"]) => {
            Ok(Reply::json(&service.revoke_lease(peer, id)?))
        }
        ("GET", ["v1", "audit"]) => audit_query(service, peer, query),
        (_, segments) => Err(refuse("unknown", no_route(method, path, segments))),
    }
}

fn audit_query(service: &Service, peer: &PeerIdentity, query: &str) -> Result<Reply, KmsError> {
    let (key_id, limit) =
        parse_audit_query(query).map_err(|e| service.refuse(peer, "audit_read", e))?;
    let records = service.audit_query(peer, key_id, limit)?;
    Ok(Reply::json(&serde_json::json!({ "records": records })))
}

fn parse_audit_query(query: &str) -> Result<(Option<KeyId>, usize), KmsError> {
    let mut key_id = None;
    let mut limit = 100usize;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("key_id", value)) => key_id = Some(parse_key_id(value)?),
            Some(("limit", value)) => {
                limit = value
                    .parse()
                    .map_err(|_| KmsError::BadRequest("limit must be a number".into()))?;
            }
            _ => {
                return Err(KmsError::BadRequest(format!(
                    "unknown query parameter {pair:?}"
                )));
            }
        }
    }
    Ok((key_id, limit))
}

/// `since=REVISION` (the only parameter of `GET /v1/keys/{id}`), if given.
fn parse_since(query: &str) -> Result<Option<u64>, KmsError> {
    let mut since = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("since", value)) => {
                since =
                    Some(value.parse().map_err(|_| {
                        KmsError::BadRequest("since must be a revision number".into())
                    })?);
            }
            _ => {
                return Err(KmsError::BadRequest(format!(
                    "unknown query parameter {pair:?}"
                )));
            }
        }
    }
    Ok(since)
}

fn no_route(method: &str, path: &str, segments: &[&str]) -> KmsError {
    let known = matches!(
        segments,
        [
            "v1",
            "health" | "datakey" | "unwrap" | "rewrap" | "audit" | "wrapping-key"
        ] | ["v1", "wrapping-key", "rotate" | "min-version"]
            | ["v1", "keys", _]
            | ["v1", "keys", _, "disable" | "enable" | "destroy"]
            | ["v1", "leases", _, "revoke"]
    );
    if known {
        KmsError::MethodNotAllowed {
            method: method.to_owned(),
            path: path.to_owned(),
        }
    } else {
        KmsError::NoRoute(path.to_owned())
    }
}
