//! Span export: one span per proxied request hop (sampled ones), batched and
//! sent to the configured collector as OTLP/HTTP JSON (`POST /v1/traces`),
//! over plain HTTP or TLS (`https://`: the collector's certificate verified
//! against `collectorCa` or the system's roots, and its name against the host).
//! Export never blocks requests: the queue is bounded and drops when full.

use crate::app::Runtime;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Spans waiting for export, at most.
const QUEUE: usize = 4096;
/// Spans per export request, at most.
const BATCH: usize = 512;
/// Export at least this often when spans are waiting.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Give up on a collector request after this long.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// HTTP status.
    pub status: u16,
    /// Extra attributes.
    pub attributes: Vec<(&'static str, String)>,
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
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos().to_string()
}

/// The OTLP/JSON document for a batch.
pub fn otlp_json(service: &str, spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut attrs: Vec<Value> =
                vec![json!({"key": "http.status_code", "value": {"intValue": s.status.to_string()}})];
            attrs.extend(
                s.attributes
                    .iter()
                    .map(|(k, v)| json!({"key": k, "value": {"stringValue": v}})),
            );
            json!({
                "traceId": s.trace_id,
                "spanId": s.span_id,
                "parentSpanId": s.parent_id.clone().unwrap_or_default(),
                "name": s.name,
                // SPAN_KIND_SERVER = 2, SPAN_KIND_CLIENT = 3
                "kind": if s.server { 2 } else { 3 },
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": attrs,
                // STATUS_CODE_ERROR = 2 for 5xx, else UNSET
                "status": {"code": if s.status >= 500 { 2 } else { 0 }},
            })
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "trellis-proxy"}, "spans": spans}],
    }]})
}

/// Run the exporter until the runtime is gone. The collector endpoint and
/// service name are read from the configuration at each flush.
pub async fn export_loop(rt: Weak<Runtime>) {
    let Some(mut rx) = rt.upgrade().and_then(|r| r.spans.rx.lock().expect("span lock").take()) else {
        return;
    };
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = rx.recv().await;
        let Some(first) = first else { return };
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
        let tracing_cfg = snap.config.telemetry.tracing.clone();
        let tls = snap.collector_tls.clone();
        let n = batch.len() as u64;
        match tracing_cfg.and_then(|t| t.otlp_endpoint.map(|e| (e, t.service_name))) {
            Some((endpoint, service)) => {
                let service = service.unwrap_or_else(|| {
                    if snap.config.node.workload.is_empty() {
                        "trellis-proxy".to_string()
                    } else {
                        snap.config.node.workload.clone()
                    }
                });
                let body = otlp_json(&service, &batch).to_string();
                match tokio::time::timeout(EXPORT_TIMEOUT, post(&endpoint, tls, body)).await {
                    Ok(Ok(())) => {
                        rt.spans.exported.fetch_add(n, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%endpoint, error = %e, "span export failed");
                        rt.spans.dropped.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(_) => {
                        tracing::debug!(%endpoint, "span export timed out");
                        rt.spans.dropped.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
            None => {
                rt.spans.dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
        batch.clear();
    }
}

/// POST one batch; `tls` is the snapshot's collector TLS (for `https://`).
async fn post(endpoint: &str, tls: Option<Arc<rustls::ClientConfig>>, body: String) -> Result<(), String> {
    let uri: http::Uri = format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("bad endpoint: {e}"))?;
    let authority = uri.authority().ok_or("endpoint has no host")?.clone();
    let (tls, default_port) = match (uri.scheme_str(), tls) {
        (Some("http"), _) => (None, 80),
        (Some("https"), Some(cfg)) => (Some(cfg), 443),
        (Some("https"), None) => return Err("no TLS settings for the https:// collector".into()),
        (other, _) => {
            return Err(format!(
                "unsupported collector scheme {other:?}; use http:// or https://"
            ));
        }
    };
    let port = authority.port_u16().unwrap_or(default_port);
    let tcp = tokio::net::TcpStream::connect((authority.host(), port))
        .await
        .map_err(|e| e.to_string())?;
    let stream = match tls {
        None => crate::stream::MaybeTls::Plain(tcp),
        Some(cfg) => {
            // The collector's certificate must name the endpoint's host.
            let name = rustls::pki_types::ServerName::try_from(authority.host().trim_matches(['[', ']']).to_string())
                .map_err(|e| format!("collector host {:?}: {e}", authority.host()))?;
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS to the collector failed: {e}"))?;
            crate::stream::MaybeTls::Tls(Box::new(tls))
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::post(uri.path())
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("collector answered {status}"))
    }
}

/// Start the exporter for a runtime.
pub fn spawn_exporter(rt: &Arc<Runtime>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(export_loop(Arc::downgrade(rt)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_json_shape() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        let doc = otlp_json(
            "web",
            &[Span {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                span_id: "00f067aa0ba902b7".into(),
                parent_id: None,
                name: "payment/*".into(),
                server: false,
                start: t,
                end: t + Duration::from_millis(2),
                status: 503,
                attributes: vec![("upstream_cluster", "payment".into())],
            }],
        );
        let span = &doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["kind"], 3);
        assert_eq!(span["startTimeUnixNano"], "1000000000");
        assert_eq!(span["endTimeUnixNano"], "1002000000");
        assert_eq!(span["status"]["code"], 2);
        assert_eq!(
            doc["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "web"
        );
    }
}
