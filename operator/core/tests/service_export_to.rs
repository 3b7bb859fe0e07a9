//! A Kubernetes Service's `networking.trellis.dev/exportTo` annotation (Istio's
//! `networking.istio.io/exportTo`): proxies of the namespaces it names see the Service — its
//! routes, clusters and DNS entry —, others do not, and a route to it from elsewhere is
//! reported and gets no endpoints (Istio's 503), for sidecars and gateways alike. Istio's own
//! annotation is honoured on a Service without Trellis' one.

use std::collections::BTreeSet;

use trellis_core::code::Code;
use trellis_core::compile::{Compiled, Role};

#[path = "support/reach.rs"]
mod reach;
use reach::reach;
#[path = "support/workloads.rs"]
mod workloads;
use workloads::{gateway_pod, pod, snapshot};

/// `ledger` (billing) is exported to its own namespace and `shop`; `vault` (billing) to its
/// own only; `audit` (billing) to nobody; `web` (shop) has no annotation. Sidecars in shop,
/// billing and guest, and a gateway in trellis-system routing to ledger and vault.
fn mesh() -> String {
    [
        SERVICES,
        &pod("shop", "web-1", "web", "10.244.1.1"),
        &pod("billing", "ledger-1", "ledger", "10.244.2.1"),
        &pod("billing", "vault-1", "vault", "10.244.2.2"),
        &pod("guest", "guest-1", "guest", "10.244.3.1"),
        &gateway_pod("trellis-system", "edge-1", "edge", "10.244.0.9"),
        ROUTING,
    ]
    .join("\n---\n")
}

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.1.1, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata:
  name: ledger
  namespace: billing
  annotations: {networking.trellis.dev/exportTo: ". , shop"}
