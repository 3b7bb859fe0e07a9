//! Prometheus metrics: Istio's standard metrics, with Istio's names, types,
//! buckets and labels, so Istio's Grafana dashboards, Kiali and users' alert
//! rules read them unchanged:
//!
//! | metric | type | what |
//! |---|---|---|
//! | `istio_requests_total` | counter | HTTP and gRPC requests |
//! | `istio_request_duration_milliseconds` | histogram | request start to the end of the response body |
//! | `istio_request_bytes` | histogram | request body sizes |
//! | `istio_response_bytes` | histogram | response body sizes |
//! | `istio_tcp_connections_opened_total`, `…_closed_total` | counter | opaque TCP connections |
//! | `istio_tcp_sent_bytes_total` | counter | bytes sent to the client (the response direction), counted as they flow |
//! | `istio_tcp_received_bytes_total` | counter | bytes received from the client (the request direction) |
//!
//! Labels, filled as Istio's `istio_stats` filter fills them: `reporter`
//! (`source` on the client side — sidecar outbound and gateways —,
//! `destination` on the server side), the `source_*` and `destination_*`
//! workload, namespace, principal, app, version, canonical service and
//! revision, and cluster; `destination_service` (the service FQDN), its
//! `_name` and `_namespace`; `request_protocol` (`http`, `grpc`, `tcp`),
//! `response_code`, `grpc_response_status` (empty unless gRPC),
//! `response_flags` (Envoy's short flags, `-` for none) and
//! `connection_security_policy` (`mutual_tls` or `none` on the server side,
//! `unknown` on the client side, where it cannot be known). A value nobody
//! knows is `unknown` (`latest` for a canonical revision). Durations and
//! sizes share Envoy's default buckets, as in Istio.
//!
//! Proxy-internal counters keep the `trellis_proxy_` prefix: they have no
//! Istio counterpart (Istio's are Envoy's own `envoy_*` statistics).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

mod by_cluster;

use by_cluster::ByCluster;

/// What a cluster's circuit breakers refused ([`Metrics::upstream_overflow`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// A request (`UO`): `maxConnections` with the pending queue full, or `maxRequests`.
    Request,
    /// A retry: `maxRetries` in flight.
    Retry,
    /// A proxied TCP connection: `maxTcpConnections` open.
    Connection,
}

/// Envoy's default histogram buckets, which Istio's standard metrics use for
/// durations (milliseconds) and sizes (bytes) alike; the contract's, so the
/// golden signals the proxy reports use the same.
const BUCKETS: &[f64] = &trellis_contract::signals::LATENCY_BUCKETS_MS;

/// Series per metric family (HTTP requests; TCP connections), at most: the
/// label values come from the mesh's workloads and from what clients and
/// servers send (verified peer metadata, status codes), so a bound keeps a
/// misbehaving peer from growing the proxy's memory and every scrape.
pub const MAX_SERIES: usize = 10_000;

/// What a label nobody knows reads.
pub const UNKNOWN: &str = "unknown";
/// What a canonical revision nobody knows reads (Istio's default).
const LATEST: &str = "latest";

/// The pod label naming a workload's canonical service (Istio's).
pub const CANONICAL_NAME_LABEL: &str = "service.istio.io/canonical-name";
/// The pod label naming a workload's canonical revision (Istio's).
pub const CANONICAL_REVISION_LABEL: &str = "service.istio.io/canonical-revision";

/// The identity of one side of a request, as labels. Empty fields render as
/// `unknown` (a canonical revision as `latest`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// Workload name.
    pub workload: String,
    /// Workload namespace.
    pub namespace: String,
    /// SPIFFE ID.
    pub principal: String,
    /// `app` label.
    pub app: String,
    /// `version` label.
    pub version: String,
    /// Canonical service ([`canonical_service`]).
    pub canonical_service: String,
    /// Canonical revision ([`canonical_revision`]).
    pub canonical_revision: String,
    /// Cluster id.
    pub cluster: String,
}

/// Only the workload and its namespace are hashed: peers equal in all their labels are equal in
/// those, and two that differ in the others alone (rare in one proxy's series) are told apart by
/// comparing them. why: every request's series is looked up by both peers' labels, and hashing
/// all eight strings of each was about 700 instructions of it.
impl std::hash::Hash for Peer {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.workload.hash(state);
        self.namespace.hash(state);
    }
}

/// A workload's canonical service, as Istio derives it from its labels:
/// `service.istio.io/canonical-name`, else `app.kubernetes.io/name`, else
/// `app`, else the workload's name.
pub fn canonical_service(labels: &BTreeMap<String, String>, workload: &str) -> String {
    [CANONICAL_NAME_LABEL, "app.kubernetes.io/name", "app"]
        .iter()
        .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
        .map_or_else(|| workload.to_string(), Clone::clone)
}

