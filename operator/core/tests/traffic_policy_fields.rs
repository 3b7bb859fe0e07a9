//! Every field of a DestinationRule's `trafficPolicy` is compiled or refused: none is
//! accepted and dropped.
//!
//! The fields are read from the DestinationRule CRD's schema, so a field added to the type is
//! walked here at once, and fails until it has a sample in [`SAMPLES`]. Each sample is set,
//! at each place a traffic policy goes (the rule's, a port's `portLevelSettings`, a subset's),
//! on the payment rule of the clean shop (`tests/analysis/base.yaml`). Then either the one
//! validator refuses it, or the clusters compiled for payment differ from those compiled
//! without it (or with another value of it): what the user wrote reached the proxy's config.

use std::path::Path;

use serde_json::{Value, json};
use trellis_api::document::parse_documents;
use trellis_api::validation::{Outcome, Severity, Validator};
use trellis_core::compile::{Role, compile};
use trellis_core::registry::ObjectKey;
use trellis_core::snapshot::Snapshot;

/// One field's sample: its path under a traffic policy, the policy it is added to (what else
/// it needs to mean anything), its value, and another value to compare with (`None`: compare
/// with the policy without the field).
struct Sample {
    path: &'static str,
    context: Value,
    value: Value,
    other: Option<Value>,
}

fn sample(path: &'static str, value: Value) -> Sample {
    Sample {
        path,
        context: json!({}),
        value,
        other: None,
    }
}

fn within(path: &'static str, context: Value, value: Value) -> Sample {
    Sample {
        path,
        context,
        value,
        other: None,
    }
}

fn versus(path: &'static str, context: Value, value: Value, other: Value) -> Sample {
    Sample {
        path,
        context,
        value,
        other: Some(other),
    }
}

