//! A Service's endpoints come from its EndpointSlices, as Istio reads them: every slice of the
//! Service (several per Service), ready endpoints only (not-ready and terminating ones left
//! out, serving or not), the pod a `targetRef` names for identity and labels, plain addresses
//! for endpoints without a pod (a Service without a selector); and an ExternalName Service is
//! a DNS cluster to its name, routed by the Service's host.

use std::collections::BTreeMap;

use trellis_contract::{Cluster, Discovery, HealthStatus, ProxyConfig, UpstreamTls};
use trellis_core::compile::{Role, compile, diagnose};
use trellis_core::registry::ObjectKey;
use trellis_core::snapshot::Snapshot;

/// The client (meshed), three `web` pods (two meshed, one not), and `web` with a selector.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client-1, namespace: shop, labels: {app: client}}
spec: {serviceAccountName: client, containers: [{name: app, image: app}, {name: trellis-proxy, image: proxy}]}
status: {podIP: 10.244.0.5, phase: Running, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web, version: v1}}
spec: {serviceAccountName: web, containers: [{name: app, image: app}, {name: trellis-proxy, image: proxy}]}
status: {podIP: 10.244.1.1, phase: Running, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web, version: v2}}
spec: {serviceAccountName: web-v2, containers: [{name: app, image: app}, {name: trellis-proxy, image: proxy}]}
status: {podIP: 10.244.1.2, phase: Running, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-3, namespace: shop, labels: {app: web, version: v3}}
spec: {serviceAccountName: web, containers: [{name: app, image: app}]}
status: {podIP: 10.244.1.3, phase: Running, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}
"#;

fn slice(name: &str, service: &str, ports: &str, endpoints: &str) -> String {
    format!(
        r#"
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: shop, labels: {{kubernetes.io/service-name: {service}}}}}
addressType: IPv4
ports: {ports}
endpoints: {endpoints}
"#
    )
}

fn endpoint(ip: &str, pod: Option<&str>, conditions: &str) -> String {
    let target = pod
        .map(|p| format!(", targetRef: {{kind: Pod, namespace: shop, name: {p}}}"))
        .unwrap_or_default();
    format!("{{addresses: [{ip}], conditions: {conditions}{target}}}")
}

const READY: &str = "{ready: true, serving: true, terminating: false}";

/// The cluster with one slice of `web` (port `http` on 8080) listing `endpoints`.
fn with_web_slice(endpoints: &[String]) -> String {
    let listed = format!("[{}]", endpoints.join(", "));
    format!(
        "{CLUSTER}{}",
        slice("web-abc12", "web", "[{name: http, port: 8080}]", &listed)
    )
}

/// A Service document in `shop`.
fn service(name: &str, spec: &str) -> String {
    format!("\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {spec}\n")
}

fn client_config(yaml: &str) -> ProxyConfig {
    let snapshot = Snapshot::from_yaml(yaml).unwrap();
    compile(&snapshot, &ObjectKey::new("shop", "client-1"), Role::Sidecar, "v1")
        .unwrap()
        .config
}

fn cluster<'a>(config: &'a ProxyConfig, name: &str) -> &'a Cluster {
    config.cluster(name).unwrap_or_else(|| panic!("no cluster {name}"))
}

fn addresses(c: &Cluster) -> Vec<(String, u16)> {
    c.endpoints.iter().map(|e| (e.address.clone(), e.port)).collect()
}

/// Every slice of the Service counts, and only what the slices list: web-3 matches the
/// selector but no slice names it (the controller has not added it yet).
#[test]
fn the_endpoints_are_every_slice_of_the_service_and_only_theirs() {
    let yaml = format!(
        "{CLUSTER}{}{}",
        slice(
            "web-abc12",
            "web",
            "[{name: http, port: 8080}]",
            &format!("[{}]", endpoint("10.244.1.1", Some("web-1"), READY))
        ),
        slice(
            "web-def34",
            "web",
            "[{name: http, port: 8080}]",
            &format!("[{}]", endpoint("10.244.1.2", Some("web-2"), READY))
        ),
    );
    let config = client_config(&yaml);
    let web = cluster(&config, "outbound|80||web.shop.svc.cluster.local");
    assert_eq!(
        addresses(web),
        [("10.244.1.1".to_string(), 8080), ("10.244.1.2".to_string(), 8080)]
    );
    // Identity and labels from the pods the slices name: both meshed, so mutual TLS.
    assert_eq!(
        web.tls,
        UpstreamTls::Mesh {
            expected_identities: vec![
                "spiffe://cluster.local/ns/shop/sa/web".into(),
                "spiffe://cluster.local/ns/shop/sa/web-v2".into()
            ],
            sni: None
        }
    );
    assert_eq!(web.endpoints[1].labels.get("version").map(String::as_str), Some("v2"));
    assert!(web.endpoints.iter().all(|e| e.health == HealthStatus::Healthy));
}

