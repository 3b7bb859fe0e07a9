//! Gateway servers the compiler turns into a gateway proxy's listeners beyond HTTP(S):
//! PASSTHROUGH by the SNI of bound `tls` rules (sharing a port with a terminated host),
//! AUTO_PASSTHROUGH to every covered Service and subset, TCP servers and terminated TLS
//! servers with their `tcp` rules, ISTIO_MUTUAL and OPTIONAL_MUTUAL — with provenance, and
//! nothing dropped: the fixture is valid, compiles without a diagnostic, and the proxy's
//! contract accepts the result.

use trellis_api::document::parse_documents;
use trellis_api::validation::{Outcome, Validator};
use trellis_contract::{
    Listener, ListenerProtocol, PemSource, ProxyConfig, RouteAction, ServerTlsMode, TcpRoute, TlsVersion, UpstreamTls,
};
use trellis_core::compile::{Compiled, Role, compile, diagnose};
use trellis_core::registry::ObjectKey;
use trellis_core::snapshot::Snapshot;

const FIXTURE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {trellis.dev/inject: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: db}
  ports: [{name: tcp-postgres, port: 5432, targetPort: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web, version: v1}}
spec:
  serviceAccountName: web
  containers: [{name: app, image: web}, {name: trellis-proxy, image: trellis-proxy}]
status: {podIP: 10.244.1.1, phase: Running, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: shop, labels: {app: db}}
spec:
  serviceAccountName: db
  containers: [{name: app, image: db}, {name: trellis-proxy, image: trellis-proxy}]
status: {podIP: 10.244.1.2, phase: Running, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: edge-1, namespace: trellis-system, labels: {app: edge}}
spec:
  serviceAccountName: edge
  containers: [{name: trellis-proxy, image: trellis-proxy}]
status: {podIP: 10.244.0.9, phase: Running, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Secret
metadata: {name: shop-cert, namespace: trellis-system}
type: kubernetes.io/tls
stringData:
  tls.crt: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
  tls.key: "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"
  ca.crt: "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n"
  ca.crl: "-----BEGIN X509 CRL-----\nMIID\n-----END X509 CRL-----\n"
---
apiVersion: networking.trellis.dev/v1alpha1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.trellis.dev/v1alpha1
kind: Gateway
metadata: {name: edge, namespace: trellis-system}
spec:
  selector: {app: edge}
  servers:
  - port: {number: 443, name: tls-passthrough, protocol: TLS}
    hosts: ["shop/db.example.com", "*/*.example.org"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["shop/shop.example.com"]
    tls: {mode: SIMPLE, credentialName: shop-cert}
  - port: {number: 5432, name: tcp, protocol: TCP}
    hosts: ["*"]
  - port: {number: 9443, name: tls-mesh, protocol: TLS}
    hosts: ["*"]
    tls: {mode: ISTIO_MUTUAL, subjectAltNames: ["spiffe://cluster.local/ns/shop/sa/web"], minProtocolVersion: TLSV1_3}
  - port: {number: 8443, name: https-optional, protocol: HTTPS}
    hosts: ["shop/shop.example.com"]
    tls:
      mode: OPTIONAL_MUTUAL
      credentialName: shop-cert
      subjectAltNames: [partner.example.com]
      minProtocolVersion: TLS_AUTO
      maxProtocolVersion: TLSV1_2
      cipherSuites: [ECDHE-RSA-AES256-GCM-SHA384, ECDHE-ECDSA-AES128-GCM-SHA256]
  - port: {number: 15443, name: tls-eastwest, protocol: TLS}
    hosts: ["*.local"]
    tls: {mode: AUTO_PASSTHROUGH}
---
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: passthrough, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  hosts: [db.example.com, api.example.org, other.example.net]
  gateways: [trellis-system/edge]
  tls:
  - match: [{sniHosts: [db.example.com, other.example.net], port: 443}]
    route: [{destination: {host: db, port: {number: 5432}}}]
  - match: [{sniHosts: [api.example.org]}]
    route:
    - {destination: {host: web, subset: v1}, weight: 80}
    - {destination: {host: web}, weight: 20}
  tcp:
  - match: [{port: 443}]
    route: [{destination: {host: web, port: {number: 8080}}}]
---
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: tcp, namespace: shop, creationTimestamp: "2026-01-02T00:00:00Z"}
spec:
  hosts: ["*"]
  gateways: [trellis-system/edge]
  tcp:
  - match: [{port: 5432}]
    route: [{destination: {host: db}}]
  - match: [{port: 9443, sourceLabels: {app: other}}]
    route: [{destination: {host: db}}]
  - match: [{port: 9443, destinationSubnets: [10.244.0.0/24]}]
    route: [{destination: {host: web}}]
---
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: shop, namespace: shop, creationTimestamp: "2026-01-03T00:00:00Z"}
spec:
  hosts: [shop.example.com]
  gateways: [trellis-system/edge]
  http:
  - route: [{destination: {host: web}}]
