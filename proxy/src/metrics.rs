//! Prometheus metrics with Istio's standard metric and label names under a
//! `trellis_` prefix (`trellis_requests_total`,
//! `trellis_request_duration_milliseconds`, `trellis_request_bytes`,
//! `trellis_response_bytes`, `trellis_tcp_*`), plus a few proxy-internal ones.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Istio's request duration buckets (milliseconds).
const DURATION_BUCKETS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];
/// Istio's size buckets (bytes).
const BYTES_BUCKETS: &[f64] = &[
    1.0,
    10.0,
    100.0,
    1000.0,
    10000.0,
    100000.0,
    1000000.0,
    10000000.0,
    100000000.0,
];

/// The identity of one side of a request, as labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
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
}

impl Peer {
    fn or_unknown(s: &str) -> &str {
        if s.is_empty() { "unknown" } else { s }
    }
}

/// Labels shared by HTTP and TCP metrics. The peers and the service are
/// shared, computed once per config (node, endpoints, clusters), so building
/// a request's labels allocates nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ConnLabels {
    /// `source` (outbound, gateway) or `destination` (inbound).
    pub reporter: &'static str,
    /// The client.
    pub source: Arc<Peer>,
    /// The server.
    pub destination: Arc<Peer>,
    /// Destination service FQDN.
    pub destination_service: Arc<str>,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: &'static str,
}

/// Labels of one HTTP request series.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    /// Connection-level labels.
    pub conn: ConnLabels,
    /// `http` or `grpc`.
    pub request_protocol: &'static str,
    /// Status sent downstream.
    pub response_code: u16,
    /// Envoy-style flags (`-`, `NR`, `UH`, `UF`, `URX`, `UT`, `UO`, `FI`, `DC`).
    pub response_flags: &'static str,
}

