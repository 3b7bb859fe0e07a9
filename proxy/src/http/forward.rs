//! Forwarding: the route's destination, rewrites and header mutations, the
//! request body (buffered for replays or streamed), mirrors, the request
//! slot, and the attempts with their retries and timeouts.

use super::headers::{
    X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID, XFCC, build_request, cookie, shadow_authority, strip_hop_headers,
};
use super::retry::{NO_RETRIES, retry_on_error, retry_on_status, retry_on_timeout, take_retry};
use super::telemetry::RequestOutcome;
use super::{ConnContext, full, text};
use crate::idle::{ConnTimer, IdleBody, IdleIo, StreamActivity};
use crate::metrics::Overflow;
use crate::request_body::{BodyProgress, ClientBody, ClientFault, DrainOnDrop};
use crate::routing::{RouteHit, parse_query, rewrite_prefix};
use crate::runtime::Runtime;
use crate::snapshot::Snapshot;
use crate::trace::{Reader, SpanContext};
use crate::upstream::{
    Body, BoxError, ClusterRuntime, InFlight, InFlightBody, NoSlot, Outcome, RetryToken, UpstreamError,
};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{InvalidUri, PathAndQuery};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use trellis_contract::{ForwardAction, HashKey, ListenerDirection, RetryOn, UpstreamTls};

/// Request bodies up to this size are buffered so they can be retried and
/// mirrored; larger or unknown-length bodies are streamed once.
pub(super) const REPLAY_BUFFER_LIMIT: u64 = 64 * 1024;

/// The request body, buffered (replayable) or streamed once.
pub(super) enum ReqBody {
    Buffered(Bytes),
    Streaming(Option<DrainOnDrop>),
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn forward(
    rt: &Arc<Runtime>,
    snap: &Arc<Snapshot>,
    conn: &Arc<ConnContext>,
    req: Request<DrainOnDrop>,
    f: &ForwardAction,
    hit: &RouteHit,
    authority: &str,
    path: &str,
    query: Option<&str>,
    out: &mut RequestOutcome,
) -> Response<Body> {
    let route = &hit.route;
    let start = Instant::now();
    let wi = weighted_choice(f);
    let Some(cluster) = snap.clusters.get(&f.clusters[wi].cluster).cloned() else {
        out.flags = "NC";
        return text(StatusCode::SERVICE_UNAVAILABLE, "no cluster\n");
    };
    // Endpoints found at run time: resolved names, or the address the client dialled.
    let Some(cluster) = crate::discovery::target(&cluster, conn.original_dst()).await else {
        out.flags = "UH";
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no original destination: the connection was not redirected to the proxy\n",
        );
    };
    out.cluster = Some(Arc::clone(&cluster));

    let (mut parts, body) = req.into_parts();
    let downstream_h2 = parts.version == Version::HTTP_2;

    let Ok((authority, path_and_query)) = upstream_target(f, hit, authority, &parts.uri, path, query) else {
        return text(StatusCode::BAD_REQUEST, "invalid request target\n");
    };

    let (upgrade, downstream_upgrade) = take_upgrade(&mut parts);

    let hop = Hop {
        snap,
        conn,
        cluster: &cluster,
        route,
        wi,
    };
    if hop
        .request_headers(&mut parts.headers, &authority, upgrade.as_ref(), out)
        .is_err()
    {
        return text(StatusCode::BAD_REQUEST, "invalid authority\n");
    }

    let hash = hash_key(&cluster, &parts.headers, query, conn);

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

