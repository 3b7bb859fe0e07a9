//! The compiler from YAML fixtures: golden proxy configs (regenerate with `TRELLIS_BLESS=1`)
//! and targeted checks of merging, conflicts, exportTo, subsets, mTLS precedence,
//! authorization and provenance.

use std::path::PathBuf;

use trellis_contract::{
    AuthzAction, CertificateRef, HashKey, HealthStatus, LbPolicy, ListenerDirection, MtlsMode, OriginateTls, PemSource,
    ProxyConfig, RetryOn, RouteAction, StringMatch, TcpWeightedCluster, UpstreamTls,
};
use trellis_operator::compile::{Compiled, Role, Severity, compile};
use trellis_operator::registry::ObjectKey;
use trellis_operator::snapshot::{FetchedJwks, Snapshot};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn shop() -> String {
    std::fs::read_to_string(fixtures().join("shop.yaml")).unwrap()
}

fn compiled(yaml: &str, ns: &str, pod: &str, role: Role) -> Compiled {
    let snap = Snapshot::from_yaml(yaml).expect("fixture parses");
    compile(&snap, &ObjectKey::new(ns, pod), role, "v1").expect("compiles")
}

fn web(yaml: &str) -> Compiled {
    compiled(yaml, "shop", "web-5d8f-abcde", Role::Sidecar)
}

fn vhost<'a>(c: &'a ProxyConfig, listener: &str, name: &str) -> &'a trellis_contract::VirtualHost {
    let l = c
        .listeners
        .iter()
        .find(|l| l.name == listener)
        .unwrap_or_else(|| panic!("no listener {listener}"));
    l.virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no vhost {name} in {listener}"))
}

/// Whether the golden files are rewritten, from `TRELLIS_BLESS`: only `1` blesses; unset, empty or
/// `0` checks them; anything else is a mistake worth stopping for (`true` would otherwise
/// silently check, and `no` silently bless).
fn bless(value: Option<&str>) -> Result<bool, String> {
    match value {
        Some("1") => Ok(true),
        None | Some("" | "0") => Ok(false),
        Some(other) => Err(format!(
            "TRELLIS_BLESS={other:?}: set TRELLIS_BLESS=1 to regenerate the golden files, or unset it to check them"
        )),
    }
}

#[test]
fn only_trellis_bless_1_blesses() {
    assert_eq!(bless(None), Ok(false));
    assert_eq!(bless(Some("")), Ok(false));
    assert_eq!(bless(Some("0")), Ok(false));
    assert_eq!(bless(Some("1")), Ok(true));
    for other in ["true", "yes", "2", "false"] {
        let e = bless(Some(other)).unwrap_err();
        assert!(e.contains("TRELLIS_BLESS=1"), "{e}");
    }
}

#[test]
fn golden_configs() {
    let bless = bless(std::env::var("TRELLIS_BLESS").ok().as_deref()).unwrap_or_else(|e| panic!("{e}"));
    let yaml = shop();
    for (ns, pod, role, file) in [
        ("shop", "web-5d8f-abcde", Role::Sidecar, "shop.web.json"),
        ("shop", "db-0", Role::Sidecar, "shop.db.json"),
        ("trellis-system", "ingress-1", Role::Gateway, "shop.ingress.json"),
    ] {
        let c = compiled(&yaml, ns, pod, role);
        c.config
            .validate()
            .unwrap_or_else(|e| panic!("{pod}: the proxy would reject this config: {e}"));
        let diagnostics: Vec<String> = c.diagnostics.iter().map(ToString::to_string).collect();
        let actual = format!(
            "{}\n",
            serde_json::to_string_pretty(&serde_json::json!({"diagnostics": diagnostics, "config": c.config})).unwrap()
        );
        let path = fixtures().join(file);
        if bless {
            std::fs::write(&path, &actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            actual == expected,
            "{file} differs from the compiler's output; inspect and regenerate with TRELLIS_BLESS=1 cargo test -p trellis-operator\n{}",
            first_difference(&expected, &actual)
        );
    }
}

fn first_difference(a: &str, b: &str) -> String {
    for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            return format!("line {}:\n  expected: {x}\n  actual:   {y}", i + 1);
        }
    }
    format!("lengths differ: {} vs {} lines", a.lines().count(), b.lines().count())
}

#[test]
fn compilation_is_deterministic() {
    let yaml = shop();
    let a = web(&yaml).config.to_json();
    let b = web(&yaml).config.to_json();
    assert_eq!(a, b);
    // Reordering the input documents does not change the output.
    let mut docs: Vec<&str> = yaml.split("\n---\n").collect();
    docs.reverse();
    let reversed = docs.join("\n---\n");
    assert_eq!(web(&reversed).config.to_json(), a);
}

