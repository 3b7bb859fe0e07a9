//! A DestinationRule's `portLevelSettings` and subset policies resolved as Istio resolves them
//! (`GetPortLevelTrafficPolicy`, `MergeSubsetTrafficPolicy`; `compile::policy`): a port's entry
//! replaces the rule's policy whole, a subset's policy merges into that block by block, and a
//! subset's own port entry replaces the four port blocks whole — the same on the outbound
//! clusters to the host and on the inbound clusters of its pods, and named in each cluster's
//! provenance.

use trellis_contract::{Cluster, LbPolicy, ProxyConfig, RetryBudget};
use trellis_core::compile::Role;

#[path = "support/workloads.rs"]
mod workloads;
use workloads::{SERVICES, compiled, pod};

const PAYMENT: &str = "payment.shop.svc.cluster.local";

/// Payment's pod, with its proxy: clusters to it take automatic mutual TLS.
const PAYMENT_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: payment-1, namespace: shop, labels: {app: payment}}
spec: {containers: [{name: app, image: payment}, {name: trellis-proxy, image: trellis-proxy}]}
status: {podIP: 10.244.1.2, phase: Running, conditions: [{type: Ready, status: "True"}]}
"#;

/// Routes to payment's subset `v1` on both ports (a subset's clusters exist where a route
/// names the subset).
const TO_V1: &str = r#"
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {name: payment, namespace: shop}
spec:
  hosts: [payment]
  http: [{route: [{destination: {host: payment, port: {number: 80}, subset: v1}}]}]
  tcp: [{match: [{port: 5432}], route: [{destination: {host: payment, port: {number: 5432}, subset: v1}}]}]
"#;

/// The config of `pod` with payment's DestinationRule `spec` (YAML under `spec:`), and routes
/// to its subset `v1` if it defines subsets.
fn config(spec: &str, pod_name: &str) -> ProxyConfig {
    let rule = format!(
        "apiVersion: networking.trellis.dev/v1alpha1\nkind: DestinationRule\nmetadata: {{name: payment, namespace: shop}}\nspec:\n  host: payment\n{spec}"
    );
    let routes = if spec.contains("subsets:") { TO_V1 } else { "" };
    let s = workloads::snapshot(&[
        SERVICES,
        &pod("shop", "web-1", "web", "10.244.1.1"),
        PAYMENT_POD,
        &rule,
        routes,
    ]);
    let c = compiled(&s, "shop", pod_name, Role::Sidecar);
    assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
    c.config
}

