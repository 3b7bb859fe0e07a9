//! Everything the compiler would report about a snapshot, without compiling every proxy: each
//! resource is compiled once, from a proxy placed where it applies (a sidecar in the namespace
//! of a VirtualService or DestinationRule, a gateway pod with a Gateway's selector labels, each
//! pod for its PeerAuthentications). `meshctl analyze` reports these diagnostics, and the
//! operator can surface them as status conditions, without a proxy running.
//!
//! # Guarantees
//! Linear in the resources (each VirtualService's hosts, each DestinationRule's subsets, each
//! Gateway, each pod), not in resources × proxies.

use std::collections::{BTreeMap, BTreeSet};

use super::route::{ClusterRef, applies_to_gateway};
use super::{Ctx, DNS_DOMAIN, Diagnostic, Role, cluster, inbound, outbound, resolve_host, service_entry};
use crate::code::Code;
use crate::registry::{ObjectKey, Workload};
use crate::snapshot::{FetchedJwks, Snapshot};
use trellis_api::security::KeySource;

/// A proxy that does not exist, standing where a resource applies.
fn proxy(namespace: &str, labels: BTreeMap<String, String>) -> Workload {
    Workload {
        key: ObjectKey::new(namespace, "meshctl-analyze"),
        ip: None,
        labels,
        service_account: "default".into(),
        ready: true,
        meshed: true,
        named_ports: BTreeMap::new(),
    }
}

fn ctx<'a>(snapshot: &'a Snapshot, proxy: &'a Workload) -> Ctx<'a> {
    Ctx::of(snapshot, proxy)
}