#[derive(Debug)]
struct Histogram {
    buckets: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(buckets: &'static [f64]) -> Self {
        Self {
            buckets,
            counts: vec![0; buckets.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Counts the value in its own bucket only; [`Histogram::render`] sums
    /// them into Prometheus' cumulative buckets (one increment per request).
    fn observe(&mut self, v: f64) {
        if let Some(i) = self.buckets.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (b, n) in self.buckets.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug)]
struct RequestSeries {
    total: u64,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

#[derive(Debug, Default)]
struct TcpSeries {
    opened: u64,
    closed: u64,
    sent: u64,
    received: u64,
}

/// The metrics registry of one proxy.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<HashMap<RequestLabels, RequestSeries>>,
    tcp: Mutex<HashMap<ConnLabels, TcpSeries>>,
    config_applied: AtomicU64,
    config_rejected: AtomicU64,
    downstream_rejected: AtomicU64,
    downstream_overflow: AtomicU64,
    downstream_tls_failures: AtomicU64,
    outlier_ejections: AtomicU64,
    /// Upstream TLS handshakes that failed, by cluster.
    upstream_tls_failures: Mutex<HashMap<String, u64>>,
}

impl Metrics {
    /// Record a finished HTTP request.
    pub fn record_request(&self, labels: RequestLabels, duration_ms: f64, req_bytes: u64, resp_bytes: u64) {
        let mut map = self.requests.lock().expect("metrics lock");
        let s = map.entry(labels).or_insert_with(|| RequestSeries {
            total: 0,
            duration: Histogram::new(DURATION_BUCKETS),
            request_bytes: Histogram::new(BYTES_BUCKETS),
            response_bytes: Histogram::new(BYTES_BUCKETS),
        });
        s.total += 1;
        s.duration.observe(duration_ms);
        s.request_bytes.observe(req_bytes as f64);
        s.response_bytes.observe(resp_bytes as f64);
    }

    /// A TCP connection was opened.
    pub fn tcp_opened(&self, labels: &ConnLabels) {
        let mut map = self.tcp.lock().expect("metrics lock");
        map.entry(labels.clone()).or_default().opened += 1;
    }

    /// A TCP connection closed after moving these bytes.
    pub fn tcp_closed(&self, labels: &ConnLabels, sent: u64, received: u64) {
        let mut map = self.tcp.lock().expect("metrics lock");
        let s = map.entry(labels.clone()).or_default();
        s.closed += 1;
        s.sent += sent;
        s.received += received;
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
        let mut map = self.upstream_tls_failures.lock().expect("metrics lock");
        match map.get_mut(cluster) {
            Some(n) => *n += 1,
            None => {
                map.insert(cluster.to_string(), 1);
            }
        }
    }

    /// An endpoint was ejected by outlier detection.
    pub fn outlier_ejected(&self) {
        self.outlier_ejections.fetch_add(1, Ordering::Relaxed);
    }

    /// Count of requests matching a predicate (for tests and summaries).
    pub fn requests_where(&self, f: impl Fn(&RequestLabels) -> bool) -> u64 {
        let map = self.requests.lock().expect("metrics lock");
        map.iter().filter(|(k, _)| f(k)).map(|(_, v)| v.total).sum()
    }

    /// Prometheus text exposition format, deterministic order.
    pub fn render(&self) -> String {
        let mut out = String::new();
        {
            let map = self.requests.lock().expect("metrics lock");
            let mut series: Vec<(String, &RequestSeries)> = map.iter().map(|(k, v)| (request_labels(k), v)).collect();
            series.sort_by(|a, b| a.0.cmp(&b.0));
            out.push_str("# HELP trellis_requests_total Requests handled by the proxy.\n");
            out.push_str("# TYPE trellis_requests_total counter\n");
            for (l, s) in &series {
                let _ = writeln!(out, "trellis_requests_total{{{l}}} {}", s.total);
            }
            for (name, help, pick) in [
                (
                    "trellis_request_duration_milliseconds",
                    "Request duration in milliseconds.",
                    0,
                ),
                ("trellis_request_bytes", "Request body sizes in bytes.", 1),
                ("trellis_response_bytes", "Response body sizes in bytes.", 2),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
                for (l, s) in &series {
                    let h = match pick {
                        0 => &s.duration,
                        1 => &s.request_bytes,
                        _ => &s.response_bytes,
                    };
                    h.render(&mut out, name, l);
                }
            }
        }
        {
            let map = self.tcp.lock().expect("metrics lock");
            let mut series: Vec<(String, &TcpSeries)> = map.iter().map(|(k, v)| (conn_labels(k), v)).collect();
            series.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, help, get) in [
                (
                    "trellis_tcp_connections_opened_total",
                    "TCP connections opened.",
                    (|s: &TcpSeries| s.opened) as fn(&TcpSeries) -> u64,
                ),
                ("trellis_tcp_connections_closed_total", "TCP connections closed.", |s| {
                    s.closed
                }),
                ("trellis_tcp_sent_bytes_total", "Bytes sent to the client.", |s| s.sent),
                (
                    "trellis_tcp_received_bytes_total",
                    "Bytes received from the client.",
                    |s| s.received,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (l, s) in &series {
                    let _ = writeln!(out, "{name}{{{l}}} {}", get(s));
                }
            }
        }
        {
            let map = self.upstream_tls_failures.lock().expect("metrics lock");
            let mut series: Vec<(&String, &u64)> = map.iter().collect();
            series.sort();
            let name = "trellis_proxy_upstream_tls_failures_total";
            let _ = writeln!(
                out,
                "# HELP {name} Upstream TLS handshakes that failed (certificate refused either way), by cluster.\n# TYPE {name} counter"
            );
            for (cluster, n) in series {
                let _ = writeln!(out, "{name}{{cluster=\"{}\"}} {n}", escape(cluster));
            }
        }
        for (name, help, v) in [
            (
                "trellis_proxy_config_applied_total",
                "Configurations applied.",
                &self.config_applied,
            ),
            (
                "trellis_proxy_config_rejected_total",
                "Configurations rejected (NACKed); the last good one stayed.",
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
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn conn_labels(c: &ConnLabels) -> String {
    let svc = Peer::or_unknown(&c.destination_service);
    let (svc_name, svc_ns) = match svc.split_once('.') {
        Some((n, rest)) => (n, rest.split('.').next().unwrap_or("unknown")),
        None => (svc, "unknown"),
    };
    let pairs: [(&str, &str); 15] = [
        ("reporter", c.reporter),
        ("source_workload", Peer::or_unknown(&c.source.workload)),
        ("source_workload_namespace", Peer::or_unknown(&c.source.namespace)),
        ("source_principal", Peer::or_unknown(&c.source.principal)),
        ("source_app", Peer::or_unknown(&c.source.app)),
        ("source_version", Peer::or_unknown(&c.source.version)),
        ("destination_workload", Peer::or_unknown(&c.destination.workload)),
        (
            "destination_workload_namespace",
            Peer::or_unknown(&c.destination.namespace),
        ),
        ("destination_principal", Peer::or_unknown(&c.destination.principal)),
        ("destination_app", Peer::or_unknown(&c.destination.app)),
        ("destination_version", Peer::or_unknown(&c.destination.version)),
        ("destination_service", svc),
        ("destination_service_name", svc_name),
        ("destination_service_namespace", svc_ns),
        ("connection_security_policy", c.connection_security_policy),
    ];
    let mut s = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"{}\"", escape(v));
    }
    s
}

fn request_labels(r: &RequestLabels) -> String {
    format!(
        "{},request_protocol=\"{}\",response_code=\"{}\",response_flags=\"{}\"",
        conn_labels(&r.conn),
        r.request_protocol,
        r.response_code,
        r.response_flags
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_istio_names_and_labels() {
        let m = Metrics::default();
        let labels = RequestLabels {
            conn: ConnLabels {
                reporter: "source",
                source: Arc::new(Peer {
                    workload: "web".into(),
                    namespace: "shop".into(),
                    ..Default::default()
                }),
                destination_service: "payment.shop.svc.cluster.local".into(),
                connection_security_policy: "mutual_tls",
                ..Default::default()
            },
            request_protocol: "http",
            response_code: 200,
            response_flags: "-",
        };
        m.record_request(labels.clone(), 3.0, 10, 1024);
        m.record_request(labels, 7.0, 10, 1024);
        let text = m.render();
        assert!(
            text.contains(
                "trellis_requests_total{reporter=\"source\",source_workload=\"web\",source_workload_namespace=\"shop\""
            ),
            "{text}"
        );
        assert!(text.contains("destination_service_name=\"payment\",destination_service_namespace=\"shop\""));
        assert!(text.contains("response_code=\"200\",response_flags=\"-\"} 2"));
        assert!(text.contains("trellis_request_duration_milliseconds_bucket{"));
        assert!(text.contains("le=\"5\"} 1"));
        assert!(text.contains("le=\"10\"} 2"), "buckets are cumulative: {text}");
        assert!(text.contains("trellis_request_duration_milliseconds_sum{"));
        assert!(text.contains("trellis_response_bytes_count{"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