    if let ReqBody::Buffered(bytes) = &body {
        mirror(
            snap,
            f,
            &parts,
            out.span.as_ref(),
            &authority,
            &path_and_query,
            bytes,
            stream_idle,
        );
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
    // Circuit breaking: a slot (maxConnections, queued up to maxPendingRequests), then a
    // place among the cluster's active requests (maxRequests). Refused before any endpoint
    // is picked, so an overflow never counts against an endpoint's health.
    let mut admission = match cluster.circuit.admit(slot_wait).await {
        Ok(admission) => Some(admission),
        Err(NoSlot::Overflow) => {
            rt.metrics.upstream_overflow(&cluster.spec.name, Overflow::Request);
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

    let retry = f.retries.as_ref().unwrap_or(&NO_RETRIES);
    let max_attempts = 1 + retry.attempts;
    // Endpoints tried, for retries to avoid (why: kept only when there can be a retry, so a
    // request without one allocates nothing here).
    let mut tried: Vec<usize> = Vec::new();
    let mut attempts_made = 0;
    let mut last_failure: (StatusCode, &'static str, Cow<'static, str>) =
        (StatusCode::SERVICE_UNAVAILABLE, "UH", "no healthy upstream\n".into());
    // The retry in flight (maxRetries, the route's budget), held until the next decision.
    let mut retrying: Option<RetryToken<'_>> = None;
    for attempt in 0..max_attempts {
        if attempt > 0 {
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
        attempts_made += 1;
        if max_attempts > 1 {
            tried.push(idx);
        }
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
        let watched = activity.as_deref().filter(|_| body_streams);
        let result = {
            // why: the send future (the upstream exchange, about 1.5 KB) is pinned where it is
            // made, and the waits take a reference to it, instead of moving it into each
            // wrapping future (three copies a request). Dropped at the end of this block, as
            // before: a timed-out attempt is cancelled before its failure is recorded.
            let sent = std::pin::pin!(cluster.send(idx, req, upstream_h2));
            await_response(sent, budget, stream_idle, watched, &conn.timer).await
        };
        // A request body that broke on the client's side broke the attempt:
        // answer the client, and leave the endpoint's health alone.
        if let Some(fault) = progress.as_ref().and_then(|p| p.fault())
            && !matches!(result, Awaited::Answer(Ok(_)))
        {
            return client_fault(rt, fault, downstream_h2, out);
        }
        // Still waiting for the client's body: a timeout is not the upstream's.
        let client_pending = progress.as_ref().is_some_and(|p| !p.is_complete());
        let now = Instant::now();
        let last = attempt + 1 == max_attempts;
        match result {
            Awaited::Idle => {
                last_failure = (StatusCode::GATEWAY_TIMEOUT, "SI", "stream idle timeout\n".into());
                break;
            }
            Awaited::TimedOut => {
                if !client_pending && cluster.record(idx, Outcome::LocalFailure, now) {
                    rt.metrics.outlier_ejected();
                }
                last_failure = (StatusCode::GATEWAY_TIMEOUT, "UT", "upstream request timeout\n".into());
                let overall_expired = deadline.is_some_and(|d| now >= d);
                if last
                    || overall_expired
                    || !retry_on_timeout(retry)
                    || !take_retry(rt, &cluster, retry.budget_percent, &mut retrying)
                {
                    break;
                }
            }
            Awaited::Answer(Err(e)) => {
                if cluster.record(idx, Outcome::LocalFailure, now) {
                    rt.metrics.outlier_ejected();
                }
                tracing::debug!(error = %e, cluster = %cluster.spec.name, "upstream attempt failed");
                if matches!(e, UpstreamError::TlsHandshake { .. }) {
                    rt.metrics.upstream_tls_failed(&cluster.spec.name);
                }
                let (status, flag, message, cond) = upstream_failure(&e);
                last_failure = (status, flag, message);
                if last
                    || !retry_on_error(retry, cond)
                    || !take_retry(rt, &cluster, retry.budget_percent, &mut retrying)
                {
                    break;
                }
            }
            Awaited::Answer(Ok((resp, mut in_flight))) => {
                let status = resp.status();
                let outcome = if status.is_server_error() {
                    Outcome::Status5xx(status.as_u16())
                } else {
                    Outcome::Success
                };
                if cluster.record(idx, outcome, now) {
                    rt.metrics.outlier_ejected();
                }
                // A retry beyond maxRetries is not made: this answer is returned.
                if !last
                    && retry_on_status(retry, status)
                    && matches!(body, ReqBody::Buffered(_))
                    && take_retry(rt, &cluster, retry.budget_percent, &mut retrying)
                {
                    // Discard and retry (the body is replayable).
                    drop(resp);
                    out.flags = "URX";
                    continue;
                }
                if out.flags == "URX" {
                    out.flags = "-";
                }
                // The request stays admitted (slot, active request) until its answer ends.
                if let Some(a) = admission.take() {
                    in_flight.hold(a);
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
                    tokio::spawn(splice_upgraded(down, up, stream_idle, in_flight, conn.requests.begin()));
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
    out.flags = if attempts_made > 1 && flag != "UT" && flag != "SI" {
        "URX"
    } else {
        flag
    };
    text(status, &msg)
}

/// Copy bytes both ways between an upgraded client and upstream connection,
/// until either side closes or no bytes move for `idle`.
/// The upgraded stream stays active on its endpoint, and a request in flight on the client's
/// connection, until it ends.
pub(super) async fn splice_upgraded(
    down: hyper::upgrade::OnUpgrade,
    up: hyper::upgrade::OnUpgrade,
    idle: Option<Duration>,
    _in_flight: InFlight,
    _request: crate::downstream_waits::InRequest,
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

/// Answer a request whose body failed on the client's side.
pub(super) fn client_fault(rt: &Runtime, fault: ClientFault, h2: bool, out: &mut RequestOutcome) -> Response<Body> {
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

/// Pick one of the route's weighted destinations (validation guarantees the
/// weights sum to 100).
pub(super) fn weighted_choice(f: &ForwardAction) -> usize {
    let total: u32 = f.clusters.iter().map(|c| c.weight).sum();
    let mut roll = fastrand::u32(0..total.max(1));
    for (i, c) in f.clusters.iter().enumerate() {
        if roll < c.weight {
            return i;
        }
        roll -= c.weight;
    }
    0
}

/// The upstream authority and path-and-query after the route's rewrites (`path` is the
/// normalized path of `uri`, `query` its query). `Err`: a rewrite made an invalid target.
fn upstream_target(
    f: &ForwardAction,
    hit: &RouteHit,
    authority: &str,
    uri: &Uri,
    path: &str,
    query: Option<&str>,
) -> Result<(String, PathAndQuery), InvalidUri> {
    let route = &hit.route;
    let mut new_path = Cow::Borrowed(path);
    if let Some(rw) = &f.rewrite {
        if let Some(prefix) = &rw.uri_prefix {
            new_path = rewrite_prefix(path, hit.matched_prefix, prefix).into();
        }
        if let Some((re, sub)) = &route.rewrite_regex {
            new_path = re.replace_all(&new_path, sub.as_str()).into_owned().into();
        }
    }
    let authority = f
        .rewrite
        .as_ref()
        .and_then(|r| r.authority.clone())
        .unwrap_or_else(|| authority.to_string());
    // why: a path that neither normalization nor a rewrite changed goes upstream as the
    // client sent it, shared, instead of copied and parsed again (every request, nearly).
    let path_and_query = match (uri.path_and_query(), &new_path) {
        (Some(sent), Cow::Borrowed(p)) if sent.path() == *p => sent.clone(),
        _ => PathAndQuery::from_maybe_shared(Bytes::from(match query {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path.into_owned(),
        }))?,
    };
    Ok((authority, path_and_query))
}

/// Upgrades (WebSocket and friends) on HTTP/1.1: the `Upgrade` header to keep,
/// and the downstream connection to splice after a 101.
fn take_upgrade(parts: &mut http::request::Parts) -> (Option<HeaderValue>, Option<hyper::upgrade::OnUpgrade>) {
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
    (upgrade, downstream_upgrade)
}

/// Where a request goes on this hop: what its headers are made from.
struct Hop<'a> {
    snap: &'a Snapshot,
    conn: &'a ConnContext,
    cluster: &'a ClusterRuntime,
    route: &'a Arc<crate::routing::CompiledRoute>,
    /// The weighted destination chosen (its header operations).
    wi: usize,
}

impl Hop<'_> {
    /// Header hygiene and mutations: hop-by-hop headers out, Host, request id,
    /// peer metadata, forwarded-client headers by direction, trace context,
    /// the route's and the destination's operations. `Err`: the authority is
    /// no valid header value (the request is refused, 400).
    fn request_headers(
        &self,
        h: &mut http::HeaderMap,
        authority: &str,
        upgrade: Option<&HeaderValue>,
        out: &mut RequestOutcome,
    ) -> Result<(), http::header::InvalidHeaderValue> {
        let Hop {
            snap,
            conn,
            cluster,
            route,
            wi,
        } = *self;
        strip_hop_headers(h);
        if let Some(u) = upgrade {
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, u.clone());
        }
        // An HTTP/1 request already carries its authority as Host: keep it.
        if h.get(header::HOST).is_none_or(|v| v.as_bytes() != authority.as_bytes()) {
            h.insert(header::HOST, HeaderValue::from_str(authority)?);
        }
        if !h.contains_key(X_REQUEST_ID)
            && let Some(v) = crate::trace::request_id_header()
        {
            h.insert(X_REQUEST_ID, v);
        }
        let to_mesh = matches!(cluster.spec.tls, UpstreamTls::Mesh { .. });
        // Peer metadata: never from the app or a client, only from this proxy and
        // only to a mesh peer that verifies who sent it. (`insert` replaces every copy.)
        match &snap.peer_metadata {
            Some(v) if to_mesh && conn.direction != ListenerDirection::Inbound => {
                h.insert(crate::peer_metadata::HEADER, v.clone());
            }
            _ => {
                h.remove(crate::peer_metadata::HEADER);
            }
        }
        match conn.direction {
            ListenerDirection::Inbound => {
                let value = match (&conn.peer_identity, &conn.peer_cert_sha256, &snap.identity) {
                    (Some(peer), Some(hash), Some(id)) => {
                        let by = id.spiffe_id.as_str();
                        let make = || HeaderValue::from_str(&format!("By={by};Hash={hash};URI={peer}")).ok();
                        // The same for every request of the connection while the proxy's identity is.
                        match conn.xfcc.get_or_init(|| (by.to_string(), make())) {
                            (made_for, value) if made_for == by => value.clone(),
                            _ => make(),
                        }
                    }
                    _ => None,
                };
                match value {
                    Some(v) => h.insert(XFCC, v),
                    None => h.remove(XFCC),
                };
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
            .settings
            .telemetry
            .tracing
            .as_ref()
            .map_or(0.0, |t| t.sampling_percent);
        let reader = if to_mesh {
            Reader::MeshProxy
        } else {
            Reader::Application
        };
        out.span = Some(crate::trace::propagate(h, sampling, reader));
        out.route = Some(Arc::clone(route));
        route.request_headers.apply(h);
        if let Some((req_ops, _)) = route.cluster_headers.get(wi) {
            req_ops.apply(h);
        }
        Ok(())
    }
}

/// The hash key for consistent hashing, when the cluster's balancer wants one.
fn hash_key(cluster: &ClusterRuntime, h: &http::HeaderMap, query: Option<&str>, conn: &ConnContext) -> Option<u64> {
    if cluster.uses_hash() {
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
    }
}

/// Mirrors: fire and forget copies of a replayable request to the route's
/// mirror clusters (`-shadow` authority), each by its percentage.
#[allow(clippy::too_many_arguments)]
fn mirror(
    snap: &Snapshot,
    f: &ForwardAction,
    parts: &http::request::Parts,
    span: Option<&SpanContext>,
    authority: &str,
    path_and_query: &PathAndQuery,
    bytes: &Bytes,
    stream_idle: Option<Duration>,
) {
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
        let mc_mesh = matches!(mc.spec.tls, UpstreamTls::Mesh { .. });
        if !mc_mesh {
            mparts.headers_mut().remove(crate::peer_metadata::HEADER);
        }
        // The trace headers in the formats the mirror's reader reads, not the primary's.
        if let Some(ctx) = span {
            let reader = if mc_mesh {
                Reader::MeshProxy
            } else {
                Reader::Application
            };
            crate::trace::write(mparts.headers_mut(), ctx, reader);
        }
        let shadow = shadow_authority(authority);
        if let Ok(v) = HeaderValue::from_str(&shadow) {
            mparts.headers_mut().insert(header::HOST, v);
        }
        let (mparts, ()) = mparts.into_parts();
        let bytes = bytes.clone();
        let pq = path_and_query.clone();
        // A mirror never waits longer for a slot than a stream may idle.
        let mirror_wait = stream_idle;
        tokio::spawn(async move {
            let Some(mc) = crate::discovery::target(&mc, None).await else {
                return;
            };
            let Ok(_slot) = mc.circuit.acquire(mirror_wait).await else {
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

/// How the wait for a response head ended.
enum Awaited {
    /// The upstream answered, or failed.
    Answer(Result<(Response<Incoming>, InFlight), UpstreamError>),
    /// The route or per-try timeout (`budget`) fired.
    TimedOut,
    /// No bytes moved for the stream idle timeout.
    Idle,
}

/// Wait for the response head within `budget` (route and per-try timeouts)
/// and the stream idle timeout. While the request body still streams
/// (`streaming`), its bytes keep the stream alive; otherwise nothing moves
/// until the response, and one timer — the nearer limit, on the connection's [`ConnTimer`] —
/// does.
async fn await_response(
    sent: impl std::future::Future<Output = Result<(Response<Incoming>, InFlight), UpstreamError>>,
    budget: Option<Duration>,
    stream_idle: Option<Duration>,
    streaming: Option<&StreamActivity>,
    timer: &ConnTimer,
) -> Awaited {
    if let Some(activity) = streaming {
        activity.touch();
        let timed = async {
            match budget {
                Some(t) => tokio::time::timeout(t, sent)
                    .await
                    .map_or(Awaited::TimedOut, Awaited::Answer),
                None => Awaited::Answer(sent.await),
            }
        };
        return tokio::select! {
            r = timed => r,
            () = activity.idle(stream_idle) => Awaited::Idle,
        };
    }
    let (limit, expired) = match (budget, stream_idle) {
        (Some(b), Some(i)) if i < b => (i, Awaited::Idle),
        (Some(b), _) => (b, Awaited::TimedOut),
        (None, Some(i)) => (i, Awaited::Idle),
        (None, None) => return Awaited::Answer(sent.await),
    };
    timer
        .within(tokio::time::Instant::now() + limit, sent)
        .await
        .map_or(expired, Awaited::Answer)
}

/// The answer to a failed attempt, and the retry condition it meets.
fn upstream_failure(e: &UpstreamError) -> (StatusCode, &'static str, Cow<'static, str>, RetryOn) {
    match e {
        UpstreamError::ConnectFailure { .. } | UpstreamError::TlsHandshake { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "UF",
            format!("upstream connect error or disconnect/reset before headers: {e}\n").into(),
            RetryOn::ConnectFailure,
        ),
        // A response that is not HTTP is the upstream's fault: 502, like Envoy's UPE.
        UpstreamError::Reset { source, .. } if source.is_parse() => (
            StatusCode::BAD_GATEWAY,
            "UPE",
            format!("upstream protocol error: {e}\n").into(),
            RetryOn::Reset,
        ),
        UpstreamError::Reset { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "UC",
            format!("upstream connect error or disconnect/reset before headers: {e}\n").into(),
            RetryOn::Reset,
        ),
    }
}
