//! The TLS a gateway server terminates (Gateway `tls`, compiled into
//! [`ServerTls`]): its certificate, how clients are verified by mode, their
//! certificates' revocation and names, the protocol versions and the TLS 1.2
//! cipher suites — one rustls server config per server (`sni` picks it).
//!
//! # Guarantees
//! - `minVersion`/`maxVersion` bound the versions offered: a client that
//!   offers none of them fails the handshake (`protocol_version` alert).
//! - `cipherSuites` limits TLS 1.2 to those suites, preferred in the order
//!   listed; TLS 1.3's suites are always offered (as Envoy, whose
//!   `cipher_suites` applies to TLS 1.2 and below only). A client offering
//!   none of them fails the handshake.
//! - `clientSubjectAltNames`: a client certificate that verifies but carries
//!   none of the names fails the handshake (OPTIONAL_MUTUAL: when one is
//!   presented), matched as DestinationRule `subjectAltNames` are
//!   (`subject_alt_names`).

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme, SupportedCipherSuite,
    SupportedProtocolVersion,
};
use trellis_contract::{ServerTls, ServerTlsMode, TLS12_CIPHER_SUITES, TlsVersion};

use crate::identity::{TlsError, WorkloadIdentity, load_certificate, load_crls, load_roots, provider};
use crate::subject_alt_names::SubjectAltNames;

/// Server config for a gateway listener. `istioMutual` serves the workload
/// certificate of `identity` and verifies clients against its trust bundle;
/// without an identity it cannot be served.
pub fn gateway_server_config(
    tls: &ServerTls,
    identity: Option<&WorkloadIdentity>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let missing = |what: &'static str| TlsError::Pem {
        what,
        message: "not configured".into(),
    };
    let (cert, client_roots) = match (tls.mode, &tls.certificate) {
        (ServerTlsMode::IstioMutual, _) => {
            let id = identity.ok_or_else(|| missing("workload identity (istioMutual gateway server)"))?;
            (id.cert.clone(), Some(Arc::clone(&id.roots)))
        }
        (_, Some(c)) => (
            load_certificate(c)?,
            tls.client_ca.as_ref().map(load_roots).transpose()?,
        ),
        (_, None) => return Err(missing("gateway server certificate")),
    };
    let provider = Arc::new(CryptoProvider {
        cipher_suites: cipher_suites(&tls.cipher_suites)?,
        ..(*provider()).clone()
    });
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions(tls))
        .map_err(|source| TlsError::Rustls {
            what: "gateway server",
            source,
        })?;
    let crls = tls.client_crl.as_ref().map(load_crls).transpose()?.unwrap_or_default();
    let names = SubjectAltNames::new("client", tls.client_subject_alt_names.clone());
    let verifier = |roots: Arc<RootCertStore>, optional: bool| -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        let b = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider)).with_crls(crls.clone());
        let b = if optional { b.allow_unauthenticated() } else { b };
        let chain = b.build().map_err(|e| TlsError::Verifier {
            what: "gateway client CA",
            message: e.to_string(),
        })?;
        if names.is_empty() {
            return Ok(chain);
        }
        Ok(Arc::new(NamedClient {
            chain,
            names: names.clone(),
        }))
    };
    let builder = match (tls.mode, client_roots) {
        (ServerTlsMode::Simple, _) => builder.with_no_client_auth(),
        (ServerTlsMode::OptionalMutual, Some(roots)) => builder.with_client_cert_verifier(verifier(roots, true)?),
        (ServerTlsMode::Mutual | ServerTlsMode::IstioMutual, Some(roots)) => {
            builder.with_client_cert_verifier(verifier(roots, false)?)
        }
        (_, None) => return Err(missing("gateway client CA")),
    };
    let mut cfg = builder
        .with_single_cert(cert.chain, cert.key)
        .map_err(|source| TlsError::Rustls {
            what: "gateway certificate",
            source,
        })?;
    // The order of `cipherSuites` is the server's preference, as a cipher list is.
    cfg.ignore_client_order = !tls.cipher_suites.is_empty();
    cfg.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The versions between `minVersion` (default TLS 1.2) and `maxVersion` (default 1.3).
