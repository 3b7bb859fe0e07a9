//! The HTTP side: echo, forward, call, gRPC echo, health and the
//! behaviour switch.
//!
//! | Request | Answer |
//! |---|---|
//! | `GET /healthz` | `200 ok` (probes; never delayed or failed) |
//! | `GET /metrics` | the app's own Prometheus metrics: `testapp_requests_total` (what a mesh merges with its proxy's) |
//! | `GET /admin/behaviour` | the current [`Behaviour`] as JSON |
//! | `PUT`/`POST /admin/behaviour` | replaces it (JSON body, camelCase) |
//! | `POST /v1/traces` | an OTLP/HTTP JSON export, kept (the app doubles as a trace collector) |
//! | `GET /v1/traces` | every export kept so far: `{"exports": [...]}`; with `?traceId=<32 hex>`, only that trace's spans (in the exports' shape) |
//! | `content-type: application/grpc*` | the request messages echoed, `grpc-status` trailer |
//! | `GET` a path of `--file PATH=FILE` | FILE's content (404 if it cannot be read; at most 1 MiB) |
//! | `/call?url=http://...` | calls the URL and reports its answer |
//! | a forward prefix | calls the forward's target with the rest of the path |
//! | anything else | [`Echo`] as JSON (on the HTTPS listener, with the handshake's `tls`) |
//!
//! Query parameters on any request except the admin ones: `status=N`
//! answers with that status, `delay=MS` waits first, `size=N` answers
//! with exactly N bytes instead of JSON (benchmarks), `tcp=HOST:PORT`
//! first exchanges `tcpbytes=N` bytes (default 1024) with a TCP echo there
//! (reported in the echo's `tcp`). Suffixed with
//! `@<service>` (`delay@payment=2000`) a parameter applies only in the app
//! playing that service, so one hop of a forwarded chain can be made slow
//! or failing (forwards pass the query on).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::Value;

use crate::settings::{Behaviour, Settings, TRACE_HEADERS};

/// Request bodies larger than this are refused with 413.
const MAX_BODY: usize = 1 << 20;
/// OTLP exports kept; the oldest go first.
const MAX_EXPORTS: usize = 10_000;
/// Largest `size=` answer.
const MAX_SIZE: usize = 16 << 20;

type Body = BoxBody<Bytes, Infallible>;

/// What the app reports about a request it received.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Echo {
    pub service: String,
    pub version: String,
    pub pod: String,
    pub namespace: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub http_version: String,
    /// The TCP peer: with a sidecar, the local proxy.
    pub peer: String,
    /// Request headers, lower-case names; repeated ones joined with `, `.
    pub headers: BTreeMap<String, String>,
    /// The `x-forwarded-client-cert` the inbound proxy set (the caller's
    /// verified identity), if any.
    pub client_cert: Option<String>,
    /// The TLS handshake of the connection, on the HTTPS listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::TlsInfo>,
    pub body_bytes: usize,
    /// The TCP exchange `tcp=` asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpExchange>,
    /// What a forwarded call answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
}

/// A forwarded call and its answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Upstream {
    pub url: String,
    /// 0 when no answer arrived.
    pub status: u16,
    /// The answer: JSON when it was JSON, else text.
    pub body: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the call took, from sending the request to the end of the answer (or the
    /// failure), as this app measured it: next to its sidecar, without the path before it.
    pub elapsed_ms: u64,
}

/// A TCP echo exchange and how it went.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpExchange {
    pub addr: String,
    pub sent: usize,
    pub received: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Shared state of one running app.
#[derive(Debug)]
pub(crate) struct App {
    settings: Settings,
    behaviour: Mutex<Behaviour>,
    exports: Mutex<std::collections::VecDeque<Value>>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Requests answered (not probes, admin or metrics).
    requests: std::sync::atomic::AtomicU64,
}

