//! Reading a workload's SPIFFE identity out of its X.509 certificate: the one
//! place both the operator (who is subscribing?) and the proxy (who is the
//! peer?) read it.

use trellis_contract::{SpiffeId, SpiffeIdError};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Why a certificate carries no usable SPIFFE identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Not a DER X.509 certificate.
    #[error("unparsable certificate: {0}")]
    Certificate(String),
    /// A malformed subjectAltName extension.
    #[error("bad subjectAltName: {0}")]
    SubjectAltName(String),
    /// No URI SAN at all.
    #[error("certificate has no URI SAN (no SPIFFE identity)")]
    NoUri,
    /// More than one URI SAN: accepting any of several would let a CA mistake widen trust.
    #[error("certificate has {0} URI SANs; a SPIFFE identity needs exactly one")]
    ManyUris(usize),
    /// The one URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN is not a SPIFFE ID: {0}")]
    NotSpiffe(#[from] SpiffeIdError),
}

/// The SPIFFE ID of a DER certificate: its one URI SAN, checked against the
/// SPIFFE-ID specification.
///
/// # Guarantees
/// A certificate with no URI SAN, several, or one that is not a valid
/// `spiffe://` ID has no identity (an error), never the first of several.
pub fn spiffe_id_of(der: &[u8]) -> Result<SpiffeId, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| IdentityError::Certificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::SubjectAltName(e.to_string()))?
        .ok_or(IdentityError::NoUri)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => Ok(SpiffeId::parse(one)?),
        [] => Err(IdentityError::NoUri),
        many => Err(IdentityError::ManyUris(many.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(uris: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI((*u).try_into().expect("uri")))
            .collect();
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn exactly_one_valid_spiffe_uri_is_an_identity() {
        let id = spiffe_id_of(&cert(&["spiffe://cluster.local/ns/shop/sa/web"])).expect("identity");
        assert_eq!(id, SpiffeId::for_service_account("cluster.local", "shop", "web"));
        assert_eq!(spiffe_id_of(&cert(&[])), Err(IdentityError::NoUri));
        assert_eq!(
            spiffe_id_of(&cert(&["spiffe://a/ns/x/sa/y", "spiffe://b/ns/x/sa/y"])),
            Err(IdentityError::ManyUris(2))
        );
        assert!(matches!(
            spiffe_id_of(&cert(&["https://example.com/x"])),
            Err(IdentityError::NotSpiffe(_))
        ));
        assert!(matches!(
            spiffe_id_of(&cert(&["spiffe://td/a/../b"])),
            Err(IdentityError::NotSpiffe(_))
        ));
        assert!(matches!(spiffe_id_of(b"junk"), Err(IdentityError::Certificate(_))));
    }
}
