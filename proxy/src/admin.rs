//! The admin API: `/ready`, `/live`, `/metrics`, `/config_dump` (effective
//! listeners, routes, clusters, endpoints with health, certificate metadata,
//! never private keys) and `/logging`. Three roles share one implementation:
//! the localhost admin port serves everything, the stats port `/metrics`, the
//! health port the probes. The stats port also serves the app's own metrics
//! after the proxy's, when the pod asked for them ([`crate::app_metrics`]).

use crate::downstream_waits::{HttpConnIo, Requests};
use crate::head::{GuardedIo, Verdicts};
use crate::identity::describe;
use crate::runtime::Runtime;
use crate::upstream::Body;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use trellis_contract::ProxyConfig;

/// Which endpoints a server exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRole {
    /// Everything (localhost only).
    Admin,
    /// `/metrics` and `/stats/prometheus`.
    Stats,
    /// `/ready`, `/healthz/ready`, `/live`.
    Health,
}

/// Connections one admin server holds at once; more are closed on arrival.
/// Plenty for probes and scrapes, and a bound on the descriptors they take:
/// the admin servers are outside the traffic listeners' connection budget.
const MAX_CONNECTIONS: usize = 256;

/// The admin servers' waits, as the listeners' ([`crate::downstream_waits`]): a request head
/// must arrive whole within [`HEAD_TIMEOUT`] of its first byte (the first from the start of the
/// connection), and a kept-alive connection with no request in flight is closed after
/// [`IDLE_TIMEOUT`]. why 60 s: above Prometheus' default scrape interval (15 s) and the
/// kubelet's probe periods, so a scraper's or prober's kept-alive connection lives from one
/// request to the next.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Serve admin requests until the task is aborted.
pub async fn serve(rt: Arc<Runtime>, role: AdminRole, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(?role, "admin connection limit reached; closing");
            continue;
        };
        let rt = Arc::clone(&rt);
        tokio::spawn(async move {
            let (verdicts, requests) = (Arc::new(Verdicts::default()), Requests::new());
            let idle = Arc::clone(&requests);
            let io = HttpConnIo::new(
                GuardedIo::new(tcp, Arc::clone(&verdicts)),
                Arc::clone(&requests),
                HEAD_TIMEOUT,
                IDLE_TIMEOUT,
            );
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (rt, verdicts) = (Arc::clone(&rt), Arc::clone(&verdicts));
                // In flight until answered (every answer is one buffer, written at once).
                let in_flight = requests.begin();
                async move {
                    let refused = match req.version() < http::Version::HTTP_2 {
                        true => verdicts.next_request(),
                        false => None,
                    };
                    let response = match refused {
                        Some(e) => framing_refused(e),
                        None => handle(&rt, role, req).await,
                    };
                    drop(in_flight);
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // why: hyper would time the wait for every request head from when it starts
            // waiting, the wait between kept-alive requests included (a scraper's connection
            // closed after 10 s); `HttpConnIo` times a head from its first byte.
            builder.http1().header_read_timeout(None);
            let conn = builder.serve_connection(TokioIo::new(io), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = idle.idle_timed_out() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(slot);
        });
    }
}

/// The proxy's metrics, its span exporter's counters, and — on the stats
/// port, when the pod asked for it — the app's own metrics after them
/// ([`crate::app_metrics`]).
async fn stats(rt: &Runtime, role: AdminRole, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    let mut text = rt.metrics.render();
    for (name, help, value) in [
        (
            "trellis_proxy_spans_exported_total",
            "Spans the trace collector accepted.",
            rt.spans.exported(),
        ),
        (
            "trellis_proxy_spans_dropped_total",
            "Spans lost: the export queue was full, the collector failed or rejected them, or no collector is set.",
            rt.spans.dropped(),
        ),
    ] {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        ));
    }
    let app = match (&rt.app_metrics, role) {
        (Some(app), AdminRole::Stats) => {
            let timeout = crate::app_metrics::scrape_timeout(req.headers());
            match app.scrape(req.headers().get(header::ACCEPT), timeout).await {
                Ok(answer) => Some(answer),
                Err(e) => {
                    // The proxy's own metrics are served all the same.
                    rt.metrics.app_scrape_failed();
                    tracing::debug!(error = %e, "scraping the app's metrics failed");
                    None
                }
            }
        }
        _ => None,
    };
    let content_type = crate::app_metrics::merged_content_type(app.as_ref().and_then(|(ct, _)| ct.as_ref()));
    let mut body = text.into_bytes();
    if let Some((_, app_text)) = app {
        // The app's metrics go last: an OpenMetrics answer ends with `# EOF`.
        if body.last() != Some(&b'\n') {
            body.push(b'\n');
        }
        body.extend_from_slice(&app_text);
    }
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    r.headers_mut().insert(header::CONTENT_TYPE, content_type);
    r
}