"#;

fn compiled(yaml: &str) -> Compiled {
    let snap = Snapshot::from_yaml(yaml).expect("fixture parses");
    compile(&snap, &ObjectKey::new("trellis-system", "edge-1"), Role::Gateway, "v1").expect("compiles")
}

fn listener(c: &ProxyConfig, port: u16) -> &Listener {
    c.listeners
        .iter()
        .find(|l| l.name == format!("gateway-{port}"))
        .unwrap_or_else(|| panic!("no listener for port {port}: {:#?}", c.listeners))
}

fn route_summary(r: &TcpRoute) -> (Vec<&str>, bool, Vec<(&str, u32)>, String) {
    (
        r.sni_hosts.iter().map(String::as_str).collect(),
        r.passthrough,
        r.destinations(),
        r.provenance.as_ref().expect("provenance").describe(),
    )
}

#[test]
fn the_fixture_is_valid_and_compiles_without_a_diagnostic() {
    let validator = Validator::new();
    for d in parse_documents(FIXTURE) {
        let v = d.content.unwrap();
        if let Outcome::Validated { findings, .. } = validator.validate(&v) {
            assert!(findings.is_empty(), "{findings:#?}");
        }
    }
    let c = compiled(FIXTURE);
    assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
    let d = diagnose(&Snapshot::from_yaml(FIXTURE).unwrap());
    assert!(d.is_empty(), "{d:#?}");
    c.config.validate().expect("the proxy accepts it");
}

#[test]
fn passthrough_routes_by_the_sni_the_server_accepts_beside_a_terminated_host() {
    let c = compiled(FIXTURE);
    let l = listener(&c.config, 443);
    assert_eq!(
        l.protocol,
        ListenerProtocol::Auto,
        "HTTPS and passthrough TLS share the port"
    );
    assert_eq!(l.tls.as_ref().map(|t| t.mode), Some(ServerTlsMode::Simple));
    assert_eq!(l.virtual_hosts[0].name, "shop.example.com:443");
    let routes: Vec<_> = l.tcp_routes.iter().map(route_summary).collect();
    assert_eq!(
        routes,
        [
            // other.example.net is not a host of the server: not passed through.
            (
                vec!["db.example.com"],
                true,
                vec![("outbound|5432||db.shop.svc.cluster.local", 100)],
                "VirtualService shop/passthrough tls[0]".to_string()
            ),
            (
                vec!["api.example.org"],
                true,
                vec![
                    ("outbound|8080|v1|web.shop.svc.cluster.local", 80),
                    ("outbound|8080||web.shop.svc.cluster.local", 20)
                ],
                "VirtualService shop/passthrough tls[1]".to_string()
            ),
            // The tcp rule takes the server's other names.
            (
                vec!["db.example.com", "*.example.org"],
                true,
                vec![("outbound|8080||web.shop.svc.cluster.local", 100)],
                "VirtualService shop/passthrough tcp[0]".to_string()
            ),
        ]
    );
}

#[test]
fn tcp_and_terminated_tls_servers_take_their_first_applying_tcp_rule() {
    let c = compiled(FIXTURE);
    let tcp = listener(&c.config, 5432);
    assert_eq!((tcp.protocol, tcp.tls.is_none()), (ListenerProtocol::Tcp, true));
    assert_eq!(
        tcp.tcp_routes.iter().map(route_summary).collect::<Vec<_>>(),
        [(
            vec![],
            false,
            vec![("outbound|5432||db.shop.svc.cluster.local", 100)],
            "VirtualService shop/tcp tcp[0]".to_string()
        )]
    );
    // ISTIO_MUTUAL: the workload certificate, no file or Secret; the rule for another
    // source's labels is skipped, the gateway pod's address is in the last rule's subnet.
    let mesh = listener(&c.config, 9443);
    let tls = mesh.tls.as_ref().unwrap();
    assert_eq!(
        (tls.mode, &tls.certificate, &tls.client_ca),
        (ServerTlsMode::IstioMutual, &None, &None)
    );
    assert!(tls.alpn.is_empty(), "a TLS server negotiates no HTTP");
    assert_eq!(tls.client_subject_alt_names, ["spiffe://cluster.local/ns/shop/sa/web"]);
    assert_eq!((tls.min_version, tls.max_version), (Some(TlsVersion::Tls13), None));
    assert_eq!(
        mesh.tcp_routes.iter().map(route_summary).collect::<Vec<_>>(),
        [(
            vec![],
            false,
            vec![("outbound|8080||web.shop.svc.cluster.local", 100)],
            "VirtualService shop/tcp tcp[2]".to_string()
        )]
    );
    // OPTIONAL_MUTUAL verifies presented certificates against the Secret's ca.crt.
    let optional = listener(&c.config, 8443).tls.as_ref().unwrap();
    assert_eq!(optional.mode, ServerTlsMode::OptionalMutual);
    assert!(matches!(&optional.client_ca, Some(PemSource::Inline(ca)) if ca.contains("MIIC")));
    // ... and revocations against its ca.crl.
    assert!(matches!(&optional.client_crl, Some(PemSource::Inline(crl)) if crl.contains("MIID")));
    // The handshake's bounds: client names, a TLS 1.2 ceiling (TLS_AUTO: the default
    // floor), the TLS 1.2 suites in their order.
    assert_eq!(optional.client_subject_alt_names, ["partner.example.com"]);
    assert_eq!(
        (optional.min_version, optional.max_version),
        (None, Some(TlsVersion::Tls12))
    );
    assert_eq!(
        optional.cipher_suites,
        ["ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256"]
    );
}