impl App {
    pub(crate) fn new(settings: Settings) -> Self {
        let behaviour = Mutex::new(settings.behaviour.clone());
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.call_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            settings,
            behaviour,
            exports: Mutex::new(std::collections::VecDeque::new()),
            client,
            requests: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn behaviour(&self) -> Behaviour {
        self.behaviour.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn set_behaviour(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap_or_else(PoisonError::into_inner) = behaviour;
    }
}

/// Answers one request; never fails (errors become answers).
pub(crate) async fn handle(
    app: Arc<App>,
    peer: SocketAddr,
    tls: Option<Arc<crate::tls::TlsInfo>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return Ok(text(StatusCode::OK, "ok\n"));
    }
    if path == "/admin/behaviour" {
        return Ok(admin(&app, req).await);
    }
    if path == "/v1/traces" {
        return Ok(traces(&app, req).await);
    }
    if path == "/metrics" {
        return Ok(metrics(&app));
    }
    app.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Some(served) = app.settings.files.iter().find(|f| f.path == path) {
        return Ok(file(served).await);
    }
    let params = Params::parse(req.uri().query().unwrap_or_default(), &app.settings.service);
    let params = match params {
        Ok(p) => p,
        Err(e) => return Ok(text(StatusCode::BAD_REQUEST, &format!("{e}\n"))),
    };
    let behaviour = app.behaviour();
    let delay = params.delay.unwrap_or(Duration::from_millis(behaviour.delay_ms));
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let grpc = is_grpc(req.headers());
    let failure = params.status.or_else(|| behaviour.roll());
    if grpc {
        return Ok(grpc_echo(req, failure.is_some_and(|s| s >= 400)).await);
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(text(StatusCode::PAYLOAD_TOO_LARGE, "request body over 1 MiB\n")),
    };
    if let Some(size) = params.size {
        let status = failure
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        return Ok(sized(&app, status, size));
    }
    let mut echo = Echo {
        service: app.settings.service.clone(),
        version: app.settings.version.clone(),
        pod: app.settings.pod.clone(),
        namespace: app.settings.namespace.clone(),
        method: parts.method.to_string(),
        path: path.clone(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        http_version: format!("{:?}", parts.version),
        peer: peer.to_string(),
        headers: header_map(&parts.headers),
        client_cert: parts
            .headers
            .get("x-forwarded-client-cert")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        tls: tls.as_deref().cloned(),
        body_bytes: body.len(),
        tcp: None,
        upstream: None,
    };
    if let Some(addr) = &params.tcp {
        echo.tcp = Some(tcp_exchange(addr, params.tcp_bytes, app.settings.call_timeout).await);
    }
    let mut status = StatusCode::OK;
    if let Some(fail) = failure {
        status = StatusCode::from_u16(fail).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    } else if let Some(url) = call_target(&app.settings, &path, parts.uri.query(), &params) {
        let upstream = call(&app, &parts.method, &parts.headers, &url, body).await;
        status = match upstream.status {
            0 => StatusCode::BAD_GATEWAY,
            s if s >= 400 => StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY),
            _ => StatusCode::OK,
        };
        echo.upstream = Some(upstream);
    }
    Ok(json(&app, status, &echo))
}

/// Per-request overrides from the query string.
#[derive(Debug, Default)]
struct Params {
    status: Option<u16>,
    delay: Option<Duration>,
    size: Option<usize>,
    url: Option<String>,
    tcp: Option<String>,
    tcp_bytes: usize,
}

impl Params {
    /// Parses the parameters that apply to the app playing `service`.
    fn parse(query: &str, service: &str) -> Result<Self, String> {
        let mut p = Self {
            tcp_bytes: 1024,
            ..Self::default()
        };
        for pair in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode(k);
            let k = match k.split_once('@') {
                Some((k, target)) if target == service => k.to_string(),
                Some(_) => continue,
                None => k,
            };
            match k.as_str() {
                "status" => {
                    let s: u16 = v
                        .parse()
                        .map_err(|_| format!("status={v}: use an HTTP status, e.g. status=503"))?;
                    if !(200..=599).contains(&s) {
                        return Err(format!("status={v}: use 200..=599"));
                    }
                    p.status = Some(s);
                }
                "delay" => {
                    let ms: u64 = v
                        .parse()
                        .map_err(|_| format!("delay={v}: use milliseconds, e.g. delay=250"))?;
                    p.delay = Some(Duration::from_millis(ms.min(600_000)));
                }
                "size" => {
                    let n: usize = v
                        .parse()
                        .map_err(|_| format!("size={v}: use a byte count, e.g. size=1024"))?;
                    if n > MAX_SIZE {
                        return Err(format!("size={v}: at most {MAX_SIZE} bytes"));
                    }
                    p.size = Some(n);
                }
                "url" => p.url = Some(percent_decode(v)),
                "tcp" => p.tcp = Some(percent_decode(v)),
                "tcpbytes" => {
                    p.tcp_bytes = v
                        .parse()
                        .ok()
                        .filter(|n| *n <= MAX_BODY)
                        .ok_or_else(|| format!("tcpbytes={v}: use a byte count up to {MAX_BODY}"))?;
                }
                _ => {}
            }
        }
        Ok(p)
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The app's own metrics, in Prometheus' text format.
fn metrics(app: &App) -> Response<Body> {
    let n = app.requests.load(std::sync::atomic::Ordering::Relaxed);
    let body = format!(
        "# HELP testapp_requests_total Requests the test app answered.\n# TYPE testapp_requests_total counter\ntestapp_requests_total{{service=\"{}\",version=\"{}\"}} {n}\n",
        app.settings.service, app.settings.version
    );
    let mut r = text(StatusCode::OK, &body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// Sends `n` bytes to the TCP echo at `addr` and reads them back.
async fn tcp_exchange(addr: &str, n: usize, timeout: Duration) -> TcpExchange {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut out = TcpExchange {
        addr: addr.to_string(),
        sent: 0,
        received: 0,
        error: None,
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let payload: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
        stream.write_all(&payload).await?;
        out.sent = n;
        let mut back = vec![0u8; n];
        stream.read_exact(&mut back).await?;
        out.received = n;
        if back != payload {
            return Err(std::io::Error::other("the echo differs from what was sent"));
        }
        stream.shutdown().await
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => out.error = Some(e.to_string()),
        Err(_) => out.error = Some(format!("no echo within {timeout:?}")),
    }
    out
}

/// The URL to call for this request, if any: `/call?url=` or a forward.
fn call_target(settings: &Settings, path: &str, query: Option<&str>, params: &Params) -> Option<String> {
    if path == "/call" {
        return params.url.clone();
    }
    let forward = settings
        .forwards
        .iter()
        .filter(|f| path == f.prefix || path.starts_with(&format!("{}/", f.prefix)))
        .max_by_key(|f| f.prefix.len())?;
    let rest = &path[forward.prefix.len()..];
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    Some(format!("{}{rest}{query}", forward.target))
}

async fn call(app: &App, method: &Method, incoming: &HeaderMap, url: &str, body: Bytes) -> Upstream {
    let started = std::time::Instant::now();
    let elapsed_ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let failed = |error: String| Upstream {
        url: url.to_string(),
        status: 0,
        body: Value::Null,
        error: Some(error),
        elapsed_ms: elapsed_ms(),
    };
    let mut builder = Request::builder().method(method.clone()).uri(url);
    for name in TRACE_HEADERS
        .iter()
        .map(|n| http::HeaderName::from_static(n))
        .chain(app.settings.propagate.iter().cloned())
    {
        for value in incoming.get_all(&name) {
            builder = builder.header(name.clone(), value.clone());
        }
    }
    let request = match builder.body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => return failed(format!("cannot build a request for {url}: {e}")),
    };
    let answer = tokio::time::timeout(app.settings.call_timeout, async {
        let response = app.client.request(request).await.map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let bytes = Limited::new(response.into_body(), MAX_SIZE)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, bytes))
    })
    .await;
    match answer {
        Ok(Ok((status, bytes))) => Upstream {
            url: url.to_string(),
            status,
            body: serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())),
            error: None,
            elapsed_ms: elapsed_ms(),
        },
        Ok(Err(e)) => failed(format!("calling {url}: {e}")),
        Err(_) => failed(format!(
            "calling {url}: no answer within {:?}",
            app.settings.call_timeout
        )),
    }
}

