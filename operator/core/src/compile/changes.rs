//! What a change of the compiler's inputs touches, so the push recompiles only that (Istio's
//! scoped pushes): the one place that knows which inputs each compiled part reads.
//!
//! - A sidecar's **port routes** (virtual host and TCP route of one Service port) read the
//!   Service, the VirtualServices for its host, and the Services they route to (destination
//!   ports are resolved from them).
//! - A **cluster** reads its host's Service, the DestinationRule for the host, the Service's
//!   EndpointSlices and the pods they name (or its selector's pods without slices: endpoints,
//!   identities), the mesh's trust domain and the TLS Secrets the rule's
//!   `credentialName`s name (in the client's namespace).
//! - The **DNS table** reads the Services and ServiceEntries.
//! - **Sidecars** change every sidecar's outbound part and DNS table (what it reaches) and its
//!   own part (the inbound listener's ports: `ingress`, `inboundConnectionPool`); with
//!   Sidecars, a VirtualService change rebuilds the DNS tables (imported destinations).
//! - **ServiceEntries** change every sidecar's outbound part; the push recompiles the entries'
//!   routes and clusters whenever it rebuilds a shared part (they read pods, VirtualServices,
//!   DestinationRules and Services too), so no narrower rule is needed.
//! - A sidecar's **own part** (node, identity, inbound listener and policy, telemetry) reads its
//!   pod, the Services of its namespace and their DestinationRules (the pools of the
//!   application's clusters), PeerAuthentications, RequestAuthentications (and the
//!   key sets fetched for them), AuthorizationPolicies, the mesh settings and the trust bundle. Gateways' own parts read nearly everything and are always
//!   recompiled.
//!
//! # Guarantees
//! - Conservative: anything this module cannot narrow down marks everything changed. A test
//!   compares incremental results with full compiles over random sequences of changes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use trellis_api::networking::{DestinationRule, ServiceEntry, Sidecar, VirtualService};
use trellis_api::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};

use super::{DNS_DOMAIN, host_matches, resolve_host, source_label_keys};
use crate::registry::{ObjectKey, selects};
use crate::snapshot::Snapshot;

/// More host patterns than this in one change and everything is recompiled (checking each
/// compiled part against each pattern would cost more).
const MAX_PATTERNS: usize = 64;

/// What changed between two snapshots, in terms of compiled parts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Recompile every sidecar's outbound part.
    pub all_outbound: bool,
    /// Host patterns (FQDNs or wildcards) whose port routes must be recompiled.
    pub route_hosts: BTreeSet<String>,
    /// FQDNs of Services that changed: routes sending traffic to them are recompiled.
    pub services: BTreeSet<String>,
    /// Host patterns whose clusters must be rebuilt.
    pub cluster_hosts: BTreeSet<String>,
    /// The DNS table must be rebuilt.
    pub dns: bool,
    /// Recompile every sidecar's own part.
    pub all_own: bool,
    /// Pods whose own part must be recompiled.
    pub workloads: BTreeSet<ObjectKey>,
    /// Namespaces whose Services, or the DestinationRules of their Services, changed (own
    /// parts of their sidecars are recompiled).
    pub service_namespaces: BTreeSet<String>,
}

impl Changes {
    /// Everything changed.
    pub fn everything() -> Self {
        Changes {
            all_outbound: true,
            dns: true,
            all_own: true,
            ..Changes::default()
        }
    }

    /// Whether the port routes of the Service `fqdn`, which reference clusters of
    /// `destinations`, must be recompiled.
    pub fn routes_changed<'a>(&self, fqdn: &str, mut destinations: impl Iterator<Item = &'a str>) -> bool {
        self.all_outbound
            || self.services.contains(fqdn)
            || self.route_hosts.iter().any(|p| host_matches(p, fqdn))
            || destinations.any(|d| self.services.contains(d))
    }

    /// Whether the clusters of `host` must be rebuilt.
    pub fn cluster_changed(&self, host: &str) -> bool {
        self.all_outbound || self.cluster_hosts.iter().any(|p| host_matches(p, host))
    }

    /// Whether any sidecar's shared outbound part is touched at all.
    pub fn touches_outbound(&self) -> bool {
        self.all_outbound
            || self.dns
            || !self.route_hosts.is_empty()
            || !self.services.is_empty()
            || !self.cluster_hosts.is_empty()
    }

    /// Whether the own part of the sidecar in `pod` must be recompiled.
    pub fn own_changed(&self, pod: &ObjectKey) -> bool {
        self.all_own || self.workloads.contains(pod) || self.service_namespaces.contains(&pod.namespace)
    }

    fn narrow(mut self) -> Self {
        if self.route_hosts.len() + self.cluster_hosts.len() > MAX_PATTERNS {
            self.all_outbound = true;
        }
        self
    }
}

