//! The I/O edge of [`super`]: one GET of a `jwksUri` over HTTPS (rustls, the system's roots
//! or roots a test injects) or plain HTTP, within the rule's timeout and the key-set size
//! limit, following no redirect; for a discovered key set, the issuer's discovery document
//! first (the same limits), then the `jwks_uri` it names.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use trellis_api::security::{JwksUri, discovered_issuer, discovery_document, jwks_uri_from_discovery, parse_jwks_uri};
use trellis_contract::jwt::MAX_JWKS_BYTES;

/// Fetches key sets. Cheap to clone.
#[derive(Clone)]
pub struct Fetcher {
    /// The TLS client settings, or why https cannot work (no roots at all), said on every
    /// https fetch.
    tls: Result<Arc<rustls::ClientConfig>, String>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("https", &self.tls.as_ref().map(|_| "ready"))
            .finish()
    }
}

impl Fetcher {
    /// Verify servers against the operator's system roots (`rustls-native-certs`: the image's
    /// CA bundle, or `SSL_CERT_FILE`/`SSL_CERT_DIR`).
    pub fn system() -> Self {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = format!(
                "the operator found no system root certificates ({} errors), so it cannot verify any https server; install a CA bundle in its image or set SSL_CERT_FILE",
                found.errors.len()
            );
            tracing::warn!(%why, "jwksUri over https cannot be fetched");
            return Self { tls: Err(why) };
        }
        Self::with_roots(roots)
    }

    /// Verify servers against `roots` only (tests: a test CA).
    pub fn with_roots(roots: RootCertStore) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                let mut c = b.with_root_certificates(roots).with_no_client_auth();
                c.alpn_protocols = vec![b"http/1.1".to_vec()];
                Arc::new(c)
            })
            .map_err(|e| format!("the operator's TLS client settings: {e}"));
        Self { tls }
    }

    /// GET `uri` within `timeout` (connecting, TLS, the answer and its body): the body, or why
    /// there is none. The reason never carries the body (a key set is public, but a server's
    /// error page may not be).
    pub async fn get(&self, uri: &str, timeout: Duration) -> Result<String, String> {
        let target = parse_jwks_uri(uri).map_err(|why| format!("the URL {why}"))?;
        match tokio::time::timeout(timeout, self.get_target(&target)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no complete answer within {} (the rule's timeout, default 5s)",
                super::cache::human(timeout)
            )),
        }
    }

    /// The key set kept under `key` ([`trellis_api::security::KeySource::fetch_key`]): the
    /// `jwksUri` fetched, or for an issuer, its OpenID Connect discovery document fetched and
    /// then the `jwks_uri` it names, each within `timeout`. The reason names the step that failed.
    pub async fn key_set(&self, key: &str, timeout: Duration) -> Result<String, String> {
        let Some(issuer) = discovered_issuer(key) else {
            return self.get(key, timeout).await;
        };
        let document = discovery_document(issuer);
        let body = self
            .get(&document, timeout)
            .await
            .map_err(|why| format!("OpenID Connect discovery at {document}: {why}"))?;
        let jwks_uri = jwks_uri_from_discovery(issuer, &body).map_err(|why| format!("{document}: {why}"))?;
        self.get(&jwks_uri, timeout).await.map_err(|why| {
            format!(
                "the key set {} named by {document}: {why}",
                trellis_api::security::jwks_uri_for_display(&jwks_uri)
            )
        })
    }

    async fn get_target(&self, t: &JwksUri) -> Result<String, String> {
        let config = if t.https { Some(self.tls.clone()?) } else { None };
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| format!("connecting to {}:{}: {e}", t.host, t.port))?;
        let Some(config) = config else {
            return request(tcp, t).await;
        };
        let name =
            ServerName::try_from(t.host.clone()).map_err(|e| format!("{:?} as a TLS server name: {e}", t.host))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}:{}: {e}", t.host, t.port))?;
        request(tls, t).await
    }
}

async fn request<S>(io: S, t: &JwksUri) -> Result<String, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP with {}:{}: {e}", t.host, t.port))?;
    // The connection is driven here, not spawned: when the timeout drops this future, the
    // socket goes with it.
    let exchange = exchange(&mut sender, t);
    tokio::pin!(connection, exchange);
    tokio::select! {
        result = &mut exchange => result,
        closed = &mut connection => match closed {
            // Closed after answering (`Connection: close`): the answer is already buffered.
            Ok(()) => exchange.await,
            Err(e) => Err(format!("HTTP with {}:{}: {e}", t.host, t.port)),
        },
    }
}

async fn exchange(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    t: &JwksUri,
) -> Result<String, String> {
    let default_port = if t.https { 443 } else { 80 };
    let host = if t.host.contains(':') {
        format!("[{}]", t.host)
    } else {
        t.host.clone()
    };
    let authority = if t.port == default_port {
        host
    } else {
        format!("{host}:{}", t.port)
    };
    let request = hyper::Request::get(t.path.as_str())
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json, application/jwk-set+json")
        .header(
            hyper::header::USER_AGENT,
            concat!("trellis-operator/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::new())
        // The path only: the query can hold a credential.
        .map_err(|e| {
            format!(
                "the request for {:?}: {e}",
                t.path.split('?').next().unwrap_or_default()
            )
        })?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP with {}:{}: {e}", t.host, t.port))?;
    let status = response.status();
    if status.is_redirection() {
        let location = response
            .headers()
            .get(hyper::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .unwrap_or("(no Location)");
        return Err(format!(
            "HTTP {status}: redirects are not followed; point jwksUri at {location:?}"
        ));
    }
    if status != StatusCode::OK {
        return Err(format!("HTTP {status}"));
    }
    let declared = response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > MAX_JWKS_BYTES as u64) {
        return Err(too_large(Some(n)));
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large(None)
            } else {
                format!("reading the answer: {e}")
            }
        })?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| "the answer is not UTF-8 text".to_string())
}

fn too_large(declared: Option<u64>) -> String {
    let kib = MAX_JWKS_BYTES / 1024;
    match declared {
        Some(n) => format!("the answer has {n} bytes, more than the {kib} KiB a key set may have"),
        None => format!("the answer is larger than the {kib} KiB a key set may have"),
    }
}
