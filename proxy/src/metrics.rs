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

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

mod by_cluster;
mod labels;

use by_cluster::ByCluster;
pub use labels::{
    CANONICAL_NAME_LABEL, CANONICAL_REVISION_LABEL, ConnLabels, Peer, Reporter, RequestLabels, Security, UNKNOWN,
    canonical_revision, canonical_service,
};
use labels::{request_labels, tcp_labels};

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

#[cfg(test)]
mod tests;
