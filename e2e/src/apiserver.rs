//! The HTTPS front of kubesim: TLS, bearer-token authentication, URL
//! routing, content negotiation (JSON, Table, aggregated discovery) and
//! streaming watches. Semantics live in [`Cluster`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::cluster::{Cluster, DeleteOptions, ListOptions, WriteOptions};
use crate::discovery;
use crate::patch::{self, PatchKind};
use crate::resources::ResourceType;
use crate::status::ApiError;
use crate::store::{EventType, StoredEvent};
use crate::table;

/// A response body: full or streamed.
pub type Body = BoxBody<Bytes, Infallible>;

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The admin bearer token.
    pub admin_token: String,
    /// How often watches that allow bookmarks get one.
    /// Why not a minute as upstream: tests should see bookmarks quickly.
    pub bookmark_interval: Duration,
    /// `host:port` reported by `/api`.
    pub address: String,
    /// The Kubernetes version `/version` reports.
    pub kubernetes_version: String,
}

/// Everything a request handler needs.
#[derive(Debug)]
pub struct ApiServer {
    pub cluster: Arc<Cluster>,
    pub settings: ServerSettings,
    /// What runs pods; serves `pods/{name}/log`.
    pub runtime: Arc<dyn crate::kubelet::PodRuntime>,
    /// Set to true to stop the server (the `/kubesim/shutdown` endpoint).
    pub shutdown: watch::Sender<bool>,
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_response(code: u16, value: &Value, content_type: &str, warnings: &[String]) -> Response<Body> {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::OK))
        .header(header::CONTENT_TYPE, content_type)
        .header("Cache-Control", "no-cache, private");
    for w in warnings {
        b = b.header("Warning", format!("299 - {}", json!(w)));
    }
    b.body(full(value.to_string()))
        .unwrap_or_else(|_| Response::new(full("")))
}

fn ok(value: &Value) -> Response<Body> {
    json_response(200, value, "application/json", &[])
}

/// What upstream answers for a path no handler serves, e.g. an API group
/// that no longer exists (all its CRDs deleted): a plain-text 404, not a
/// Status (so clients cannot read it as an object's `NotFound`).
fn page_not_found() -> Response<Body> {
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("X-Content-Type-Options", "nosniff")
        .body(full("404 page not found\n"))
        .unwrap_or_else(|_| Response::new(full("")))
}

fn error(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status(), "application/json", &[])
}

/// Decodes `%XX` escapes and `+` in a query component.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// A parsed resource URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResourcePath {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_resource_path(segs: &[&str]) -> Option<ResourcePath> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => (String::new(), v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest),
        _ => return None,
    };
    let s = |x: &&str| x.to_string();
    let (namespace, rest): (Option<String>, &[&str]) = match rest {
        ["namespaces", ns, sub] if group.is_empty() && matches!(*sub, "status" | "finalize") => {
            return Some(ResourcePath {
                group,
                version,
                namespace: None,
                plural: "namespaces".into(),
                name: Some(ns.to_string()),
                subresource: Some(sub.to_string()),
            });
        }
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
        other => (None, other),
    };
    match rest {
        [plural] => Some(ResourcePath {
            group,
            version,
            namespace,
            plural: s(plural),
            name: None,
            subresource: None,
        }),
        [plural, name] => Some(ResourcePath {
            group,
            version,
            namespace,
            plural: s(plural),
            name: Some(s(name)),
            subresource: None,
        }),
        [plural, name, sub] => Some(ResourcePath {
            group,
            version,
            namespace,
            plural: s(plural),
            name: Some(s(name)),
            subresource: Some(s(sub)),
        }),
        _ => None,
    }
}

/// How a list or get should be rendered.
#[derive(Debug, Clone)]
struct Render {
    table: bool,
    include_object: String,
}

fn render_of(accept: &str, q: &BTreeMap<String, String>) -> Render {
    Render {
        table: accept.split(',').next().is_some_and(|first| first.contains("as=Table"))
            || accept
                .split(',')
                .any(|p| p.contains("as=Table") && p.contains("g=meta.k8s.io") && p.contains("v=v1")),
        include_object: q.get("includeObject").cloned().unwrap_or_else(|| "Metadata".into()),
    }
}