#[test]
fn virtual_services_merge_in_order_with_provenance_and_conflicts_are_reported() {
    let c = web(&shop());
    let vh = vhost(&c.config, "outbound", "payment.shop.svc.cluster.local:80");
    let names: Vec<_> = vh
        .routes
        .iter()
        .map(|r| r.name.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(names, ["canary", "split"]);
    assert_eq!(vh.routes[0].provenance.name, "payment");
    assert_eq!(vh.routes[1].provenance.rule_index, Some(1));
    assert!(vh.domains.contains(&"payment:80".to_string()));
    assert!(vh.domains.contains(&"10.96.0.11:80".to_string()));
    let shadowed = c
        .diagnostics
        .iter()
        .find(|d| d.resource == "VirtualService shop/payment-extra")
        .expect("the shadowed VirtualService is reported");
    assert_eq!(shadowed.severity, Severity::Warning);
    assert!(
        shadowed
            .message
            .contains("VirtualService shop/payment has a catch-all rule"),
        "{}",
        shadowed.message
    );
}

#[test]
fn weighted_split_retries_and_timeouts() {
    let c = web(&shop());
    let vh = vhost(&c.config, "outbound", "payment.shop.svc.cluster.local:80");
    let RouteAction::Forward(f) = &vh.routes[1].action else {
        panic!("forward")
    };
    let w: Vec<(&str, u32)> = f.clusters.iter().map(|c| (c.cluster.as_str(), c.weight)).collect();
    assert_eq!(
        w,
        [
            ("outbound|80|v1|payment.shop.svc.cluster.local", 90),
            ("outbound|80|v2|payment.shop.svc.cluster.local", 10)
        ]
    );
    assert_eq!(f.timeout_ms, Some(2000));
    let r = f.retries.as_ref().unwrap();
    assert_eq!(r.attempts, 3);
    assert_eq!(r.per_try_timeout_ms, Some(500));
    assert_eq!(
        r.retry_on,
        [RetryOn::FiveXx, RetryOn::ConnectFailure, RetryOn::RetriableStatusCodes]
    );
    assert_eq!(r.retriable_status_codes, [503]);
    // A header match reaches v2.
    let RouteAction::Forward(canary) = &vh.routes[0].action else {
        panic!("forward")
    };
    assert_eq!(
        canary.clusters[0].cluster,
        "outbound|80|v2|payment.shop.svc.cluster.local"
    );
    assert_eq!(vh.routes[0].matches[0].headers[0].name, "x-canary");
}

#[test]
fn subsets_resolve_to_endpoint_sets_with_their_own_policy() {
    let c = web(&shop());
    let v1 = c
        .config
        .cluster("outbound|80|v1|payment.shop.svc.cluster.local")
        .unwrap();
    let eps: Vec<(String, u16)> = v1.endpoints.iter().map(|e| (e.address.clone(), e.port)).collect();
    assert_eq!(
        eps,
        [("10.244.0.21".to_string(), 9090)],
        "named target port 'api' resolves per pod"
    );
    assert_eq!(v1.load_balancer.policy, LbPolicy::RoundRobin);
    assert_eq!(v1.outlier_detection.as_ref().unwrap().consecutive_5xx, 3);
    assert_eq!(
        v1.tls,
        UpstreamTls::Mesh {
            expected_identities: vec!["spiffe://cluster.local/ns/shop/sa/payment".into()],
            sni: None,
        }
    );
    let v2 = c
        .config
        .cluster("outbound|80|v2|payment.shop.svc.cluster.local")
        .unwrap();
    // payment-v2-cccc is not ready: left out, as Istio leaves out not-ready endpoints.
    let v2_addresses: Vec<&str> = v2.endpoints.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(v2_addresses, ["10.244.0.22"]);
    assert!(v2.endpoints.iter().all(|e| e.health == HealthStatus::Healthy));
    assert!(matches!(v2.load_balancer.policy, LbPolicy::RingHash { .. }));
    assert_eq!(v2.load_balancer.hash_key, Some(HashKey::Header("x-user".into())));
    assert_eq!(
        v2.outlier_detection.as_ref().unwrap().max_ejection_percent,
        50.0,
        "the subset inherits the rule's outlier detection"
    );
}

/// A Service outside the mesh (its pod has no proxy) serving TLS on two ports, a client
/// certificate Secret in the client's namespace, and a DestinationRule for it.
const LEDGER: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: ledger, namespace: shop}
spec:
  clusterIP: 10.96.0.40
  selector: {app: ledger}
  ports: [{name: tls-api, port: 443, targetPort: 8443}, {name: tls-sql, port: 5443, targetPort: 5443}]
---
apiVersion: v1
kind: Pod
metadata: {name: ledger-1, namespace: shop, labels: {app: ledger}}
spec:
  serviceAccountName: ledger
  containers: [{name: app, image: ledger}]