/// A sample of every field; the outlier fields within an `outlierDetection` that already
/// ejects (its presence alone changes the cluster), a hash's ring within a hash.
#[rustfmt::skip]
fn samples() -> Vec<Sample> {
    let header_hash = |ring: Value| json!({"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user", "ringHash": ring}}});
    let maglev = json!({"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user", "maglev": {}}}});
    let cookie = json!({"loadBalancer": {"consistentHash": {"httpCookie": {"name": "session"}}}});
    let od = |v: Value| json!({"outlierDetection": v});
    let keepalive = |v: Value| json!({"connectionPool": {"tcp": {"tcpKeepalive": v}}});
    let simple = json!({"tls": {"mode": "SIMPLE"}});
    let mutual = |v: Value| json!({"tls": v});
    vec![
        sample("loadBalancer.simple", json!("RANDOM")),
        versus("loadBalancer.consistentHash.httpHeaderName", json!({}), json!("x-user"), json!("x-tenant")),
        versus("loadBalancer.consistentHash.httpCookie.name", json!({}), json!("session"), json!("cart")),
        within("loadBalancer.consistentHash.httpCookie.path", cookie.clone(), json!("/cart")),
        within("loadBalancer.consistentHash.httpCookie.ttl", cookie.clone(), json!("60s")),
        within("loadBalancer.consistentHash.httpCookie.attributes", cookie, json!([{"name": "SameSite", "value": "Strict"}])),
        sample("loadBalancer.consistentHash.useSourceIp", json!(true)),
        versus("loadBalancer.consistentHash.httpQueryParameterName", json!({}), json!("user"), json!("tenant")),
        within("loadBalancer.consistentHash.ringHash.minimumRingSize", header_hash(json!({})), json!(4096)),
        within("loadBalancer.consistentHash.maglev.tableSize", maglev, json!(251)),
        within("loadBalancer.consistentHash.minimumRingSize", header_hash(json!({})), json!(4096)),
        sample("loadBalancer.localityLbSetting", json!({"enabled": true})),
        sample("loadBalancer.zoneAwareLbSetting", json!({"enabled": true})),
        sample("loadBalancer.warmupDurationSecs", json!("30s")),
        sample("loadBalancer.warmup.duration", json!("60s")),
        within("loadBalancer.warmup.minimumPercent", json!({"loadBalancer": {"warmup": {"duration": "60s"}}}), json!(20)),
        within("loadBalancer.warmup.aggression", json!({"loadBalancer": {"warmup": {"duration": "60s"}}}), json!(2.0)),
        sample("connectionPool.tcp.maxConnections", json!(10)),
        sample("connectionPool.tcp.connectTimeout", json!("2s")),
        sample("connectionPool.tcp.maxConnectionDuration", json!("1h")),
        sample("connectionPool.tcp.idleTimeout", json!("30m")),
        within("connectionPool.tcp.tcpKeepalive.time", keepalive(json!({"probes": 3})), json!("60s")),
        within("connectionPool.tcp.tcpKeepalive.interval", keepalive(json!({"probes": 3})), json!("10s")),
        within("connectionPool.tcp.tcpKeepalive.probes", keepalive(json!({"time": "60s"})), json!(3)),
        sample("connectionPool.http.http1MaxPendingRequests", json!(10)),
        sample("connectionPool.http.http2MaxRequests", json!(10)),
        sample("connectionPool.http.maxRequestsPerConnection", json!(5)),
        sample("connectionPool.http.maxRetries", json!(3)),
        sample("connectionPool.http.idleTimeout", json!("5m")),
        sample("connectionPool.http.h2UpgradePolicy", json!("UPGRADE")),
        sample("connectionPool.http.useClientProtocol", json!(true)),
        sample("connectionPool.http.maxConcurrentStreams", json!(10)),
        // On a cluster that speaks HTTP/2 (payment's port is HTTP/1): upgraded.
        versus("connectionPool.http.http2KeepAlive.interval", json!({"connectionPool": {"http": {"h2UpgradePolicy": "UPGRADE", "http2KeepAlive": {"timeout": "10s"}}}}), json!("30s"), json!("1m")),
        versus("connectionPool.http.http2KeepAlive.timeout", json!({"connectionPool": {"http": {"h2UpgradePolicy": "UPGRADE", "http2KeepAlive": {"interval": "30s"}}}}), json!("10s"), json!("20s")),
        within("outlierDetection.splitExternalLocalOriginErrors", od(json!({"consecutive5xxErrors": 3})), json!(true)),
        within("outlierDetection.consecutiveLocalOriginFailures", od(json!({"splitExternalLocalOriginErrors": true})), json!(2)),
        within("outlierDetection.consecutiveGatewayErrors", od(json!({"consecutive5xxErrors": 3})), json!(2)),
        within("outlierDetection.consecutive5xxErrors", od(json!({"interval": "5s"})), json!(2)),
        within("outlierDetection.interval", od(json!({"consecutive5xxErrors": 3})), json!("1s")),
        within("outlierDetection.baseEjectionTime", od(json!({"consecutive5xxErrors": 3})), json!("1m")),
        within("outlierDetection.maxEjectionPercent", od(json!({"consecutive5xxErrors": 3})), json!(50)),
        within("outlierDetection.minHealthPercent", od(json!({"consecutive5xxErrors": 3})), json!(20)),
        within("outlierDetection.consecutiveErrors", od(json!({"interval": "5s"})), json!(3)),
        within("outlierDetection.outlierDetectionHttpErrorCodes", od(json!({"consecutive5xxErrors": 3})), json!([500, 503])),
        sample("tls.mode", json!("SIMPLE")),
        versus("tls.clientCertificate", mutual(json!({"mode": "MUTUAL", "privateKey": "/etc/certs/key.pem"})), json!("/etc/certs/a.pem"), json!("/etc/certs/b.pem")),
        versus("tls.privateKey", mutual(json!({"mode": "MUTUAL", "clientCertificate": "/etc/certs/cert.pem"})), json!("/etc/certs/a.pem"), json!("/etc/certs/b.pem")),
        within("tls.caCertificates", simple.clone(), json!("/etc/certs/ca.pem")),
        within("tls.caCrl", simple.clone(), json!("/etc/certs/ca.crl")),
        within("tls.credentialName", simple.clone(), json!("payment-client")),
        within("tls.subjectAltNames", simple.clone(), json!(["payment.example.com"])),
        within("tls.sni", simple.clone(), json!("payment.example.com")),
        within("tls.insecureSkipVerify", simple, json!(true)),
        sample("tunnel", json!({"protocol": "CONNECT", "targetHost": "payment.example.com", "targetPort": 443})),
        sample("proxyProtocol", json!({"version": "V1"})),
        sample("retryBudget.percent", json!(20)),
        sample("retryBudget.minRetryConcurrency", json!(3)),
        sample("retryBudget.budgetInterval", json!("10s")),
    ]
}

