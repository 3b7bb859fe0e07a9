//! The operator's admin HTTP API: `/ready`, `/live`, `/metrics` (Prometheus text) and
//! `/debug/syncz` (per-proxy sync state as JSON, every replica's proxies; `?scope=local` for
//! this replica's), `/debug/ca` (the mesh roots and their
//! rotation), `/traffic?window=SECONDS` (the golden signals of this replica's proxies:
//! [`crate::traffic`]), `/traffic/series?service=FQDN` (one service's edges slot by slot), and
//! the web dashboard under `/dashboard/` ([`dashboard`]). No secrets are ever served
//! here.

pub mod dashboard;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::ca::MeshRoots;
use crate::index::Shared;
use crate::push::PushService;

/// What the admin API reads.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Push sync state.
    pub push: PushService,
    /// The other replicas' proxies.
    pub peers: crate::peers::Peers,
    /// Where the other replicas are (the dashboard asks them for their traffic).
    pub replicas: crate::peers::Replicas,
    /// The live index.
    pub index: Shared,
    /// Whether the operator is ready.
    pub ready: Arc<AtomicBool>,
    /// The mesh roots (for `/debug/ca`: fingerprints, validity and rotation phase, never keys).
    pub roots: Arc<MeshRoots>,
    /// The golden signals of this replica's proxies (`/traffic`).
    pub traffic: Arc<crate::traffic::Traffic>,
}

/// Serve the admin API on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, admin: Admin) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move {
                    let response = if dashboard::serves(req.uri().path()) {
                        dashboard::handle(&admin, &req).await
                    } else {
                        handle(&admin, &req)
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub(crate) fn text(status: StatusCode, body: String, content_type: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// A traffic query answered by `answer`: GET only, its JSON, or why the query is refused.
fn traffic(
    req: &Request<Incoming>,
    answer: impl FnOnce(Option<&str>) -> Result<String, crate::traffic::QueryError>,
) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into(), "text/plain");
    }
    match answer(req.uri().query()) {
        Ok(body) => text(StatusCode::OK, body, "application/json"),
        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n"), "text/plain"),
    }
}

/// Answer one request.
pub fn handle(admin: &Admin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n".into(), "text/plain"),
        "/ready" => {
            if admin.ready.load(Ordering::SeqCst) {
                text(StatusCode::OK, "ready\n".into(), "text/plain")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the registry has not synced yet\n".into(),
                    "text/plain",
                )
            }
        }
        "/metrics" => text(StatusCode::OK, metrics(admin), "text/plain; version=0.0.4"),
        "/debug/syncz" => {
            // Every replica's proxies, or (`?scope=local`, what replicas ask each other) this
            // replica's alone.
            let local = admin.push.sync_state();
            let state = if req.uri().query() == Some(crate::peers::LOCAL_QUERY) {
                local
            } else {
                crate::peers::merged(local, &admin.peers)
            };
            let body = serde_json::to_string_pretty(&state).expect("sync state serializes");
            text(StatusCode::OK, body, "application/json")
        }
        "/traffic" => traffic(req, |query| admin.traffic.answer(query)),
        "/traffic/series" => traffic(req, |query| admin.traffic.answer_series(query)),
        "/debug/ca" => {
            let body = serde_json::to_string_pretty(&admin.roots.status()).expect("CA status serializes");
            text(StatusCode::OK, body, "application/json")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /dashboard/, /ready, /live, /metrics, /traffic, /debug/syncz or /debug/ca\n".into(),
            "text/plain",
        ),
    }
}

/// The operator's metrics in Prometheus text format.
pub fn metrics(admin: &Admin) -> String {
    let sync = admin.push.sync_state();
    let connected = sync.iter().filter(|p| p.connected).count();
    let in_sync = sync
        .iter()
        .filter(|p| p.connected && p.sent.is_some() && p.sent == p.acked)
        .count();
    let nacked = sync
        .iter()
        .filter(|p| p.nacked.as_ref().is_some_and(|n| Some(&n.version) == p.sent.as_ref()))
        .count();
    let (generation, (services, workloads)) = {
        let idx = admin.index.read().expect("index lock");
        (idx.generation(), idx.counts())
    };
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge(
        "trellis_operator_proxies_connected",
        "Proxies with an open push subscription.",
        connected as u64,
    );
    gauge(
        "trellis_operator_proxies_in_sync",
        "Connected proxies that acknowledged the latest version sent.",
        in_sync as u64,
    );
    gauge(
        "trellis_operator_proxies_nacked",
        "Proxies that rejected the latest version sent.",
        nacked as u64,
    );
    gauge(
        "trellis_operator_index_generation",
        "Changes applied to the live index.",
        generation,
    );
    gauge(
        "trellis_operator_registry_services",
        "Services in the registry.",
        services as u64,
    );
    gauge(
        "trellis_operator_registry_workloads",
        "Pods in the registry.",
        workloads as u64,
    );
    gauge(
        "trellis_operator_ready",
        "Whether the operator is ready.",
        u64::from(admin.ready.load(Ordering::SeqCst)),
    );
    admin.traffic.render_metrics(&mut out);
    admin.push.metrics().render(&out)
}