async fn admin(app: &App, req: Request<Incoming>) -> Response<Body> {
    match *req.method() {
        Method::GET => json(app, StatusCode::OK, &app.behaviour()),
        Method::PUT | Method::POST => {
            let body = match Limited::new(req.into_body(), 64 << 10).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "behaviour body over 64 KiB\n"),
            };
            let behaviour: Behaviour = match serde_json::from_slice(&body) {
                Ok(b) => b,
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        &format!(
                            "behaviour: {e}; expected e.g. {{\"failStatus\":503,\"failRate\":0.5,\"delayMs\":0}}\n"
                        ),
                    );
                }
            };
            if let Err(e) = behaviour.validate() {
                return text(StatusCode::BAD_REQUEST, &format!("behaviour: {e}\n"));
            }
            app.set_behaviour(behaviour.clone());
            json(app, StatusCode::OK, &behaviour)
        }
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET, PUT or POST on /admin/behaviour\n",
        ),
    }
}

/// The trace collector: keeps OTLP/HTTP JSON exports, lists them.
async fn traces(app: &App, req: Request<Incoming>) -> Response<Body> {
    match *req.method() {
        Method::GET => {
            let trace_id = req
                .uri()
                .query()
                .unwrap_or_default()
                .split('&')
                .find_map(|kv| kv.strip_prefix("traceId="))
                .map(str::to_string);
            let exports = app.exports.lock().unwrap_or_else(PoisonError::into_inner);
            let exports: Vec<Value> = match &trace_id {
                Some(id) => exports.iter().filter_map(|e| spans_of_trace(e, id)).collect(),
                None => exports.iter().cloned().collect(),
            };
            json(app, StatusCode::OK, &serde_json::json!({ "exports": exports }))
        }
        Method::POST => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "export over 1 MiB\n"),
            };
            let export: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        &format!("not an OTLP/HTTP JSON export: {e}; send content-type application/json\n"),
                    );
                }
            };
            let mut exports = app.exports.lock().unwrap_or_else(PoisonError::into_inner);
            if exports.len() == MAX_EXPORTS {
                exports.pop_front();
            }
            exports.push_back(export);
            json(app, StatusCode::OK, &serde_json::json!({}))
        }
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST on /v1/traces\n"),
    }
}

