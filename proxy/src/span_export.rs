//! The span exporter: drains the runtime's [`crate::spans::SpanSink`] in
//! batches (up to [`BATCH`] spans, or what arrived within [`FLUSH_EVERY`])
//! and sends each to the configured collector with the configured OTLP
//! transport ([`crate::otlp`]):
//!
//! | protocol | request |
//! |---|---|
//! | `grpc` | the `TraceService/Export` gRPC call (HTTP/2; the connection is kept between batches) |
//! | `httpProtobuf` | `POST /v1/traces`, `application/x-protobuf` |
//! | `httpJson` | `POST /v1/traces`, `application/json` |
//!
//! Over plain TCP (`http://`) or TLS (`https://`: the collector's certificate
//! verified against `collectorCa` or the system's roots, its name against the
//! host). An OTLP/HTTP endpoint with a path is posted to as written; a bare
//! one gets `/v1/traces`, as OpenTelemetry's exporters do. A batch the
//! collector could not take for a passing reason (unreachable, gRPC
//! `UNAVAILABLE`, HTTP 429/502/503/504) is tried once more after
//! [`RETRY_AFTER`]; then it is dropped and counted. The queue in front is
//! bounded, so a slow collector costs spans, never requests. The collector
//! and the protocol are read from the configuration in force at each flush.

use crate::otlp;
use crate::runtime::Runtime;
use crate::spans::{AttrValue, Span};
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use std::sync::{Arc, Weak};
use std::time::Duration;
use trellis_contract::OtlpProtocol;

/// Spans per export request, at most.
pub const BATCH: usize = 512;
/// Export at least this often when spans are waiting.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Give up on a collector request after this long.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause before a batch's second and last try.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    /// Worth one more try (the collector was unreachable or said so).
    #[error("{0} (retryable)")]
    Retryable(String),
    /// The collector refused the batch, or the settings are wrong.
    #[error("{0}")]
    Permanent(String),
}