fn versions(tls: &ServerTls) -> Vec<&'static SupportedProtocolVersion> {
    let (min, max) = (
        tls.min_version.unwrap_or(TlsVersion::Tls12),
        tls.max_version.unwrap_or(TlsVersion::Tls13),
    );
    [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (min..=max).contains(v))
    .map(|(_, p)| p)
    .collect()
}

/// The suites offered: all of the provider's, or TLS 1.3's and the listed TLS 1.2 ones in
/// their order.
fn cipher_suites(names: &[String]) -> Result<Vec<SupportedCipherSuite>, TlsError> {
    let all = provider().cipher_suites.clone();
    if names.is_empty() {
        return Ok(all);
    }
    let mut suites: Vec<SupportedCipherSuite> = all.into_iter().filter(|s| s.tls13().is_some()).collect();
    for name in names {
        suites.push(tls12_suite(name).ok_or_else(|| TlsError::Pem {
            what: "gateway server cipherSuites",
            message: format!(
                "{name:?} is not a TLS 1.2 suite the proxy implements: {}",
                TLS12_CIPHER_SUITES.join(", ")
            ),
        })?);
    }
    Ok(suites)
}

/// rustls' suite for an OpenSSL name of [`TLS12_CIPHER_SUITES`].
fn tls12_suite(name: &str) -> Option<SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as s;
    Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => s::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256" => s::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => s::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-AES256-GCM-SHA384" => s::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => s::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-CHACHA20-POLY1305" => s::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        _ => return None,
    })
}

/// A client verifier that also wants one of `names` in the verified certificate.
#[derive(Debug)]
struct NamedClient {
    chain: Arc<dyn ClientCertVerifier>,
    names: SubjectAltNames,
}

impl ClientCertVerifier for NamedClient {
    fn offer_client_auth(&self) -> bool {
        self.chain.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.chain.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.chain.verify_client_cert(end_entity, intermediates, now)?;
        self.names.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_suite_the_contract_names_is_its_rustls_suite() {
        let table = [
            (
                "ECDHE-ECDSA-AES128-GCM-SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            ),
            ("ECDHE-RSA-AES128-GCM-SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            (
                "ECDHE-ECDSA-AES256-GCM-SHA384",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            ),
            ("ECDHE-RSA-AES256-GCM-SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
            (
                "ECDHE-ECDSA-CHACHA20-POLY1305",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            ),
            (
                "ECDHE-RSA-CHACHA20-POLY1305",
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            ),
        ];
        assert_eq!(table.map(|(openssl, _)| openssl), TLS12_CIPHER_SUITES);
        for (openssl, iana) in table {
            let suite = tls12_suite(openssl).unwrap_or_else(|| panic!("{openssl} has no rustls suite"));
            assert_eq!(format!("{:?}", suite.suite()), iana);
        }
        assert!(tls12_suite("AES128-SHA").is_none());
    }

    #[test]
    fn versions_span_the_floor_to_the_ceiling() {
        let tls = |min, max| ServerTls {
            mode: ServerTlsMode::Simple,
            certificate: None,
            client_ca: None,
            client_crl: None,
            client_subject_alt_names: Vec::new(),
            min_version: min,
            max_version: max,
            cipher_suites: Vec::new(),
            alpn: Vec::new(),
        };
        let v = |t: &ServerTls| versions(t).iter().map(|p| p.version).collect::<Vec<_>>();
        use rustls::ProtocolVersion::{TLSv1_2, TLSv1_3};
        assert_eq!(v(&tls(None, None)), [TLSv1_2, TLSv1_3]);
        assert_eq!(v(&tls(Some(TlsVersion::Tls13), None)), [TLSv1_3]);
        assert_eq!(v(&tls(None, Some(TlsVersion::Tls12))), [TLSv1_2]);
    }
}
