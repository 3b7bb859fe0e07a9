//! Workload identity and TLS: loading certificates and trust bundles, the
//! SPIFFE verifiers (rustls checks no URI SANs, so the exact peer identity is
//! checked here), and the rustls configs for mesh mTLS (client and server) and
//! simple upstream TLS (a gateway's TLS servers: `server_tls`).

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use serde::Serialize;
use std::sync::{Arc, OnceLock};
use trellis_contract::{CertificateRef, IdentityConfig, PemSource, SpiffeId, TrustDomains};
pub use trellis_push::identity::IdentityError;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// TLS setup errors, naming the file or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} from {path}: {source}")]
    Read {
        /// What was being read.
        what: &'static str,
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// PEM contents are unusable.
    #[error("{what}: {message}")]
    Pem {
        /// What was being parsed.
        what: &'static str,
        /// Problem.
        message: String,
    },
    /// rustls rejected the material.
    #[error("{what}: {source}")]
    Rustls {
        /// Which config.
        what: &'static str,
        /// Cause.
        #[source]
        source: rustls::Error,
    },
    /// The client verifier could not be built.
    #[error("{what}: {message}")]
    Verifier {
        /// Which config.
        what: &'static str,
        /// Problem.
        message: String,
    },
}

/// The client config for an `https://` OTLP collector: its certificate must
/// chain to `ca`, or to the system's roots when `ca` is `None`.
pub fn collector_client_config(ca: Option<&PemSource>) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match ca {
        Some(ca) => load_roots(ca)?,
        None => system_roots(
            "telemetry.tracing.collectorCa",
            "set collectorCa to the roots of the collector's certificate",
        )?,
    };
    simple_client_config(roots, &[b"http/1.1"])
}

/// The system's root certificates; none at all is an error on `what` that
/// names the `fix`.
pub fn system_roots(what: &'static str, fix: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(found.certs);
    if store.is_empty() {
        return Err(TlsError::Pem {
            what,
            message: format!(
                "no system root certificates found ({} errors); {fix}",
                found.errors.len()
            ),
        });
    }
    Ok(Arc::new(store))
}

/// The ring provider, built once and shared by every TLS config (a sidecar builds a client
/// config per mesh cluster: hundreds in a large mesh). Its cipher suites put AES-128-GCM first,
/// in TLS 1.3 as in TLS 1.2, as Envoy's (BoringSSL's) do: a client's order picks the suite of
/// every mesh connection (a server follows it), and ring's default puts AES-256-GCM first.
/// why: on processors with AES instructions AES-128 encrypts a block in 10 rounds to
/// AES-256's 14, and the records of every request and response are sealed and opened with it.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| {
        let mut provider = rustls::crypto::ring::default_provider();
        // A stable sort: the other suites keep ring's order.
        provider.cipher_suites.sort_by_key(|s| !is_aes_128_gcm(s.suite()));
        Arc::new(provider)
    }))
}

fn is_aes_128_gcm(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as S;
    matches!(
        suite,
        S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

/// How many server names a mesh client config remembers TLS sessions for. Each config serves
/// one cluster, whose endpoints are all dialled with the cluster's one server name; rustls
/// keeps up to 8 TLS 1.3 tickets per name and rounds this up to one name. rustls' default
/// (256, that is 32 names) reserved ~14 KiB per config: 3.4 MiB for 240 mesh clusters.
const MESH_CLIENT_SESSIONS: usize = 8;

fn read_pem(what: &'static str, src: &PemSource) -> Result<Vec<u8>, TlsError> {
    match src {
        PemSource::Inline(pem) => Ok(pem.as_bytes().to_vec()),
        PemSource::File(path) => std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            path: path.clone(),
            source,
        }),
    }
}

fn parse_certs(what: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            message: "no PEM certificate found".into(),
        });
    }
    Ok(certs)
}

