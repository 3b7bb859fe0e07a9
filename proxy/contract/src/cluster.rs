//! Clusters: upstream destinations (a service, or a subset of one), their load
//! balancing, connection pools, outlier detection, upstream TLS and endpoints.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An upstream destination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// Unique name; Istio style `outbound|8080|v1|payment.shop.svc.cluster.local`.
    pub name: String,
    /// The service FQDN (`destination_service` metric label).
    #[serde(default)]
    pub service: Option<String>,
    /// Subset name, when the cluster is a DestinationRule subset.
    #[serde(default)]
    pub subset: Option<String>,
    /// Upstream protocol.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Load balancing.
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// TCP connect timeout.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Connection pool limits.
    #[serde(default)]
    pub connection_pool: ConnectionPool,
    /// Passive health checking.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// When fewer than this percentage of endpoints are healthy, balance over
    /// all of them (Envoy's panic threshold, default 50 %; 0 disables).
    #[serde(default = "default_panic")]
    pub panic_threshold_percent: f64,
    /// TLS towards the endpoints.
    #[serde(default)]
    pub tls: UpstreamTls,
    /// How the endpoints' addresses are found (ServiceEntry `resolution`).
    #[serde(default, skip_serializing_if = "Discovery::is_static")]
    pub discovery: Discovery,
    /// Endpoints.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// The DestinationRule whose policy shaped this cluster (subset, load balancing, pool,
    /// outlier detection, TLS) — on an inbound cluster, the Sidecar or DestinationRule its
    /// connection pool came from —, so `meshctl proxy-config clusters` can say where its
    /// settings came from, as routes name their VirtualService rule; none: no rule applies
    /// (defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<crate::Provenance>,
}

fn default_connect_timeout() -> u64 {
    // Istio's default (MeshConfig `connectTimeout`), which the operator also compiles.
    10_000
}

fn default_panic() -> f64 {
    50.0
}

/// How a cluster's endpoint addresses are found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Discovery {
    /// The endpoints' addresses are IP addresses, used as given.
    #[default]
    Static,
    /// Each endpoint's address is a host name (or an IP address) the proxy resolves, with
    /// its DNS settings' upstreams, and refreshes while the cluster is used; every address
    /// an answer holds is an endpoint (Envoy's STRICT_DNS; ServiceEntry `resolution: DNS`).
    Dns,
    /// As `dns`, but only the first address of each answer is used (Envoy's LOGICAL_DNS;
    /// ServiceEntry `resolution: DNS_ROUND_ROBIN`).
    DnsFirstAddress,
    /// No endpoints: each connection goes to the address the client dialled (its original
    /// destination, Envoy's ORIGINAL_DST; ServiceEntry `resolution: NONE` and the
    /// passthrough of `outboundTrafficPolicy: ALLOW_ANY`).
    OriginalDestination,
}

impl Discovery {
    /// Whether this is [`Discovery::Static`] (the default, not serialized).
    pub fn is_static(&self) -> bool {
        *self == Discovery::Static
    }

    /// Whether the proxy resolves the endpoints' names.
    pub fn resolves(&self) -> bool {
        matches!(self, Discovery::Dns | Discovery::DnsFirstAddress)
    }
}

/// Upstream application protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 upstream.
    #[default]
    Http1,
    /// HTTP/2 upstream (prior knowledge, or ALPN `h2` under TLS); gRPC.
    Http2,
    /// Same protocol as the downstream request.
    UseDownstream,
    /// Opaque TCP.
    Tcp,
}

/// Load balancing policy and its hash key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadBalancer {
    /// The algorithm.
    pub policy: LbPolicy,
    /// Hash key source for `ringHash` and `maglev`; without one they hash the
    /// source IP.
    pub hash_key: Option<HashKey>,
}