fn write_options(q: &BTreeMap<String, String>) -> WriteOptions {
    WriteOptions {
        dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
        field_manager: q.get("fieldManager").cloned().filter(|s| !s.is_empty()),
        field_validation: q.get("fieldValidation").cloned(),
        force: q.get("force").is_some_and(|v| v == "true"),
    }
}

fn list_options(q: &BTreeMap<String, String>) -> ListOptions {
    ListOptions {
        label_selector: q.get("labelSelector").cloned(),
        field_selector: q.get("fieldSelector").cloned(),
        limit: q.get("limit").and_then(|l| l.parse().ok()),
        continue_token: q.get("continue").cloned(),
    }
}

impl ApiServer {
    /// Serves HTTPS on `listener` until shutdown is signalled.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: rustls::ServerConfig) {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let mut stop = self.shutdown.subscribe();
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => { warn!(error = %e, "accept failed"); continue; }
                },
                _ = crate::shutdown::requested(&mut stop) => break,
            };
            let acceptor = acceptor.clone();
            let this = self.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                };
                let svc = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(req).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc).await {
                    debug!(%peer, error = %e, "connection ended");
                }
            });
        }
        info!("API server stopped");
    }

    fn authenticated(&self, req: &Request<Incoming>) -> bool {
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| {
                let t = t.trim();
                t == self.settings.admin_token || crate::serviceaccounts::authenticate(&self.cluster, t, &[]).is_ok()
            })
    }

    /// Handles one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let q = parse_query(req.uri().query());
        debug!(%method, %path, query = ?q, "request");
        if matches!(path.as_str(), "/healthz" | "/livez" | "/readyz") {
            return Response::new(full("ok"));
        }
        if !self.authenticated(&req) {
            return error(&ApiError::unauthorized());
        }
        // `kubectl exec`: a WebSocket upgrade, answered before any body is read.
        if let Some((ns, name)) = crate::runner::exec::exec_path(&path) {
            return crate::runner::exec::handle(&self, req, &ns, &name);
        }
        // `kubectl port-forward`: a WebSocket upgrade, bridged to a port inside the pod.
        if let Some((ns, name)) = crate::runner::portforward::portforward_path(&path) {
            return crate::runner::portforward::handle(&self, req, &ns, &name);
        }
        // `pods/{name}/proxy` and `services/{name}/proxy`: relayed HTTP.
        if let Some(target) = crate::podproxy::target(&path) {
            return match crate::podproxy::relay(&self.cluster, req, &target).await {
                Ok(answer) => answer.map(full),
                Err(e) => error(&e),
            };
        }
        let accept = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let user_agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(&ApiError::bad_request(format!("reading body: {e}"))),
        };
        if content_type.starts_with("application/cbor") {
            return error(&ApiError::unsupported_media_type(&content_type));
        }
        // Protobuf bodies (kubectl's typed clients) become JSON here.
        let (body, content_type) = if content_type.starts_with("application/vnd.kubernetes.protobuf") {
            match crate::protobuf::decode(&body) {
                Ok(v) => (Bytes::from(v.to_string()), "application/json".to_string()),
                Err(e) => {
                    let mut err = ApiError::unsupported_media_type(&content_type);
                    err.message = e.to_string();
                    return error(&err);
                }
            }
        } else {
            (body, content_type)
        };
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let resources = self.cluster.catalog.all();
        let result = match (&method, segs.as_slice()) {
            (&Method::GET, ["version"]) => Ok(ok(&discovery::version(&self.settings.kubernetes_version))),
            (&Method::GET, ["api"]) => Ok(if discovery::wants_aggregated(&accept) {
                json_response(
                    200,
                    &discovery::aggregated(&resources, true),
                    discovery::AGGREGATED_CONTENT_TYPE,
                    &[],
                )
            } else {
                ok(&discovery::core_versions(&self.settings.address))
            }),
            (&Method::GET, ["apis"]) => Ok(if discovery::wants_aggregated(&accept) {
                json_response(
                    200,
                    &discovery::aggregated(&resources, false),
                    discovery::AGGREGATED_CONTENT_TYPE,
                    &[],
                )
            } else {
                ok(&discovery::group_list(&resources))
            }),
            (&Method::GET, ["api", v]) => discovery::resource_list(&resources, "", v)
                .map(|d| ok(&d))
                .ok_or_else(ApiError::path_not_found),
            (_, ["apis", g, ..]) if !self.cluster.catalog.serves_group(g) => Ok(page_not_found()),
            (&Method::GET, ["apis", g]) => discovery::group(&resources, g)
                .map(|d| ok(&d))
                .ok_or_else(ApiError::path_not_found),
            (&Method::GET, ["apis", g, v]) => discovery::resource_list(&resources, g, v)
                .map(|d| ok(&d))
                .ok_or_else(ApiError::path_not_found),
            (&Method::GET, ["openapi", "v3"]) => Ok(ok(&discovery::openapi_v3_index(
                &resources,
                discovery::catalog_revision(&resources),
            ))),
            (&Method::GET, ["openapi", "v3", "api", v]) => discovery::openapi_v3_group_version(&resources, "", v)
                .map(|d| ok(&d))
                .ok_or_else(ApiError::path_not_found),
            (&Method::GET, ["openapi", "v3", "apis", g, v]) => discovery::openapi_v3_group_version(&resources, g, v)
                .map(|d| ok(&d))
                .ok_or_else(ApiError::path_not_found),
            (&Method::GET, [".well-known", "openid-configuration"]) => Ok(ok(
                &crate::serviceaccounts::openid_configuration(&format!("https://{}", self.settings.address)),
            )),
            (&Method::GET, ["openid", "v1", "jwks"]) => self.cluster.tokens.jwks().map(|j| ok(&j)),
            (&Method::POST, ["kubesim", "compact"]) => {
                let rv = self.cluster.store.compact();
                info!(rv, "compacted watch history");
                Ok(ok(&json!({"compactedResourceVersion": rv.to_string()})))
            }
            (&Method::POST, ["kubesim", "shutdown"]) => {
                info!("shutdown requested");
                self.shutdown.send_replace(true);
                Ok(ok(&json!({"status": "stopping"})))
            }
            _ => match parse_resource_path(&segs) {
                Some(rp) => {
                    self.resource(&method, rp, &q, &accept, &content_type, &user_agent, &body)
                        .await
                }
                None => Err(ApiError::path_not_found()),
            },
        };
        result.unwrap_or_else(|e| error(&e))
    }

    #[allow(clippy::too_many_arguments)]
    async fn resource(
        &self,
        method: &Method,
        rp: ResourcePath,
        q: &BTreeMap<String, String>,
        accept: &str,
        content_type: &str,
        user_agent: &str,
        body: &[u8],
    ) -> Result<Response<Body>, ApiError> {
        let rt = self
            .cluster
            .catalog
            .get(&rp.group, &rp.version, &rp.plural)
            .ok_or_else(ApiError::path_not_found)?;
        if rp.namespace.is_some() && !rt.namespaced {
            return Err(ApiError::path_not_found());
        }
        let ns = rp.namespace.as_deref();
        let render = render_of(accept, q);
        let mut wopts = write_options(q);
        if wopts.field_manager.is_none() {
            // Upstream derives the manager from the User-Agent's program name.
            let prog = user_agent.split('/').next().unwrap_or_default();
            if !prog.is_empty() {
                wopts.field_manager = Some(prog.to_string());
            }
        }
        let parse_body = || -> Result<Value, ApiError> {
            if content_type.contains("yaml") {
                serde_yaml_ng::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
            } else {
                serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))
            }
        };
        let sub = rp.subresource.as_deref().unwrap_or_default();
        match sub {
            "" | "status" | "scale" | "finalize" => {}
            "eviction" if rt.kind == "Pod" && rt.group.is_empty() && *method == Method::POST => {
                // Eviction (kubectl drain): a delete with the Eviction's
                // options. Caveat: PodDisruptionBudgets are not served, so
                // nothing ever blocks an eviction.
                let name = rp.name.as_deref().unwrap_or_default();
                let eviction = parse_body()?;
                let opts = eviction
                    .get("deleteOptions")
                    .map(|o| delete_options(q, o.to_string().as_bytes()))
                    .unwrap_or_default();
                self.cluster.delete(&rt, ns, name, &opts)?;
                let done =
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
                return Ok(json_response(201, &done, "application/json", &[]));
            }
            "log" if rt.kind == "Pod" && rt.group.is_empty() && *method == Method::GET => {
                let name = rp.name.as_deref().unwrap_or_default();
                let pod = self.cluster.get(&rt, ns, name)?;
                let containers: Vec<String> = pod
                    .pointer("/spec/containers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .chain(
                        pod.pointer("/spec/initContainers")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten(),
                    )
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect();
                let container = match q.get("container") {
                    Some(c) if containers.contains(c) => c.clone(),
                    Some(c) => {
                        return Err(ApiError::bad_request(format!(
                            "container {c} is not valid for pod {name}"
                        )));
                    }
                    None if containers.len() == 1 => containers[0].clone(),
                    None => {
                        return Err(ApiError::bad_request(format!(
                            "a container name must be specified for pod {name}, choose one of: [{}]",
                            containers.join(" ")
                        )));
                    }
                };
                let options = crate::kubelet::LogOptions {
                    tail_lines: q.get("tailLines").and_then(|t| t.parse().ok()),
                    previous: q.get("previous").is_some_and(|p| p == "true"),
                    timestamps: q.get("timestamps").is_some_and(|t| t == "true"),
                };
                if q.get("follow").is_some_and(|f| f == "true") && !options.previous {
                    // `kubectl logs -f`: what there is, then lines as they come.
                    let rx = self
                        .runtime
                        .follow_logs(&pod, &container, &options)
                        .map_err(ApiError::bad_request)?;
                    let stream = futures::stream::unfold(rx, |mut rx| async move {
                        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
                    });
                    return Ok(Response::builder()
                        .status(200)
                        .header(header::CONTENT_TYPE, "text/plain")
                        .body(BodyExt::boxed(StreamBody::new(stream)))
                        .unwrap_or_else(|_| Response::new(full(""))));
                }
                let text = self
                    .runtime
                    .logs(&pod, &container, &options)
                    .map_err(ApiError::bad_request)?;
                return Ok(Response::builder()
                    .status(200)
                    .header(header::CONTENT_TYPE, "text/plain")
                    .body(full(text))
                    .unwrap_or_else(|_| Response::new(full(""))));
            }
            "token" if rt.kind == "ServiceAccount" && rt.group.is_empty() && *method == Method::POST => {
                let name = rp.name.as_deref().unwrap_or_default();
                let body = parse_body()?;
                let reply = crate::serviceaccounts::token_request(&self.cluster, ns.unwrap_or("default"), name, &body)?;
                return Ok(json_response(201, &reply, "application/json", &[]));
            }
            other => {
                return Err(ApiError::path_not_found()
                    .with_message(format!("the server could not find the requested resource ({other})")));
            }
        }
        if sub == "status" && !rt.status && rt.kind != "Namespace" {
            return Err(ApiError::path_not_found());
        }
        if sub == "scale" && rt.scale.is_none() {
            return Err(ApiError::path_not_found());
        }
        if rt.create_only() && *method != Method::POST {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({})",
                rt.plural
            )));
        }
        let sub_for_write = if sub == "finalize" { "" } else { sub };
        match (method.clone(), rp.name.as_deref()) {
            (Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                let allow_bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
                let send_initial = q.get("sendInitialEvents").is_some_and(|v| v == "true");
                let timeout = q
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse::<u64>().ok())
                    .map(Duration::from_secs);
                Ok(self.watch(&rt, ns, q, render, allow_bookmarks, send_initial, timeout))
            }
            (Method::GET, None) => {
                let (items, meta) = self.cluster.list(&rt, ns, &list_options(q))?;
                if render.table {
                    return Ok(ok(&table::table(&rt, &items, meta, &render.include_object)));
                }
                Ok(ok(
                    &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": meta, "items": items}),
                ))
            }
            (Method::GET, Some(name)) => {
                if sub == "scale" {
                    return Ok(ok(&self.cluster.get_scale(&rt, ns, name)?));
                }
                let obj = self.cluster.get(&rt, ns, name)?;
                if render.table {
                    let rv = obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
                    return Ok(ok(&table::table(
                        &rt,
                        &[obj],
                        json!({"resourceVersion": rv}),
                        &render.include_object,
                    )));
                }
                Ok(ok(&obj))
            }
            (Method::POST, None) => {
                let body = parse_body()?;
                if rt.create_only() {
                    return Ok(json_response(201, &self.review(&rt, body)?, "application/json", &[]));
                }
                let w = self.cluster.create(&rt, ns, body, &wopts)?;
                Ok(json_response(201, &w.object, "application/json", &w.warnings))
            }
            (Method::PUT, Some(name)) => {
                let body = parse_body()?;
                if sub == "scale" {
                    let scale = body.clone();
                    return Ok(ok(&self.cluster.set_scale(
                        &rt,
                        ns,
                        name,
                        move |_| Ok(scale.clone()),
                        &wopts,
                    )?));
                }
                let w = self.cluster.update(&rt, ns, name, sub_for_write, body, &wopts)?;
                Ok(json_response(200, &w.object, "application/json", &w.warnings))
            }
            (Method::PATCH, Some(name)) => {
                let kind = PatchKind::from_content_type(content_type)
                    .ok_or_else(|| ApiError::unsupported_media_type(content_type))?;
                if sub == "scale" {
                    let raw = body.to_vec();
                    return Ok(ok(&self.cluster.set_scale(
                        &rt,
                        ns,
                        name,
                        move |scale| scale_patch(kind, scale, &raw),
                        &wopts,
                    )?));
                }
                let w = self.cluster.patch(&rt, ns, name, sub_for_write, kind, body, &wopts)?;
                Ok(json_response(
                    if w.created { 201 } else { 200 },
                    &w.object,
                    "application/json",
                    &w.warnings,
                ))
            }
            (Method::DELETE, Some(name)) => {
                let dopts = delete_options(q, body);
                Ok(ok(&self.cluster.delete(&rt, ns, name, &dopts)?))
            }
            (Method::DELETE, None) => {
                let dopts = delete_options(q, body);
                let items = self.cluster.delete_collection(&rt, ns, &list_options(q), &dopts)?;
                Ok(ok(
                    &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": {}, "items": items}),
                ))
            }
            _ => Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({})",
                rt.plural
            ))),
        }
    }

    /// TokenReview and SubjectAccessReview.
    ///
    /// Caveat: authorization allows everything; SubjectAccessReview always
    /// answers `allowed: true`.
    fn review(&self, rt: &ResourceType, mut body: Value) -> Result<Value, ApiError> {
        match rt.kind.as_str() {
            "TokenReview" => {
                let token = body.pointer("/spec/token").and_then(Value::as_str).unwrap_or_default();
                let audiences: Vec<String> = body
                    .pointer("/spec/audiences")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(str::to_string))
                    .collect();
                body["status"] = if token == self.settings.admin_token {
                    json!({"authenticated": true, "user": {"username": "kubesim-admin", "groups": ["system:masters", "system:authenticated"]}})
                } else {
                    match crate::serviceaccounts::authenticate(&self.cluster, token, &audiences) {
                        Ok((user, auds)) => json!({"authenticated": true, "user": user, "audiences": auds}),
                        Err(e) => json!({"authenticated": false, "error": e}),
                    }
                };
            }
            "SelfSubjectReview" => {
                body["status"] = json!({"userInfo": {"username": "kubesim-admin", "groups": ["system:masters", "system:authenticated"]}});
            }
            _ => {
                // Upstream's validation of the authorization reviews: they are
                // not stored, and their metadata must be empty (a name is refused).
                // (Zero values, as Go clients send them, are empty: `creationTimestamp: null`,
                // or the epoch and empty strings from a protobuf body.)
                let zero = |v: &Value| match v {
                    Value::Null => true,
                    Value::String(s) => s.is_empty() || s == "1970-01-01T00:00:00Z",
                    Value::Number(n) => n.as_f64() == Some(0.0),
                    Value::Object(o) => o.is_empty(),
                    Value::Array(a) => a.is_empty(),
                    Value::Bool(b) => !b,
                };
                if body["metadata"].as_object().is_some_and(|m| !m.values().all(zero)) {
                    let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
                    return Err(ApiError::invalid(
                        rt,
                        &name,
                        &[(
                            "metadata".into(),
                            format!("Invalid value: {}: must be empty", body["metadata"]),
                        )],
                    ));
                }
                body["status"] = json!({"allowed": true, "reason": "kubesim allows every request"});
            }
        }
        body["apiVersion"] = json!(rt.api_version());
        body["kind"] = json!(rt.kind);
        Ok(body)
    }

    #[allow(clippy::too_many_arguments)]
    fn watch(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        q: &BTreeMap<String, String>,
        render: Render,
        allow_bookmarks: bool,
        send_initial: bool,
        timeout: Option<Duration>,
    ) -> Response<Body> {
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        let labels =
            crate::selector::LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or_default());
        let fields =
            crate::selector::FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or_default());
        let (labels, fields) = match (labels, fields) {
            (Ok(l), Ok(f)) => (l, f),
            (Err(e), _) | (_, Err(e)) => return error(&ApiError::bad_request(e.to_string())),
        };
        let sub = self
            .cluster
            .watch(rt, ns, q.get("resourceVersion").map(String::as_str), send_initial);
        let rt = rt.clone();
        let ns = ns.map(str::to_string);
        let interval = self.settings.bookmark_interval;
        let mut stop = self.shutdown.subscribe();
        tokio::spawn(async move {
            let line = |v: Value| {
                let mut s = v.to_string();
                s.push('\n');
                Bytes::from(s)
            };
            let mut sub = match sub {
                Ok(s) => s,
                Err(e) => {
                    // Upstream answers 200 and then an ERROR event (410).
                    let _ = tx.send(line(json!({"type": "ERROR", "object": e.to_status()}))).await;
                    return;
                }
            };
            let render_obj = |o: &Value| -> Value {
                let presented = present(&rt, o);
                if render.table {
                    table::table(
                        &rt,
                        &[presented],
                        json!({"resourceVersion": o.pointer("/metadata/resourceVersion")}),
                        &render.include_object,
                    )
                } else {
                    presented
                }
            };
            let matches = |o: &Value| labels.matches(o) && fields.matches(o);
            let mut last_rv = sub.resource_version;
            for ev in sub.backlog.drain(..) {
                if let Some(out) = filtered(&ev, &matches)
                    && tx
                        .send(line(json!({"type": out.0, "object": render_obj(&out.1)})))
                        .await
                        .is_err()
                {
                    return;
                }
                last_rv = last_rv.max(ev.resource_version);
            }
            let bookmark = |rv: u64, initial_end: bool| {
                let mut meta = json!({"resourceVersion": rv.to_string()});
                if initial_end {
                    meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
                }
                line(
                    json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta}}),
                )
            };
            if send_initial && allow_bookmarks && tx.send(bookmark(last_rv, true)).await.is_err() {
                return;
            }
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                let sleep_until = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    ev = sub.live.recv() => match ev {
                        Ok(ev) => {
                            if ev.key.group_resource != rt.group_resource() || (rt.namespaced && ns.as_deref().is_some_and(|n| n != ev.key.namespace)) {
                                continue;
                            }
                            last_rv = ev.resource_version;
                            if let Some(out) = filtered(&ev, &matches)
                                && tx.send(line(json!({"type": out.0, "object": render_obj(&out.1)}))).await.is_err()
                            {
                                return;
                            }
                        }
                        // Fell behind or the store is gone: end the watch;
                        // the client resumes from its last resourceVersion.
                        Err(_) => return,
                    },
                    _ = ticker.tick(), if allow_bookmarks => {
                        if tx.send(bookmark(last_rv, false)).await.is_err() {
                            return;
                        }
                    }
                    _ = sub.epoch.changed() => return,
                    _ = crate::shutdown::requested(&mut stop) => return,
                    _ = sleep_until => return,
                    _ = tx.closed() => return,
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, "application/json")
            .header("Transfer-Encoding", "chunked")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap_or_else(|_| Response::new(full("")))
    }
}