#[test]
fn auto_passthrough_reaches_every_covered_service_and_subset_as_is() {
    let c = compiled(FIXTURE);
    let l = listener(&c.config, 15443);
    let names: Vec<&str> = l.tcp_routes.iter().map(|r| r.sni_hosts[0].as_str()).collect();
    assert_eq!(
        names,
        [
            "outbound_.5432_._.db.shop.svc.cluster.local",
            "outbound_.8080_._.web.shop.svc.cluster.local",
            "outbound_.8080_.v1_.web.shop.svc.cluster.local",
        ]
    );
    for r in &l.tcp_routes {
        assert_eq!(r.cluster, r.sni_hosts[0]);
        let cluster = c.config.cluster(&r.cluster).unwrap();
        assert_eq!(cluster.tls, UpstreamTls::Disable, "the client's mTLS passes through");
        assert_eq!(cluster.endpoints.len(), 1, "{cluster:?}");
    }
    let v1 = c
        .config
        .cluster("outbound_.8080_.v1_.web.shop.svc.cluster.local")
        .unwrap();
    assert_eq!(v1.endpoints[0].address, "10.244.1.1");
    // The mesh cluster of the same destination keeps its mTLS.
    assert!(matches!(
        c.config
            .cluster("outbound|8080||web.shop.svc.cluster.local")
            .unwrap()
            .tls,
        UpstreamTls::Mesh { .. }
    ));
}

#[test]
fn an_unset_mode_is_istios_passthrough_without_a_certificate() {
    let yaml = FIXTURE.replace("    tls: {mode: PASSTHROUGH}\n", "    tls: {}\n");
    let c = compiled(&yaml);
    assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
    assert_eq!(listener(&c.config, 443).tcp_routes.len(), 3);
}

#[test]
fn https_redirect_redirects_every_plaintext_http_protocol_as_istio_does() {
    for proto in ["HTTP", "HTTP2", "GRPC", "GRPC-WEB"] {
        let yaml = FIXTURE.replace(
            "  servers:\n",
            &format!("  servers:\n  - port: {{number: 8080, name: plain, protocol: {proto}}}\n    hosts: [\"shop/shop.example.com\"]\n    tls: {{httpsRedirect: true}}\n"),
        );
        let validator = Validator::new();
        for d in parse_documents(&yaml) {
            if let Outcome::Validated { findings, .. } = validator.validate(&d.content.unwrap()) {
                assert!(findings.is_empty(), "{proto}: {findings:#?}");
            }
        }
        let c = compiled(&yaml);
        assert!(c.diagnostics.is_empty(), "{proto}: {:#?}", c.diagnostics);
        let l = listener(&c.config, 8080);
        assert_eq!(l.protocol, ListenerProtocol::Http, "{proto}");
        let vhost = l
            .virtual_hosts
            .iter()
            .find(|v| v.domains == ["shop.example.com"])
            .unwrap_or_else(|| panic!("{proto}: {l:#?}"));
        assert_eq!(vhost.routes.len(), 1, "{proto}: {vhost:#?}");
        let RouteAction::Redirect(r) = &vhost.routes[0].action else {
            panic!("{proto}: not redirected: {vhost:#?}");
        };
        assert_eq!(
            (r.scheme.as_deref(), r.response_code),
            (Some("https"), Some(301)),
            "{proto}"
        );
    }
}