/// A certificate chain and its key.
#[derive(Debug)]
pub struct CertifiedKey {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for CertifiedKey {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Load a certificate reference.
pub fn load_certificate(c: &CertificateRef) -> Result<CertifiedKey, TlsError> {
    let (chain_pem, key_pem) = match c {
        CertificateRef::Files {
            cert_chain_file,
            private_key_file,
        } => (
            read_pem("certificate chain", &PemSource::File(cert_chain_file.clone()))?,
            read_pem("private key", &PemSource::File(private_key_file.clone()))?,
        ),
        CertificateRef::Inline {
            cert_chain_pem,
            private_key_pem,
        } => (cert_chain_pem.as_bytes().to_vec(), private_key_pem.as_bytes().to_vec()),
    };
    let chain = parse_certs("certificate chain", &chain_pem)?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| TlsError::Pem {
            what: "private key",
            message: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Pem {
            what: "private key",
            message: "no PEM private key found (PKCS#8, PKCS#1 or SEC1)".into(),
        })?;
    Ok(CertifiedKey { chain, key })
}

/// Load a trust bundle (one or more roots).
pub fn load_roots(src: &PemSource) -> Result<Arc<RootCertStore>, TlsError> {
    let pem = read_pem("trust bundle", src)?;
    let mut store = RootCertStore::empty();
    for cert in parse_certs("trust bundle", &pem)? {
        store.add(cert).map_err(|source| TlsError::Rustls {
            what: "trust bundle",
            source,
        })?;
    }
    Ok(Arc::new(store))
}

/// Certificate revocation lists from PEM (`X509 CRL` blocks).
pub fn load_crls(src: &PemSource) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let what = "certificate revocation list";
    let pem = read_pem(what, src)?;
    let crls = rustls_pemfile::crls(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            message: e.to_string(),
        })?;
    if crls.is_empty() {
        return Err(TlsError::Pem {
            what,
            message: "no PEM certificate revocation list found".into(),
        });
    }
    Ok(crls)
}

/// The SHA-256 of a certificate's DER, as lower-case hex: the `Hash=` of
/// `x-forwarded-client-cert` (Envoy's and Istio's format), so an app can tell
/// which certificate its caller presented (a rotated one, say).
pub fn cert_sha256_hex(cert: &CertificateDer<'_>) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut out = String::with_capacity(64);
    for b in digest.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

/// The SPIFFE ID of a certificate: its single `spiffe://` URI SAN, read by the
/// one function the operator uses too ([`trellis_push::identity::spiffe_id_of`]).
///
/// # Caveats
/// A certificate with several URI SANs is rejected: mesh identities carry
/// exactly one, and accepting any of several would let a CA mistake widen trust.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<String, IdentityError> {
    trellis_push::identity::spiffe_id_of(cert.as_ref()).map(|id| id.to_string())
}

