//! DestinationRule: policies applied to traffic for a service after routing (subsets, load
//! balancing, connection pools, outlier detection, TLS to the upstream).

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::schema::{preserve_unknown_object, unsupported};
use crate::status::ConfigStatus;

use super::PortSelector;

/// Policies applied to traffic for a service after routing: load balancing, connection pools,
/// outlier detection, TLS, and the named subsets (versions) VirtualServices route to.
///
/// Istio equivalent: `networking.istio.io/v1 DestinationRule`.
#[skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "networking.trellis.dev",
    version = "v1alpha1",
    kind = "DestinationRule",
    doc = "Policies for traffic to a service after routing, and its subsets (Istio DestinationRule).",
    plural = "destinationrules",
    namespaced,
    shortname = "dr",
    category = "trellis",
    status = "ConfigStatus",
    printcolumn = r#"{"name":"Host", "type":"string", "jsonPath":".spec.host", "description":"The service this rule applies to"}"#,
    printcolumn = r#"{"name":"Age", "type":"date", "jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = unsupported("workloadSelector", "remove it; a DestinationRule applies to all clients in its scope"))]
pub struct DestinationRuleSpec {
    /// The service: a short name resolved in the resource's namespace, or an FQDN.
    pub host: String,
    /// Policy for all traffic to the host.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named sets of endpoints selected by labels (e.g. versions).
    pub subsets: Option<Vec<Subset>>,
    /// Namespaces this rule is visible to: `.`, `*`, or names.
    pub export_to: Option<Vec<String>>,
    /// Not supported by Trellis yet.
    #[serde(default)]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub workload_selector: Option<serde_json::Value>,
}

/// Traffic policy for a host, subset or port.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = unsupported("tunnel", "remove it; Trellis does not tunnel over HTTP CONNECT yet"),
    validation = unsupported("proxyProtocol", "remove it; Trellis does not send PROXY protocol headers yet")
)]
pub struct TrafficPolicy {
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Passive health checking: eject endpoints that keep failing.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS used when connecting to the host.
    pub tls: Option<ClientTlsSettings>,
    /// Per-port overrides.
    pub port_level_settings: Option<Vec<PortTrafficPolicy>>,
    /// Not supported by Trellis yet.
    #[serde(default)]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub tunnel: Option<serde_json::Value>,
    /// Not supported by Trellis yet.
    #[serde(default)]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub proxy_protocol: Option<serde_json::Value>,
    /// Retries in flight to the host bounded by a share of its requests, in place of
    /// `connectionPool.http.maxRetries` (Envoy's retry budget).
    pub retry_budget: Option<RetryBudget>,
}

/// Retries allowed in flight as a share of the requests active and waiting on the host
/// (Istio's `TrafficPolicy.RetryBudget`, Envoy's circuit breakers' `retry_budget`).
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = unsupported(
    "budgetInterval",
    "remove it; the budget counts the requests active and waiting when a retry is decided, as Envoy does without an interval"
))]
pub struct RetryBudget {
    /// Share of the active requests that may be retries, 0-100 (Istio's default 20).
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: Option<f64>,
    /// Retries always allowed whatever the share (Istio's default 3).
    pub min_retry_concurrency: Option<u32>,
    /// Not supported by Trellis yet.
    pub budget_interval: Option<String>,
}

/// A traffic policy for one port.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    /// The port this policy applies to.
    pub port: Option<PortSelector>,
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Passive health checking.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS used when connecting.
    pub tls: Option<ClientTlsSettings>,
}

/// A named subset of a service's endpoints.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    /// Subset name, referenced by `destination.subset` (a DNS label such as `v1`).
    pub name: String,
    /// Endpoint labels that select the subset's pods.
    pub labels: Option<BTreeMap<String, String>>,
    /// Policy overriding the rule's for this subset.
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Load balancing: exactly one of `simple` or `consistentHash`.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::cel::Rule::new("!(has(self.simple) && has(self.consistentHash))")
        .message("set only one of simple or consistentHash"),
    validation = unsupported("localityLbSetting", "remove it; Trellis is not locality-aware yet"),
    validation = unsupported("zoneAwareLbSetting", "remove it; Trellis is not locality-aware yet")
)]
pub struct LoadBalancerSettings {
    /// A simple algorithm.
    pub simple: Option<SimpleLb>,
    /// Session affinity by hashing a request property.
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Not supported by Trellis yet.
    #[serde(default)]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub locality_lb_setting: Option<serde_json::Value>,
    /// Not supported by Trellis yet.
    #[serde(default)]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub zone_aware_lb_setting: Option<serde_json::Value>,
    /// Ramp traffic up to new endpoints over this duration (e.g. `60s`).
    pub warmup_duration_secs: Option<String>,
    /// Ramp traffic up to new endpoints.
    pub warmup: Option<WarmupConfiguration>,
}