/// The DestinationRule CRD's schema of `spec`.
fn spec_schema() -> Value {
    let crd = trellis_api::crd::all()
        .into_iter()
        .find(|c| c.spec.names.kind == "DestinationRule")
        .expect("the DestinationRule CRD");
    let crd = serde_json::to_value(crd).expect("a CRD serializes");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
}

/// The paths of the leaves under `schema` (a field with no properties of its own).
fn leaves(schema: &Value, prefix: &str, out: &mut Vec<String>) {
    match schema.get("properties").and_then(Value::as_object) {
        Some(props) => {
            for (k, v) in props {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(v, &path, out);
            }
        }
        None => out.push(prefix.to_string()),
    }
}

/// `policy` with `value` at the dotted `path`.
fn with(policy: &Value, path: &str, value: &Value) -> Value {
    let mut out = policy.clone();
    let mut at = &mut out;
    let parts: Vec<&str> = path.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        at = at
            .as_object_mut()
            .expect("an object on the way")
            .entry(p.to_string())
            .or_insert_with(|| json!({}));
    }
    at[parts[parts.len() - 1]] = value.clone();
    out
}

/// Where a traffic policy goes on the payment rule.
#[derive(Clone, Copy, Debug)]
enum Place {
    Rule,
    Port,
    Subset,
}