status: {podIP: 10.244.0.40, phase: Running, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Secret
metadata: {name: ledger-client, namespace: shop}
type: kubernetes.io/tls
stringData:
  tls.crt: "-----BEGIN CERTIFICATE-----\nCLIENT\n-----END CERTIFICATE-----\n"
  tls.key: "-----BEGIN PRIVATE KEY-----\nCLIENTKEY\n-----END PRIVATE KEY-----\n"
  ca.crt: "-----BEGIN CERTIFICATE-----\nLEDGERCA\n-----END CERTIFICATE-----\n"
  ca.crl: "-----BEGIN X509 CRL-----\nLEDGERCRL\n-----END X509 CRL-----\n"
---
apiVersion: networking.trellis.dev/v1alpha1
kind: DestinationRule
metadata: {name: ledger, namespace: shop}
spec:
  host: ledger
  trafficPolicy:
    tls: {mode: SIMPLE, caCertificates: /etc/ledger/ca.pem, caCrl: /etc/ledger/ca.crl, sni: ledger.bank.example, subjectAltNames: [api.bank.example]}
    portLevelSettings:
    - port: {number: 5443}
      tls: {mode: MUTUAL, credentialName: ledger-client}
"#;

#[test]
fn destination_rule_tls_originates_per_port_with_files_or_a_secret() {
    let c = web(&format!("{}{LEDGER}", shop()));
    let simple = c.config.cluster("outbound|443||ledger.shop.svc.cluster.local").unwrap();
    assert_eq!(simple.endpoints.len(), 1);
    assert_eq!(
        simple.tls,
        UpstreamTls::Originate(Box::new(OriginateTls {
            sni: "ledger.bank.example".into(),
            ca: Some(PemSource::File("/etc/ledger/ca.pem".into())),
            crl: Some(PemSource::File("/etc/ledger/ca.crl".into())),
            subject_alt_names: vec!["api.bank.example".into()],
            insecure_skip_verify: false,
            client_certificate: None,
        }))
    );
    // The port-level settings replace the rule's tls as a whole for port 5443.
    let mutual = c
        .config
        .cluster("outbound|5443||ledger.shop.svc.cluster.local")
        .unwrap();
    assert_eq!(mutual.endpoints.len(), 1);
    assert_eq!(
        mutual.tls,
        UpstreamTls::Originate(Box::new(OriginateTls {
            sni: "ledger.shop.svc.cluster.local".into(),
            ca: Some(PemSource::Inline(
                "-----BEGIN CERTIFICATE-----\nLEDGERCA\n-----END CERTIFICATE-----\n".into()
            )),
            // ... and the Secret's revocation list.
            crl: Some(PemSource::Inline(
                "-----BEGIN X509 CRL-----\nLEDGERCRL\n-----END X509 CRL-----\n".into()
            )),
            subject_alt_names: vec![],
            insecure_skip_verify: false,
            client_certificate: Some(CertificateRef::Inline {
                cert_chain_pem: "-----BEGIN CERTIFICATE-----\nCLIENT\n-----END CERTIFICATE-----\n".into(),
                private_key_pem: "-----BEGIN PRIVATE KEY-----\nCLIENTKEY\n-----END PRIVATE KEY-----\n".into(),
            }),
        }))
    );
    assert!(
        !c.diagnostics.iter().any(|d| d.resource.contains("ledger")),
        "{:?}",
        c.diagnostics
    );
    assert_eq!(c.config.validate(), Ok(()));
}

#[test]
fn a_missing_client_secret_sends_nothing_and_says_which() {
    let yaml = format!("{}{LEDGER}", shop()).replace("name: ledger-client", "name: other-secret");
    let c = web(&yaml);
    let mutual = c
        .config
        .cluster("outbound|5443||ledger.shop.svc.cluster.local")
        .unwrap();
    assert!(mutual.endpoints.is_empty(), "no plaintext, no anonymous TLS: nothing");
    let d = c
        .diagnostics
        .iter()
        .find(|d| d.resource == "DestinationRule shop/ledger")
        .expect("a diagnostic on the rule");
    assert_eq!(d.severity, Severity::Error);
    assert!(
        d.message.contains("\"ledger-client\"") && d.message.contains("shop/ledger-client"),
        "{d}"
    );
    // The SIMPLE port, which needs no Secret, is untouched.
    let simple = c.config.cluster("outbound|443||ledger.shop.svc.cluster.local").unwrap();
    assert_eq!(simple.endpoints.len(), 1);
}

#[test]
fn explicit_istio_mutual_verifies_the_named_or_the_endpoints_identities() {
    let rule = |tls: &str| {
        format!(
            "{}{}\n---\napiVersion: networking.trellis.dev/v1alpha1\nkind: DestinationRule\nmetadata: {{name: ledger, namespace: shop}}\nspec:\n  host: ledger\n  trafficPolicy:\n    tls: {tls}\n",
            shop(),
            LEDGER.split("---\napiVersion: networking.trellis.dev").next().unwrap()
        )
    };
    // The ledger pod has no proxy, so automatic mTLS would send plaintext; ISTIO_MUTUAL says
    // mTLS to the pod's service account.
    let c = web(&rule("{mode: ISTIO_MUTUAL}"));
    let cl = c.config.cluster("outbound|443||ledger.shop.svc.cluster.local").unwrap();
    assert_eq!(
        cl.tls,
        UpstreamTls::Mesh {
            expected_identities: vec!["spiffe://cluster.local/ns/shop/sa/ledger".into()],
            sni: None,
        }
    );
    assert_eq!(
        cl.endpoints[0].identity.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/ledger")
    );
    // subjectAltNames and sni replace them (an egress gateway's identity and routing name).
    let c = web(&rule(
        "{mode: ISTIO_MUTUAL, sni: ledger.bank.example, subjectAltNames: [spiffe://cluster.local/ns/egress/sa/egressgateway]}",
    ));
    let cl = c.config.cluster("outbound|443||ledger.shop.svc.cluster.local").unwrap();
    assert_eq!(
        cl.tls,
        UpstreamTls::Mesh {
            expected_identities: vec!["spiffe://cluster.local/ns/egress/sa/egressgateway".into()],
            sni: Some("ledger.bank.example".into()),
        }
    );
    assert_eq!(cl.endpoints[0].identity, None);
    assert_eq!(c.config.validate(), Ok(()));
    // Without a rule: plaintext to the proxy-less pod, as before.
    let c = web(&format!(
        "{}{}",
        shop(),
        LEDGER.split("---\napiVersion: networking.trellis.dev").next().unwrap()
    ));
    let cl = c.config.cluster("outbound|443||ledger.shop.svc.cluster.local").unwrap();
    assert_eq!(cl.tls, UpstreamTls::Disable);
}

#[test]
fn unknown_subset_is_reported_and_gets_no_endpoints() {
    let yaml = shop().replace("subset: v2}}]\n    - name: split", "subset: v3}}]\n    - name: split");
    let c = web(&yaml);
    let v3 = c
        .config
        .cluster("outbound|80|v3|payment.shop.svc.cluster.local")
        .unwrap();
    assert!(v3.endpoints.is_empty());
    assert!(
        c.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error && d.message.contains("subset \"v3\"")),
        "{:?}",
        c.diagnostics
    );
}

