//! The web dashboard, served by every replica on the admin port under `/dashboard/`: three
//! static files built into the binary (`dashboard/index.html`, `dashboard.js`,
//! `dashboard.css`: plain HTML, one vanilla JavaScript module drawing SVG, no framework and no
//! CDN) and the JSON they read, shaped by [`trellis_core::dashboard`]:
//!
//! - `api/graph?window=SECONDS`: the live service graph of the whole mesh;
//! - `api/service?service=NAME.NAMESPACE&window=SECONDS`: a service's golden signals slot by
//!   slot, the edges into it, and its routes with provenance (what `meshctl routes` prints);
//! - `api/proxies`: every proxy's sync state and version skew.
//!
//! **The mesh-wide view.** A replica holds only its own proxies' reports, so the replica
//! serving the page asks its peers (`/traffic`, `/traffic/series` on their admin port, the
//! ready operator pods [`crate::peers`] polls) at each request, all at once within 2 s, and
//! merges their answers with its own; a peer that does not answer is named in the JSON
//! (`missingReplicas`) and on the page. The proxies' sync state is every replica's already
//! ([`crate::peers::merged`]).
//!
//! # Guarantees
//! - A strict Content-Security-Policy on every answer: `default-src 'self'`, no inline script
//!   or style, no framing; nothing is fetched from elsewhere.
//! - GET only; no secrets: names, counts, versions, routes (as `meshctl routes` shows them).
//!   The admin port's access rules apply (the API server's `pods/proxy` or `pods/portforward`
//!   in the operator's namespace).

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use trellis_core::compile::DNS_DOMAIN;
use trellis_core::dashboard::{Graph, Proxies, ServicePage};
use trellis_core::routes::model::{find_service, report};
use trellis_core::traffic::{DEFAULT_WINDOW_SECONDS, MAX_WINDOW_SECONDS, Series, View};

use super::Admin;
use crate::traffic::{QueryError, query_value, window};

/// Where the dashboard is served.
pub const PREFIX: &str = "/dashboard";
/// The policy every answer carries: this origin only, no inline script or style.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";
/// The largest answer read from a peer.
// why: a view holds at most 4096 edges of ~700 bytes of JSON each; 8 MiB holds it with room.
const MAX_PEER_ANSWER: usize = 8 * 1024 * 1024;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// Whether `path` is the dashboard's.
pub fn serves(path: &str) -> bool {
    path == PREFIX || path.starts_with("/dashboard/")
}

fn answer(status: StatusCode, body: impl Into<Bytes>, content_type: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-security-policy", CONTENT_SECURITY_POLICY)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header("cache-control", "no-store")
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn json(result: Result<String, QueryError>) -> Response<Full<Bytes>> {
    match result {
        Ok(body) => answer(StatusCode::OK, body, "application/json"),
        Err(e) => answer(StatusCode::BAD_REQUEST, format!("{e}\n"), "text/plain; charset=utf-8"),
    }
}

/// Answer one request under [`PREFIX`] (only its method, path and query are read, so any body
/// type serves).
pub async fn handle<B>(admin: &Admin, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET {
        let mut refused = answer(StatusCode::METHOD_NOT_ALLOWED, "use GET\n", "text/plain; charset=utf-8");
        refused
            .headers_mut()
            .insert("allow", hyper::header::HeaderValue::from_static("GET"));
        return refused;
    }
    let query = req.uri().query();
    match req.uri().path() {
        // Relative, so it works behind the API server's pod proxy too.
        PREFIX => {
            let mut moved = answer(
                StatusCode::PERMANENT_REDIRECT,
                Bytes::new(),
                "text/plain; charset=utf-8",
            );
            moved
                .headers_mut()
                .insert("location", hyper::header::HeaderValue::from_static("dashboard/"));
            moved
        }
        "/dashboard/" | "/dashboard/index.html" => answer(StatusCode::OK, INDEX_HTML, "text/html; charset=utf-8"),
        "/dashboard/dashboard.js" => answer(StatusCode::OK, SCRIPT, "text/javascript; charset=utf-8"),
        "/dashboard/dashboard.css" => answer(StatusCode::OK, STYLE, "text/css; charset=utf-8"),
        "/dashboard/api/graph" => json(graph(admin, query).await),
        "/dashboard/api/service" => json(service(admin, query).await),
        "/dashboard/api/proxies" => json(proxies(admin)),
        _ => answer(
            StatusCode::NOT_FOUND,
            "not found; the dashboard is at /dashboard/ (api/graph, api/service, api/proxies)\n",
            "text/plain; charset=utf-8",
        ),
    }
}

/// The peers' answers to `path`, parsed: the parsed ones, and the names of those that gave
/// none.
async fn from_peers<T: serde::de::DeserializeOwned>(admin: &Admin, path: &str) -> (Vec<T>, Vec<String>) {
    let mut answers = Vec::new();
    let mut missing = Vec::new();
    for (peer, answer) in crate::peers::ask(admin.replicas.targets(&admin.index), path, MAX_PEER_ANSWER).await {
        match answer.and_then(|body| serde_json::from_slice(&body).map_err(|e| e.to_string())) {
            Ok(a) => answers.push(a),
            Err(error) => {
                tracing::debug!(%peer, %error, "a peer's traffic could not be read for the dashboard");
                missing.push(peer);
            }
        }
    }
    (answers, missing)
}

async fn graph(admin: &Admin, query: Option<&str>) -> Result<String, QueryError> {
    let window = window(query, &[], DEFAULT_WINDOW_SECONDS)?;
    let (views, missing): (Vec<View>, _) = from_peers(admin, &format!("/traffic?window={window}")).await;
    let view = View::merge(std::iter::once(admin.traffic.view(window)).chain(views)).map_err(QueryError::Merge)?;
    Ok(serde_json::to_string(&Graph::of(&view, missing))?)
}

async fn service(admin: &Admin, query: Option<&str>) -> Result<String, QueryError> {
    let window = window(query, &["service"], MAX_WINDOW_SECONDS)?;
    let service = query_value(query, "service").unwrap_or_default();
    let Some((name, namespace)) = service
        .split_once('.')
        .filter(|(n, ns)| !n.is_empty() && !ns.is_empty())
    else {
        return Err(QueryError::ServiceName(service.to_string()));
    };
    let fqdn = format!("{name}.{namespace}.svc.{DNS_DOMAIN}");
    let (series, missing): (Vec<Series>, _) =
        from_peers(admin, &format!("/traffic/series?service={fqdn}&window={window}")).await;
    let series = Series::merge(std::iter::once(admin.traffic.series(window, &fqdn)).chain(series));
    let snapshot = admin.index.read().map_err(|_| QueryError::IndexUnavailable)?.snapshot();
    let routes = find_service(&snapshot, name, namespace)
        .and_then(|svc| report(&snapshot, svc, None, None))
        .map_err(|e| format!("{e:#}"));
    let page = ServicePage::of(format!("{name}.{namespace}"), &series, routes, missing);
    Ok(serde_json::to_string(&page)?)
}

fn proxies(admin: &Admin) -> Result<String, QueryError> {
    let states = crate::peers::merged(admin.push.sync_state(), &admin.peers);
    Ok(serde_json::to_string(&Proxies::of(&states, env!("CARGO_PKG_VERSION")))?)
}

#[cfg(test)]
mod tests;
