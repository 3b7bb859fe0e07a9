//! A trust domain and its aliases (Istio's `trustDomainAliases`): the same path in any of them
//! names the same workload. What the operator's signer accepts in a CSR, what the proxy accepts
//! from a peer where it expects an identity, and how the compiler widens an
//! AuthorizationPolicy's principals all follow from [`TrustDomains`].
//!
//! # Guarantees
//! - Only the trust domain differs between equivalent identities: the path (`/ns/<ns>/sa/<sa>`)
//!   is always compared exactly, so an alias never lets one workload pass for another.
//! - An identity outside the set is equivalent to itself only (a federated peer keeps its own
//!   domain).

use crate::identity::{IdentityConfig, SpiffeId};

/// The Istio name of the default trust domain, which a principal may use for "the local
/// trust domain, whatever it is" (Istio's `constants.DefaultClusterLocalDomain`).
pub const CLUSTER_LOCAL: &str = "cluster.local";

/// At most this many aliases in a proxy's configuration (a few are expected: the ones a user
/// lists, and the previous domain during a change).
pub const MAX_ALIASES: usize = 32;

/// A trust domain and the domains that are aliases of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustDomains {
    domain: String,
    /// Sorted, without duplicates and without `domain`.
    aliases: Vec<String>,
}

impl TrustDomains {
    /// `domain` with `aliases` (duplicates and `domain` itself among them are dropped).
    pub fn new<S: Into<String>>(domain: impl Into<String>, aliases: impl IntoIterator<Item = S>) -> Self {
        let domain = domain.into();
        let mut aliases: Vec<String> = aliases.into_iter().map(Into::into).filter(|a| *a != domain).collect();
        aliases.sort();
        aliases.dedup();
        TrustDomains { domain, aliases }
    }

    /// The trust domain identities are issued in.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Its aliases, sorted.
    pub fn aliases(&self) -> &[String] {
        &self.aliases
    }

    /// Whether `trust_domain` is the domain or one of its aliases.
    pub fn contains(&self, trust_domain: &str) -> bool {
        trust_domain == self.domain || self.aliases.iter().any(|a| a == trust_domain)
    }

    /// The domain first, then the aliases.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.domain.as_str()).chain(self.aliases.iter().map(String::as_str))
    }

    /// Whether `a` and `b` name the same workload: equal, or the same path in two domains of
    /// the set.
    pub fn equivalent(&self, a: &SpiffeId, b: &SpiffeId) -> bool {
        a == b || (a.path() == b.path() && self.contains(a.trust_domain()) && self.contains(b.trust_domain()))
    }

    /// `id` in every domain of the set (the domain first), or `id` alone when its domain is
    /// outside the set.
    pub fn variants(&self, id: &SpiffeId) -> Vec<SpiffeId> {
        if !self.contains(id.trust_domain()) {
            return vec![id.clone()];
        }
        self.all().map(|td| id.in_trust_domain(td)).collect()
    }

    /// An Istio principal (a SPIFFE ID without its scheme, `*` wildcards allowed) as the
    /// principals it stands for, as Istio's `ReplaceTrustDomainAliases` widens them: one written
    /// `<td>/ns/<ns>/sa/<sa>` with `td` in the set, or `cluster.local` (the local trust domain,
    /// whatever its name), becomes the same principal in every domain of the set; any other
    /// (`*`, a wildcard trust domain, another shape, a federated domain) is kept as written.
    pub fn principals(&self, principal: &str) -> Vec<String> {
        let parts: Vec<&str> = principal.split('/').collect();
        let enforced = parts.len() == 5 && !parts[0].contains('*');
        if !enforced || !(self.contains(parts[0]) || parts[0] == CLUSTER_LOCAL) {
            return vec![principal.to_string()];
        }
        let rest = &principal[parts[0].len()..];
        self.all().map(|td| format!("{td}{rest}")).collect()
    }
}

impl IdentityConfig {
    /// The trust domain with its aliases.
    pub fn trust_domains(&self) -> TrustDomains {
        TrustDomains::new(self.trust_domain.clone(), self.trust_domain_aliases.iter().cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn the_domain_is_never_its_own_alias_and_aliases_are_sorted_once() {
        let t = TrustDomains::new(
            "new.example",
            ["old.example", "new.example", "a.example", "old.example"],
        );
        assert_eq!(t.domain(), "new.example");
        assert_eq!(t.aliases(), ["a.example", "old.example"]);
        assert_eq!(t.all().collect::<Vec<_>>(), ["new.example", "a.example", "old.example"]);
    }

    #[test]
    fn the_same_path_in_two_domains_of_the_set_is_the_same_workload() {
        let t = TrustDomains::new("new.example", ["old.example"]);
        let new = id("spiffe://new.example/ns/shop/sa/web");
        assert!(t.equivalent(&id("spiffe://old.example/ns/shop/sa/web"), &new));
        assert!(
            !t.equivalent(&id("spiffe://old.example/ns/shop/sa/db"), &new),
            "an alias never makes another workload pass"
        );
        assert!(
            !t.equivalent(&id("spiffe://other.example/ns/shop/sa/web"), &new),
            "a domain outside the set is not an alias"
        );
        let alone = TrustDomains::new("new.example", Vec::<String>::new());
        assert!(!alone.equivalent(&id("spiffe://old.example/ns/shop/sa/web"), &new));
        assert!(alone.equivalent(&new, &new));
    }

    #[test]
    fn variants_cover_every_domain_of_the_set_and_only_for_its_members() {
        let t = TrustDomains::new("new.example", ["old.example"]);
        let names = |v: Vec<SpiffeId>| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            names(t.variants(&id("spiffe://old.example/ns/a/sa/b"))),
            ["spiffe://new.example/ns/a/sa/b", "spiffe://old.example/ns/a/sa/b"]
        );
        assert_eq!(
            names(t.variants(&id("spiffe://fed.example/ns/a/sa/b"))),
            ["spiffe://fed.example/ns/a/sa/b"]
        );
    }

    #[test]
    fn principals_are_widened_as_istio_widens_them() {
        let t = TrustDomains::new("new.example", ["old.example"]);
        assert_eq!(
            t.principals("old.example/ns/shop/sa/web"),
            ["new.example/ns/shop/sa/web", "old.example/ns/shop/sa/web"]
        );
        assert_eq!(
            t.principals("cluster.local/ns/shop/sa/web"),
            ["new.example/ns/shop/sa/web", "old.example/ns/shop/sa/web"],
            "cluster.local stands for the local trust domain"
        );
        assert_eq!(
            t.principals("new.example/ns/shop/sa/*"),
            ["new.example/ns/shop/sa/*", "old.example/ns/shop/sa/*"]
        );
        for kept in [
            "*",
            "*/ns/shop/sa/web",
            "*.example/ns/shop/sa/web",
            "fed.example/ns/shop/sa/web",
            "new.example/ns/shop/*",
        ] {
            assert_eq!(t.principals(kept), [kept], "{kept} is kept as written");
        }
    }
}
