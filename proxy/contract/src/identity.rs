//! Workload identity: the trust domain, the proxy's own SPIFFE ID, where its
//! certificate and the trust bundle come from, and SPIFFE ID parsing.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The proxy's identity and trust anchors for mesh mTLS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IdentityConfig {
    /// SPIFFE trust domain, `cluster.local` by default.
    pub trust_domain: String,
    /// Domains that are aliases of `trust_domain` ([`crate::TrustDomains`]): a peer presenting
    /// `spiffe://<alias>/<path>` passes where `spiffe://<trust_domain>/<path>` is expected, and
    /// this proxy's own certificate may still be in one (a trust domain change in progress).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trust_domain_aliases: Vec<String>,
    /// This proxy's own SPIFFE ID (`spiffe://<td>/ns/<ns>/sa/<sa>`). Required when
    /// any mesh mTLS is used (an upstream cluster with `mesh` TLS or an inbound
    /// listener whose mTLS mode is not `disable`).
    pub spiffe_id: Option<String>,
    /// The workload certificate chain and key. The push client (control plane
    /// issue) will fill this from the CA; for now it references files or PEM.
    pub certificate: Option<CertificateRef>,
    /// Trust bundle: one or more PEM roots the peers' chains must lead to.
    pub trust_bundle: Option<PemSource>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".to_string(),
            trust_domain_aliases: Vec::new(),
            spiffe_id: None,
            certificate: None,
            trust_bundle: None,
        }
    }
}

/// Where a certificate chain and its private key come from.
///
/// # Caveats
/// An inline private key is secret material: `/config_dump` redacts it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CertificateRef {
    /// PEM files on the proxy's filesystem.
    #[serde(rename_all = "camelCase")]
    Files {
        /// Leaf first, then intermediates.
        cert_chain_file: String,
        /// PKCS#8, PKCS#1 or SEC1 PEM key.
        private_key_file: String,
    },
    /// PEM text carried in the config.
    #[serde(rename_all = "camelCase")]
    Inline {
        /// Leaf first, then intermediates.
        cert_chain_pem: String,
        /// PKCS#8, PKCS#1 or SEC1 PEM key.
        private_key_pem: String,
    },
}

impl fmt::Debug for CertificateRef {
    // Never print private key material, not even in debug logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Files {
                cert_chain_file,
                private_key_file,
            } => f
                .debug_struct("Files")
                .field("cert_chain_file", cert_chain_file)
                .field("private_key_file", private_key_file)
                .finish(),
            Self::Inline { .. } => f
                .debug_struct("Inline")
                .field("private_key_pem", &"<redacted>")
                .finish_non_exhaustive(),
        }
    }
}

impl CertificateRef {
    /// A copy that is safe to show: inline keys replaced by `<redacted>`.
    pub fn redacted(&self) -> Self {
        match self {
            Self::Files { .. } => self.clone(),
            Self::Inline { cert_chain_pem, .. } => Self::Inline {
                cert_chain_pem: cert_chain_pem.clone(),
                private_key_pem: "<redacted>".to_string(),
            },
        }
    }
}

/// PEM text from a file or inline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PemSource {
    /// A path on the proxy's filesystem.
    File(String),
    /// The PEM text itself.
    Inline(String),
}

/// A parsed SPIFFE ID: `spiffe://<trust-domain><path>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

/// Why a string is not a valid SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// Missing the `spiffe://` scheme.
    #[error("{0:?} is not a SPIFFE ID: it must start with \"spiffe://\"")]
    Scheme(String),
    /// Empty or invalid trust domain.
    #[error("{0:?} has an invalid trust domain: use lowercase letters, digits, '.', '-' and '_'")]
    TrustDomain(String),
    /// Invalid path.
    #[error(
        "{0:?} has an invalid path: segments must be non-empty, not '.' or '..', and use letters, digits, '.', '-' and '_'"
    )]
    Path(String),
}

impl SpiffeId {
    /// The URI scheme, with its `//`: Istio's principals are SPIFFE IDs without it.
    pub const SCHEME: &'static str = "spiffe://";

    /// Parse and check a SPIFFE ID per the SPIFFE-ID specification.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        let rest = s
            .strip_prefix(Self::SCHEME)
            .ok_or_else(|| SpiffeIdError::Scheme(s.to_string()))?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if !is_valid_trust_domain(td) {
            return Err(SpiffeIdError::TrustDomain(s.to_string()));
        }
        if !path.is_empty() {
            let ok = path[1..].split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            });
            if !ok {
                return Err(SpiffeIdError::Path(s.to_string()));
            }
        }
        Ok(Self {
            trust_domain: td.to_string(),
            path: path.to_string(),
        })
    }

    /// The mesh identity of a service account.
    pub fn for_service_account(trust_domain: &str, namespace: &str, sa: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            path: format!("/ns/{namespace}/sa/{sa}"),
        }
    }

    /// The same path in `trust_domain`.
    pub fn in_trust_domain(&self, trust_domain: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            path: self.path.clone(),
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path, including its leading `/` (empty for a trust-domain ID).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The namespace of a `/ns/<ns>/sa/<sa>` identity.
    pub fn namespace(&self) -> Option<&str> {
        let mut it = self.path.split('/').skip(1);
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(_), None) => Some(ns),
            _ => None,
        }
    }

    /// The service account of a `/ns/<ns>/sa/<sa>` identity.
    pub fn service_account(&self) -> Option<&str> {
        self.namespace()?;
        self.path.rsplit('/').next()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", Self::SCHEME, self.trust_domain, self.path)
    }
}

pub(crate) fn is_valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_service_account_identity() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), Some("shop"));
        assert_eq!(id.service_account(), Some("web"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(SpiffeId::for_service_account("cluster.local", "shop", "web"), id);
    }

    #[test]
    fn rejects_malformed_ids() {
        assert!(matches!(SpiffeId::parse("https://x/y"), Err(SpiffeIdError::Scheme(_))));
        assert!(matches!(
            SpiffeId::parse("spiffe://Upper/x"),
            Err(SpiffeIdError::TrustDomain(_))
        ));
        assert!(matches!(
            SpiffeId::parse("spiffe://td/a//b"),
            Err(SpiffeIdError::Path(_))
        ));
        assert!(matches!(
            SpiffeId::parse("spiffe://td/a/../b"),
            Err(SpiffeIdError::Path(_))
        ));
        assert!(SpiffeId::parse("spiffe://td").is_ok());
    }

    #[test]
    fn non_service_account_paths_have_no_namespace() {
        let id = SpiffeId::parse("spiffe://td/workload/x").unwrap();
        assert_eq!(id.namespace(), None);
        assert_eq!(id.service_account(), None);
    }

    #[test]
    fn debug_and_redacted_never_show_inline_keys() {
        let c = CertificateRef::Inline {
            cert_chain_pem: "CERT".into(),
            private_key_pem: "SECRET".into(),
        };
        assert!(!format!("{c:?}").contains("SECRET"));
        let json = serde_json::to_string(&c.redacted()).unwrap();
        assert!(!json.contains("SECRET") && json.contains("CERT"), "{json}");
    }
}
