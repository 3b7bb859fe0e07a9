//! Istio's egress gateway pattern ("Egress TLS Origination via an egress gateway", istio.io
//! tasks/traffic-management/egress/egress-tls-origination, with `apiVersion` changed): a
//! ServiceEntry for the external host, a Gateway with an ISTIO_MUTUAL server on the egress
//! gateway, one VirtualService sending the mesh's traffic for the host to the gateway and the
//! gateway's to the host, a DestinationRule for mTLS to the gateway (subset, port-level
//! ISTIO_MUTUAL with the host as SNI) and one originating TLS at the gateway. Each proxy's
//! compiled config is checked: the sidecar's and the gateway's.

use std::borrow::Cow;

use trellis_api::document::parse_documents;
use trellis_api::validation::{Outcome, Validator};
use trellis_contract::matching::{CompiledRouteMatch, Headers, Request, first_match};
use trellis_contract::{Cluster, Discovery, ProxyConfig, RouteAction, ServerTlsMode, UpstreamTls};
use trellis_core::compile::{Compiled, Role, compile};
use trellis_core::registry::ObjectKey;
use trellis_core::snapshot::Snapshot;

const FIXTURE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {trellis.dev/inject: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: trellis-egressgateway, namespace: trellis-system}
spec:
  clusterIP: 10.96.0.50
  selector: {app: trellis-egressgateway}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: https, port: 443, targetPort: 8443}]
---
apiVersion: v1
kind: Pod
metadata: {name: egress-1, namespace: trellis-system, labels: {app: trellis-egressgateway}}
spec:
  serviceAccountName: trellis-egressgateway
  containers: [{name: trellis-proxy, image: trellis-proxy}]
status: {podIP: 10.244.0.50, phase: Running, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: sleep-1, namespace: shop, labels: {app: sleep}}
spec:
  serviceAccountName: sleep
  containers: [{name: app, image: sleep}, {name: trellis-proxy, image: trellis-proxy}]
status: {podIP: 10.244.1.7, phase: Running, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: networking.trellis.dev/v1alpha1
kind: ServiceEntry
metadata: {name: cnn, namespace: shop}
spec:
  hosts: [edition.cnn.com]
  ports:
  - {number: 80, name: http-port, protocol: HTTP}
  - {number: 443, name: https, protocol: HTTPS}
  resolution: DNS
---
apiVersion: networking.trellis.dev/v1alpha1
kind: Gateway
metadata: {name: trellis-egressgateway, namespace: shop}
spec:
  selector: {app: trellis-egressgateway}
  servers:
  - port: {number: 80, name: https-port-for-tls-origination, protocol: HTTPS}
    hosts: [edition.cnn.com]
    tls: {mode: ISTIO_MUTUAL}
---
apiVersion: networking.trellis.dev/v1alpha1
kind: DestinationRule
metadata: {name: egressgateway-for-cnn, namespace: shop}
spec:
  host: trellis-egressgateway.trellis-system.svc.cluster.local
  subsets:
  - name: cnn
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
      portLevelSettings:
      - port: {number: 80}
        tls: {mode: ISTIO_MUTUAL, sni: edition.cnn.com}
---
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: direct-cnn-through-egress-gateway, namespace: shop}
spec:
  hosts: [edition.cnn.com]
  gateways: [trellis-egressgateway, mesh]
  http:
  - match: [{gateways: [mesh], port: 80}]
    route:
    - destination: {host: trellis-egressgateway.trellis-system.svc.cluster.local, subset: cnn, port: {number: 80}}
      weight: 100
  - match: [{gateways: [trellis-egressgateway], port: 80}]
    route:
    - destination: {host: edition.cnn.com, port: {number: 443}}
      weight: 100
---
apiVersion: networking.trellis.dev/v1alpha1
kind: DestinationRule
metadata: {name: originate-tls-for-edition-cnn-com, namespace: shop}
spec:
  host: edition.cnn.com
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: SIMPLE}
"#;

fn compiled(pod: &str, namespace: &str, role: Role) -> Compiled {
    compiled_from(FIXTURE, pod, namespace, role)
}

fn compiled_from(fixture: &str, pod: &str, namespace: &str, role: Role) -> Compiled {
    let snap = Snapshot::from_yaml(fixture).expect("fixture parses");
    let c = compile(&snap, &ObjectKey::new(namespace, pod), role, "v1").expect("compiles");
    assert!(c.diagnostics.is_empty(), "{pod}: {:#?}", c.diagnostics);
    c.config.validate().expect("the proxy accepts it");
    c
}

/// The clusters the first route of the virtual host named `host` (any listener) forwards to.
fn forwarded_to<'a>(c: &'a ProxyConfig, listener_port: Option<&str>, host: &str) -> Vec<&'a Cluster> {
    let vhost = c
        .listeners
        .iter()
        .filter(|l| listener_port.is_none_or(|p| l.name.ends_with(p)))
        .flat_map(|l| &l.virtual_hosts)
        .find(|v| v.domains.iter().any(|d| d == host))
        .unwrap_or_else(|| panic!("no virtual host for {host}: {:#?}", c.listeners));
    let RouteAction::Forward(f) = &vhost.routes[0].action else {
        panic!("{host}: not forwarded: {vhost:#?}");
    };
    f.clusters
        .iter()
        .map(|w| {
            c.cluster(&w.cluster)
                .unwrap_or_else(|| panic!("no cluster {}", w.cluster))
        })
        .collect()
}