/// Load balancing algorithm.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LbPolicy {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two choices on active requests (weighted).
    LeastRequest,
    /// Weighted random.
    Random,
    /// Consistent hashing on a ring (Ketama).
    #[serde(rename_all = "camelCase")]
    RingHash {
        /// Minimum ring entries (default 1024).
        #[serde(default = "default_ring")]
        minimum_ring_size: u32,
    },
    /// Maglev consistent hashing.
    #[serde(rename_all = "camelCase")]
    Maglev {
        /// Lookup table size; must be prime (default 65537).
        #[serde(default = "default_maglev")]
        table_size: u32,
    },
}

fn default_ring() -> u32 {
    1024
}

fn default_maglev() -> u32 {
    65_537
}

/// Where consistent hashing takes its key from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HashKey {
    /// A request header value.
    Header(String),
    /// A cookie value.
    #[serde(rename_all = "camelCase")]
    Cookie {
        /// Cookie name.
        name: String,
        /// Path of a generated cookie (cookies are only read, never set, for now).
        #[serde(default)]
        path: Option<String>,
    },
    /// The downstream peer IP.
    SourceIp,
    /// A query parameter.
    QueryParam(String),
}

/// Connection pool and circuit-breaking limits (Envoy's circuit breakers and upstream
/// connection options, as Istio compiles a DestinationRule's `connectionPool`).
///
/// The fields added after the first release are optional and left out of the JSON when
/// unset, so a config written before them still parses and means what it meant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConnectionPool {
    /// Maximum concurrent requests in flight to the cluster (HTTP/1 this bounds
    /// connections, since each carries one request at a time). Default `u32::MAX`: no limit,
    /// as Istio sets Envoy's circuit breakers unless a DestinationRule says otherwise.
    pub max_connections: u32,
    /// Maximum requests waiting for a connection; beyond, 503 with flag `UO`. Default
    /// `u32::MAX` (Istio's).
    pub max_pending_requests: u32,
    /// An upstream connection takes at most this many requests (HTTP/1 requests, HTTP/2
    /// streams), then no new one: HTTP/1 closes it after the last answer, HTTP/2 drains it;
    /// 0 = unlimited.
    pub max_requests_per_connection: u32,
    /// Close an upstream HTTP/1 connection idle in the pool this long, and an HTTP/2
    /// connection with no stream open this long (with a GOAWAY) — a timer, as Envoy's
    /// upstream `idle_timeout`.
    pub idle_timeout_ms: u64,
    /// Idle connections kept per endpoint.
    pub max_idle_per_endpoint: u32,
    /// Maximum requests active on the cluster at once (Envoy's `max_requests`, Istio's
    /// `http2MaxRequests`); one more is answered 503 with flag `UO` at once, never queued,
    /// and never counts against an endpoint's health. `None`: unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Maximum retries in flight to the cluster at once (Envoy's `max_retries`, Istio's
    /// `maxRetries`), from the moment a retry is decided until its attempt is answered;
    /// a retry beyond it is not made and the answer it would have replaced is returned.
    /// `None`: unlimited (Istio's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Retries in flight allowed as a share of the cluster's requests (Envoy's circuit
    /// breakers' `retry_budget`, Istio's `trafficPolicy.retryBudget`); when set it takes the
    /// place of `max_retries`, as in Envoy. `None`: `max_retries` bounds retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    /// Maximum concurrent streams on one upstream HTTP/2 connection (Istio's
    /// `maxConcurrentStreams`); more requests open more connections. `None`: unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<u32>,
    /// An upstream HTTP connection lives at most this long from when it was opened (Istio's
    /// `tcp.maxConnectionDuration` of the cluster's policy): it is drained (no new requests,
    /// closed when its requests are answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connection_duration_ms: Option<u64>,
    /// Idle timeout of proxied TCP connections to the cluster (Envoy's TCP proxy
    /// `idle_timeout`, which Istio takes from the rule's top-level `tcp.idleTimeout` only);
    /// `None`: the listener's (Istio's default, 1 h).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_idle_timeout_ms: Option<u64>,
    /// A proxied TCP connection to the cluster is closed this long after it was opened
    /// (Envoy's TCP proxy `max_downstream_connection_duration`, which Istio takes from the
    /// rule's top-level `tcp.maxConnectionDuration` only); `None`: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_max_connection_duration_ms: Option<u64>,
    /// TCP keepalive on upstream sockets (Istio's `tcp.tcpKeepalive`); `None`: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Maximum proxied (opaque) TCP connections open to the cluster at once (Istio's
    /// `tcp.maxConnections`, which Envoy's TCP proxy applies to connections); one more is
    /// closed on arrival. `None`: unlimited (Istio's default; `maxConnections` above bounds
    /// HTTP requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tcp_connections: Option<u32>,
    /// HTTP/2 PINGs on the cluster's upstream HTTP/2 connections (Istio's
    /// `http.http2KeepAlive`, Envoy's `http2_protocol_options.connection_keepalive`): one
    /// every `intervalMs`, whether streams are open or not; a PING unanswered for `timeoutMs`
    /// closes the connection, and the next request opens a new one. `None`: the proxy's own
    /// (a PING every 30 s while a stream is open, 20 s to answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_keepalive: Option<Http2Keepalive>,
}