/// A collector as the configuration names it.
#[derive(Clone)]
struct Collector {
    endpoint: String,
    protocol: OtlpProtocol,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// An open gRPC (HTTP/2) connection to a collector, kept between batches.
struct GrpcChannel {
    endpoint: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

/// Run the exporter until the runtime is gone.
pub async fn export_loop(rt: Weak<Runtime>) {
    let Some(mut rx) = rt.upgrade().and_then(|r| r.spans.take_queue()) else {
        return;
    };
    let mut batch = Vec::with_capacity(BATCH);
    let mut channel: Option<GrpcChannel> = None;
    loop {
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let Some(rt) = rt.upgrade() else { return };
        let snap = rt.snapshot();
        let n = batch.len() as u64;
        let Some(tracing_cfg) = snap.settings.telemetry.tracing.as_ref() else {
            rt.spans.count_dropped(n);
            batch.clear();
            continue;
        };
        let Some(endpoint) = tracing_cfg.otlp_endpoint.clone() else {
            rt.spans.count_dropped(n);
            batch.clear();
            continue;
        };
        let collector = Collector {
            endpoint,
            protocol: tracing_cfg.protocol,
            tls: snap.collector_tls.clone(),
        };
        let resource = resource(&snap.settings, tracing_cfg.service_name.as_deref());
        let mut result = export(&collector, &resource, &batch, &mut channel).await;
        if let Err(ExportError::Retryable(e)) = &result {
            tracing::debug!(endpoint = %collector.endpoint, error = %e, "span export failed; trying once more");
            tokio::time::sleep(RETRY_AFTER).await;
            result = export(&collector, &resource, &batch, &mut channel).await;
        }
        match result {
            Ok(rejected) => {
                rt.spans.count_exported(n - rejected.min(n));
                rt.spans.count_dropped(rejected.min(n));
            }
            Err(e) => {
                tracing::debug!(endpoint = %collector.endpoint, error = %e, "span export failed");
                rt.spans.count_dropped(n);
            }
        }
        batch.clear();
    }
}

/// The resource every span of this proxy carries: OpenTelemetry's service
/// and Kubernetes attributes of its workload.
fn resource(config: &trellis_contract::ProxyConfig, service_name: Option<&str>) -> otlp::Resource {
    let node = &config.node;
    let s = |v: &str| AttrValue::Str(v.to_string());
    let service = match service_name {
        Some(name) => name.to_string(),
        None if node.workload.is_empty() => "trellis-proxy".to_string(),
        None => node.workload.clone(),
    };
    let mut out = vec![("service.name", s(&service))];
    if !node.namespace.is_empty() {
        out.push(("service.namespace", s(&node.namespace)));
        out.push(("k8s.namespace.name", s(&node.namespace)));
    }
    if !node.id.is_empty() {
        out.push(("service.instance.id", s(&node.id)));
    }
    if let Some(pod) = node
        .id
        .strip_suffix(&format!(".{}", node.namespace))
        .filter(|p| !p.is_empty())
    {
        out.push(("k8s.pod.name", s(pod)));
    }
    if !node.workload.is_empty() {
        out.push(("trellis.workload", s(&node.workload)));
    }
    let revision = crate::metrics::canonical_revision(&node.labels);
    out.push(("service.version", s(&revision)));
    out
}

/// Sends one batch; how many spans the collector said it rejected.
async fn export(
    c: &Collector,
    resource: &otlp::Resource,
    spans: &[Span],
    channel: &mut Option<GrpcChannel>,
) -> Result<u64, ExportError> {
    let sent = async {
        match c.protocol {
            OtlpProtocol::Grpc => grpc(c, otlp::request(resource, spans), channel).await,
            OtlpProtocol::HttpProtobuf => {
                let body = otlp::request(resource, spans).encode_to_vec();
                post(c, "application/x-protobuf", body).await.map(|()| 0)
            }
            OtlpProtocol::HttpJson => {
                let body = otlp::json(resource, spans).to_string().into_bytes();
                post(c, "application/json", body).await.map(|()| 0)
            }
        }
    };
    match tokio::time::timeout(EXPORT_TIMEOUT, sent).await {
        Ok(r) => r,
        Err(_) => {
            // A stuck HTTP/2 connection is not reused.
            *channel = None;
            Err(ExportError::Retryable(format!("no answer within {EXPORT_TIMEOUT:?}")))
        }
    }
}

/// Connects to the collector: TCP, then TLS for `https://` with `alpn`.
async fn connect(
    c: &Collector,
    uri: &http::Uri,
    alpn: &[u8],
) -> Result<crate::stream::MaybeTls<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>, ExportError> {
    let authority = uri
        .authority()
        .ok_or_else(|| ExportError::Permanent(format!("collector {:?} has no host", c.endpoint)))?;
    let (tls, default_port) = match (uri.scheme_str(), &c.tls) {
        (Some("http"), _) => (None, 80),
        (Some("https"), Some(cfg)) => (Some(cfg), 443),
        (Some("https"), None) => {
            return Err(ExportError::Permanent(
                "no TLS settings for the https:// collector".into(),
            ));
        }
        (other, _) => {
            return Err(ExportError::Permanent(format!(
                "unsupported collector scheme {other:?}; use http:// or https://"
            )));
        }
    };
    let port = authority.port_u16().unwrap_or(default_port);
    let tcp = tokio::net::TcpStream::connect((authority.host(), port))
        .await
        .map_err(|e| ExportError::Retryable(format!("connecting to {authority}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let Some(cfg) = tls else {
        return Ok(crate::stream::MaybeTls::Plain(tcp));
    };
    // The collector's certificate must name the endpoint's host.
    let name = rustls::pki_types::ServerName::try_from(authority.host().trim_matches(['[', ']']).to_string())
        .map_err(|e| ExportError::Permanent(format!("collector host {:?}: {e}", authority.host())))?;
    let mut cfg = (**cfg).clone();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| ExportError::Retryable(format!("TLS to the collector failed: {e}")))?;
    Ok(crate::stream::MaybeTls::Tls(Box::new(tls)))
}

fn parse_endpoint(endpoint: &str, path: &str) -> Result<http::Uri, ExportError> {
    format!("{}{path}", endpoint.trim_end_matches('/'))
        .parse()
        .map_err(|e| ExportError::Permanent(format!("collector endpoint {endpoint:?}: {e}")))
}

/// The OTLP/HTTP URL: the endpoint as written when it has a path, else with `/v1/traces`.
fn http_url(endpoint: &str) -> Result<http::Uri, ExportError> {
    let bare: http::Uri = parse_endpoint(endpoint, "")?;
    match bare.path() {
        "" | "/" => parse_endpoint(endpoint, otlp::HTTP_TRACES_PATH),
        _ => Ok(bare),
    }
}

/// POSTs one OTLP/HTTP batch.
async fn post(c: &Collector, content_type: &'static str, body: Vec<u8>) -> Result<(), ExportError> {
    let uri = http_url(&c.endpoint)?;
    let stream = connect(c, &uri, b"http/1.1").await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ExportError::Retryable(e.to_string()))?;
    tokio::spawn(conn);
    let authority = uri.authority().map(|a| a.as_str().to_string()).unwrap_or_default();
    let req = http::Request::post(uri.path())
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ExportError::Permanent(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ExportError::Retryable(e.to_string()))?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    match status.as_u16() {
        200..=299 => Ok(()),
        // OTLP/HTTP's retryable answers.
        429 | 502 | 503 | 504 => Err(ExportError::Retryable(format!("collector answered {status}"))),
        _ => Err(ExportError::Permanent(format!("collector answered {status}"))),
    }
}

/// One `TraceService/Export` call; the rejected span count of a partial success.
async fn grpc(
    c: &Collector,
    request: otlp::pb::ExportTraceServiceRequest,
    channel: &mut Option<GrpcChannel>,
) -> Result<u64, ExportError> {
    let uri = parse_endpoint(&c.endpoint, otlp::GRPC_EXPORT_PATH)?;
    let reusable = channel.as_ref().is_some_and(|ch| {
        ch.endpoint == c.endpoint
            && match (&ch.tls, &c.tls) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
            && !ch.sender.is_closed()
    });
    if !reusable {
        let stream = connect(c, &uri, b"h2").await?;
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| ExportError::Retryable(format!("HTTP/2 to the collector: {e}")))?;
        tokio::spawn(conn);
        *channel = Some(GrpcChannel {
            endpoint: c.endpoint.clone(),
            tls: c.tls.clone(),
            sender,
        });
    }
    let Some(ch) = channel.as_mut() else {
        return Err(ExportError::Retryable("no connection to the collector".into()));
    };
    // A gRPC message: uncompressed flag, big-endian length, the protobuf.
    let message = request.encode_to_vec();
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.len()).map_err(|_| ExportError::Permanent("batch too large".into()))?);
    framed.put_slice(&message);
    let req = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(
            http::header::USER_AGENT,
            concat!("trellis-proxy/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(framed.freeze()))
        .map_err(|e| ExportError::Permanent(e.to_string()))?;
    ch.sender
        .ready()
        .await
        .map_err(|e| ExportError::Retryable(e.to_string()))?;
    let resp = match ch.sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            *channel = None;
            return Err(ExportError::Retryable(e.to_string()));
        }
    };
    let (parts, body) = resp.into_parts();
    if parts.status != http::StatusCode::OK {
        return Err(ExportError::Retryable(format!(
            "collector answered HTTP {}",
            parts.status
        )));
    }
    let collected = body
        .collect()
        .await
        .map_err(|e| ExportError::Retryable(format!("reading the collector's answer: {e}")))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let status = crate::labels::grpc_status(&trailers).or_else(|| crate::labels::grpc_status(&parts.headers));
    match status {
        Some(0) => {
            let bytes = collected.to_bytes();
            let rejected = bytes
                .get(5..)
                .and_then(|m| otlp::pb::ExportTraceServiceResponse::decode(m).ok())
                .and_then(|r| r.partial_success)
                .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0));
            Ok(rejected)
        }
        Some(code) => {
            let message = trailers
                .get("grpc-message")
                .or_else(|| parts.headers.get("grpc-message"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            // OTLP/gRPC's retryable codes.
            let retryable = matches!(code, 1 | 4 | 8 | 10 | 11 | 14 | 15);
            let e = format!("collector answered gRPC status {code}: {message}");
            Err(if retryable {
                ExportError::Retryable(e)
            } else {
                ExportError::Permanent(e)
            })
        }
        None => Err(ExportError::Retryable(
            "collector answered without a gRPC status".into(),
        )),
    }
}