#[test]
fn export_to_limits_visibility() {
    let extra = "\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: billing}\n---\napiVersion: networking.trellis.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: db-private, namespace: billing, creationTimestamp: \"2025-01-01T00:00:00Z\"}\nspec:\n  hosts: [db.shop.svc.cluster.local]\n  exportTo: [\".\"]\n  http:\n  - route: [{destination: {host: db.shop.svc.cluster.local, port: {number: 7000}}}]\n    timeout: 9s\n";
    let c = web(&format!("{}{extra}", shop()));
    let vh = vhost(&c.config, "outbound", "db.shop.svc.cluster.local:7000");
    assert_eq!(
        vh.routes[0].provenance.kind, "Service",
        "a VirtualService exported only to billing does not apply in shop"
    );
    let exported = format!(
        "{}{}",
        shop(),
        extra.replace("exportTo: [\".\"]", "exportTo: [\"shop\"]")
    );
    let c = web(&exported);
    let vh = vhost(&c.config, "outbound", "db.shop.svc.cluster.local:7000");
    assert_eq!(vh.routes[0].provenance.name, "db-private");
}

#[test]
fn tcp_ports_route_by_cluster_ip() {
    let c = web(&shop());
    let l = c.config.listeners.iter().find(|l| l.name == "outbound").unwrap();
    let r = l.tcp_routes.iter().find(|r| r.destination_port == Some(5432)).unwrap();
    assert_eq!(r.destination_cidrs, ["10.96.0.12/32"]);
    assert_eq!(r.cluster, "outbound|5432||db.shop.svc.cluster.local");
}

/// A replica of db and a VirtualService whose TCP rules for db only apply to some proxies.
const DB_TCP: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: db-replica, namespace: shop}
spec:
  clusterIP: 10.96.0.13
  selector: {app: db}
  ports: [{name: tcp-sql, port: 5432, targetPort: 5432}]
---
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: db-tcp, namespace: shop}
spec:
  hosts: [db]
  tcp:
  - match: [{sourceLabels: {app: payment}}]
    route: [{destination: {host: db-replica}}]
  - match: [{port: 5432, gateways: [shop-gateway]}]
    route: [{destination: {host: db-replica}}]
  - match: [{destinationSubnets: [192.168.0.0/16, 10.96.0.99]}, {port: 6000}, {sourceNamespace: billing}]
    route: [{destination: {host: db-replica}}]
  - match: [{port: 5432, sourceNamespace: shop, sourceLabels: {app: web}, destinationSubnets: [10.96.0.0/16]}]
    route:
    - {destination: {host: db, port: {number: 5432}}, weight: 70}
    - {destination: {host: db-replica, port: {number: 5432}}, weight: 30}
"#;

#[test]
fn tcp_rules_match_on_every_l4_field_and_split_by_weight() {
    let yaml = format!("{}{DB_TCP}", shop());
    let db_route = |c: &Compiled| {
        let l = c.config.listeners.iter().find(|l| l.name == "outbound").unwrap();
        l.tcp_routes
            .iter()
            .find(|r| r.destination_cidrs == ["10.96.0.12/32"])
            .unwrap()
            .clone()
    };
    // web: the first three rules do not apply (another source, a gateway only, subnets and
    // port and namespace that are not this connection's); the fourth splits 70/30.
    let c = web(&yaml);
    let r = db_route(&c);
    assert_eq!(r.cluster, "");
    assert_eq!(
        r.weighted_clusters,
        [
            TcpWeightedCluster {
                cluster: "outbound|5432||db.shop.svc.cluster.local".into(),
                weight: 70
            },
            TcpWeightedCluster {
                cluster: "outbound|5432||db-replica.shop.svc.cluster.local".into(),
                weight: 30
            },
        ]
    );
    let p = r.provenance.unwrap();
    assert_eq!((p.name.as_str(), p.rule_index), ("db-tcp", Some(3)));
    assert!(
        c.config
            .cluster("outbound|5432||db-replica.shop.svc.cluster.local")
            .is_some()
    );
    assert!(
        !c.diagnostics.iter().any(|d| d.resource.contains("db-tcp")),
        "{:?}",
        c.diagnostics
    );
    assert_eq!(c.config.validate(), Ok(()));

    // payment's proxy matches the first rule's sourceLabels: one destination, no split.
    let c = compiled(&yaml, "shop", "payment-v1-aaaa", Role::Sidecar);
    let r = db_route(&c);
    assert_eq!(r.cluster, "outbound|5432||db-replica.shop.svc.cluster.local");
    assert!(r.weighted_clusters.is_empty());
    assert_eq!(r.provenance.unwrap().rule_index, Some(0));
}

/// A Service serving TLS the mesh does not terminate, two backends, and TLS rules by SNI.
const EDGE_TLS: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: edge, namespace: shop}
spec:
  clusterIP: 10.96.0.50
  selector: {app: edge}
  ports: [{name: tls, port: 443, targetPort: 8443}]
---
apiVersion: v1
kind: Service
metadata: {name: edge-a, namespace: shop}
spec:
  clusterIP: 10.96.0.51
  selector: {app: edge-a}
  ports: [{name: tls, port: 443, targetPort: 8443}]
---
apiVersion: v1
kind: Service
metadata: {name: edge-b, namespace: shop}
spec:
  clusterIP: 10.96.0.52
  selector: {app: edge-b}
  ports: [{name: tls, port: 443, targetPort: 8443}]
---
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: edge-sni, namespace: shop}
spec:
  hosts: [edge.shop.svc.cluster.local, "*.edge.example.com"]
  tls:
  - match: [{sniHosts: [a.edge.example.com]}, {sniHosts: [z.edge.example.com], sourceLabels: {app: payment}}]
    route: [{destination: {host: edge-a}}]
  - match: [{sniHosts: ["*.edge.example.com"], port: 443}]
    route: [{destination: {host: edge-a}, weight: 50}, {destination: {host: edge-b}, weight: 50}]
  - match: [{sniHosts: [edge.shop.svc.cluster.local], port: 8443}]
    route: [{destination: {host: edge-b}}]