/// Ready (or no conditions at all) is in; not ready is out; terminating is out, serving or
/// not, as Istio sends neither to proxies. A pod that is only shutting down does not make the
/// Service plaintext; a not-ready one without a proxy does (it may be ready before the next
/// push).
#[test]
fn not_ready_and_terminating_endpoints_are_left_out() {
    let endpoints = [
        endpoint("10.244.1.1", Some("web-1"), READY),
        endpoint(
            "10.244.1.2",
            Some("web-2"),
            "{ready: false, serving: false, terminating: false}",
        ),
        endpoint(
            "10.244.1.3",
            Some("web-3"),
            "{ready: false, serving: true, terminating: true}",
        ),
        endpoint("10.244.1.1", None, "{}").replace("10.244.1.1", "10.244.1.4"),
    ];
    let yaml = with_web_slice(&endpoints);
    let config = client_config(&yaml);
    let web = cluster(&config, "outbound|80||web.shop.svc.cluster.local");
    assert_eq!(
        addresses(web),
        [("10.244.1.1".to_string(), 8080), ("10.244.1.4".to_string(), 8080)]
    );
    // 10.244.1.4 has no pod: a plain address, so the cluster is plaintext.
    assert_eq!(web.tls, UpstreamTls::Disable);

    // Without the pod-less endpoint: web-3 (no proxy) is terminating, so it does not count.
    let yaml = with_web_slice(&endpoints[..3]);
    let web = cluster(&client_config(&yaml), "outbound|80||web.shop.svc.cluster.local").clone();
    assert!(matches!(web.tls, UpstreamTls::Mesh { .. }), "{:?}", web.tls);
    assert_eq!(addresses(&web), [("10.244.1.1".to_string(), 8080)]);

    // A not-ready pod without a proxy does count.
    let not_ready_plain = endpoint(
        "10.244.1.3",
        Some("web-3"),
        "{ready: false, serving: false, terminating: false}",
    );
    let yaml = with_web_slice(&[endpoints[0].clone(), not_ready_plain]);
    let web = cluster(&client_config(&yaml), "outbound|80||web.shop.svc.cluster.local").clone();
    assert_eq!(web.tls, UpstreamTls::Disable);
    assert_eq!(addresses(&web), [("10.244.1.1".to_string(), 8080)]);
}

/// A Service without a selector is served by the slices made for it by hand: plain addresses,
/// on the slice's port of the Service port's name, with the namespace as their only label.
/// An endpoint naming a pod the registry does not hold is left out until it does.
#[test]
fn a_selectorless_service_is_served_by_hand_made_slices() {
    let yaml = format!(
        "{CLUSTER}{}{}{}",
        service(
            "legacy",
            "{clusterIP: 10.96.0.30, ports: [{name: http, port: 80}, {name: tcp-admin, port: 9000}]}"
        ),
        slice(
            "legacy-1",
            "legacy",
            "[{name: http, port: 8080}, {name: tcp-admin, port: 9900}]",
            &format!(
                "[{}, {}]",
                endpoint("192.0.2.10", None, READY),
                endpoint("10.244.9.9", Some("gone-1"), READY)
            )
        ),
        slice(
            "legacy-2",
            "legacy",
            "[{name: http, port: 8081}]",
            &format!("[{}]", endpoint("192.0.2.11", None, "{ready: true}"))
        ),
    );
    let snapshot = Snapshot::from_yaml(&yaml).unwrap();
    let config = client_config(&yaml);
    let http = cluster(&config, "outbound|80||legacy.shop.svc.cluster.local");
    assert_eq!(
        addresses(http),
        [("192.0.2.10".to_string(), 8080), ("192.0.2.11".to_string(), 8081)]
    );
    assert_eq!(http.tls, UpstreamTls::Disable);
    assert_eq!(http.discovery, Discovery::Static);
    assert_eq!(
        http.endpoints[0].labels,
        BTreeMap::from([("namespace".to_string(), "shop".to_string())])
    );
    assert_eq!(http.endpoints[0].identity, None);
    // legacy-2 has no tcp-admin port: only legacy-1 serves it.
    let admin = cluster(&config, "outbound|9000||legacy.shop.svc.cluster.local");
    assert_eq!(addresses(admin), [("192.0.2.10".to_string(), 9900)]);
    assert!(
        diagnose(&snapshot).is_empty(),
        "nothing to report: {:?}",
        diagnose(&snapshot)
    );
}