/// What differs between `old` and `new`.
pub fn changes(old: &Snapshot, new: &Snapshot) -> Changes {
    let mut c = Changes::default();
    if old.mesh != new.mesh
        || old.root_namespace != new.root_namespace
        || old.previous_trust_domains != new.previous_trust_domains
        || source_label_keys(old) != source_label_keys(new)
    {
        // The trust domain and its aliases are in every cluster and every proxy's identity;
        // `sourceLabels` decide how proxies share; the root namespace decides which policies
        // apply to every proxy.
        return Changes::everything();
    }
    if old.trust_bundle != new.trust_bundle
        || old.jwks != new.jwks
        || !same_in_order(&old.request_authentications, &new.request_authentications, |a, b| {
            a.spec == b.spec
        })
        || !same_in_order(&old.peer_authentications, &new.peer_authentications, |a, b| {
            a.spec == b.spec
        })
        || !same_in_order(&old.authorization_policies, &new.authorization_policies, |a, b| {
            a.spec == b.spec
        })
    {
        c.all_own = true;
    }

    // ServiceEntries: their routes, clusters and DNS answers are part of every sidecar's
    // outbound part (the push recompiles the entries' own pieces on every change).
    if !same_in_order(&old.service_entries, &new.service_entries, |a, b| a.spec == b.spec) {
        c.all_outbound = true;
        c.dns = true;
    }

    // Sidecars: what each sidecar reaches (which Services, entries and VirtualServices its
    // outbound part holds, its DNS table, its outbound traffic policy), how proxies share, and
    // the ports of each sidecar's inbound listener (`ingress`, `inboundConnectionPool`).
    if !same_in_order(&old.sidecars, &new.sidecars, |a, b| a.spec == b.spec) {
        c.all_outbound = true;
        c.dns = true;
        c.all_own = true;
    }

    // VirtualServices: the hosts of the old and new versions.
    let vs_changes = changed(&old.virtual_services, &new.virtual_services, |a, b| a.spec == b.spec);
    let sidecars = !old.sidecars.is_empty() || !new.sidecars.is_empty();
    if sidecars && !vs_changes.is_empty() {
        // A scoped sidecar imports the destinations of the VirtualServices it imports, and
        // answers their names: the DNS table follows them. (Port routes of hosts that come
        // into or out of scope are compiled or left out by the rebuild itself.)
        c.dns = true;
    }
    for vs in vs_changes {
        let ns = vs.metadata.namespace.as_deref().unwrap_or("default");
        c.route_hosts
            .extend(vs.spec.hosts.iter().flatten().map(|h| resolve_host(h, ns)));
    }

    // DestinationRules: the clusters of their hosts, and the own parts of the sidecars of the
    // Services they cover (their pools on the inbound clusters: `inbound::ingress`).
    let mut dr_hosts = BTreeSet::new();
    for dr in changed(&old.destination_rules, &new.destination_rules, |a, b| a.spec == b.spec) {
        let ns = dr.metadata.namespace.as_deref().unwrap_or("default");
        let host = resolve_host(&dr.spec.host, ns);
        c.cluster_hosts.insert(host.clone());
        dr_hosts.insert(host);
    }
    if !dr_hosts.is_empty() {
        for svc in old.registry.services.values().chain(new.registry.services.values()) {
            let fqdn = svc.fqdn(DNS_DOMAIN);
            if dr_hosts.iter().any(|h| host_matches(h, &fqdn)) {
                c.service_namespaces.insert(svc.key.namespace.clone());
            }
        }
    }

    // TLS Secrets: the clusters of the rules naming them in `credentialName` (in any
    // namespace: the Secret is looked up in the client's).
    let changed_secrets: BTreeSet<&str> = old
        .registry
        .credentials
        .iter()
        .chain(&new.registry.credentials)
        .filter(|(k, _)| old.registry.credentials.get(*k) != new.registry.credentials.get(*k))
        .map(|(k, _)| k.name.as_str())
        .collect();
    if !changed_secrets.is_empty() {
        for dr in old.destination_rules.iter().chain(&new.destination_rules) {
            if credential_names(&dr.spec).any(|n| changed_secrets.contains(n)) {
                let ns = dr.metadata.namespace.as_deref().unwrap_or("default");
                c.cluster_hosts.insert(resolve_host(&dr.spec.host, ns));
            }
        }
    }

    // Services: their routes, the routes to them, their clusters, DNS, and own parts of their
    // namespace's sidecars.
    let (old_reg, new_reg) = (&old.registry, &new.registry);
    for key in old_reg.services.keys().chain(new_reg.services.keys()) {
        let (before, after) = (old_reg.services.get(key), new_reg.services.get(key));
        if let Some(svc) = before.or(after)
            && before != after
        {
            let fqdn = svc.fqdn(DNS_DOMAIN);
            c.services.insert(fqdn.clone());
            c.cluster_hosts.insert(fqdn);
            c.service_namespaces.insert(key.namespace.clone());
            c.dns = true;
        }
    }

    // EndpointSlices: the clusters of their Services (before or after).
    for key in old_reg.endpoint_slices.keys().chain(new_reg.endpoint_slices.keys()) {
        if old_reg.endpoint_slices.get(key) != new_reg.endpoint_slices.get(key) {
            c.cluster_hosts
                .insert(format!("{}.{}.svc.{DNS_DOMAIN}", key.name, key.namespace));
        }
    }

    // Pods: the clusters of the Services selecting them or whose slices name them (before or
    // after), and their own part.
    let changed_pods: Vec<&ObjectKey> = old_reg
        .workloads
        .keys()
        .chain(new_reg.workloads.keys().filter(|k| !old_reg.workloads.contains_key(*k)))
        .filter(|k| old_reg.workloads.get(*k) != new_reg.workloads.get(*k))
        .collect();
    let mut selected_by: BTreeMap<&str, Vec<&crate::registry::Service>> = BTreeMap::new();
    if !changed_pods.is_empty() {
        for svc in old_reg.services.values().chain(new_reg.services.values()) {
            selected_by.entry(svc.key.namespace.as_str()).or_default().push(svc);
        }
    }
    for key in changed_pods {
        c.workloads.insert(key.clone());
        let labels = [old_reg.workloads.get(key), new_reg.workloads.get(key)];
        for svc in selected_by.get(key.namespace.as_str()).into_iter().flatten() {
            let selector = svc.selector.as_ref();
            if labels
                .iter()
                .flatten()
                .any(|w| selector.is_some_and(|s| selects(s, &w.labels)))
            {
                c.cluster_hosts.insert(svc.fqdn(DNS_DOMAIN));
            }
        }
        for svc in old_reg.services_naming_pod(key).chain(new_reg.services_naming_pod(key)) {
            c.cluster_hosts
                .insert(format!("{}.{}.svc.{DNS_DOMAIN}", svc.name, svc.namespace));
        }
    }
    c.narrow()
}