"#;

#[test]
fn tls_rules_route_by_sni_before_the_tcp_route() {
    let yaml = format!("{}{EDGE_TLS}", shop());
    let routes = |c: &Compiled| {
        let l = c.config.listeners.iter().find(|l| l.name == "outbound").unwrap();
        l.tcp_routes
            .iter()
            .filter(|r| r.destination_cidrs == ["10.96.0.50/32"])
            .cloned()
            .collect::<Vec<_>>()
    };
    let c = web(&yaml);
    let r = routes(&c);
    assert_eq!(r.len(), 3, "{r:#?}");
    assert_eq!(
        r[0].sni_hosts,
        ["a.edge.example.com"],
        "payment's z.edge.example.com is not web's"
    );
    assert_eq!(r[0].cluster, "outbound|443||edge-a.shop.svc.cluster.local");
    assert_eq!(r[0].provenance.as_ref().unwrap().rule_index, Some(0));
    assert_eq!(r[1].sni_hosts, ["*.edge.example.com"]);
    assert_eq!(
        r[1].weighted_clusters,
        [
            TcpWeightedCluster {
                cluster: "outbound|443||edge-a.shop.svc.cluster.local".into(),
                weight: 50
            },
            TcpWeightedCluster {
                cluster: "outbound|443||edge-b.shop.svc.cluster.local".into(),
                weight: 50
            },
        ]
    );
    // The rule for port 8443 does not apply to port 443; the Service's own route comes last.
    assert!(r[2].sni_hosts.is_empty());
    assert_eq!(r[2].cluster, "outbound|443||edge.shop.svc.cluster.local");
    assert_eq!(r[2].provenance.as_ref().unwrap().kind, "Service");
    // Only the true note that the SNI wildcard host names no Service.
    assert!(
        c.diagnostics
            .iter()
            .filter(|d| d.resource.contains("edge-sni"))
            .all(|d| d.message.starts_with("host *.edge.example.com matches no Service")),
        "{:?}",
        c.diagnostics
    );
    assert_eq!(c.config.validate(), Ok(()));

    let c = compiled(&yaml, "shop", "payment-v1-aaaa", Role::Sidecar);
    assert_eq!(routes(&c)[0].sni_hosts, ["a.edge.example.com", "z.edge.example.com"]);
}

#[test]
fn mtls_precedence_workload_namespace_mesh_and_port_level() {
    let db = compiled(&shop(), "shop", "db-0", Role::Sidecar);
    assert_eq!(
        db.config.inbound.mtls.mode,
        MtlsMode::Strict,
        "UNSET on the workload inherits the namespace's STRICT"
    );
    assert_eq!(db.config.inbound.mtls.mode_for(5432), MtlsMode::Permissive);
    assert_eq!(db.config.inbound.mtls.mode_for(7000), MtlsMode::Strict);
    // Without the namespace policy the mesh-wide one (root namespace) applies.
    let yaml = shop().replace(
        "metadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}",
        "metadata: {name: other, namespace: elsewhere}\nspec: {mtls: {mode: STRICT}}",
    );
    let db = compiled(&yaml, "shop", "db-0", Role::Sidecar);
    assert_eq!(db.config.inbound.mtls.mode, MtlsMode::Permissive);
    // Without any policy, the Mesh default applies.
    let yaml = format!(
        "{}\n---\napiVersion: mesh.trellis.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\nspec: {{defaultMtlsMode: STRICT}}\n",
        shop().replace("kind: PeerAuthentication", "kind: ConfigMap")
    );
    let web = compiled(&yaml, "shop", "web-5d8f-abcde", Role::Sidecar);
    assert_eq!(web.config.inbound.mtls.mode, MtlsMode::Strict);
}

#[test]
fn authorization_policies_select_workloads_and_principals_become_spiffe_ids() {
    let db = compiled(&shop(), "shop", "db-0", Role::Sidecar);
    let names: Vec<(&str, AuthzAction)> = db
        .config
        .inbound
        .authorization
        .iter()
        .map(|p| (p.name.as_str(), p.action))
        .collect();
    assert_eq!(names, [("db", AuthzAction::Allow), ("deny-admin", AuthzAction::Deny)]);
    let allow = &db.config.inbound.authorization[0];
    assert_eq!(
        allow.rules[0].from[0].principals,
        [StringMatch::Exact("spiffe://cluster.local/ns/shop/sa/payment".into())]
    );
    assert_eq!(allow.rules[0].to[0].paths, [StringMatch::Prefix("/records".into())]);
    let web = web(&shop());
    let names: Vec<&str> = web
        .config
        .inbound
        .authorization
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["deny-admin"], "the db policy selects only db");
}

#[test]
fn gateways_get_the_policies_that_select_or_target_them() {
    let yaml = format!(
        "{}{}",
        shop(),
        r"
---
apiVersion: networking.trellis.dev/v1alpha1
kind: Gateway
metadata: {name: edge, namespace: trellis-system}
spec:
  selector: {app: trellis-ingressgateway}
  servers:
    - port: {number: 8081, name: http-edge, protocol: HTTP}
      hosts: ['*/edge.example.com']
---
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ingress-deny, namespace: trellis-system}
spec:
  selector: {matchLabels: {app: trellis-ingressgateway}}
  action: DENY
  rules: [{from: [{source: {remoteIpBlocks: [192.0.2.0/24]}}]}]
---
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: edge-audit, namespace: trellis-system}
spec:
  targetRefs: [{kind: Gateway, group: networking.trellis.dev, name: edge}]
  action: AUDIT
  rules: [{to: [{operation: {paths: [/admin]}}]}]