/// A snapshot without a slice for a Service with a selector (YAML written by hand) is served by
/// the ready pods the selector picks, on the target port (named ports resolved per pod), as the
/// EndpointSlice controller would list them.
#[test]
fn without_slices_the_selector_picks_the_ready_pods() {
    let pods_with_ports = CLUSTER.replace(
        "containers: [{name: app, image: app}, {name: trellis-proxy, image: proxy}]}\nstatus: {podIP: 10.244.1.1",
        "containers: [{name: app, image: app, ports: [{name: http, containerPort: 8080}]}, {name: trellis-proxy, image: proxy}]}\nstatus: {podIP: 10.244.1.1",
    );
    let pods_with_ports = pods_with_ports.replace(
        "containers: [{name: app, image: app}, {name: trellis-proxy, image: proxy}]}\nstatus: {podIP: 10.244.1.2",
        "containers: [{name: app, image: app, ports: [{name: http, containerPort: 8080}]}, {name: trellis-proxy, image: proxy}]}\nstatus: {podIP: 10.244.1.2",
    );
    let not_ready = pods_with_ports.replace(
        "status: {podIP: 10.244.1.2, phase: Running, conditions: [{type: Ready, status: \"True\"}]}",
        "status: {podIP: 10.244.1.2, phase: Running, conditions: [{type: Ready, status: \"False\"}]}",
    );
    let web = cluster(&client_config(&not_ready), "outbound|80||web.shop.svc.cluster.local").clone();
    // web-2 is not ready (it used to be sent as an unhealthy endpoint); web-3 has no port
    // named http.
    assert_eq!(addresses(&web), [("10.244.1.1".to_string(), 8080)]);
}

/// An ExternalName Service: a DNS cluster to its name on the Service's port, outside the mesh
/// (no mutual TLS), routed by the Service's host names; no DNS answer of its own (the cluster
/// DNS answers it with a CNAME).
#[test]
fn an_external_name_service_is_a_dns_cluster_to_its_name() {
    let yaml = format!(
        "{CLUSTER}{}",
        service(
            "payments",
            "{type: ExternalName, externalName: api.payments.example., ports: [{name: http, port: 8443, targetPort: 9999}]}"
        )
    );
    let snapshot = Snapshot::from_yaml(&yaml).unwrap();
    let config = client_config(&yaml);
    let c = cluster(&config, "outbound|8443||payments.shop.svc.cluster.local");
    assert_eq!(c.discovery, Discovery::Dns);
    assert_eq!(addresses(c), [("api.payments.example".to_string(), 8443)]);
    assert_eq!(c.tls, UpstreamTls::Disable);
    let vhost = config.listeners[0]
        .virtual_hosts
        .iter()
        .find(|v| v.name == "payments.shop.svc.cluster.local:8443")
        .expect("a virtual host for the ExternalName Service");
    assert!(
        vhost.domains.contains(&"payments:8443".to_string()),
        "{:?}",
        vhost.domains
    );
    assert_eq!(vhost.routes[0].provenance.kind, "Service");
    assert!(!config.dns.entries.iter().any(|e| e.hostname.starts_with("payments.")));
    assert!(diagnose(&snapshot).is_empty(), "{:?}", diagnose(&snapshot));
}
