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
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use sha2::{Digest, Sha256};

use super::auth::PeerIdentity;
use super::limits::HTTP_IDLE_MS_MAX;
use super::server::{TimeoutStream, spawn_with_slot};
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

/// Accepts TCP connections forever; each does its handshake and is served
/// on its own thread (counted against the same connection limit).
pub fn serve_tcp(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    service: Arc<Service>,
) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        stream.set_timeouts(Some(Duration::from_millis(HTTP_IDLE_MS_MAX)))?;
        stream.set_nodelay(true)?;
        let tls = Arc::clone(&tls);
        spawn_with_slot(&service, &active, stream, move |service, stream| {
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
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
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
