//! The HTTP request pipeline: request-head hardening checks, path
//! normalization, inbound authorization, routing, CORS, fault injection,
//! direct responses and redirects, and forwarding with retries, timeouts,
//! mirroring, header mutations, trace propagation, metrics and access logs.

use crate::authz::AuthzRequest;
use crate::idle::{IdleBody, IdleIo, StreamActivity};
use crate::metrics::{ConnLabels, Peer, RequestLabels};
use crate::path::normalize;
use crate::request_body::{BodyProgress, ClientBody, ClientFault};
use crate::routing::{RequestView, RouteHit, parse_query, rewrite_prefix};
use crate::runtime::Runtime;
use crate::snapshot::{ListenerRuntime, Snapshot};
use crate::upstream::{Body, BoxError, ClusterRuntime, InFlight, InFlightBody, NoSlot, Outcome, UpstreamError};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use trellis_contract::{
    ForwardAction, HashKey, ListenerDirection, Redirect, RetryOn, RetryPolicy, RouteAction, SpiffeId, UpstreamTls,
};

/// Request bodies up to this size are buffered so they can be retried and
/// mirrored; larger or unknown-length bodies are streamed once.
const REPLAY_BUFFER_LIMIT: u64 = 64 * 1024;

/// Everything known about the downstream connection.
#[derive(Debug, Clone)]
pub struct ConnContext {
    /// Listener name.
    pub listener: String,
    /// Direction of the listener.
    pub direction: ListenerDirection,
    /// Client address.
    pub peer: SocketAddr,
    /// Original (or local) destination.
    pub dst: SocketAddr,
    /// Verified client SPIFFE ID (mesh mTLS).
    pub peer_identity: Option<String>,
    /// SHA-256 (hex) of the verified client's certificate (mesh mTLS).
    pub peer_cert_sha256: Option<String>,
    /// Was TLS terminated?
    pub tls: bool,
    /// HTTP/1 framing verdicts from the connection's [`crate::head::GuardedIo`].
    pub verdicts: Option<Arc<crate::head::Verdicts>>,
}