/// Start the exporter for a runtime; it ends when the runtime is dropped.
pub fn spawn(rt: &Arc<Runtime>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(export_loop(Arc::downgrade(rt)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls_append_the_traces_path_to_bare_endpoints_only() {
        assert_eq!(
            http_url("http://collector:4318").unwrap().to_string(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            http_url("http://collector:4318/").unwrap().to_string(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            http_url("https://collector:4318/custom/traces").unwrap().to_string(),
            "https://collector:4318/custom/traces"
        );
        assert!(matches!(http_url("not a url"), Err(ExportError::Permanent(_))));
    }

    #[test]
    fn the_resource_names_the_workload() {
        let config: trellis_contract::ProxyConfig = serde_json::from_value(serde_json::json!({
            "version": "1",
            "node": {"id": "web-5d9f-x2k4q.shop", "workload": "web", "namespace": "shop",
                     "labels": {"app": "web", "version": "v1"}},
        }))
        .unwrap();
        let r = resource(&config, Some("web.shop"));
        let get = |k: &str| r.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(get("service.name"), Some(AttrValue::Str("web.shop".into())));
        assert_eq!(get("k8s.namespace.name"), Some(AttrValue::Str("shop".into())));
        assert_eq!(get("k8s.pod.name"), Some(AttrValue::Str("web-5d9f-x2k4q".into())));
        assert_eq!(get("service.version"), Some(AttrValue::Str("v1".into())));
    }
}