/// The compiler's diagnostics about every resource of `snapshot`, sorted and without repeats.
pub fn diagnose(snapshot: &Snapshot) -> Vec<Diagnostic> {
    let mut out: BTreeSet<Diagnostic> = BTreeSet::new();

    // Mesh routes: each Service port a mesh VirtualService's host names, compiled from the
    // VirtualService's namespace (its `exportTo: .` is visible there), once per namespace.
    let mut ports: BTreeSet<(String, ObjectKey)> = BTreeSet::new();
    for vs in &snapshot.virtual_services {
        let ns = vs.metadata.namespace.as_deref().unwrap_or("default");
        let mesh = applies_to_gateway(vs.spec.gateways.as_deref().unwrap_or_default(), ns, "mesh")
            || vs.spec.http.iter().flatten().any(|r| {
                r.matches
                    .iter()
                    .flatten()
                    .any(|m| m.gateways.as_ref().is_some_and(|g| applies_to_gateway(g, ns, "mesh")))
            });
        if !mesh {
            continue;
        }
        for h in vs.spec.hosts.iter().flatten() {
            let host = resolve_host(h, ns);
            if host.contains('*') {
                for svc in snapshot.registry.services.values() {
                    if super::host_matches(&host, &svc.fqdn(DNS_DOMAIN)) {
                        ports.insert((ns.to_string(), svc.key.clone()));
                    }
                }
            } else if let Some(svc) = snapshot.registry.service_by_host(&host, DNS_DOMAIN) {
                ports.insert((ns.to_string(), svc.key.clone()));
            }
        }
    }
    let mut viewers: BTreeMap<String, Workload> = BTreeMap::new();
    for (ns, _) in &ports {
        viewers.entry(ns.clone()).or_insert_with(|| proxy(ns, BTreeMap::new()));
    }
    for (ns, key) in &ports {
        let (Some(viewer), Some(svc)) = (viewers.get(ns), snapshot.registry.services.get(key)) else {
            continue;
        };
        let mut c = ctx(snapshot, viewer);
        let mut refs: Vec<ClusterRef> = Vec::new();
        for p in &svc.ports {
            refs.extend(outbound::port_routes(&mut c, svc, p).refs);
        }
        for r in refs.iter().filter(|r| r.subset.is_some()) {
            cluster::build(&mut c, r);
        }
        out.extend(c.diagnostics);
    }
    // ServiceEntries: their hosts' routes and clusters, from the entries' namespaces and from
    // those of the mesh VirtualServices naming their hosts.
    let entry_hosts = service_entry::all_hosts(snapshot);
    let mut entry_namespaces: BTreeSet<String> = snapshot
        .service_entries
        .iter()
        .map(|se| se.metadata.namespace.clone().unwrap_or_else(|| "default".into()))
        .collect();
    for vs in &snapshot.virtual_services {
        let ns = vs.metadata.namespace.as_deref().unwrap_or("default");
        if vs
            .spec
            .hosts
            .iter()
            .flatten()
            .any(|h| entry_hosts.contains(&resolve_host(h, ns)))
        {
            entry_namespaces.insert(ns.to_string());
        }
    }
    for ns in &entry_namespaces {
        let viewer = proxy(ns, BTreeMap::new());
        let mut c = ctx(snapshot, &viewer);
        let refs: Vec<ClusterRef> = outbound::entry_routes(&mut c)
            .into_iter()
            .flat_map(|r| r.refs)
            .collect();
        for r in &refs {
            cluster::build(&mut c, r);
        }
        out.extend(c.diagnostics);
    }

    let anywhere = proxy("", BTreeMap::new());
    let mut c = ctx(snapshot, &anywhere);
    outbound::unused_hosts(&mut c);
    outbound::report_mesh_mode(&mut c);
    out.extend(c.diagnostics);

    // DestinationRules: each port of the host's Service, with each subset, from the rule's
    // namespace.
    for dr in &snapshot.destination_rules {
        let ns = dr.metadata.namespace.as_deref().unwrap_or("default");
        let host = resolve_host(&dr.spec.host, ns);
        let Some(svc) = snapshot.registry.service_by_host(&host, DNS_DOMAIN) else {
            continue;
        };
        let viewer = proxy(ns, BTreeMap::new());
        let mut c = ctx(snapshot, &viewer);
        let subsets = std::iter::once(None).chain(dr.spec.subsets.iter().flatten().map(|s| Some(s.name.clone())));
        for subset in subsets {
            for p in &svc.ports {
                cluster::build(
                    &mut c,
                    &ClusterRef {
                        host: host.clone(),
                        port: p.port,
                        subset: subset.clone(),
                    },
                );
            }
        }
        out.extend(c.diagnostics);
    }

    // Gateways: a gateway pod with each Gateway's selector labels, in its namespace.
    for gw in &snapshot.gateways {
        let ns = gw.metadata.namespace.as_deref().unwrap_or("default");
        let pod = proxy(ns, gw.spec.selector.clone().unwrap_or_default());
        let mut c = ctx(snapshot, &pod);
        let mut clusters = BTreeMap::new();
        super::gateway::gateway_listeners(&mut c, &mut clusters);
        inbound::authorization(&mut c, Role::Gateway);
        inbound::request_authentication(&mut c, Role::Gateway);
        out.extend(c.diagnostics);
    }

    // Workload policy: each pod's PeerAuthentications, RequestAuthentications and
    // AuthorizationPolicies.
    for w in snapshot.registry.workloads.values() {
        let mut c = ctx(snapshot, w);
        inbound::mtls(&mut c);
        inbound::authorization(&mut c, Role::Sidecar);
        inbound::request_authentication(&mut c, Role::Sidecar);
        out.extend(c.diagnostics);
    }
    out.extend(key_sets(snapshot));
    out.into_iter().collect()
}

