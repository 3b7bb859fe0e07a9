//! A DestinationRule's `connectionPool` compiled as Istio sets Envoy's circuit breakers,
//! HTTP protocol options and upstream connection options, on the payment rule of the clean
//! shop (`tests/analysis/base.yaml`).

use std::path::Path;

use serde_json::{Value, json};
use trellis_api::document::parse_documents;
use trellis_core::compile::{Role, compile};
use trellis_core::registry::ObjectKey;
use trellis_core::snapshot::Snapshot;

/// The payment rule of the shop with `policy` as its traffic policy.
fn rule(policy: &Value) -> Value {
    json!({
        "apiVersion": "networking.trellis.dev/v1alpha1",
        "kind": "DestinationRule",
        "metadata": {"name": "payment", "namespace": "shop"},
        "spec": {"host": "payment", "trafficPolicy": policy,
                 "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]},
    })
}

fn base() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/analysis/base.yaml");
    parse_documents(&std::fs::read_to_string(path).expect("base.yaml"))
        .into_iter()
        .map(|d| d.content.expect("base parses"))
        .collect()
}

/// The outbound clusters of payment compiled for payment-v1's sidecar with `dr` as payment's
/// rule.
fn payment_clusters(base: &[Value], dr: &Value) -> Value {
    let mut s = Snapshot::default();
    for v in base
        .iter()
        .filter(|v| !(v["kind"] == "DestinationRule" && v["metadata"]["name"] == "payment"))
    {
        s.add(v).expect("base object");
    }
    s.add(dr).expect("the rule");
    let c = compile(&s, &ObjectKey::new("shop", "payment-v1"), Role::Sidecar, "v1")
        .expect("compiles")
        .config;
    let clusters: Vec<Value> = c
        .clusters
        .iter()
        .filter(|c| c.name.starts_with("outbound|") && c.service.as_deref() == Some("payment.shop.svc.cluster.local"))
        .map(|c| serde_json::to_value(c).expect("a cluster serializes"))
        .collect();
    assert!(!clusters.is_empty(), "payment has clusters");
    Value::Array(clusters)
}

/// The pool payment's v1 cluster gets from `policy` at the rule's level.
fn pool_of(base: &[Value], policy: Value) -> trellis_contract::ConnectionPool {
    let clusters = payment_clusters(base, &rule(&policy));
    serde_json::from_value(clusters[0]["connectionPool"].clone()).expect("a connection pool")
}

#[test]
fn the_connection_pool_compiles_as_istio_sets_envoy() {
    let base = base();
    let pool = pool_of(
        &base,
        json!({"connectionPool": {
            "tcp": {"maxConnections": 7, "maxConnectionDuration": "90s", "idleTimeout": "20m",
                    "tcpKeepalive": {"time": "60s", "interval": "1500ms", "probes": 4}},
            "http": {"http1MaxPendingRequests": 9, "http2MaxRequests": 11, "maxRetries": 2,
                     "maxConcurrentStreams": 3, "maxRequestsPerConnection": 5},
        }}),
    );
    let expected = trellis_contract::ConnectionPool {
        max_connections: 7,
        max_pending_requests: 9,
        max_requests_per_connection: 5,
        // Without http.idleTimeout, HTTP connections take the TCP one (Istio).
        idle_timeout_ms: 20 * 60_000,
        max_idle_per_endpoint: 64,
        max_requests: Some(11),
        max_retries: Some(2),
        max_concurrent_streams: Some(3),
        max_connection_duration_ms: Some(90_000),
        tcp_idle_timeout_ms: Some(20 * 60_000),
        // Whole seconds, as Istio sets Envoy's keepalive.
        tcp_keepalive: Some(trellis_contract::TcpKeepalive {
            time_secs: Some(60),
            interval_secs: Some(1),
            probes: Some(4),
        }),
        max_tcp_connections: Some(7),
    };
    assert_eq!(pool, expected);

    // http.idleTimeout is HTTP's own; maxRetries 0 is no limit, as Istio reads it.
    let pool = pool_of(
        &base,
        json!({"connectionPool": {"tcp": {"idleTimeout": "20m"}, "http": {"idleTimeout": "1m", "maxRetries": 0}}}),
    );
    assert_eq!(
        (pool.idle_timeout_ms, pool.tcp_idle_timeout_ms),
        (60_000, Some(20 * 60_000))
    );
    assert_eq!(pool.max_retries, None);
    // Nothing set: Trellis' defaults, none of the optional limits.
    assert_eq!(pool_of(&base, json!({})), trellis_contract::ConnectionPool::default());
}