impl Default for ConnectionPool {
    fn default() -> Self {
        Self {
            // why: Istio sets every circuit-breaker threshold of Envoy's to MaxUint32 unless
            // the user sets it (Envoy's own default, 1024, cuts a busy cluster short).
            max_connections: u32::MAX,
            max_pending_requests: u32::MAX,
            max_requests_per_connection: 0,
            idle_timeout_ms: 60_000,
            max_idle_per_endpoint: 64,
            max_requests: None,
            max_retries: None,
            retry_budget: None,
            max_concurrent_streams: None,
            max_connection_duration_ms: None,
            tcp_idle_timeout_ms: None,
            tcp_max_connection_duration_ms: None,
            tcp_keepalive: None,
            max_tcp_connections: None,
            http2_keepalive: None,
        }
    }
}

/// Envoy's retry budget: at most `max(min_retry_concurrency, budget × (active + pending
/// requests))` retries in flight on the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// The share, in hundredths of a percent (2000 = Istio's default 20 %), 0-10000.
    pub budget_basis_points: u32,
    /// Retries allowed in flight whatever the share (Istio's default 3).
    pub min_retry_concurrency: u32,
}

/// `SO_KEEPALIVE` on an upstream socket, with the probes' timing (`TCP_KEEPIDLE`,
/// `TCP_KEEPINTVL`, `TCP_KEEPCNT`); an unset field keeps the system's value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpKeepalive {
    /// Idle time before the first probe, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_secs: Option<u32>,
    /// Time between probes, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u32>,
    /// Unanswered probes before the connection is dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
}

/// HTTP/2 PING keepalive on upstream connections (Envoy's `KeepaliveSettings`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Http2Keepalive {
    /// Time between PINGs, in milliseconds; at least 1.
    pub interval_ms: u64,
    /// How long a PING may go unanswered before the connection is closed, in milliseconds;
    /// at least 1.
    pub timeout_ms: u64,
}

/// Passive health checking (Istio `OutlierDetection`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutlierDetection {
    /// Consecutive 5xx (and connect failures) before ejection; 0 disables.
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 and connect failures before ejection; 0 disables.
    pub consecutive_gateway_errors: u32,
    /// Base ejection time; multiplied by the number of times ejected.
    pub base_ejection_time_ms: u64,
    /// At most this percentage of endpoints are ejected at once.
    pub max_ejection_percent: f64,
    /// Time between ejection sweeps: an ejected endpoint returns at the first sweep after its
    /// ejection time, and each sweep it stays healthy takes one off its ejection multiplier.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Count failures that happen on the proxy's side (connect failures, resets, timeouts)
    /// apart from the upstream's 5xx answers, ejecting after
    /// `consecutiveLocalOriginFailures` of them (Envoy's `split_external_local_origin_errors`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub split_external_local_origin_errors: bool,
    /// With `splitExternalLocalOriginErrors`: consecutive local failures before ejection;
    /// 0 disables.
    #[serde(default = "default_local_origin")]
    pub consecutive_local_origin_failures: u32,
}