fn cluster<'a>(c: &'a ProxyConfig, name: &str) -> &'a Cluster {
    c.clusters
        .iter()
        .find(|cl| cl.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

/// Web's outbound cluster to payment's `port` (and `subset`).
fn outbound(c: &ProxyConfig, port: u16, subset: &str) -> Cluster {
    cluster(c, &format!("outbound|{port}|{subset}|{PAYMENT}")).clone()
}

/// Where a cluster's settings came from, in words, as `meshctl proxy-config clusters` says it.
fn from(c: &Cluster) -> String {
    c.provenance.as_ref().map_or("-".into(), |p| p.describe())
}

fn budget(percent: u32, min: u32) -> Option<RetryBudget> {
    Some(RetryBudget {
        budget_basis_points: percent * 100,
        min_retry_concurrency: min,
    })
}

/// The rule's policy with every block, and port 80's entry with only a pool.
const RULE_AND_PORT: &str = r#"
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool: {tcp: {maxConnections: 10}}
    outlierDetection: {consecutive5xxErrors: 2}
    retryBudget: {percent: 50}
    portLevelSettings:
    - port: {number: 80}
      connectionPool: {http: {http1MaxPendingRequests: 7}}
"#;

/// "Traffic settings specified at the destination-level will not be inherited when
/// overridden by port-level settings, i.e. default values will be applied to fields omitted in
/// port-level traffic policies" (istio/api): port 80 has the entry's pool and nothing of the
/// rule's — no outlier detection, the default load balancer, no retry budget —; port 5432
/// keeps the rule's. The old block-by-block merge gave port 80 the rule's outlier detection,
/// load balancer and budget.
#[test]
fn a_port_entry_replaces_the_rules_policy_whole() {
    let web = config(RULE_AND_PORT, "web-1");
    let http = outbound(&web, 80, "");
    assert_eq!(
        http.outlier_detection, None,
        "the rule's outlierDetection is not inherited"
    );
    assert_eq!(
        http.load_balancer.policy,
        LbPolicy::LeastRequest,
        "the default balancer"
    );
    assert_eq!(
        http.connection_pool.retry_budget, None,
        "a port entry has no retry budget"
    );
    assert_eq!(
        (
            http.connection_pool.max_connections,
            http.connection_pool.max_pending_requests
        ),
        (u32::MAX, 7),
        "the entry's pool, whole"
    );
    assert_eq!(
        from(&http),
        "DestinationRule shop/payment trafficPolicy.portLevelSettings[0]"
    );

    let db = outbound(&web, 5432, "");
    assert_eq!(db.outlier_detection.as_ref().map(|o| o.consecutive_5xx), Some(2));
    assert_eq!(db.load_balancer.policy, LbPolicy::Random);
    assert_eq!(db.connection_pool.retry_budget, budget(50, 3));
    assert_eq!(db.connection_pool.max_connections, 10);
    assert_eq!(from(&db), "DestinationRule shop/payment trafficPolicy");

    // The same resolution on the receiving side: payment's inbound cluster for Service port 80
    // takes the entry's pool (and names it), 5432's the rule's.
    let payment = config(RULE_AND_PORT, "payment-1");
    let inbound = cluster(&payment, "inbound|8080||");
    assert_eq!(
        (
            inbound.connection_pool.max_connections,
            inbound.connection_pool.max_pending_requests
        ),
        (u32::MAX, 7)
    );
    assert_eq!(
        from(inbound),
        "DestinationRule shop/payment trafficPolicy.portLevelSettings[0]"
    );
    assert_eq!(cluster(&payment, "inbound|5432||").connection_pool.max_connections, 10);
}

/// A port entry replaces the rule's `tls` too: the rule's `DISABLE` does not hold on port 80,
/// whose entry sets none — the cluster takes automatic mutual TLS to payment's meshed pods, as
/// without a rule.
#[test]
fn a_port_entry_without_tls_leaves_the_port_to_automatic_mutual_tls() {
    let spec = r#"
  trafficPolicy:
    tls: {mode: DISABLE}
    portLevelSettings:
    - port: {number: 80}
      connectionPool: {http: {http1MaxPendingRequests: 7}}
"#;
    let web = config(spec, "web-1");
    let without_rule = config("", "web-1");
    let auto = outbound(&without_rule, 80, "").tls;
    assert!(matches!(auto, trellis_contract::UpstreamTls::Mesh { .. }), "{auto:?}");
    assert_eq!(outbound(&web, 80, "").tls, auto);
    assert_eq!(outbound(&web, 5432, "").tls, trellis_contract::UpstreamTls::Disable);
}

/// A subset's policy merges into the policy in force for the port — the port entry's, when the
/// rule has one, not the rule's — block by block: each block the subset sets replaces that
/// block whole, the others stay. The old merge gave v1's port 80 the rule's outlier detection.
#[test]
fn a_subsets_policy_merges_into_the_ports_block_by_block() {
    let spec = format!(
        "{RULE_AND_PORT}  subsets:\n  - name: v1\n    labels: {{app: payment}}\n    trafficPolicy:\n      loadBalancer: {{simple: ROUND_ROBIN}}\n      connectionPool: {{tcp: {{maxConnections: 3}}}}\n"
    );
    let web = config(&spec, "web-1");
    let http = outbound(&web, 80, "v1");
    assert_eq!(http.load_balancer.policy, LbPolicy::RoundRobin, "the subset's block");
    assert_eq!(
        (
            http.connection_pool.max_connections,
            http.connection_pool.max_pending_requests
        ),
        (3, u32::MAX),
        "the subset's pool replaces the port's whole, not field by field"
    );
    assert_eq!(http.outlier_detection, None, "port 80 has none: neither has v1 there");
    assert_eq!(http.connection_pool.retry_budget, None);
    assert_eq!(
        from(&http),
        "DestinationRule shop/payment trafficPolicy.portLevelSettings[0] + subsets[0].trafficPolicy"
    );
    // On 5432 (no entry) the subset merges into the rule's policy.
    let db = outbound(&web, 5432, "v1");
    assert_eq!(db.load_balancer.policy, LbPolicy::RoundRobin);
    assert_eq!(db.connection_pool.max_connections, 3);
    assert_eq!(db.outlier_detection.as_ref().map(|o| o.consecutive_5xx), Some(2));
    assert_eq!(db.connection_pool.retry_budget, budget(50, 3));
    assert_eq!(
        from(&db),
        "DestinationRule shop/payment trafficPolicy + subsets[0].trafficPolicy"
    );
}

/// A subset's own port entry replaces the four port blocks whole — the subset's and the
/// rule's, set or not —; the rule's retry budget stays (a port entry has none), the subset's
/// own does not apply on that port (Istio's `MergeTrafficPolicy` with `hasPortLevel`). The old
/// merge kept the rule's outlier detection and the subset's pool and budget.
#[test]
fn a_subsets_port_entry_replaces_the_port_blocks_whole() {
    let spec = r#"
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    outlierDetection: {consecutive5xxErrors: 2}
    retryBudget: {percent: 50}
  subsets:
  - name: v1
    labels: {app: payment}
    trafficPolicy:
      connectionPool: {tcp: {maxConnections: 3}}
      retryBudget: {percent: 10, minRetryConcurrency: 1}
      portLevelSettings:
      - port: {number: 80}
        loadBalancer: {simple: ROUND_ROBIN}
"#;
    let web = config(spec, "web-1");
    let http = outbound(&web, 80, "v1");
    assert_eq!(http.load_balancer.policy, LbPolicy::RoundRobin);
    assert_eq!(http.outlier_detection, None, "the rule's outlierDetection is replaced");
    assert_eq!(http.connection_pool.max_connections, u32::MAX, "the subset's pool too");
    assert_eq!(
        http.connection_pool.retry_budget,
        budget(50, 3),
        "the rule's budget stays"
    );
    assert_eq!(
        from(&http),
        "DestinationRule shop/payment trafficPolicy + subsets[0].trafficPolicy.portLevelSettings[0]"
    );
    // On 5432 the subset's policy merges block by block, its budget included.
    let db = outbound(&web, 5432, "v1");
    assert_eq!(db.load_balancer.policy, LbPolicy::Random);
    assert_eq!(db.outlier_detection.as_ref().map(|o| o.consecutive_5xx), Some(2));
    assert_eq!(db.connection_pool.max_connections, 3);
    assert_eq!(db.connection_pool.retry_budget, budget(10, 1));

    // Without a rule-level policy, the subset's port entry alone.
    let spec = r#"
  subsets:
  - name: v1
    labels: {app: payment}
    trafficPolicy:
      outlierDetection: {consecutive5xxErrors: 4}
      portLevelSettings:
      - port: {number: 80}
        loadBalancer: {simple: ROUND_ROBIN}
"#;
    let web = config(spec, "web-1");
    let http = outbound(&web, 80, "v1");
    assert_eq!(
        (http.load_balancer.policy.clone(), http.outlier_detection.clone()),
        (LbPolicy::RoundRobin, None)
    );
    assert_eq!(
        from(&http),
        "DestinationRule shop/payment subsets[0].trafficPolicy.portLevelSettings[0]"
    );
    assert_eq!(
        outbound(&web, 5432, "v1")
            .outlier_detection
            .as_ref()
            .map(|o| o.consecutive_5xx),
        Some(4)
    );
}
