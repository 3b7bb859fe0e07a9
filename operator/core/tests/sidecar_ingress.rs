//! A Sidecar's `ingress` listeners and inbound connection pools on the inbound side (Istio's
//! `IstioIngressListener`): traffic arriving for a port is handed to the listener's
//! `defaultEndpoint` with the listener's protocol, ports the Sidecar does not name keep what
//! the Services say, the pools land on the application's clusters — a Sidecar's, else the
//! DestinationRule's of the port's Service, as Istio sets circuit breakers on the receiving
//! side too —, and a mesh without ingress compiles as before.

use trellis_contract::{Cluster, Listener, ProxyConfig, UpstreamProtocol};
use trellis_core::compile::{Role, changes};
use trellis_core::registry::ObjectKey;
use trellis_core::snapshot::Snapshot;

#[path = "support/workloads.rs"]
mod workloads;
use workloads::{SERVICES, compiled, pod};

/// The Services, their pods `web-1` and `payment-1`, and `extra`.
fn snapshot(extra: &str) -> Snapshot {
    workloads::snapshot(&[
        SERVICES,
        &pod("shop", "web-1", "web", "10.244.1.1"),
        &pod("shop", "payment-1", "payment", "10.244.1.2"),
        extra,
    ])
}

fn sidecar(s: &Snapshot, pod: &str) -> ProxyConfig {
    compiled(s, "shop", pod, Role::Sidecar).config
}

fn inbound(c: &ProxyConfig) -> &Listener {
    c.listeners
        .iter()
        .find(|l| l.name == "inbound")
        .expect("an inbound listener")
}