/// Every `credentialName` a DestinationRule's TLS settings name: top-level, per port, per
/// subset.
fn credential_names(spec: &trellis_api::networking::DestinationRuleSpec) -> impl Iterator<Item = &str> {
    let policies = spec
        .traffic_policy
        .iter()
        .chain(spec.subsets.iter().flatten().filter_map(|s| s.traffic_policy.as_ref()));
    policies.flat_map(|p| {
        p.tls
            .iter()
            .chain(p.port_level_settings.iter().flatten().filter_map(|pl| pl.tls.as_ref()))
            .filter_map(|t| t.credential_name.as_deref())
    })
}

/// The metadata of the configuration kinds compared here (what kube's `Resource::meta` gives,
/// without depending on kube).
trait Meta {
    fn meta(&self) -> &ObjectMeta;
}

macro_rules! meta {
    ($($kind:ty),*) => {
        $(impl Meta for $kind {
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
        })*
    };
}
meta!(
    VirtualService,
    DestinationRule,
    ServiceEntry,
    Sidecar,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication
);

/// Whether a resource reads the same to the compiler before and after: its identity, its age
/// (merge order) and, by `spec`, its content.
fn same<T: Meta>(a: &T, b: &T, spec: impl Fn(&T, &T) -> bool) -> bool {
    let (ma, mb) = (a.meta(), b.meta());
    ma.namespace == mb.namespace && ma.name == mb.name && ma.creation_timestamp == mb.creation_timestamp && spec(a, b)
}

/// Whether two lists hold the same resources in the same order.
fn same_in_order<T: Meta>(old: &[T], new: &[T], spec: impl Fn(&T, &T) -> bool) -> bool {
    old.len() == new.len() && old.iter().zip(new).all(|(a, b)| same(a, b, &spec))
}

