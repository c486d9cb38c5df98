//! The optional TCP listener: TLS 1.3 only, client certificate required.
//!
//! The TLS layer verifies the client's chain against the configured client
//! CA; the service then identifies the caller by the SHA-256 fingerprint of
//! its leaf certificate, which must be on the `tls_services` allow-list in
//! `config.json` (`lsvkms tls fingerprint --cert FILE` prints it). A
//! certificate the CA signed but that is not allow-listed is refused with
//! 403; no certificate, no handshake.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use sha2::{Digest, Sha256};

use super::admission::Admission;
use super::auth::PeerIdentity;
use super::http::TimeoutStream;
use super::refusal::Refusal;
use super::server::{DEADLINES, accepted, spawn_connection};
use super::service::Service;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn pem_error(path: &Path, reason: impl std::fmt::Display) -> TlsSetupError {
    TlsSetupError::Pem {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Loads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no certificate"));
    }
    Ok(certs)
}

/// SHA-256 of a certificate's DER, lowercase hex: how `tls_services` names it.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// A TLS 1.3 server configuration that requires a client certificate
/// signed by a CA in `client_ca`.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in load_certs(client_ca)? {
        roots.add(ca).map_err(|e| pem_error(client_ca, e))?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsSetupError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, key)
        .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

impl TimeoutStream for TcpStream {
    fn set_timeouts(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)?;
        self.set_write_timeout(timeout)
    }
}

impl<C> TimeoutStream for StreamOwned<C, TcpStream> {
    fn set_timeouts(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.set_timeouts(timeout)
    }
}

/// Accepts TCP connections forever; each does its handshake and is served
/// on its own thread. Slots are counted per client address (the identity
/// is known only after the handshake), at most 16 each, 64 in all.
pub fn serve_tcp(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    service: Arc<Service>,
) -> io::Result<()> {
    let admission = Admission::new();
    for stream in accepted(listener.incoming()) {
        let address = match stream.peer_addr() {
            Ok(address) => format!("tcp:{}", address.ip()),
            Err(_) => continue, // gone already
        };
        let Some(slot) = admission.admit(&address) else {
            // No plaintext answer on a TLS port: just close.
            service.note_refusal(&PeerIdentity::Anonymous, Refusal::Busy);
            continue;
        };
        stream.set_nodelay(true)?;
        let tls = Arc::clone(&tls);
        spawn_connection(&service, slot, stream, move |service, stream| {
            serve_tls(service, &tls, stream)
        })?;
    }
    Ok(())
}

fn serve_tls(service: &Service, tls: &Arc<ServerConfig>, mut tcp: TcpStream) {
    let mut conn = match ServerConnection::new(Arc::clone(tls)) {
        Ok(conn) => conn,
        Err(e) => return tracing::warn!(error = %e, "TLS session setup failed"),
    };
    // The handshake, like a request, must be over within the request time.
    let due = Instant::now() + DEADLINES.whole;
    while conn.is_handshaking() {
        let left = due.saturating_duration_since(Instant::now());
        if left.is_zero() {
            service.note_refusal(&PeerIdentity::Anonymous, Refusal::TooSlow);
            return tracing::debug!("TLS handshake too slow");
        }
        if let Err(e) = tcp
            .set_timeouts(Some(left))
            .and_then(|()| conn.complete_io(&mut tcp).map(|_| ()))
        {
            return tracing::debug!(error = %e, "TLS handshake failed");
        }
    }
    let peer = match conn.peer_certificates().and_then(|certs| certs.first()) {
        Some(leaf) => PeerIdentity::Tls {
            cert_sha256: fingerprint(leaf),
        },
        None => PeerIdentity::Anonymous,
    };
    super::server::serve_connection(service, &peer, StreamOwned::new(conn, tcp));
}