/// Simple load-balancing algorithms.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// Unspecified: the proxy's default (least request).
    Unspecified,
    /// Least request (deprecated name).
    LeastConn,
    /// Pick endpoints at random.
    Random,
    /// Forward to the address the caller asked for, without load balancing.
    Passthrough,
    /// Each endpoint in turn.
    RoundRobin,
    /// The lighter of two random endpoints (power of two choices).
    LeastRequest,
}

/// Consistent hashing: exactly one hash key, and optionally the ring algorithm.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    // A sum, not `[…].filter(x, x).size()`: see StringMatch (the filter form exceeded the API
    // server's cost budget 8.7×).
    validation = kube::core::cel::Rule::new(
        "(has(self.httpHeaderName) ? 1 : 0) + (has(self.httpCookie) ? 1 : 0) + (has(self.useSourceIp) ? 1 : 0) + (has(self.httpQueryParameterName) ? 1 : 0) == 1"
    ).message("set exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName"),
    validation = kube::core::cel::Rule::new("!(has(self.ringHash) && has(self.maglev))")
        .message("set only one of ringHash or maglev"),
    validation = unsupported("minimumRingSize", "use ringHash: {minimumRingSize: N}")
)]
pub struct ConsistentHashLb {
    /// Hash on this request header.
    pub http_header_name: Option<String>,
    /// Hash on this cookie (generated when absent if a `ttl` is given).
    pub http_cookie: Option<HttpCookie>,
    /// Hash on the client's IP address.
    pub use_source_ip: Option<bool>,
    /// Hash on this query parameter.
    pub http_query_parameter_name: Option<String>,
    /// Use a ring hash (the default).
    pub ring_hash: Option<RingHash>,
    /// Use Maglev.
    pub maglev: Option<MagLev>,
    /// Not supported by Trellis yet (deprecated in Istio): use `ringHash.minimumRingSize`.
    pub minimum_ring_size: Option<u64>,
}

/// A cookie used as a hash key.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = unsupported(
    "attributes",
    "remove it; Trellis generates no cookie to give attributes to (ttl is not supported yet either): the application sets the cookie"
))]
pub struct HttpCookie {
    /// Cookie name.
    pub name: String,
    /// Cookie path.
    pub path: Option<String>,
    /// Lifetime of a generated cookie, e.g. `1h`.
    pub ttl: Option<String>,
    /// Not supported by Trellis yet.
    pub attributes: Option<Vec<CookieAttribute>>,
}

/// An attribute of a generated cookie (Istio's `HTTPCookie.Attribute`; refused).
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CookieAttribute {
    /// Attribute name, e.g. `SameSite`.
    pub name: String,
    /// Attribute value, e.g. `Strict`.
    pub value: Option<String>,
}

/// Ring hash settings.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RingHash {
    /// Minimum number of virtual nodes on the ring (default 1024, at most 8M).
    #[schemars(range(min = 1, max = 8388608))]
    pub minimum_ring_size: Option<u64>,
}

/// Maglev settings.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MagLev {
    /// Lookup table size; must be prime (default 65537).
    #[schemars(range(min = 1, max = 5000011))]
    pub table_size: Option<u64>,
}

/// Slow start for new endpoints.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WarmupConfiguration {
    /// Length of the warm-up window, e.g. `60s`.
    pub duration: String,
    /// Traffic share a new endpoint starts with, 0-100 (default 10).
    pub minimum_percent: Option<f64>,
    /// Curve of the ramp, at least 1.0 (1.0 = linear).
    pub aggression: Option<f64>,
}

/// Connection pool limits.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPoolSettings {
    /// TCP-level limits.
    pub tcp: Option<TcpSettings>,
    /// HTTP-level limits.
    pub http: Option<HttpSettings>,
}

/// TCP-level connection pool limits.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    /// Maximum connections to each endpoint... of the destination host in total.
    #[schemars(range(min = 1))]
    pub max_connections: Option<i32>,
    /// TCP connect timeout, e.g. `1s`.
    pub connect_timeout: Option<String>,
    /// TCP keepalive probes.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Close connections after this long, e.g. `1h`.
    pub max_connection_duration: Option<String>,
    /// Close connections idle this long, e.g. `1h`.
    pub idle_timeout: Option<String>,
}

/// TCP keepalive settings.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TcpKeepalive {
    /// Unanswered probes before the connection is dead.
    #[schemars(range(min = 1))]
    pub probes: Option<u32>,
    /// Idle time before the first probe, e.g. `2h`.
    pub time: Option<String>,
    /// Time between probes, e.g. `75s`.
    pub interval: Option<String>,
}