/// The answer to a request whose head the framing guard refused: the connection's framing can
/// no longer be trusted, so it is closed after.
fn framing_refused(e: crate::head::HeadError) -> Response<Body> {
    let mut r = reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n"));
    r.headers_mut()
        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    r
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

async fn handle(rt: &Runtime, role: AdminRole, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let allowed = match role {
        AdminRole::Admin => true,
        AdminRole::Stats => matches!(path, "/metrics" | "/stats/prometheus"),
        AdminRole::Health => matches!(path, "/ready" | "/healthz/ready" | "/live") || path.starts_with("/app-health/"),
    };
    if !allowed {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    }
    match (req.method(), path) {
        (&Method::GET, "/ready" | "/healthz/ready") => {
            if rt.is_ready() {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else if rt.is_draining() {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: waiting for a configuration (and workload certificate)\n",
                )
            }
        }
        (&Method::GET, "/live") => reply(StatusCode::OK, "text/plain", "live\n"),
        (&Method::GET, p) if p.starts_with("/app-health/") => {
            let (status, body) = crate::probes::answer(&rt.app_probes, p).await;
            reply(status, "text/plain", body)
        }
        (&Method::GET, "/metrics" | "/stats/prometheus") => stats(rt, role, &req).await,
        (&Method::GET, "/config_dump") => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&config_dump(rt)).expect("json"),
        ),
        (_, "/logging") => logging(rt, &req),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

fn logging(rt: &Runtime, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    let Some(ctl) = &rt.log_control else {
        return reply(
            StatusCode::NOT_IMPLEMENTED,
            "text/plain",
            "log control is not available\n",
        );
    };
    let level = req.uri().query().and_then(|q| {
        crate::routing::parse_query(q)
            .into_iter()
            .find(|(k, _)| k == "level")
            .map(|(_, v)| v)
    });
    match (req.method(), level) {
        (&Method::POST | &Method::PUT, Some(level)) => match ctl.set(&level) {
            Ok(()) => {
                tracing::info!(filter = %level, "log level changed");
                reply(StatusCode::OK, "text/plain", format!("{}\n", ctl.current()))
            }
            Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("invalid level: {e}\n")),
        },
        (&Method::GET, None) => reply(StatusCode::OK, "text/plain", format!("{}\n", ctl.current())),
        _ => reply(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "use GET /logging, or POST /logging?level=<filter>\n",
        ),
    }
}

/// `/config_dump`: the effective configuration, for humans and `meshctl proxy-config`.
///
/// Serialized straight to text, the config as a typed value: built as a `serde_json::Value`
/// first, the tree of a sidecar's config was several times its JSON (for the convergence
/// benchmark's 751 KiB config, the proxy's RSS grew by 6.9 MiB after one dump, which the
/// allocator kept).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigDump {
    version: String,
    ready: bool,
    last_rejected: Option<serde_json::Value>,
    downstream_connections: serde_json::Value,
    config: ProxyConfig,
    cluster_status: Vec<serde_json::Value>,
    workload_certificate: Option<serde_json::Value>,
}

/// The effective configuration, for humans and `meshctl proxy-config`.
pub fn config_dump(rt: &Runtime) -> ConfigDump {
    let snap = rt.snapshot();
    // Never expose private keys.
    let config = snap.config().into_redacted();
    let now = Instant::now();
    let mut clusters: Vec<_> = snap
        .clusters
        .values()
        .map(|c| {
            json!({
                "name": c.spec.name,
                "activeRequests": c.circuit.active_requests.load(Ordering::Relaxed),
                // A static cluster's endpoints are its config's, in order (a cluster with
                // run-time discovery has none here).
                "endpoints": c.endpoints.iter().zip(&c.spec.endpoints).map(|(e, spec)| json!({
                    "address": e.addr.to_string(),
                    "health": e.health,
                    "ejected": e.ejected(now),
                    "activeRequests": e.active.load(Ordering::Relaxed),
                    "identity": spec.identity,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    clusters.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let certificates = snap.identity.as_ref().map(|id| {
        json!({
            "spiffeId": id.spiffe_id,
            "chain": id.cert.chain.iter().filter_map(describe).collect::<Vec<_>>(),
        })
    });
    ConfigDump {
        version: snap.settings.version.clone(),
        ready: rt.is_ready(),
        last_rejected: rt
            .last_rejection()
            .map(|r| json!({"version": r.version, "error": r.error})),
        downstream_connections: json!({"active": rt.connections.in_use(), "limit": rt.connections.limit()}),
        config,
        cluster_status: clusters,
        workload_certificate: certificates,
    }
}
