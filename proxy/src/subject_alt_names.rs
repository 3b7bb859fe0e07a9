//! Istio's `subjectAltNames`: the names a peer certificate must carry one of,
//! matched as Envoy matches them — on both sides of the proxy: a server's
//! certificate when originating TLS (DestinationRule `tls.subjectAltNames`,
//! `origination`) and a client's at a gateway (Gateway `tls.subjectAltNames`,
//! `server_tls`).
//!
//! # Guarantees
//! - A DNS name or IP address is checked against the certificate's DNS/IP SANs
//!   as a TLS client checks a server name (wildcard certificates included);
//!   anything else (a URI such as a SPIFFE ID) exactly against its URI SANs.
//! - A mismatch is an error that lists the names the certificate carries.
//!
//! # Caveats
//! Only the names are checked here: the chain must have been verified first.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::ParsedCertificate;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The names a peer certificate must carry one of.
#[derive(Debug, Clone)]
pub struct SubjectAltNames {
    /// Which peer, for the error: `server` or `client`.
    peer: &'static str,
    wanted: Vec<String>,
}

/// The peer certificate's names, none of which is wanted.
#[derive(Debug, thiserror::Error)]
#[error("{peer} certificate is valid for {presented:?}, none of the subjectAltNames {wanted:?}")]
struct NoSanMatch {
    peer: &'static str,
    wanted: Vec<String>,
    presented: Vec<String>,
}

impl SubjectAltNames {
    /// `wanted` names for the certificates of `peer` (`server` or `client`).
    pub fn new(peer: &'static str, wanted: Vec<String>) -> Self {
        Self { peer, wanted }
    }

    /// No names configured: nothing to check.
    pub fn is_empty(&self) -> bool {
        self.wanted.is_empty()
    }

    /// Whether `end_entity` (already verified) carries one of the names; an error
    /// naming the ones it carries when not.
    pub fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        let uris = uri_sans(end_entity);
        let matched = self.wanted.iter().any(|san| match ServerName::try_from(san.as_str()) {
            // A DNS name or IP address: as a TLS client checks a server name.
            Ok(name) => rustls::client::verify_server_name(&cert, &name).is_ok(),
            // Anything else (a SPIFFE ID): exactly among the URI SANs.
            Err(_) => uris.iter().any(|u| u == san),
        });
        if matched {
            return Ok(());
        }
        Err(rustls::Error::Other(rustls::OtherError(Arc::new(NoSanMatch {
            peer: self.peer,
            wanted: self.wanted.clone(),
            presented: presented_names(end_entity),
        }))))
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
