//! Spans: one per proxied request hop (sampled ones), with OpenTelemetry's
//! HTTP semantic conventions and the mesh's own attributes, queued for
//! export in a bounded [`SpanSink`] that drops when full, so recording never
//! blocks a request. The span exporter ([`crate::span_export`]) sends them.
//!
//! Attributes of a span (stable HTTP conventions; `trellis.*` for the mesh):
//!
//! | attribute | server span (inbound) | client span (outbound, gateway) |
//! |---|---|---|
//! | `http.request.method`, `http.response.status_code`, `network.protocol.version` | yes | yes |
//! | `url.path`, `url.query`, `url.scheme`, `client.address`, `client.port` | yes | |
//! | `url.full`, `network.peer.address`, `network.peer.port` | | yes |
//! | `server.address`, `server.port`, `user_agent.original` | yes | yes |
//! | `error.type` (the status code, on errors) | 5xx | 4xx and 5xx |
//! | `trellis.source.workload`, `.namespace`, `.principal`; `trellis.destination.*` the same; `trellis.destination.service` | yes | yes |
//! | `trellis.response_flags`, `trellis.upstream_cluster`, `trellis.route`, `trellis.request_id` | yes | yes |

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::metrics::RequestLabels;

/// Spans waiting for export, at most.
pub const QUEUE: usize = 4096;

/// An attribute value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct Span {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// Parent span, if any.
    pub parent_id: Option<String>,
    /// Operation name.
    pub name: String,
    /// Server (inbound) or client (outbound, gateway).
    pub server: bool,
    /// Start.
    pub start: SystemTime,
    /// End.
    pub end: SystemTime,
    /// The span's status is an error (OpenTelemetry's HTTP rules: 5xx on a
    /// server span, 4xx and 5xx on a client span).
    pub error: bool,
    /// Attributes.
    pub attributes: Vec<(&'static str, AttrValue)>,
}

/// What a span records of the request, captured before the request goes
/// on (only when spans are exported).
#[derive(Debug, Clone)]
pub struct RequestFacts {
    /// Method.
    pub method: http::Method,
    /// Path, as received.
    pub path: String,
    /// Query, if any.
    pub query: Option<String>,
    /// `Host` (or `:authority`) as received.
    pub authority: Option<String>,
    /// HTTP version.
    pub version: http::Version,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// `x-request-id`, when the client sent one.
    pub request_id: Option<String>,
}

impl RequestFacts {
    /// Reads them from a request head.
    pub fn of<B>(req: &http::Request<B>) -> Self {
        let header =
            |h: http::header::HeaderName| req.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
        Self {
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            query: req.uri().query().map(redact_query),
            // Host and port only: an absolute-form target's user info is a credential.
            authority: req
                .uri()
                .authority()
                .map(|a| a.as_str().rsplit_once('@').map_or(a.as_str(), |(_, hp)| hp).to_string())
                .or_else(|| header(http::header::HOST)),
            version: req.version(),
            user_agent: header(http::header::USER_AGENT),
            request_id: header(http::header::HeaderName::from_static("x-request-id")),
        }
    }
}

/// What the proxy did with the request, for its span.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// The span is the server side (inbound).
    pub server: bool,
    /// The client's address.
    pub client: std::net::SocketAddr,
    /// TLS was terminated (the request came over mTLS).
    pub tls: bool,
    /// The endpoint the request went to.
    pub upstream: Option<std::net::SocketAddr>,
    /// The cluster it went to.
    pub cluster: Option<&'a str>,
    /// The route that matched.
    pub route: Option<&'a str>,
    /// Status sent downstream.
    pub status: u16,
}

/// Query parameters whose values are credentials: OpenTelemetry's list for
/// `url.query` (signed URLs) and the common token and password names.
const SECRET_PARAMS: &[&str] = &[
    "AWSAccessKeyId",
    "Signature",
    "sig",
    "X-Goog-Signature",
    "access_token",
    "id_token",
    "token",
    "api_key",
    "apikey",
    "password",
    "client_secret",
];

/// A query with the values of [`SECRET_PARAMS`] replaced by `REDACTED`, as
/// OpenTelemetry's HTTP conventions ask of `url.query` and `url.full`.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if SECRET_PARAMS.iter().any(|s| s.eq_ignore_ascii_case(k)) => format!("{k}=REDACTED"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn http_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The method as OpenTelemetry names it: the known methods, else `_OTHER`.
fn method(m: &http::Method) -> &str {
    match m.as_str() {
        "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "CONNECT" | "OPTIONS" | "TRACE" | "PATCH" => m.as_str(),
        _ => "_OTHER",
    }
}

fn split_authority(a: &str) -> (&str, Option<u16>) {
    match a.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (a, None),
        Some((h, p)) => (h, p.parse().ok()),
        None => (a, None),
    }
}

