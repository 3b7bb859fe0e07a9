//! Sidecar scoping (Istio's `Sidecar`): a proxy's outbound listener, clusters and DNS table hold
//! only the hosts its Sidecar imports; which Sidecar applies (workload-selected, then the
//! namespace's, then the root namespace's); `outboundTrafficPolicy` over the Mesh's; egress
//! ports with their protocol; and a mesh without Sidecars compiled as before.

use std::collections::BTreeSet;

use trellis_api::mesh::{OutboundTrafficMode, OutboundTrafficPolicy};
use trellis_contract::{ListenerProtocol, ProxyConfig, Unrouted};
use trellis_core::compile::{Role, diagnose, outbound_key, source_label_keys};
use trellis_core::registry::ObjectKey;
use trellis_core::snapshot::Snapshot;

#[path = "support/reach.rs"]
mod reach;
use reach::reach;
#[path = "support/workloads.rs"]
mod workloads;
use workloads::{compiled, pod};

/// The Services of three namespaces — `shop` (web, payment), `billing` (ledger, ledger-v2),
/// `audit` (log, opaque TCP) — and of the control plane.
const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.1.1, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: payment, namespace: shop}
spec: {clusterIP: 10.96.1.2, selector: {app: payment}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ledger, namespace: billing}
spec: {clusterIP: 10.96.2.1, selector: {app: ledger}, ports: [{name: http, port: 9080, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ledger-v2, namespace: billing}
spec: {clusterIP: 10.96.2.2, selector: {app: ledger-v2}, ports: [{name: http, port: 9080, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: log, namespace: audit}
spec: {clusterIP: 10.96.3.1, selector: {app: log}, ports: [{name: tcp-log, port: 5140, targetPort: 5140}]}
---
apiVersion: v1
kind: Service
metadata: {name: istiod-like, namespace: trellis-system}
spec: {clusterIP: 10.96.0.5, selector: {app: operator}, ports: [{name: grpc, port: 15012, targetPort: 15012}]}
"#;

/// billing's VirtualService routing ledger to ledger-v2.
const LEDGER_TO_V2: &str = r#"
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: ledger, namespace: billing}
spec:
  hosts: [ledger.billing.svc.cluster.local]
  http: [{route: [{destination: {host: ledger-v2}}]}]
"#;

/// The Services, the pods `web-1`, `payment-1` (shop) and `ledger-1` (billing), the
/// VirtualService, and `extra`.
fn snapshot(extra: &str) -> Snapshot {
    workloads::snapshot(&[
        SERVICES,
        &pod("shop", "web-1", "web", "10.244.1.1"),
        &pod("shop", "payment-1", "payment", "10.244.1.2"),
        &pod("billing", "ledger-1", "ledger", "10.244.2.1"),
        LEDGER_TO_V2,
        extra,
    ])
}

fn sidecar(s: &Snapshot, ns: &str, pod: &str) -> ProxyConfig {
    compiled(s, ns, pod, Role::Sidecar).config
}

fn set(hosts: &[&str]) -> BTreeSet<String> {
    hosts.iter().map(|h| h.to_string()).collect()
}

const ROOT_DEFAULT: &str = r#"
apiVersion: networking.trellis.dev/v1alpha1
kind: Sidecar
metadata: {name: default, namespace: trellis-system}
spec:
  egress: [{hosts: ["./*", "trellis-system/*"]}]
"#;

#[test]
fn a_proxy_receives_only_the_hosts_its_sidecar_imports() {
    let s = snapshot(ROOT_DEFAULT);
    let web = sidecar(&s, "shop", "web-1");
    let (routed, clusters, dns) = reach(&web);
    let own = set(&[
        "web.shop.svc.cluster.local",
        "payment.shop.svc.cluster.local",
        "istiod-like.trellis-system.svc.cluster.local",
    ]);
    assert_eq!(routed, own);
    assert_eq!(clusters, own);
    assert_eq!(dns, own);
    // The listener names the Sidecar that scoped it.
    let outbound = web.listeners.iter().find(|l| l.name == "outbound").unwrap();
    let scope = outbound.scope.as_ref().expect("scoped");
    assert_eq!(
        (scope.kind.as_str(), scope.namespace.as_str(), scope.name.as_str()),
        ("Sidecar", "trellis-system", "default")
    );
    // `.` is the proxy's namespace for the mesh default: billing's proxy sees billing.
    let (routed, _, _) = reach(&sidecar(&s, "billing", "ledger-1"));
    assert_eq!(
        routed,
        set(&[
            "ledger.billing.svc.cluster.local",
            "ledger-v2.billing.svc.cluster.local",
            "istiod-like.trellis-system.svc.cluster.local",
        ])
    );
    // Analysis compiles every resource where it applies, whatever the Sidecars: nothing new.
    assert_eq!(diagnose(&s), diagnose(&snapshot("")));
}

#[test]
fn without_a_sidecar_that_applies_the_configuration_is_unchanged() {
    let plain = snapshot("");
    let (routed, clusters, dns) = reach(&sidecar(&plain, "shop", "web-1"));
    assert_eq!(routed.len(), 6, "{routed:?}");
    assert_eq!(clusters.len(), 6, "{clusters:?}");
    assert_eq!(dns.len(), 6, "{dns:?}");
    // A Sidecar of another namespace changes nothing for shop's proxies, byte for byte.
    let elsewhere = snapshot(
        r#"
apiVersion: networking.trellis.dev/v1alpha1
kind: Sidecar
metadata: {name: default, namespace: audit}
spec: {egress: [{hosts: ["./*"]}], outboundTrafficPolicy: {mode: REGISTRY_ONLY}}
"#,
    );
    assert_eq!(sidecar(&elsewhere, "shop", "web-1"), sidecar(&plain, "shop", "web-1"));
    let outbound = |c: &ProxyConfig| c.listeners.iter().find(|l| l.name == "outbound").cloned().unwrap();
    assert_eq!(outbound(&sidecar(&plain, "shop", "web-1")).scope, None);
}

#[test]
fn workload_selected_beats_namespace_wide_beats_the_root_default() {
    let s = snapshot(&format!(
        r#"{ROOT_DEFAULT}
---
apiVersion: networking.trellis.dev/v1alpha1
kind: Sidecar
metadata: {{name: default, namespace: shop}}
spec:
  egress: [{{hosts: ["./web.shop.svc.cluster.local"]}}]
---
apiVersion: networking.trellis.dev/v1alpha1
kind: Sidecar
metadata: {{name: payment, namespace: shop}}
spec:
  workloadSelector: {{labels: {{app: payment}}}}
  egress: [{{hosts: ["billing/*"]}}]
"#
    ));
    let (web, _, _) = reach(&sidecar(&s, "shop", "web-1"));
    assert_eq!(web, set(&["web.shop.svc.cluster.local"]));
    let (payment, _, _) = reach(&sidecar(&s, "shop", "payment-1"));
    assert_eq!(
        payment,
        set(&[
            "ledger.billing.svc.cluster.local",
            "ledger-v2.billing.svc.cluster.local"
        ])
    );
    let (ledger, _, _) = reach(&sidecar(&s, "billing", "ledger-1"));
    assert!(
        ledger.contains("istiod-like.trellis-system.svc.cluster.local"),
        "{ledger:?}"
    );
    // Proxies share their outbound part by the Sidecar that applies, too.
    let keys = source_label_keys(&s);
    let key = |ns: &str, pod: &str| outbound_key(&s, &ObjectKey::new(ns, pod), &keys).unwrap();
    assert_ne!(key("shop", "web-1"), key("shop", "payment-1"));
    assert_eq!(key("shop", "web-1").sidecar, Some(ObjectKey::new("shop", "default")));
}

#[test]
fn imported_virtual_services_bring_their_destinations_and_others_do_not_apply() {
    // shop's proxies import ledger only: the billing VirtualService for it comes along, and
    // with it ledger-v2, its destination (else the route would lead nowhere).
    let s = snapshot(
        r#"
apiVersion: networking.trellis.dev/v1alpha1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec:
  egress: [{hosts: ["billing/ledger.billing.svc.cluster.local"]}]
"#,
    );
    let web = sidecar(&s, "shop", "web-1");
    let (routed, clusters, dns) = reach(&web);
    let both = set(&[
        "ledger.billing.svc.cluster.local",
        "ledger-v2.billing.svc.cluster.local",
    ]);
    assert_eq!(routed, both);
    assert_eq!(clusters, both);
    assert_eq!(dns, both);
    let ledger = web.listeners[0]
        .virtual_hosts
        .iter()
        .find(|v| v.name.starts_with("ledger.billing"))
        .unwrap();
    assert_eq!(Some(ledger.routes[0].provenance.kind.as_str()), Some("VirtualService"));
    // A VirtualService of a namespace the Sidecar does not import from does not apply: audit's
    // override of ledger is not imported (the egress host names billing), billing's is.
    let audit_override = r#"
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: ledger-override, namespace: audit}
spec:
  hosts: [ledger.billing.svc.cluster.local]
  http: [{route: [{destination: {host: log.audit.svc.cluster.local, port: {number: 5140}}}]}]
"#;
    let first_rule = |c: &ProxyConfig| {
        let v = c.listeners[0]
            .virtual_hosts
            .iter()
            .find(|v| v.name.starts_with("ledger.billing"))
            .unwrap();
        let p = &v.routes[0].provenance;
        format!("{}/{}", p.namespace, p.name)
    };
    let unscoped = snapshot(audit_override);
    assert_eq!(
        first_rule(&sidecar(&unscoped, "shop", "web-1")),
        "audit/ledger-override"
    );
    let s = snapshot(&format!(
        r#"{audit_override}
---
apiVersion: networking.trellis.dev/v1alpha1
kind: Sidecar
metadata: {{name: default, namespace: shop}}
spec:
  egress: [{{hosts: ["billing/ledger.billing.svc.cluster.local"]}}]
"#
    ));
    let web = sidecar(&s, "shop", "web-1");
    assert_eq!(first_rule(&web), "billing/ledger");
    assert!(!reach(&web).0.contains("log.audit.svc.cluster.local"));
}

#[test]
fn outbound_traffic_policy_of_the_sidecar_overrides_the_meshs() {
    let registry_only = r#"
apiVersion: networking.trellis.dev/v1alpha1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec: {outboundTrafficPolicy: {mode: REGISTRY_ONLY}}
"#;
    let unrouted = |s: &Snapshot, ns: &str, pod: &str| {
        let c = sidecar(s, ns, pod);
        c.listeners.iter().find(|l| l.name == "outbound").unwrap().unrouted
    };
    let s = snapshot(registry_only);
    assert_eq!(unrouted(&s, "shop", "web-1"), Unrouted::BlackHole);
    assert_eq!(unrouted(&s, "billing", "ledger-1"), Unrouted::Passthrough);
    // Without egress, the Sidecar scopes nothing: every host is still routed.
    assert_eq!(reach(&sidecar(&s, "shop", "web-1")).0.len(), 6);

    // And the other way round: the Mesh refuses, the Sidecar lets through.
    let mut s = snapshot(&registry_only.replace("REGISTRY_ONLY", "ALLOW_ANY"));
    s.mesh.outbound_traffic_policy = Some(OutboundTrafficPolicy {
        mode: Some(OutboundTrafficMode::RegistryOnly),
        ..OutboundTrafficPolicy::default()
    });
    assert_eq!(unrouted(&s, "shop", "web-1"), Unrouted::Passthrough);
    assert_eq!(unrouted(&s, "billing", "ledger-1"), Unrouted::BlackHole);
}

#[test]
fn an_egress_port_takes_its_port_with_its_protocol() {
    // Port 9080 carries billing's hosts as opaque TCP; every other port, shop's.
    let s = snapshot(
        r#"
apiVersion: networking.trellis.dev/v1alpha1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec:
  egress:
  - port: {number: 9080, protocol: TCP, name: tcp-ledger}
    hosts: ["billing/ledger.billing.svc.cluster.local"]
  - hosts: ["./*", "billing/*"]
"#,
    );
    let web = sidecar(&s, "shop", "web-1");
    let outbound = &web.listeners[0];
    assert_eq!(outbound.protocol, ListenerProtocol::Auto);
    let vhosts: BTreeSet<&str> = outbound.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    // Port 9080 is the first listener's: billing's hosts are not HTTP there, whatever the
    // catch-all imports.
    assert_eq!(
        vhosts,
        BTreeSet::from(["payment.shop.svc.cluster.local:80", "web.shop.svc.cluster.local:80"])
    );
    let tcp: Vec<(Option<u16>, &str)> = outbound
        .tcp_routes
        .iter()
        .map(|r| (r.destination_port, r.cluster.as_str()))
        .collect();
    // ledger, and ledger-v2 as the destination of ledger's imported VirtualService.
    assert_eq!(
        tcp,
        [
            (Some(9080), "outbound|9080||ledger.billing.svc.cluster.local"),
            (Some(9080), "outbound|9080||ledger-v2.billing.svc.cluster.local"),
        ]
    );
}
