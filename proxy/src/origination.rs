//! TLS origination to destinations outside the mesh (Istio's DestinationRule
//! `tls` modes SIMPLE and MUTUAL): the server's chain is verified against the
//! configured roots (or the system's), its name against `subjectAltNames` (or
//! the SNI), and a client certificate is presented for MUTUAL.
//!
//! # Guarantees
//! - With `crl` (DestinationRule `caCrl`, or the `credentialName` Secret's
//!   `ca.crl`), a server certificate that a list revokes is refused, and so is
//!   one whose issuer has no list among them (rustls' webpki revocation
//!   check over the whole chain, as Envoy checks a chain once it has a CRL).
//! - Nothing is accepted unverified unless the config says
//!   `insecureSkipVerify`; then the handshake's signatures are still checked
//!   (the peer must hold the key of the certificate it shows).
//! - A subject alternative name is matched as Envoy matches Istio's
//!   `subjectAltNames`: a DNS name or IP address by the certificate's DNS/IP
//!   SANs (wildcard certificates included), anything else (a URI such as a
//!   SPIFFE ID) exactly against its URI SANs.
//!
//! # Caveats
//! - Without `ca`, the roots are the system's (`rustls-native-certs`, read
//!   once per config version); a system without roots is a configuration
//!   error naming the cluster, not a silent "trust nothing".

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use trellis_contract::OriginateTls;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::identity::{TlsError, load_certificate, load_crls, load_roots, provider, system_roots};

/// The client config for originating TLS as `tls` says, and the server name
/// to connect with.
pub fn client_config(tls: &OriginateTls) -> Result<(Arc<ClientConfig>, ServerName<'static>), TlsError> {
    let name = ServerName::try_from(tls.sni.clone()).map_err(|e| TlsError::Pem {
        what: "tls.originate.sni",
        message: format!("{:?}: {e}", tls.sni),
    })?;
    let verifier: Arc<dyn ServerCertVerifier> = if tls.insecure_skip_verify {
        Arc::new(AnyServer {
            algs: provider().signature_verification_algorithms,
        })
    } else {
        let roots = match &tls.ca {
            Some(ca) => load_roots(ca)?,
            None => system_roots(
                "tls.originate.ca",
                "give the destination's CA (DestinationRule tls.caCertificates or credentialName)",
            )?,
        };
        let crls = tls.crl.as_ref().map(load_crls).transpose()?.unwrap_or_default();
        let chain = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .with_crls(crls)
            .build()
            .map_err(|e| TlsError::Verifier {
                what: "tls.originate.ca",
                message: e.to_string(),
            })?;
        Arc::new(NamedServer {
            chain,
            subject_alt_names: tls.subject_alt_names.clone(),
        })
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "upstream TLS",
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let cfg = match &tls.client_certificate {
        Some(c) => {
            let cert = load_certificate(c)?;
            builder
                .with_client_auth_cert(cert.chain, cert.key)
                .map_err(|source| TlsError::Rustls {
                    what: "upstream TLS client certificate",
                    source,
                })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok((Arc::new(cfg), name))
}

/// Verifies the chain (and its revocation) with `chain`, and the name against
/// the SANs, or without them the server name the connection was opened with.
#[derive(Debug)]
struct NamedServer {
    chain: Arc<WebPkiServerVerifier>,
    subject_alt_names: Vec<String>,
}

/// The server certificate's names, none of which is wanted.
#[derive(Debug, thiserror::Error)]
#[error("server certificate is valid for {presented:?}, none of the subjectAltNames {wanted:?}")]
struct NoSanMatch {
    wanted: Vec<String>,
    presented: Vec<String>,
}

impl ServerCertVerifier for NamedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain and its revocation first and the name last, so a
        // name error means the chain passed; with subjectAltNames they are the names.
        let checked = self
            .chain
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        if self.subject_alt_names.is_empty() {
            return checked;
        }
        match checked {
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        let cert = ParsedCertificate::try_from(end_entity)?;
        let uris = uri_sans(end_entity);
        let matched = self
            .subject_alt_names
            .iter()
            .any(|san| match ServerName::try_from(san.as_str()) {
                // A DNS name or IP address: as a TLS client checks a server name.
                Ok(name) => rustls::client::verify_server_name(&cert, &name).is_ok(),
                // Anything else (a SPIFFE ID): exactly among the URI SANs.
                Err(_) => uris.iter().any(|u| u == san),
            });
        if matched {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::Other(rustls::OtherError(Arc::new(NoSanMatch {
            wanted: self.subject_alt_names.clone(),
            presented: presented_names(end_entity),
        }))))
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

/// The certificate's subject alternative names that `keep` turns into text.
fn sans_of(der: &CertificateDer<'_>, keep: impl Fn(&GeneralName<'_>) -> Option<String>) -> Vec<String> {
    let Ok((_, parsed)) = X509Certificate::from_der(der.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(sans)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    sans.value.general_names.iter().filter_map(keep).collect()
}

/// The certificate's URI SANs (SPIFFE IDs among them).
fn uri_sans(der: &CertificateDer<'_>) -> Vec<String> {
    sans_of(der, |n| match n {
        GeneralName::URI(u) => Some((*u).to_string()),
        _ => None,
    })
}

/// Every DNS, IP and URI SAN, for the error saying none matched.
fn presented_names(der: &CertificateDer<'_>) -> Vec<String> {
    sans_of(der, |n| match n {
        GeneralName::DNSName(d) => Some((*d).to_string()),
        GeneralName::URI(u) => Some((*u).to_string()),
        GeneralName::IPAddress(ip) => match ip.len() {
            4 => <[u8; 4]>::try_from(*ip)
                .ok()
                .map(|a| std::net::IpAddr::from(a).to_string()),
            16 => <[u8; 16]>::try_from(*ip)
                .ok()
                .map(|a| std::net::IpAddr::from(a).to_string()),
            _ => None,
        },
        _ => None,
    })
}

/// Accepts any server certificate (`insecureSkipVerify`), still checking the
/// handshake signatures made with its key.
#[derive(Debug)]
struct AnyServer {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