/// Every version (before and after) of each resource that was added, removed or changed,
/// paired by namespace/name.
fn changed<'a, T: Meta>(old: &'a [T], new: &'a [T], spec: impl Fn(&T, &T) -> bool) -> Vec<&'a T> {
    let key = |o: &T| (o.meta().namespace.clone(), o.meta().name.clone());
    let mut by_key: BTreeMap<_, (Option<&'a T>, Option<&'a T>)> = BTreeMap::new();
    for o in old {
        by_key.entry(key(o)).or_default().0 = Some(o);
    }
    for n in new {
        by_key.entry(key(n)).or_default().1 = Some(n);
    }
    by_key
        .into_values()
        .filter(|pair| !matches!(pair, (Some(a), Some(b)) if same(*a, *b, &spec)))
        .flat_map(|(a, b)| a.into_iter().chain(b))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: a, namespace: x}
spec: {clusterIP: 10.96.0.1, selector: {app: a}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: y}
spec: {clusterIP: 10.96.0.2, selector: {app: b}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a-1, namespace: x, labels: {app: a}}
spec: {containers: [{name: app, image: app}]}
status: {podIP: 10.244.0.5, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: a, namespace: x}
spec:
  hosts: [a]
  http: [{route: [{destination: {host: b.y.svc.cluster.local}}]}]
"#;

    fn snap(extra: &str) -> Snapshot {
        Snapshot::from_yaml(&format!("{BASE}\n---\n{extra}")).unwrap()
    }

    #[test]
    fn nothing_changed_is_empty() {
        assert_eq!(changes(&snap(""), &snap("")), Changes::default());
    }

    #[test]
    fn a_virtual_service_touches_its_hosts_routes_only() {
        let old = snap("");
        let mut new = old.clone();
        new.virtual_services[0].spec.http.as_mut().unwrap()[0].timeout = Some("1s".into());
        let c = changes(&old, &new);
        assert_eq!(c.route_hosts, BTreeSet::from(["a.x.svc.cluster.local".to_string()]));
        assert!(c.cluster_hosts.is_empty() && !c.dns && !c.all_outbound && !c.all_own);
        assert!(c.routes_changed("a.x.svc.cluster.local", std::iter::empty()));
        assert!(!c.routes_changed("b.y.svc.cluster.local", std::iter::empty()));
        assert!(!c.own_changed(&ObjectKey::new("x", "a-1")));
    }

    #[test]
    fn a_pod_touches_the_clusters_of_services_selecting_it_and_its_own_part() {
        let old = snap("");
        let mut new = old.clone();
        new.registry
            .workloads
            .get_mut(&ObjectKey::new("x", "a-1"))
            .unwrap()
            .ready = false;
        let c = changes(&old, &new);
        assert!(c.cluster_changed("a.x.svc.cluster.local"));
        assert!(!c.cluster_changed("b.y.svc.cluster.local"));
        assert!(c.route_hosts.is_empty());
        assert!(c.own_changed(&ObjectKey::new("x", "a-1")));
        assert!(!c.own_changed(&ObjectKey::new("y", "b-1")));
    }

    #[test]
    fn a_service_touches_routes_that_send_to_it() {
        let old = snap("");
        let mut new = old.clone();
        new.registry
            .services
            .get_mut(&ObjectKey::new("y", "b"))
            .unwrap()
            .cluster_ip = Some("10.96.0.9".into());
        let c = changes(&old, &new);
        assert!(c.dns);
        assert!(c.routes_changed("a.x.svc.cluster.local", ["b.y.svc.cluster.local"].into_iter()));
        assert!(!c.routes_changed("a.x.svc.cluster.local", std::iter::empty()));
        assert!(c.own_changed(&ObjectKey::new("y", "whatever")));
    }

    #[test]
    fn wildcard_destination_rules_and_mesh_changes() {
        let old = snap("");
        let new = snap(
            "apiVersion: networking.trellis.dev/v1alpha1\nkind: DestinationRule\nmetadata: {name: all, namespace: y}\nspec: {host: '*.svc.cluster.local'}\n",
        );
        let c = changes(&old, &new);
        assert!(c.cluster_changed("a.x.svc.cluster.local") && c.cluster_changed("b.y.svc.cluster.local"));
        let mut meshed = old.clone();
        meshed.mesh.trust_domain = Some("example.org".into());
        assert_eq!(changes(&old, &meshed), Changes::everything());
        let mut changing = meshed.clone();
        changing.previous_trust_domains = vec!["cluster.local".into()];
        assert_eq!(
            changes(&meshed, &changing),
            Changes::everything(),
            "the previous trust domain is an alias in every proxy's configuration"
        );
    }
}
