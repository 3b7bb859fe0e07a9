//! The operator's own TLS servers' certificates: issued by the mesh CA's issuing root for the
//! operator's SPIFFE identity and its Service's DNS names, held in an [`arc_swap::ArcSwap`] and
//! swapped — never restarted — when they are reissued, so a reissue (root rotation, renewal
//! before expiry) drops no connection and no request: connections accepted before keep the
//! certificate they were accepted with, new ones get the new one.
//!
//! Two servers use it: the push and certificate API (gRPC, optional mesh client certificates)
//! and the admission webhooks (HTTPS for the API server, no client certificates).
//!
//! The SPIFFE ID a certificate names ([`Subject`]) is asked again at each issue: the operator's
//! ServiceAccount in the trust domain the Mesh names now, so a change of `spec.trustDomain`
//! moves the operator's identity with its proxies' ([`ServingTls::identity_moved`]; the push
//! API's certificate is reissued within a fifth of a second, the webhooks' once the API server
//! trusts the issuing root, see `admission::certificate::keep_certificate_current`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::net::TcpListener;
use trellis_contract::SpiffeId;

use crate::ca::MeshRoots;

/// Whether clients may present certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Clients may present a certificate from the mesh; it is verified against every trusted
    /// root (proxies have none before their first certificate).
    MeshOptional,
    /// No client certificates, and no session resumption (the API server calling webhooks:
    /// it never resumes a TLS session, so tickets sent to it would be made for nothing).
    None,
}

/// The SPIFFE ID a serving certificate names (its URI SAN), asked at each issue.
#[derive(Clone)]
pub struct Subject(Arc<dyn Fn() -> String + Send + Sync>);

impl Subject {
    /// Always `spiffe_id`.
    pub fn fixed(spiffe_id: impl Into<String>) -> Self {
        let id = spiffe_id.into();
        Subject(Arc::new(move || id.clone()))
    }

    /// ServiceAccount `namespace/name` in the trust domain `trust_domains` names at each issue
    /// (the Mesh's, live).
    pub fn service_account(
        trust_domains: crate::trust_domain::Source,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        let (namespace, name) = (namespace.into(), name.into());
        Subject(Arc::new(move || {
            SpiffeId::for_service_account(trust_domains.get().domain(), &namespace, &name).to_string()
        }))
    }

    /// The SPIFFE ID now.
    pub fn get(&self) -> String {
        (self.0)()
    }
}

impl std::fmt::Debug for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Subject").field(&self.get()).finish()
    }
}

impl From<&str> for Subject {
    fn from(spiffe_id: &str) -> Self {
        Subject::fixed(spiffe_id)
    }
}

impl From<String> for Subject {
    fn from(spiffe_id: String) -> Self {
        Subject::fixed(spiffe_id)
    }
}

/// Who the certificate names and how it is served.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The SPIFFE ID (URI SAN), asked at each issue.
    pub spiffe_id: Subject,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// Lifetime of each certificate.
    pub ttl: Duration,
    /// Client certificates.
    pub client_auth: ClientAuth,
    /// ALPN protocols offered, in preference order.
    pub alpn: Vec<Vec<u8>>,
}

/// What the current certificate is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The root that signed it (fingerprint).
    pub root: String,
    /// The SPIFFE ID it names.
    pub spiffe_id: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Issued {
    /// When to reissue: at two thirds of the lifetime, leaving a third of it to retry in.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self.not_after.duration_since(self.not_before).unwrap_or_default();
        self.not_before + lifetime * 2 / 3
    }
}

/// A serving certificate that is reissued in place.
pub struct ServingTls {
    identity: Identity,
    config: arc_swap::ArcSwap<rustls::ServerConfig>,
    issued: Mutex<Issued>,
}

impl std::fmt::Debug for ServingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingTls")
            .field("identity", &self.identity.spiffe_id)
            .field("issued", &self.issued())
            .finish_non_exhaustive()
    }
}

fn pems(pem: &str) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    Ok(rustls_pemfile::certs(&mut pem.as_bytes()).collect::<Result<Vec<_>, _>>()?)
}

/// The issuing root's fingerprint.
pub fn issuing_root(roots: &MeshRoots) -> Option<String> {
    roots
        .status()
        .roots
        .into_iter()
        .find(|r| r.issuing)
        .map(|r| r.fingerprint)
}

impl ServingTls {
    /// Issue the first certificate from `roots`' issuing root.
    pub fn new(identity: Identity, roots: &MeshRoots) -> anyhow::Result<Self> {
        let (tls, issued) = Self::build(&identity, roots)?;
        Ok(ServingTls {
            identity,
            config: arc_swap::ArcSwap::from_pointee(tls),
            issued: Mutex::new(issued),
        })
    }