/// The attributes of a request's span: OpenTelemetry's HTTP conventions,
/// and the workloads, namespaces and identities of both sides from its
/// metric labels (one truth for both).
pub fn attributes(facts: &RequestFacts, hop: &Hop<'_>, labels: &RequestLabels) -> Vec<(&'static str, AttrValue)> {
    let s = |v: &str| AttrValue::Str(v.to_string());
    let mut out: Vec<(&'static str, AttrValue)> = Vec::with_capacity(24);
    out.push(("http.request.method", s(method(&facts.method))));
    if method(&facts.method) == "_OTHER" {
        out.push(("http.request.method_original", s(facts.method.as_str())));
    }
    out.push(("http.response.status_code", AttrValue::Int(i64::from(hop.status))));
    out.push(("network.protocol.version", s(http_version(facts.version))));
    let (host, port) = facts.authority.as_deref().map_or(("", None), split_authority);
    if !host.is_empty() {
        out.push(("server.address", s(host)));
    }
    if let Some(p) = port {
        out.push(("server.port", AttrValue::Int(i64::from(p))));
    }
    if let Some(ua) = &facts.user_agent {
        out.push(("user_agent.original", s(ua)));
    }
    if hop.server {
        out.push(("url.path", s(&facts.path)));
        if let Some(q) = &facts.query {
            out.push(("url.query", s(q)));
        }
        out.push(("url.scheme", s(if hop.tls { "https" } else { "http" })));
        out.push(("client.address", s(&hop.client.ip().to_string())));
        out.push(("client.port", AttrValue::Int(i64::from(hop.client.port()))));
    } else {
        let query = facts.query.as_deref().map(|q| format!("?{q}")).unwrap_or_default();
        out.push((
            "url.full",
            s(&format!(
                "http://{host}{}{}{query}",
                port.map(|p| format!(":{p}")).unwrap_or_default(),
                facts.path
            )),
        ));
        if let Some(up) = hop.upstream {
            out.push(("network.peer.address", s(&up.ip().to_string())));
            out.push(("network.peer.port", AttrValue::Int(i64::from(up.port()))));
        }
    }
    if is_error(hop.server, hop.status) {
        out.push(("error.type", s(&hop.status.to_string())));
    }
    let c = &labels.conn;
    for (key, value) in [
        ("trellis.source.workload", c.source.workload.as_str()),
        ("trellis.source.namespace", c.source.namespace.as_str()),
        ("trellis.source.principal", c.source.principal.as_str()),
        ("trellis.destination.workload", c.destination.workload.as_str()),
        ("trellis.destination.namespace", c.destination.namespace.as_str()),
        ("trellis.destination.principal", c.destination.principal.as_str()),
        ("trellis.destination.service", &c.destination_service),
        ("trellis.response_flags", c.response_flags),
    ] {
        if !value.is_empty() {
            out.push((key, s(value)));
        }
    }
    if let Some(cluster) = hop.cluster {
        out.push(("trellis.upstream_cluster", s(cluster)));
    }
    if let Some(route) = hop.route {
        out.push(("trellis.route", s(route)));
    }
    if let Some(id) = &facts.request_id {
        out.push(("trellis.request_id", s(id)));
    }
    out
}

/// The finished span of a request hop: named by its route (else its path).
pub fn finish(
    ctx: crate::trace::SpanContext,
    facts: &RequestFacts,
    hop: &Hop<'_>,
    labels: &RequestLabels,
    start: SystemTime,
) -> Span {
    Span {
        trace_id: ctx.trace_id.to_string(),
        span_id: ctx.span_id.to_string(),
        parent_id: ctx.parent_id.map(|p| p.to_string()),
        name: hop.route.map_or_else(|| facts.path.clone(), str::to_string),
        server: hop.server,
        start,
        end: SystemTime::now(),
        error: is_error(hop.server, hop.status),
        attributes: attributes(facts, hop, labels),
    }
}

/// OpenTelemetry's HTTP span status: errors are 5xx on a server span, 4xx
/// and 5xx on a client span.
pub fn is_error(server: bool, status: u16) -> bool {
    status >= 500 || (!server && status >= 400)
}

/// Where request handlers put spans.
#[derive(Debug)]
pub struct SpanSink {
    tx: mpsc::Sender<Span>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Span>>>,
    dropped: AtomicU64,
    exported: AtomicU64,
}

impl Default for SpanSink {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
            exported: AtomicU64::new(0),
        }
    }
}