// why: header names as constants, not strings: a `&str` name is parsed on
// every lookup, which showed up in the per-request instruction profile.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Hop-by-hop headers never forwarded (RFC 9110 §7.6.1).
const HOP_HEADERS: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
];

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::copy_from_slice(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

/// Per-request outcome details for metrics and logs.
struct RequestOutcome {
    flags: &'static str,
    cluster: Option<Arc<ClusterRuntime>>,
    endpoint: Option<usize>,
    span: Option<crate::trace::SpanContext>,
    route: Option<Arc<crate::routing::CompiledRoute>>,
}

/// Handle one downstream request. Never fails: every error is a response.
pub async fn handle(
    rt: Arc<Runtime>,
    conn: Arc<ConnContext>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let snap = rt.snapshot();
    let method = req.method().clone();
    let access_log = snap.config.telemetry.access_log.enabled;
    let exporting = snap
        .config
        .telemetry
        .tracing
        .as_ref()
        .is_some_and(|t| t.otlp_endpoint.is_some());
    // Only spans and access logs need the original path: no copy otherwise.
    let path_for_log = if access_log || exporting {
        req.uri().path().to_string()
    } else {
        String::new()
    };
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let req_bytes = req.body().size_hint().exact().unwrap_or(0);
    // Only a verified mesh peer's metadata is believed (inbound mTLS).
    let source_meta = match (conn.direction, conn.peer_identity.as_deref()) {
        (ListenerDirection::Inbound, Some(principal)) => {
            crate::peer_metadata::verified_source(req.headers(), principal)
        }
        _ => None,
    };
    let Some(listener) = snap.listeners.get(&conn.listener).cloned() else {
        return Ok(text(StatusCode::SERVICE_UNAVAILABLE, "listener is being removed\n"));
    };
    let mut out = RequestOutcome {
        flags: "-",
        cluster: None,
        endpoint: None,
        span: None,
        route: None,
    };
    let started_at = exporting.then(std::time::SystemTime::now);
    let resp = pipeline(&rt, &snap, &listener, &conn, req, &mut out).await;
    let status = resp.status();
    if let Some(ctx) = out.span.take().filter(|c| c.sampled)
        && exporting
    {
        let mut attributes = vec![
            ("http.method", method.to_string()),
            ("http.url", path_for_log.clone()),
            ("response_flags", out.flags.to_string()),
            ("node_id", snap.config.node.id.clone()),
        ];
        if let Some(c) = &out.cluster {
            attributes.push(("upstream_cluster", c.spec.name.clone()));
        }
        if let Some(src) = &source_meta {
            for (key, value) in [
                ("source_workload", &src.workload),
                ("source_namespace", &src.namespace),
                ("source_app", &src.app),
                ("source_version", &src.version),
            ] {
                if !value.is_empty() {
                    attributes.push((key, value.clone()));
                }
            }
        }
        rt.spans.record(crate::spans::Span {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent_id: ctx.parent_id,
            name: out
                .route
                .as_ref()
                .map_or_else(|| path_for_log.clone(), |r| r.name.clone()),
            server: conn.direction == ListenerDirection::Inbound,
            start: started_at.unwrap_or_else(std::time::SystemTime::now),
            end: std::time::SystemTime::now(),
            status: status.as_u16(),
            attributes,
        });
    }
    let labels = labels(&snap, &conn, &out, source_meta, status, grpc);
    if access_log {
        tracing::info!(
            target: "trellis::access",
            listener = %conn.listener,
            method = %method,
            path = %path_for_log,
            status = status.as_u16(),
            flags = out.flags,
            upstream = out.cluster.as_ref().map(|c| c.spec.name.as_str()).unwrap_or("-"),
            peer = %conn.peer,
            duration_ms = start.elapsed().as_millis() as u64,
            "request"
        );
    }
    // Metrics are recorded when the response body ends (or is dropped).
    let (parts, body) = resp.into_parts();
    let body = ObservedBody {
        inner: body,
        bytes: 0,
        done: Some(Pending {
            rt,
            labels,
            start,
            req_bytes,
        }),
    };
    Ok(Response::from_parts(parts, body.boxed_unsync()))
}

fn labels(
    snap: &Snapshot,
    conn: &ConnContext,
    out: &RequestOutcome,
    source_meta: Option<Peer>,
    status: StatusCode,
    grpc: bool,
) -> RequestLabels {
    let (reporter, source, destination, security) = match conn.direction {
        ListenerDirection::Inbound => {
            let source = source_meta.unwrap_or_else(|| {
                let principal = conn.peer_identity.clone().unwrap_or_default();
                let namespace = SpiffeId::parse(&principal)
                    .ok()
                    .and_then(|id| id.namespace().map(str::to_string))
                    .unwrap_or_default();
                Peer {
                    principal,
                    namespace,
                    ..Default::default()
                }
            });
            (
                "destination",
                Arc::new(source),
                Arc::clone(&snap.node),
                if conn.peer_identity.is_some() {
                    "mutual_tls"
                } else {
                    "none"
                },
            )
        }
        _ => (
            "source",
            Arc::clone(&snap.node),
            out.cluster
                .as_ref()
                .zip(out.endpoint)
                .and_then(|(c, i)| c.endpoints.get(i))
                .map(|e| Arc::clone(&e.peer))
                .unwrap_or_default(),
            match out.cluster.as_ref().map(|c| &c.spec.tls) {
                Some(UpstreamTls::Mesh { .. }) => "mutual_tls",
                _ => "none",
            },
        ),
    };
    RequestLabels {
        conn: ConnLabels {
            reporter,
            source,
            destination,
            destination_service: out
                .cluster
                .as_ref()
                .map(|c| Arc::clone(&c.service_label))
                .unwrap_or_default(),
            connection_security_policy: security,
        },
        request_protocol: if grpc { "grpc" } else { "http" },
        response_code: status.as_u16(),
        response_flags: out.flags,
    }
}

/// The request head checks a hardened edge proxy makes, beyond hyper's own.
fn check_head(req: &Request<Incoming>, listener: &ListenerRuntime) -> Result<(), (StatusCode, &'static str)> {
    let limits = &listener.spec.limits;
    let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > limits.max_uri_bytes as usize {
        return Err((StatusCode::URI_TOO_LONG, "request target too long\n"));
    }
    let headers = req.headers();
    if headers.len() > limits.max_request_headers as usize {
        return Err((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many request headers\n",
        ));
    }
    let size: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if size > limits.max_request_header_bytes as usize {
        return Err((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large\n",
        ));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) && headers.contains_key(header::CONTENT_LENGTH) {
        return Err((StatusCode::BAD_REQUEST, "both Content-Length and Transfer-Encoding\n"));
    }
    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err((StatusCode::BAD_REQUEST, "duplicate Host header\n"));
    }
    if req.version() == Version::HTTP_11 && hosts == 0 {
        return Err((StatusCode::BAD_REQUEST, "missing Host header\n"));
    }
    if req.version() == Version::HTTP_2
        && let (Some(a), Some(h)) = (req.uri().authority(), headers.get(header::HOST))
        && a.as_str().as_bytes() != h.as_bytes()
    {
        return Err((StatusCode::BAD_REQUEST, ":authority and Host disagree\n"));
    }
    if req.method() == Method::CONNECT {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported\n"));
    }
    if let Some(max) = limits.max_request_body_bytes
        && req.body().size_hint().lower() > max
    {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"));
    }
    Ok(())
}

/// The authority of a request: the URI's (HTTP/2, absolute-form) or Host.
fn authority(req: &Request<Incoming>) -> Option<String> {
    req.uri().authority().map(|a| a.as_str().to_string()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    })
}

fn split_host_port(authority: &str) -> (String, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal.
        if let Some((h, p)) = rest.split_once(']') {
            return (format!("[{h}]"), p.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_ascii_lowercase(), p.parse().ok()),
        _ => (authority.to_ascii_lowercase(), None),
    }
}

