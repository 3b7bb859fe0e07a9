//! The HTTP request pipeline, one stage after another: admission (request-head
//! hardening checks, path normalization; [`admission`]), end-user (JWT)
//! authentication ([`crate::jwt`]), inbound authorization,
//! routing, CORS, fault injection, then the route's action — a direct
//! response, a redirect, or forwarding with retries, timeouts, mirroring and
//! header mutations ([`forward`], [`retry`], [`headers`]); `CONNECT` tunnels on outbound
//! listeners ([`tunnel`]) — and telemetry
//! around all of it: trace propagation, metrics, access logs ([`telemetry`]).

mod admission;
mod forward;
mod headers;
mod retry;
mod telemetry;
mod tunnel;

use self::admission::{authority, check_head, split_host_port};
use self::forward::forward;
use self::telemetry::{ObservedBody, Pending, RequestOutcome, labels, record_span};
use crate::authz::{Layer, authorize, peer_namespace};
use crate::connection::ConnContext;
use crate::path::normalize;
use crate::request_body::DrainOnDrop;
use crate::routing::{HttpHeaders, RequestView, redirect_target};
use crate::runtime::Runtime;
use crate::snapshot::{ListenerRuntime, Snapshot};
use crate::upstream::Body;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use trellis_contract::authorization::AuthzRequest;
use trellis_contract::{ListenerDirection, Redirect, RouteAction};

/// The original client's address (`remote.ip`), as Istio's Envoy reads it with no trusted
/// proxies configured: at a gateway, the connection's peer; behind one (an inbound sidecar),
/// the last hop `X-Forwarded-For` names, which the gateway appended.
fn remote_ip(conn: &ConnContext, headers: &http::HeaderMap) -> std::net::IpAddr {
    if conn.direction == ListenerDirection::Gateway {
        return conn.peer.ip();
    }
    headers
        .get_all(headers::X_FORWARDED_FOR)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|ip| ip.trim().parse().ok())
        .unwrap_or(conn.peer.ip())
}

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

/// Handle one downstream request, in flight on its connection as `request` says until its
/// response body ends. Never fails: every error is a response.
pub async fn handle(
    rt: Arc<Runtime>,
    conn: Arc<ConnContext>,
    req: Request<DrainOnDrop>,
    request: crate::downstream_waits::InRequest,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let snap = rt.snapshot();
    let method = req.method().clone();
    let access_log = snap.settings.telemetry.access_log.enabled;
    let exporting = snap
        .settings
        .telemetry
        .tracing
        .as_ref()
        .is_some_and(|t| t.otlp_endpoint.is_some());
    // Only access logs need the original path, and spans what they record of the request:
    // no copies otherwise.
    let path_for_log = if access_log {
        req.uri().path().to_string()
    } else {
        String::new()
    };
    let facts = exporting.then(|| crate::spans::RequestFacts::of(&req));
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let req_bytes = req.body().size_hint().exact().unwrap_or(0);
    // Only a verified mesh peer's metadata is believed (inbound mTLS).
    let source_meta = match (conn.direction, conn.peer_identity.as_deref()) {
        (ListenerDirection::Inbound, Some(principal)) => {
            crate::peer_metadata::verified_source_on(&conn.first_source, req.headers(), principal)
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
    let labels = labels(&snap, &conn, &out, source_meta, &resp, grpc);
    if let Some(facts) = &facts {
        record_span(&rt, &conn, &mut out, facts, &labels, status, started_at);
    }
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
            conn,
            labels,
            start,
            req_bytes,
            _request: request,
        }),
    };
    Ok(Response::from_parts(parts, body.boxed_unsync()))
}

