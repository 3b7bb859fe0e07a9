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
//! - `subjectAltNames` are matched as Envoy matches Istio's, by the same code
//!   as a gateway's client certificates (`subject_alt_names`).
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
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use trellis_contract::OriginateTls;

use crate::identity::{TlsError, load_certificate, load_crls, load_roots, provider, system_roots};
use crate::subject_alt_names::SubjectAltNames;

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
            subject_alt_names: SubjectAltNames::new("server", tls.subject_alt_names.clone()),
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
    subject_alt_names: SubjectAltNames,
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
        self.subject_alt_names.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
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