/// An export cut down to the spans of one trace (same shape), or `None` when
/// it holds none: a test polling for one trace does not make the collector
/// serialize every span it ever received.
fn spans_of_trace(export: &Value, trace_id: &str) -> Option<Value> {
    let mut export = export.clone();
    let mut any = false;
    for rs in export["resourceSpans"].as_array_mut().into_iter().flatten() {
        for ss in rs["scopeSpans"].as_array_mut().into_iter().flatten() {
            if let Some(spans) = ss["spans"].as_array_mut() {
                spans.retain(|s| s["traceId"] == trace_id);
                any |= !spans.is_empty();
            }
        }
    }
    any.then_some(export)
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Echoes the request's length-prefixed messages; `grpc-status` 0, or 14
/// (UNAVAILABLE) when the app is failing.
async fn grpc_echo(req: Request<Incoming>, failing: bool) -> Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "request body over 1 MiB\n"),
    };
    let mut trailers = HeaderMap::new();
    if failing {
        trailers.insert("grpc-status", HeaderValue::from_static("14"));
        trailers.insert(
            "grpc-message",
            HeaderValue::from_static("testapp%20is%20failing%20on%20purpose"),
        );
    } else {
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
    }
    let echoed = if failing { Bytes::new() } else { body };
    let body = Full::new(echoed)
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        map.entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    map
}