/// HTTP-level connection pool limits.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpSettings {
    /// Maximum requests queued while waiting for a connection.
    #[schemars(range(min = 1))]
    pub http1_max_pending_requests: Option<i32>,
    /// Maximum active requests to the destination.
    #[schemars(range(min = 1))]
    pub http2_max_requests: Option<i32>,
    /// Maximum requests per connection; 1 disables keep-alive.
    #[schemars(range(min = 0))]
    pub max_requests_per_connection: Option<i32>,
    /// Maximum outstanding retries to the destination.
    #[schemars(range(min = 0))]
    pub max_retries: Option<i32>,
    /// Close upstream connections idle this long, e.g. `1h`.
    pub idle_timeout: Option<String>,
    /// Whether HTTP/1.1 upstream connections are upgraded to HTTP/2.
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Use the client's protocol (HTTP/1.1 or HTTP/2) upstream.
    pub use_client_protocol: Option<bool>,
    /// Maximum concurrent streams per HTTP/2 connection.
    #[schemars(range(min = 1))]
    pub max_concurrent_streams: Option<i32>,
    /// HTTP/2 PINGs on the upstream HTTP/2 connections: a connection whose PING goes
    /// unanswered for `timeout` is closed (Envoy's `connection_keepalive`).
    pub http2_keep_alive: Option<ConnectionKeepalive>,
}

/// HTTP/2 PING frames on upstream HTTP/2 connections (Istio's
/// `HTTPSettings.ConnectionKeepalive`): both fields are required.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionKeepalive {
    /// Time between PINGs, e.g. `30s`.
    pub interval: Option<String>,
    /// How long a PING may go unanswered before the connection is closed, e.g. `10s`.
    pub timeout: Option<String>,
}

/// HTTP/2 upgrade policy.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// Mesh default.
    Default,
    /// Keep HTTP/1.1.
    DoNotUpgrade,
    /// Upgrade to HTTP/2.
    Upgrade,
}

/// Passive health checking (outlier detection).
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = unsupported("consecutiveErrors", "use consecutiveGatewayErrors or consecutive5xxErrors"),
    validation = unsupported(
        "outlierDetectionHttpErrorCodes",
        "remove it; consecutive5xxErrors counts every 5xx, consecutiveGatewayErrors 502, 503 and 504"
    )
)]
pub struct OutlierDetection {
    /// Split local-origin errors (connect failures) from upstream 5xx.
    pub split_external_local_origin_errors: Option<bool>,
    /// Consecutive local-origin failures before ejection.
    #[schemars(range(min = 0))]
    pub consecutive_local_origin_failures: Option<u32>,
    /// Consecutive 502/503/504 before ejection.
    #[schemars(range(min = 0))]
    pub consecutive_gateway_errors: Option<u32>,
    /// Consecutive 5xx before ejection (default 5).
    #[schemars(range(min = 0))]
    pub consecutive_5xx_errors: Option<u32>,
    /// Time between ejection sweeps, e.g. `10s`.
    pub interval: Option<String>,
    /// Minimum ejection duration, multiplied by the number of ejections, e.g. `30s`.
    pub base_ejection_time: Option<String>,
    /// Most endpoints that may be ejected, 0-100 % (default 10).
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: Option<i32>,
    /// Panic threshold: below this share of healthy endpoints, ejection is ignored, 0-100 %.
    #[schemars(range(min = 0, max = 100))]
    pub min_health_percent: Option<i32>,
    /// Not supported by Trellis yet (deprecated in Istio).
    pub consecutive_errors: Option<i32>,
    /// Not supported by Trellis yet.
    pub outlier_detection_http_error_codes: Option<Vec<u32>>,
}

/// TLS settings for connections to a destination.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClientTlsSettings {
    /// TLS mode.
    pub mode: Option<ClientTlsMode>,
    /// Client certificate file (MUTUAL).
    pub client_certificate: Option<String>,
    /// Client private key file (MUTUAL).
    pub private_key: Option<String>,
    /// CA certificates file used to verify the server.
    pub ca_certificates: Option<String>,
    /// Certificate revocation list file (PEM) the server's certificate is checked against
    /// (SIMPLE, MUTUAL); with `credentialName`, the Secret's `ca.crl` instead.
    pub ca_crl: Option<String>,
    /// Secret holding the client certificate, key and CA (`tls.crt`, `tls.key`, `ca.crt`) and
    /// optionally the CA's revocation list (`ca.crl`).
    pub credential_name: Option<String>,
    /// Accepted server subject alternative names.
    pub subject_alt_names: Option<Vec<String>>,
    /// SNI sent to the server.
    pub sni: Option<String>,
    /// Skip server verification (only for testing).
    pub insecure_skip_verify: Option<bool>,
}

/// TLS modes for upstream connections.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    /// Plaintext.
    Disable,
    /// TLS, verifying the server.
    Simple,
    /// Mutual TLS with a user-supplied client certificate.
    Mutual,
    /// Mutual TLS with the mesh's workload certificates (Istio's name, accepted as-is).
    IstioMutual,
    /// Trellis' name for ISTIO_MUTUAL.
    MeshMutual,
}