impl SpanSink {
    /// Queue a span; drops it when the queue is full.
    pub fn record(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Spans exported so far.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    /// Spans dropped so far (queue full or collector failing).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The receiving end of the queue, for the one exporter; `None` once taken.
    pub fn take_queue(&self) -> Option<mpsc::Receiver<Span>> {
        self.rx.lock().expect("span lock").take()
    }

    /// Count spans the collector took.
    pub fn count_exported(&self, n: u64) {
        self.exported.fetch_add(n, Ordering::Relaxed);
    }

    /// Count spans lost on the way (collector failing or not configured).
    pub fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{ConnLabels, Peer};
    use std::sync::Arc;

    fn labels() -> RequestLabels {
        RequestLabels {
            conn: ConnLabels {
                source: Arc::new(Peer {
                    workload: "web".into(),
                    namespace: "shop".into(),
                    principal: "spiffe://cluster.local/ns/shop/sa/web".into(),
                    ..Peer::default()
                }),
                destination: Arc::new(Peer {
                    workload: "payment-v1".into(),
                    namespace: "shop".into(),
                    ..Peer::default()
                }),
                destination_service: "payment.shop.svc.cluster.local".into(),
                response_flags: "-",
                ..ConnLabels::default()
            },
            response_code: 503,
            ..RequestLabels::default()
        }
    }

    fn hop(server: bool) -> Hop<'static> {
        Hop {
            server,
            client: "10.0.0.7:40000".parse().unwrap(),
            tls: true,
            upstream: Some("10.0.1.9:8080".parse().unwrap()),
            cluster: Some("outbound|8080||payment.shop.svc.cluster.local"),
            route: Some("payment"),
            status: 503,
        }
    }

    fn get<'a>(attrs: &'a [(&'static str, AttrValue)], key: &str) -> Option<&'a AttrValue> {
        attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    fn str_of(attrs: &[(&'static str, AttrValue)], key: &str) -> String {
        match get(attrs, key) {
            Some(AttrValue::Str(s)) => s.clone(),
            other => panic!("{key}: {other:?} in {attrs:?}"),
        }
    }

    #[test]
    fn client_and_server_spans_follow_the_http_conventions_and_name_both_workloads() {
        let req = http::Request::get("http://user:hunter2@payment.shop:8080/pay?id=7&token=s3cret")
            .header("user-agent", "curl/8")
            .header("x-request-id", "r-1")
            .body(())
            .unwrap();
        let facts = RequestFacts::of(&req);
        let client = attributes(&facts, &hop(false), &labels());
        assert_eq!(str_of(&client, "http.request.method"), "GET");
        assert_eq!(get(&client, "http.response.status_code"), Some(&AttrValue::Int(503)));
        assert_eq!(str_of(&client, "server.address"), "payment.shop");
        assert_eq!(get(&client, "server.port"), Some(&AttrValue::Int(8080)));
        assert_eq!(
            str_of(&client, "url.full"),
            "http://payment.shop:8080/pay?id=7&token=REDACTED",
            "no credentials in spans"
        );
        assert_eq!(str_of(&client, "network.peer.address"), "10.0.1.9");
        assert_eq!(str_of(&client, "error.type"), "503");
        assert_eq!(str_of(&client, "trellis.source.workload"), "web");
        assert_eq!(
            str_of(&client, "trellis.source.principal"),
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        assert_eq!(str_of(&client, "trellis.destination.workload"), "payment-v1");
        assert_eq!(
            str_of(&client, "trellis.destination.service"),
            "payment.shop.svc.cluster.local"
        );
        assert_eq!(str_of(&client, "trellis.request_id"), "r-1");
        assert!(get(&client, "url.path").is_none());
        assert!(
            get(&client, "trellis.destination.principal").is_none(),
            "empty values are left out"
        );

        let server = attributes(&facts, &hop(true), &labels());
        assert_eq!(str_of(&server, "url.path"), "/pay");
        assert_eq!(str_of(&server, "url.query"), "id=7&token=REDACTED");
        assert_eq!(str_of(&server, "url.scheme"), "https");
        assert_eq!(str_of(&server, "client.address"), "10.0.0.7");
        assert!(get(&server, "url.full").is_none());
        let all = format!("{client:?}{server:?}");
        assert!(!all.contains("hunter2") && !all.contains("s3cret"), "{all}");
    }

    #[test]
    fn span_status_and_methods() {
        assert!(is_error(true, 500) && !is_error(true, 404));
        assert!(is_error(false, 404) && !is_error(false, 399));
        let req = http::Request::builder()
            .method(http::Method::from_bytes(b"PURGE").unwrap())
            .uri("/x")
            .header("host", "web")
            .body(())
            .unwrap();
        let attrs = attributes(&RequestFacts::of(&req), &hop(true), &labels());
        assert_eq!(str_of(&attrs, "http.request.method"), "_OTHER");
        assert_eq!(str_of(&attrs, "http.request.method_original"), "PURGE");
        assert_eq!(
            redact_query("Signature=abc&x=1&SIG=2&novalue"),
            "Signature=REDACTED&x=1&SIG=REDACTED&novalue"
        );
    }
}