fn cluster(c: &ProxyConfig, port: u16) -> &Cluster {
    let name = format!("inbound|{port}||");
    c.clusters
        .iter()
        .find(|cl| cl.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

/// The application's address for `port`: `address:port` of its cluster's one endpoint.
fn app(c: &ProxyConfig, port: u16) -> String {
    let cl = cluster(c, port);
    assert_eq!(cl.endpoints.len(), 1, "{cl:?}");
    let e = &cl.endpoints[0];
    format!("{}:{}", e.address, e.port)
}

/// Where the inbound listener's HTTP route and TCP route for `port` come from, in words.
fn routes(c: &ProxyConfig, port: u16) -> (Option<String>, Option<String>) {
    let l = inbound(c);
    let http = l
        .virtual_hosts
        .iter()
        .flat_map(|v| &v.routes)
        .find(|r| r.matches.iter().any(|m| m.port == Some(port)));
    let tcp = l.tcp_routes.iter().find(|r| r.destination_port == Some(port));
    (
        http.map(|r| r.provenance.describe()),
        tcp.and_then(|r| r.provenance.as_ref()).map(|p| p.describe()),
    )
}

/// Shop's Sidecar without a selector, with this `spec`.
fn namespace_sidecar(spec: &str) -> String {
    format!(
        "apiVersion: networking.trellis.dev/v1alpha1\nkind: Sidecar\nmetadata: {{name: default, namespace: shop}}\nspec: {spec}"
    )
}

const INGRESS: &str = r#"
apiVersion: networking.trellis.dev/v1alpha1
kind: Sidecar
metadata: {name: web-ingress, namespace: shop}
spec:
  workloadSelector: {labels: {app: web}}
  ingress:
  - port: {number: 8080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:9090
  - port: {number: 7070, protocol: TCP, name: tcp-admin}
    defaultEndpoint: "[::1]:7071"
"#;

#[test]
fn an_ingress_port_is_handed_to_its_default_endpoint_with_its_protocol() {
    let s = snapshot(INGRESS);
    let web = sidecar(&s, "web-1");
    // 8080 (a Service's target port): to 127.0.0.1:9090, over HTTP, the route named after
    // the Sidecar's listener; the cluster keeps the Service it serves.
    assert_eq!(app(&web, 8080), "127.0.0.1:9090");
    assert_eq!(cluster(&web, 8080).protocol, UpstreamProtocol::Http1);
    assert_eq!(
        cluster(&web, 8080).service.as_deref(),
        Some("web.shop.svc.cluster.local")
    );
    assert_eq!(
        routes(&web, 8080),
        (Some("Sidecar shop/web-ingress ingress[0]".to_string()), None)
    );
    // 7070 (no Service names it): added, opaque TCP, to [::1]:7071.
    assert_eq!(app(&web, 7070), "::1:7071");
    assert_eq!(cluster(&web, 7070).protocol, UpstreamProtocol::Tcp);
    assert_eq!(cluster(&web, 7070).service, None);
    assert_eq!(
        routes(&web, 7070),
        (None, Some("Sidecar shop/web-ingress ingress[1]".to_string()))
    );
    // The Sidecar selects web only: payment's inbound is the Services'.
    let payment = sidecar(&s, "payment-1");
    assert_eq!(app(&payment, 8080), "127.0.0.1:8080");
    assert_eq!(routes(&payment, 8080).0.as_deref(), Some("Service shop/payment"));
}

#[test]
fn without_ingress_the_inbound_side_is_the_services() {
    let plain = snapshot("");
    let egress_only = snapshot(&namespace_sidecar(r#"{egress: [{hosts: ["./*"]}]}"#));
    for s in [&plain, &egress_only] {
        let payment = sidecar(s, "payment-1");
        assert_eq!(app(&payment, 8080), "127.0.0.1:8080");
        assert_eq!(app(&payment, 5432), "127.0.0.1:5432");
        assert_eq!(routes(&payment, 5432), (None, Some("Service shop/payment".to_string())));
        assert_eq!(inbound(&payment), inbound(&sidecar(&plain, "payment-1")));
    }
}

#[test]
fn an_ingress_listener_replaces_one_service_port_and_keeps_the_others() {
    // payment's 5432 is declared TCP by its Service; the Sidecar says HTTP on another port.
    let s = snapshot(&namespace_sidecar(
        r#"
  ingress: [{port: {number: 5432, protocol: HTTP, name: http-db}, defaultEndpoint: "127.0.0.1:6543"}]
"#,
    ));
    let payment = sidecar(&s, "payment-1");
    assert_eq!(app(&payment, 5432), "127.0.0.1:6543");
    assert_eq!(
        routes(&payment, 5432),
        (Some("Sidecar shop/default ingress[0]".to_string()), None)
    );
    assert_eq!(app(&payment, 8080), "127.0.0.1:8080");
    assert_eq!(routes(&payment, 8080).0.as_deref(), Some("Service shop/payment"));
    // An ingress listener without defaultEndpoint hands its port to localhost's same port.
    let s = snapshot(&namespace_sidecar(
        r#"
  ingress: [{port: {number: 9000, protocol: GRPC, name: grpc}}]
"#,
    ));
    let payment = sidecar(&s, "payment-1");
    assert_eq!(app(&payment, 9000), "127.0.0.1:9000");
    assert_eq!(cluster(&payment, 9000).protocol, UpstreamProtocol::Http2);
}

#[test]
fn inbound_connection_pools_land_on_the_applications_clusters() {
    let s = snapshot(&namespace_sidecar(
        r#"
  inboundConnectionPool:
    tcp: {maxConnections: 100, connectTimeout: 2s}
    http: {http1MaxPendingRequests: 50, idleTimeout: 30s}
  ingress:
  - port: {number: 8080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:8080
    connectionPool: {tcp: {maxConnections: 7}, http: {maxRequestsPerConnection: 1}}
"#,
    ));
    let payment = sidecar(&s, "payment-1");
    // The listener's own pool replaces the Sidecar's for its port.
    let own = cluster(&payment, 8080);
    assert_eq!(own.connection_pool.max_connections, 7);
    assert_eq!(own.connection_pool.max_requests_per_connection, 1);
    assert_eq!(
        own.connection_pool.max_pending_requests,
        u32::MAX,
        "Istio's default: no limit"
    );
    assert_eq!(own.connect_timeout_ms, 10_000, "the default");
    // The Service's other port gets the Sidecar's.
    let db = cluster(&payment, 5432);
    assert_eq!(db.connection_pool.max_connections, 100);
    assert_eq!(db.connection_pool.max_pending_requests, 50);
    assert_eq!(db.connection_pool.idle_timeout_ms, 30_000);
    assert_eq!(db.connect_timeout_ms, 2_000);
}

/// Istio's `applyConnectionPool` serves inbound clusters too: every setting of a Sidecar's
/// inbound pool lands on the application's cluster, where the proxy enforces it as on any
/// cluster — but not the HTTP/2 upgrade (Istio upgrades outbound connections only), the
/// HTTP/2 keepalive on a cluster that speaks HTTP/1 (Istio sets it on HTTP/2 ones only), and
/// not the TCP proxy's idle timeout or duration (Istio's inbound TCP proxy keeps the listener's).
#[test]
fn every_inbound_pool_setting_istio_applies_lands_on_the_applications_cluster() {
    let s = snapshot(&namespace_sidecar(
        r#"
  ingress:
  - port: {number: 8080, protocol: HTTP, name: http}
    connectionPool:
      tcp: {maxConnections: 7, connectTimeout: 2s, maxConnectionDuration: 1h, idleTimeout: 30m,
            tcpKeepalive: {time: 60s, interval: 10s, probes: 3}}
      http: {http1MaxPendingRequests: 5, http2MaxRequests: 11, maxRequestsPerConnection: 4,
             maxRetries: 2, maxConcurrentStreams: 3, h2UpgradePolicy: UPGRADE,
             http2KeepAlive: {interval: 30s, timeout: 5s}}
  - port: {number: 5432, protocol: TCP, name: tcp-db}
    connectionPool: {tcp: {idleTimeout: 5m, maxConnectionDuration: 90s}}
"#,
    ));
    let payment = sidecar(&s, "payment-1");
    let http = cluster(&payment, 8080);
    let expected = trellis_contract::ConnectionPool {
        max_connections: 7,
        max_tcp_connections: Some(7),
        max_pending_requests: 5,
        max_requests: Some(11),
        max_requests_per_connection: 4,
        max_retries: Some(2),
        max_concurrent_streams: Some(3),
        max_connection_duration_ms: Some(3_600_000),
        // No http.idleTimeout: HTTP connections take the TCP one (Istio).
        idle_timeout_ms: 30 * 60_000,
        tcp_keepalive: Some(trellis_contract::TcpKeepalive {
            time_secs: Some(60),
            interval_secs: Some(10),
            probes: Some(3),
        }),
        // Istio's keepalive goes on HTTP/2 clusters only; this one speaks HTTP/1.
        http2_keepalive: None,
        ..trellis_contract::ConnectionPool::default()
    };
    assert_eq!(http.connection_pool, expected);
    assert_eq!(http.connect_timeout_ms, 2_000);
    assert_eq!(
        http.protocol,
        UpstreamProtocol::Http1,
        "no HTTP/2 upgrade towards the application"
    );
    // A TCP port: its proxied connections keep the listener's idle timeout and no duration.
    let db = cluster(&payment, 5432);
    assert_eq!(
        (
            db.connection_pool.tcp_idle_timeout_ms,
            db.connection_pool.tcp_max_connection_duration_ms
        ),
        (None, None)
    );
    assert_eq!(db.connection_pool.idle_timeout_ms, 5 * 60_000);

    // An application that speaks HTTP/2 (gRPC): its cluster takes the keepalive.
    let s = snapshot(&namespace_sidecar(
        r#"
  ingress:
  - port: {number: 8080, protocol: GRPC, name: grpc}
    connectionPool:
      http: {http2KeepAlive: {interval: 30s, timeout: 5s}}
"#,
    ));
    let grpc = cluster(&sidecar(&s, "payment-1"), 8080).clone();
    assert_eq!(
        (grpc.protocol, grpc.connection_pool.http2_keepalive),
        (
            UpstreamProtocol::Http2,
            Some(trellis_contract::Http2Keepalive {
                interval_ms: 30_000,
                timeout_ms: 5_000,
            })
        )
    );
}

#[test]
fn a_sidecar_change_recompiles_the_inbound_side() {
    let before = snapshot("");
    let after = snapshot(INGRESS);
    let c = changes(&before, &after);
    assert!(c.own_changed(&ObjectKey::new("shop", "web-1")), "{c:?}");
}

/// payment's DestinationRule, with this `trafficPolicy`.
fn payment_rule(policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: payment, namespace: shop}}\nspec:\n  host: payment\n  trafficPolicy: {policy}\n"
    )
}

/// A cluster's request slots (`tcp.maxConnections`) and queue (`http1MaxPendingRequests`).
fn limits(c: &Cluster) -> (u32, u32) {
    (
        c.connection_pool.max_connections,
        c.connection_pool.max_pending_requests,
    )
}

/// Where an inbound cluster's settings came from, in words (`-`: nowhere, the defaults).
fn pool_source(c: &Cluster) -> String {
    c.provenance.as_ref().map_or("-".into(), |p| p.describe())
}

/// Istio's `buildInboundCluster`: "when users specify circuit breakers, they need to be set on
/// the receiver end (server side) as well as client side". The connection pool of the rule
/// for the pod's Service lands on the application's cluster — only the pool: no load
/// balancing, outlier detection or HTTP/2 upgrade towards the application; a port-level
/// entry, matched by the Service's port, replaces the rule's policy whole.
#[test]
fn a_destination_rules_pool_lands_on_its_services_inbound_clusters() {
    let s = snapshot(&payment_rule(
        r#"
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 3s}
      http: {http1MaxPendingRequests: 3, h2UpgradePolicy: UPGRADE, idleTimeout: 90s}
    loadBalancer: {simple: RANDOM}
    outlierDetection: {consecutive5xxErrors: 2}
    portLevelSettings:
    - port: {number: 5432}
      loadBalancer: {simple: ROUND_ROBIN}
"#,
    ));
    let payment = sidecar(&s, "payment-1");
    let http = cluster(&payment, 8080);
    assert_eq!(
        (
            http.connection_pool.max_connections,
            http.connection_pool.max_pending_requests,
            http.connection_pool.idle_timeout_ms,
            http.connect_timeout_ms
        ),
        (10, 3, 90_000, 3_000)
    );
    assert_eq!(pool_source(http), "DestinationRule shop/payment trafficPolicy");
    assert_eq!(http.protocol, UpstreamProtocol::Http1, "no HTTP/2 upgrade inbound");
    assert_eq!(http.outlier_detection, None);
    assert_eq!(http.load_balancer.policy, trellis_contract::LbPolicy::RoundRobin);
    // 5432's port-level entry has no pool: the port gets none (no inheritance, as in Istio).
    let db = cluster(&payment, 5432);
    assert_eq!(db.connection_pool, trellis_contract::ConnectionPool::default());
    assert_eq!(pool_source(db), "-");
    // Another Service's pods are untouched.
    let web = sidecar(&s, "web-1");
    assert_eq!(cluster(&web, 8080).connection_pool.max_connections, u32::MAX);
    assert_eq!(pool_source(cluster(&web, 8080)), "-");
    // The outbound cluster to payment takes the same pool, as before.
    let outbound = web
        .clusters
        .iter()
        .find(|c| c.name == "outbound|80||payment.shop.svc.cluster.local")
        .expect("web's cluster to payment");
    assert_eq!(outbound.connection_pool.max_connections, 10);

    // Port-level settings match the Service's port (80), not the application's (8080).
    let s = snapshot(&payment_rule(
        r#"
    connectionPool: {tcp: {maxConnections: 10}}
    portLevelSettings:
    - port: {number: 80}
      connectionPool: {http: {http1MaxPendingRequests: 4}}
    - port: {number: 8080}
      connectionPool: {tcp: {maxConnections: 99}}
"#,
    ));
    let payment = sidecar(&s, "payment-1");
    assert_eq!(limits(cluster(&payment, 8080)), (u32::MAX, 4), "port 80's entry, whole");
    assert_eq!(
        pool_source(cluster(&payment, 8080)),
        "DestinationRule shop/payment trafficPolicy.portLevelSettings[0]"
    );
    assert_eq!(cluster(&payment, 5432).connection_pool.max_connections, 10);
}

/// A Sidecar's inbound pool (an ingress listener's, else `inboundConnectionPool`) takes
/// precedence over the rule's, and replaces it whole (Istio:
/// `opts.policy.ConnectionPool = sidecarConnPool`).
#[test]
fn a_sidecars_inbound_pool_takes_precedence_over_the_destination_rules() {
    let rule = payment_rule("{connectionPool: {tcp: {maxConnections: 10}, http: {http1MaxPendingRequests: 3}}}");
    let s = snapshot(&format!(
        "{rule}---\n{}",
        namespace_sidecar(
            r#"
  inboundConnectionPool: {http: {http1MaxPendingRequests: 50}}
  ingress:
  - port: {number: 5432, protocol: TCP, name: tcp-db}
    connectionPool: {tcp: {maxConnections: 7}}
"#
        )
    ));
    let payment = sidecar(&s, "payment-1");
    let http = cluster(&payment, 8080);
    assert_eq!(limits(http), (u32::MAX, 50), "the Sidecar's pool, whole");
    assert_eq!(pool_source(http), "Sidecar shop/default");
    let db = cluster(&payment, 5432);
    assert_eq!(db.connection_pool.max_connections, 7);
    assert_eq!(pool_source(db), "Sidecar shop/default ingress[0]");
    // A Sidecar without a pool leaves the rule's.
    let s = snapshot(&format!(
        "{rule}---\n{}",
        namespace_sidecar(r#"{egress: [{hosts: ["./*"]}]}"#)
    ));
    let http = sidecar(&s, "payment-1");
    assert_eq!(cluster(&http, 8080).connection_pool.max_connections, 10);
}

/// The rule is part of the pod's own configuration: changing it recompiles the own part of
/// the pods of its Service's namespace.
#[test]
fn a_destination_rule_change_recompiles_its_services_inbound_side() {
    let before = snapshot("");
    let after = snapshot(&payment_rule("{connectionPool: {tcp: {maxConnections: 10}}}"));
    let c = changes(&before, &after);
    assert!(c.own_changed(&ObjectKey::new("shop", "payment-1")), "{c:?}");
    assert!(!c.own_changed(&ObjectKey::new("other", "payment-1")), "{c:?}");
}
