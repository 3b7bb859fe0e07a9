//! The app's HTTPS listener (`TESTAPP_HTTPS_ADDR`): a server outside the mesh that a proxy
//! originates TLS to. The same routes as the plaintext listener; each answer's echo says what
//! the TLS handshake carried ([`TlsInfo`]: the server name the client sent, the protocol
//! agreed), so a test sees who originated TLS and how.

use std::io::BufReader;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use serde::Serialize;

/// Where the HTTPS listener binds and the certificate it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsSettings {
    /// The listener's address.
    pub addr: SocketAddr,
    /// The certificate chain (PEM), the server's certificate first.
    pub cert_file: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// What one connection's TLS handshake carried.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TlsInfo {
    /// The server name (SNI) the client asked for, if it sent one.
    pub sni: Option<String>,
    /// The application protocol agreed by ALPN (`h2`, `http/1.1`), if any.
    pub alpn: Option<String>,
    /// The TLS version (`TLSv1_3`, `TLSv1_2`).
    pub version: String,
}

impl TlsInfo {
    /// The handshake's facts, read from an established server connection.
    pub(crate) fn of(conn: &rustls::ServerConnection) -> Self {
        TlsInfo {
            sni: conn.server_name().map(str::to_string),
            alpn: conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
            version: conn.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
        }
    }
}

/// The server configuration of `settings`: its certificate and key read from their files,
/// HTTP/2 and HTTP/1.1 offered by ALPN; no client certificate asked for.
pub(crate) fn server_config(settings: &HttpsSettings) -> anyhow::Result<rustls::ServerConfig> {
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path).with_context(|| {
            format!(
                "reading the {what} {} (TESTAPP_TLS_CERT, TESTAPP_TLS_KEY)",
                path.display()
            )
        })
    };
    let cert_pem = read(&settings.cert_file, "certificate")?;
    let key_pem = read(&settings.key_file, "private key")?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(cert_pem.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", settings.cert_file.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{}: no CERTIFICATE block; TESTAPP_TLS_CERT names the PEM chain to serve",
        settings.cert_file.display()
    );
    let key = rustls_pemfile::private_key(&mut BufReader::new(key_pem.as_slice()))
        .with_context(|| format!("{}: not a PEM private key", settings.key_file.display()))?
        .with_context(|| {
            format!(
                "{}: no PRIVATE KEY block; TESTAPP_TLS_KEY names the certificate's key in PEM",
                settings.key_file.display()
            )
        })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate does not match its private key")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