/// A workload's canonical revision, as Istio derives it:
/// `service.istio.io/canonical-revision`, else `app.kubernetes.io/version`,
/// else `version`, else `latest`.
pub fn canonical_revision(labels: &BTreeMap<String, String>) -> String {
    [CANONICAL_REVISION_LABEL, "app.kubernetes.io/version", "version"]
        .iter()
        .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
        .map_or_else(|| LATEST.to_string(), Clone::clone)
}

impl Peer {
    /// This proxy's own workload: the node the config describes, with the
    /// identity of its certificate.
    pub fn of_node(node: &trellis_contract::NodeInfo, principal: &str) -> Self {
        Self {
            workload: node.workload.clone(),
            namespace: node.namespace.clone(),
            principal: principal.to_string(),
            app: node.app.clone(),
            version: node.version.clone(),
            canonical_service: canonical_service(&node.labels, &node.workload),
            canonical_revision: canonical_revision(&node.labels),
            cluster: node.cluster.clone(),
        }
    }
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { UNKNOWN } else { s }
}

/// Which proxy reports a series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client side: a sidecar's outbound listener, or a gateway.
    #[default]
    Source,
    /// The server side: a sidecar's inbound listener.
    Destination,
}

impl Reporter {
    fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// `connection_security_policy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Security {
    /// The server side verified the client's mesh certificate.
    MutualTls,
    /// The server side took a plaintext connection.
    None,
    /// The client side, which cannot know the server's policy (Istio's value there).
    #[default]
    Unknown,
}

impl Security {
    fn as_str(self) -> &'static str {
        match self {
            Self::MutualTls => "mutual_tls",
            Self::None => "none",
            Self::Unknown => UNKNOWN,
        }
    }
}

/// Labels shared by HTTP and TCP series. The peers and the service are
/// shared, computed once per config (node, endpoints, clusters), so building
/// a request's labels allocates nothing on the client side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ConnLabels {
    /// Who reports.
    pub reporter: Reporter,
    /// The client.
    pub source: Arc<Peer>,
    /// The server.
    pub destination: Arc<Peer>,
    /// Destination service FQDN (empty: unknown).
    pub destination_service: Arc<str>,
    /// Envoy-style flags (`-`, `NR`, `UH`, `UF`, `URX`, `UT`, `UO`, `FI`, `DC`, …).
    pub response_flags: &'static str,
    /// `connection_security_policy`.
    pub security: Security,
}

/// Labels of one HTTP request series.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    /// Connection-level labels.
    pub conn: ConnLabels,
    /// A gRPC request (`request_protocol` `grpc`, else `http`).
    pub grpc: bool,
    /// Status sent downstream.
    pub response_code: u16,
    /// The gRPC status of a gRPC response, when it carried one.
    pub grpc_status: Option<u32>,
}