---
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: shop-gateway-only, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, name: shop-gateway}]
  action: DENY
  rules: [{to: [{operation: {paths: [/debug]}}]}]
"
    );
    let names = |c: &Compiled| -> Vec<(String, AuthzAction)> {
        c.config
            .inbound
            .authorization
            .iter()
            .map(|p| (format!("{}/{}", p.namespace, p.name), p.action))
            .collect()
    };
    let gw = compiled(&yaml, "trellis-system", "ingress-1", Role::Gateway);
    assert_eq!(
        names(&gw),
        [
            ("trellis-system/edge-audit".to_string(), AuthzAction::Audit),
            ("trellis-system/ingress-deny".to_string(), AuthzAction::Deny),
        ],
        "a policy of another namespace (shop) never reaches the shared gateway"
    );
    let deny = &gw.config.inbound.authorization[1];
    assert_eq!(deny.rules[0].from[0].remote_ip_blocks, ["192.0.2.0/24"]);
    // A Gateway target is for gateway proxies: the sidecars of its namespace do not get it.
    let web = compiled(&yaml, "shop", "web-5d8f-abcde", Role::Sidecar);
    assert!(
        !names(&web).iter().any(|(n, _)| n == "shop/shop-gateway-only"),
        "{:?}",
        names(&web)
    );
}

#[test]
fn inbound_hands_traffic_to_the_app_on_localhost() {
    let c = web(&shop());
    let l = c
        .config
        .listeners
        .iter()
        .find(|l| l.direction == ListenerDirection::Inbound)
        .unwrap();
    assert_eq!(l.address, "0.0.0.0:15006");
    let inbound = c.config.cluster("inbound|8080||").unwrap();
    assert_eq!(inbound.endpoints[0].address, "127.0.0.1");
    assert_eq!(
        c.config.identity.spiffe_id.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/web")
    );
    assert_eq!(c.config.node.workload, "web");
    let dns = c
        .config
        .dns
        .entries
        .iter()
        .find(|e| e.hostname == "payment.shop.svc.cluster.local")
        .unwrap();
    assert_eq!(dns.addresses, ["10.96.0.11"]);
    assert!(dns.aliases.contains(&"payment".to_string()));
}

#[test]
fn gateway_listeners_from_servers_with_bound_virtual_services() {
    let c = compiled(&shop(), "trellis-system", "ingress-1", Role::Gateway);
    let ports: Vec<&str> = c.config.listeners.iter().map(|l| l.address.as_str()).collect();
    assert_eq!(ports, ["0.0.0.0:8080", "0.0.0.0:8443"]);
    let http = vhost(&c.config, "gateway-8080", "shop.example.com:80");
    assert!(matches!(&http.routes[0].action, RouteAction::Redirect(r) if r.scheme.as_deref() == Some("https")));
    let https = vhost(&c.config, "gateway-8443", "shop.example.com:443");
    let RouteAction::Forward(f) = &https.routes[0].action else {
        panic!("forward")
    };
    assert_eq!(f.clusters[0].cluster, "outbound|8080||web.shop.svc.cluster.local");
    assert_eq!(https.routes[0].provenance.name, "shop-ingress");
    let tls = c.config.listeners[1].tls.as_ref().expect("TLS from credentialName");
    assert!(
        format!("{:?}", tls.certificate).contains("<redacted>"),
        "keys never appear in debug output"
    );
    assert!(c.config.cluster("outbound|8080||web.shop.svc.cluster.local").is_some());
}

#[test]
fn a_missing_credential_drops_the_server_with_an_error() {
    let yaml = shop().replace("credentialName: shop-cert", "credentialName: missing-cert");
    let c = compiled(&yaml, "trellis-system", "ingress-1", Role::Gateway);
    assert_eq!(c.config.listeners.len(), 1);
    assert!(
        c.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error && d.message.contains("missing-cert"))
    );
}

#[test]
fn unknown_pods_are_an_error_that_says_why() {
    let snap = Snapshot::from_yaml(&shop()).unwrap();
    let err = compile(&snap, &ObjectKey::new("shop", "nope"), Role::Sidecar, "v1").unwrap_err();
    assert!(err.to_string().contains("pod shop/nope is not known"), "{err}");
}

#[test]
fn https_servers_with_their_own_credentials_share_a_port_by_sni() {
    let yaml = shop()
        .replace(
            "      tls: {mode: SIMPLE, credentialName: shop-cert}\n",
            "      tls: {mode: SIMPLE, credentialName: shop-cert}\n    - port: {number: 443, name: https-api, protocol: HTTPS, targetPort: 8443}\n      hosts: [\"*/*.api.example.com\"]\n      tls: {mode: SIMPLE, credentialName: api-cert}\n",
        )
        .replace(
            "kind: Secret\nmetadata: {name: shop-cert, namespace: trellis-system}\n",
            "kind: Secret\nmetadata: {name: api-cert, namespace: trellis-system}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: \"-----BEGIN CERTIFICATE-----\\nMIIC\\n-----END CERTIFICATE-----\\n\"\n  tls.key: \"-----BEGIN PRIVATE KEY-----\\nMIIF\\n-----END PRIVATE KEY-----\\n\"\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: shop-cert, namespace: trellis-system}\n",
        );
    let c = compiled(&yaml, "trellis-system", "ingress-1", Role::Gateway);
    assert!(
        !c.diagnostics.iter().any(|d| d.severity == Severity::Error),
        "{:?}",
        c.diagnostics
    );
    let https = c.config.listeners.iter().find(|l| l.name == "gateway-8443").unwrap();
    let names: Vec<&[String]> = https.sni_tls.iter().map(|e| e.server_names.as_slice()).collect();
    assert_eq!(
        names,
        [
            &["shop.example.com".to_string()][..],
            &["*.api.example.com".to_string()][..]
        ]
    );
    // The first server's TLS is the default for clients matching no name.
    assert_eq!(https.tls.as_ref(), Some(&https.sni_tls[0].tls));
    assert_ne!(https.sni_tls[0].tls, https.sni_tls[1].tls);
    c.config.validate().expect("the proxy accepts the compiled SNI servers");
}

