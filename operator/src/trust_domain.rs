//! The trust domain the operator issues and checks workload identities in, with its aliases,
//! read live from the Mesh (`spec.trustDomain`, `spec.trustDomainAliases`, and the previous
//! domains its status records during a change): every replica's certificate signer and push
//! authentication follow a change at once, with no restart.

use std::sync::{Arc, RwLock};

use trellis_contract::TrustDomains;

use crate::index::Index;

/// Where the trust domain and its aliases are read from.
#[derive(Clone)]
pub struct Source(Arc<dyn Fn() -> TrustDomains + Send + Sync>);

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Source").field(&self.get()).finish()
    }
}

impl Source {
    /// Always `trust_domain`, without aliases (tests, and operators without a Mesh).
    pub fn fixed(trust_domain: impl Into<String>) -> Self {
        let domains = TrustDomains::new(trust_domain.into(), Vec::<String>::new());
        Source(Arc::new(move || domains.clone()))
    }

    /// The Mesh as the live index holds it; `default` (the operator's flag) while there is no
    /// Mesh.
    pub fn index(index: Arc<RwLock<Index>>, default: impl Into<String>) -> Self {
        let default = default.into();
        Source(Arc::new(move || {
            index
                .read()
                .ok()
                .and_then(|i| i.trust_domains())
                .unwrap_or_else(|| TrustDomains::new(default.clone(), Vec::<String>::new()))
        }))
    }

    /// The trust domain and its aliases now.
    pub fn get(&self) -> TrustDomains {
        (self.0)()
    }
}

impl From<&str> for Source {
    fn from(trust_domain: &str) -> Self {
        Source::fixed(trust_domain)
    }
}

impl From<String> for Source {
    fn from(trust_domain: String) -> Self {
        Source::fixed(trust_domain)
    }
}