#[derive(Debug)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: [0; BUCKETS.len()],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    /// Counts the value in its own bucket only; [`Histogram::render`] sums
    /// them into Prometheus' cumulative buckets (one increment per request).
    fn observe(&mut self, v: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (b, n) in BUCKETS.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct RequestSeries {
    total: u64,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl RequestSeries {
    fn record(&mut self, duration_ms: f64, req_bytes: u64, resp_bytes: u64) {
        self.total += 1;
        self.duration.observe(duration_ms);
        self.request_bytes.observe(req_bytes as f64);
        self.response_bytes.observe(resp_bytes as f64);
    }
}

/// One HTTP series, shared by the registry (which renders it) and the connections that
/// recorded into it last ([`SeriesCache`]).
type SharedSeries = Arc<Mutex<RequestSeries>>;

/// The HTTP series a connection recorded its last request into, with that request's labels.
/// why: a connection's requests mostly share their labels (same client, route, cluster and
/// status), and finding the series in the registry hashes the whole label set and takes the
/// registry's lock — about 500 instructions a request; comparing the labels with the last
/// ones is cheaper (the peers and the service compare by pointer first).
#[derive(Debug, Default)]
pub struct SeriesCache(Mutex<Option<(RequestLabels, SharedSeries)>>);

/// A copy starts empty: it is a cache, the registry keeps the series.
impl Clone for SeriesCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// The counters of one TCP series, shared with the connections that feed
/// it: bytes are counted as they flow, so long-lived connections show in
/// every scrape, not only when they close.
#[derive(Debug, Default)]
pub struct TcpSeries {
    opened: AtomicU64,
    closed: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
}

impl TcpSeries {
    /// Bytes sent to the client.
    pub fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes received from the client.
    pub fn received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    /// The connection closed.
    pub fn closed(&self) {
        self.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// The series of one metric family by their labels. why: every request hashes its whole
/// label set (both peers' names, the service) to find its series; SipHash, the standard
/// map's, cost about 2k instructions a request there. foldhash is several times cheaper and
/// still seeded at random per process; [`MAX_SERIES`] bounds what a peer's labels can grow.
type SeriesMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The metrics registry of one proxy.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<SeriesMap<RequestLabels, SharedSeries>>,
    tcp: Mutex<SeriesMap<ConnLabels, Arc<TcpSeries>>>,
    config_applied: AtomicU64,
    config_rejected: AtomicU64,
    downstream_rejected: AtomicU64,
    downstream_overflow: AtomicU64,
    downstream_tls_failures: AtomicU64,
    outlier_ejections: AtomicU64,
    /// Upstream TLS handshakes that failed, by cluster.
    upstream_tls_failures: ByCluster,
    /// Requests refused by a cluster's circuit breakers (`UO`), by cluster.
    upstream_rq_overflow: ByCluster,
    /// Retries not made because of a cluster's `maxRetries` (or the route's budget).
    upstream_retry_overflow: ByCluster,
    /// Proxied TCP connections closed because of a cluster's `maxTcpConnections`.
    upstream_cx_overflow: ByCluster,
    app_scrape_failures: AtomicU64,
    series_overflow: AtomicU64,
    authz_audited: AtomicU64,
    tcp_denied: AtomicU64,
    jwt_rejected: AtomicU64,
}

impl Metrics {
    /// Record a finished HTTP request. A request that would open a series
    /// past [`MAX_SERIES`] is counted in `trellis_proxy_metric_series_overflow_total`
    /// instead.
    pub fn record_request(&self, labels: RequestLabels, duration_ms: f64, req_bytes: u64, resp_bytes: u64) {
        if let Some(series) = self.request_series(&labels) {
            series
                .lock()
                .expect("metrics lock")
                .record(duration_ms, req_bytes, resp_bytes);
        }
    }

    /// [`Metrics::record_request`] for a request of the connection that owns `cache`: the
    /// series is looked up in the registry only when the labels differ from its last
    /// request's.
    pub fn record_request_on(
        &self,
        cache: &SeriesCache,
        labels: RequestLabels,
        duration_ms: f64,
        req_bytes: u64,
        resp_bytes: u64,
    ) {
        let mut last = cache.0.lock().expect("series cache lock");
        if !matches!(&*last, Some((l, _)) if *l == labels) {
            let Some(series) = self.request_series(&labels) else {
                return;
            };
            *last = Some((labels, series));
        }
        if let Some((_, series)) = &*last {
            series
                .lock()
                .expect("metrics lock")
                .record(duration_ms, req_bytes, resp_bytes);
        }
    }

    /// The series of `labels`, opened if new; none (counted in
    /// `trellis_proxy_metric_series_overflow_total`) when that would pass [`MAX_SERIES`].
    fn request_series(&self, labels: &RequestLabels) -> Option<SharedSeries> {
        let mut map = self.requests.lock().expect("metrics lock");
        if let Some(series) = map.get(labels) {
            return Some(Arc::clone(series));
        }
        if map.len() >= MAX_SERIES {
            drop(map);
            self.series_overflow.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Arc::clone(map.entry(labels.clone()).or_default()))
    }

    /// A TCP connection was opened: its series, with the connection counted,
    /// for the connection to count its bytes and its close into.
    /// A connection that would open a series past [`MAX_SERIES`] counts
    /// into a series of its own that is never rendered (and in
    /// `trellis_proxy_metric_series_overflow_total`).
    pub fn tcp_opened(&self, labels: ConnLabels) -> Arc<TcpSeries> {
        let mut map = self.tcp.lock().expect("metrics lock");
        if map.len() >= MAX_SERIES && !map.contains_key(&labels) {
            drop(map);
            self.series_overflow.fetch_add(1, Ordering::Relaxed);
            return Arc::default();
        }
        let series = Arc::clone(map.entry(labels).or_default());
        series.opened.fetch_add(1, Ordering::Relaxed);
        series
    }

    /// A config was applied or rejected.
    pub fn config_result(&self, ok: bool) {
        if ok {
            self.config_applied.fetch_add(1, Ordering::Relaxed);
        } else {
            self.config_rejected.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A downstream request was rejected before routing (limits, malformed).
    pub fn downstream_rejected(&self) {
        self.downstream_rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// A downstream connection was closed at once: the connection budget was spent.
    pub fn downstream_overflow(&self) {
        self.downstream_overflow.fetch_add(1, Ordering::Relaxed);
    }

    /// A downstream TLS handshake failed or timed out (under STRICT mTLS: a
    /// plaintext client refused before anything reached the app).
    pub fn downstream_tls_failed(&self) {
        self.downstream_tls_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A TLS handshake with an endpoint of `cluster` failed: its certificate was refused
    /// (unknown issuer, wrong name or subject alternative names), or it refused ours.
    pub fn upstream_tls_failed(&self, cluster: &str) {
        self.upstream_tls_failures.inc(cluster);
    }

    /// A cluster's circuit breakers refused a request or a retry.
    pub fn upstream_overflow(&self, cluster: &str, what: Overflow) {
        match what {
            Overflow::Request => self.upstream_rq_overflow.inc(cluster),
            Overflow::Retry => self.upstream_retry_overflow.inc(cluster),
            Overflow::Connection => self.upstream_cx_overflow.inc(cluster),
        }
    }

    /// A request matched an AUDIT authorization policy (and was written to the audit log).
    pub fn authz_audited(&self) {
        self.authz_audited.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was refused (401) because its JWT failed verification.
    pub fn jwt_rejected(&self) {
        self.jwt_rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// An inbound or gateway TCP connection was closed because authorization denied it.
    pub fn tcp_denied(&self) {
        self.tcp_denied.fetch_add(1, Ordering::Relaxed);
    }

    /// An endpoint was ejected by outlier detection.
    pub fn outlier_ejected(&self) {
        self.outlier_ejections.fetch_add(1, Ordering::Relaxed);
    }

    /// Scraping the app's own metrics for merging failed.
    pub fn app_scrape_failed(&self) {
        self.app_scrape_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Count of requests matching a predicate (for tests and summaries).
    pub fn requests_where(&self, f: impl Fn(&RequestLabels) -> bool) -> u64 {
        let map = self.requests.lock().expect("metrics lock");
        map.iter()
            .filter(|(k, _)| f(k))
            .map(|(_, v)| v.lock().expect("metrics lock").total)
            .sum()
    }

    /// Calls `f` with every HTTP series: its labels, its request count and its duration
    /// histogram as counts per bucket of [`BUCKETS`] (not cumulative) followed by the count
    /// past the last bucket — what golden-signal reports are made of ([`crate::signals`]).
    pub fn each_request_series(&self, mut f: impl FnMut(&RequestLabels, u64, &[u64])) {
        let map = self.requests.lock().expect("metrics lock");
        let mut buckets = [0u64; BUCKETS.len() + 1];
        for (labels, s) in map.iter() {
            let s = s.lock().expect("metrics lock");
            buckets[..BUCKETS.len()].copy_from_slice(&s.duration.counts);
            buckets[BUCKETS.len()] = s.duration.count - s.duration.counts.iter().sum::<u64>();
            f(labels, s.total, &buckets);
        }
    }

    /// Prometheus text exposition format, deterministic order.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_requests(&mut out);
        self.render_tcp(&mut out);
        for (name, help, by_cluster) in [
            (
                "trellis_proxy_upstream_tls_failures_total",
                "Upstream TLS handshakes that failed (certificate refused either way), by cluster.",
                &self.upstream_tls_failures,
            ),
            (
                "trellis_proxy_upstream_rq_overflow_total",
                "Requests answered 503 UO by a cluster's circuit breakers (maxConnections with its pending queue full, or maxRequests active), by cluster.",
                &self.upstream_rq_overflow,
            ),
            (
                "trellis_proxy_upstream_retry_overflow_total",
                "Retries not made because a cluster's maxRetries (or the route's retry budget) were in flight, by cluster.",
                &self.upstream_retry_overflow,
            ),
            (
                "trellis_proxy_upstream_cx_overflow_total",
                "Proxied TCP connections closed on arrival because a cluster's maxConnections were open, by cluster.",
                &self.upstream_cx_overflow,
            ),
        ] {
            by_cluster.render(&mut out, name, help);
        }
        for (name, help, v) in [
            (
                "trellis_proxy_config_applied_total",
                "Configurations applied.",
                &self.config_applied,
            ),
            (
                "trellis_proxy_config_rejected_total",
                "Configurations rejected (NACKed; each attempt at one applied again counts); the last good one stayed.",
                &self.config_rejected,
            ),
            (
                "trellis_proxy_downstream_rejected_total",
                "Requests rejected before routing (malformed or over limits).",
                &self.downstream_rejected,
            ),
            (
                "trellis_proxy_downstream_cx_overflow_total",
                "Downstream connections closed on arrival because the connection budget was spent (overload).",
                &self.downstream_overflow,
            ),
            (
                "trellis_proxy_downstream_tls_failures_total",
                "Downstream TLS handshakes that failed or timed out (under STRICT mTLS: plaintext refused).",
                &self.downstream_tls_failures,
            ),
            (
                "trellis_proxy_outlier_ejections_total",
                "Endpoints ejected by outlier detection.",
                &self.outlier_ejections,
            ),
            (
                "trellis_proxy_metric_series_overflow_total",
                "Requests and connections not counted because their label set would have opened a series past the limit.",
                &self.series_overflow,
            ),
            (
                "trellis_proxy_app_scrape_failures_total",
                "Scrapes of the app's own metrics (merged into this endpoint) that failed.",
                &self.app_scrape_failures,
            ),
            (
                "trellis_proxy_tcp_denied_total",
                "Inbound or gateway TCP connections closed because an authorization policy denied them.",
                &self.tcp_denied,
            ),
            (
                "trellis_proxy_authz_audited_total",
                "Requests that matched an AUDIT authorization policy (each written to the audit log, target trellis_proxy::audit).",
                &self.authz_audited,
            ),
            (
                "trellis_proxy_jwt_rejected_total",
                "Requests refused (401) because their JWT failed verification (RequestAuthentication).",
                &self.jwt_rejected,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        out
    }

    fn render_requests(&self, out: &mut String) {
        let map = self.requests.lock().expect("metrics lock");
        let mut series: Vec<(String, MutexGuard<'_, RequestSeries>)> = map
            .iter()
            .map(|(k, v)| (request_labels(k), v.lock().expect("metrics lock")))
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        out.push_str("# HELP istio_requests_total Requests handled by the proxy.\n");
        out.push_str("# TYPE istio_requests_total counter\n");
        for (l, s) in &series {
            let _ = writeln!(out, "istio_requests_total{{{l}}} {}", s.total);
        }
        type Pick = fn(&RequestSeries) -> &Histogram;
        let histograms: [(&str, &str, Pick); 3] = [
            (
                "istio_request_duration_milliseconds",
                "Request duration in milliseconds, to the end of the response body.",
                |s| &s.duration,
            ),
            ("istio_request_bytes", "Request body sizes in bytes.", |s| {
                &s.request_bytes
            }),
            ("istio_response_bytes", "Response body sizes in bytes.", |s| {
                &s.response_bytes
            }),
        ];
        for (name, help, pick) in histograms {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (l, s) in &series {
                pick(s).render(out, name, l);
            }
        }
    }

    fn render_tcp(&self, out: &mut String) {
        let map = self.tcp.lock().expect("metrics lock");
        let mut series: Vec<(String, &TcpSeries)> = map.iter().map(|(k, v)| (tcp_labels(k), v.as_ref())).collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        type Get = fn(&TcpSeries) -> &AtomicU64;
        let counters: [(&str, &str, Get); 4] = [
            ("istio_tcp_connections_opened_total", "TCP connections opened.", |s| {
                &s.opened
            }),
            ("istio_tcp_connections_closed_total", "TCP connections closed.", |s| {
                &s.closed
            }),
            (
                "istio_tcp_sent_bytes_total",
                "Bytes sent to the client (the response direction).",
                |s| &s.sent,
            ),
            (
                "istio_tcp_received_bytes_total",
                "Bytes received from the client (the request direction).",
                |s| &s.received,
            ),
        ];
        for (name, help, get) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (l, s) in &series {
                let _ = writeln!(out, "{name}{{{l}}} {}", get(s).load(Ordering::Relaxed));
            }
        }
    }
}

/// Writes `key="value"` (escaped), comma-separated after the first.
fn label(out: &mut String, key: &str, value: &str) {
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str(key);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `destination_service_name`: the Kubernetes Service's name for a
/// cluster-local FQDN (`name.ns.svc.…`), else the host itself.
fn service_name(host: &str) -> &str {
    match host.split_once('.') {
        Some((name, rest)) if rest.split('.').nth(1) == Some("svc") => name,
        _ => host,
    }
}

/// The workload labels of both sides and the destination service, in the
/// order Istio writes them.
fn peer_labels(out: &mut String, c: &ConnLabels) {
    let (s, d) = (&c.source, &c.destination);
    label(out, "reporter", c.reporter.as_str());
    label(out, "source_workload", or_unknown(&s.workload));
    label(out, "source_canonical_service", or_unknown(&s.canonical_service));
    label(out, "source_canonical_revision", revision(&s.canonical_revision));
    label(out, "source_workload_namespace", or_unknown(&s.namespace));
    label(out, "source_principal", or_unknown(&s.principal));
    label(out, "source_app", or_unknown(&s.app));
    label(out, "source_version", or_unknown(&s.version));
    label(out, "source_cluster", or_unknown(&s.cluster));
    label(out, "destination_workload", or_unknown(&d.workload));
    label(out, "destination_workload_namespace", or_unknown(&d.namespace));
    label(out, "destination_principal", or_unknown(&d.principal));
    label(out, "destination_app", or_unknown(&d.app));
    label(out, "destination_version", or_unknown(&d.version));
    let service = or_unknown(&c.destination_service);
    label(out, "destination_service", service);
    label(out, "destination_canonical_service", or_unknown(&d.canonical_service));
    label(out, "destination_canonical_revision", revision(&d.canonical_revision));
    label(out, "destination_service_name", service_name(service));
    // Istio's value: the destination workload's namespace on either side.
    label(out, "destination_service_namespace", or_unknown(&d.namespace));
    label(out, "destination_cluster", or_unknown(&d.cluster));
}

fn revision(r: &str) -> &str {
    if r.is_empty() { LATEST } else { r }
}

fn request_labels(r: &RequestLabels) -> String {
    let mut out = String::with_capacity(900);
    peer_labels(&mut out, &r.conn);
    label(&mut out, "request_protocol", if r.grpc { "grpc" } else { "http" });
    label(&mut out, "response_code", &r.response_code.to_string());
    let grpc_status = r.grpc_status.map(|s| s.to_string()).unwrap_or_default();
    label(&mut out, "grpc_response_status", &grpc_status);
    label(&mut out, "response_flags", r.conn.response_flags);
    label(&mut out, "connection_security_policy", r.conn.security.as_str());
    out
}

fn tcp_labels(c: &ConnLabels) -> String {
    let mut out = String::with_capacity(800);
    peer_labels(&mut out, c);
    label(&mut out, "request_protocol", "tcp");
    label(&mut out, "response_flags", c.response_flags);
    label(&mut out, "connection_security_policy", c.security.as_str());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Istio's label set of `istio_requests_total` (its `istio_stats` filter's tags).
    const ISTIO_REQUEST_LABELS: [&str; 25] = [
        "reporter",
        "source_workload",
        "source_canonical_service",
        "source_canonical_revision",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "source_version",
        "source_cluster",
        "destination_workload",
        "destination_workload_namespace",
        "destination_principal",
        "destination_app",
        "destination_version",
        "destination_service",
        "destination_canonical_service",
        "destination_canonical_revision",
        "destination_service_name",
        "destination_service_namespace",
        "destination_cluster",
        "request_protocol",
        "response_code",
        "grpc_response_status",
        "response_flags",
        "connection_security_policy",
    ];

    fn web() -> Peer {
        Peer {
            workload: "web".into(),
            namespace: "shop".into(),
            principal: "spiffe://cluster.local/ns/shop/sa/web".into(),
            app: "web".into(),
            version: "v1".into(),
            canonical_service: "web".into(),
            canonical_revision: "v1".into(),
            cluster: "Kubernetes".into(),
        }
    }

    /// The label names and values of the first sample of `name` in `text`.
    fn labels_of(text: &str, name: &str) -> Vec<(String, String)> {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .unwrap_or_else(|| panic!("no {name} in {text}"));
        let inner = &line[name.len() + 1..line.rfind('}').unwrap()];
        inner
            .split("\",")
            .map(|kv| {
                let (k, v) = kv.split_once("=\"").unwrap();
                (k.to_string(), v.trim_end_matches('"').to_string())
            })
            .collect()
    }

    #[test]
    fn requests_carry_istio_names_labels_and_buckets() {
        let m = Metrics::default();
        let labels = RequestLabels {
            conn: ConnLabels {
                reporter: Reporter::Source,
                source: Arc::new(web()),
                destination: Arc::default(),
                destination_service: "payment.shop.svc.cluster.local".into(),
                response_flags: "-",
                security: Security::Unknown,
            },
            grpc: false,
            response_code: 200,
            grpc_status: None,
        };
        m.record_request(labels.clone(), 3.0, 10, 1024);
        m.record_request(labels, 7.0, 10, 1024);
        let text = m.render();
        let got = labels_of(&text, "istio_requests_total");
        let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ISTIO_REQUEST_LABELS);
        let get = |k: &str| got.iter().find(|(n, _)| n == k).unwrap().1.as_str();
        assert_eq!(get("reporter"), "source");
        assert_eq!(get("source_workload"), "web");
        assert_eq!(get("source_principal"), "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(get("destination_workload"), "unknown");
        assert_eq!(get("destination_canonical_revision"), "latest");
        assert_eq!(get("destination_service_name"), "payment");
        assert_eq!(get("grpc_response_status"), "");
        assert_eq!(get("connection_security_policy"), "unknown");
        assert!(text.contains("connection_security_policy=\"unknown\"} 2"), "{text}");
        assert!(text.contains("istio_request_duration_milliseconds_bucket{"));
        assert!(text.contains("le=\"5\"} 1"));
        assert!(text.contains("le=\"10\"} 2"), "buckets are cumulative: {text}");
        assert!(text.contains("istio_request_duration_milliseconds_sum{"));
        // Sizes use the same (Envoy default) buckets as durations, as in Istio.
        assert!(
            text.lines()
                .any(|l| l.starts_with("istio_response_bytes_bucket{") && l.contains("le=\"3600000\"} 2"))
        );
        assert!(text.contains("istio_response_bytes_count{"));
        assert!(!text.contains("trellis_requests_total"));
    }

    /// A peer's hash covers its workload and namespace only: peers that differ in another label
    /// are still series of their own, and equal ones in different allocations (each
    /// connection decodes its client's) one series.
    #[test]
    fn peers_that_differ_in_any_label_are_series_of_their_own() {
        let m = Metrics::default();
        let from = |version: &str| RequestLabels {
            conn: ConnLabels {
                source: Arc::new(Peer {
                    version: version.into(),
                    ..web()
                }),
                ..ConnLabels::default()
            },
            response_code: 200,
            ..RequestLabels::default()
        };
        m.record_request(from("v1"), 1.0, 0, 0);
        m.record_request(from("v2"), 1.0, 0, 0);
        m.record_request(from("v1"), 1.0, 0, 0);
        assert_eq!(m.requests.lock().unwrap().len(), 2);
        assert_eq!(m.requests_where(|l| l.conn.source.version == "v1"), 2);
        assert_eq!(m.requests_where(|l| l.conn.source.version == "v2"), 1);
    }

    /// A connection's requests go through its cache of the last series: what they count and
    /// what the scrape shows are exactly what recording each in the registry gives, when the
    /// labels repeat, change and come back, and from two connections into one series.
    #[test]
    fn a_connection_records_into_the_series_its_labels_name() {
        let labels = |code: u16| RequestLabels {
            conn: ConnLabels {
                source: Arc::new(web()),
                destination_service: "payment.shop.svc.cluster.local".into(),
                ..ConnLabels::default()
            },
            response_code: code,
            ..RequestLabels::default()
        };
        let requests = [
            (200, 3.0, 10, 1024),
            (200, 7.0, 0, 2048),
            (503, 0.4, 5, 0),
            (200, 30.0, 1, 1),
        ];
        let (cached, direct) = (Metrics::default(), Metrics::default());
        let (first, second) = (SeriesCache::default(), SeriesCache::default());
        for (i, (code, ms, req, resp)) in requests.into_iter().enumerate() {
            let conn = if i == 3 { &second } else { &first };
            cached.record_request_on(conn, labels(code), ms, req, resp);
            direct.record_request(labels(code), ms, req, resp);
        }
        assert_eq!(cached.requests_where(|l| l.response_code == 200), 3);
        assert_eq!(cached.requests_where(|l| l.response_code == 503), 1);
        assert_eq!(cached.requests.lock().unwrap().len(), 2);
        assert_eq!(cached.render(), direct.render());
        // Past the limit a cache holds no series for new labels: they are counted as overflow.
        let full = Metrics::default();
        full.series_overflow.store(0, Ordering::Relaxed);
        for i in 0..MAX_SERIES {
            full.requests
                .lock()
                .unwrap()
                .insert(labels(u16::try_from(i).unwrap() + 1000), SharedSeries::default());
        }
        full.record_request_on(&first, labels(200), 1.0, 0, 0);
        full.record_request_on(&first, labels(200), 1.0, 0, 0);
        assert_eq!(full.series_overflow.load(Ordering::Relaxed), 2);
        assert_eq!(full.requests_where(|l| l.response_code == 200), 0);
    }

    #[test]
    fn series_stop_at_the_limit_and_the_rest_is_counted() {
        let m = Metrics::default();
        let labels = |code: u16| RequestLabels {
            conn: ConnLabels {
                source: Arc::new(web()),
                ..ConnLabels::default()
            },
            response_code: code,
            ..RequestLabels::default()
        };
        let conn = |n: usize| ConnLabels {
            destination_service: format!("s{n}.shop.svc.cluster.local").into(),
            ..ConnLabels::default()
        };
        for i in 0..MAX_SERIES {
            m.record_request(labels(u16::try_from(i % 60_000).unwrap()), 1.0, 0, 0);
            m.tcp_opened(conn(i));
        }
        // Past the limit: a new label set is not a series, an old one still counts.
        m.record_request(labels(60_001), 1.0, 0, 0);
        m.record_request(labels(7), 1.0, 0, 0);
        m.tcp_opened(conn(MAX_SERIES)).sent(5);
        m.tcp_opened(conn(3)).sent(5);
        assert_eq!(m.requests.lock().unwrap().len(), MAX_SERIES);
        assert_eq!(m.tcp.lock().unwrap().len(), MAX_SERIES);
        assert_eq!(m.requests_where(|l| l.response_code == 60_001), 0);
        assert_eq!(m.requests_where(|l| l.response_code == 7), 2);
        assert_eq!(m.series_overflow.load(Ordering::Relaxed), 2);
        // The count is exported (rendering is checked on a small registry: 10 000
        // series with their histograms make a large text).
        let small = Metrics::default();
        small.series_overflow.store(2, Ordering::Relaxed);
        assert!(
            small
                .render()
                .contains("trellis_proxy_metric_series_overflow_total 2\n")
        );
    }

    #[test]
    fn grpc_and_tcp_series_have_their_labels() {
        let m = Metrics::default();
        let conn = ConnLabels {
            reporter: Reporter::Destination,
            source: Arc::new(web()),
            destination: Arc::new(Peer {
                workload: "db".into(),
                namespace: "shop".into(),
                ..Default::default()
            }),
            destination_service: "db.shop.svc.cluster.local".into(),
            response_flags: "-",
            security: Security::MutualTls,
        };
        m.record_request(
            RequestLabels {
                conn: conn.clone(),
                grpc: true,
                response_code: 200,
                grpc_status: Some(14),
            },
            1.0,
            5,
            5,
        );
        let series = m.tcp_opened(conn);
        series.received(13);
        series.sent(7);
        series.closed();
        let text = m.render();
        let http = labels_of(&text, "istio_requests_total");
        assert!(http.contains(&("request_protocol".into(), "grpc".into())));
        assert!(http.contains(&("grpc_response_status".into(), "14".into())));
        assert!(http.contains(&("connection_security_policy".into(), "mutual_tls".into())));
        assert!(http.contains(&("destination_service_namespace".into(), "shop".into())));
        let tcp = labels_of(&text, "istio_tcp_received_bytes_total");
        let names: Vec<&str> = tcp.iter().map(|(k, _)| k.as_str()).collect();
        let expected: Vec<&str> = ISTIO_REQUEST_LABELS
            .iter()
            .copied()
            .filter(|l| !matches!(*l, "response_code" | "grpc_response_status"))
            .collect();
        assert_eq!(names, expected);
        assert!(tcp.contains(&("request_protocol".into(), "tcp".into())));
        for (name, value) in [
            ("istio_tcp_connections_opened_total", 1),
            ("istio_tcp_connections_closed_total", 1),
            ("istio_tcp_received_bytes_total", 13),
            ("istio_tcp_sent_bytes_total", 7),
        ] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(name) && l.ends_with(&format!(" {value}"))),
                "{name} {value}: {text}"
            );
        }
    }

    #[test]
    fn canonical_names_follow_istio_rules() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert_eq!(canonical_service(&labels(&[]), "web-v1"), "web-v1");
        assert_eq!(canonical_service(&labels(&[("app", "web")]), "web-v1"), "web");
        assert_eq!(
            canonical_service(&labels(&[("app", "web"), ("app.kubernetes.io/name", "shop-web")]), "w"),
            "shop-web"
        );
        assert_eq!(
            canonical_service(&labels(&[("app", "web"), (CANONICAL_NAME_LABEL, "front")]), "w"),
            "front"
        );
        assert_eq!(canonical_revision(&labels(&[])), "latest");
        assert_eq!(canonical_revision(&labels(&[("version", "v2")])), "v2");
        assert_eq!(
            canonical_revision(&labels(&[("version", "v2"), (CANONICAL_REVISION_LABEL, "r7")])),
            "r7"
        );
    }

    #[test]
    fn service_names_and_escaping() {
        assert_eq!(service_name("payment.shop.svc.cluster.local"), "payment");
        assert_eq!(service_name("api.example.com"), "api.example.com");
        assert_eq!(service_name("unknown"), "unknown");
        let mut out = String::new();
        label(&mut out, "k", "a\"b\\c\nd");
        assert_eq!(out, "k=\"a\\\"b\\\\c\\nd\"");
    }
}