fn present(rt: &ResourceType, o: &Value) -> Value {
    Cluster::present(rt, o.clone())
}

/// Applies selector semantics to an event: an object that stops matching
/// is reported DELETED, one that starts matching ADDED.
fn filtered(ev: &StoredEvent, matches: &dyn Fn(&Value) -> bool) -> Option<(&'static str, Value)> {
    let now = matches(&ev.object);
    let before = ev.old.as_ref().map(matches);
    match (ev.type_, before, now) {
        (EventType::Modified, Some(true), false) => Some(("DELETED", ev.object.clone())),
        (EventType::Modified, Some(false), true) => Some(("ADDED", ev.object.clone())),
        (_, _, true) => Some((ev.type_.as_str(), ev.object.clone())),
        _ => None,
    }
}

fn scale_patch(kind: PatchKind, scale: &Value, raw: &[u8]) -> Result<Value, ApiError> {
    let p: Value = match kind {
        PatchKind::Apply => serde_yaml_ng::from_slice(raw).map_err(|e| ApiError::bad_request(e.to_string()))?,
        _ => serde_json::from_slice(raw).map_err(|e| ApiError::bad_request(e.to_string()))?,
    };
    match kind {
        PatchKind::Json => patch::json_patch(scale, &p).map_err(|e| ApiError::bad_request(e.to_string())),
        PatchKind::Strategic => patch::strategic_merge(scale, &p).map_err(|e| ApiError::bad_request(e.to_string())),
        PatchKind::Merge | PatchKind::Apply => Ok(patch::merge_patch(scale, &p)),
    }
}

