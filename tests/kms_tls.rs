//! TLS on TCP: a client certificate signed by the client CA *and*
//! allow-listed by fingerprint identifies the calling service; a CA-signed
//! certificate that is not allow-listed gets 403; no certificate, no
//! handshake.

mod kit;

use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use kit::kms::Kms;
use lsvblk::kms::http::HttpConn;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

struct Pki {
    ca_der: CertificateDer<'static>,
    listed: (CertificateDer<'static>, Vec<u8>),
    unlisted: (CertificateDer<'static>, Vec<u8>),
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.extended_key_usages = vec![usage];
    (params.signed_by(&key, issuer).unwrap(), key)
}

/// A CA, a server certificate and two client certificates, as PEM files in `dir`.
fn make_pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let (server, server_key) = leaf(&issuer, &["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    let (listed, listed_key) = leaf(
        &issuer,
        &["lsvblk-remote"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    std::fs::write(dir.join("client.pem"), listed.pem()).unwrap();
    let (unlisted, unlisted_key) =
        leaf(&issuer, &["stranger"], ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca_der: ca_cert.der().clone(),
        listed: (listed.der().clone(), listed_key.serialize_der()),
        unlisted: (unlisted.der().clone(), unlisted_key.serialize_der()),
    }
}

fn client_config(
    pki: &Pki,
    identity: Option<&(CertificateDer<'static>, Vec<u8>)>,
) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// One request over TLS: (status, body), or the transport error.
fn call(
    port: u16,
    config: Arc<ClientConfig>,
    method: &str,
    target: &str,
    body: &[u8],
) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut http = HttpConn::new(StreamOwned::new(conn, tcp), 1 << 20);
    http.write_request(method, target, body)
        .map_err(|e| e.to_string())?;
    let (status, body) = http.read_response().map_err(|e| e.to_string())?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Allow-lists the client certificate by fingerprint (through the CLI) and
/// starts the service with TLS on a free port.
fn start_with_tls(kms: &mut Kms) -> u16 {
    let pem = kms.dir().join("client.pem");
    let out = kms.run(&["tls", "fingerprint", "--cert", pem.to_str().unwrap()]);
    assert!(out.status.success());
    let fingerprint = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(fingerprint.len(), 64);
    let config_path = kms.state_dir().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["tls_services"] =
        serde_json::json!([{ "name": "remote-daemon", "cert_sha256": fingerprint }]);
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = kms.dir().to_owned();
    let file = |name: &str| tmp.join(name).display().to_string();
    kms.set_serve_args(vec![
        "--tcp".into(),
        format!("127.0.0.1:{port}"),
        "--tls-cert".into(),
        file("server.pem"),
        "--tls-key".into(),
        file("server.key"),
        "--client-ca".into(),
        file("ca.pem"),
    ]);
    kms.serve();
    port
}

#[test]
fn tls_client_certificates_identify_the_calling_service() {
    let mut kms = Kms::init(&[], Vec::new());
    let pki = make_pki(kms.dir());
    let port = start_with_tls(&mut kms);

    let request = br#"{"acl":["alice"],"context":{"volume_id":"remote-vol"}}"#;
    let (status, body) = call(
        port,
        client_config(&pki, Some(&pki.listed)),
        "POST",
        "/v1/datakey",
        request,
    )
    .unwrap_or_else(|e| panic!("{e}: {}", kms.stderr()));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("plaintext_key"));

    let (status, body) = call(
        port,
        client_config(&pki, Some(&pki.unlisted)),
        "POST",
        "/v1/datakey",
        request,
    )
    .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("service_not_allowed"), "{body}");

    let anonymous = call(
        port,
        client_config(&pki, None),
        "GET",
        "/v1/wrapping-key",
        b"",
    );
    assert!(
        anonymous.is_err(),
        "no client certificate, no answer: {anonymous:?}"
    );

    let audit = std::fs::read_to_string(kms.audit_path()).unwrap();
    assert!(audit.contains("\"service\":\"remote-daemon\""), "{audit}");
    // Refused before reading; audited by fingerprint, in counts, within a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(kms.audit_path())
        .unwrap()
        .contains("\"service\":\"tls:")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the unlisted certificate is audited by fingerprint"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