fn with_identity(app: &App, mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-served-by", &app.settings.pod),
        ("x-service", &app.settings.service),
        ("x-version", &app.settings.version),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    }
    response
}

fn json<T: Serialize>(app: &App, status: StatusCode, value: &T) -> Response<Body> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    bytes.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(bytes)).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    with_identity(app, response)
}

fn sized(app: &App, status: StatusCode, size: usize) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(vec![b'x'; size])).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    with_identity(app, response)
}

/// A served file's current content (read now: a mounted ConfigMap changes under the app).
async fn file(served: &crate::settings::ServedFile) -> Response<Body> {
    let shown = served.file.display();
    let content = match tokio::fs::metadata(&served.file).await {
        Ok(m) if m.len() > MAX_BODY as u64 => {
            let why = format!("{shown} has {} bytes, over the 1 MiB served\n", m.len());
            return text(StatusCode::INTERNAL_SERVER_ERROR, &why);
        }
        Ok(_) => tokio::fs::read(&served.file).await,
        Err(e) => Err(e),
    };
    let content = match content {
        Ok(c) => c,
        Err(e) => return text(StatusCode::NOT_FOUND, &format!("{shown} cannot be read: {e}\n")),
    };
    let json = served.file.extension().is_some_and(|e| e == "json");
    let mut response = Response::new(Full::new(Bytes::from(content)).boxed());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if json {
            "application/json"
        } else {
            "application/octet-stream"
        }),
    );
    response
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_parse_and_explain() {
        let p = Params::parse(
            "status=503&delay=20&size=10&url=http%3A%2F%2Fdb%3A5432%2Fq&other=1",
            "web",
        )
        .unwrap();
        assert_eq!(p.status, Some(503));
        assert_eq!(p.delay, Some(Duration::from_millis(20)));
        assert_eq!(p.size, Some(10));
        assert_eq!(p.url.as_deref(), Some("http://db:5432/q"));
        assert!(Params::parse("status=abc", "web").unwrap_err().contains("status=abc"));
        assert!(Params::parse("status=99", "web").unwrap_err().contains("200..=599"));
        assert!(
            Params::parse("size=999999999999", "web")
                .unwrap_err()
                .contains("at most")
        );
        let scoped = "delay@payment=2000&status%40db=503";
        assert_eq!(Params::parse(scoped, "web").unwrap().delay, None);
        assert_eq!(
            Params::parse(scoped, "payment").unwrap().delay,
            Some(Duration::from_millis(2000))
        );
        assert_eq!(Params::parse(scoped, "db").unwrap().status, Some(503));
    }

    #[test]
    fn percent_decoding_keeps_broken_escapes() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("a+b"), "a b");
    }

    #[test]
    fn the_longest_forward_prefix_wins_and_keeps_the_rest() {
        let mut s = Settings::echo("web", "127.0.0.1:0".parse().unwrap());
        s.forwards = vec![
            "/api=http://payment:8080/pay".parse().unwrap(),
            "/api/db=http://db:8080".parse().unwrap(),
        ];
        let p = Params::default();
        assert_eq!(
            call_target(&s, "/api/x", Some("a=1"), &p).as_deref(),
            Some("http://payment:8080/pay/x?a=1")
        );
        assert_eq!(
            call_target(&s, "/api/db/q", None, &p).as_deref(),
            Some("http://db:8080/q")
        );
        assert_eq!(call_target(&s, "/apix", None, &p), None);
        assert_eq!(
            call_target(&s, "/api", None, &p).as_deref(),
            Some("http://payment:8080/pay")
        );
    }
}