fn rule(place: Place, policy: &Value) -> Value {
    let subsets = |v1: Value| json!([{"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": v1}, {"name": "v2", "labels": {"version": "v2"}}]);
    let spec = match place {
        Place::Rule => json!({"host": "payment", "trafficPolicy": policy, "subsets": subsets(json!(null))}),
        Place::Port => {
            let mut port = policy.clone();
            port["port"] = json!({"number": 8080});
            json!({"host": "payment", "trafficPolicy": {"portLevelSettings": [port]}, "subsets": subsets(json!(null))})
        }
        Place::Subset => json!({"host": "payment", "subsets": subsets(policy.clone())}),
    };
    let mut spec = spec;
    if let Some(subsets) = spec["subsets"].as_array_mut() {
        for s in subsets {
            if s["trafficPolicy"].is_null() {
                s.as_object_mut().expect("a subset").remove("trafficPolicy");
            }
        }
    }
    json!({
        "apiVersion": "networking.trellis.dev/v1alpha1",
        "kind": "DestinationRule",
        "metadata": {"name": "payment", "namespace": "shop"},
        "spec": spec,
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

/// The errors the validator finds in `dr`.
fn errors(validator: &Validator, dr: &Value) -> Vec<String> {
    match validator.validate(dr) {
        Outcome::Validated { findings, .. } => findings
            .into_iter()
            .filter(|f| f.severity == Severity::Error)
            .map(|f| format!("{}: {}", f.path, f.message))
            .collect(),
        Outcome::Skipped(why) => panic!("not validated: {why}"),
    }
}

#[test]
fn every_traffic_policy_field_in_the_schema_has_a_sample() {
    let schema = spec_schema();
    let mut fields = Vec::new();
    leaves(&schema["properties"]["trafficPolicy"], "", &mut fields);
    fields.retain(|f| f != "portLevelSettings");
    let sampled: Vec<&str> = samples().iter().map(|s| s.path).collect();
    let missing: Vec<&String> = fields.iter().filter(|f| !sampled.contains(&f.as_str())).collect();
    assert!(
        missing.is_empty(),
        "trafficPolicy fields without a sample in SAMPLES (add one, then compile or refuse the field): {missing:?}"
    );
    let unknown: Vec<&&str> = sampled.iter().filter(|s| !fields.iter().any(|f| f == *s)).collect();
    assert!(
        unknown.is_empty(),
        "samples of fields the schema does not have: {unknown:?}"
    );
    // A port's policy and a subset's have the rule's fields (a port's, not tunnel or
    // proxyProtocol, which Istio has only on the rule's).
    let port = &schema["properties"]["trafficPolicy"]["properties"]["portLevelSettings"]["items"]["properties"];
    for k in port.as_object().expect("portLevelSettings items").keys() {
        assert!(
            k == "port" || schema["properties"]["trafficPolicy"]["properties"].get(k).is_some(),
            "{k}"
        );
    }
    let subset = &schema["properties"]["subsets"]["items"]["properties"]["trafficPolicy"]["properties"];
    assert_eq!(
        subset, &schema["properties"]["trafficPolicy"]["properties"],
        "a subset's trafficPolicy is a TrafficPolicy"
    );
}

#[test]
fn every_traffic_policy_field_is_compiled_or_refused() {
    let validator = Validator::new();
    let base = base();
    let schema = spec_schema();
    let port_fields = &schema["properties"]["trafficPolicy"]["properties"]["portLevelSettings"]["items"]["properties"];
    let mut dropped = Vec::new();
    let (mut compiled, mut refused) = (0, 0);
    for s in samples() {
        let head = s.path.split('.').next().expect("a path");
        for place in [Place::Rule, Place::Port, Place::Subset] {
            if matches!(place, Place::Port) && port_fields.get(head).is_none() {
                continue;
            }
            let set = rule(place, &with(&s.context, s.path, &s.value));
            let found = errors(&validator, &set);
            if !found.is_empty() {
                refused += 1;
                continue;
            }
            let compare = match &s.other {
                Some(other) => rule(place, &with(&s.context, s.path, other)),
                None => rule(place, &s.context),
            };
            assert!(
                errors(&validator, &compare).is_empty(),
                "{} at {place:?}: the comparison is not valid: {:?}",
                s.path,
                errors(&validator, &compare)
            );
            if payment_clusters(&base, &set) == payment_clusters(&base, &compare) {
                dropped.push(format!("{} at {place:?} (value {})", s.path, s.value));
            } else {
                compiled += 1;
            }
        }
    }
    assert!(
        dropped.is_empty(),
        "accepted by the validator and dropped by the compiler (compile them, or refuse them with \"not supported by Trellis yet\" and the fix):\n{}",
        dropped.join("\n")
    );
    eprintln!("trafficPolicy fields at each place: {compiled} compiled, {refused} refused");
    assert!(compiled > 80 && refused > 10, "{compiled} compiled, {refused} refused");
}

/// The pool payment's v1 cluster gets from `policy` at the rule's level.
fn pool_of(base: &[Value], policy: Value) -> trellis_contract::ConnectionPool {
    let clusters = payment_clusters(base, &rule(Place::Rule, &policy));
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
                     "maxConcurrentStreams": 3, "maxRequestsPerConnection": 5,
                     "h2UpgradePolicy": "UPGRADE",
                     "http2KeepAlive": {"interval": "1s", "timeout": "500ms"}},
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
        retry_budget: None,
        max_concurrent_streams: Some(3),
        max_connection_duration_ms: Some(90_000),
        tcp_idle_timeout_ms: Some(20 * 60_000),
        tcp_max_connection_duration_ms: Some(90_000),
        // Whole seconds, as Istio sets Envoy's keepalive.
        tcp_keepalive: Some(trellis_contract::TcpKeepalive {
            time_secs: Some(60),
            interval_secs: Some(1),
            probes: Some(4),
        }),
        max_tcp_connections: Some(7),
        // Envoy's connection_keepalive, to the millisecond.
        http2_keepalive: Some(trellis_contract::Http2Keepalive {
            interval_ms: 1000,
            timeout_ms: 500,
        }),
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

/// Istio's `retryBudget` as Istio sets Envoy's: 20 % and at least 3 unless given, the rule's
/// for every cluster of the host but those of a port with a `portLevelSettings` entry (which
/// replaces the rule's policy whole and has no budget: Istio's `shadowCopyPortTrafficPolicy`),
/// a subset's in its place for the subset.
#[test]
fn the_retry_budget_compiles_as_istio_sets_envoy() {
    let base = base();
    let budget = |bp: u32, min: u32| {
        Some(trellis_contract::RetryBudget {
            budget_basis_points: bp,
            min_retry_concurrency: min,
        })
    };
    assert_eq!(pool_of(&base, json!({"retryBudget": {}})).retry_budget, budget(2000, 3));
    assert_eq!(
        pool_of(
            &base,
            json!({"retryBudget": {"percent": 12.5, "minRetryConcurrency": 7}})
        )
        .retry_budget,
        budget(1250, 7)
    );
    let budgets = |dr: Value| -> Vec<Option<trellis_contract::RetryBudget>> {
        let clusters = payment_clusters(&base, &dr);
        let clusters = clusters.as_array().expect("clusters");
        clusters
            .iter()
            .map(|c| serde_json::from_value(c["connectionPool"]["retryBudget"].clone()).expect("a budget or none"))
            .collect()
    };
    // The rule's: every cluster of the host.
    let mut dr = rule(Place::Rule, &json!({"retryBudget": {"percent": 50}}));
    let all = budgets(dr.clone());
    assert!(all.len() >= 3, "{all:?}");
    assert!(all.iter().all(|b| *b == budget(5000, 3)), "{all:?}");
    // Not on a port with an entry of its own (payment's one port, 8080, here).
    let mut port = rule(Place::Port, &json!({"connectionPool": {"http": {"idleTimeout": "5m"}}}));
    port["spec"]["trafficPolicy"]["retryBudget"] = json!({"percent": 50});
    let all = budgets(port);
    assert!(all.len() >= 3 && all.iter().all(Option::is_none), "{all:?}");
    // A subset's replaces it for the subset's clusters only.
    dr["spec"]["subsets"][0]["trafficPolicy"] = json!({"retryBudget": {"percent": 10, "minRetryConcurrency": 1}});
    let all = budgets(dr);
    assert!(all.contains(&budget(1000, 1)), "{all:?}");
    assert!(all.contains(&budget(5000, 3)), "{all:?}");
}

/// `http2KeepAlive` as Istio sets Envoy's `connection_keepalive`: from the pool that applies to
/// the cluster — a port's in place of the rule's for that port, the rule's for other ports.
#[test]
fn http2_keepalive_compiles_per_port_as_istio_sets_envoy() {
    let base = base();
    let keepalives = |port: u16| -> Vec<Option<trellis_contract::Http2Keepalive>> {
        let port_level = json!({"connectionPool": {"http": {"h2UpgradePolicy": "UPGRADE", "http2KeepAlive": {"interval": "1s", "timeout": "2s"}}}});
        let mut dr = rule(Place::Port, &port_level);
        dr["spec"]["trafficPolicy"]["portLevelSettings"][0]["port"]["number"] = json!(port);
        dr["spec"]["trafficPolicy"]["connectionPool"] =
            json!({"http": {"h2UpgradePolicy": "UPGRADE", "http2KeepAlive": {"interval": "30s", "timeout": "10s"}}});
        let clusters = payment_clusters(&base, &dr);
        clusters
            .as_array()
            .expect("clusters")
            .iter()
            .map(|c| {
                let pool: trellis_contract::ConnectionPool =
                    serde_json::from_value(c["connectionPool"].clone()).expect("a connection pool");
                pool.http2_keepalive
            })
            .collect()
    };
    let keepalive = |interval_ms: u64, timeout_ms: u64| {
        Some(trellis_contract::Http2Keepalive {
            interval_ms,
            timeout_ms,
        })
    };
    // payment's one port, 8080: the port's settings.
    let all = keepalives(8080);
    assert!(all.len() >= 3, "{all:?}");
    assert!(all.iter().all(|k| *k == keepalive(1000, 2000)), "{all:?}");
    // Settings for another port: the rule's.
    let all = keepalives(9090);
    assert!(all.iter().all(|k| *k == keepalive(30_000, 10_000)), "{all:?}");
}

/// `http2KeepAlive` lands on clusters that speak HTTP/2 only, as Istio sets Envoy's
/// `connection_keepalive` on a cluster's explicit HTTP/2 options (`applyConnectionPool`): a
/// port named `http2`/`grpc`, or one upgraded by `h2UpgradePolicy: UPGRADE` — and not on a
/// cluster that speaks the client's protocol, `useClientProtocol` (upgraded or not) or a port of
/// unknown protocol, whose HTTP/2 options Istio builds anew without it (`setUseDownstreamProtocol`).
#[test]
fn http2_keepalive_is_set_on_clusters_that_speak_http2_only() {
    use trellis_contract::UpstreamProtocol;
    let ka = json!({"interval": "1s", "timeout": "2s"});
    let compiled = |base: &[Value], http: Value| -> (UpstreamProtocol, Option<trellis_contract::Http2Keepalive>) {
        let clusters = payment_clusters(base, &rule(Place::Rule, &json!({"connectionPool": {"http": http}})));
        let c = &clusters[0];
        let pool: trellis_contract::ConnectionPool =
            serde_json::from_value(c["connectionPool"].clone()).expect("a connection pool");
        (
            serde_json::from_value(c["protocol"].clone()).expect("a protocol"),
            pool.http2_keepalive,
        )
    };
    let set = Some(trellis_contract::Http2Keepalive {
        interval_ms: 1000,
        timeout_ms: 2000,
    });
    // payment's port is `http`: HTTP/1 unless upgraded.
    let base = base();
    assert_eq!(
        compiled(&base, json!({"http2KeepAlive": ka})),
        (UpstreamProtocol::Http1, None)
    );
    assert_eq!(
        compiled(&base, json!({"h2UpgradePolicy": "UPGRADE", "http2KeepAlive": ka})),
        (UpstreamProtocol::Http2, set.clone())
    );
    assert_eq!(
        compiled(&base, json!({"useClientProtocol": true, "http2KeepAlive": ka})),
        (UpstreamProtocol::UseDownstream, None)
    );
    assert_eq!(
        compiled(
            &base,
            json!({"h2UpgradePolicy": "UPGRADE", "useClientProtocol": true, "http2KeepAlive": ka})
        ),
        (UpstreamProtocol::UseDownstream, None)
    );
    // The port named for its protocol: `grpc` speaks HTTP/2, an unnamed one the client's.
    let named = |name: &str| -> Vec<Value> {
        let mut base = base.clone();
        for v in &mut base {
            if v["kind"] == "Service" && v["metadata"]["name"] == "payment" {
                v["spec"]["ports"][0]["name"] = json!(name);
            }
        }
        base
    };
    assert_eq!(
        compiled(&named("grpc"), json!({"http2KeepAlive": ka})),
        (UpstreamProtocol::Http2, set)
    );
    assert_eq!(
        compiled(&named("payments"), json!({"http2KeepAlive": ka})),
        (UpstreamProtocol::UseDownstream, None)
    );
}

/// Istio's TCP proxy takes its idle timeout and maximum connection duration from the rule's
/// top-level pool only; a port's or subset's pool replaces the rule's for the cluster's HTTP
/// connections, and leaves proxied TCP with the rule's.
#[test]
fn proxied_tcp_takes_the_rules_own_idle_timeout_and_duration() {
    let base = base();
    let pools = |dr: Value| -> Vec<trellis_contract::ConnectionPool> {
        let clusters = payment_clusters(&base, &dr);
        clusters
            .as_array()
            .expect("clusters")
            .iter()
            .map(|c| serde_json::from_value(c["connectionPool"].clone()).expect("a connection pool"))
            .collect()
    };
    let rule_level = json!({"connectionPool": {"tcp": {"idleTimeout": "20m", "maxConnectionDuration": "1h"}}});
    let below = json!({"connectionPool": {"tcp": {"idleTimeout": "5m", "maxConnectionDuration": "90s"}}});
    // The rule's own: every cluster of the host, subsets included, and HTTP too.
    for pool in pools(rule(Place::Rule, &rule_level)) {
        assert_eq!(
            (pool.tcp_idle_timeout_ms, pool.tcp_max_connection_duration_ms),
            (Some(20 * 60_000), Some(3_600_000))
        );
        assert_eq!(
            (pool.idle_timeout_ms, pool.max_connection_duration_ms),
            (20 * 60_000, Some(3_600_000))
        );
    }
    // A port's or a subset's alone: HTTP connections only; proxied TCP keeps the listener's.
    for place in [Place::Port, Place::Subset] {
        let all = pools(rule(place, &below));
        let shaped: Vec<_> = all.iter().filter(|p| p.idle_timeout_ms == 5 * 60_000).collect();
        assert!(!shaped.is_empty(), "{place:?}: no cluster shaped: {all:?}");
        for pool in &shaped {
            assert_eq!(pool.max_connection_duration_ms, Some(90_000), "{place:?}");
        }
        for pool in &all {
            assert_eq!(
                (pool.tcp_idle_timeout_ms, pool.tcp_max_connection_duration_ms),
                (None, None),
                "{place:?}"
            );
        }
    }
    // Both: the port's shapes its HTTP connections, the rule's bounds proxied TCP.
    let mut both = rule(Place::Port, &below);
    both["spec"]["trafficPolicy"]["connectionPool"] = rule_level["connectionPool"].clone();
    let all = pools(both);
    let port = all
        .iter()
        .find(|p| p.idle_timeout_ms == 5 * 60_000)
        .expect("the port's pool");
    assert_eq!(
        (port.tcp_idle_timeout_ms, port.tcp_max_connection_duration_ms),
        (Some(20 * 60_000), Some(3_600_000))
    );
}