#[test]
fn the_fixture_is_valid_without_a_finding() {
    let validator = Validator::new();
    let mut found = Vec::new();
    for d in parse_documents(FIXTURE) {
        let v = d.content.unwrap();
        if let Outcome::Validated { findings, .. } = validator.validate(&v) {
            found.extend(findings);
        }
    }
    // Istio's own YAML, word for word but for `apiVersion`: the gateway's subset `cnn` names
    // no labels (it only carries the port's TLS settings), which is no mistake.
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_mesh_sends_the_external_host_to_the_egress_gateway_over_mutual_tls_naming_the_host() {
    let c = compiled("sleep-1", "shop", Role::Sidecar);
    let to = forwarded_to(&c.config, None, "edition.cnn.com:80");
    assert_eq!(to.len(), 1);
    assert_eq!(
        to[0].name,
        "outbound|80|cnn|trellis-egressgateway.trellis-system.svc.cluster.local"
    );
    match &to[0].tls {
        UpstreamTls::Mesh {
            expected_identities,
            sni,
        } => {
            assert_eq!(sni.as_deref(), Some("edition.cnn.com"));
            assert_eq!(
                expected_identities,
                &["spiffe://cluster.local/ns/trellis-system/sa/trellis-egressgateway"]
            );
        }
        other => panic!("not mesh mTLS to the gateway: {other:?}"),
    }
    assert_eq!(to[0].endpoints[0].address, "10.244.0.50");
}

#[test]
fn the_egress_gateway_takes_mutual_tls_from_the_mesh_and_originates_tls_to_the_host() {
    let c = compiled("egress-1", "trellis-system", Role::Gateway);
    let l = c
        .config
        .listeners
        .iter()
        .find(|l| l.name == "gateway-80")
        .unwrap_or_else(|| panic!("no gateway listener on 80: {:#?}", c.config.listeners));
    assert_eq!(l.tls.as_ref().map(|t| t.mode), Some(ServerTlsMode::IstioMutual));
    let to = forwarded_to(&c.config, Some("gateway-80"), "edition.cnn.com");
    assert_eq!(to.len(), 1);
    assert_eq!(to[0].name, "outbound|443||edition.cnn.com");
    assert_eq!(to[0].discovery, Discovery::Dns);
    match &to[0].tls {
        UpstreamTls::Originate(o) => assert_eq!(o.sni, "edition.cnn.com"),
        other => panic!("no TLS origination to the host: {other:?}"),
    }
}

/// No headers: the routes here match on host and port only.
struct NoHeaders;

impl Headers for NoHeaders {
    fn contains(&self, _: &str) -> bool {
        false
    }
    fn joined(&self, _: &str) -> Option<Cow<'_, str>> {
        None
    }
}

#[test]
fn with_a_target_port_the_gateway_listens_there_and_its_rule_for_port_80_still_matches() {
    // As the installed egress gateway is reached: its Service maps 80 to 8080, and the Gateway
    // server says so (`targetPort`). The VirtualService's rule still names the server's port,
    // 80; requests arrive on 8080.
    let fixture = FIXTURE.replace(
        "protocol: HTTPS}\n    hosts: [edition.cnn.com]",
        "protocol: HTTPS, targetPort: 8080}\n    hosts: [edition.cnn.com]",
    );
    assert_ne!(fixture, FIXTURE);
    let c = compiled_from(&fixture, "egress-1", "trellis-system", Role::Gateway);
    let l = c
        .config
        .listeners
        .iter()
        .find(|l| l.name == "gateway-8080")
        .unwrap_or_else(|| panic!("no gateway listener on 8080: {:#?}", c.config.listeners));
    let vhost = l
        .virtual_hosts
        .iter()
        .find(|v| v.domains.iter().any(|d| d == "edition.cnn.com"))
        .unwrap_or_else(|| panic!("{l:#?}"));
    let matches: Vec<CompiledRouteMatch> = vhost.routes[0]
        .matches
        .iter()
        .map(|m| CompiledRouteMatch::compile(m).unwrap())
        .collect();
    let request = Request {
        method: "GET",
        path: "/politics",
        query: None,
        host: "edition.cnn.com",
        port: 8080,
        headers: &NoHeaders,
    };
    let taken = first_match(&matches, &request);
    assert!(
        taken.is_ok(),
        "the request on the gateway's port 8080 is not taken by the rule for server port 80: {taken:?}"
    );
    // The sidecar's rule keeps its port: its virtual host serves port 80 of the host.
    let c = compiled("sleep-1", "shop", Role::Sidecar);
    let vhost = c
        .config
        .listeners
        .iter()
        .flat_map(|l| &l.virtual_hosts)
        .find(|v| v.domains.iter().any(|d| d == "edition.cnn.com:80"))
        .unwrap();
    assert_eq!(vhost.routes[0].matches[0].port, Some(80));
}