    fn build(identity: &Identity, roots: &MeshRoots) -> anyhow::Result<(rustls::ServerConfig, Issued)> {
        let root = issuing_root(roots).context("the CA has no issuing root")?;
        let (leaf, key) = roots
            .issue_serving(&identity.spiffe_id.get(), &identity.dns_names, identity.ttl)
            .context("issuing the operator's serving certificate")?;
        let chain = pems(&leaf.cert_chain_pem)?;
        let key = rustls_pemfile::private_key(&mut key.as_bytes())?.context("the operator's serving key is not PEM")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder =
            rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let builder = match identity.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::MeshOptional => {
                let mut trusted = rustls::RootCertStore::empty();
                for pem in &roots.bundle().borrow().roots_pem {
                    for cert in pems(pem)? {
                        trusted
                            .add(cert)
                            .context("a trusted root is not a usable trust anchor")?;
                    }
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(trusted), provider)
                    .allow_unauthenticated()
                    .build()
                    .context("building the client certificate verifier")?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut tls = builder
            .with_single_cert(chain, key)
            .context("the operator's serving certificate")?;
        tls.alpn_protocols = identity.alpn.clone();
        if identity.client_auth == ClientAuth::None {
            // why: the API server opens a connection per webhook call in flight and never
            // resumes (client-go sets no session cache): no TLS 1.3 tickets after each
            // handshake, no TLS 1.2 sessions kept.
            tls.send_tls13_tickets = 0;
            tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        }
        let issued = Issued {
            root,
            spiffe_id: leaf.spiffe_id.clone(),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
        };
        Ok((tls, issued))
    }

    /// Reissue the certificate from the issuing root (and trust the current bundle).
    pub fn refresh(&self, roots: &MeshRoots) -> anyhow::Result<()> {
        let (tls, issued) = Self::build(&self.identity, roots)?;
        self.config.store(Arc::new(tls));
        tracing::info!(
            identity = %issued.spiffe_id,
            root = %issued.root,
            "serving a certificate from the issuing root"
        );
        *self.issued.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = issued;
        Ok(())
    }

    /// Whether the certificate names another SPIFFE ID than its [`Subject`] names now (the
    /// Mesh's trust domain changed): it should be reissued.
    pub fn identity_moved(&self) -> bool {
        self.issued().spiffe_id != self.identity.spiffe_id.get()
    }

    /// The certificate served now.
    pub fn issued(&self) -> Issued {
        self.issued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config.load_full()
    }

    /// TLS connections accepted on `listener`, each with the configuration current when it
    /// arrived; handshakes run concurrently, failed ones are logged and dropped.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> impl futures::Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    // The server is gone: release the port.
                    _ = tx.closed() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(self.current());
                let conns = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = conns.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_two_thirds_of_the_lifetime() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let issued = Issued {
            root: "r".into(),
            spiffe_id: "spiffe://cluster.local/ns/trellis-system/sa/trellis-operator".into(),
            not_before: t0,
            not_after: t0 + Duration::from_secs(3000),
        };
        assert_eq!(issued.renew_at(), t0 + Duration::from_secs(2000));
    }

    /// Connects to `server` with `client` over an in-memory pipe, reads the server's one byte
    /// (so every message it sent after the handshake, tickets included, reaches the client) and
    /// says how the handshake went.
    async fn handshake(
        server: &Arc<rustls::ServerConfig>,
        client: &Arc<rustls::ClientConfig>,
    ) -> Option<rustls::HandshakeKind> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, far) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(server));
        let serve = tokio::spawn(async move {
            let mut tls = acceptor.accept(far).await.expect("server handshake");
            tls.write_all(b"!").await.expect("server write");
            tls.flush().await.expect("server flush");
            let mut rest = Vec::new();
            let _ = tls.read_to_end(&mut rest).await;
        });
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a DNS name");
        let mut tls = tokio_rustls::TlsConnector::from(Arc::clone(client))
            .connect(name, near)
            .await
            .expect("client handshake");
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.expect("the server's byte");
        let kind = tls.get_ref().1.handshake_kind();
        tls.shutdown().await.expect("close_notify");
        drop(tls);
        serve.await.expect("server task");
        kind
    }

    #[tokio::test]
    async fn the_webhook_server_gives_no_session_a_client_could_resume() {
        let root =
            crate::ca::SigningCert::self_signed_root("cluster.local", Duration::from_secs(86400), SystemTime::now())
                .expect("a root");
        let root_pem = root.cert_pem().to_string();
        let roots = MeshRoots::new(root, Duration::from_secs(3600), Arc::new(crate::ca::SystemClock));
        let webhooks = ServingTls::new(
            Identity {
                spiffe_id: "spiffe://cluster.local/ns/trellis-system/sa/trellis-operator".into(),
                dns_names: vec!["localhost".into()],
                ttl: Duration::from_secs(3600),
                client_auth: ClientAuth::None,
                alpn: vec![b"http/1.1".to_vec()],
            },
            &roots,
        )
        .expect("the webhooks' certificate");
        let mut trusted = rustls::RootCertStore::empty();
        for cert in pems(&root_pem).expect("the root's PEM") {
            trusted.add(cert).expect("a trust anchor");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            // A client that resumes whatever it can (rustls' default: 256 sessions in memory).
            let client = Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
                    .with_protocol_versions(&[version])
                    .expect("a protocol version")
                    .with_root_certificates(trusted.clone())
                    .with_no_client_auth(),
            );
            let server = webhooks.current();
            assert_eq!(
                handshake(&server, &client).await,
                Some(rustls::HandshakeKind::Full),
                "{version:?}"
            );
            assert_eq!(
                handshake(&server, &client).await,
                Some(rustls::HandshakeKind::Full),
                "{version:?}: the second connection resumed a session of the first"
            );
        }
    }
}