fn delete_options(q: &BTreeMap<String, String>, body: &[u8]) -> DeleteOptions {
    let b: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let dry = b["dryRun"].as_array().is_some_and(|a| a.iter().any(|x| x == "All"))
        || q.get("dryRun").is_some_and(|v| v == "All");
    DeleteOptions {
        dry_run: dry,
        propagation: b["propagationPolicy"]
            .as_str()
            .map(str::to_string)
            .or_else(|| q.get("propagationPolicy").cloned()),
        precondition_uid: b
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        precondition_rv: b
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        grace_period_seconds: b["gracePeriodSeconds"]
            .as_i64()
            .or_else(|| q.get("gracePeriodSeconds").and_then(|g| g.parse().ok())),
    }
}

impl ApiError {
    fn with_message(mut self, message: String) -> Self {
        self.message = message;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_into_resources() {
        let p = |s: &str| parse_resource_path(&s.split('/').filter(|x| !x.is_empty()).collect::<Vec<_>>());
        let r = p("/api/v1/namespaces/default/pods/web/status").unwrap();
        assert_eq!(
            (
                r.namespace.as_deref(),
                r.plural.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            (Some("default"), "pods", Some("web"), Some("status"))
        );
        let r = p("/apis/apps/v1/deployments").unwrap();
        assert_eq!((r.group.as_str(), r.namespace, r.name), ("apps", None, None));
        let r = p("/api/v1/namespaces/kube-system").unwrap();
        assert_eq!(
            (r.plural.as_str(), r.name.as_deref()),
            ("namespaces", Some("kube-system"))
        );
        let r = p("/api/v1/namespaces/x/finalize").unwrap();
        assert_eq!(
            (r.name.as_deref(), r.subresource.as_deref()),
            (Some("x"), Some("finalize"))
        );
        assert!(p("/apis/apps").is_none());
    }

    #[test]
    fn queries_decode_selectors() {
        let q = parse_query(Some("labelSelector=app%3Dweb%2Cenv+in+%28a%29&limit=5"));
        assert_eq!(q["labelSelector"], "app=web,env in (a)");
        assert_eq!(q["limit"], "5");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