fn default_interval() -> u64 {
    // Envoy's and Istio's default.
    10_000
}

fn default_local_origin() -> u32 {
    // Envoy's default `consecutive_local_origin_failure`.
    5
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_errors: 0,
            base_ejection_time_ms: 30_000,
            max_ejection_percent: 10.0,
            interval_ms: default_interval(),
            split_external_local_origin_errors: false,
            consecutive_local_origin_failures: default_local_origin(),
        }
    }
}

/// TLS towards a cluster's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UpstreamTls {
    /// Plaintext.
    #[default]
    Disable,
    /// Mesh mTLS with the proxy's workload certificate. The peer's certificate
    /// must chain to the trust bundle and carry exactly one of these SPIFFE IDs
    /// as URI SAN (an endpoint's own `identity`, when set, takes precedence).
    #[serde(rename_all = "camelCase")]
    Mesh {
        /// Accepted peer identities.
        expected_identities: Vec<String>,
        /// Server name sent in the ClientHello (DestinationRule `sni`, e.g. for
        /// an egress gateway routing on it); `None`: the service's name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sni: Option<String>,
    },
    /// TLS the proxy originates to a destination outside the mesh (Istio's
    /// DestinationRule `tls` modes SIMPLE and MUTUAL).
    Originate(Box<OriginateTls>),
}

/// TLS originated to a non-mesh destination: the server is verified against
/// `ca` (or the system's roots) and `crl`, and, by name, against `subjectAltNames` (or
/// `sni`); with a `clientCertificate` the connection is mutual.
///
/// # Caveats
/// An inline client key is secret material: `/config_dump` redacts it
/// ([`crate::ProxyConfig::redacted`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginateTls {
    /// Server name sent in the ClientHello (an IP address sends none) and,
    /// without `subjectAltNames`, the name the certificate must be valid for.
    pub sni: String,
    /// Roots the server's chain must lead to; `None`: the system's roots.
    #[serde(default)]
    pub ca: Option<crate::identity::PemSource>,
    /// Certificate revocation lists (PEM, `X509 CRL`) of the server chain's issuers
    /// (DestinationRule `caCrl`): a server certificate one of them revokes is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<crate::identity::PemSource>,
    /// Names the server certificate must carry one of (DNS names, IP
    /// addresses or URIs such as SPIFFE IDs); empty: `sni`.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// Accept any server certificate (testing only): neither chain nor name
    /// is checked.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Client certificate presented to the server (MUTUAL).
    #[serde(default)]
    pub client_certificate: Option<crate::identity::CertificateRef>,
}

impl UpstreamTls {
    /// A copy that is safe to show: an inline client key replaced by `<redacted>`.
    pub fn redacted(&self) -> Self {
        match self {
            Self::Originate(o) => Self::Originate(Box::new(OriginateTls {
                client_certificate: o.client_certificate.as_ref().map(|c| c.redacted()),
                ..(**o).clone()
            })),
            other => other.clone(),
        }
    }
}

/// One upstream address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// IP address; with [`Discovery::Dns`] also a host name the proxy resolves.
    pub address: String,
    /// Port.
    pub port: u16,
    /// LB weight (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Workload labels (`app`, `version` ... for telemetry).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Health as known to the control plane.
    #[serde(default)]
    pub health: HealthStatus,
    /// The endpoint's SPIFFE ID (mesh mTLS verifies exactly this one).
    #[serde(default)]
    pub identity: Option<String>,
}

fn one() -> u32 {
    1
}

/// Health of an endpoint as known to the control plane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HealthStatus {
    /// Receives traffic.
    #[default]
    Healthy,
    /// Receives traffic only in panic mode.
    Unhealthy,
    /// Terminating: no new requests.
    Draining,
}