async fn pipeline(
    rt: &Arc<Runtime>,
    snap: &Arc<Snapshot>,
    listener: &Arc<ListenerRuntime>,
    conn: &Arc<ConnContext>,
    req: Request<Incoming>,
    out: &mut RequestOutcome,
) -> Response<Body> {
    if let Some(v) = &conn.verdicts
        && req.version() != Version::HTTP_2
        && let Some(e) = v.next_request()
    {
        rt.metrics.downstream_rejected();
        out.flags = "DPE";
        let mut resp = text(StatusCode::BAD_REQUEST, &format!("{e}\n"));
        // The connection's framing can no longer be trusted.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    if let Err((status, why)) = check_head(&req, listener) {
        rt.metrics.downstream_rejected();
        out.flags = "DPE";
        return text(status, why);
    }
    let Some(authority) = authority(&req) else {
        rt.metrics.downstream_rejected();
        out.flags = "DPE";
        return text(StatusCode::BAD_REQUEST, "missing authority\n");
    };
    let (host, host_port) = split_host_port(&authority);
    // why: inbound traffic arrives on the workload's port (the original destination); its Host
    // names the Service port, which often differs (port 80 → targetPort 8080).
    let port = match conn.direction {
        ListenerDirection::Inbound => conn.dst.port(),
        _ => host_port.unwrap_or(conn.dst.port()),
    };
    let path = match normalize(req.uri().path(), &listener.spec.path_normalization) {
        Ok(p) => p,
        Err(e) => {
            rt.metrics.downstream_rejected();
            out.flags = "DPE";
            return text(StatusCode::BAD_REQUEST, &format!("{e}\n"));
        }
    };
    let query = req.uri().query().map(str::to_string);

    if conn.direction == ListenerDirection::Inbound && !snap.authorizer.is_empty() {
        let principal = conn.peer_identity.as_deref();
        let ns = principal
            .and_then(|p| SpiffeId::parse(p).ok())
            .and_then(|id| id.namespace().map(str::to_string));
        let decision = snap.authorizer.evaluate(&AuthzRequest {
            principal,
            namespace: ns.as_deref(),
            source_ip: conn.peer.ip(),
            port,
            host: &host,
            method: req.method().as_str(),
            path: &path,
            headers: req.headers(),
        });
        if !decision.allowed() {
            tracing::debug!(?decision, %path, peer = ?principal, "authorization denied");
            return text(StatusCode::FORBIDDEN, "RBAC: access denied\n");
        }
    }

    let hit = listener.routes.route(&RequestView {
        method: req.method().as_str(),
        path: &path,
        query: query.as_deref(),
        host: &host,
        port,
        headers: req.headers(),
    });
    let Some(hit) = hit else {
        out.flags = "NR";
        return text(StatusCode::NOT_FOUND, "no route\n");
    };
    let route = Arc::clone(&hit.route);

    // CORS: answer preflights, remember the origin for the actual response.
    let mut cors_origin = None;
    if let (Some(cors), Some(origin)) = (&route.cors, req.headers().get(header::ORIGIN)) {
        let allowed = origin.to_str().is_ok_and(|o| cors.allows_origin(o));
        let preflight =
            req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            let mut resp = text(StatusCode::OK, "");
            if allowed {
                let h = resp.headers_mut();
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                if let Some(v) = &cors.allow_methods {
                    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v.clone());
                }
                if let Some(v) = &cors.allow_headers {
                    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
                }
                if let Some(v) = &cors.max_age {
                    h.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
                }
                if cors.allow_credentials {
                    h.insert(
                        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        HeaderValue::from_static("true"),
                    );
                }
            }
            return resp;
        }
        if allowed {
            cors_origin = Some(origin.clone());
        }
    }

    let mut resp = 'resp: {
        if let Some(fault) = &route.spec.fault {
            if let Some(d) = &fault.delay
                && fastrand::f64() * 100.0 < d.percentage
            {
                tokio::time::sleep(Duration::from_millis(d.fixed_delay_ms)).await;
                out.flags = "DI";
            }
            if let Some(a) = &fault.abort
                && fastrand::f64() * 100.0 < a.percentage
            {
                out.flags = "FI";
                let status = StatusCode::from_u16(a.http_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                break 'resp text(status, "fault filter abort\n");
            }
        }
        match &route.spec.action {
            RouteAction::DirectResponse(d) => {
                let status = StatusCode::from_u16(d.status).unwrap_or(StatusCode::OK);
                let mut r = Response::new(full(Bytes::from(d.body.clone().unwrap_or_default())));
                *r.status_mut() = status;
                r
            }
            RouteAction::Redirect(rd) => redirect(rd, conn, &host, host_port, &path, query.as_deref()),
            RouteAction::Forward(f) => {
                forward(rt, snap, conn, req, f, &hit, &authority, &path, query.as_deref(), out).await
            }
        }
    };
    route.response_headers.apply(resp.headers_mut());
    if let Some(origin) = cors_origin
        && let Some(cors) = &route.cors
    {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if let Some(v) = &cors.expose_headers {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
        if cors.allow_credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
    resp
}

fn redirect(
    rd: &Redirect,
    conn: &ConnContext,
    host: &str,
    host_port: Option<u16>,
    path: &str,
    query: Option<&str>,
) -> Response<Body> {
    let scheme = rd
        .scheme
        .clone()
        .unwrap_or_else(|| if conn.tls { "https" } else { "http" }.to_string());
    let host = rd.authority.clone().unwrap_or_else(|| host.to_string());
    let port = rd.port.or(if rd.scheme.is_some() { None } else { host_port });
    let default_port = if scheme == "https" { 443 } else { 80 };
    let authority = match port {
        Some(p) if p != default_port => format!("{host}:{p}"),
        _ => host,
    };
    let target = match &rd.uri {
        Some(u) => u.clone(),
        None => match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        },
    };
    let location = format!("{scheme}://{authority}{target}");
    let status = StatusCode::from_u16(rd.response_code.unwrap_or(301)).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let mut r = text(status, "");
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
            r
        }
        Err(_) => text(StatusCode::BAD_REQUEST, "redirect target is not a valid header\n"),
    }
}