async fn pipeline(
    rt: &Arc<Runtime>,
    snap: &Arc<Snapshot>,
    listener: &Arc<ListenerRuntime>,
    conn: &Arc<ConnContext>,
    mut req: Request<DrainOnDrop>,
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
    if req.method() == Method::CONNECT {
        return tunnel::tunnel(rt, snap, listener, conn, req, out).await;
    }
    let (host, host_port) = split_host_port(&authority);
    // why: inbound traffic arrives on the workload's port (the original destination); its Host
    // names the Service port, which often differs (port 80 → targetPort 8080).
    let port = match conn.direction {
        ListenerDirection::Inbound => conn.dst.port(),
        _ => host_port.unwrap_or(conn.dst.port()),
    };
    // A cheap copy (shared bytes) the path borrows from while `req` changes and moves on.
    let uri = req.uri().clone();
    let path = match normalize(uri.path(), &listener.spec.path_normalization) {
        Ok(p) => p,
        Err(e) => {
            rt.metrics.downstream_rejected();
            out.flags = "DPE";
            return text(StatusCode::BAD_REQUEST, &format!("{e}\n"));
        }
    };
    let query = uri.query();

    // why: Istio enforces RequestAuthentications and AuthorizationPolicies where traffic
    // enters a workload: its inbound listener, and a gateway's listeners (policies selecting
    // or targeting the gateway).
    let enforced = matches!(conn.direction, ListenerDirection::Inbound | ListenerDirection::Gateway);
    let auth = if enforced && !snap.authenticator.is_empty() {
        match snap.authenticator.authenticate(req.headers_mut(), query, unix_now()) {
            Ok(auth) => auth,
            Err(e) => {
                rt.metrics.jwt_rejected();
                // The reason only: never the token.
                tracing::debug!(reason = %e, %path, "request refused: JWT verification failed");
                let mut resp = text(StatusCode::UNAUTHORIZED, &e.to_string());
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
                return resp;
            }
        }
    } else {
        None
    };
    if enforced && !snap.authorizer.is_empty() {
        let principal = conn.peer_identity.as_deref();
        let ns = peer_namespace(principal);
        let attributes = AuthzRequest {
            layer: Layer::Http,
            principal,
            namespace: ns.as_deref(),
            source_ip: conn.peer.ip(),
            remote_ip: remote_ip(conn, req.headers()),
            destination_ip: conn.dst.ip(),
            sni: conn.sni.as_deref(),
            port,
            host: &host,
            method: req.method().as_str(),
            path: &path,
            headers: &HttpHeaders(req.headers()),
            auth: auth.as_ref(),
        };
        let decision = authorize(&snap.authorizer, &attributes, &rt.metrics);
        if !decision.allowed() {
            tracing::debug!(?decision, %path, peer = ?principal, "authorization denied");
            return text(StatusCode::FORBIDDEN, "RBAC: access denied\n");
        }
    }

    let view = RequestView {
        method: req.method().as_str(),
        path: &path,
        query,
        host: &host,
        port,
        headers: req.headers(),
    };
    // What no virtual host takes: passed through to where it was sent, refused as Istio's
    // BlackHoleCluster (502), or 404.
    let hit = listener
        .routes
        .route(&view)
        .or_else(|| listener.passthrough.as_ref()?.route(&view));
    let Some(hit) = hit else {
        out.flags = "NR";
        if listener.spec.unrouted == trellis_contract::Unrouted::BlackHole {
            return text(
                StatusCode::BAD_GATEWAY,
                "no route: the host is not in the mesh's registry (outboundTrafficPolicy REGISTRY_ONLY)\n",
            );
        }
        return text(StatusCode::NOT_FOUND, "no route\n");
    };
    let route = Arc::clone(&hit.route);

    // CORS: answer preflights, remember the origin for the actual response. A preflight from
    // an origin not allowed goes on to the upstream (Istio's default, `unmatchedPreflights:
    // FORWARD`), or is answered without CORS headers (`IGNORE`).
    let mut cors_origin = None;
    if let (Some(cors), Some(origin)) = (&route.cors, req.headers().get(header::ORIGIN)) {
        let allowed = origin.to_str().is_ok_and(|o| cors.allows_origin(o));
        let preflight =
            req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight && (allowed || cors.ignore_unmatched_preflights) {
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
            RouteAction::Redirect(rd) => redirect(rd, conn, &host, host_port, &path, query, hit.matched_prefix),
            RouteAction::Forward(f) => forward(rt, snap, conn, req, f, &hit, &authority, &path, query, out).await,
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

/// Seconds since the Unix epoch (a clock before 1970 reads as 0: every `exp` has passed).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn redirect(
    rd: &Redirect,
    conn: &ConnContext,
    host: &str,
    host_port: Option<u16>,
    path: &str,
    query: Option<&str>,
    matched_prefix: Option<usize>,
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
    let target = redirect_target(rd, path, query, matched_prefix);
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
