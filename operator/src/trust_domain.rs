//! The trust domain the operator issues and checks workload identities in, with its aliases,
//! read live from the Mesh's valid settings ([`crate::settings`]: `spec.trustDomain`,
//! `spec.trustDomainAliases`) and the previous domains its status records during a change:
//! every replica's certificate signer and push authentication follow a change at once, with no
//! restart, and an invalid Mesh changes nothing.

use std::sync::Arc;

use tokio::sync::watch;
use trellis_contract::TrustDomains;

use crate::settings::Settings;

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

    /// The trust domain and aliases of the settings this replica follows (the last valid
    /// Mesh's, or the defaults while there is none), with the previous trust domains the
    /// Mesh's status in the live `index` records.
    pub fn settings(settings: watch::Receiver<Settings>, index: crate::index::Shared) -> Self {
        Source(Arc::new(move || {
            let settings = settings.borrow();
            let previous = index
                .read()
                .map(|i| i.previous_trust_domains().to_vec())
                .unwrap_or_default();
            let aliases = settings.trust_domain_aliases.iter().chain(&previous).cloned();
            TrustDomains::new(settings.trust_domain.clone(), aliases)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::index::settings::Followed;
    use crate::index::{Change, Object};
    use crate::settings::Defaults;

    fn mesh(spec: serde_json::Value, status: serde_json::Value) -> Change {
        Change::Applied(Object::Mesh(Box::new(
            serde_json::from_value(json!({
                "apiVersion": "mesh.trellis.dev/v1alpha1", "kind": "Mesh", "metadata": {"name": "default"},
                "spec": spec, "status": status,
            }))
            .unwrap(),
        )))
    }

    #[tokio::test]
    async fn the_valid_mesh_names_the_domain_and_aliases_and_an_invalid_one_changes_nothing() {
        let defaults = Defaults {
            trust_domain: "flag.example".into(),
            ..Defaults::default()
        };
        let followed = Followed::start(defaults.clone(), Settings::defaults(&defaults));
        let source = Source::settings(followed.settings.clone(), followed.index.clone());
        let mut settings = followed.settings.clone();
        // The compiler reads the same trust domain as the signer, from the same index.
        let compiled = || followed.index.read().unwrap().snapshot().trust_domains();
        assert_eq!(source.get(), TrustDomains::new("flag.example", Vec::<String>::new()));
        assert_eq!(compiled(), source.get(), "no Mesh: the flag's domain");
        // During a change from old.example, which the status records as the domain
        // certificates are issued in until every proxy holds the new one.
        let status = json!({"certificateAuthority": {"trustDomain": "old.example"}});
        followed.apply(mesh(
            json!({"trustDomain": "prod.example", "trustDomainAliases": ["alias.example"]}),
            status.clone(),
        ));
        followed.list();
        tokio::time::timeout(Duration::from_secs(1), settings.changed())
            .await
            .unwrap()
            .unwrap();
        let valid = TrustDomains::new("prod.example", ["alias.example", "old.example"]);
        assert_eq!(source.get(), valid);
        assert_eq!(compiled(), valid);
        // Invalid (its rollout batch given twice): refused whole, its trust domain and aliases
        // with it.
        followed.apply(mesh(
            json!({"trustDomain": "other.example", "trustDomainAliases": ["x.example"],
                   "rollout": {"batchSize": 2, "batchPercent": 10}}),
            status,
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(source.get(), valid);
        assert_eq!(
            compiled(),
            valid,
            "the compiler keeps the valid Mesh's domain and aliases too"
        );
        followed.stop().await;
    }
}