/// The policy of a route without retries (one attempt).
static NO_RETRIES: RetryPolicy = RetryPolicy {
    attempts: 0,
    per_try_timeout_ms: None,
    retry_on: Vec::new(),
    retriable_status_codes: Vec::new(),
    backoff_base_ms: 25,
    backoff_max_ms: None,
    budget_percent: None,
};

/// The request body, buffered (replayable) or streamed once.
enum ReqBody {
    Buffered(Bytes),
    Streaming(Option<Incoming>),
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    rt: &Arc<Runtime>,
    snap: &Arc<Snapshot>,
    conn: &Arc<ConnContext>,
    req: Request<Incoming>,
    f: &ForwardAction,
    hit: &RouteHit,
    authority: &str,
    path: &str,
    query: Option<&str>,
    out: &mut RequestOutcome,
) -> Response<Body> {
    let route = &hit.route;
    let start = Instant::now();
    // Weighted destination choice (validation guarantees weights sum to 100).
    let total: u32 = f.clusters.iter().map(|c| c.weight).sum();
    let mut roll = fastrand::u32(0..total.max(1));
    let mut wi = 0;
    for (i, c) in f.clusters.iter().enumerate() {
        if roll < c.weight {
            wi = i;
            break;
        }
        roll -= c.weight;
    }
    let Some(cluster) = snap.clusters.get(&f.clusters[wi].cluster).cloned() else {
        out.flags = "NC";
        return text(StatusCode::SERVICE_UNAVAILABLE, "no cluster\n");
    };
    out.cluster = Some(Arc::clone(&cluster));

    let (mut parts, body) = req.into_parts();
    let downstream_h2 = parts.version == Version::HTTP_2;

    // Path and authority rewrites.
    let mut new_path = path.to_string();
    if let Some(rw) = &f.rewrite {
        if let Some(prefix) = &rw.uri_prefix {
            new_path = rewrite_prefix(path, hit.matched_prefix, prefix);
        }
        if let Some((re, sub)) = &route.rewrite_regex {
            new_path = re.replace_all(&new_path, sub.as_str()).into_owned();
        }
    }
    let authority = f
        .rewrite
        .as_ref()
        .and_then(|r| r.authority.clone())
        .unwrap_or_else(|| authority.to_string());
    let path_and_query = match query {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };

    // Upgrades (WebSocket and friends) on HTTP/1.1: keep the upgrade headers
    // and splice the two upgraded connections after a 101.
    let upgrade = (parts.version == Version::HTTP_11)
        .then(|| parts.headers.get(header::UPGRADE).cloned())
        .flatten()
        .filter(|_| {
            parts
                .headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
        });
    let downstream_upgrade = upgrade
        .as_ref()
        .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());

    // Header hygiene and mutations.
    let h = &mut parts.headers;
    strip_hop_headers(h);
    if let Some(u) = &upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, u.clone());
    }
    // An HTTP/1 request already carries its authority as Host: keep it.
    if h.get(header::HOST).is_none_or(|v| v.as_bytes() != authority.as_bytes()) {
        let Ok(host_value) = HeaderValue::from_str(&authority) else {
            return text(StatusCode::BAD_REQUEST, "invalid authority\n");
        };
        h.insert(header::HOST, host_value);
    }
    if !h.contains_key(X_REQUEST_ID)
        && let Some(v) = crate::trace::request_id_header()
    {
        h.insert(X_REQUEST_ID, v);
    }
    // Peer metadata: never from the app or a client, only from this proxy and
    // only to a mesh peer that verifies who sent it.
    h.remove(crate::peer_metadata::HEADER);
    if conn.direction != ListenerDirection::Inbound
        && matches!(cluster.spec.tls, UpstreamTls::Mesh { .. })
        && let Some(v) = &snap.peer_metadata
    {
        h.insert(crate::peer_metadata::HEADER, v.clone());
    }
    match conn.direction {
        ListenerDirection::Inbound => {
            h.remove(XFCC);
            if let (Some(peer), Some(hash), Some(id)) = (&conn.peer_identity, &conn.peer_cert_sha256, &snap.identity)
                && let Ok(v) = HeaderValue::from_str(&format!("By={};Hash={hash};URI={peer}", id.spiffe_id))
            {
                h.insert(XFCC, v);
            }
        }
        ListenerDirection::Gateway => {
            // Clients outside the mesh must not forge identities.
            h.remove(XFCC);
            let proto = if conn.tls { "https" } else { "http" };
            h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
            let xff = match h.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                Some(prev) => format!("{prev}, {}", conn.peer.ip()),
                None => conn.peer.ip().to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&xff) {
                h.insert(X_FORWARDED_FOR, v);
            }
        }
        ListenerDirection::Outbound => {
            h.remove(XFCC);
        }
    }
    let sampling = snap
        .config
        .telemetry
        .tracing
        .as_ref()
        .map_or(0.0, |t| t.sampling_percent);
    out.span = Some(crate::trace::propagate(h, sampling));
    out.route = Some(Arc::clone(route));
    route.request_headers.apply(h);
    if let Some((req_ops, _)) = route.cluster_headers.get(wi) {
        req_ops.apply(h);
    }

    // Hash key for consistent hashing.
    let hash = if cluster.uses_hash() {
        let key: Option<Vec<u8>> = match &cluster.spec.load_balancer.hash_key {
            Some(HashKey::Header(name)) => h.get(name.as_str()).map(|v| v.as_bytes().to_vec()),
            Some(HashKey::Cookie { name, .. }) => cookie(h, name).map(String::into_bytes),
            Some(HashKey::QueryParam(name)) => parse_query(query.unwrap_or(""))
                .into_iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_bytes()),
            Some(HashKey::SourceIp) | None => Some(conn.peer.ip().to_string().into_bytes()),
        };
        key.map(|k| ClusterRuntime::hash_key(&k))
    } else {
        None
    };

    // Body: buffer small bodies when retries or mirrors need replays.
    let wants_replay = f.retries.as_ref().is_some_and(|r| r.attempts > 0) || !f.mirrors.is_empty();
    let hint = body.size_hint();
    let limits = snap.listeners.get(&conn.listener).map(|l| &l.spec.limits);
    let limit = limits.and_then(|l| l.max_request_body_bytes);
    // No route timeout must mean no hang: the stream idle timeout bounds
    // every wait for bytes, in either direction.
    let stream_idle = limits
        .map(|l| l.stream_idle_timeout_ms)
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis);
    // Shared by the two directions only while a request body streams.
    let mut activity: Option<Arc<StreamActivity>> = None;
    // How far a streamed request body got: a failure reading it is the client's.
    let mut progress: Option<Arc<BodyProgress>> = None;
    let mut body = if wants_replay && hint.upper().is_some_and(|u| u <= REPLAY_BUFFER_LIMIT) {
        match Limited::new(body, REPLAY_BUFFER_LIMIT as usize).collect().await {
            Ok(c) => ReqBody::Buffered(c.to_bytes()),
            Err(e) => {
                let fault = ClientFault::of(&*e);
                return client_fault(rt, fault, downstream_h2, out);
            }
        }
    } else {
        ReqBody::Streaming(Some(body))
    };

    // Mirrors: fire and forget, only for replayable bodies.
    if let ReqBody::Buffered(bytes) = &body {
        for m in &f.mirrors {
            if fastrand::f64() * 100.0 >= m.percentage {
                continue;
            }
            let Some(mc) = snap.clusters.get(&m.cluster).cloned() else {
                continue;
            };
            let mut mparts = Request::new(());
            *mparts.method_mut() = parts.method.clone();
            *mparts.headers_mut() = parts.headers.clone();
            if !matches!(mc.spec.tls, UpstreamTls::Mesh { .. }) {
                mparts.headers_mut().remove(crate::peer_metadata::HEADER);
            }
            let shadow = shadow_authority(&authority);
            if let Ok(v) = HeaderValue::from_str(&shadow) {
                mparts.headers_mut().insert(header::HOST, v);
            }
            let (mparts, ()) = mparts.into_parts();
            let bytes = bytes.clone();
            let pq = path_and_query.clone();
            // A mirror never waits longer for a slot than a stream may idle.
            let mirror_wait = stream_idle;
            tokio::spawn(async move {
                let Ok(_slot) = mc.acquire(mirror_wait).await else {
                    return;
                };
                let Some(idx) = mc.pick(None, &[], Instant::now()) else {
                    return;
                };
                let Ok(req) = build_request(mparts.method, mparts.headers, &shadow, &pq, full(bytes), false) else {
                    return;
                };
                if let Ok((resp, _in_flight)) = mc.send(idx, req, false).await {
                    // Drain so the connection can be reused.
                    let _ = resp.into_body().collect().await;
                }
            });
        }
    }

    // The wait for a slot is part of the request's time, and no bytes move during it.
    let deadline = f.timeout_ms.map(|t| start + Duration::from_millis(t));
    let slot_wait = match (
        deadline.map(|d| d.saturating_duration_since(Instant::now())),
        stream_idle,
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let _slot = match cluster.acquire(slot_wait).await {
        Ok(slot) => slot,
        Err(NoSlot::Overflow) => {
            out.flags = "UO";
            return text(StatusCode::SERVICE_UNAVAILABLE, "upstream overflow\n");
        }
        Err(NoSlot::TimedOut) => {
            out.flags = "UT";
            return text(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout (queued for a connection)\n",
            );
        }
    };
    cluster.active_requests.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(&cluster);

    let retry = f.retries.as_ref().unwrap_or(&NO_RETRIES);
    let max_attempts = 1 + retry.attempts;
    let mut tried: Vec<usize> = Vec::new();
    let mut last_failure: (StatusCode, &'static str, String) =
        (StatusCode::SERVICE_UNAVAILABLE, "UH", "no healthy upstream\n".into());
    for attempt in 0..max_attempts {
        if attempt > 0 {
            // Retry budget: bound concurrent retries relative to active requests.
            if let Some(pct) = retry.budget_percent {
                let active = cluster.active_requests.load(Ordering::Relaxed) as f64;
                let allowed = (active * pct / 100.0).max(3.0);
                if cluster.active_retries.load(Ordering::Relaxed) as f64 >= allowed {
                    break;
                }
            }
            let base = retry.backoff_base_ms;
            let cap = retry.backoff_max_ms.unwrap_or(base * 10);
            let exp = base.saturating_mul(1 << (attempt - 1).min(16)).min(cap);
            let mut sleep = Duration::from_millis(fastrand::u64(0..=exp));
            if let Some(d) = deadline {
                sleep = sleep.min(d.saturating_duration_since(Instant::now()));
            }
            tokio::time::sleep(sleep).await;
        }
        let Some(idx) = cluster.pick(hash, &tried, Instant::now()) else {
            out.flags = "UH";
            return text(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n");
        };
        tried.push(idx);
        out.endpoint = Some(idx);
        // Only a body still streaming from the client can show activity while
        // the response is awaited; an empty or buffered one goes out at once.
        let mut body_streams = false;
        let attempt_body = match &mut body {
            ReqBody::Buffered(b) => full(b.clone()),
            ReqBody::Streaming(b) => match b.take() {
                Some(b) if b.is_end_stream() => b.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
                Some(b) => {
                    body_streams = true;
                    let shared = Arc::new(StreamActivity::default());
                    activity = Some(Arc::clone(&shared));
                    let read = Arc::new(BodyProgress::default());
                    progress = Some(Arc::clone(&read));
                    let b = IdleBody::new(b, Some(shared), None);
                    match limit {
                        Some(max) => ClientBody::new(Limited::new(b, max as usize), read).boxed_unsync(),
                        None => ClientBody::new(b, read).boxed_unsync(),
                    }
                }
                // A streamed body cannot be replayed.
                None => break,
            },
        };
        let upstream_h2 = upgrade.is_none() && cluster.uses_h2(downstream_h2);
        // The last attempt takes the head instead of copying it.
        let (method, headers) = if attempt + 1 == max_attempts {
            (std::mem::take(&mut parts.method), std::mem::take(&mut parts.headers))
        } else {
            (parts.method.clone(), parts.headers.clone())
        };
        let req = match build_request(method, headers, &authority, &path_and_query, attempt_body, upstream_h2) {
            Ok(r) => r,
            Err(_) => return text(StatusCode::BAD_REQUEST, "invalid request target\n"),
        };
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let per_try = retry.per_try_timeout_ms.map(Duration::from_millis);
        let budget = match (remaining, per_try) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if attempt > 0 {
            cluster.active_retries.fetch_add(1, Ordering::Relaxed);
        }
        let sent = cluster.send(idx, req, upstream_h2);
        let mut idle_expired = false;
        let result = if let Some(activity) = activity.as_ref().filter(|_| body_streams) {
            activity.touch();
            // Request bytes keep the stream alive: watch the shared activity.
            let timed = async {
                match budget {
                    Some(t) => tokio::time::timeout(t, sent).await.ok(),
                    None => Some(sent.await),
                }
            };
            tokio::select! {
                r = timed => r,
                () = activity.idle(stream_idle) => {
                    idle_expired = true;
                    None
                }
            }
        } else {
            // Nothing moves until the response: one timer, the nearer limit.
            match (budget, stream_idle) {
                (Some(b), Some(i)) if i < b => {
                    let r = tokio::time::timeout(i, sent).await.ok();
                    idle_expired = r.is_none();
                    r
                }
                (Some(b), _) => tokio::time::timeout(b, sent).await.ok(),
                (None, Some(i)) => {
                    let r = tokio::time::timeout(i, sent).await.ok();
                    idle_expired = r.is_none();
                    r
                }
                (None, None) => Some(sent.await),
            }
        };
        if attempt > 0 {
            cluster.active_retries.fetch_sub(1, Ordering::Relaxed);
        }
        // A request body that broke on the client's side broke the attempt:
        // answer the client, and leave the endpoint's health alone.
        if let Some(fault) = progress.as_ref().and_then(|p| p.fault())
            && !matches!(result, Some(Ok(_)))
        {
            return client_fault(rt, fault, downstream_h2, out);
        }
        // Still waiting for the client's body: a timeout is not the upstream's.
        let client_pending = progress.as_ref().is_some_and(|p| !p.is_complete());
        let now = Instant::now();
        let last = attempt + 1 == max_attempts;
        match result {
            None if idle_expired => {
                last_failure = (StatusCode::GATEWAY_TIMEOUT, "SI", "stream idle timeout\n".into());
                break;
            }
            None => {
                if !client_pending && cluster.record(idx, Outcome::LocalFailure, now) {
                    rt.metrics.outlier_ejected();
                }
                last_failure = (StatusCode::GATEWAY_TIMEOUT, "UT", "upstream request timeout\n".into());
                let overall_expired = deadline.is_some_and(|d| now >= d);
                if overall_expired || !retry_on_timeout(retry) {
                    break;
                }
            }
            Some(Err(e)) => {
                if cluster.record(idx, Outcome::LocalFailure, now) {
                    rt.metrics.outlier_ejected();
                }
                let (flag, cond) = match &e {
                    UpstreamError::ConnectFailure { .. } => ("UF", RetryOn::ConnectFailure),
                    // A response that is not HTTP is the upstream's fault: 502, like Envoy's UPE.
                    UpstreamError::Reset { source, .. } if source.is_parse() => ("UPE", RetryOn::Reset),
                    UpstreamError::Reset { .. } => ("UC", RetryOn::Reset),
                };
                tracing::debug!(error = %e, cluster = %cluster.spec.name, "upstream attempt failed");
                last_failure = if flag == "UPE" {
                    (StatusCode::BAD_GATEWAY, flag, format!("upstream protocol error: {e}\n"))
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        flag,
                        format!("upstream connect error or disconnect/reset before headers: {e}\n"),
                    )
                };
                if !retry_on_error(retry, cond) {
                    break;
                }
            }
            Some(Ok((resp, in_flight))) => {
                let status = resp.status();
                let outcome = if status.is_server_error() {
                    Outcome::Status5xx(status.as_u16())
                } else {
                    Outcome::Success
                };
                if cluster.record(idx, outcome, now) {
                    rt.metrics.outlier_ejected();
                }
                if !last && retry_on_status(retry, status) && matches!(body, ReqBody::Buffered(_)) {
                    // Discard and retry (the body is replayable).
                    drop(resp);
                    out.flags = "URX";
                    continue;
                }
                if out.flags == "URX" {
                    out.flags = "-";
                }
                let mut resp = resp;
                let switching = status == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_some();
                let upstream_upgrade = switching.then(|| hyper::upgrade::on(&mut resp));
                let (mut rparts, rbody) = resp.into_parts();
                let kept = switching.then(|| {
                    (
                        rparts.headers.get(header::UPGRADE).cloned(),
                        rparts.headers.get(header::CONNECTION).cloned(),
                    )
                });
                strip_hop_headers(&mut rparts.headers);
                if let (Some((u, c)), Some(up), Some(down)) = (kept, upstream_upgrade, downstream_upgrade) {
                    if let Some(u) = u {
                        rparts.headers.insert(header::UPGRADE, u);
                    }
                    if let Some(c) = c {
                        rparts.headers.insert(header::CONNECTION, c);
                    }
                    tokio::spawn(splice_upgraded(down, up, stream_idle, in_flight));
                    let body = http_body_util::Empty::new()
                        .map_err(|never| match never {})
                        .boxed_unsync();
                    return Response::from_parts(rparts, body);
                }
                if let Some((_, resp_ops)) = route.cluster_headers.get(wi) {
                    resp_ops.apply(&mut rparts.headers);
                }
                let rbody =
                    IdleBody::new(InFlightBody::new(rbody, in_flight), activity.clone(), stream_idle).boxed_unsync();
                return Response::from_parts(rparts, rbody);
            }
        }
    }
    let (status, flag, msg) = last_failure;
    out.flags = if tried.len() > 1 && flag != "UT" && flag != "SI" {
        "URX"
    } else {
        flag
    };
    text(status, &msg)
}

/// Copy bytes both ways between an upgraded client and upstream connection,
/// until either side closes or no bytes move for `idle`.
/// The upgraded stream stays active on its endpoint until it ends.
async fn splice_upgraded(
    down: hyper::upgrade::OnUpgrade,
    up: hyper::upgrade::OnUpgrade,
    idle: Option<Duration>,
    _in_flight: InFlight,
) {
    let (Ok(down), Ok(up)) = (down.await, up.await) else {
        tracing::debug!("upgrade did not complete");
        return;
    };
    // Bytes in either direction pass through the downstream side, so its
    // idle clock is the stream's.
    let mut down = IdleIo::new(hyper_util::rt::TokioIo::new(down), idle);
    let mut up = hyper_util::rt::TokioIo::new(up);
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(error = %e, "upgraded connection ended with error");
    }
}