spec: {clusterIP: 10.96.2.1, selector: {app: ledger}, ports: [{name: http, port: 9080, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata:
  name: vault
  namespace: billing
  annotations: {networking.trellis.dev/exportTo: "."}
spec: {clusterIP: 10.96.2.2, selector: {app: vault}, ports: [{name: http, port: 9080, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata:
  name: audit
  namespace: billing
  annotations: {networking.trellis.dev/exportTo: "~"}
spec: {clusterIP: 10.96.2.3, selector: {app: audit}, ports: [{name: tcp-log, port: 5140, targetPort: 5140}]}
"#;

/// The gateway's Gateway, and a VirtualService through it to ledger and vault.
const ROUTING: &str = r#"
apiVersion: networking.trellis.dev/v1alpha1
kind: Gateway
metadata: {name: edge, namespace: trellis-system}
spec:
  selector: {app: edge}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*/books.example.com"]
---
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: books, namespace: billing}
spec:
  hosts: [books.example.com]
  gateways: [trellis-system/edge]
  http:
  - match: [{uri: {prefix: /ledger}}]
    route: [{destination: {host: ledger}}]
  - route: [{destination: {host: vault}}]
"#;

fn compiled(ns: &str, pod: &str, role: Role) -> Compiled {
    let c = workloads::compiled(&snapshot(&[&mesh()]), ns, pod, role);
    c.config.validate().expect("the proxy accepts it");
    c
}

fn set(hosts: &[&str]) -> BTreeSet<String> {
    hosts.iter().map(|h| format!("{h}.svc.cluster.local")).collect()
}

#[test]
fn each_namespace_sees_the_services_exported_to_it() {
    for (ns, pod, expected) in [
        ("shop", "web-1", set(&["web.shop", "ledger.billing"])),
        (
            "billing",
            "ledger-1",
            set(&["web.shop", "ledger.billing", "vault.billing"]),
        ),
        ("guest", "guest-1", set(&["web.shop"])),
    ] {
        let c = compiled(ns, pod, Role::Sidecar);
        let (routed, clusters, dns) = reach(&c.config);
        assert_eq!(routed, expected, "{ns}: routes");
        assert_eq!(clusters, expected, "{ns}: clusters");
        assert_eq!(dns, expected, "{ns}: DNS");
    }
}

#[test]
fn a_gateway_in_another_namespace_reaches_only_what_is_exported_to_it_and_says_so() {
    let c = compiled("trellis-system", "edge-1", Role::Gateway);
    let hidden: Vec<_> = c
        .diagnostics
        .iter()
        .filter(|d| d.code == Code::ReferencedResourceNotFound)
        .collect();
    assert_eq!(hidden.len(), 2, "{:#?}", c.diagnostics);
    for (d, host) in hidden.iter().zip(["ledger", "vault"]) {
        assert!(
            d.message
                .contains(&format!("destination host {host}.billing.svc.cluster.local"))
                && d.message.contains("not exported to namespace trellis-system")
                && d.message.contains("networking.trellis.dev/exportTo")
                && d.message.contains("add trellis-system to the annotation"),
            "{d:#?}"
        );
    }
    // The routes stay (a request gets 503, as in Istio), but their clusters have no endpoints.
    for cluster in c.config.clusters.iter().filter(|c| c.name.contains(".billing.")) {
        assert!(cluster.endpoints.is_empty(), "{cluster:#?}");
    }
    assert!(
        c.config.clusters.iter().any(|c| c.name.contains("vault.billing")),
        "{:#?}",
        c.config.clusters
    );
}

#[test]
fn without_the_annotation_or_with_star_every_namespace_sees_the_service() {
    let open = mesh().replace(
        "networking.trellis.dev/exportTo: \".\"}",
        "networking.trellis.dev/exportTo: \"*\"}",
    );
    let snap = snapshot(&[&open]);
    let c = workloads::compiled(&snap, "guest", "guest-1", Role::Sidecar);
    let (routed, _, _) = reach(&c.config);
    assert!(routed.contains("vault.billing.svc.cluster.local"), "{routed:?}");
    let gw = workloads::compiled(&snap, "trellis-system", "edge-1", Role::Gateway);
    let vault = gw
        .config
        .clusters
        .iter()
        .find(|c| c.name.contains("vault.billing"))
        .expect("vault cluster");
    assert_eq!(vault.endpoints.len(), 1, "{vault:#?}");
}

/// Services annotated for Istio keep their visibility: `networking.istio.io/exportTo` alone is
/// read as Trellis' annotation is, and the diagnostics name the annotation the user wrote.
#[test]
fn istios_annotation_alone_is_honoured_and_named() {
    let istio = mesh().replace("networking.trellis.dev/exportTo", "networking.istio.io/exportTo");
    let snap = snapshot(&[&istio]);
    for (ns, pod, expected) in [
        ("shop", "web-1", set(&["web.shop", "ledger.billing"])),
        ("guest", "guest-1", set(&["web.shop"])),
    ] {
        let c = workloads::compiled(&snap, ns, pod, Role::Sidecar);
        assert_eq!(reach(&c.config).0, expected, "{ns}: routes");
    }
    let gw = workloads::compiled(&snap, "trellis-system", "edge-1", Role::Gateway);
    let hidden: Vec<_> = gw
        .diagnostics
        .iter()
        .filter(|d| d.code == Code::ReferencedResourceNotFound)
        .collect();
    assert_eq!(hidden.len(), 2, "{:#?}", gw.diagnostics);
    assert!(
        hidden
            .iter()
            .all(|d| d.message.contains("its networking.istio.io/exportTo annotation")),
        "{hidden:#?}"
    );
}

/// With both annotations, Trellis' wins (the Istio one is reported by `meshctl analyze`, see
/// tests/analysis/IST0125-istio-export-to.yaml).
#[test]
fn trellis_annotation_wins_over_istios() {
    let mesh = mesh();
    let both = mesh.replace(
        "annotations: {networking.trellis.dev/exportTo: \".\"}",
        "annotations: {networking.trellis.dev/exportTo: \".\", networking.istio.io/exportTo: \"*\"}",
    );
    assert_ne!(both, mesh, "the fixture has vault's annotation");
    let snap = snapshot(&[&both]);
    let c = workloads::compiled(&snap, "guest", "guest-1", Role::Sidecar);
    assert_eq!(reach(&c.config).0, set(&["web.shop"]));
}