#[test]
fn a_service_with_an_unready_pod_without_proxy_stays_plaintext_and_valid() {
    let mut yaml = shop();
    yaml.push_str(
        r#"
---
apiVersion: v1
kind: Service
metadata: {name: collector, namespace: shop}
spec: {clusterIP: 10.96.0.99, selector: {app: collector}, ports: [{name: http, port: 4318}]}
---
apiVersion: v1
kind: Pod
metadata: {name: collector-0, namespace: shop, labels: {app: collector}}
spec:
  serviceAccountName: collector
  containers: [{name: collector, image: collector, ports: [{containerPort: 4318}]}]
status: {podIP: 10.244.0.99, phase: Running, conditions: [{type: Ready, status: "False"}]}
"#,
    );
    let c = web(&yaml);
    let cluster = c
        .config
        .clusters
        .iter()
        .find(|cl| cl.service.as_deref() == Some("collector.shop.svc.cluster.local"))
        .expect("a cluster for the collector");
    assert_eq!(cluster.tls, trellis_contract::UpstreamTls::Disable);
    c.config.validate().expect("the proxy accepts the config");
}

#[test]
fn request_authentications_become_jwt_providers_with_their_keys_inline() {
    let jwks = r#"{"keys":[{"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"}]}"#;
    let policies = format!(
        r#"
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: mesh-jwt, namespace: trellis-system}}
spec:
  jwtRules:
    - issuer: https://accounts.example
      jwksUri: https://accounts.example/jwks.json
---
apiVersion: security.trellis.dev/v1alpha1
kind: RequestAuthentication
metadata: {{name: web-jwt, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  jwtRules:
    - issuer: https://issuer.example
      audiences: [shop]
      jwks: '{jwks}'
      fromHeaders: [{{name: x-jwt, prefix: 'Bearer '}}]
      fromParams: [token]
      forwardOriginalToken: true
      outputClaimToHeaders: [{{header: x-sub, claim: sub}}]
---
apiVersion: security.trellis.dev/v1alpha1
kind: RequestAuthentication
metadata: {{name: db-jwt, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: db}}}}
  jwtRules: [{{issuer: https://db.example, jwks: '{jwks}'}}]
---
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  rules:
    - from: [{{source: {{requestPrincipals: ['https://issuer.example/*'], notRequestPrincipals: ['*/mallory']}}}}]
      when: [{{key: 'request.auth.claims[groups]', values: [admins]}}]
"#
    );
    let yaml = format!("{}{policies}", shop());
    let c = web(&yaml);
    let jwt = &c.config.inbound.jwt;
    let issuers: Vec<&str> = jwt.iter().map(|p| p.issuer.as_str()).collect();
    assert_eq!(
        issuers,
        ["https://issuer.example", "https://accounts.example"],
        "the workload's and the mesh-wide rules, not db's"
    );
    let web_rule = &jwt[0];
    assert_eq!(web_rule.source, "RequestAuthentication shop/web-jwt jwtRules[0]");
    assert_eq!(web_rule.jwks, jwks);
    assert_eq!(web_rule.audiences, ["shop"]);
    assert_eq!(web_rule.from_headers[0].prefix, "Bearer ");
    assert_eq!(web_rule.from_params, ["token"]);
    assert!(web_rule.forward_original_token);
    assert_eq!(web_rule.output_claim_to_headers[0].header, "x-sub");
    // Not fetched (yet): no keys, and the issuer's tokens are refused rather than let through.
    assert!(jwt[1].jwks.is_empty());
    assert!(jwt[1].jwks_unavailable.as_deref().unwrap().contains("not fetched yet"));
    let policy = c.config.inbound.authorization.iter().find(|p| p.name == "require-jwt");
    let source = &policy.expect("the policy selects web").rules[0].from[0];
    assert_eq!(
        source.request_principals,
        [StringMatch::Prefix("https://issuer.example/".into())]
    );
    assert_eq!(source.not_request_principals, [StringMatch::Suffix("/mallory".into())]);
    c.config.validate().unwrap();

    // What the operator fetched is pushed inline; a failed fetch is carried as such.
    let mut snap = Snapshot::from_yaml(&yaml).unwrap();
    let uri = "https://accounts.example/jwks.json".to_string();
    snap.jwks.insert(uri.clone(), FetchedJwks::Keys(jwks.into()));
    let key = ObjectKey::new("shop", "web-5d8f-abcde");
    let c = compile(&snap, &key, Role::Sidecar, "v1").unwrap();
    assert_eq!(c.config.inbound.jwt[1].jwks, jwks);
    assert_eq!(c.config.inbound.jwt[1].jwks_unavailable, None);
    snap.jwks.insert(uri, FetchedJwks::Unavailable("HTTP 503".into()));
    let c = compile(&snap, &key, Role::Sidecar, "v1").unwrap();
    assert_eq!(
        c.config.inbound.jwt[1].jwks_unavailable.as_deref(),
        Some("https://accounts.example/jwks.json: HTTP 503")
    );
    // A query can hold a credential: the proxies' /config_dump never shows it.
    let with_key = yaml.replace(
        "https://accounts.example/jwks.json",
        "https://accounts.example/jwks.json?api_key=s3cret",
    );
    assert_ne!(with_key, yaml, "the fixture names the jwksUri");
    let mut snap = Snapshot::from_yaml(&with_key).unwrap();
    snap.jwks.insert(
        "https://accounts.example/jwks.json?api_key=s3cret".into(),
        FetchedJwks::Unavailable("HTTP 503".into()),
    );
    let c = compile(&snap, &key, Role::Sidecar, "v1").unwrap();
    assert_eq!(
        c.config.inbound.jwt[1].jwks_unavailable.as_deref(),
        Some("https://accounts.example/jwks.json?<redacted>: HTTP 503")
    );
    // Neither jwks nor jwksUri: the keys the operator discovered from the issuer (OpenID
    // Connect) are found under the issuer's discovery document.
    let discovering = yaml.replace("      jwksUri: https://accounts.example/jwks.json\n", "");
    assert_ne!(discovering, yaml, "the fixture names the jwksUri on its own line");
    let mut snap = Snapshot::from_yaml(&discovering).unwrap();
    let c = compile(&snap, &key, Role::Sidecar, "v1").unwrap();
    assert_eq!(
        c.config.inbound.jwt[1].jwks_unavailable.as_deref(),
        Some("https://accounts.example/.well-known/openid-configuration: not fetched yet")
    );
    snap.jwks.insert(
        "https://accounts.example/.well-known/openid-configuration#trellis-oidc-discovery".into(),
        FetchedJwks::Keys(jwks.into()),
    );
    let c = compile(&snap, &key, Role::Sidecar, "v1").unwrap();
    assert_eq!(
        (
            c.config.inbound.jwt[1].jwks.as_str(),
            c.config.inbound.jwt[1].jwks_unavailable.as_deref()
        ),
        (jwks, None)
    );
    // Gateways get the mesh-wide rule too.
    let gw = compiled(&yaml, "trellis-system", "ingress-1", Role::Gateway);
    assert_eq!(gw.config.inbound.jwt.len(), 1);
}

/// Whether `db`'s compiled inbound policy lets a GET of /records from `peer` through.
fn db_allows(db: &Compiled, peer: &str) -> bool {
    use trellis_contract::authorization::{Authorizer, AuthzRequest, Layer};
    struct NoHeaders;
    impl trellis_contract::matching::Headers for NoHeaders {
        fn contains(&self, _: &str) -> bool {
            false
        }
        fn joined(&self, _: &str) -> Option<std::borrow::Cow<'_, str>> {
            None
        }
    }
    let authorizer = Authorizer::compile(&db.config.inbound).expect("the compiled policy compiles");
    let ip = "10.0.0.1".parse().unwrap();
    authorizer
        .evaluate(&AuthzRequest {
            layer: Layer::Http,
            principal: Some(peer),
            namespace: Some("shop"),
            source_ip: ip,
            remote_ip: ip,
            destination_ip: ip,
            sni: None,
            port: 5432,
            host: "db",
            method: "GET",
            path: "/records",
            headers: &NoHeaders,
            auth: None,
        })
        .allowed()
}