struct ActiveGuard<'a>(&'a ClusterRuntime);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answer a request whose body failed on the client's side.
fn client_fault(rt: &Runtime, fault: ClientFault, h2: bool, out: &mut RequestOutcome) -> Response<Body> {
    if fault != ClientFault::Gone {
        rt.metrics.downstream_rejected();
    }
    out.flags = fault.flag();
    let mut resp = text(fault.status(), fault.message());
    if !h2 {
        // The rest of the body is unread: the connection cannot carry another request.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn retry_on_status(r: &RetryPolicy, status: StatusCode) -> bool {
    let code = status.as_u16();
    r.retry_on.iter().any(|c| match c {
        RetryOn::FiveXx => status.is_server_error(),
        RetryOn::GatewayError => matches!(code, 502..=504),
        RetryOn::Retriable4xx => code == 409,
        RetryOn::RetriableStatusCodes => r.retriable_status_codes.contains(&code),
        RetryOn::Reset | RetryOn::ConnectFailure => false,
    })
}

fn retry_on_error(r: &RetryPolicy, cond: RetryOn) -> bool {
    r.retry_on
        .iter()
        .any(|c| *c == cond || matches!(c, RetryOn::FiveXx | RetryOn::GatewayError))
}

fn retry_on_timeout(r: &RetryPolicy) -> bool {
    // Envoy retries per-try timeouts under 5xx and gateway-error.
    r.retry_on
        .iter()
        .any(|c| matches!(c, RetryOn::FiveXx | RetryOn::GatewayError))
}

fn build_request(
    method: Method,
    mut headers: HeaderMap,
    authority: &str,
    path_and_query: &str,
    body: Body,
    h2: bool,
) -> Result<Request<Body>, http::Error> {
    // HTTP/1 sends origin-form with Host; HTTP/2 needs the authority in the URI.
    let uri: Uri = if h2 {
        format!("http://{authority}{path_and_query}").parse()?
    } else {
        path_and_query.parse()?
    };
    if h2 {
        headers.remove(header::HOST);
    }
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = if h2 { Version::HTTP_2 } else { Version::HTTP_11 };
    *req.headers_mut() = headers;
    Ok(req)
}

fn strip_hop_headers(h: &mut HeaderMap) {
    // Headers named by Connection are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    let keep_trailers = h
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
    for n in &HOP_HEADERS {
        h.remove(n);
    }
    if keep_trailers {
        // gRPC needs `te: trailers` end to end.
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn shadow_authority(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => format!("{h}-shadow:{p}"),
        _ => format!("{authority}-shadow"),
    }
}

fn cookie(h: &HeaderMap, name: &str) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A request's metrics, recorded once its response body ends.
struct Pending {
    rt: Arc<Runtime>,
    labels: RequestLabels,
    start: Instant,
    req_bytes: u64,
}

impl Pending {
    fn record(self, resp_bytes: u64) {
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        self.rt
            .metrics
            .record_request(self.labels, ms, self.req_bytes, resp_bytes);
    }
}

/// A response body that counts bytes and reports when it ends or is dropped.
struct ObservedBody {
    inner: Body,
    bytes: u64,
    done: Option<Pending>,
}

impl hyper::body::Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(done) = this.done.take() {
                    done.record(this.bytes);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done.record(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_headers_are_stripped_but_te_trailers_kept() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_headers(&mut h);
        assert!(h.get("x-secret").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get(header::UPGRADE).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert!(h.get("x-keep").is_some());
    }

    #[test]
    fn shadow_and_cookie_and_host_parsing() {
        assert_eq!(shadow_authority("payment:8080"), "payment-shadow:8080");
        assert_eq!(shadow_authority("payment"), "payment-shadow");
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; user=bob"));
        assert_eq!(cookie(&h, "user").as_deref(), Some("bob"));
        assert_eq!(split_host_port("Example.COM:8080"), ("example.com".into(), Some(8080)));
        assert_eq!(split_host_port("[::1]:80"), ("[::1]".into(), Some(80)));
        assert_eq!(split_host_port("svc"), ("svc".into(), None));
    }

    #[test]
    fn retry_conditions() {
        let r = RetryPolicy {
            attempts: 1,
            per_try_timeout_ms: None,
            retry_on: vec![RetryOn::GatewayError, RetryOn::RetriableStatusCodes],
            retriable_status_codes: vec![429],
            backoff_base_ms: 1,
            backoff_max_ms: None,
            budget_percent: None,
        };
        assert!(retry_on_status(&r, StatusCode::BAD_GATEWAY));
        assert!(!retry_on_status(&r, StatusCode::INTERNAL_SERVER_ERROR));
        assert!(retry_on_status(&r, StatusCode::TOO_MANY_REQUESTS));
        assert!(retry_on_error(&r, RetryOn::Reset));
        assert!(retry_on_timeout(&r));
    }
}
