//! `lsvkms`, the key-wrapping service, and its client.
//!
//! The service holds the versioned wrapping key, creates data keys (DEKs),
//! seals them into wrapped blobs and releases a DEK only to an
//! authenticated calling service acting for a user on the key's ACL (the
//! ACL sealed inside the blob). Modules, one job each:
//!
//! - [`api`]: the JSON types both sides share;
//! - [`seal`]: the wrapped-blob format (parses untrusted bytes);
//! - [`kek`]: wrapping-key backends (file, PKCS#11);
//! - [`auth`]: service identity, user tokens, the ACL check;
//! - [`audit`]: the hash-chained audit log, its verification and the
//!   compromise check;
//! - [`keys`]: per-key state (enabled, disabled, destroyed, compromised);
//! - [`service`]: the operations, independent of HTTP;
//! - [`http`], [`server`], [`router`], [`tls`], [`client`]: the wire;
//!   [`admission`] and [`refusal`]: connection slots, and refusals before
//!   any API call (answered at once, audited in counts);
//! - [`metrics`]: the service's request, refusal and audit-sync counters;
//!   [`calls`]: a client process's record of its calls.
//!
//! Log messages, errors and `Debug` output of this module never contain key
//! material (tested by `no_plaintext_key_bytes_in_audit_log_service_log_or_state`
//! in `tests/kms_flow.rs`).

pub mod admission;
pub mod api;
pub mod audit;
pub mod auth;
pub mod calls;
pub mod client;
pub mod config;
pub mod error;
pub mod fsutil;
pub mod http;
pub mod kek;
pub mod keys;
pub mod leases;
pub mod limits;
pub mod metrics;
pub mod refusal;
pub mod router;
pub mod seal;
pub mod server;
pub mod service;
pub mod tls;

pub use error::KmsError;