#[test]
fn principals_match_the_same_workload_in_every_alias_of_the_trust_domain() {
    // The trust domain moved from cluster.local to new.example; the status still records
    // old.example as served by some proxies, and the Mesh lists legacy.example as an alias.
    let changed = format!(
        "{}{}",
        shop(),
        r"
---
apiVersion: mesh.trellis.dev/v1alpha1
kind: Mesh
metadata: {name: default}
spec: {trustDomain: new.example, trustDomainAliases: [legacy.example]}
status: {certificateAuthority: {trustDomain: new.example, previousTrustDomains: [old.example]}}
---
apiVersion: security.trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: db-by-account, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  rules:
    - from: [{source: {serviceAccounts: [web]}}]
      to: [{operation: {paths: [/records]}}]
"
    );
    let db = compiled(&changed, "shop", "db-0", Role::Sidecar);
    assert_eq!(db.config.identity.trust_domain, "new.example");
    assert_eq!(
        db.config.identity.trust_domain_aliases,
        ["legacy.example", "old.example"]
    );
    assert_eq!(
        db.config.identity.spiffe_id.as_deref(),
        Some("spiffe://new.example/ns/shop/sa/db")
    );
    // The policy names payment as cluster.local/…, which stands for the local trust domain.
    for domain in ["new.example", "old.example", "legacy.example"] {
        assert!(
            db_allows(&db, &format!("spiffe://{domain}/ns/shop/sa/payment")),
            "payment in {domain}"
        );
        assert!(
            db_allows(&db, &format!("spiffe://{domain}/ns/shop/sa/web")),
            "web in {domain}"
        );
    }
    assert!(
        !db_allows(&db, "spiffe://other.example/ns/shop/sa/payment"),
        "a domain that is no alias stays out"
    );
    assert!(
        !db_allows(&db, "spiffe://old.example/ns/shop/sa/gateway"),
        "an alias never lets another workload in"
    );
    // Without the aliases (the transition over), only the trust domain itself is the mesh's.
    let settled = changed
        .replace(", trustDomainAliases: [legacy.example]", "")
        .replace("previousTrustDomains: [old.example]", "previousTrustDomains: []");
    let db = compiled(&settled, "shop", "db-0", Role::Sidecar);
    assert!(db.config.identity.trust_domain_aliases.is_empty());
    assert!(db_allows(&db, "spiffe://new.example/ns/shop/sa/payment"));
    assert!(!db_allows(&db, "spiffe://old.example/ns/shop/sa/payment"));
}