/// Verifies a server's chain against the trust bundle and its SPIFFE ID
/// against an exact allow-list; the TLS server name is ignored.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<String>,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// Accept only these identities.
    pub fn new(roots: Arc<RootCertStore>, expected: Vec<String>) -> Self {
        Self {
            roots,
            expected,
            algs: provider().signature_verification_algorithms,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("peer identity {got:?} is not the expected {expected:?}")]
struct IdentityMismatch {
    got: String,
    expected: Vec<String>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let id = spiffe_id_of(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(e))))
        })?;
        if self.expected.contains(&id) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                rustls::OtherError(Arc::new(IdentityMismatch {
                    got: id,
                    expected: self.expected.clone(),
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The proxy's loaded workload identity.
#[derive(Debug, Clone)]
pub struct WorkloadIdentity {
    /// Own SPIFFE ID, as the certificate carries it (during a trust domain change it may be
    /// `identity.spiffeId` in an alias of the trust domain).
    pub spiffe_id: String,
    /// Certificate and key.
    pub cert: CertifiedKey,
    /// Trust bundle.
    pub roots: Arc<RootCertStore>,
    /// The trust domain and its aliases: a peer in an alias passes where the same workload
    /// in the trust domain is expected.
    pub domains: TrustDomains,
    /// The certificate and signing key every mesh client config presents, parsed once (on
    /// the first mesh cluster) and shared by all of them.
    client_cert: OnceLock<Arc<SingleCertAndKey>>,
}

impl WorkloadIdentity {
    /// Load from the contract's identity settings; `None` when not configured. The
    /// certificate must carry `identity.spiffeId`, or the same workload in an alias of the
    /// trust domain (a certificate issued before the trust domain changed, until renewal).
    pub fn load(cfg: &IdentityConfig) -> Result<Option<Self>, TlsError> {
        let (Some(id), Some(cert), Some(bundle)) = (&cfg.spiffe_id, &cfg.certificate, &cfg.trust_bundle) else {
            return Ok(None);
        };
        let cert = load_certificate(cert)?;
        let actual = spiffe_id_of(&cert.chain[0]).map_err(|e| TlsError::Pem {
            what: "workload certificate",
            message: e.to_string(),
        })?;
        let domains = cfg.trust_domains();
        let same = match (SpiffeId::parse(&actual), SpiffeId::parse(id)) {
            (Ok(a), Ok(b)) => domains.equivalent(&a, &b),
            _ => actual == *id,
        };
        if !same {
            return Err(TlsError::Pem {
                what: "workload certificate",
                message: format!(
                    "certificate identity {actual:?} differs from identity.spiffeId {id:?} (trust domain aliases: {:?})",
                    domains.aliases()
                ),
            });
        }
        Ok(Some(Self {
            spiffe_id: actual,
            cert,
            roots: load_roots(bundle)?,
            domains,
            client_cert: OnceLock::new(),
        }))
    }

    /// Client config for mesh mTLS to peers with one of `expected` identities, each in the
    /// trust domain or any of its aliases.
    pub fn client_config(&self, expected: Vec<String>, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
        let mut widened: Vec<String> = Vec::with_capacity(expected.len());
        for id in expected {
            match SpiffeId::parse(&id) {
                Ok(parsed) => widened.extend(self.domains.variants(&parsed).iter().map(ToString::to_string)),
                Err(_) => widened.push(id),
            }
        }
        let expected = widened;
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                what: "mesh client",
                source,
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(Arc::clone(&self.roots), expected)))
            .with_client_cert_resolver(self.client_cert()?);
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        cfg.resumption = Resumption::in_memory_sessions(MESH_CLIENT_SESSIONS);
        Ok(Arc::new(cfg))
    }

    /// The certificate mesh client configs present: parsed on first use, then shared.
    fn client_cert(&self) -> Result<Arc<SingleCertAndKey>, TlsError> {
        if let Some(c) = self.client_cert.get() {
            return Ok(Arc::clone(c));
        }
        let key = rustls::sign::CertifiedKey::from_der(self.cert.chain.clone(), self.cert.key.clone_key(), &provider())
            .map_err(|source| TlsError::Rustls {
                what: "mesh client certificate",
                source,
            })?;
        Ok(Arc::clone(
            self.client_cert.get_or_init(|| Arc::new(SingleCertAndKey::from(key))),
        ))
    }

    /// Server config for inbound mesh mTLS: client certificates are required and
    /// must chain to the trust bundle; the identity is read after the handshake.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&self.roots), provider())
            .build()
            .map_err(|e| TlsError::Verifier {
                what: "mesh server",
                message: e.to_string(),
            })?;
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                what: "mesh server",
                source,
            })?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.cert.chain.clone(), self.cert.key.clone_key())
            .map_err(|source| TlsError::Rustls {
                what: "mesh server certificate",
                source,
            })?;
        // Opaque TCP from a mesh client announces its peer metadata preamble.
        cfg.alpn_protocols = vec![
            b"h2".to_vec(),
            b"http/1.1".to_vec(),
            crate::peer_exchange::ALPN.to_vec(),
        ];
        Ok(Arc::new(cfg))
    }
}

/// Client config for simple (server-authenticated) upstream TLS.
pub fn simple_client_config(roots: Arc<RootCertStore>, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "upstream TLS",
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Certificate facts for `/config_dump` (never key material).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateInfo {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial number (hex).
    pub serial: String,
    /// URI SANs.
    pub uri_sans: Vec<String>,
    /// DNS SANs.
    pub dns_sans: Vec<String>,
    /// Validity start (RFC 2822).
    pub not_before: String,
    /// Validity end (RFC 2822).
    pub not_after: String,
}

/// Describe a certificate.
pub fn describe(cert: &CertificateDer<'_>) -> Option<CertificateInfo> {
    let (_, c) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let mut uri_sans = Vec::new();
    let mut dns_sans = Vec::new();
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::URI(u) => uri_sans.push((*u).to_string()),
                GeneralName::DNSName(d) => dns_sans.push((*d).to_string()),
                _ => {}
            }
        }
    }
    Some(CertificateInfo {
        subject: c.subject().to_string(),
        issuer: c.issuer().to_string(),
        serial: c.raw_serial_as_string(),
        uri_sans,
        dns_sans,
        not_before: c.validity().not_before.to_string(),
        not_after: c.validity().not_after.to_string(),
    })
}