/// What the operator holds of each RequestAuthentication rule's `jwksUri`, when it is not a
/// fresh key set: no keys (TRL0111: the issuer's tokens get 401) or keys kept from an earlier
/// fetch (TRL0112). A URI the snapshot has nothing for (files, `meshctl analyze`) says
/// nothing: only the operator fetches.
fn key_sets(snapshot: &Snapshot) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for ra in &snapshot.request_authentications {
        let resource = super::resource("RequestAuthentication", &ra.metadata);
        for (i, r) in ra.spec.jwt_rules.iter().flatten().enumerate() {
            let source = KeySource::of(r);
            let Some(key) = source.fetch_key() else {
                continue;
            };
            // A discovered key set shows as the issuer's discovery document.
            let at = format!(
                "spec.jwtRules[{i}].{} {:?}",
                source.field(),
                trellis_api::security::jwks_uri_for_display(&key)
            );
            let (code, message) = match (snapshot.jwks.get(&key), snapshot.jwks_stale.get(&key)) {
                (Some(FetchedJwks::Unavailable(why)), _) => (
                    Code::JwksUnavailable,
                    format!(
                        "{at}: no key set ({why}); tokens of issuer {:?} are refused (401) until a fetch succeeds",
                        r.issuer
                    ),
                ),
                (Some(FetchedJwks::Keys(_)), Some(why)) => (
                    Code::JwksStale,
                    format!(
                        "{at}: the last refresh failed ({why}); proxies keep the keys of the last successful fetch"
                    ),
                ),
                _ => continue,
            };
            out.push(Diagnostic {
                severity: match code.level() {
                    crate::code::Level::Error => super::Severity::Error,
                    _ => super::Severity::Warning,
                },
                code,
                resource: resource.clone(),
                message,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::Code;

    const SHOP: &str = "
apiVersion: v1
kind: Service
metadata: {name: payment, namespace: shop}
spec:
  clusterIP: 10.96.0.9
  selector: {app: payment}
  ports: [{name: http, port: 8080}]
---
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: payment, namespace: shop}
spec:
  hosts: [payment]
  http:
  - match: [{scheme: {exact: https}}]
    route: [{destination: {host: payment}}]
  - route: [{destination: {host: payment}}]
---
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: payment-extra, namespace: shop, creationTimestamp: '2030-01-01T00:00:00Z'}
spec:
  hosts: [payment]
  http:
  - route: [{destination: {host: payment}}]
---
apiVersion: networking.trellis.dev/v1alpha1
kind: DestinationRule
metadata: {name: payment, namespace: shop}
spec:
  host: payment
  trafficPolicy:
    loadBalancer: {simple: PASSTHROUGH}
---
apiVersion: networking.trellis.dev/v1alpha1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  selector: {app: edge}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ['*']
    tls: {mode: SIMPLE, credentialName: missing}
";

    #[test]
    fn every_resource_is_diagnosed_once_without_a_proxy() {
        let s = Snapshot::from_yaml(SHOP).unwrap();
        assert!(s.registry.workloads.is_empty());
        let d = diagnose(&s);
        let has = |code: Code, resource: &str, text: &str| {
            d.iter()
                .any(|d| d.code == code && d.resource == resource && d.message.contains(text))
        };
        assert!(
            has(Code::UnsupportedDropped, "VirtualService shop/payment", "scheme"),
            "{d:#?}"
        );
        assert!(
            has(
                Code::VirtualServiceShadowed,
                "VirtualService shop/payment-extra",
                "never used"
            ),
            "{d:#?}"
        );
        assert!(
            has(Code::UnsupportedDropped, "DestinationRule shop/payment", "PASSTHROUGH"),
            "{d:#?}"
        );
        assert!(
            has(Code::ReferencedResourceNotFound, "Gateway shop/edge", "credentialName"),
            "{d:#?}"
        );
        let mut sorted = d.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, d);
    }

    #[test]
    fn key_sets_the_operator_could_not_fetch_are_reported_on_their_rule() {
        let yaml = "
apiVersion: security.trellis.dev/v1alpha1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  jwtRules:
  - {issuer: https://a.example, jwksUri: 'https://a.example/keys?api_key=s3cret'}
  - {issuer: https://b.example, jwksUri: https://b.example/keys}
  - {issuer: https://c.example, jwksUri: https://c.example/keys}
";
        let mut s = Snapshot::from_yaml(yaml).unwrap();
        // Files alone: nothing fetched, nothing said (only the operator fetches).
        assert!(diagnose(&s).is_empty(), "{:#?}", diagnose(&s));
        s.jwks.insert(
            "https://a.example/keys?api_key=s3cret".into(),
            FetchedJwks::Unavailable("HTTP 503".into()),
        );
        s.jwks
            .insert("https://b.example/keys".into(), FetchedJwks::Keys("{}".into()));
        s.jwks_stale
            .insert("https://b.example/keys".into(), "connection refused".into());
        s.jwks
            .insert("https://c.example/keys".into(), FetchedJwks::Keys("{}".into()));
        let d = diagnose(&s);
        assert_eq!(d.len(), 2, "{d:#?}");
        assert!(d.iter().all(|d| d.resource == "RequestAuthentication shop/jwt"));
        let unavailable = d.iter().find(|d| d.code == Code::JwksUnavailable).expect("TRL0111");
        assert!(
            unavailable.message.contains("spec.jwtRules[0].jwksUri") && unavailable.message.contains("HTTP 503"),
            "{}",
            unavailable.message
        );
        // The query can hold a credential: the status shows the URL without it.
        assert!(
            unavailable.message.contains("https://a.example/keys?<redacted>")
                && !unavailable.message.contains("s3cret"),
            "{}",
            unavailable.message
        );
        assert_eq!(unavailable.severity, crate::compile::Severity::Error);
        let stale = d.iter().find(|d| d.code == Code::JwksStale).expect("TRL0112");
        assert!(
            stale.message.contains("spec.jwtRules[1].jwksUri") && stale.message.contains("connection refused"),
            "{}",
            stale.message
        );
    }
}
