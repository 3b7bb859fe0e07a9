//! Gateway TLS servers: certificate and client CA by mode, revocation lists, the names a
//! client certificate must carry, protocol versions and TLS 1.2 cipher suites.

use std::collections::BTreeSet;

use super::Validator;
use crate::identity::PemSource;
use crate::listener::{ServerTls, ServerTlsMode, TLS12_CIPHER_SUITES};

impl Validator {
    pub(super) fn server_tls(&mut self, path: &str, tls: &ServerTls) {
        match (tls.mode, &tls.certificate) {
            (ServerTlsMode::IstioMutual, Some(_)) => self.err(
                format!("{path}.certificate"),
                "istioMutual serves the workload certificate (identity.certificate); remove certificate",
            ),
            (ServerTlsMode::IstioMutual, None) => {}
            (_, Some(cert)) => self.certificate(&format!("{path}.certificate"), cert),
            (_, None) => self.err(format!("{path}.certificate"), "required (but for istioMutual)"),
        }
        match (tls.mode, &tls.client_ca) {
            (ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual, None) => {
                self.err(format!("{path}.clientCa"), "required to verify client certificates")
            }
            (ServerTlsMode::IstioMutual, Some(_)) => self.err(
                format!("{path}.clientCa"),
                "istioMutual verifies clients against the mesh trust bundle (identity.trustBundle); remove clientCa",
            ),
            (_, Some(ca)) => self.pem_source(&format!("{path}.clientCa"), ca),
            _ => {}
        }
        match (tls.mode, &tls.client_crl) {
            (ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual, Some(crl)) => {
                self.crl_source(&format!("{path}.clientCrl"), crl)
            }
            (_, Some(_)) => self.err(
                format!("{path}.clientCrl"),
                "revocation is checked for client certificates: only with mutual or optionalMutual",
            ),
            (_, None) => {}
        }
        let names = &tls.client_subject_alt_names;
        if !names.is_empty() && tls.mode == ServerTlsMode::Simple {
            self.err(
                format!("{path}.clientSubjectAltNames"),
                "simple asks for no client certificate: only with mutual, optionalMutual or istioMutual",
            );
        }
        for (i, san) in names.iter().enumerate() {
            if san.is_empty() || san.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.err(
                    format!("{path}.clientSubjectAltNames[{i}]"),
                    format!("{san:?} is not a name"),
                );
            }
        }
        if let (Some(min), Some(max)) = (tls.min_version, tls.max_version)
            && min > max
        {
            self.err(format!("{path}.minVersion"), "is above maxVersion");
        }
        let mut seen = BTreeSet::new();
        for (i, suite) in tls.cipher_suites.iter().enumerate() {
            if !TLS12_CIPHER_SUITES.contains(&suite.as_str()) {
                self.err(
                    format!("{path}.cipherSuites[{i}]"),
                    format!(
                        "{suite:?} is not a TLS 1.2 cipher suite the proxy implements: {}",
                        TLS12_CIPHER_SUITES.join(", ")
                    ),
                );
            } else if !seen.insert(suite.as_str()) {
                self.err(
                    format!("{path}.cipherSuites[{i}]"),
                    format!("{suite:?} is listed twice"),
                );
            }
        }
    }

    pub(super) fn crl_source(&mut self, path: &str, p: &PemSource) {
        match p {
            PemSource::File(f) if f.is_empty() => self.err(format!("{path}.file"), "must not be empty"),
            PemSource::Inline(pem) if !pem.contains("-----BEGIN X509 CRL-----") => {
                self.err(format!("{path}.inline"), "contains no PEM certificate revocation list")
            }
            _ => {}
        }
    }
}
